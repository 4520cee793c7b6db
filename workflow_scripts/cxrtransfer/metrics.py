"""Evaluation metrics for one transferability cell (source, target, data task, attack, eps).

Every metric is defined once below as a small function that works along the last axis, so the
same code gives the point estimate (1-D arrays, one value per image) and the bootstrap
distribution (2-D arrays, one row per resample). Notation, per image i:

* ``y_i`` in {0, 1}: the label of the finding;
* ``p_i`` / ``q_i``: the target's probability on the clean / adversarial image;
* ``s_i``: the source model's probability on the adversarial image;
* ``t`` / ``t_s``: the target's / source's decision threshold; prediction = ``prob >= t``.

``compute_cell`` checks its inputs, computes every quantity with a paired percentile bootstrap
(images are resampled, the same resample for clean and adversarial) via
``scipy.stats.bootstrap``, and returns one flat dict.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score

from . import WorkflowError

CLEAN_COLUMNS = ("image_index", "label", "prob")
ADV_COLUMNS = ("image_index", "label", "prob", "source_clean_prob", "source_adv_prob", "l2", "linf")

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
    "transfer_rate",
    "mean_l2",
    "mean_linf",
)
# Integer counts, in output order.
COUNTS = (
    "n_images",
    "n_positive",
    "n_negative",
    "n_clean_correct",
    "n_success",
    "n_fooled",
    "n_source_fooled",
    "n_transfer_base",
    "n_transferred",
)
# Settings echoed into the cell so a table row says how it was computed.
SETTINGS = ("t_target", "t_source", "n_boot", "ci_level", "seed")

# Largest number of (resample x image) entries evaluated at once (bounds memory on large sets).
_MAX_BATCH_ENTRIES = 2_000_000


# ----------------------------------------------------------------------------------------------
# Metric definitions (each one once; last axis = images)
# ----------------------------------------------------------------------------------------------


def predict(prob, threshold: float):
    """Binary prediction: ``pred_i = 1 if prob_i >= threshold else 0``."""
    return np.asarray(prob) >= threshold


def ratio_of_counts(numerator_mask, denominator_mask):
    """Conditional rate ``sum_i(num_i & den_i) / sum_i(den_i)``; NaN where the denominator is 0."""
    num = np.sum(np.logical_and(numerator_mask, denominator_mask), axis=-1)
    den = np.sum(denominator_mask, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def accuracy(label, pred):
    """Accuracy ``mean_i [pred_i == y_i]``."""
    return np.mean(np.asarray(pred) == np.asarray(label), axis=-1)


def sensitivity(label, pred):
    """Sensitivity (recall of class 1) ``TP / (TP + FN) = sum(pred & y) / sum(y)``; NaN if no
    positives."""
    label = np.asarray(label).astype(bool)
    return ratio_of_counts(np.asarray(pred).astype(bool), label)


def specificity(label, pred):
    """Specificity ``TN / (TN + FP) = sum(!pred & !y) / sum(!y)``; NaN if no negatives."""
    label = np.asarray(label).astype(bool)
    return ratio_of_counts(~np.asarray(pred).astype(bool), ~label)


def mean_max_confidence(prob):
    """Mean max-softmax confidence ``mean_i max(p_i, 1 - p_i)`` (for a sigmoid output the two
    classes have probabilities p and 1 - p)."""
    prob = np.asarray(prob, dtype=float)
    return np.mean(np.maximum(prob, 1.0 - prob), axis=-1)


def auroc(label, prob):
    """Area under the ROC curve; NaN when the labels contain only one class.

    For 1-D input this is ``sklearn.metrics.roc_auc_score(label, prob)``. For N-D input (one row
    per bootstrap resample) it is the identical Mann-Whitney form, vectorised over rows:
    ``AUROC = (sum_{i: y_i=1} rank_i - n1 (n1 + 1) / 2) / (n1 n0)`` with mid-ranks for ties
    (a tie between a positive and a negative counts 1/2, as in sklearn's trapezoidal rule).
    """
    label = np.asarray(label)
    prob = np.asarray(prob, dtype=float)
    if label.ndim == 1:
        if np.unique(label).size < 2:
            return float("nan")
        return float(roc_auc_score(label, prob))
    pos = label.astype(bool)
    n1 = pos.sum(axis=-1)
    n0 = pos.shape[-1] - n1
    ranks = stats.rankdata(prob, axis=-1)  # 'average' = mid-ranks for ties
    u = np.sum(ranks * pos, axis=-1) - n1 * (n1 + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n1 > 0) & (n0 > 0), u / np.maximum(n1 * n0, 1), np.nan)


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


def attack_success_rate(label, clean_pred, adv_pred):
    """Attack success rate on the target: among images the target classifies correctly when
    clean, the fraction it gets wrong on the adversarial version,
    ``sum_i [pred_i == y_i and adv_pred_i != y_i] / sum_i [pred_i == y_i]``."""
    label = np.asarray(label).astype(bool)
    return ratio_of_counts(np.asarray(adv_pred) != label, np.asarray(clean_pred) == label)


def fooling_rate(label, adv_pred):
    """Unconditional transfer (fooling) rate: fraction of all images the target gets wrong on the
    adversarial version, ``mean_i [adv_pred_i != y_i]``."""
    return np.mean(np.asarray(adv_pred) != np.asarray(label).astype(bool), axis=-1)


def transfer_rate(label, clean_pred, adv_pred, source_adv_pred):
    """Conditional transfer rate: among images the source attack fooled (``source_adv_pred_i !=
    y_i`` at the source's threshold) and the target classifies correctly when clean, the
    fraction that also fool the target,
    ``sum_i [B_i and adv_pred_i != y_i] / sum_i B_i`` with
    ``B_i = [source_adv_pred_i != y_i and pred_i == y_i]``."""
    label = np.asarray(label).astype(bool)
    base = (np.asarray(source_adv_pred) != label) & (np.asarray(clean_pred) == label)
    return ratio_of_counts(np.asarray(adv_pred) != label, base)


def mean_value(x):
    """Plain mean ``mean_i x_i`` (used for the per-image perturbation sizes L2 and L-inf)."""
    return np.mean(np.asarray(x, dtype=float), axis=-1)


# ----------------------------------------------------------------------------------------------
# All quantities of a cell from per-image arrays
# ----------------------------------------------------------------------------------------------


def quantities(a: dict, t_target: float, t_source: float) -> dict:
    """Every quantity in ``QUANTITIES`` from per-image arrays (last axis = images).

    ``a`` holds ``label``, ``prob`` (clean), ``adv_prob``, ``source_adv_prob``, ``l2``, ``linf``.
    """
    y = a["label"]
    clean_pred = predict(a["prob"], t_target)
    adv_pred = predict(a["adv_prob"], t_target)
    src_pred = predict(a["source_adv_prob"], t_source)
    clean_auc = auroc(y, a["prob"])
    adv_auc = auroc(y, a["adv_prob"])
    return {
        "clean_auroc": clean_auc,
        "adv_auroc": adv_auc,
        "auroc_ratio": auroc_ratio(adv_auc, clean_auc),
        "clean_accuracy": accuracy(y, clean_pred),
        "adv_accuracy": accuracy(y, adv_pred),
        "clean_sensitivity": sensitivity(y, clean_pred),
        "clean_specificity": specificity(y, clean_pred),
        "adv_sensitivity": sensitivity(y, adv_pred),
        "adv_specificity": specificity(y, adv_pred),
        "clean_confidence": mean_max_confidence(a["prob"]),
        "adv_confidence": mean_max_confidence(a["adv_prob"]),
        "attack_success_rate": attack_success_rate(y, clean_pred, adv_pred),
        "fooling_rate": fooling_rate(y, adv_pred),
        "transfer_rate": transfer_rate(y, clean_pred, adv_pred, src_pred),
        "mean_l2": mean_value(a["l2"]),
        "mean_linf": mean_value(a["linf"]),
    }


def counts(a: dict, t_target: float, t_source: float) -> dict:
    """The integer counts in ``COUNTS`` (denominators and numerators of the rates)."""
    y = a["label"].astype(bool)
    clean_ok = predict(a["prob"], t_target) == y
    adv_wrong = predict(a["adv_prob"], t_target) != y
    src_fooled = predict(a["source_adv_prob"], t_source) != y
    base = src_fooled & clean_ok
    return {
        "n_images": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "n_clean_correct": int(clean_ok.sum()),
        "n_success": int((clean_ok & adv_wrong).sum()),
        "n_fooled": int(adv_wrong.sum()),
        "n_source_fooled": int(src_fooled.sum()),
        "n_transfer_base": int(base.sum()),
        "n_transferred": int((base & adv_wrong).sum()),
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


def align_inputs(clean: pd.DataFrame, adv: pd.DataFrame) -> dict:
    """Check clean and adversarial predictions and align them by image_index (sorted).

    Raises WorkflowError for: missing columns, an empty adversarial set, duplicate image_index,
    different image sets (naming what is missing / extra and how many), labels other than 0/1,
    labels that differ between the two tables, probabilities outside [0, 1] or not finite, and
    negative or non-finite perturbation sizes.
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
    return {
        "image_index": c["image_index"].to_numpy(),
        "label": y_clean.astype(np.int64),
        "prob": _numeric(c["prob"], "clean prob", 0, 1),
        "adv_prob": _numeric(d["prob"], "adversarial prob", 0, 1),
        "source_clean_prob": _numeric(d["source_clean_prob"], "source_clean_prob", 0, 1),
        "source_adv_prob": _numeric(d["source_adv_prob"], "source_adv_prob", 0, 1),
        "l2": _numeric(d["l2"], "l2", 0, None),
        "linf": _numeric(d["linf"], "linf", 0, None),
    }


def _check_settings(t_target, t_source, n_boot, confidence) -> None:
    for name, t in (("t_target", t_target), ("t_source", t_source)):
        if not isinstance(t, int | float | np.number) or not math.isfinite(t):
            raise WorkflowError(f"{name} must be a finite number, got {t!r}.")
    if int(n_boot) != n_boot or n_boot < 0:
        raise WorkflowError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    if not 0 < confidence < 1:
        raise WorkflowError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}.")


# ----------------------------------------------------------------------------------------------
# The cell
# ----------------------------------------------------------------------------------------------

_UNDEFINED_REASONS = {
    "sensitivity": "no positive images (label 1)",
    "specificity": "no negative images (label 0)",
    "attack_success_rate": "the target classifies no clean image correctly (n_clean_correct = 0)",
    "transfer_rate": (
        "no image was both fooled by the source and classified correctly by the target when "
        "clean (n_transfer_base = 0)"
    ),
}


def _point_notes(q: dict, cnt: dict) -> list[str]:
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
    for key in ("attack_success_rate", "transfer_rate"):
        if np.isnan(q[key]):
            notes.append(f"{key} undefined: {_UNDEFINED_REASONS[key]}")
    return notes


def _bootstrap(a: dict, t_target, t_source, n_boot, confidence, seed):
    """Bootstrap distribution (Q x n_boot) and percentile CIs (low, high) of every quantity."""
    n = a["label"].size
    keys = ("label", "prob", "adv_prob", "source_adv_prob", "l2", "linf")
    per_image = {k: a[k] for k in keys}

    def statistic(i, axis=-1):
        sample = {k: v[i] for k, v in per_image.items()}
        q = quantities(sample, t_target, t_source)
        return np.stack([np.asarray(q[k], dtype=float) for k in QUANTITIES])

    batch = max(1, min(n_boot, _MAX_BATCH_ENTRIES // max(n, 1)))
    with warnings.catch_warnings():
        # NaN quantiles (quantities undefined in some resamples) are handled below.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=n_boot,
            batch=batch,
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=float).reshape(len(QUANTITIES), -1)
    low = np.array(res.confidence_interval.low, dtype=float).reshape(-1)
    high = np.array(res.confidence_interval.high, dtype=float).reshape(-1)
    return dist, low, high


def compute_cell(
    clean: pd.DataFrame,
    adv: pd.DataFrame,
    t_target: float,
    t_source: float,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """All metrics of one (source, target, data task, attack, eps) cell as a flat dict.

    Keys: for each ``Q`` in ``QUANTITIES``: ``Q``, ``Q_ci_low``, ``Q_ci_high``; the ``COUNTS``;
    the ``SETTINGS`` (``t_target``, ``t_source``, ``n_boot``, ``ci_level``, ``seed``); and
    ``notes`` ("" when nothing to report; otherwise "; "-separated reasons for NaN values).

    CIs: paired percentile bootstrap over images (``scipy.stats.bootstrap``, seeded; the same
    resampled images for clean and adversarial predictions). A quantity undefined at the point
    estimate has NaN CIs. A quantity undefined in some resamples only (e.g. a resample without
    positives) gets its CI from the resamples where it is defined, and ``notes`` says how many.
    """
    _check_settings(t_target, t_source, n_boot, confidence)
    a = align_inputs(clean, adv)
    q = quantities(a, t_target, t_source)
    cnt = counts(a, t_target, t_source)
    notes = _point_notes(q, cnt)

    out: dict = {}
    point = {k: float(q[k]) for k in QUANTITIES}
    ci = {k: (float("nan"), float("nan")) for k in QUANTITIES}
    n = cnt["n_images"]
    if n_boot > 0 and n >= 2:
        dist, low, high = _bootstrap(a, t_target, t_source, int(n_boot), confidence, seed)
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
        notes.append("CIs undefined: bootstrap needs at least 2 images")
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
