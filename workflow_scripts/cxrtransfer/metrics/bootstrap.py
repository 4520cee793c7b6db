"""The patient (cluster) percentile bootstrap, and the AUROC CI of the training quality gate.

Patients are resampled with all their images (NIH test images cluster by patient through
follow-ups; docs/METRICS.md#confidence-intervals): each resample becomes per-image weights
(how often the image's patient was drawn) for the weighted measures of ``metrics.measures``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

from cxrtransfer.metrics.measures import auroc

# Resampling units of the bootstrap (``cluster_codes``' and ``evaluate.cells.compute_cell``'s
# ``cluster``).
CLUSTERS = ("patient", "image")

# Largest number of (resample x image) entries evaluated at once (bounds memory on large sets).
_MAX_BATCH_ENTRIES = 2_000_000


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


def percentile_bootstrap(statistic_of_weights, codes, n_clusters, n_boot, confidence, seed):
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
    ``evaluate.cells.compute_cell``. Resamples where the AUROC is undefined are left out; (nan, nan) when
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

    dist = percentile_bootstrap(
        statistic_of_weights, codes, n_clusters, int(n_boot), confidence, seed
    )[0]
    d = dist[0][np.isfinite(dist[0])]
    if d.size < 2:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(d, [alpha, 1.0 - alpha])
    return float(low), float(high)
