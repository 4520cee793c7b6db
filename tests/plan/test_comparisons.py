"""Tests of cxrtransfer.plan.comparisons: which sets the compare job pairs and what it reads."""

from __future__ import annotations

import yaml
from cxrtransfer.core import paths as P
from cxrtransfer.plan import checks
from cxrtransfer.plan import comparisons as C


def _config(root, name):
    cfg = yaml.safe_load((root / "config" / name).read_text())
    cfg.setdefault("noise_control", True)
    return cfg


def test_tiny_study_one_job_per_deployed_target(root):
    cfg = _config(root, "test.yaml")
    assert C.deployed_targets(cfg) == {
        "pneumothorax_small": "pneumothorax",
        "cardiomegaly_small": "cardiomegaly",
    }
    s = C.compare_settings(cfg, "pneumothorax_small")
    assert s["sets"] == [
        {"source": "pneumothorax_small", "attack": "pgd", "eps": "8"},
        {"source": "pneumothorax_small_s2", "attack": "pgd", "eps": "8"},
    ]
    assert s["pairs"] == [{"a": 0, "b": 1, "kind": "same attack"}]
    inputs = C.compare_inputs(cfg, "cardiomegaly_small")
    assert inputs["clean"] == P.PRED_CLEAN.format(
        target="cardiomegaly_small", data_task="cardiomegaly"
    )
    assert all("__shuffled" not in f for f in inputs["adv"])  # controls: the evaluate job's
    assert sorted(k for k in inputs if k.startswith("metrics__")) == [
        "metrics__cardiomegaly_small",
        "metrics__pneumothorax_small",
    ]
    assert C.comparison_files(cfg) == [
        P.COMPARISONS.format(target=t) for t in ("cardiomegaly_small", "pneumothorax_small")
    ]


def test_default_study_pairs_attacks_of_a_source_and_sources_of_an_attack(root):
    cfg = _config(root, "config.yaml")
    checks.check_config(cfg)
    target = "pneumothorax_resnet50"
    assert C.deployed_targets(cfg)[target] == "pneumothorax"
    sets = C.compared_sets(cfg, target)
    pairs = C.compare_settings(cfg, target)["pairs"]
    named = {
        (
            sets[p["a"]].source,
            sets[p["a"]].attack,
            sets[p["b"]].source,
            sets[p["b"]].attack,
            p["kind"],
        )
        for p in pairs
    }
    ens = "pneumothorax_resnet50_s2+pneumothorax_resnet50v2"
    # the surrogate's two attacks (same source); the ensemble against each member (same attack)
    assert (
        "pneumothorax_resnet50_s2",
        "pgd",
        "pneumothorax_resnet50_s2",
        "ti_mi",
        "same source",
    ) in named
    for member in ("pneumothorax_resnet50_s2", "pneumothorax_resnet50v2"):
        assert any({ens, member} == {a, b} and k == "same attack" for a, _, b, _, k in named)
    for p in pairs:  # matched: one eps, and one of source or attack shared
        a, b = sets[p["a"]], sets[p["b"]]
        assert a.eps == b.eps and (a.source == b.source) != (a.attack == b.attack)
    assert not any(s.is_control for s in sets)
