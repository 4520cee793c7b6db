"""Every option of the config schema says what it is: each property (under properties,
definitions, $defs, additionalProperties, items and the if/then/else and oneOf/anyOf/allOf
branches, at every depth) has a one-line description, which the validation errors quote; and
config/README.md, generated from the schema by tools/docs_tables.py (`make docs-tables`), is
current and lists every option."""

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "config.schema.yaml"
README = ROOT / "config" / "README.md"
_spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "tools" / "docs_tables.py")
docs_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_tables)
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


def walk(node, path: str = ""):
    """(path, schema) of every property schema below ``node``; a branch's are marked with the
    branch's keyword, e.g. ``attacks.<name>(else).steps``."""
    if not isinstance(node, dict):
        return
    for keyword in NAMED:
        for name, sub in (node.get(keyword) or {}).items():
            parts = [path] if path else []
            sub_path = ".".join([*parts, *([] if keyword == "properties" else [keyword]), name])
            yield sub_path, sub
            yield from walk(sub, sub_path)
    for keyword, suffix in EACH:
        sub = node.get(keyword)
        if isinstance(sub, dict):
            yield path + suffix, sub
            yield from walk(sub, path + suffix)
    for keyword in BRANCHES:
        yield from walk(node.get(keyword), f"{path}({keyword})")
    for keyword in BRANCH_LISTS:
        for branch in node.get(keyword) or []:
            yield from walk(branch, path)


def undocumented(node) -> list[str]:
    """The paths of the property schemas below ``node`` without a description."""
    return [path for path, sub in walk(node) if not _documented(sub)]


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


# ----------------------------------------------------------------------------------------------
# config/README.md
# ----------------------------------------------------------------------------------------------


def test_the_config_readme_is_generated_from_the_current_schema():
    assert README.read_text() == docs_tables.config_readme(), (
        "config/README.md is stale: run `make docs-tables` (tools/docs_tables.py)"
    )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def test_the_config_readme_lists_every_option_with_its_description():
    """Every option's description is in config/README.md (the generator drops none): all
    properties, map entries and list items, and the shared definitions themselves (their
    properties are the options that refer to them; branches only add defaults)."""
    text = README.read_text()
    missing = [
        path
        for path, sub in walk(yaml.safe_load(SCHEMA.read_text()))
        if "(" not in path
        and not (path.startswith("definitions.") and path.count(".") > 1)
        and f"| {_cell(sub['description'])} |" not in text
    ]
    assert not missing, missing


def test_a_new_option_shows_up_in_the_generated_readme(tmp_path):
    schema = yaml.safe_load(SCHEMA.read_text())
    schema["properties"]["evaluation"]["properties"]["planted"] = {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 2,
        "default": 1.5,
        "description": "a planted | option",
    }
    schema["required"].append("planted_top")
    schema["properties"]["planted_top"] = {"type": ["string", "null"], "description": "top"}
    path = tmp_path / "config.schema.yaml"
    path.write_text(yaml.safe_dump(schema))
    text = docs_tables.config_readme(path)
    assert text != docs_tables.config_readme()
    row = "| `evaluation.planted` | number | `1.5` | > 0 and <= 2 | a planted \\| option |"
    assert row in text.splitlines()
    assert "| `planted_top` | string or null | *required* |  | top |" in text.splitlines()


def test_the_config_readme_links_resolve():
    text = README.read_text()
    anchors = {
        re.sub(r"[^\w\- ]", "", m.lower()).replace(" ", "-")
        for m in re.findall(r"^#+\s+(.+?)\s*$", text, re.M)
    }
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        file, _, anchor = target.partition("#")
        if re.match(r"[a-z]+:", file):
            continue
        if file and not (README.parent / file).resolve().is_file():
            bad.append(target)
        elif not file and anchor not in anchors:
            bad.append(target)
    assert not bad, bad
