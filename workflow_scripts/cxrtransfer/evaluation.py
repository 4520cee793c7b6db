"""The evaluate job: every (source, target) cell of one adversarial set, from checked files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import WorkflowError
from .predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions
from .relations import factors, read_patients, relation
from .utils import FIX_DAMAGED


def read_model_metrics(path) -> dict:
    try:
        m = json.loads(Path(path).read_text())
        return {
            "threshold": float(m["threshold"]),
            "sha256": m["checkpoint_sha256"],
            # the weights of the network inside (a defended model's: its model's)
            "network": m.get("network_weights_sha256") or m.get("weights_sha256"),
        }
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise WorkflowError(f"Cannot read '{path}' ({e}). {FIX_DAMAGED}") from None


def evaluate_adv_set(
    *,
    source: str,
    data_task: str,
    attack: str,
    eps_label: str,
    models: dict,
    test_shards: list,
    clean_files: dict,
    adv_files: dict,
    metrics_files: dict,
    patients_files: dict,
    evaluation: dict,
) -> list[dict]:
    """Cells of one adversarial set: one per target (every model of the data task).

    ``models``: name -> {arch, task, pretrained, seed} of the source and every target;
    ``clean_files`` / ``adv_files``: target -> prediction file of the whole set (the rows of
    ``test_shards`` in order);
    ``metrics_files`` / ``patients_files``: model -> metrics.json / train_patients.txt.
    """
    from .metrics import compute_cell

    record = {m: read_model_metrics(p) for m, p in metrics_files.items()}
    patients = {m: read_patients(p) for m, p in patients_files.items()}
    source_same_task = models[source]["task"] == data_task
    cells = []
    for target in sorted(clean_files):
        clean = read_predictions(
            clean_files[target],
            CLEAN_COLUMNS,
            test_shards,
            checkpoint_sha256=record[target]["sha256"],
        )
        adv = read_predictions(
            adv_files[target],
            ADV_COLUMNS,
            test_shards,
            checkpoint_sha256=record[target]["sha256"],
            source_checkpoint_sha256=record[source]["sha256"],
        )
        try:
            cell = compute_cell(
                clean,
                adv,
                record[target]["threshold"],
                record[source]["threshold"],
                n_boot=evaluation["n_bootstrap"],
                confidence=evaluation["confidence"],
                seed=evaluation["seed"],
                source_task_is_data_task=source_same_task,
            )
        except WorkflowError as e:
            files = f"{clean_files[target]}, {adv_files[target]}"
            raise WorkflowError(f"{e} (in the predictions {files})") from None
        f = _factors(source, target, models, patients, record)
        members = list(models[source].get("members", []))
        rel = relation(f, models[source]["task"], data_task)
        if target in members and rel != "cross-task":
            rel = "ensemble with the target"
        cells.append(
            {
                "source": source,
                "target": target,
                "data_task": data_task,
                "attack": attack,
                "eps": float(eps_label),
                "relation": rel,
                # an ensemble source: each member's own relation to the target
                "member_relations": "; ".join(
                    f"{m}: {_relation(m, target, data_task, models, patients, record)}"
                    for m in members
                ),
                "source_arch": models[source]["arch"],
                "target_arch": models[target]["arch"],
                **f,
                **cell,
            }
        )
    return cells


def _factors(source, target, models, patients, record) -> dict:
    network = {m: (record.get(m) or {}).get("network") for m in (source, target)}
    return factors(
        source,
        target,
        models[source],
        models[target],
        patients[source],
        patients[target],
        network[source],
        network[target],
    )


def _relation(source, target, data_task, models, patients, record) -> str:
    f = _factors(source, target, models, patients, record)
    return relation(f, models[source]["task"], data_task)


def nan_to_none(obj):
    """JSON-safe cells: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return nan_to_none(obj.item())
    return obj
