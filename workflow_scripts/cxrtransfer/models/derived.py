"""Models made from trained models without training (ensembles, defended models): their
threshold, metrics and files, written like a trained model's so every later rule treats them
alike."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrtransfer.core.logs import LOG
from cxrtransfer.data.datasets import open_shard
from cxrtransfer.models.gate import gate_ci
from cxrtransfer.models.inference import predict_shards
from cxrtransfer.models.outputs import (
    NEGATIVE_COLUMN,
    SOFTMAX2,
    THRESHOLD_RULE,
    binary_metrics,
    measure_test_split,
    write_outputs,
    youden_threshold,
)


def finish_derived_model(
    *,
    name: str,
    model,
    settings: dict,
    val_shards: list,
    test_shards: list,
    patients: set[int],
    out_dir: Path,
    extra: dict,
    what: str,
) -> dict:
    """Choose ``model``'s own Youden threshold on the validation split, measure it there and
    on test at that threshold, and write ``out_dir``/model.keras, metrics.json, history.csv
    (empty: nothing is trained) and train_patients.txt (``patients``)."""
    image_size = settings["image_size"]
    with open_shard(val_shards[0]) as f:  # the task's finding: column 1 of the model
        label = f.attrs.get("label")
    label = label.decode() if isinstance(label, bytes) else label
    label = settings.get("label") or label or f"{settings['task']} finding"
    val = predict_shards(model, val_shards, image_size)
    threshold = youden_threshold(val["labels"], val["probs"])
    val_metrics = {**binary_metrics(val["labels"], val["probs"], threshold), **gate_ci(val)}
    test_metrics = measure_test_split({**settings, "name": name}, model, test_shards, threshold)
    metrics = {
        "model": name,
        "task": settings["task"],
        "arch": settings["arch"],
        "output": SOFTMAX2,
        "output_columns": [NEGATIVE_COLUMN, str(label)],
        **extra,
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "val": val_metrics,
        "test": test_metrics,
        "settings": settings,
    }
    history = pd.DataFrame(columns=["epoch", "val_auc"])
    metrics = write_outputs(Path(out_dir), model, metrics, history, sorted(patients))
    LOG.info(
        "%s %s: val AUC %.3f, test AUC %.3f (threshold %.3f)",
        what,
        name,
        val_metrics["auc"],
        test_metrics["auc"],
        threshold,
    )
    return metrics
