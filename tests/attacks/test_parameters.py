"""Each attack setting is declared once (cxrtransfer.attacks.parameters): the schema's attack
section, its filled-in defaults, the specs' fields and defaults, the bound checks of the code
and of the schema, and the table of docs/ATTACKS.md all agree with the declarations."""

import dataclasses
import re

import jsonschema
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.attacks.parameters import (
    ATTACKS,
    DERIVED,
    PARAMETERS,
    schema_filled,
    table_markdown,
)
from cxrtransfer.attacks.spec import AttackSpec, spec_from_config
from cxrtransfer.attacks.uap import UapSpec, default_steps, uap_spec_from_config
from cxrtransfer.config.schema import attack_defaults, schema

EPS = 8.0
# an entry of each method that every check admits at eps 8 (random_start: any steps reach eps)
BASE = {"fgsm": {"method": "fgsm"}, "pgd": {"method": "pgd", "random_start": True}}
BASE["uap"] = {"method": "uap"}


def _entry_schema() -> dict:
    return schema()["properties"]["attacks"]["additionalProperties"]


def _build(entry: dict):
    return (uap_spec_from_config if entry["method"] == "uap" else spec_from_config)(entry, EPS)


def test_the_schema_attack_properties_are_the_declarations():
    filled = schema_filled()
    expected = {}
    for name, p in PARAMETERS.items():
        expected[name] = p.schema() | ({"default": filled[name]} if name in filled else {})
    assert _entry_schema()["properties"] == expected


@pytest.mark.parametrize("method", sorted(ATTACKS))
def test_the_schema_fills_each_attack_with_its_declared_defaults(method):
    attack = ATTACKS[method]
    got = {k: v for k, v in attack_defaults(method).items() if k in attack.keys}
    assert got == attack.schema_defaults()
    assert {k: type(v) for k, v in got.items()} == {
        k: type(v) for k, v in attack.schema_defaults().items()
    }


def test_a_shared_setting_has_one_default():
    """A setting several attacks take has the same filled-in default in each (the schema has
    one property per setting); the uap's steps are derived, and not filled in."""
    for name, p in PARAMETERS.items():
        if p.schema_fills:
            values = {
                repr(a.defaults[name])
                for a in ATTACKS.values()
                if name in a.keys and a.defaults[name] not in (None, DERIVED)
            }
            assert len(values) == 1, (name, values)
    assert ATTACKS["uap"].defaults["steps"] == DERIVED
    assert "steps" not in attack_defaults("uap")


def _fields(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_the_specs_hold_exactly_the_declared_settings_with_their_defaults():
    per_image = ATTACKS["pgd"]
    assert ATTACKS["fgsm"].defaults == per_image.defaults
    fields = _fields(AttackSpec)
    # eps comes from the grid, step from step or step_fraction x eps
    assert set(fields) - {"eps", "step"} == per_image.keys - {"step", "step_fraction"}
    for name, default in fields.items():
        if name in per_image.keys - {"method", "step"}:
            assert default == per_image.defaults[name] and type(default) is PARAMETERS[name].type
    uap = ATTACKS["uap"]
    fields = _fields(UapSpec)
    assert set(fields) - {"eps", "step"} == uap.keys - {"step", "step_fraction"}
    for name, default in fields.items():
        if name not in ("method", "steps", "eps", "step"):
            assert default == uap.defaults[name] and type(default) is PARAMETERS[name].type


def test_an_entry_without_settings_gets_the_declared_defaults():
    spec = spec_from_config({"method": "pgd"}, EPS)
    d = ATTACKS["pgd"].defaults
    assert spec.step == d["step_fraction"] * EPS
    for name in ATTACKS["pgd"].keys - {"method", "step", "step_fraction"}:
        assert getattr(spec, name) == d[name], name
    u = uap_spec_from_config({"method": "uap"}, EPS)
    d = ATTACKS["uap"].defaults
    assert u.step == d["step_fraction"] * EPS
    assert u.steps == default_steps(EPS, u.step) == 40
    for name in ("split", "max_images", "loss_clamp", "seed", "norm"):
        assert getattr(u, name) == d[name], name


def _outside(p) -> list:
    """Values just outside a setting's declared bounds."""
    step = 1 if p.type is int else 0.5
    out = []
    if p.minimum is not None:
        out.append(p.type(p.minimum - step))
    if p.maximum is not None:
        out.append(p.type(p.maximum + step))
    if p.above is not None:
        out.append(p.type(p.above))
    if p.choices:
        out.append("nonsense")
    return out


CASES = [
    (method, name, value)
    for method, attack in sorted(ATTACKS.items())
    for name in sorted(attack.keys)
    for value in _outside(PARAMETERS[name])
]


@pytest.mark.parametrize(("method", "name", "value"), CASES)
def test_the_code_and_the_schema_refuse_a_value_outside_the_declared_bounds(method, name, value):
    entry = {**BASE[method], name: value}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(entry, _entry_schema())
    with pytest.raises(WorkflowError, match=re.escape(name)):
        _build(entry)


def test_every_bounded_setting_is_checked():
    """Each declared bound is exercised above, for every attack that takes the setting."""
    bounded = {n for n, p in PARAMETERS.items() if _outside(p) and not p.removed}
    assert {name for _, name, _ in CASES} == bounded
    assert len(CASES) >= 25


def test_a_setting_of_another_attack_and_a_removed_one_are_refused_with_a_hint():
    with pytest.raises(WorkflowError, match="loss_clamp have no meaning for method pgd"):
        spec_from_config({"method": "pgd", "loss_clamp": 5.0}, EPS)
    with pytest.raises(WorkflowError, match="momentum have no meaning for method uap"):
        uap_spec_from_config({"method": "uap", "momentum": 1.0}, EPS)
    with pytest.raises(WorkflowError, match="replace epochs with steps"):
        uap_spec_from_config({"method": "uap", "epochs": 5}, EPS)
    # the per-image defaults the schema fills into a uap entry are dropped, not refused
    filled = {k: v for k, v in attack_defaults("uap").items() if k not in ATTACKS["uap"].keys}
    assert filled and uap_spec_from_config({"method": "uap", **filled}, EPS).steps == 40


def test_the_docs_hold_the_declared_parameter_table(root):
    text = (root / "docs" / "ATTACKS.md").read_text()
    block = re.search(
        r"<!-- attack-parameters:start -->\n(.*?)<!-- attack-parameters:end -->", text, re.S
    )
    assert block, "docs/ATTACKS.md lacks the generated parameter table"
    assert block.group(1) == table_markdown(), "stale: make attack-parameters"
    for name in PARAMETERS:
        if not PARAMETERS[name].removed:
            assert f"| `{name}` |" in block.group(1)
