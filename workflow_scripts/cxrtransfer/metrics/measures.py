"""Evaluation metrics for one transferability cell (source, target, data task, attack, eps).

Every metric is defined once below as a small function of per-image arrays (last axis = images)
and per-image weights ``w_i``. Unit weights give the point estimate; the cluster bootstrap gives
one row of weights per resample (``w_i`` = how often image i's patient was drawn), so the same
code gives the point estimate and the bootstrap distribution. Notation, per image i:

* ``y_i`` in {0, 1}: the label of the finding (data task);
* ``p_i`` / ``q_i``: the target's probability on the clean / adversarial image;
* ``r_i`` / ``s_i``: the source model's probability on the clean / adversarial image;
* ``t`` / ``t_s``: the target's / source's decision threshold; prediction = ``prob >= t``, so
  ``pred_i = [p_i >= t]``, ``adv_pred_i = [q_i >= t]``, ``src_pred_i = [r_i >= t_s]``,
  ``src_adv_pred_i = [s_i >= t_s]``;
* ``w_i >= 0``: the weight of image i (all 1 for the point estimate);
* a weighted mean is ``sum_i w_i x_i / sum_i w_i`` and a conditional rate ``sum_i w_i [A_i and
  B_i] / sum_i w_i [B_i]`` (NaN when the denominator is 0).

The conditional transfer rate counts only images whose source error the ATTACK caused
(``source_caused_i``, see ``source_caused``): for a same-task set (the source was trained on the
data task) the source is right on the clean image and wrong on the adversarial one; for a
cross-task set (the source's label is not ``y``) the source's decision flipped.

``compute_cell`` checks its inputs and computes every quantity with a paired percentile cluster
bootstrap: PATIENTS are resampled (NIH test images cluster by patient through follow-ups), every
image of a drawn patient enters with the patient's multiplicity, and clean and adversarial
predictions share the resample. It uses ``scipy.stats.bootstrap`` over patient indices and
returns one flat dict.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from cxrtransfer import WorkflowError

CLEAN_COLUMNS = ("image_index", "patient_id", "label", "prob")
ADV_COLUMNS = ("image_index", "label", "prob", "source_clean_prob", "source_adv_prob", "l2", "linf")
# Optional in the adversarial predictions; checked against the clean ones when present.
ADV_OPTIONAL_COLUMNS = ("patient_id",)

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
# Resampling units of the bootstrap (compute_cell's ``cluster``).
CLUSTERS = ("patient", "image")

# Largest number of (resample x image) entries evaluated at once (bounds memory on large sets).
_MAX_BATCH_ENTRIES = 2_000_000


# ----------------------------------------------------------------------------------------------
# Metric definitions (each one once; last axis = images; w = per-image weights, None = all 1)
# ----------------------------------------------------------------------------------------------


def predict(prob, threshold: float):
    """Binary prediction: ``pred_i = 1 if prob_i >= threshold else 0``."""
    return np.asarray(prob) >= threshold


def weighted_sum(x, w=None):
    """``sum_i w_i x_i`` along the last axis (``sum_i x_i`` when ``w`` is None)."""
    x = np.asarray(x, dtype=float)
    return np.sum(x if w is None else x * np.asarray(w, dtype=float), axis=-1)


def _divide(num, den):
    """``num / den`` elementwise; NaN where ``den`` is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_mean(x, w=None):
    """``sum_i w_i x_i / sum_i w_i``; NaN if the total weight is 0."""
    return _divide(weighted_sum(x, w), weighted_sum(np.ones(np.shape(x)[-1]), w))


def ratio_of_counts(numerator_mask, denominator_mask, w=None):
    """Conditional rate ``sum_i w_i [num_i and den_i] / sum_i w_i [den_i]``; NaN where the
    denominator is 0."""
    den = np.asarray(denominator_mask, dtype=bool)
    both = np.logical_and(numerator_mask, den)
    return _divide(weighted_sum(both, w), weighted_sum(den, w))


def accuracy(label, pred, w=None):
    """Accuracy ``mean_i [pred_i == y_i]`` (weighted)."""
    return weighted_mean(np.asarray(pred) == np.asarray(label).astype(bool), w)


def sensitivity(label, pred, w=None):
    """Sensitivity (recall of class 1) ``TP / (TP + FN) = sum(pred & y) / sum(y)``; NaN if no
    positives."""
    return ratio_of_counts(np.asarray(pred).astype(bool), np.asarray(label).astype(bool), w)


def specificity(label, pred, w=None):
    """Specificity ``TN / (TN + FP) = sum(!pred & !y) / sum(!y)``; NaN if no negatives."""
    return ratio_of_counts(~np.asarray(pred).astype(bool), ~np.asarray(label).astype(bool), w)


def mean_max_confidence(prob, w=None):
    """Mean max-softmax confidence ``mean_i max(p_i, 1 - p_i)`` (for a sigmoid output the two
    classes have probabilities p and 1 - p)."""
    prob = np.asarray(prob, dtype=float)
    return weighted_mean(np.maximum(prob, 1.0 - prob), w)


def auroc(label, prob, w=None):
    """Weighted area under the ROC curve (Mann-Whitney form); NaN when one class has no weight.

    ``label`` and ``prob`` are 1-D (one value per image); ``w`` is None (all 1) or has shape
    ``(..., n)`` (one row per bootstrap resample). With ``P`` / ``N`` the positive / negative
    images:
    ``AUROC = sum_{i in P} w_i (sum_{j in N: p_j < p_i} w_j + 1/2 sum_{j in N: p_j = p_i} w_j)
    / (sum_{P} w_i * sum_{N} w_j)``, i.e. a positive-negative tie counts 1/2 (as in sklearn's
    trapezoidal rule). Unit weights give ``sklearn.metrics.roc_auc_score``; integer weights give
    the AUROC of the data with each image repeated ``w_i`` times. The probabilities are sorted
    once; rows are handled by cumulative sums of the negatives' weights.
    """
    label = np.asarray(label).astype(bool)
    prob = np.asarray(prob, dtype=float)
    if label.ndim != 1 or prob.shape != label.shape:
        raise ValueError("auroc: label and prob must be 1-D arrays of the same length")
    order = np.argsort(prob, kind="stable")
    p, pos = prob[order], label[order]
    w = np.ones(p.size) if w is None else np.asarray(w, dtype=float)[..., order]
    w_pos, w_neg = w * pos, w * ~pos
    # cum_neg[..., k] = weight of negatives among the k smallest probabilities.
    cum_neg = np.concatenate(
        [np.zeros(w_neg.shape[:-1] + (1,)), np.cumsum(w_neg, axis=-1)], axis=-1
    )
    first = np.searchsorted(p, p, side="left")  # tie block of image k: [first_k, last_k)
    last = np.searchsorted(p, p, side="right")
    # Negatives below the block + half the negatives inside it.
    below_or_half_tied = 0.5 * (cum_neg[..., first] + cum_neg[..., last])
    u = np.sum(w_pos * below_or_half_tied, axis=-1)
    return _divide(u, np.sum(w_pos, axis=-1) * np.sum(w_neg, axis=-1))


def auroc_ratio(adv_auroc, clean_auroc):
    """Adversarial AUROC as a fraction of clean AUROC, ``adv_auroc / clean_auroc`` (Bortsova et
    al. report it as a percentage); NaN if either is undefined or clean AUROC is 0."""
    adv_auroc = np.asarray(adv_auroc, dtype=float)
    clean_auroc = np.asarray(clean_auroc, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(
            clean_auroc > 0, adv_auroc / np.where(clean_auroc > 0, clean_auroc, 1), np.nan
        )
    return out[()] if out.ndim == 0 else out


def attack_success_rate(label, clean_pred, adv_pred, w=None):
    """Attack success rate on the target: among images the target classifies correctly when
    clean, the fraction it gets wrong on the adversarial version,
    ``sum_i [pred_i == y_i and adv_pred_i != y_i] / sum_i [pred_i == y_i]``."""
    label = np.asarray(label).astype(bool)
    return ratio_of_counts(np.asarray(adv_pred) != label, np.asarray(clean_pred) == label, w)


def fooling_rate(label, adv_pred, w=None):
    """Unconditional transfer (fooling) rate: fraction of all images the target gets wrong on the
    adversarial version, ``mean_i [adv_pred_i != y_i]``."""
    return weighted_mean(np.asarray(adv_pred) != np.asarray(label).astype(bool), w)


def flip_rate(clean_pred, adv_pred, w=None):
    """The fooling rate of the universal-perturbation literature (Moosavi-Dezfooli et al.
    2017): the fraction of images whose decision the perturbation changes, whatever the label,
    ``mean_i [adv_pred_i != pred_i]`` (not ``fooling_rate``, which counts wrong decisions)."""
    return weighted_mean(np.asarray(adv_pred) != np.asarray(clean_pred), w)


def source_caused(label, source_clean_pred, source_adv_pred, source_task_is_data_task=True):
    """Per image: did the attack cause the source's error?

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


def transfer_rate(label, clean_pred, adv_pred, caused, w=None):
    """Conditional transfer rate: among images whose source error the attack caused
    (``caused_i``, see ``source_caused``) and that the target classifies correctly when clean,
    the fraction that also fool the target,
    ``sum_i [B_i and adv_pred_i != y_i] / sum_i B_i`` with
    ``B_i = [caused_i and pred_i == y_i]``."""
    label = np.asarray(label).astype(bool)
    base = np.asarray(caused).astype(bool) & (np.asarray(clean_pred) == label)
    return ratio_of_counts(np.asarray(adv_pred) != label, base, w)


def mean_value(x, w=None):
    """Plain mean ``mean_i x_i`` (used for the per-image perturbation sizes L2 and L-inf)."""
    return weighted_mean(x, w)


# ----------------------------------------------------------------------------------------------
# All quantities of a cell from per-image arrays
# ----------------------------------------------------------------------------------------------


def _source_caused(a: dict, t_source: float, source_task_is_data_task: bool):
    return source_caused(
        a["label"],
        predict(a["source_clean_prob"], t_source),
        predict(a["source_adv_prob"], t_source),
        source_task_is_data_task,
    )


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
    clean_pred = predict(a["prob"], t_target)
    adv_pred = predict(a["adv_prob"], t_target)
    caused = _source_caused(a, t_source, source_task_is_data_task)
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
    clean_ok = predict(a["prob"], t_target) == y
    adv_wrong = predict(a["adv_prob"], t_target) != y
    caused = _source_caused(a, t_source, source_task_is_data_task)
    base = caused & clean_ok
    return {
        "n_images": int(y.size),
        "n_patients": int(np.unique(a["patient_id"]).size),
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "n_clean_correct": int(clean_ok.sum()),
        "n_success": int((clean_ok & adv_wrong).sum()),
        "n_fooled": int(adv_wrong.sum()),
        "n_flipped": int((predict(a["prob"], t_target) != predict(a["adv_prob"], t_target)).sum()),
        "n_source_caused": int(caused.sum()),
        "n_transfer_base": int(base.sum()),
        "n_transferred": int((base & adv_wrong).sum()),
        "achieved_linf": int(round(float(np.max(a["linf"], initial=0.0)) * 255)),
    }


# ----------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------


def _require_columns(df, columns, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise WorkflowError(f"{what} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise WorkflowError(
            f"{what} lacks column(s) {', '.join(missing)} (has: {', '.join(map(str, df.columns))})."
        )


def _preview(items, k: int = 5) -> str:
    items = sorted(items)
    more = f", ... ({len(items) - k} more)" if len(items) > k else ""
    return ", ".join(items[:k]) + more


def _numeric(series: pd.Series, what: str, lo: float | None, hi: float | None) -> np.ndarray:
    x = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(x)
    if lo is not None:
        bad |= x < lo
    if hi is not None:
        bad |= x > hi
    if bad.any():
        rng = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
        raise WorkflowError(
            f"{what}: {int(bad.sum())} value(s) are not finite numbers{rng} "
            f"(first: {series.iloc[int(np.argmax(bad))]!r})."
        )
    return x


def _patient_ids(series: pd.Series, what: str) -> np.ndarray:
    x = _numeric(series, what, None, None)
    if not np.all(x == np.round(x)):
        bad = series[x != np.round(x)]
        raise WorkflowError(
            f"{what} must be integers; found {bad.iloc[0]!r} ({len(bad)} value(s))."
        )
    return x.astype(np.int64)


def align_inputs(clean: pd.DataFrame, adv: pd.DataFrame) -> dict:
    """Check clean and adversarial predictions and align them by image_index (sorted).

    Raises WorkflowError for: missing columns (``patient_id`` is required in the clean table and
    optional in the adversarial one), an empty adversarial set, duplicate image_index, different
    image sets (naming what is missing / extra and how many), labels other than 0/1, labels or
    patient_id that differ between the two tables, non-integer patient_id, probabilities outside
    [0, 1] or not finite, and negative or non-finite perturbation sizes.
    """
    _require_columns(clean, CLEAN_COLUMNS, "clean predictions")
    _require_columns(adv, ADV_COLUMNS, "adversarial predictions")
    if len(adv) == 0:
        raise WorkflowError(
            "The adversarial set is empty: no adversarial predictions to evaluate. Check that the "
            "attack stage stored images for this cell."
        )
    c = clean.assign(image_index=clean["image_index"].astype(str))
    d = adv.assign(image_index=adv["image_index"].astype(str))
    for df, what in ((c, "clean predictions"), (d, "adversarial predictions")):
        dup = df["image_index"][df["image_index"].duplicated()].unique()
        if len(dup):
            raise WorkflowError(
                f"{what}: {len(dup)} image_index value(s) occur more than once: {_preview(dup)}."
            )
    cs, ds = set(c["image_index"]), set(d["image_index"])
    if cs != ds:
        missing, extra = cs - ds, ds - cs
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} clean image(s) missing from the adversarial set: "
                f"{_preview(missing)}"
            )
        if extra:
            parts.append(
                f"{len(extra)} adversarial image(s) not in the clean set: {_preview(extra)}"
            )
        raise WorkflowError(
            "Clean and adversarial predictions cover different images (" + "; ".join(parts) + ")."
        )
    c = c.sort_values("image_index", kind="stable").reset_index(drop=True)
    d = d.sort_values("image_index", kind="stable").reset_index(drop=True)
    y_clean = _numeric(c["label"], "clean label", 0, 1)
    y_adv = _numeric(d["label"], "adversarial label", 0, 1)
    for y, what in ((y_clean, "clean"), (y_adv, "adversarial")):
        if not np.all((y == 0) | (y == 1)):
            raise WorkflowError(f"{what} labels must be 0 or 1; found {sorted(set(y.tolist()))}.")
    if not np.array_equal(y_clean, y_adv):
        bad = c["image_index"][y_clean != y_adv]
        raise WorkflowError(
            f"Labels differ between clean and adversarial predictions for {len(bad)} image(s): "
            f"{_preview(bad)}."
        )
    patient = _patient_ids(c["patient_id"], "clean patient_id")
    if "patient_id" in d.columns:
        other = _patient_ids(d["patient_id"], "adversarial patient_id")
        if not np.array_equal(patient, other):
            bad = c["image_index"][patient != other]
            raise WorkflowError(
                f"patient_id differs between clean and adversarial predictions for {len(bad)} "
                f"image(s): {_preview(bad)}."
            )
    return {
        "image_index": c["image_index"].to_numpy(),
        "patient_id": patient,
        "label": y_clean.astype(np.int64),
        "prob": _numeric(c["prob"], "clean prob", 0, 1),
        "adv_prob": _numeric(d["prob"], "adversarial prob", 0, 1),
        "source_clean_prob": _numeric(d["source_clean_prob"], "source_clean_prob", 0, 1),
        "source_adv_prob": _numeric(d["source_adv_prob"], "source_adv_prob", 0, 1),
        "l2": _numeric(d["l2"], "l2", 0, None),
        "linf": _numeric(d["linf"], "linf", 0, None),
    }


def _check_settings(t_target, t_source, n_boot, confidence, cluster) -> None:
    for name, t in (("t_target", t_target), ("t_source", t_source)):
        if not isinstance(t, int | float | np.number) or not math.isfinite(t):
            raise WorkflowError(f"{name} must be a finite number, got {t!r}.")
    if int(n_boot) != n_boot or n_boot < 0:
        raise WorkflowError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    if not 0 < confidence < 1:
        raise WorkflowError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")
    if cluster not in CLUSTERS:
        raise WorkflowError(f"cluster must be one of {', '.join(CLUSTERS)}; got {cluster!r}.")


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


def cluster_codes(patient_id, cluster: str = "patient") -> tuple[np.ndarray, int]:
    """Resampling unit of each image: ``(codes, n_clusters)`` with ``codes[i]`` in
    ``[0, n_clusters)``. ``cluster="patient"``: images of one patient share a code;
    ``"image"``: every image is its own unit (an image-level bootstrap)."""
    patient_id = np.asarray(patient_id)
    if cluster == "image":
        return np.arange(patient_id.size), int(patient_id.size)
    if cluster != "patient":
        raise ValueError(f"cluster must be one of {CLUSTERS}, got {cluster!r}")
    patients, codes = np.unique(patient_id, return_inverse=True)
    return codes.reshape(-1), int(patients.size)


def cluster_weights(resample, codes, n_clusters: int) -> np.ndarray:
    """Per-image weights of cluster resamples.

    ``resample`` (..., k): indices of the drawn clusters, one row per resample. Returns
    (..., n_images) floats: ``w[b, i]`` = how often row b drew the cluster of image i (so the
    weighted statistics equal those of the data with each drawn patient's images repeated).
    """
    resample = np.asarray(resample, dtype=np.int64)
    rows = resample.reshape(-1, resample.shape[-1])
    offsets = (np.arange(rows.shape[0]) * n_clusters)[:, None]
    mult = np.bincount((rows + offsets).ravel(), minlength=rows.shape[0] * n_clusters)
    mult = mult.reshape(rows.shape[0], n_clusters).astype(float)
    return mult[:, codes].reshape(resample.shape[:-1] + (len(codes),))


def _bootstrap(statistic_of_weights, codes, n_clusters, n_boot, confidence, seed):
    """Cluster percentile bootstrap: distribution (Q x n_boot) and CIs (low, high) per quantity.

    ``scipy.stats.bootstrap`` resamples the cluster indices ``0 .. n_clusters - 1``; each
    resample becomes per-image weights (``cluster_weights``) for ``statistic_of_weights``.
    """

    def statistic(i, axis=-1):
        return statistic_of_weights(cluster_weights(i, codes, n_clusters))

    batch = max(1, min(n_boot, _MAX_BATCH_ENTRIES // max(len(codes), n_clusters, 1)))
    with warnings.catch_warnings():
        # NaN quantiles (quantities undefined in some resamples) are handled by the caller.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (np.arange(n_clusters),),
            statistic,
            n_resamples=n_boot,
            batch=batch,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=float).reshape(-1, n_boot)
    low = np.array(res.confidence_interval.low, dtype=float).reshape(-1)
    high = np.array(res.confidence_interval.high, dtype=float).reshape(-1)
    return dist, low, high


def auroc_ci(
    label, prob, patient_id, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Patient-bootstrap percentile CI of a model's AUROC on one split (the quality gate's).

    ``label`` and ``prob`` (n,) for a binary model, or (n, K) for a multi-label one, whose
    AUROC is the mean over the labels with both classes (per resample, over the labels with
    both classes in that resample). Patients are resampled with all their images, as in
    ``compute_cell``. Resamples where the AUROC is undefined are left out; (nan, nan) when
    fewer than 2 patients or every resample is undefined."""
    label, prob = np.asarray(label), np.asarray(prob, dtype=float)
    if label.ndim == 1:
        label, prob = label[:, None], prob[:, None]
    codes, n_clusters = cluster_codes(patient_id, "patient")
    if len(codes) != len(label):
        raise ValueError("auroc_ci: one patient id per image is needed")
    if n_boot < 2 or n_clusters < 2:
        return float("nan"), float("nan")

    def statistic_of_weights(w):
        per = np.stack([auroc(label[:, k], prob[:, k], w) for k in range(label.shape[1])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
            return np.nanmean(per, axis=0)[None]

    dist = _bootstrap(statistic_of_weights, codes, n_clusters, int(n_boot), confidence, seed)[0]
    d = dist[0][np.isfinite(dist[0])]
    if d.size < 2:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    return float(low), float(high)


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
    _check_settings(t_target, t_source, n_boot, confidence, cluster)
    same_task = bool(source_task_is_data_task)
    a = align_inputs(clean, adv)
    q = quantities(a, t_target, t_source, same_task)
    cnt = counts(a, t_target, t_source, same_task)
    notes = _point_notes(q, cnt, same_task)

    def statistic_of_weights(w):
        qw = quantities(a, t_target, t_source, same_task, w)
        return np.stack([np.asarray(qw[k], dtype=float) for k in QUANTITIES])

    out: dict = {}
    point = {k: float(q[k]) for k in QUANTITIES}
    ci = {k: (float("nan"), float("nan")) for k in QUANTITIES}
    codes, n_clusters = cluster_codes(a["patient_id"], cluster)
    if n_boot > 0 and n_clusters >= 2:
        dist, low, high = _bootstrap(
            statistic_of_weights, codes, n_clusters, int(n_boot), confidence, seed
        )
        alpha = (1.0 - confidence) / 2.0
        for j, k in enumerate(QUANTITIES):
            if math.isnan(point[k]):
                continue
            d = dist[j]
            ok = np.isfinite(d)
            n_ok = int(ok.sum())
            if n_ok == d.size:
                ci[k] = (float(low[j]), float(high[j]))
            elif n_ok >= 2:
                lo, hi = np.quantile(d[ok], [alpha, 1.0 - alpha])
                ci[k] = (float(lo), float(hi))
                notes.append(f"{k} CI from the {n_ok}/{d.size} resamples where it is defined")
            else:
                notes.append(f"{k} CI undefined: {k} is undefined in almost every resample")
    elif n_boot > 0:
        notes.append(f"CIs undefined: the bootstrap needs at least 2 {cluster}s")
    else:
        notes.append("CIs not computed (n_boot = 0)")

    for k in QUANTITIES:
        out[k] = point[k]
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = ci[k]
    out.update(cnt)
    out.update(
        {
            "t_target": float(t_target),
            "t_source": float(t_source),
            "transfer_base_rule": TRANSFER_BASE_RULES[same_task],
            "bootstrap_cluster": cluster,
            "n_boot": int(n_boot),
            "ci_level": float(confidence),
            "seed": int(seed),
            "notes": "; ".join(notes),
        }
    )
    return out


def cell_columns() -> list[str]:
    """Column order of a compute_cell dict (quantities with CIs, counts, settings, notes)."""
    cols = []
    for k in QUANTITIES:
        cols += [k, f"{k}_ci_low", f"{k}_ci_high"]
    return cols + list(COUNTS) + list(SETTINGS) + ["notes"]
