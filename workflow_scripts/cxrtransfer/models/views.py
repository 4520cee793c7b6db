"""The finding-view job: one output of a multi-label model as a 2-class checkpoint of the model
contract (``models.build_finding_view``), named ``{model}@{task}``, with the same record as a
trained model (``metrics.json`` with its own Youden threshold on the binary task's validation
split, test metrics at that threshold, ``train_patients.txt`` = the multi-label model's training
patients), so predictions, attacks, evaluation and relations treat it like any model."""

from __future__ import annotations

from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.core.products import read_model_metrics, read_patients
from cxrtransfer.core.provenance import model_record
from cxrtransfer.models.build import build_finding_view
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.derived import finish_derived_model


def build_view_checkpoint(
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
    """Write ``out_dir``/model.keras, metrics.json, history.csv (empty) and train_patients.txt
    of the view ``name`` of column ``settings["column"]`` of the multi-label model."""
    record = model_record(model_path, metrics_path)
    meta = read_model_metrics(metrics_path)
    columns = list(settings["output_columns"])
    k = int(settings["column"])
    if meta.get("output_columns") != columns or columns[k] != settings["label"]:
        raise WorkflowError(
            f"View {name}: the multi-label model's metrics.json '{metrics_path}' records the "
            f"output columns {meta.get('output_columns')}, the config {columns} (column {k} = "
            f"{settings['label']}); retrain '{settings['model']}' (its task's labels changed?)."
        )
    model = load_checkpoint(model_path, settings["image_size"], n_outputs=len(columns))
    view = build_finding_view(model, k, name=name)
    return finish_derived_model(
        name=name,
        model=view,
        settings=settings,
        val_shards=val_shards,
        test_shards=test_shards,
        patients=read_patients(patients_path),
        out_dir=Path(out_dir),
        extra={
            "multi_label_model": settings["model"],
            "multi_label_checkpoint_sha256": record["sha256"],
            "output_column": k,
            "multi_label_output_columns": columns,
            "multi_label_val_auc": meta.get("val", {})
            .get("auc_per_label", {})
            .get(settings["label"]),
        },
        what="finding view",
    )
