"""Config validation: the JSON schema (via snakemake.utils.validate) and the cross-checks."""

import copy

import pytest
import yaml
from cxrtransfer import WorkflowError, plan
from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
from snakemake.utils import validate


@pytest.fixture(scope="module")
def schema(root):
    return str(root / "config" / "config.schema.yaml")


@pytest.fixture(params=["config.yaml", "test.yaml", "nih.yaml"])
def config(request, root, schema):
    cfg = yaml.safe_load((root / "config" / request.param).read_text())
    validate(cfg, schema)
    plan.check_config(cfg, root)
    return cfg


def _invalid(cfg, schema, match):
    with pytest.raises(SnakemakeWorkflowError, match=match):
        validate(cfg, schema)


def test_shipped_configs_are_valid_and_complete(config):
    assert config["data"]["image_size"] >= 16
    assert plan.adversarial_sets(config)
    if config["study_name"] == "test-tiny":
        return  # the tiny test config trains one model for cardiomegaly
    for task in config["tasks"]:
        models = [m for m in config["models"].values() if m["task"] == task]
        assert len(models) >= 2, f"{task}: needs a target and an independent surrogate"
        assert len({m["seed"] for m in models}) >= 2


def test_default_config_has_cross_architecture_surrogates(root, schema):
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    for task in cfg["tasks"]:
        archs = {m["arch"] for m in cfg["models"].values() if m["task"] == task}
        assert len(archs) >= 2, task
    sets = plan.adversarial_sets(cfg)
    assert any(
        s.data_task == "cardiomegaly" and cfg["models"][s.source]["task"] == "pneumothorax"
        for s in sets
    )


def test_defaults_are_filled(root, schema):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, schema)
    assert cfg["evaluation"]["confidence"] == 0.95
    assert cfg["attacks"]["pgd"]["norm"] == "linf"


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["data"].update(imagesize=64), "imagesize"),
        (lambda c: c["data"].update(image_size="big"), "big"),
        (lambda c: c.update(eps=[4, 300]), "300"),
        (lambda c: c.update(eps=[0]), "0"),
        (lambda c: c["tasks"].update(x={"label": "Pneumothrax"}), "Pneumothrax"),
        (lambda c: c["attacks"]["pgd"].update(method="cw"), "cw"),
        (lambda c: c.update(unknown_key=1), "unknown_key"),
    ],
)
def test_schema_rejects_typos(root, schema, mutate, match):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    mutate(cfg)
    _invalid(cfg, schema, match)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda c: c["models"]["pneumothorax_small"].update(task="effusion"),
            "models.pneumothorax_small.task",
        ),
        (lambda c: c["models"]["pneumothorax_small"].update(arch="ResNet51"), "ResNet51"),
        (
            lambda c: c["models"]["pneumothorax_small"].update(pretrained="/no/such.weights.h5"),
            "pretrained",
        ),
        (
            lambda c: (
                c["attacks"]["pgd"].update(step=12) or c["attacks"]["pgd"].pop("step_fraction")
            ),
            "larger than eps",
        ),
        (lambda c: c["attacks"]["pgd"].update(step=1), "either step or step_fraction"),
        (lambda c: c["grid"].append({"sources": ["nobody"], "data_task": "own"}), "nobody"),
        (lambda c: c["grid"].append({"sources": "all", "data_task": "mass"}), "mass"),
        (
            lambda c: c["grid"].append({"sources": "all", "data_task": "own", "attacks": ["fgm"]}),
            "fgm",
        ),
    ],
)
def test_cross_checks(root, schema, mutate, match):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, schema)
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(WorkflowError, match=match):
        plan.check_config(bad, root)


def test_grid_and_relations(root, schema):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, schema)
    sets = plan.adversarial_sets(cfg)
    n_models = len(cfg["models"])
    cross = [
        s for s in sets if s.data_task == "cardiomegaly" and s.source.startswith("pneumothorax")
    ]
    assert len(sets) == (n_models + len(cross) // len(cfg["eps"])) * len(cfg["eps"])
    assert {s.eps for s in sets} == {plan.eps_label(e) for e in cfg["eps"]}
    assert (
        plan.relation(cfg, "pneumothorax_small", "pneumothorax_small", "pneumothorax")
        == "white-box"
    )
    assert (
        plan.relation(cfg, "pneumothorax_small", "pneumothorax_small_s2", "pneumothorax")
        == "surrogate"
    )
    assert (
        plan.relation(cfg, "pneumothorax_small", "cardiomegaly_small", "cardiomegaly")
        == "cross-task"
    )
    cfg["models"]["pneumothorax_small_s2"]["arch"] = "ResNet50"
    assert (
        plan.relation(cfg, "pneumothorax_small", "pneumothorax_small_s2", "pneumothorax")
        == "cross-architecture"
    )
    assert plan.eps_label(2.55) == "2.55" and plan.eps_label(8.0) == "8"
