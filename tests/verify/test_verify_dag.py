"""verify's dependencies agree with the rules': a dry run of the tiny configuration (with an
ensemble, a universal attack, a defended and a fine-tuned model added) against what verify
says each product's job reads, on a results tree holding every planned product."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest
import yaml
from conftest import workflow_copy
from cxrtransfer.core import paths as P
from cxrtransfer.verify.index import build_index, products_at
from cxrtransfer.verify.products import classify, list_products

# jobs whose outputs are products verify checks (the others: download, manifests, boxes,
# expert labels, and the final block of tables, plots and report)
PRODUCT_RULES = {
    "shard",
    "shard_summary",
    "train",
    "ensemble",
    "defend",
    "finding_view",
    "uap",
    "attack",
    "predict_clean",
    "predict_adv",
    "evaluate",
}
TEST_ROWS = 600  # shard_size 512: two test shards per task


def study(root: Path) -> dict:
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["models"]["pneumothorax_small_ft"] = {
        **cfg["models"]["pneumothorax_small"],
        "init_from": "pneumothorax_small",
    }
    cfg["defences"] = {
        "pneumothorax_small_jpeg": {
            "model": "pneumothorax_small",
            "defence": {"jpeg_quality": 75},
        }
    }
    cfg["attacks"]["uap"] = {"method": "uap", "split": "val", "step_fraction": 0.1}
    cfg["grid"].append(
        {
            "sources": [["pneumothorax_small", "pneumothorax_small_s2"]],
            "data_task": "pneumothorax",
            "attacks": ["pgd"],
        }
    )
    return cfg


def dry_run_jobs(wd: Path) -> list[dict]:
    """Every job a dry run plans: rule, inputs and outputs."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "-j1", "--rerun-triggers", "mtime"]
    cmd += ["--configfile", str(wd / "config.yaml")]
    r = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n\[[^\]\n]*\d{4}\]\n", r.stdout)[1:]:
        job = {"rule": re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block).group(1)}
        for key in ("input", "output"):
            m = re.search(rf"^    {key}: (.*)$", block, re.M)
            job[key] = m.group(1).split(", ") if m else []
        jobs.append(job)
    return jobs


def write_manifests(wd: Path, cfg: dict) -> None:
    """Manifests (split counts only) newer than a stand-in download: the checkpoint is done."""
    download = wd / P.SYNTHETIC_DOWNLOAD
    download.mkdir(parents=True)
    (download / "BBox_List_2017.csv").write_text("")
    for task in cfg["tasks"]:
        splits = ["train"] * 10 + ["val"] * 5 + ["test"] * TEST_ROWS
        for t in (P.MANIFEST, P.MANIFEST_REJECTED, P.MANIFEST_SUMMARY):
            path = wd / t.format(task=task)
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"split": splits}).to_csv(path, index=False)


def write_products(wd: Path, jobs: list[dict], cfg: dict) -> None:
    """Every output of the product jobs, as files verify recognises (contents unchecked
    here): models with their task and base model, a set's directory of caches per test
    shard, a perturbation with its crafting split."""
    test_shards = {}
    for job in jobs:
        for o in job["output"]:
            m = P.pattern(P.SHARD).match(P.relative(o))
            if m and m["split"] == "test":
                test_shards.setdefault(m["task"], []).append(m["shard"])
    for job in (j for j in jobs if j["rule"] in PRODUCT_RULES):
        for o in job["output"]:
            path = wd / o
            path.parent.mkdir(parents=True, exist_ok=True)
            found = classify(P.relative(o))
            if P.pattern(P.ATTACK_DIR).match(P.relative(o)):
                path.mkdir(parents=True, exist_ok=True)
                task = P.pattern(P.ATTACK_DIR).match(P.relative(o))["data_task"]
                for s in test_shards[task]:
                    (path / f"{s}.h5").write_bytes(b"")
            elif found and found[0] == "uap":
                with h5py.File(path, "w") as f:
                    f.attrs["split"] = cfg["attacks"][found[1]["attack"]]["split"]
            elif path.name == Path(P.MODEL_METRICS).name:
                name = path.parent.name
                facts = {"checkpoint_sha256": "0" * 64, "task": task_of(cfg, name)}
                if name in (cfg.get("defences") or {}):
                    facts["base_model"] = cfg["defences"][name]["model"]
                init = (cfg["models"].get(name) or {}).get("init_from")
                if init:
                    facts["init_from"] = {"model": init}
                path.write_text(json.dumps(facts))
            else:
                path.write_bytes(b"")


def task_of(cfg: dict, name: str) -> str:
    from cxrtransfer.plan.study import source_task

    return source_task(cfg, name)


@pytest.fixture(scope="module")
def planned(root, tmp_path_factory):
    wd = workflow_copy(root, tmp_path_factory.mktemp("dag"))
    cfg = study(root)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(wd / "results", ignore_errors=True)
    write_manifests(wd, cfg)
    jobs = dry_run_jobs(wd)
    write_products(wd, jobs, cfg)
    return wd, jobs


def test_verify_reads_what_the_rules_read(planned):
    """For every product, the products its job reads: the rules' (dry run) and verify's."""
    wd, jobs = planned
    results = wd / P.RESULTS
    ix = build_index(results, list_products(results))
    at = products_at(ix)
    rules = {job["rule"] for job in jobs}
    assert {"train", "ensemble", "defend", "uap", "attack", "evaluate"} <= rules, rules
    assert ix.model_inits == {"pneumothorax_small_ft": "pneumothorax_small"}
    expected = set()
    for job in (j for j in jobs if j["rule"] in PRODUCT_RULES):
        made = {c for o in job["output"] for c in at.get(wd / o, ())}
        assert made, job
        read = {p for i in job["input"] for p in at.get(wd / i, ())}
        expected |= {(p, c) for c in made for p in read if p != c}
    derived = {(p, c) for p, cs in ix.readers.items() for c in cs}
    name = lambda pairs: sorted((str(p.path), str(c.path)) for p, c in pairs)  # noqa: E731
    assert name(derived - expected) == [] and name(expected - derived) == []
