"""The defend job: a trained model behind an input defence (``models.layers``) as one
checkpoint of the model contract, with the same record as a trained model (its own Youden
threshold on the defended validation predictions, test metrics at that threshold)."""

from __future__ import annotations

from pathlib import Path

from cxrtransfer.core.products import read_model_metrics, read_patients
from cxrtransfer.core.provenance import model_record
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.derived import finish_derived_model
from cxrtransfer.models.layers import build_defended, defence_label


def build_defended_checkpoint(
    *,
    name: str,
    model_path,
    metrics_path,
    patients_path,
    val_shards: list,
    test_shards: list,
    out_dir,
    settings: dict,
) -> dict:
    """Write ``out_dir``/model.keras, metrics.json (own Youden threshold on the defended
    validation predictions), history.csv (empty) and train_patients.txt (the model's) of the
    defended model ``name``."""
    record = model_record(model_path, metrics_path)
    base = load_checkpoint(model_path, settings["image_size"])
    model = build_defended(base, settings["defence"], seed=settings.get("seed", 0))
    base_metrics = read_model_metrics(metrics_path)
    extra = {
        "base_model": settings["model"],
        "defence": dict(settings["defence"]),
        "base_checkpoint_sha256": record["sha256"],
        "base_threshold": record["threshold"],
        "base_test": base_metrics.get("test"),
        # the network inside: relations tell "the same network behind another defence"
        "network_weights_sha256": base_metrics.get("weights_sha256"),
    }
    return finish_derived_model(
        name=name,
        model=model,
        settings=settings,
        val_shards=val_shards,
        test_shards=test_shards,
        patients=read_patients(patients_path),
        out_dir=Path(out_dir),
        extra=extra,
        what=f"defended model ({defence_label(settings['defence'])} before {settings['model']})",
    )
