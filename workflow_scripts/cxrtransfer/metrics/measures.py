"""The metric definitions that training, UAP crafting and the evaluation share.

The quantities are defined in docs/METRICS.md (once); the functions below are their code, as
small functions of per-image arrays (last axis = images) and per-image weights ``w_i``. Unit
weights (``w=None``) give the point estimate; the patient bootstrap (``metrics.bootstrap``)
gives one row of weights per resample (``w_i`` = how often image i's patient was drawn), so the
same code gives the point estimate and the bootstrap distribution. A weighted mean is
``sum_i w_i x_i / sum_i w_i`` and a conditional rate ``sum_i w_i [A_i and B_i] / sum_i w_i
[B_i]`` (NaN when the denominator is 0). The measures only the evaluation uses are in
``evaluate.cells`` (an edit there reruns the evaluation only, not training or UAP crafting).
"""

from __future__ import annotations

import numpy as np


def predict(prob, threshold: float):
    """Binary prediction: ``pred_i = 1 if prob_i >= threshold else 0``."""
    return np.asarray(prob) >= threshold


def correct(label, pred):
    """Per image: is the decision right, ``[pred_i == y_i]``."""
    return np.asarray(pred) == np.asarray(label).astype(bool)


def wrong(label, pred):
    """Per image: is the decision wrong, ``[pred_i != y_i]``."""
    return np.asarray(pred) != np.asarray(label).astype(bool)


def flipped(clean_pred, adv_pred):
    """Per image: did the perturbation change the decision, ``[adv_pred_i != pred_i]``."""
    return np.asarray(adv_pred) != np.asarray(clean_pred)


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
    return weighted_mean(correct(label, pred), w)


def sensitivity(label, pred, w=None):
    """Sensitivity (recall of class 1) ``TP / (TP + FN) = sum(pred & y) / sum(y)``; NaN if no
    positives."""
    return ratio_of_counts(np.asarray(pred).astype(bool), np.asarray(label).astype(bool), w)


def specificity(label, pred, w=None):
    """Specificity ``TN / (TN + FP) = sum(!pred & !y) / sum(!y)``; NaN if no negatives."""
    return ratio_of_counts(~np.asarray(pred).astype(bool), ~np.asarray(label).astype(bool), w)


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


def flip_rate(clean_pred, adv_pred, w=None):
    """``flip_rate`` of docs/METRICS.md: ``mean_i [adv_pred_i != pred_i]``, the fraction of
    images whose decision the perturbation changes, whatever the label (the "fooling rate" of
    the universal-perturbation literature; not ``evaluate.cells.fooling_rate``)."""
    return weighted_mean(flipped(clean_pred, adv_pred), w)
