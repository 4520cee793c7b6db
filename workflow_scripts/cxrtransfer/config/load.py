"""Reading a study's config: YAML with the file and line of a syntax error, a config built on a
named base study, and the schema's verdict in one message that names the key.

A config may set only what differs from a study it names with ``base:`` (a file of the
workflow's ``config/`` folder without ``.yaml``, ``demo`` for ``config/config.yaml``, or a path
to a YAML file). The merge rules (docs in config/README.md, from ``MERGE_RULES``):
"""

from __future__ import annotations

import difflib
from pathlib import Path

import jsonschema
import yaml

from cxrtransfer import WorkflowError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "config"
BASE = "base"
# a base named like the study it holds; the default study's file is config/config.yaml
BASE_ALIASES = {"demo": "config"}
MERGE_RULES = (
    "A mapping is merged key by key, at every depth: a key the config sets replaces the "
    "base's value, a key it leaves out keeps it (so `models: {target: {training: {epochs: 5}}}` "
    "changes one model's epochs and keeps its other settings and the other models).",
    "A list (eps, grid, a sources list) and every other value replaces the base's whole.",
    "A key set to null removes the base's entry (a model, task, attack or setting; a removed "
    "setting falls back to its schema default).",
    "A base may itself name a base; the chain is resolved from the first study on, and a cycle "
    "is refused. The `--config KEY=VALUE` of the command line applies last.",
)
__doc__ += "".join(f"\n- {rule}" for rule in MERGE_RULES) + "\n"


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from ``path``; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise WorkflowError(f"Cannot read the {what} '{path}': {e.strerror}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise WorkflowError(
            f"{where}: the {what} is not valid YAML ({problem}). Check the indentation (spaces "
            "only, no tabs) and the brackets and quotes near that line."
        ) from None
    except yaml.YAMLError as e:
        raise WorkflowError(f"{path}: the {what} is not valid YAML ({e}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WorkflowError(
            f"{path}: the {what} must be a mapping of keys (study_name:, data:, ...), not a "
            f"{type(data).__name__}."
        )
    return data


def base_path(name: str, config_dir: Path = CONFIG_DIR) -> Path:
    """The file of base study ``name``: a study of the workflow's config/ folder or a path."""
    if not isinstance(name, str) or not name:
        raise WorkflowError(f"{BASE}: give the base study as a name or a path, not {name!r}.")
    named = config_dir / f"{BASE_ALIASES.get(name, name)}.yaml"
    if "/" not in name and not name.endswith((".yaml", ".yml")) and named.is_file():
        return named
    path = Path(name)
    if path.is_file():
        return path.resolve()
    studies = sorted(
        {p.stem for p in config_dir.glob("*.yaml") if not p.name.endswith(".schema.yaml")}
        - set(BASE_ALIASES.values())
        | set(BASE_ALIASES)
    )
    raise WorkflowError(
        f"{BASE}: '{name}' is neither a study of the workflow ({', '.join(studies)}) nor a YAML "
        "file (paths are relative to the directory snakemake runs in)."
    )


def merge(base: dict, over: dict, null_removes: bool = True) -> dict:
    """``over`` merged over ``base`` by ``MERGE_RULES`` (neither argument is changed); with
    ``null_removes=False`` a null is a value like any other (Snakemake's merge of several
    --configfile files)."""
    out = dict(base)
    for key, value in over.items():
        if value is None and null_removes:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, null_removes)
        else:
            out[key] = value
    return out


def merge_files(config: dict, later: dict) -> dict:
    """Snakemake's merge of a later --configfile over the config so far."""
    return merge(config, later, null_removes=False)


def resolve(config: dict, config_dir: Path = CONFIG_DIR) -> dict:
    """The study ``config`` describes: itself, or merged over the chain of its bases. The
    result keeps ``base`` (the name the config gave) as a record of what it was built on."""
    if BASE not in config:
        return config
    chain, seen = [config], []
    node = config
    while BASE in node:
        path = base_path(node[BASE], config_dir)
        if path in seen:
            names = " -> ".join(str(p) for p in [*seen, path])
            raise WorkflowError(f"{BASE}: the bases form a cycle ({names}).")
        seen.append(path)
        node = read_yaml(path, "base study")
        chain.append(node)
    out: dict = {}
    for layer in reversed(chain):
        out = merge(out, {k: v for k, v in layer.items() if k != BASE})
    out[BASE] = config[BASE]
    return out


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _unknown_key_message(error: jsonschema.ValidationError) -> str | None:
    """'unknown key X in Y; did you mean ...' for an additionalProperties error."""
    allowed = list((error.schema.get("properties") or {}).keys())
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return None
    unknown = [k for k in error.instance if k not in allowed]
    where = _key_path(error.absolute_path)
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.5)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"unknown key '{key}' in {where}{hint}")
    return "; ".join(parts) + f". Valid keys of {where}: {', '.join(allowed)}."


def _error_message(error: jsonschema.ValidationError) -> str:
    unknown = _unknown_key_message(error)
    if unknown:
        return unknown
    best = jsonschema.exceptions.best_match([error, *error.context]) if error.context else error
    if best.validator == "required":
        missing = [k for k in best.validator_value if k not in best.instance]
        return f"{_key_path(best.absolute_path)}: missing required key {', '.join(missing)}"
    value = repr(best.instance)
    value = value if len(value) <= 80 else value[:77] + "..."
    where = _key_path(best.absolute_path)
    text = best.schema.get("description", "") if isinstance(best.schema, dict) else ""
    about = f" ({where}: {text.strip()})" if text else ""
    return f"{where} = {value}: {best.message}{about}."


def schema_errors(config: dict, schema: dict) -> list[str]:
    """The schema's objections to ``config``, one readable line each (unknown keys with the
    closest valid ones), in the order of the config's keys."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return list(dict.fromkeys(_error_message(e) for e in errors))  # one line per message


def check_schema(config: dict, schema: dict, source: str = "the config") -> None:
    """Raise one WorkflowError listing every objection of the schema to ``config``."""
    errors = schema_errors(config, schema)
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        hint = ""
        if BASE not in config and any("missing required key" in e for e in errors):
            hint = (
                "\nA config that sets only part of a study names the study it builds on, e.g. "
                "`base: demo` (config/config.yaml) or `base: nih` (config/nih.yaml), and sets "
                "only what differs (merge rules: config/README.md)."
            )
        raise WorkflowError(
            f"{source} does not match the workflow's schema (config/config.schema.yaml; every "
            f"option is described in config/README.md):\n{lines}{hint}"
        )
