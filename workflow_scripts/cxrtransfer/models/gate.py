"""The quality gate of a trained model, on validation data only: a validation AUROC that
reaches ``min_val_auc``, a patient-bootstrap CI whose lower bound is above chance, and no
collapse to one class; and the robustness gate of an adversarially trained model: a robust
validation AUROC above its base's. The test split is never an acceptance gate."""

from __future__ import annotations

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.core.logs import LOG
from cxrtransfer.metrics.bootstrap import auroc_ci

# The gate's bootstrap: resamples and level of the validation AUROC's patient-bootstrap CI.
GATE_N_BOOT = 2000
GATE_CONFIDENCE = 0.95
# A model is refused when the CI's lower bound is at or below chance.
GATE_CHANCE = 0.5


def gate_ci(val: dict, seed: int = 0) -> dict:
    """``auc_ci`` (the validation AUROC's patient-bootstrap CI of predictions ``val``: labels,
    probs, patient_id) and ``auc_ci_rule``, recorded in metrics.json beside the point AUROC."""
    low, high = auroc_ci(
        val["labels"], val["probs"], val["patient_id"], GATE_N_BOOT, GATE_CONFIDENCE, seed
    )
    return {
        "auc_ci": [low, high],
        "auc_ci_rule": (
            f"{GATE_CONFIDENCE:.0%} percentile patient bootstrap ({GATE_N_BOOT} resamples, seed "
            f"{seed}); the gate refuses a lower bound <= {GATE_CHANCE}"
        ),
    }


def _gate_ci_message(settings: dict, val_metrics: dict, what: str) -> str | None:
    low, high = val_metrics.get("auc_ci", (float("nan"), float("nan")))
    if (np.isfinite(low) and low > GATE_CHANCE) or not settings["min_val_auc"] > 0:
        return None  # min_val_auc 0: the quality gate is off
    return (
        f"Model '{settings['name']}' is not shown to be better than chance on its validation "
        f"split: {what} {val_metrics['auc']:.3f} with {GATE_CONFIDENCE:.0%} patient-bootstrap CI "
        f"[{low:.3f}, {high:.3f}] (n = {val_metrics.get('n', '?')} images), whose lower bound is "
        f"not above {GATE_CHANCE}. On a small validation set a point AUROC above min_val_auc can "
        "be luck (a model with validation AUROC 0.612 on 59 images had test AUROC 0.415). Train "
        "longer or with other settings, use more validation patients (split fractions, "
        "data.synthetic sizes), or pretrained weights."
    )


def check_quality(settings: dict, val_metrics: dict, val_probs: np.ndarray) -> None:
    """Refuse models that learnt nothing (the seed study's clean AUC 0.50): a validation AUROC
    below ``min_val_auc``, a CI (``gate_ci``) whose lower bound is at or below chance, or one
    predicted class for everything. Validation data only: the test split is never an
    acceptance gate."""
    if not np.isfinite(val_metrics["auc"]) or val_metrics["auc"] < settings["min_val_auc"]:
        spread = float(np.std(val_probs))
        raise WorkflowError(
            f"Model '{settings['name']}' did not learn its task: validation AUC "
            f"{val_metrics['auc']:.3f} < min_val_auc {settings['min_val_auc']} (probability "
            f"spread {spread:.2g}; a model that predicts one class for everything has AUC 0.5). "
            "Train longer (epochs), lower the learning rate, add warmup_epochs, or use "
            "pretrained weights."
        )
    fraction = val_metrics["predicted_positive_fraction"]
    if fraction in (0.0, 1.0):
        raise WorkflowError(
            f"Model '{settings['name']}' predicts one class for every validation image at its "
            f"threshold (predicted positive fraction {fraction}). It has collapsed; see its "
            "history.csv and retrain with other settings."
        )
    message = _gate_ci_message(settings, val_metrics, "validation AUROC")
    if message:
        raise WorkflowError(message)


def check_multilabel_quality(settings: dict, val_metrics: dict, val_probs: np.ndarray) -> None:
    """The quality gate of a multi-label model (validation data only): the mean validation
    AUROC over the labels with both classes must reach ``min_val_auc`` (the message names the
    labels below it) and its patient-bootstrap CI's lower bound must be above chance, and the
    model must not have collapsed (every output constant)."""
    per = {k: v for k, v in val_metrics["auc_per_label"].items() if v is not None}
    below = sorted(k for k, v in per.items() if v < settings["min_val_auc"])
    mean = val_metrics["auc"]
    if not np.isfinite(mean) or mean < settings["min_val_auc"]:
        detail = ", ".join(f"{k} {per[k]:.3f}" for k in below)
        raise WorkflowError(
            f"Model '{settings['name']}' did not learn its task: mean validation AUC {mean:.3f} "
            f"over {len(per)} labels < min_val_auc {settings['min_val_auc']}; labels below it: "
            f"{detail or 'none'}. Train longer (epochs), lower the learning rate, add "
            "warmup_epochs, or use pretrained weights."
        )
    message = _gate_ci_message(settings, val_metrics, "mean validation AUROC")
    if message:
        raise WorkflowError(message)
    spread = np.std(val_probs, axis=0)
    if len(spread) and float(np.max(spread)) < 1e-6:
        raise WorkflowError(
            f"Model '{settings['name']}' predicts the same probabilities for every validation "
            "image on every output: it has collapsed; see its history.csv and retrain with "
            "other settings."
        )
    if below:
        LOG.warning(
            "model %s: labels below min_val_auc %s (the gate is on the mean): %s",
            settings["name"],
            settings["min_val_auc"],
            ", ".join(f"{k} {per[k]:.3f}" for k in below),
        )


def check_robustness(settings: dict, robust: dict) -> None:
    """The robustness gate of an adversarially trained model (validation data only): refuse it
    when its robust validation AUROC (``robust``: metrics.json's ``robust_validation``) is not
    above its base's by the same attack on the same images. No base (``robust_base`` None):
    nothing to compare, logged and recorded (``robust.robust_record``); ``min_val_auc`` 0
    switches this gate off with the quality gate."""
    base = robust.get("robust_base")
    if base is None or not settings["min_val_auc"] > 0:
        return
    mine, theirs = float(robust["val_robust_auc"]), float(base["val_robust_auc"])
    if np.isfinite(mine) and (not np.isfinite(theirs) or mine > theirs):
        return
    adv, attack = settings["adversarial"], robust.get("attack", {})
    low, high = robust.get("val_robust_auc_ci", (float("nan"), float("nan")))
    raise WorkflowError(
        f"Model '{settings['name']}' is adversarially trained but not more robust than its base "
        f"'{base['model']}' ({base['via']}) on the validation split: robust validation AUROC "
        f"{mine:.3f} (95% CI [{low:.3f}, {high:.3f}]) vs the base's {theirs:.3f}, both under "
        f"L-inf PGD at the training eps {adv['eps']:g}/255 ({attack.get('steps', '?')} steps of "
        "eps/4, no random start, against each model's own weights). Its adversarial training "
        "added no robustness. Train longer (epochs, patience), attack every image of each batch "
        "(training.adversarial.fraction: 1.0) with more steps, add warmup_epochs, use a smaller "
        "learning_rate, or a smaller eps."
    )
