"""Config validation: the JSON schema (via snakemake.utils.validate) and the cross-checks."""

import copy

import pytest
import yaml
from conftest import reversed_mappings
from cxrtransfer import WorkflowError
from cxrtransfer.config import load
from cxrtransfer.plan import checks
from cxrtransfer.plan import study as plan
from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
from snakemake.utils import validate


@pytest.fixture(scope="module")
def schema(root):
    return str(root / "config" / "config.schema.yaml")


@pytest.fixture(params=["config.yaml", "test.yaml", "nih.yaml"])
def config(request, root, schema):
    cfg = yaml.safe_load((root / "config" / request.param).read_text())
    validate(cfg, schema)
    checks.check_config(cfg, root)
    return cfg


def _invalid(cfg, schema, match):
    with pytest.raises(SnakemakeWorkflowError, match=match):
        validate(cfg, schema)


def test_shipped_configs_are_valid_and_complete(config):
    assert config["data"]["image_size"] >= 16
    assert plan.adversarial_sets(config)
    if config["study_name"] == "test-tiny":
        return  # the tiny test config trains one model for cardiomegaly
    for task in plan.binary_tasks(config):  # a multi-label task has no grid sets of its own
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
    # the transfer-attack settings default to off
    pgd = cfg["attacks"]["pgd"]
    assert (pgd["ti_kernel"], pgd["scales"], pgd["nesterov"], pgd["variance_samples"]) == (
        0,
        1,
        False,
        0,
    )


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["data"].update(imagesize=64), "imagesize"),
        (lambda c: c["data"].update(image_size="big"), "big"),
        (lambda c: c.update(eps=[4, 300]), "300"),
        (lambda c: c.update(eps=[0]), "0"),
        (lambda c: c["tasks"].update(x={"label": "Pneumothrax"}), "Pneumothrax"),
        (lambda c: c["attacks"]["pgd"].update(method="cw"), "cw"),
        (lambda c: c["attacks"]["pgd"].update(ti_kernel=-1), "ti_kernel"),
        (lambda c: c["attacks"]["pgd"].update(scales=0), "scales"),
        (lambda c: c["attacks"]["pgd"].update(nesterov="yes"), "yes"),
        (lambda c: c["attacks"]["pgd"].update(variance_samples=2.5), "2.5"),
        (lambda c: c["attacks"]["pgd"].update(variance_bound=0), "variance_bound"),
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
        (lambda c: c["attacks"]["pgd"].update(step=1), "either 'step' or 'step_fraction'"),
        (lambda c: c["grid"].append({"sources": ["nobody"], "data_task": "own"}), "nobody"),
        (lambda c: c["grid"].append({"sources": "all", "data_task": "mass"}), "mass"),
        (
            lambda c: c["grid"].append({"sources": "all", "data_task": "own", "attacks": ["fgm"]}),
            r"grid\[2\]\.attacks: unknown attack\(s\) \['fgm'\]",
        ),
        # transfer-attack settings: named by their key before any job runs
        (lambda c: c["attacks"]["pgd"].update(ti_kernel=65), r"attacks\.pgd\.ti_kernel.*64"),
        (lambda c: c["attacks"]["pgd"].update(ti_kernel=4), r"attacks\.pgd .*ti_kernel"),
        (lambda c: c["attacks"]["pgd"].update(nesterov=True), r"attacks\.pgd .*nesterov"),
        (
            lambda c: c["attacks"]["pgd"].update(variance_samples=20, variance_bound=-1.0),
            r"attacks\.pgd .*variance_bound",
        ),
    ],
)
def test_cross_checks(root, schema, mutate, match):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, schema)
    bad = copy.deepcopy(cfg)
    mutate(bad)
    with pytest.raises(WorkflowError, match=match):
        checks.check_config(bad, root)


def test_grid_of_the_tiny_config(root, schema):
    """Written out by hand: 3 models on their own task + 1 cross-task source, 1 eps, 1 attack,
    each with its noise control."""
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, schema)
    got = {(s.source, s.data_task, s.attack, s.eps) for s in plan.adversarial_sets(cfg)}
    real = {
        ("pneumothorax_small", "pneumothorax", "pgd", "8"),
        ("pneumothorax_small_s2", "pneumothorax", "pgd", "8"),
        ("cardiomegaly_small", "cardiomegaly", "pgd", "8"),
        ("pneumothorax_small", "cardiomegaly", "pgd", "8"),
    }
    assert got == real | {(s, t, "pgd__shuffled", e) for s, t, _, e in real}
    cfg["noise_control"] = False
    assert {(s.source, s.data_task, s.attack, s.eps) for s in plan.adversarial_sets(cfg)} == real
    assert plan.eps_label(2.55) == "2.55" and plan.eps_label(8.0) == "8"


def test_l2_attacks_use_their_own_budgets(root, schema):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["attacks"]["pgd_l2"] = {"method": "pgd", "norm": "l2", "step_fraction": 0.25}
    validate(cfg, schema)
    with pytest.raises(WorkflowError, match="eps_l2"):
        checks.check_config(cfg, root)
    cfg["eps_l2"] = [0.5, 2]
    checks.check_config(cfg, root)
    l2 = {s.eps for s in plan.adversarial_sets(cfg, controls=False) if s.attack == "pgd_l2"}
    assert l2 == {"0.5", "2"}
    assert plan.eps_value(cfg, "pgd_l2__shuffled", "0.5") == 0.5
    assert plan.eps_value(cfg, "pgd", "8") == 8.0


def test_targeted_and_untargeted_twins_are_refused(root, schema):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["attacks"]["pgd_t"] = {**cfg["attacks"]["pgd"], "targeted": True}
    validate(cfg, schema)
    with pytest.raises(WorkflowError, match="same attack"):
        checks.check_config(cfg, root)
    cfg["attacks"]["pgd_t"]["steps"] = 7  # a different attack, not a twin
    checks.check_config(cfg, root)


def test_labels_are_written_once(root):
    """The schema's label enum is the library's label list."""
    from cxrtransfer import LABELS

    schema = yaml.safe_load((root / "config" / "config.schema.yaml").read_text())
    assert tuple(schema["definitions"]["label"]["enum"]) == LABELS


def test_architecture_list_matches_keras_applications():
    import keras

    apps = keras.applications
    names = {n for n in dir(apps) if n[0].isupper() and callable(getattr(apps, n))}
    assert set(plan.KERAS_APPLICATIONS) == names


def test_fgsm_with_momentum_is_refused_by_the_attack_spec(root, schema):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["attacks"]["fgsm"] = {"method": "fgsm", "momentum": 1.0}
    validate(cfg, schema)
    with pytest.raises(WorkflowError, match="attacks.fgsm.*need method: pgd"):
        checks.check_config(cfg, root)


def test_transfer_attack_settings_pass_the_checks(root, schema):
    """A config with TI, SI-NI and VMI attacks at the papers' settings is valid; a TI kernel as
    large as the image is allowed, one pixel larger is not."""
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["attacks"]["ti"] = {"method": "pgd", "ti_kernel": 7}
    cfg["attacks"]["si_ni"] = {"method": "pgd", "momentum": 1.0, "nesterov": True, "scales": 5}
    cfg["attacks"]["vmi"] = {"method": "pgd", "momentum": 1.0, "variance_samples": 20}
    validate(cfg, schema)
    checks.check_config(cfg, root)
    assert cfg["attacks"]["vmi"]["variance_bound"] == 1.5  # the schema's default
    assert {s.attack for s in plan.adversarial_sets(cfg, controls=False)} >= {"ti", "si_ni", "vmi"}
    size = cfg["data"]["image_size"]
    largest = size if size % 2 else size - 1  # the largest odd kernel <= the image
    cfg["attacks"]["ti"]["ti_kernel"] = largest
    checks.check_config(cfg, root)
    cfg["attacks"]["ti"]["ti_kernel"] = largest + 2
    with pytest.raises(WorkflowError, match=r"attacks\.ti\.ti_kernel"):
        checks.check_config(cfg, root)


def test_robust_demo_overlay_extends_the_default_demo(root, schema):
    """config/robust_demo.yaml, built on the demo (base: demo), is a valid study with a defended
    target beside the demo's models, the demo's robust pair among its sources."""
    demo = yaml.safe_load((root / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((root / "config" / "robust_demo.yaml").read_text())
    assert overlay["base"] == "demo"
    base = load.resolve(overlay, root / "config")
    validate(base, schema)
    checks.check_config(base, root)
    assert set(base["models"]) == set(demo["models"])
    robust = [n for n, m in base["models"].items() if m.get("robust_base")]
    assert robust and base["models"][robust[0]]["training"]["adversarial"]["eps"] == 2
    assert plan.defended(base) == ["pneumothorax_resnet50_jpeg75"]
    sources = {s.source for s in plan.adversarial_sets(base, controls=False)}
    assert {robust[0], base["models"][robust[0]]["robust_base"]} <= sources
    assert "pneumothorax_resnet50_jpeg75" in sources
    assert "pneumothorax_resnet50_jpeg75" in plan.targets_for(base, "pneumothorax")


def test_the_plan_does_not_depend_on_mapping_order(config, schema):
    """The deployed target (and so the plotted cells) and every set are the same when a YAML
    tool writes the config's mappings in another order."""
    other = reversed_mappings(copy.deepcopy(config))
    validate(other, schema)
    assert plan.chosen_cells(other) == plan.chosen_cells(config)
    assert sorted(plan.plot_files(other)) == sorted(plan.plot_files(config))
    assert set(plan.adversarial_sets(other)) == set(plan.adversarial_sets(config))
    for task in plan.binary_tasks(config):
        assert plan.deployed_target(other, task) == plan.deployed_target(config, task)


def test_a_deployed_model_must_be_a_target_of_its_task(root, schema):
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    cfg["tasks"]["pneumothorax"]["deployed"] = "cardiomegaly_resnet50"
    validate(cfg, schema)
    with pytest.raises(
        WorkflowError, match=r"tasks.pneumothorax.deployed: 'cardiomegaly_resnet50'"
    ):
        checks.check_config(cfg, root)
