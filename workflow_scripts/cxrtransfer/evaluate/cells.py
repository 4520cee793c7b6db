"""The metrics of one transferability cell (source, target, data task, attack, eps).

Each quantity is defined once, in docs/METRICS.md; this module is its code (the measures that
training and UAP crafting share are in ``metrics.measures``, the patient bootstrap in
``metrics.bootstrap``). Notation, per image i:

* ``y_i`` in {0, 1}: the label of the finding (data task);
* ``p_i`` / ``q_i``: the target's probability on the clean / adversarial image;
* ``r_i`` / ``s_i``: the source model's probability on the clean / adversarial image;
* ``t`` / ``t_s``: the target's / source's decision threshold; prediction = ``prob >= t``, so
  ``pred_i = [p_i >= t]``, ``adv_pred_i = [q_i >= t]``, ``src_pred_i = [r_i >= t_s]``,
  ``src_adv_pred_i = [s_i >= t_s]``;
* ``w_i >= 0``: the weight of image i (all 1 for the point estimate).

``compute_cell`` checks its inputs (``evaluate.cell_inputs``) and computes every quantity with
a paired percentile patient bootstrap: clean and adversarial predictions share the resample.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrtransfer.evaluate.cell_inputs import align_inputs, check_settings
from cxrtransfer.metrics.bootstrap import cluster_codes, percentile_bootstrap
from cxrtransfer.metrics.measures import (
    accuracy,
    auroc,
    correct,
    flip_rate,
    flipped,
    predict,
    ratio_of_counts,
    sensitivity,
    specificity,
    weighted_mean,
    wrong,
)

# Quantities with a point estimate and a bootstrap CI, in output order.
QUANTITIES = (
    "clean_auroc",
    "adv_auroc",
    "auroc_ratio",
    "clean_accuracy",
    "adv_accuracy",
    "clean_sensitivity",
    "clean_specificity",
    "adv_sensitivity",
    "adv_specificity",
    "clean_confidence",
    "adv_confidence",
    "attack_success_rate",
    "fooling_rate",
    "flip_rate",
    "transfer_rate",
    "mean_l2",
    "mean_linf",
)
# Integer counts (unweighted), in output order.
COUNTS = (
    "n_images",
    "n_patients",
    "n_positive",
    "n_negative",
    "n_clean_correct",
    "n_success",
    "n_fooled",
    "n_flipped",
    "n_source_caused",
    "n_transfer_base",
    "n_transferred",
    # the largest per-image L-inf perturbation of the set in grey levels (1/255 units): the
    # budget the set reached, beside the eps its label says (the same for its noise control)
    "achieved_linf",
)
# Settings echoed into the cell so a table row says how it was computed.
SETTINGS = (
    "t_target",
    "t_source",
    "transfer_base_rule",
    "bootstrap_cluster",
    "n_boot",
    "ci_level",
    "seed",
)
# transfer_base_rule values, by source_task_is_data_task.
TRANSFER_BASE_RULES = {
    True: "source right on clean, wrong on adversarial",
    False: "source decision flipped",
}


# ----------------------------------------------------------------------------------------------
# The measures only the evaluation uses (each defined in docs/METRICS.md; last axis = images)
# ----------------------------------------------------------------------------------------------


def mean_max_confidence(prob, w=None):
    """``clean_confidence`` / ``adv_confidence``: ``mean_i max(p_i, 1 - p_i)`` (for a sigmoid
    output the two classes have probabilities p and 1 - p)."""
    prob = np.asarray(prob, dtype=float)
    return weighted_mean(np.maximum(prob, 1.0 - prob), w)


def auroc_ratio(adv_auroc, clean_auroc):
    """``auroc_ratio``: ``adv_auroc / clean_auroc`` (Bortsova et
    al. report it as a percentage); NaN if either is undefined or clean AUROC is 0."""
    adv_auroc = np.asarray(adv_auroc, dtype=float)
    clean_auroc = np.asarray(clean_auroc, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(
            clean_auroc > 0, adv_auroc / np.where(clean_auroc > 0, clean_auroc, 1), np.nan
        )
    return out[()] if out.ndim == 0 else out


def attack_success_rate(label, clean_pred, adv_pred, w=None):
    """``attack_success_rate``: ``sum_i [pred_i == y_i and adv_pred_i != y_i] / sum_i [pred_i
    == y_i]`` (among images the target gets right when clean, those it gets wrong attacked)."""
    return ratio_of_counts(wrong(label, adv_pred), correct(label, clean_pred), w)


def fooling_rate(label, adv_pred, w=None):
    """``fooling_rate`` (the unconditional transfer rate): ``mean_i [adv_pred_i != y_i]``."""
    return weighted_mean(wrong(label, adv_pred), w)


def source_caused(label, source_clean_pred, source_adv_pred, source_task_is_data_task=True):
    """Per image: did the attack cause the source's error (``n_source_caused``)?

    Same task (the source was trained on the data task, so ``y`` is its label):
    ``source_caused_i = [src_pred_i == y_i and src_adv_pred_i != y_i]`` (right on the clean
    image, wrong on the adversarial one). Cross task (the source's label is not ``y``): its
    decision flipped, ``source_caused_i = [src_pred_i != src_adv_pred_i]``.
    """
    clean = np.asarray(source_clean_pred).astype(bool)
    adv = np.asarray(source_adv_pred).astype(bool)
    if not source_task_is_data_task:
        return clean != adv
    label = np.asarray(label).astype(bool)
    return (clean == label) & (adv != label)


def transfer_base(label, clean_pred, caused):
    """Per image: is it in the transfer rate's base (``n_transfer_base``), ``B_i = [caused_i and
    pred_i == y_i]`` (``caused``: ``source_caused``)."""
    return np.asarray(caused).astype(bool) & correct(label, clean_pred)


def transfer_rate(label, clean_pred, adv_pred, caused, w=None):
    """``transfer_rate`` (conditional): ``sum_i [B_i and adv_pred_i != y_i] / sum_i B_i`` with
    ``B_i`` the ``transfer_base``."""
    return ratio_of_counts(wrong(label, adv_pred), transfer_base(label, clean_pred, caused), w)


def mean_value(x, w=None):
    """``mean_l2`` / ``mean_linf``: plain mean ``mean_i x_i`` of the per-image sizes."""
    return weighted_mean(x, w)


# ----------------------------------------------------------------------------------------------
# All quantities of a cell from per-image arrays
# ----------------------------------------------------------------------------------------------


def decisions(a: dict, t_target: float, t_source: float, source_task_is_data_task: bool):
    """The target's clean and adversarial decisions and ``source_caused`` of aligned inputs."""
    caused = source_caused(
        a["label"],
        predict(a["source_clean_prob"], t_source),
        predict(a["source_adv_prob"], t_source),
        source_task_is_data_task,
    )
    return predict(a["prob"], t_target), predict(a["adv_prob"], t_target), caused


def quantities(
    a: dict, t_target: float, t_source: float, source_task_is_data_task: bool = True, w=None
) -> dict:
    """Every quantity in ``QUANTITIES`` from per-image arrays (1-D, one value per image) and
    per-image weights ``w`` (None = all 1, the point estimate; or ``(..., n)``, one row per
    resample, giving arrays of shape ``(...)``).

    ``a`` holds ``label``, ``prob`` (clean), ``adv_prob``, ``source_clean_prob``,
    ``source_adv_prob``, ``l2``, ``linf``.
    """
    y = a["label"]
    clean_pred, adv_pred, caused = decisions(a, t_target, t_source, source_task_is_data_task)
    clean_auc = auroc(y, a["prob"], w)
    adv_auc = auroc(y, a["adv_prob"], w)
    return {
        "clean_auroc": clean_auc,
        "adv_auroc": adv_auc,
        "auroc_ratio": auroc_ratio(adv_auc, clean_auc),
        "clean_accuracy": accuracy(y, clean_pred, w),
        "adv_accuracy": accuracy(y, adv_pred, w),
        "clean_sensitivity": sensitivity(y, clean_pred, w),
        "clean_specificity": specificity(y, clean_pred, w),
        "adv_sensitivity": sensitivity(y, adv_pred, w),
        "adv_specificity": specificity(y, adv_pred, w),
        "clean_confidence": mean_max_confidence(a["prob"], w),
        "adv_confidence": mean_max_confidence(a["adv_prob"], w),
        "attack_success_rate": attack_success_rate(y, clean_pred, adv_pred, w),
        "fooling_rate": fooling_rate(y, adv_pred, w),
        "flip_rate": flip_rate(clean_pred, adv_pred, w),
        "transfer_rate": transfer_rate(y, clean_pred, adv_pred, caused, w),
        "mean_l2": mean_value(a["l2"], w),
        "mean_linf": mean_value(a["linf"], w),
    }


def counts(a: dict, t_target: float, t_source: float, source_task_is_data_task: bool = True):
    """The integers in ``COUNTS`` (denominators and numerators of the rates, unweighted; the
    reached L-inf budget)."""
    y = a["label"].astype(bool)
    clean_pred, adv_pred, caused = decisions(a, t_target, t_source, source_task_is_data_task)
    clean_ok = correct(y, clean_pred)
    adv_wrong = wrong(y, adv_pred)
    base = transfer_base(y, clean_pred, caused)
    return {
        "n_images": int(y.size),
        "n_patients": int(np.unique(a["patient_id"]).size),
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "n_clean_correct": int(clean_ok.sum()),
        "n_success": int((clean_ok & adv_wrong).sum()),
        "n_fooled": int(adv_wrong.sum()),
        "n_flipped": int(flipped(clean_pred, adv_pred).sum()),
        "n_source_caused": int(caused.sum()),
        "n_transfer_base": int(base.sum()),
        "n_transferred": int((base & adv_wrong).sum()),
        "achieved_linf": int(round(float(np.max(a["linf"], initial=0.0)) * 255)),
    }


# ----------------------------------------------------------------------------------------------
# The cell
# ----------------------------------------------------------------------------------------------

_UNDEFINED_REASONS = {
    "sensitivity": "no positive images (label 1)",
    "specificity": "no negative images (label 0)",
    "attack_success_rate": "the target classifies no clean image correctly (n_clean_correct = 0)",
}
_TRANSFER_BASE_REASONS = {
    True: "the attack made the source wrong (right on clean, wrong on adversarial)",
    False: "the attack flipped the source's decision",
}


def _point_notes(q: dict, cnt: dict, source_task_is_data_task: bool) -> list[str]:
    notes = []
    if cnt["n_positive"] == 0 or cnt["n_negative"] == 0:
        only = 0 if cnt["n_positive"] == 0 else 1
        notes.append(
            f"AUROC undefined: labels contain only class {only} "
            "(clean_auroc, adv_auroc, auroc_ratio are NaN)"
        )
    elif q["clean_auroc"] == 0:
        notes.append("auroc_ratio undefined: clean_auroc is 0")
    for key in ("sensitivity", "specificity"):
        if np.isnan(q[f"clean_{key}"]):
            notes.append(f"{key} undefined: {_UNDEFINED_REASONS[key]}")
    if np.isnan(q["attack_success_rate"]):
        notes.append(f"attack_success_rate undefined: {_UNDEFINED_REASONS['attack_success_rate']}")
    if np.isnan(q["transfer_rate"]):
        notes.append(
            "transfer_rate undefined: no image where "
            f"{_TRANSFER_BASE_REASONS[source_task_is_data_task]} and the target classifies the "
            f"clean image correctly (n_transfer_base = 0; n_source_caused = "
            f"{cnt['n_source_caused']})"
        )
    return notes


def compute_cell(
    clean: pd.DataFrame,
    adv: pd.DataFrame,
    t_target: float,
    t_source: float,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    source_task_is_data_task: bool = True,
    cluster: str = "patient",
) -> dict:
    """All metrics of one (source, target, data task, attack, eps) cell as a flat dict.

    ``source_task_is_data_task`` selects the transfer base (see ``source_caused``): True (the
    source was trained on the data task) = "source right on clean, wrong on adversarial"; False
    = "source decision flipped". ``cluster`` is the bootstrap's resampling unit: "patient"
    (default, the right one for NIH test sets) or "image" (ignores the clustering; for
    comparisons only).

    Keys: for each ``Q`` in ``QUANTITIES``: ``Q``, ``Q_ci_low``, ``Q_ci_high``; the ``COUNTS``;
    the ``SETTINGS`` (``t_target``, ``t_source``, ``transfer_base_rule``, ``bootstrap_cluster``,
    ``n_boot``, ``ci_level``, ``seed``); and ``notes`` ("" when nothing to report; otherwise
    "; "-separated reasons for NaN values).

    CIs: paired percentile cluster bootstrap (``scipy.stats.bootstrap`` over patients, seeded;
    every image of a drawn patient enters with the patient's multiplicity, clean and adversarial
    predictions together). A quantity undefined at the point estimate has NaN CIs. A quantity
    undefined in some resamples only (e.g. a resample without positives) gets its CI from the
    resamples where it is defined, and ``notes`` says how many.
    """
    check_settings(t_target, t_source, n_boot, confidence, cluster)
    same_task = bool(source_task_is_data_task)
    a = align_inputs(clean, adv)
    q = quantities(a, t_target, t_source, same_task)
    cnt = counts(a, t_target, t_source, same_task)
    notes = _point_notes(q, cnt, same_task)

    def statistic_of_weights(w):
        qw = quantities(a, t_target, t_source, same_task, w)
        return np.stack([np.asarray(qw[k], dtype=float) for k in QUANTITIES])

    point = {k: float(q[k]) for k in QUANTITIES}
    codes, n_clusters = cluster_codes(a["patient_id"], cluster)
    ci = _bootstrap_cis(
        statistic_of_weights, point, codes, n_clusters, cluster, n_boot, confidence, seed, notes
    )
    settings = {
        "t_target": float(t_target),
        "t_source": float(t_source),
        "transfer_base_rule": TRANSFER_BASE_RULES[same_task],
        "bootstrap_cluster": cluster,
        "n_boot": int(n_boot),
        "ci_level": float(confidence),
        "seed": int(seed),
    }
    return _cell_row(point, ci, cnt, settings, notes)


def _bootstrap_cis(
    statistic_of_weights, point, codes, n_clusters, cluster, n_boot, confidence, seed, notes
) -> dict:
    """(low, high) per quantity of the percentile cluster bootstrap; NaN for a quantity
    undefined at the point estimate. Why a CI is missing or partial goes into ``notes``."""
    ci = {k: (float("nan"), float("nan")) for k in QUANTITIES}
    if n_boot > 0 and n_clusters >= 2:
        dist, low, high = percentile_bootstrap(
            statistic_of_weights, codes, n_clusters, int(n_boot), confidence, seed
        )
        for j, k in enumerate(QUANTITIES):
            if math.isnan(point[k]):
                continue
            ci[k] = _ci_of_defined(k, dist[j], low[j], high[j], confidence, notes)
    elif n_boot > 0:
        notes.append(f"CIs undefined: the bootstrap needs at least 2 {cluster}s")
    else:
        notes.append("CIs not computed (n_boot = 0)")
    return ci


def _ci_of_defined(k: str, d, low, high, confidence: float, notes: list) -> tuple:
    """Quantity ``k``'s CI from the resamples where it is defined (``d``: its bootstrap
    distribution; ``low``, ``high``: scipy's interval over all of them)."""
    ok = np.isfinite(d)
    n_ok = int(ok.sum())
    if n_ok == d.size:
        return (float(low), float(high))
    if n_ok >= 2:
        alpha = (1.0 - confidence) / 2.0
        lo, hi = np.quantile(d[ok], [alpha, 1.0 - alpha])
        notes.append(f"{k} CI from the {n_ok}/{d.size} resamples where it is defined")
        return (float(lo), float(hi))
    notes.append(f"{k} CI undefined: {k} is undefined in almost every resample")
    return (float("nan"), float("nan"))


def _cell_row(point: dict, ci: dict, cnt: dict, settings: dict, notes: list) -> dict:
    """The flat dict of a cell, in ``cell_columns`` order."""
    out: dict = {}
    for k in QUANTITIES:
        out[k] = point[k]
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = ci[k]
    out.update(cnt)
    out.update(settings)
    out["notes"] = "; ".join(notes)
    return out


def quantity_columns() -> list[str]:
    """The quantities with their CIs, in output order (``Q``, ``Q_ci_low``, ``Q_ci_high``)."""
    return [c for k in QUANTITIES for c in (k, f"{k}_ci_low", f"{k}_ci_high")]


def cell_columns() -> list[str]:
    """Column order of a compute_cell dict (quantities with CIs, counts, settings, notes)."""
    return quantity_columns() + list(COUNTS) + list(SETTINGS) + ["notes"]
