"""The ensemble job: several trained models as one source checkpoint (the softmax of their
averaged logits, ``models.build_ensemble``), with the same record as a trained model
(``metrics.json`` with its own Youden threshold on the validation split, test metrics at that
threshold, ``train_patients.txt`` = the union of the members' training patients), so attacks,
predictions and evaluation treat it like any model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .provenance import model_record
from .relations import read_patients
from .utils import LOG


def build_ensemble_checkpoint(
    *,
    name: str,
    members: list[str],
    model_paths: list,
    metrics_paths: list,
    patients_paths: list,
    val_shards: list,
    test_shards: list,
    out_dir,
    settings: dict,
) -> dict:
    """Write ``out_dir``/model.keras, metrics.json, history.csv (empty: nothing is trained)
    and train_patients.txt of the ensemble ``name`` of ``members``."""
    from .models import build_ensemble, load_checkpoint
    from .train import _test_metrics, _write_outputs, binary_metrics, youden_threshold

    records = [model_record(m, r) for m, r in zip(model_paths, metrics_paths, strict=True)]
    image_size = settings["image_size"]
    loaded = [load_checkpoint(p, image_size) for p in model_paths]
    model = build_ensemble(loaded, members, image_size)
    from .inference import predict_shards

    val = predict_shards(model, val_shards, image_size)
    threshold = youden_threshold(val["labels"], val["probs"])
    val_metrics = binary_metrics(val["labels"], val["probs"], threshold)
    test_metrics = _test_metrics({**settings, "name": name}, model, test_shards, threshold)
    patients = set().union(*(read_patients(p) for p in patients_paths))
    metrics = {
        "model": name,
        "task": settings["task"],
        "arch": settings["arch"],
        "members": members,
        "member_checkpoint_sha256": [r["sha256"] for r in records],
        "member_thresholds": [r["threshold"] for r in records],
        "threshold": threshold,
        "threshold_rule": "Youden J (max sensitivity + specificity - 1) on the validation split",
        "val": val_metrics,
        "test": test_metrics,
        "settings": settings,
    }
    history = pd.DataFrame(columns=["epoch", "val_auc"])
    metrics = _write_outputs(Path(out_dir), model, metrics, history, sorted(patients))
    LOG.info(
        "ensemble %s: val AUC %.3f, test AUC %.3f (threshold %.3f); member thresholds %s",
        name,
        val_metrics["auc"],
        test_metrics["auc"],
        threshold,
        ", ".join(f"{m} {r['threshold']:.3f}" for m, r in zip(members, records, strict=True)),
    )
    return metrics
