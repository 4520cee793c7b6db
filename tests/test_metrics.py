"""Tests of cxrtransfer.metrics: point estimates against an independent recomputation, bootstrap
CIs, and the bad-input cases."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.metrics import (
    COUNTS,
    QUANTITIES,
    auroc,
    cell_columns,
    compute_cell,
)
from sklearn.metrics import roc_auc_score

T_TARGET = 0.45
T_SOURCE = 0.55


def make_cell(n=300, seed=0, pos_frac=0.4, strength=0.25, round_to=2):
    """Random clean/adversarial prediction tables (probabilities rounded to create ties)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_frac).astype(int)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, n), 0, 1).round(round_to)
    push = np.where(y == 1, -strength, strength)
    q = np.clip(p + push + rng.normal(0, 0.15, n), 0, 1).round(round_to)
    sp = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, n), 0, 1)
    sq = np.clip(sp + 1.5 * push + rng.normal(0, 0.15, n), 0, 1)
    idx = [f"{i:05d}_000.png" for i in range(n)]
    clean = pd.DataFrame({"image_index": idx, "label": y, "prob": p})
    adv = pd.DataFrame(
        {
            "image_index": idx,
            "label": y,
            "prob": q,
            "source_clean_prob": sp,
            "source_adv_prob": sq,
            "l2": rng.uniform(0.5, 2.0, n),
            "linf": rng.choice([2 / 255, 4 / 255], n),
        }
    )
    # Shuffle the adversarial rows: compute_cell must align by image_index, not position.
    adv = adv.sample(frac=1.0, random_state=1).reset_index(drop=True)
    return clean, adv


def reference(clean, adv, t, ts):
    """Independent recomputation with plain Python loops (and sklearn for AUROC)."""
    a = adv.set_index("image_index")
    rows = []
    for _, r in clean.iterrows():
        s = a.loc[r["image_index"]]
        rows.append(
            (int(r["label"]), r["prob"], s["prob"], s["source_adv_prob"], s["l2"], s["linf"])
        )
    n = len(rows)
    tp = tn = fp = fn = atp = atn = afp = afn = 0
    clean_ok = success = fooled = src_fooled = base = transferred = 0
    conf_c = conf_a = l2 = linf = 0.0
    for y, p, q, sq, d2, dinf in rows:
        cp = 1 if p >= t else 0
        ap = 1 if q >= t else 0
        sp = 1 if sq >= ts else 0
        tp += cp == 1 and y == 1
        tn += cp == 0 and y == 0
        fp += cp == 1 and y == 0
        fn += cp == 0 and y == 1
        atp += ap == 1 and y == 1
        atn += ap == 0 and y == 0
        afp += ap == 1 and y == 0
        afn += ap == 0 and y == 1
        if cp == y:
            clean_ok += 1
            if ap != y:
                success += 1
        if ap != y:
            fooled += 1
        if sp != y:
            src_fooled += 1
            if cp == y:
                base += 1
                if ap != y:
                    transferred += 1
        conf_c += max(p, 1 - p)
        conf_a += max(q, 1 - q)
        l2 += d2
        linf += dinf
    ys = [r[0] for r in rows]
    c_auc = roc_auc_score(ys, [r[1] for r in rows])
    a_auc = roc_auc_score(ys, [r[2] for r in rows])
    return {
        "clean_auroc": c_auc,
        "adv_auroc": a_auc,
        "auroc_ratio": a_auc / c_auc,
        "clean_accuracy": (tp + tn) / n,
        "adv_accuracy": (atp + atn) / n,
        "clean_sensitivity": tp / (tp + fn),
        "clean_specificity": tn / (tn + fp),
        "adv_sensitivity": atp / (atp + afn),
        "adv_specificity": atn / (atn + afp),
        "clean_confidence": conf_c / n,
        "adv_confidence": conf_a / n,
        "attack_success_rate": success / clean_ok,
        "fooling_rate": fooled / n,
        "transfer_rate": transferred / base,
        "mean_l2": l2 / n,
        "mean_linf": linf / n,
        "n_images": n,
        "n_positive": sum(ys),
        "n_negative": n - sum(ys),
        "n_clean_correct": clean_ok,
        "n_success": success,
        "n_fooled": fooled,
        "n_source_fooled": src_fooled,
        "n_transfer_base": base,
        "n_transferred": transferred,
    }


@pytest.fixture(scope="module")
def cell_data():
    return make_cell()


@pytest.fixture(scope="module")
def cell(cell_data):
    clean, adv = cell_data
    return compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, seed=3)


def test_point_estimates_match_independent_recomputation(cell_data, cell):
    clean, adv = cell_data
    ref = reference(clean, adv, T_TARGET, T_SOURCE)
    for k in QUANTITIES:
        assert cell[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), k
    for k in COUNTS:
        assert cell[k] == ref[k], k
        assert isinstance(cell[k], int)
    # The fixture exercises every rate with a non-trivial value.
    for k in ("attack_success_rate", "fooling_rate", "transfer_rate", "adv_sensitivity"):
        assert 0.05 < cell[k] < 0.95, (k, cell[k])
    assert cell["notes"] == ""


def test_keys_are_flat_and_complete(cell):
    assert list(cell) == cell_columns()
    for k in QUANTITIES:
        assert f"{k}_ci_low" in cell and f"{k}_ci_high" in cell
    assert all(not isinstance(v, dict | list | np.ndarray) for v in cell.values())
    assert cell["t_target"] == T_TARGET and cell["t_source"] == T_SOURCE
    assert cell["n_boot"] == 400 and cell["ci_level"] == 0.95 and cell["seed"] == 3


def test_vectorised_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(5)
    n = 60
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 6, n) / 5.0  # heavy ties
    idx = rng.integers(0, n, (200, n))
    vec = auroc(y[idx], p[idx])
    for b in range(idx.shape[0]):
        yb, pb = y[idx[b]], p[idx[b]]
        if len(set(yb)) < 2:
            assert math.isnan(vec[b])
        else:
            assert vec[b] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
    # and a row with a single class is NaN
    assert math.isnan(auroc(np.zeros((1, 5), int), np.linspace(0, 1, 5)[None])[0])


def test_ci_contains_point_estimate(cell):
    for k in QUANTITIES:
        lo, hi = cell[f"{k}_ci_low"], cell[f"{k}_ci_high"]
        assert np.isfinite(lo) and np.isfinite(hi), k
        assert lo <= cell[k] <= hi, (k, lo, cell[k], hi)
        assert lo < hi or k in ("mean_linf",) or cell[k] in (0.0, 1.0), k


def test_ci_narrows_with_more_samples():
    small = compute_cell(*make_cell(n=100, seed=1), T_TARGET, T_SOURCE, n_boot=400)
    large = compute_cell(*make_cell(n=1600, seed=1), T_TARGET, T_SOURCE, n_boot=400)
    for k in ("adv_auroc", "fooling_rate", "transfer_rate", "adv_accuracy", "mean_l2"):
        w_small = small[f"{k}_ci_high"] - small[f"{k}_ci_low"]
        w_large = large[f"{k}_ci_high"] - large[f"{k}_ci_low"]
        assert w_large < 0.6 * w_small, (k, w_small, w_large)


def test_confidence_level_controls_width(cell_data):
    clean, adv = cell_data
    c80 = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, confidence=0.8, seed=3)
    c99 = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, confidence=0.99, seed=3)
    for k in ("adv_auroc", "fooling_rate"):
        assert (c80[f"{k}_ci_high"] - c80[f"{k}_ci_low"]) < (
            c99[f"{k}_ci_high"] - c99[f"{k}_ci_low"]
        )


def test_bootstrap_reproducible_and_seeded(cell_data, cell):
    clean, adv = cell_data
    again = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, seed=3)
    assert again == cell
    # Row order of the inputs does not matter (images are aligned and sorted by image_index).
    shuffled = compute_cell(
        clean.sample(frac=1.0, random_state=7),
        adv.sample(frac=1.0, random_state=8),
        T_TARGET,
        T_SOURCE,
        n_boot=400,
        seed=3,
    )
    assert shuffled == cell
    other = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, seed=4)
    assert other["adv_auroc"] == cell["adv_auroc"]
    assert other["adv_auroc_ci_low"] != cell["adv_auroc_ci_low"]


def test_fast_enough_for_500_images():
    clean, adv = make_cell(n=500, seed=2)
    compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=50)  # warm-up (imports)
    t0 = time.perf_counter()
    compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=1000)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"compute_cell took {elapsed:.2f} s for 500 images x 1000 resamples"


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_mismatched_indices_name_missing_and_extra(cell_data):
    clean, adv = cell_data
    adv2 = adv[~adv["image_index"].isin(["00003_000.png", "00007_000.png"])].copy()
    adv2.loc[adv2.index[0], "image_index"] = "99999_000.png"
    removed = adv.loc[adv.index[0], "image_index"]
    with pytest.raises(WorkflowError) as e:
        compute_cell(clean, adv2, T_TARGET, T_SOURCE, n_boot=10)
    msg = str(e.value)
    assert "3 clean image(s) missing from the adversarial set" in msg
    assert "00003_000.png" in msg and "00007_000.png" in msg and removed in msg
    assert "1 adversarial image(s) not in the clean set: 99999_000.png" in msg


def test_empty_adversarial_set_is_an_error(cell_data):
    clean, adv = cell_data
    with pytest.raises(WorkflowError, match="adversarial set is empty"):
        compute_cell(clean, adv.iloc[0:0], T_TARGET, T_SOURCE)


def test_single_class_gives_nan_auroc_with_note():
    clean, adv = make_cell(n=80, seed=3)
    clean = clean.assign(label=0)
    adv = adv.assign(label=0)
    c = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=100)
    for k in ("clean_auroc", "adv_auroc", "auroc_ratio"):
        assert math.isnan(c[k]) and math.isnan(c[f"{k}_ci_low"]) and math.isnan(c[f"{k}_ci_high"])
    assert "AUROC undefined: labels contain only class 0" in c["notes"]
    assert math.isnan(c["clean_sensitivity"]) and math.isnan(c["adv_sensitivity"])
    assert "sensitivity undefined: no positive images" in c["notes"]
    # Everything else still defined, with CIs.
    for k in ("clean_accuracy", "clean_specificity", "fooling_rate", "mean_l2"):
        assert np.isfinite(c[k]) and np.isfinite(c[f"{k}_ci_low"]), k
    ones = compute_cell(clean.assign(label=1), adv.assign(label=1), T_TARGET, T_SOURCE, n_boot=20)
    assert "only class 1" in ones["notes"] and math.isnan(ones["clean_specificity"])


def test_zero_denominators_give_nan_with_reason():
    clean, adv = make_cell(n=50, seed=4)
    # The target gets every clean image wrong -> no conditioning set for ASR / transfer.
    wrong = clean.assign(prob=np.where(clean["label"] == 1, 0.0, 1.0))
    c = compute_cell(wrong, adv, T_TARGET, T_SOURCE, n_boot=50)
    assert c["n_clean_correct"] == 0 and c["n_transfer_base"] == 0
    for k in ("attack_success_rate", "transfer_rate"):
        assert math.isnan(c[k]) and math.isnan(c[f"{k}_ci_low"]) and math.isnan(c[f"{k}_ci_high"])
    assert "attack_success_rate undefined" in c["notes"] and "n_clean_correct = 0" in c["notes"]
    assert "transfer_rate undefined" in c["notes"] and "n_transfer_base = 0" in c["notes"]
    assert c["clean_accuracy"] == 0.0 and np.isfinite(c["fooling_rate"])
    # The source never fools -> only the transfer rate is undefined.
    nofool = adv.assign(source_adv_prob=np.where(adv["label"] == 1, 1.0, 0.0))
    c2 = compute_cell(clean, nofool, T_TARGET, T_SOURCE, n_boot=50)
    assert c2["n_source_fooled"] == 0 and math.isnan(c2["transfer_rate"])
    assert np.isfinite(c2["attack_success_rate"])
    assert "transfer_rate undefined" in c2["notes"]
    assert "attack_success_rate undefined" not in c2["notes"]


def test_quantity_undefined_in_some_resamples_uses_defined_ones():
    clean, adv = make_cell(n=40, seed=5)
    keep_pos = clean.index[clean["label"] == 1][:1]
    keep = clean.index[(clean["label"] == 0)].union(keep_pos)
    clean, adv = clean.loc[keep], adv[adv["image_index"].isin(clean.loc[keep, "image_index"])]
    c = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=300)
    assert c["n_positive"] == 1 and np.isfinite(c["clean_auroc"])
    assert np.isfinite(c["clean_auroc_ci_low"]) and np.isfinite(c["clean_auroc_ci_high"])
    assert "clean_auroc CI from the" in c["notes"] and "resamples where it is defined" in c["notes"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, a: (c, a.drop(columns=["l2"])), "lacks column"),
        (lambda c, a: (c, a.assign(prob=a["prob"] + 2)), "adversarial prob"),
        (lambda c, a: (c.assign(prob=np.nan), a), "clean prob"),
        (lambda c, a: (c.assign(label=2), a.assign(label=2)), "label"),
        (lambda c, a: (c, a.assign(label=1 - a["label"])), "Labels differ"),
        (lambda c, a: (pd.concat([c, c.iloc[:2]]), a), "more than once"),
        (lambda c, a: (c, a.assign(l2=-1.0)), "l2"),
    ],
)
def test_invalid_inputs_raise_workflow_error(cell_data, mutate, message):
    clean, adv = mutate(*cell_data)
    with pytest.raises(WorkflowError, match=message):
        compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t_target": float("nan")}, "t_target"),
        ({"n_boot": -1}, "n_boot"),
        ({"confidence": 95}, "confidence"),
    ],
)
def test_invalid_settings_raise_workflow_error(cell_data, kwargs, message):
    args = {"t_target": T_TARGET, "t_source": T_SOURCE, "n_boot": 10} | kwargs
    with pytest.raises(WorkflowError, match=message):
        compute_cell(*cell_data, **args)
