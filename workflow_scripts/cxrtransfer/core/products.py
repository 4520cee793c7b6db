"""Readers of the JSON and text products every stage shares: one function per format.

A product that cannot be read is damaged or stale: each reader fails with the path and what to
do (``FIX_DAMAGED``), never with a bare traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED


def read_json(path, what: str = "product") -> object:
    """A JSON product (any JSON value)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise WorkflowError(f"Cannot read the {what} '{path}' ({e}). {FIX_DAMAGED}") from None


def read_model_metrics(path) -> dict:
    """A model's ``metrics.json`` (written last by its training or derivation job): a mapping."""
    metrics = read_json(path, "model metrics")
    if not isinstance(metrics, dict):
        raise WorkflowError(f"The model metrics '{path}' are not a JSON object. {FIX_DAMAGED}")
    return metrics


def read_cells(path) -> list[dict]:
    """An evaluated set's cells (``results/metrics/...json``): a non-empty list of objects."""
    cells = read_json(path, "evaluated set")
    if not isinstance(cells, list) or not cells or not all(isinstance(c, dict) for c in cells):
        raise WorkflowError(
            f"The evaluated set '{path}' is not a non-empty JSON list of cells. {FIX_DAMAGED}"
        )
    return cells


def json_threshold(metrics_path) -> float:
    """The decision threshold a model chose on its validation split (from metrics.json)."""
    try:
        return float(read_model_metrics(metrics_path)["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise WorkflowError(
            f"Cannot read the decision threshold from '{metrics_path}' ({e}); rerun training."
        ) from None


def read_patients(path) -> set[int]:
    """The training patients a model recorded (``train_patients.txt``, one id per line)."""
    try:
        text = Path(path).read_text()
        return {int(x) for x in text.split()}
    except (OSError, ValueError) as e:
        raise WorkflowError(
            f"Cannot read the training patients of a model from '{path}' ({e}); rerun its "
            "training job (snakemake --forcerun train)."
        ) from None
