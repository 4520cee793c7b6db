"""Provenance of products: which checkpoint made a cache or a prediction file."""

from __future__ import annotations

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED, file_sha256
from cxrtransfer.core.products import read_model_metrics


def model_record(model_path, metrics_path) -> dict:
    """The checkpoint's SHA-256, decision threshold (None for a multi-label model) and task,
    checked against each other: the
    hash recorded in ``metrics.json`` must be that of ``model.keras`` (else one of the two is
    stale or damaged)."""
    try:
        metrics = read_model_metrics(metrics_path)
        recorded = metrics["checkpoint_sha256"]
        # a multi-label model has per-label thresholds (its views choose their own)
        multi = metrics.get("output") == "sigmoid"
        threshold = None if multi else float(metrics["threshold"])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise WorkflowError(
            f"Cannot read the checkpoint record '{metrics_path}' ({e}); rerun its training job "
            "(snakemake --forcerun train) or run `python -m cxrtransfer.verify --remove`."
        ) from None
    actual = file_sha256(model_path)
    if actual != recorded:
        raise WorkflowError(
            f"'{model_path}' (sha256 {actual[:12]}...) is not the checkpoint that "
            f"'{metrics_path}' describes ({recorded[:12]}...): one of them is stale or "
            f"damaged. {FIX_DAMAGED}"
        )
    return {"sha256": actual, "threshold": threshold, "task": metrics.get("task")}
