"""Tests of cxrtransfer.metrics.paired: the paired patient bootstrap of a difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cxrtransfer.metrics.measures import weighted_mean
from cxrtransfer.metrics.paired import defined_interval, excludes_zero, paired_difference


def rate(x):
    """A statistic of weights: the weighted mean of per-image 0/1 values ``x``."""
    x = np.asarray(x, dtype=float)
    return lambda w: np.stack([np.asarray(weighted_mean(x, w), dtype=float)])


def test_identical_sets_give_a_zero_difference_and_ci():
    rng = np.random.default_rng(1)
    x = rng.random(120) < 0.4
    res = paired_difference(rate(x), rate(x), np.arange(120) // 3, 300, 0.95, 0)
    assert res["difference"] == [0.0] and res["ci_low"] == [0.0] and res["ci_high"] == [0.0]
    assert res["n_defined"] == [300]


def test_a_planted_shift_is_detected_and_its_point_is_the_direct_difference():
    rng = np.random.default_rng(2)
    base = rng.random(200) < 0.3
    shifted = base.copy()
    shifted[np.flatnonzero(~base)[:30]] = True  # 30 more images fooled
    pid = np.arange(200) // 2
    res = paired_difference(rate(shifted), rate(base), pid, 500, 0.95, 0)
    assert res["difference"][0] == pytest.approx(shifted.mean() - base.mean())
    assert res["ci_low"][0] > 0 and excludes_zero(res["ci_low"][0], res["ci_high"][0])
    # the other way round: the same interval, negated
    rev = paired_difference(rate(base), rate(shifted), pid, 500, 0.95, 0)
    assert rev["ci_high"][0] == pytest.approx(-res["ci_low"][0])
    # a set drawn at the same rate, independently: no difference is claimed
    other = rng.random(200) < 0.3
    noise = paired_difference(rate(other), rate(base), pid, 500, 0.95, 0)
    assert noise["ci_low"][0] < 0 < noise["ci_high"][0]


def test_patients_are_resampled_with_all_their_images_not_images():
    """Four identical images per patient: the patient bootstrap of the full set equals the
    bootstrap of one image per patient (same draws), while an image bootstrap is narrower."""
    rng = np.random.default_rng(3)
    per_patient = rng.random(60) < 0.5
    shift = per_patient | (rng.random(60) < 0.2)
    full_a, full_b = np.repeat(shift, 4), np.repeat(per_patient, 4)
    pid = np.repeat(np.arange(60), 4)
    full = paired_difference(rate(full_a), rate(full_b), pid, 400, 0.95, 5)
    one = paired_difference(rate(shift), rate(per_patient), np.arange(60), 400, 0.95, 5)
    assert full["ci_low"][0] == pytest.approx(one["ci_low"][0])
    assert full["ci_high"][0] == pytest.approx(one["ci_high"][0])
    images = paired_difference(rate(full_a), rate(full_b), pid, 400, 0.95, 5, cluster="image")
    assert images["ci_high"][0] - images["ci_low"][0] < 0.8 * (
        full["ci_high"][0] - full["ci_low"][0]
    )


def test_undefined_cases():
    x = np.array([1, 0, 1, 0], dtype=bool)
    one_patient = paired_difference(rate(x), rate(~x), np.zeros(4), 100, 0.95, 0)
    assert one_patient["difference"] == [0.0] and math.isnan(one_patient["ci_low"][0])
    no_boot = paired_difference(rate(x), rate(~x), np.arange(4), 0, 0.95, 0)
    assert math.isnan(no_boot["ci_high"][0])
    assert math.isnan(defined_interval([np.nan, 1.0], 0.95)[0])
    assert not excludes_zero(float("nan"), 1) and not excludes_zero(-0.1, 0.1)
    assert excludes_zero(0.01, 0.2) and excludes_zero(-0.3, -0.01) and not excludes_zero(None, 1)
