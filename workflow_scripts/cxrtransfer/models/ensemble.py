"""The ensemble job: several trained models as one source checkpoint (the softmax of their
averaged logits, ``models.build_ensemble``), with the same record as a trained model
(``metrics.json`` with its own Youden threshold on the validation split, test metrics at that
threshold, ``train_patients.txt`` = the union of the members' training patients), so attacks,
predictions and evaluation treat it like any model."""

from __future__ import annotations

from pathlib import Path

from cxrtransfer.core.logs import LOG
from cxrtransfer.core.products import read_patients
from cxrtransfer.core.provenance import model_record
from cxrtransfer.models.build import build_ensemble
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.derived import finish_derived_model


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
    records = [model_record(m, r) for m, r in zip(model_paths, metrics_paths, strict=True)]
    image_size = settings["image_size"]
    loaded = [load_checkpoint(p, image_size) for p in model_paths]
    model = build_ensemble(loaded, members, image_size)
    LOG.info(
        "ensemble %s: member thresholds %s",
        name,
        ", ".join(f"{m} {r['threshold']:.3f}" for m, r in zip(members, records, strict=True)),
    )
    return finish_derived_model(
        name=name,
        model=model,
        settings=settings,
        val_shards=val_shards,
        test_shards=test_shards,
        patients=set().union(*(read_patients(p) for p in patients_paths)),
        out_dir=Path(out_dir),
        extra={
            "members": members,
            "member_checkpoint_sha256": [r["sha256"] for r in records],
            "member_thresholds": [r["threshold"] for r in records],
        },
        what="ensemble",
    )
