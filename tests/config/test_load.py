"""Reading configs: YAML errors with file and line, base studies and their merge, the schema's
verdict naming the key and the closest valid keys, and the unit of L-inf budgets."""

import copy

import pytest
import yaml
from conftest import written
from cxrtransfer import WorkflowError
from cxrtransfer.config import load
from cxrtransfer.config.schema import schema
from cxrtransfer.plan import checks
from snakemake.utils import validate


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = written(
        tmp_path / "mine.yaml", "study_name: x\ndata:\n  source: synthetic\n   bad: [1\n"
    )
    with pytest.raises(WorkflowError, match=r"mine\.yaml:4:\d+: the config file is not valid"):
        load.read_yaml(path)
    with pytest.raises(WorkflowError, match="must be a mapping"):
        load.read_yaml(written(tmp_path / "list.yaml", "- a\n- b\n"))
    assert load.read_yaml(written(tmp_path / "empty.yaml", "")) == {}


def test_merge_rules():
    base = {
        "models": {"a": {"lr": 1, "seed": 1}, "b": {"lr": 2}},
        "eps": [2, 8],
        "grid": [{"sources": "all"}],
        "x": 1,
    }
    over = {"models": {"a": {"lr": 5}, "b": None}, "eps": [4], "x": {"y": 1}}
    before = copy.deepcopy(base)
    merged = load.merge(base, over)
    assert merged == {
        "models": {"a": {"lr": 5, "seed": 1}},  # merged key by key; null removes an entry
        "eps": [4],  # lists replace
        "grid": [{"sources": "all"}],  # left out: kept
        "x": {"y": 1},  # another type replaces
    }
    assert base == before  # the base is not changed


def test_a_partial_config_works_on_its_named_base(root):
    demo = yaml.safe_load((root / "config" / "config.yaml").read_text())
    model = next(iter(demo["models"]))
    partial = {
        "base": "demo",
        "data": {"kaggle_dir": "/data/nih"},
        "models": {model: {"training": {"learning_rate": 0.01}}},
    }
    study = load.resolve(partial, root / "config")
    assert study["base"] == "demo"
    assert study["data"]["kaggle_dir"] == "/data/nih"
    assert study["data"]["source"] == demo["data"]["source"]  # the rest of data: kept
    assert study["models"][model]["training"]["learning_rate"] == 0.01
    assert study["models"][model]["arch"] == demo["models"][model]["arch"]
    assert set(study["models"]) == set(demo["models"])
    assert study["grid"] == demo["grid"]
    load.check_schema(study, schema())


def test_a_base_chain_resolves_in_order_and_a_cycle_is_refused(tmp_path):
    written(tmp_path / "a.yaml", "study_name: a\neps: [2]\nx: {p: 1, q: 1}\n")
    written(tmp_path / "b.yaml", f"base: {tmp_path / 'a.yaml'}\neps: [4]\nx: {{q: 2}}\n")
    study = load.resolve({"base": str(tmp_path / "b.yaml"), "study_name": "c"}, tmp_path)
    assert study == {"base": str(tmp_path / "b.yaml"), "study_name": "c", "eps": [4],
                     "x": {"p": 1, "q": 2}}  # fmt: skip
    written(tmp_path / "a.yaml", f"base: {tmp_path / 'b.yaml'}\n")
    with pytest.raises(WorkflowError, match="cycle"):
        load.resolve({"base": str(tmp_path / "b.yaml")}, tmp_path)


def test_an_unknown_base_names_the_studies(root):
    with pytest.raises(WorkflowError, match=r"'nhi' is neither a study .*demo.*nih"):
        load.resolve({"base": "nhi"}, root / "config")


@pytest.mark.parametrize(
    "name", ["config", "test", "nih", "real_metadata", "robust_demo", "multilabel_demo"]
)
def test_every_shipped_study_is_valid(root, name):
    cfg = load.resolve(load.read_yaml(root / "config" / f"{name}.yaml"), root / "config")
    load.check_schema(cfg, schema())
    validate(cfg, str(root / "config" / "config.schema.yaml"))
    checks.check_config(cfg, root)


def _demo(root):
    return yaml.safe_load((root / "config" / "test.yaml").read_text())


def test_an_unknown_key_is_named_with_the_closest_valid_ones(root):
    cfg = _demo(root)
    cfg["traning"] = {"epochs": 3}
    cfg["data"]["synthetic"]["n_patinets"] = 10
    errors = load.schema_errors(cfg, schema())
    assert any("unknown key 'traning' in (top level) (did you mean 'training'?)" in e
               for e in errors)  # fmt: skip
    assert any("unknown key 'n_patinets' in data.synthetic (did you mean 'n_patients'" in e
               for e in errors)  # fmt: skip
    with pytest.raises(WorkflowError, match="config/README.md") as e:
        load.check_schema(cfg, schema())
    assert len(str(e.value).splitlines()) < 10  # no schema dump


def test_a_wrong_value_names_its_key_and_what_it_means(root):
    cfg = _demo(root)
    cfg["data"]["max_rejected_fraction"] = 2
    (error,) = load.schema_errors(cfg, schema())
    assert error.startswith("data.max_rejected_fraction = 2: 2 is greater than the maximum of 1")


def test_a_partial_config_without_base_is_told_how_to_name_one():
    with pytest.raises(WorkflowError, match=r"(?s)missing required key tasks.*base: demo") as e:
        load.check_schema({"data": {"kaggle_dir": "/x", "source": "kaggle"}}, schema())
    assert "(top level): missing required key tasks" in str(e.value)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(eps=[2, 0.031]),
        lambda c: c.setdefault("training", {}).update(adversarial={"eps": 0.0078}),
        lambda c: next(iter(c["models"].values())).update(training={"adversarial": {"eps": 0.5}}),
    ],
)
def test_an_linf_eps_below_one_grey_level_is_refused_with_its_unit(root, edit):
    cfg = _demo(root)
    edit(cfg)
    with pytest.raises(WorkflowError, match=r"1/255 units .* write \d+ \(") as e:
        checks.check_config(cfg, root)
    assert "below one grey level" in str(e.value)
