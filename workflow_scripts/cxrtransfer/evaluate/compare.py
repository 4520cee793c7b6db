"""The compare job: paired comparisons of the adversarial sets of one deployed target, from
their checked prediction files (no model is loaded). Which pairs: ``plan.comparisons``; the
metrics: docs/METRICS.md#paired-differences; the columns: ``comparison_table``.
"""

from __future__ import annotations

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.evaluate.cell_inputs import align_inputs
from cxrtransfer.evaluate.comparison_table import COMPARISON_COLUMNS
from cxrtransfer.evaluate.paired import compare_pair
from cxrtransfer.evaluate.predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions
from cxrtransfer.evaluate.sets import read_model_metrics


def _read_sets(target, sets, clean_file, adv_files, record) -> list[dict]:
    """Each set's predictions on the target, aligned with the clean ones (same images, sorted),
    checked against the current checkpoints of the target and the set's source."""
    clean = read_predictions(clean_file, CLEAN_COLUMNS, checkpoint_sha256=record[target]["sha256"])
    aligned = []
    for s, path in zip(sets, adv_files, strict=True):
        adv = read_predictions(
            path,
            ADV_COLUMNS,
            checkpoint_sha256=record[target]["sha256"],
            source_checkpoint_sha256=record[s["source"]]["sha256"],
        )
        try:
            aligned.append(align_inputs(clean, adv))
        except WorkflowError as e:
            raise WorkflowError(f"{e} (in the predictions {clean_file}, {path})") from None
    return aligned


def compare_target(
    *,
    target: str,
    data_task: str,
    sets: list[dict],
    pairs: list[dict],
    clean_file,
    adv_files: list,
    metrics_files: dict,
    source_tasks: dict,
    evaluation: dict,
) -> pd.DataFrame:
    """The comparisons of one target (``COMPARISON_COLUMNS``, one row per pair).

    ``sets``: [{source, attack, eps}] on ``data_task``'s test images, ``adv_files`` their
    prediction files on the target (same order); ``pairs``: [{a, b, kind}] (indices into
    ``sets``); ``metrics_files``: model -> metrics.json of the target and every source;
    ``source_tasks``: source -> its task (the transfer base rule, as in the cells).
    """
    record = {m: read_model_metrics(p) for m, p in metrics_files.items()}
    aligned = _read_sets(target, sets, clean_file, adv_files, record)
    t_target = record[target]["threshold"]

    def settings(i):
        source = sets[i]["source"]
        return (t_target, record[source]["threshold"], source_tasks[source] == data_task)

    job = runconfig.job_record()  # the config the job ran with (provenance of every row)
    rows = []
    for p in pairs:
        a, b = sets[p["a"]], sets[p["b"]]
        res = compare_pair(
            aligned[p["a"]], aligned[p["b"]], settings(p["a"]), settings(p["b"]), evaluation
        )
        rows.append(
            {
                "data_task": data_task,
                "target": target,
                "eps": float(a["eps"]),
                "kind": p["kind"],
                "source_a": a["source"],
                "attack_a": a["attack"],
                "source_b": b["source"],
                "attack_b": b["attack"],
                **res,
                "n_images": int(aligned[p["a"]]["label"].size),
                "n_patients": int(pd.unique(aligned[p["a"]]["patient_id"]).size),
                "n_boot": int(evaluation["n_bootstrap"]),
                "ci_level": float(evaluation["confidence"]),
                "seed": int(evaluation["seed"]),
                "bootstrap_cluster": "patient",
                "t_target": float(t_target),
                "target_checkpoint_sha256": record[target]["sha256"],
                "source_a_checkpoint_sha256": record[a["source"]]["sha256"],
                "source_b_checkpoint_sha256": record[b["source"]]["sha256"],
                **{f: job.get(f) for f in runconfig.FIELDS},
            }
        )
    return pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
