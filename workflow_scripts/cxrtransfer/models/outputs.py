"""What a trained or derived model writes: its output record (the model contract), its quality
metrics on a split, its decision threshold, and the files ``model.keras``, ``history.csv``,
``train_patients.txt`` and ``metrics.json`` (written last)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer.config import runconfig
from cxrtransfer.core.files import atomic_path, file_sha256, write_json
from cxrtransfer.core.logs import LOG
from cxrtransfer.metrics import measures as M
from cxrtransfer.models.inference import predict_shards
from cxrtransfer.models.settings import is_multilabel

# Files a model publishes in its directory; a training run removes them all when it starts, so
# a failed run never leaves an older run's outputs that look current.
OUTPUT_FILES = ("model.keras", "metrics.json", "history.csv", "train_patients.txt")
# How a model chooses its decision threshold (metrics.json ``threshold_rule``).
THRESHOLD_RULE = "Youden J (max sensitivity + specificity - 1) on the validation split"

# What metrics.json records of a model's output (the model contract, README "Models and their
# contract"): ``output`` and ``output_columns``, the column names in output order.
SOFTMAX2 = "softmax2"
SIGMOID = "sigmoid"
NEGATIVE_COLUMN = "negative"  # column 0 of a 2-class model: 1 - p(finding)
MULTILABEL_LOSS = "binary cross-entropy per output, unweighted (class_weight is not applied)"


def output_record(s: dict) -> dict:
    """``output`` and ``output_columns`` of the model of settings ``s``."""
    if is_multilabel(s):
        return {"output": SIGMOID, "output_columns": list(s["labels"])}
    return {"output": SOFTMAX2, "output_columns": [NEGATIVE_COLUMN, s["label"]]}


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    """A model's quality on one split, with the metric definitions of ``metrics``."""
    labels = np.asarray(labels).astype(int)
    pred = M.predict(probs, threshold)
    return {
        "auc": float(M.auroc(labels, probs)),
        "accuracy": float(M.accuracy(labels, pred)),
        "sensitivity": float(M.sensitivity(labels, pred)),
        "specificity": float(M.specificity(labels, pred)),
        "n": int(len(labels)),
        "positives": int(labels.sum()),
        "predicted_positive_fraction": float(np.mean(pred)),
    }


def multilabel_metrics(targets: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """A multi-label model's quality on one split: per-label AUROC (None where the split has
    one class of that label) and their mean over the labels with both classes."""
    targets = np.asarray(targets).astype(int)
    per, positives = {}, {}
    for k, name in enumerate(labels):
        y = targets[:, k]
        positives[name] = int(y.sum())
        both = 0 < y.sum() < len(y)
        per[name] = float(M.auroc(y, probs[:, k])) if both else None
    scored = [v for v in per.values() if v is not None]
    return {
        "auc": float(np.mean(scored)) if scored else float("nan"),
        "auc_rule": "mean AUROC over the labels with both classes in this split",
        "auc_per_label": per,
        "labels_scored": len(scored),
        "n": int(len(targets)),
        "positives_per_label": positives,
    }


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 on (validation) data."""
    # heavy: scikit-learn loads in the jobs that choose a threshold only
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(labels, probs)
    j = tpr - fpr
    t = float(thr[int(np.argmax(j))])
    return min(max(t, 0.0), 1.0)


def measure_test_split(settings: dict, model, test_shards, threshold: float) -> dict:
    """Test metrics at the chosen threshold: reported only, after every decision was made."""
    if is_multilabel(settings):
        test = predict_shards(model, test_shards, settings["image_size"], multilabel=True)
        return multilabel_metrics(test["labels"], test["probs"], settings["labels"])
    test = predict_shards(model, test_shards, settings["image_size"])
    metrics = binary_metrics(test["labels"], test["probs"], threshold)
    if metrics["predicted_positive_fraction"] in (0.0, 1.0):
        LOG.warning(
            "model %s predicts one class for every test image (reported, not a gate)",
            settings["name"],
        )
    return metrics


def weights_sha256(model) -> str:
    """sha256 of a model's weights (in order: dtype, shape, bytes): equal for equal weights,
    unlike the .keras file, whose metadata holds the save time (layer names are left out:
    Keras numbers auto-named layers per process)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_outputs(out: Path, model, metrics: dict, history: pd.DataFrame, patient_ids) -> dict:
    """history.csv, train_patients.txt, model.keras (weights only, no optimizer state) and
    metrics.json last, each atomically."""
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    with atomic_path(out / "train_patients.txt") as tmp:
        tmp.write_text("".join(f"{pid}\n" for pid in patient_ids))
    metrics["train_patients"] = {
        "file": "train_patients.txt",
        "n": len(patient_ids),
        "sha256": file_sha256(out / "train_patients.txt"),
    }
    with atomic_path(out / "model.keras") as tmp:
        model.save(tmp)  # loaded with compile=False: no optimizer variables are saved
        metrics["checkpoint_sha256"] = file_sha256(tmp)
    metrics["weights_sha256"] = weights_sha256(model)
    metrics.update(runconfig.job_record())  # the config the job ran with and the planned one
    write_json(out / "metrics.json", metrics)
    return metrics
