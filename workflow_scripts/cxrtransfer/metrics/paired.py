"""The paired patient bootstrap of a difference: two statistics of the same images, computed
under the same resample of patients in every replicate (docs/METRICS.md#paired-differences).

A difference of two rates measured on the same images (an attack and its noise control; two
attacks on one target) varies much less than either rate: the images that are easy to fool
are easy for both. Resampling the patients once per replicate and evaluating both statistics
under those weights keeps that pairing, so the CI of the difference is the right width; two
separate CIs that overlap say nothing about the difference.
"""

from __future__ import annotations

import math

import numpy as np

from cxrtransfer.metrics.bootstrap import cluster_codes, percentile_bootstrap


def paired_difference(
    statistic_a,
    statistic_b,
    patient_id,
    n_boot: int,
    confidence: float,
    seed: int,
    cluster: str = "patient",
) -> dict:
    """Point estimate and percentile CI of ``statistic_a - statistic_b`` per quantity.

    ``statistic_a`` / ``statistic_b``: functions of per-image weights (None for the point
    estimate, else ``(B, n)``) returning ``(Q,)`` / ``(Q, B)`` arrays; both see the same
    weights, drawn from the patients (``patient_id``, one per image) with all their images.
    Returns ``{"difference", "ci_low", "ci_high", "n_defined"}``, each a list of Q floats:
    the CI comes from the resamples where the difference is defined (``n_defined`` of
    ``n_boot``), NaN when the point estimate is undefined, fewer than 2 resamples are defined,
    fewer than 2 patients were sampled or ``n_boot`` is 0.
    """
    point = np.asarray(statistic_a(None), dtype=float) - np.asarray(statistic_b(None), float)
    point = np.atleast_1d(point)
    nan = [float("nan")] * point.size
    out = {
        "difference": point.tolist(),
        "ci_low": nan,
        "ci_high": nan,
        "n_defined": [0] * point.size,
    }
    codes, n_clusters = cluster_codes(patient_id, cluster)
    if int(n_boot) < 1 or n_clusters < 2:
        return out

    def difference_of_weights(w):
        a = np.asarray(statistic_a(w), dtype=float)
        b = np.asarray(statistic_b(w), dtype=float)
        return (a - b).reshape(point.size, -1)

    dist = percentile_bootstrap(
        difference_of_weights, codes, n_clusters, int(n_boot), confidence, seed
    )[0]
    low, high, defined = [], [], []
    for q in range(point.size):
        lo, hi, n_ok = defined_interval(dist[q], confidence)
        undefined = math.isnan(point[q])
        low.append(float("nan") if undefined else lo)
        high.append(float("nan") if undefined else hi)
        defined.append(n_ok)
    return {**out, "ci_low": low, "ci_high": high, "n_defined": defined}


def defined_interval(dist, confidence: float) -> tuple[float, float, int]:
    """The percentile interval of the finite values of a bootstrap distribution, and how many
    there are (NaN bounds when fewer than 2)."""
    d = np.asarray(dist, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return float("nan"), float("nan"), int(d.size)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(d, [alpha, 1.0 - alpha])
    return float(lo), float(hi), int(d.size)


def excludes_zero(low, high) -> bool:
    """Whether a CI lies entirely on one side of 0 (False when undefined)."""
    try:
        lo, hi = float(low), float(high)
    except (TypeError, ValueError):
        return False
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)
