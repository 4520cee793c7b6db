"""The config schema (``config/config.schema.yaml``) as the one source of defaults.

Library code that needs a default (e.g. tests or benchmarks building settings without a
validated config) reads it here instead of writing it again.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "config.schema.yaml"


@cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def defaults(*section: str) -> dict:
    """``{key: default}`` of the properties of a config section, e.g. ``defaults("training")``
    or ``defaults("data", "synthetic")``."""
    node = schema()
    for key in section:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}


def attack_defaults(method: str) -> dict:
    """``{key: default}`` the schema fills into one entry of ``attacks:`` with this method:
    the entry's properties and those of its conditional branch (``if`` method is ``const``,
    ``then``, else ``else``; a uap's number of steps has no fixed default)."""
    node = schema()["properties"]["attacks"]["additionalProperties"]
    out = {k: v["default"] for k, v in node["properties"].items() if "default" in v}
    if "if" in node:
        branch = "then" if node["if"]["properties"]["method"]["const"] == method else "else"
        extra = node.get(branch, {}).get("properties", {})
        out.update({k: v["default"] for k, v in extra.items() if "default" in v})
    return out
