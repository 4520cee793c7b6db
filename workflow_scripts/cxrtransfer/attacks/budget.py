"""Storage of adversarial images as uint8: the exact integer budget of a stored perturbation
(``l2_budget_sq``, ``within_budget``) and rounding that keeps it (``quantise``)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import AttackSpec


def l2_budget_sq(eps: float) -> int:
    """L2 budget of a uint8 perturbation in squared grey levels: the largest integer S with
    sqrt(S) / 255 <= eps (computed exactly on rationals, with the same 1e-9 relative slack as
    floor(eps + 1e-9) for linf, so eps = k / 255 written in floating point admits norm k)."""
    return math.floor((Fraction(float(eps)) * 255 * (1 + Fraction(1, 10**9))) ** 2)


def within_budget(clean_u8: np.ndarray, adv_u8: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """Per image: is the stored integer perturbation inside the budget? (exact integer check:
    linf |d| <= floor(eps); l2 sum d^2 <= l2_budget_sq(eps), d in grey levels)."""
    d = np.asarray(adv_u8).astype(np.int64) - np.asarray(clean_u8).astype(np.int64)
    d = d.reshape(len(d), -1)
    if spec.norm == "linf":
        return np.abs(d).max(axis=1, initial=0) <= math.floor(spec.eps + 1e-9)
    return np.sum(d * d, axis=1) <= l2_budget_sq(spec.eps)


def _shrink_l2(d: np.ndarray, v: np.ndarray, budget: int) -> np.ndarray:
    """Integer vector near ``v`` with sum d^2 <= budget, from the rounding ``d`` = rint(v).

    Greedy: move entries one grey level toward zero, cheapest first, where the cost is the
    increase of the squared error to v, (1 - 2 e) with e = |d| - |v|, per unit of budget freed,
    2|d| - 1. Then, for float edge cases, shrink the largest entries until inside.
    """
    d = d.copy()
    need = int(np.sum(d * d)) - budget
    if need <= 0:
        return d
    nz = np.flatnonzero(d)
    a = np.abs(d[nz])
    gain = 2 * a - 1
    cost = (1.0 - 2.0 * (a - np.abs(v[nz]))) / gain
    order = np.argsort(cost, kind="stable")
    k = int(np.searchsorted(np.cumsum(gain[order]), need)) + 1
    pick = nz[order[:k]]
    d[pick] -= np.sign(d[pick])
    while np.sum(d * d) > budget:
        j = np.argmax(np.abs(d))
        d[j] -= np.sign(d[j])
    return d


def quantise(x_clean_u8: np.ndarray, x_adv: np.ndarray, spec: AttackSpec) -> np.ndarray:
    """Round adversarial images to uint8 (N, H, W) keeping the integer perturbation in budget.

    linf: nearest integer, clipped to floor(eps) grey levels. l2: nearest integer; an image
    whose rounded perturbation leaves the ball is shrunk greedily toward the clean image, one
    grey level at a time where that costs least, until sum d^2 <= l2_budget_sq(eps) (so the
    stored perturbation stays as close as possible to the attack's).
    """
    clean = np.asarray(x_clean_u8)
    if clean.ndim == 4:
        clean = clean[..., 0]
    adv = np.asarray(x_adv, dtype=np.float64)
    if adv.ndim == 4:
        adv = adv[..., 0]
    if clean.shape != adv.shape:
        raise WorkflowError(f"quantise: clean {clean.shape} and adversarial {adv.shape} differ.")
    bad = ~np.isfinite(adv).reshape(len(adv), -1).all(axis=1)
    if bad.any():  # NaN would round to an in-budget perturbation that the attack never found
        raise WorkflowError(
            f"The attack returned non-finite pixels for {int(bad.sum())} of {len(adv)} images "
            "(a NaN or infinite loss gradient, e.g. the source's output overflowing at a "
            "look-ahead point). Nothing was stored; try a smaller step or momentum for this "
            "attack, and report it if it persists."
        )
    c = clean.astype(np.int64)
    v = np.clip(adv, 0.0, 1.0) * 255.0 - c  # real perturbation in grey levels
    d = np.rint(v).astype(np.int64)
    if spec.norm == "linf":
        b = math.floor(spec.eps + 1e-9)
        d = np.clip(d, -b, b)
    else:
        budget = l2_budget_sq(spec.eps)
        for i in np.flatnonzero(np.sum((d * d).reshape(len(d), -1), axis=1) > budget):
            d[i] = _shrink_l2(d[i].reshape(-1), v[i].reshape(-1), budget).reshape(d[i].shape)
    return np.clip(c + d, 0, 255).astype(np.uint8)
