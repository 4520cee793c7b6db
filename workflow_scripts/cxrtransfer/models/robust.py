"""Robust validation of an adversarially trained model (``training.adversarial``): the AUROC of
its predictions on the validation images attacked against its own weights (``val_robust_auc``,
each epoch and for the kept checkpoint), and the same number for the base model it must beat
(``init_from``, else ``robust_base``), recorded in metrics.json's ``robust_validation``.

The attack comes from the attacks stage, handed in by the train script
(``cxrtransfer.attacks.adversarial_training.make_val_attack``): the models stage never imports
attack code. It is deterministic (no random start, a fixed stream seed), so a resumed run
computes the numbers the uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtransfer.core.files import file_sha256
from cxrtransfer.core.logs import LOG
from cxrtransfer.data.datasets import shard_arrays, shard_patient_ids
from cxrtransfer.models.callbacks import monitored_key
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.gate import gate_ci
from cxrtransfer.models.inference import make_predict_fn
from cxrtransfer.models.outputs import binary_metrics

BATCH = 128  # validation images attacked per call
NO_BASE_NOTE = (
    "no base model to compare its robustness with (neither init_from nor robust_base is set): "
    "the robustness gate did not run; set models.<name>.robust_base to a clean model of the "
    "same task to have it checked"
)


class RobustValidation:
    """The validation images ``val_shards`` attacked against ``model`` by
    ``make_val_attack(model, adv)`` (traced once; later calls see the model's current weights)."""

    def __init__(self, model, adv: dict, val_shards, image_size: int, make_val_attack):
        self.attack = make_val_attack(model, adv)
        self.predict = make_predict_fn(model, "float32")
        self.val_shards, self.image_size = list(val_shards), int(image_size)

    @property
    def rule(self) -> dict:
        """What the attack is (metrics.json ``robust_validation.attack``)."""
        return dict(getattr(self.attack, "rule", {}))

    def predictions(self) -> dict:
        """labels, probs (of the attacked images) and patient_id of every validation image."""
        labels, probs = [], []
        for images, y, _ in shard_arrays(self.val_shards, self.image_size):
            for i in range(0, len(y), BATCH):
                x = images[i : i + BATCH].astype(np.float32)[..., None] / 255.0
                x_adv = self.attack(x, np.asarray(y[i : i + BATCH], np.int32))
                probs.append(np.asarray(self.predict(x_adv), np.float32))
                labels.append(np.asarray(y[i : i + BATCH]))
        return {
            "labels": np.concatenate(labels),
            "probs": np.concatenate(probs),
            "patient_id": shard_patient_ids(self.val_shards),
        }

    def auc(self) -> float:
        """The robust validation AUROC of the model's current weights."""
        p = self.predictions()
        return robust_auc(p)


def robust_fn(settings: dict, val_shards, make_val_attack):
    """``robust(model, holder) -> val_robust_auc`` of an adversarially trained model (the attack
    traced once per holder), None for a clean one. ``make_val_attack``: the attacks stage's
    (``cxrtransfer.attacks.adversarial_training.make_val_attack``, handed in by the caller)."""
    if not settings.get("adversarial"):
        return None
    if make_val_attack is None:
        raise ValueError(
            "adversarial training settings need make_val_attack "
            "(cxrtransfer.attacks.adversarial_training.make_val_attack)"
        )

    def robust(model, holder):
        if not hasattr(holder, "robust_validation"):
            holder.robust_validation = RobustValidation(
                model, settings["adversarial"], val_shards, settings["image_size"], make_val_attack
            )
        return holder.robust_validation.auc()

    return robust


def robust_auc(predictions: dict) -> float:
    """AUROC of the predictions on the attacked validation images."""
    return binary_metrics(predictions["labels"], predictions["probs"], 0.5)["auc"]


def base_of(settings: dict, init_checkpoint, robust_base_checkpoint) -> dict | None:
    """The model an adversarially trained model's robustness is compared with: ``init_from``
    when set (its checkpoint ``init_checkpoint``), else ``robust_base``
    (``robust_base_checkpoint``), else None."""
    if settings.get("init_from") and init_checkpoint is not None:
        return {"model": settings["init_from"], "via": "init_from", "checkpoint": init_checkpoint}
    if settings.get("robust_base"):
        if robust_base_checkpoint is None:
            raise ValueError(f"robust_base '{settings['robust_base']}' needs its checkpoint")
        return {
            "model": settings["robust_base"],
            "via": "robust_base",
            "checkpoint": robust_base_checkpoint,
        }
    return None


def robust_record(settings: dict, model, val_shards, make_val_attack, base: dict | None) -> dict:
    """metrics.json's ``robust_validation`` of the kept checkpoint ``model``: its robust
    validation AUROC with the gate's patient-bootstrap CI, the attack, the monitored key and the
    base's robust validation AUROC by the same attack on the same images (``robust_base``;
    None, with a ``note``, when there is no base)."""
    adv, size = settings["adversarial"], settings["image_size"]
    mine = RobustValidation(model, adv, val_shards, size, make_val_attack)
    pred = mine.predictions()
    ci = gate_ci(pred, int(settings["seed"]))
    record = {
        "val_robust_auc": robust_auc(pred),
        "val_robust_auc_ci": ci["auc_ci"],
        "ci_rule": ci["auc_ci_rule"],
        "attack": mine.rule,
        "monitored": monitored_key(settings),
        "robust_base": None,
    }
    if base is None:
        LOG.warning("model %s: %s", settings["name"], NO_BASE_NOTE)
        return {**record, "note": NO_BASE_NOTE}
    checkpoint = Path(base["checkpoint"])
    other = load_checkpoint(checkpoint, size)
    theirs = RobustValidation(other, adv, val_shards, size, make_val_attack).auc()
    record["robust_base"] = {
        "model": base["model"],
        "via": base["via"],
        "checkpoint_sha256": file_sha256(checkpoint),
        "val_robust_auc": theirs,
    }
    LOG.info(
        "model %s: robust validation AUROC %.4f, its base %s (%s) %.4f",
        settings["name"],
        record["val_robust_auc"],
        base["model"],
        base["via"],
        theirs,
    )
    return record
