"""Paired comparisons of adversarial sets on one target and its test images (the paired patient
bootstrap of ``metrics.paired``): an attack against its noise control (``above_noise``) and two
sets against each other (``compare_pair``). Definitions: docs/METRICS.md#paired-differences.
"""

from __future__ import annotations

import numpy as np

from cxrtransfer.evaluate.cell_inputs import align_inputs
from cxrtransfer.evaluate.cells import decisions, fooling_rate, transfer_rate
from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE_CI, PAIRED_RATES
from cxrtransfer.metrics.measures import flip_rate
from cxrtransfer.metrics.paired import paired_difference


def rates_of_weights(a: dict, t_target: float, t_source: float, source_task_is_data_task: bool):
    """The ``PAIRED_RATES`` of aligned inputs ``a`` (``cell_inputs.align_inputs``) as a function
    of per-image weights (None: the point estimate)."""
    clean_pred, adv_pred, caused = decisions(a, t_target, t_source, source_task_is_data_task)
    y = a["label"]

    def statistic(w):
        return np.stack(
            [
                np.asarray(fooling_rate(y, adv_pred, w), dtype=float),
                np.asarray(flip_rate(clean_pred, adv_pred, w), dtype=float),
                np.asarray(transfer_rate(y, clean_pred, adv_pred, caused, w), dtype=float),
            ]
        )

    return statistic


def _check_same_images(a: dict, b: dict) -> None:
    """Two aligned sets of one clean table share its images and patients (a safeguard)."""
    if not (
        np.array_equal(a["image_index"], b["image_index"])
        and np.array_equal(a["patient_id"], b["patient_id"])
    ):
        raise ValueError("paired sets must cover the same images of the same patients")


def above_noise(
    clean, adv, control, t_target: float, t_source: float, same_task: bool, evaluation: dict
) -> dict:
    """The paired CI of a cell's ``fooling_rate_above_noise`` (the attack's fooling rate minus
    its shuffled control's on the same images, the same patients drawn in each replicate):
    ``{ABOVE_NOISE_CI[0]: low, ABOVE_NOISE_CI[1]: high}``."""
    a, b = align_inputs(clean, adv), align_inputs(clean, control)
    _check_same_images(a, b)
    res = paired_difference(
        rates_of_weights(a, t_target, t_source, same_task),
        rates_of_weights(b, t_target, t_source, same_task),
        a["patient_id"],
        evaluation["n_bootstrap"],
        evaluation["confidence"],
        evaluation["seed"],
    )
    return {ABOVE_NOISE_CI[0]: res["ci_low"][0], ABOVE_NOISE_CI[1]: res["ci_high"][0]}


def compare_pair(a: dict, b: dict, settings_a: tuple, settings_b: tuple, evaluation: dict):
    """Set A minus set B on one target's images: per rate of ``PAIRED_RATES`` the two rates,
    the difference and its paired CI (``{rate}_a``, ``{rate}_b``, ``{rate}_difference``,
    ``{rate}_difference_ci_low`` / ``_ci_high``); ``settings_*``: (t_target, t_source,
    source_task_is_data_task) of each set; ``a``, ``b``: aligned inputs."""
    _check_same_images(a, b)
    stat_a, stat_b = rates_of_weights(a, *settings_a), rates_of_weights(b, *settings_b)
    res = paired_difference(
        stat_a,
        stat_b,
        a["patient_id"],
        evaluation["n_bootstrap"],
        evaluation["confidence"],
        evaluation["seed"],
    )
    point_a, point_b = stat_a(None), stat_b(None)
    out = {}
    for q, rate in enumerate(PAIRED_RATES):
        out[f"{rate}_a"] = float(point_a[q])
        out[f"{rate}_b"] = float(point_b[q])
        out[f"{rate}_difference"] = res["difference"][q]
        out[f"{rate}_difference_ci_low"] = res["ci_low"][q]
        out[f"{rate}_difference_ci_high"] = res["ci_high"][q]
    return out
