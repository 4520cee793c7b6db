"""The config schema (``config/config.schema.yaml``) as the one source of defaults.

Library code that needs a default (e.g. tests or benchmarks building settings without a
validated config) reads it here instead of writing it again.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"


@cache
def schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA_PATH.read_text())


def defaults(*section: str) -> dict:
    """``{key: default}`` of the properties of a config section, e.g. ``defaults("training")``
    or ``defaults("data", "synthetic")``."""
    node = schema()
    for key in section:
        node = node["properties"][key]
    return {k: v["default"] for k, v in node["properties"].items() if "default" in v}
