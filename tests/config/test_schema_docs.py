"""Every option of the config schema says what it is: each property (under properties,
definitions, $defs, additionalProperties, items and the if/then/else and oneOf/anyOf/allOf
branches, at every depth) has a one-line description, which the validation errors quote and
config/README.md lists."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "config.schema.yaml"
# keywords whose value maps names to property schemas
NAMED = ("properties", "definitions", "$defs")
# keywords whose value is one schema that stands for many values: (keyword, path suffix)
EACH = (("additionalProperties", ".<name>"), ("items", "[]"))
# keywords whose schemas constrain the same value: their properties are walked, the branch
# itself needs no description
BRANCHES = ("if", "then", "else", "not")
BRANCH_LISTS = ("oneOf", "anyOf", "allOf")


def _documented(node) -> bool:
    return isinstance(node, dict) and bool(str(node.get("description") or "").strip())


def undocumented(node, path: str = "") -> list[str]:
    """The paths of the property schemas below ``node`` without a description."""
    if not isinstance(node, dict):
        return []
    missing = []
    for keyword in NAMED:
        for name, sub in (node.get(keyword) or {}).items():
            parts = [path] if path else []
            sub_path = ".".join([*parts, *([] if keyword == "properties" else [keyword]), name])
            if not _documented(sub):
                missing.append(sub_path)
            missing += undocumented(sub, sub_path)
    for keyword, suffix in EACH:
        sub = node.get(keyword)
        if isinstance(sub, dict):
            if not _documented(sub):
                missing.append(path + suffix)
            missing += undocumented(sub, path + suffix)
    for keyword in BRANCHES:
        missing += undocumented(node.get(keyword), f"{path}({keyword})")
    for keyword in BRANCH_LISTS:
        for branch in node.get(keyword) or []:
            missing += undocumented(branch, path)
    return missing


def test_every_option_of_the_schema_has_a_description():
    missing = undocumented(yaml.safe_load(SCHEMA.read_text()))
    assert not missing, (
        f"{len(missing)} propert{'y has' if len(missing) == 1 else 'ies have'} no description "
        "in config/config.schema.yaml (say what it is, its unit and what it does):\n- "
        + "\n- ".join(missing)
    )


def test_the_walk_finds_every_kind_of_undocumented_property():
    planted = {
        "definitions": {"name": {"type": "string"}},
        "properties": {
            "a": {
                "description": "documented",
                "properties": {"b": {"type": "integer", "description": "  "}},
                "additionalProperties": {"type": "object", "properties": {"c": {}}},
            },
            "d": {"description": "a list", "items": {"type": "number"}},
            "e": {
                "description": "either",
                "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            },
            "f": {"$ref": "#/definitions/name"},
        },
        "if": {"properties": {"g": {"const": 1}}},
        "else": {"properties": {"h": {"default": 2, "description": "fine"}}},
    }
    assert sorted(undocumented(planted)) == sorted(
        ["definitions.name", "a.b", "a.<name>", "a.<name>.c", "d[]", "e[]", "f", "(if).g"]
    )


def test_the_training_definition_describes_its_keys_as_the_training_defaults_do():
    """A model's own ``training:`` (definitions.training) takes the keys of ``training``: the
    same keys, and the same text where the key means the same (adversarial: the model's block
    replaces the default block, its description says so)."""
    schema = yaml.safe_load(SCHEMA.read_text())
    own = schema["definitions"]["training"]["properties"]
    defaults = schema["properties"]["training"]["properties"]
    assert own.keys() == defaults.keys()
    differ = [
        k for k in own if k != "adversarial" and own[k]["description"] != defaults[k]["description"]
    ]
    assert not differ, differ
