"""The base of an adversarially trained model (models.<name>.robust_base, else init_from): the
config checks refuse a base that cannot be compared, naming the key; the training job reads
the base's checkpoint (so Snakemake orders and reruns it), in the workflow and in verify."""

import copy

import pytest
import yaml
from cxrtransfer import WorkflowError
from cxrtransfer.core import paths as P
from cxrtransfer.models.settings import model_settings
from cxrtransfer.plan import checks
from cxrtransfer.plan import inputs as plan_inputs
from cxrtransfer.verify.index import Index, TreeFacts

ROBUST = "pneumothorax_small_s2"  # made adversarially trained below
BASE = "pneumothorax_small"


@pytest.fixture
def robust_config(root):
    """The tiny config with ROBUST adversarially trained against BASE (robust_base)."""
    from snakemake.utils import validate

    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["models"][ROBUST]["training"] = {"adversarial": {"eps": 4}}
    cfg["models"][ROBUST]["robust_base"] = BASE
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    return cfg


def _facts(cfg):
    return plan_inputs.ConfigFacts(cfg, lambda task, split: ["000"])


def test_a_valid_robust_base_passes_and_reaches_the_settings(root, robust_config):
    checks.check_config(robust_config, root)
    s = model_settings(robust_config, ROBUST)
    assert s["robust_base"] == BASE and s["adversarial"]["val_steps"] == 10
    assert "robust_base" not in model_settings(robust_config, BASE)


def test_the_training_job_reads_the_base_checkpoint(robust_config):
    inputs = plan_inputs.train(_facts(robust_config), ROBUST)
    assert inputs["robust_base_model"] == P.MODEL.format(model=BASE)
    assert P.MODEL.format(model=BASE) in plan_inputs.files(inputs)
    clean = plan_inputs.train(_facts(robust_config), BASE)
    assert "robust_base_model" not in clean and "init_model" not in clean


def test_with_init_from_the_start_is_the_base(robust_config):
    cfg = copy.deepcopy(robust_config)
    del cfg["models"][ROBUST]["robust_base"]
    cfg["models"][ROBUST]["init_from"] = BASE
    inputs = plan_inputs.train(_facts(cfg), ROBUST)
    assert inputs["init_model"] == P.MODEL.format(model=BASE)
    assert "robust_base_model" not in inputs
    cfg["models"][ROBUST]["robust_base"] = BASE  # the same model twice: allowed, read once
    assert plan_inputs.train(_facts(cfg), ROBUST) == inputs


def test_verify_asks_the_same_inputs_from_the_recorded_base():
    ix = Index({"model": []}, {ROBUST: "pneumothorax"}, model_robust_bases={ROBUST: BASE})
    facts = TreeFacts(ix)
    assert facts.robust_base(ROBUST) == BASE and facts.robust_base(BASE) is None
    inputs = plan_inputs.train(facts, ROBUST)
    assert inputs["robust_base_model"] == P.MODEL.format(model=BASE)


def _adversarial(cfg, name):
    cfg["models"][name]["training"] = {"adversarial": {"eps": 2}}


@pytest.mark.parametrize(
    "mutate, match",
    [
        (
            lambda c: c["models"][ROBUST].update(robust_base="nobody"),
            rf"^models\.{ROBUST}\.robust_base: 'nobody' is not a configured model",
        ),
        (
            lambda c: c["models"][ROBUST].update(robust_base=ROBUST),
            rf"^models\.{ROBUST}\.robust_base: .*its own robust base",
        ),
        (
            lambda c: c["models"][ROBUST].update(robust_base="cardiomegaly_small"),
            rf"^models\.{ROBUST}\.robust_base: 'cardiomegaly_small' has task 'cardiomegaly'",
        ),
        (
            lambda c: _adversarial(c, BASE),
            rf"^models\.{ROBUST}\.robust_base: '{BASE}' is itself adversarially trained",
        ),
        (
            lambda c: c["training"].update(adversarial={"eps": 2}),  # every model, BASE too
            rf"^models\.{ROBUST}\.robust_base: '{BASE}' is itself adversarially trained",
        ),
        (
            lambda c: c["models"][ROBUST].pop("training"),
            rf"^models\.{ROBUST}\.robust_base: '{ROBUST}' is not adversarially trained",
        ),
        (
            lambda c: (
                c["models"].update(p3={**c["models"][BASE], "seed": 3})
                or c["models"][ROBUST].update(init_from="p3")
            ),
            rf"^models\.{ROBUST}\.robust_base: .*fine-tuned from 'p3'",
        ),
    ],
)
def test_a_base_that_cannot_be_compared_is_refused_naming_the_key(
    root, robust_config, mutate, match
):
    bad = copy.deepcopy(robust_config)
    mutate(bad)
    with pytest.raises(WorkflowError, match=match):
        checks.check_config(bad, root)


def test_the_schema_refuses_too_few_validation_steps(root, robust_config):
    from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
    from snakemake.utils import validate

    bad = copy.deepcopy(robust_config)
    bad["models"][ROBUST]["training"]["adversarial"]["val_steps"] = 3  # 3 x eps/4 < eps
    with pytest.raises(SnakemakeWorkflowError, match="val_steps|3"):
        validate(bad, str(root / "config" / "config.schema.yaml"))
