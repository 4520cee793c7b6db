"""The evaluate job: every (source, target) cell of one adversarial set, from checked files."""

from __future__ import annotations

import math

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core import products
from cxrtransfer.core.files import FIX_DAMAGED
from cxrtransfer.data.expert_labels import read_prepared
from cxrtransfer.evaluate.cells import COUNTS, compute_cell, quantity_columns
from cxrtransfer.evaluate.paired import above_noise
from cxrtransfer.evaluate.predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions
from cxrtransfer.evaluate.relations import ensemble_relation, factors, relation


def read_model_metrics(path) -> dict:
    """What the evaluation reads of a model's metrics.json, made under the run's config."""
    m = products.read_model_metrics(path)
    runconfig.check_record(m, path)  # made under the config its run planned
    try:
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
    expert_file=None,
    control_files: dict | None = None,
) -> list[dict]:
    """Cells of one adversarial set: one per target (every model of the data task).

    ``models``: name -> {arch, task, pretrained, seed} of the source and every target;
    ``clean_files`` / ``adv_files``: target -> prediction file of the whole set (the rows of
    ``test_shards`` in order);
    ``metrics_files`` / ``patients_files``: model -> metrics.json / train_patients.txt;
    ``expert_file``: the data task's expert labels (``expert_labels.prepare``), or None: then
    every cell also gets the ``expert_cell`` columns;
    ``control_files``: target -> prediction file of the set's noise control, or None: then
    every cell also gets the paired CI of its fooling rate above noise (``paired.above_noise``).
    """
    record = {m: read_model_metrics(p) for m, p in metrics_files.items()}
    patients = {m: products.read_patients(p) for m, p in patients_files.items()}
    source_same_task = models[source]["task"] == data_task
    expert = None
    if expert_file is not None:
        expert = read_prepared(expert_file)
    cells = []
    for target in sorted(clean_files):
        files = (clean_files[target], adv_files[target])
        clean, adv = _read_pair(files, test_shards, record[target], record[source])
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
            raise WorkflowError(f"{e} (in the predictions {files[0]}, {files[1]})") from None
        if control_files is not None:
            pair = (clean, adv, (files[0], control_files[target]), test_shards)
            cell.update(
                _above_noise(*pair, record[target], record[source], source_same_task, evaluation)
            )
        if expert is not None:
            cell.update(
                expert_cell(
                    clean,
                    adv,
                    expert,
                    record[target]["threshold"],
                    record[source]["threshold"],
                    evaluation,
                    source_same_task,
                )
            )
        ids = _cell_ids(source, target, data_task, models, patients, record)
        cells.append(
            {
                "source": source,
                "target": target,
                "data_task": data_task,
                "attack": attack,
                "eps": float(eps_label),
                **ids,
                **cell,
            }
        )
    return cells


def _above_noise(
    clean, adv, files, test_shards, target_record, source_record, same_task, evaluation
):
    """The paired CI of a cell's fooling rate above its noise control (``files``: the clean
    and the control's prediction files of the target)."""
    control = _read_pair(files, test_shards, target_record, source_record)[1]
    thresholds = (target_record["threshold"], source_record["threshold"])
    return above_noise(clean, adv, control, *thresholds, same_task, evaluation)


def _read_pair(files, test_shards, target_record: dict, source_record: dict):
    """A target's clean and adversarial predictions, checked against the set's shards and
    the current checkpoints."""
    clean = read_predictions(
        files[0], CLEAN_COLUMNS, test_shards, checkpoint_sha256=target_record["sha256"]
    )
    adv = read_predictions(
        files[1],
        ADV_COLUMNS,
        test_shards,
        checkpoint_sha256=target_record["sha256"],
        source_checkpoint_sha256=source_record["sha256"],
    )
    return clean, adv


def _cell_ids(source, target, data_task, models, patients, record) -> dict:
    """A cell's relation columns: ``relation``, ``member_relations`` (an ensemble source: each
    member's own relation to the target), the architectures and the measured factors."""
    f = _factors(source, target, models, patients, record)
    members = list(models[source].get("members", []))
    member_rels = [_relation(m, target, data_task, models, patients, record) for m in members]
    rel = (
        ensemble_relation(member_rels)
        if members
        else relation(f, models[source]["task"], data_task)
    )
    return {
        "relation": rel,
        "member_relations": "; ".join(
            f"{m}: {r}" for m, r in zip(members, member_rels, strict=True)
        ),
        "source_arch": models[source]["arch"],
        "target_arch": models[target]["arch"],
        **f,
    }


EXPERT_PREFIX = "expert_"
EXPERT_NLP_PREFIX = "expert_nlp_"


def expert_cell(
    clean, adv, expert: dict, t_target, t_source, evaluation: dict, source_same_task: bool
) -> dict:
    """A cell's metrics on the test images that have an expert label (``expert``: image ->
    0/1): ``expert_*`` with the expert label as truth, ``expert_nlp_*`` with the NLP label on
    the same images (the comparison on one image set), each every ``compute_cell`` quantity
    with its CI, the counts and notes; ``n_expert`` (images of the subset) and
    ``expert_note``. Thresholds stay the models' validation thresholds (NLP labels)."""
    keep = clean["image_index"].astype(str).isin(expert).to_numpy()
    n = int(keep.sum())
    out: dict = {"n_expert": n}
    keys = quantity_columns() + list(COUNTS)
    if n == 0:
        for prefix in (EXPERT_PREFIX, EXPERT_NLP_PREFIX):
            out.update({f"{prefix}{k}": float("nan") for k in keys})
            out[f"{prefix}notes"] = ""
        out["expert_note"] = "no test image of this set has an expert label"
        return out
    c = clean[keep].reset_index(drop=True)
    a = adv[adv["image_index"].astype(str).isin(expert).to_numpy()].reset_index(drop=True)
    truth = {
        EXPERT_PREFIX: (
            c.assign(label=c["image_index"].astype(str).map(expert).astype(int)),
            a.assign(label=a["image_index"].astype(str).map(expert).astype(int)),
        ),
        EXPERT_NLP_PREFIX: (c, a),
    }
    for prefix, (cc, aa) in truth.items():
        res = compute_cell(
            cc,
            aa,
            t_target,
            t_source,
            n_boot=evaluation["n_bootstrap"],
            confidence=evaluation["confidence"],
            seed=evaluation["seed"],
            source_task_is_data_task=source_same_task,
        )
        out.update({f"{prefix}{k}": res[k] for k in keys})
        out[f"{prefix}notes"] = res["notes"]
    y = truth[EXPERT_PREFIX][0]["label"]
    notes = []
    if y.nunique() < 2:
        cls = "positive" if int(y.iloc[0]) else "negative"
        notes.append(f"every expert-labelled image is {cls}: expert AUROCs undefined")
    nlp = c["label"].astype(int).to_numpy()
    notes.append(f"expert and NLP labels disagree on {int((nlp != y.to_numpy()).sum())} of {n}")
    out["expert_note"] = "; ".join(notes)
    return out


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


def named_inputs(inputs, prefix: str) -> dict:
    """A rule's named inputs ``{prefix}__{model}`` as {model: file}."""
    return {k.split("__", 1)[1]: v for k, v in inputs.items() if k.startswith(prefix + "__")}


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
