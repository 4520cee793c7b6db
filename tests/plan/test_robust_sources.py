"""An adversarially trained source whose training eps exceeds every L-inf eps the grid attacks
it at (a robust surrogate whose examples stay inside its robust region) is refused by the
config checks before any job runs, naming the key; at or below a grid eps, or not a source at
all, it passes."""

import copy

import pytest
import yaml
from cxrtransfer import WorkflowError
from cxrtransfer.plan import checks

SURROGATE = "pneumothorax_small_s2"


@pytest.fixture
def tiny(root):
    """config/test.yaml as the workflow sees it (schema defaults filled in); eps [8]."""
    from snakemake.utils import validate  # heavy: Snakemake

    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    return cfg


def trained_at(cfg, eps, name=SURROGATE):
    out = copy.deepcopy(cfg)
    out["models"][name]["training"] = {"adversarial": {"eps": eps}}
    return out


def test_a_training_eps_at_or_below_a_grid_eps_passes(root, tiny):
    checks.check_config(trained_at(tiny, 8), root)
    checks.check_config(trained_at(tiny, 2), root)


def test_a_training_eps_above_every_grid_eps_is_refused_naming_the_key(root, tiny):
    with pytest.raises(WorkflowError, match=rf"^models\.{SURROGATE}\.training\.adversarial\.eps: "):
        checks.check_config(trained_at(tiny, 12), root)
    with pytest.raises(WorkflowError, match=r"eps 12, above every L-inf eps .* \(8\)"):
        checks.check_config(trained_at(tiny, 12), root)


def test_the_default_block_is_named_when_it_is_the_source_of_the_eps(root, tiny):
    cfg = copy.deepcopy(tiny)
    cfg["training"]["adversarial"] = {"eps": 12}
    with pytest.raises(WorkflowError, match=r"^training\.adversarial\.eps: '"):
        checks.check_config(cfg, root)


def test_an_entry_eps_counts_and_a_model_that_is_no_source_is_not_checked(root, tiny):
    cfg = trained_at(tiny, 12)
    cfg["eps"] = [4, 16]
    cfg["grid"] = [{"sources": [SURROGATE], "data_task": "own", "eps": [4]}]
    with pytest.raises(WorkflowError, match=r"\(4\)"):
        checks.check_config(cfg, root)
    cfg["grid"][0]["eps"] = [4, 16]
    checks.check_config(cfg, root)
    cfg["grid"] = [{"sources": ["pneumothorax_small"], "data_task": "own", "eps": [4]}]
    checks.check_config(cfg, root)
