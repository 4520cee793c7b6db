"""Tests of cxrtransfer.metrics (measures, bootstrap) and cxrtransfer.evaluate.cells: point
estimates against an independent recomputation, the transfer base, weighted statistics of the
patient bootstrap, CIs, and the bad-input cases.
(Coverage of the patient bootstrap on clustered data: tests/metrics/test_bootstrap_coverage.py.)"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.evaluate.cell_inputs import align_inputs
from cxrtransfer.evaluate.cells import COUNTS, QUANTITIES, cell_columns, compute_cell, quantities
from cxrtransfer.metrics.bootstrap import auroc_ci, cluster_codes, cluster_weights
from cxrtransfer.metrics.measures import auroc
from sklearn.metrics import roc_auc_score

T_TARGET = 0.45
T_SOURCE = 0.55


def patients_of(n, rng, max_images=4):
    """Patient ids (non-contiguous ints) of n images, 1..max_images consecutive images each."""
    sizes = rng.integers(1, max_images + 1, n)
    pid = np.repeat(1000 + 7 * np.arange(n), sizes)[:n]
    follow_up = np.concatenate([np.arange(k) for k in sizes])[:n]
    return pid, [f"{p:08d}_{f:03d}.png" for p, f in zip(pid, follow_up, strict=True)]


def make_cell(n=300, seed=0, pos_frac=0.4, strength=0.25, round_to=2):
    """Random clean/adversarial prediction tables (probabilities rounded to create ties), with
    NIH-style image names ``{patient:08d}_{follow-up:03d}.png`` and 1-4 images per patient."""
    rng = np.random.default_rng(seed)
    pid, idx = patients_of(n, rng)
    y = (rng.random(n) < pos_frac).astype(int)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, n), 0, 1).round(round_to)
    push = np.where(y == 1, -strength, strength)
    q = np.clip(p + push + rng.normal(0, 0.15, n), 0, 1).round(round_to)
    sp = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, n), 0, 1)
    sq = np.clip(sp + 1.5 * push + rng.normal(0, 0.15, n), 0, 1)
    clean = pd.DataFrame({"image_index": idx, "patient_id": pid, "label": y, "prob": p})
    adv = pd.DataFrame(
        {
            "image_index": idx,
            "patient_id": pid,
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
            (
                int(r["label"]),
                r["prob"],
                s["prob"],
                s["source_clean_prob"],
                s["source_adv_prob"],
                s["l2"],
                s["linf"],
            )
        )
    n = len(rows)
    tp = tn = fp = fn = atp = atn = afp = afn = 0
    clean_ok = success = fooled = flipped = src_caused = base = transferred = 0
    conf_c = conf_a = l2 = linf = 0.0
    for y, p, q, sc, sq, d2, dinf in rows:
        cp = 1 if p >= t else 0
        ap = 1 if q >= t else 0
        scp = 1 if sc >= ts else 0
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
        flipped += ap != cp
        if scp == y and sp != y:  # the attack made the source wrong
            src_caused += 1
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
        "flip_rate": flipped / n,
        "transfer_rate": transferred / base,
        "mean_l2": l2 / n,
        "mean_linf": linf / n,
        "n_images": n,
        "n_patients": clean["patient_id"].nunique(),
        "n_positive": sum(ys),
        "n_negative": n - sum(ys),
        "n_clean_correct": clean_ok,
        "n_success": success,
        "n_fooled": fooled,
        "n_flipped": flipped,
        "n_source_caused": src_caused,
        "n_transfer_base": base,
        "n_transferred": transferred,
        "achieved_linf": round(max(r[6] for r in rows) * 255),
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
    for k in (
        "attack_success_rate",
        "fooling_rate",
        "flip_rate",
        "transfer_rate",
        "adv_sensitivity",
    ):
        assert 0.05 < cell[k] < 0.95, (k, cell[k])
    # Patients with several images exist, so the cluster bootstrap differs from an image one.
    assert 50 < cell["n_patients"] < cell["n_images"]
    assert cell["notes"] == ""


def test_keys_are_flat_and_complete(cell):
    assert list(cell) == cell_columns()
    for k in QUANTITIES:
        assert f"{k}_ci_low" in cell and f"{k}_ci_high" in cell
    assert all(not isinstance(v, dict | list | np.ndarray) for v in cell.values())
    assert cell["t_target"] == T_TARGET and cell["t_source"] == T_SOURCE
    assert cell["transfer_base_rule"] == "source right on clean, wrong on adversarial"
    assert cell["bootstrap_cluster"] == "patient"
    assert cell["n_boot"] == 400 and cell["ci_level"] == 0.95 and cell["seed"] == 3


def test_auroc_with_unit_weights_equals_sklearn_with_ties():
    rng = np.random.default_rng(5)
    for trial in range(50):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        p = rng.integers(0, 6, n) / 5.0 if trial % 2 else rng.random(n)  # heavy ties / none
        got = auroc(y, p)
        if len(set(y)) < 2:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(roc_auc_score(y, p), abs=1e-12)
            assert auroc(y, p, np.ones(n)) == got
    # Every pair tied: 1/2.
    assert auroc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == 0.5


def test_auroc_with_integer_weights_equals_duplicated_data():
    rng = np.random.default_rng(6)
    n = 60
    y = rng.integers(0, 2, n)
    p = rng.integers(0, 6, n) / 5.0  # heavy ties
    w = rng.integers(0, 4, (200, n))  # one row per "resample"; zeros drop an image
    w[0] = 0
    w[0, y == 0] = 1  # a row with one class only
    vec = auroc(y, p, w)
    assert vec.shape == (200,)
    assert math.isnan(vec[0])
    for b in range(1, w.shape[0]):
        yb, pb = np.repeat(y, w[b]), np.repeat(p, w[b])
        if len(set(yb)) < 2:
            assert math.isnan(vec[b])
        else:
            assert vec[b] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
    # Real-valued weights: sklearn's sample_weight is the same weighted Mann-Whitney statistic.
    wf = rng.random(n)
    assert auroc(y, p, wf) == pytest.approx(roc_auc_score(y, p, sample_weight=wf), abs=1e-12)


def test_cluster_weights_are_patient_multiplicities():
    pid = np.array([30, 10, 10, 20, 30, 30])
    codes, n_clusters = cluster_codes(pid, "patient")
    assert n_clusters == 3 and list(codes) == [2, 0, 0, 1, 2, 2]
    draws = np.array([[0, 0, 2], [1, 1, 1], [2, 0, 1]])  # patients 10, 20, 30 = codes 0, 1, 2
    w = cluster_weights(draws, codes, n_clusters)
    assert w.tolist() == [
        [1, 2, 2, 0, 1, 1],
        [0, 0, 0, 3, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert cluster_weights(draws[0], codes, n_clusters).tolist() == w[0].tolist()
    codes_img, n_img = cluster_codes(pid, "image")
    assert n_img == 6 and list(codes_img) == list(range(6))


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


def test_weighted_quantities_equal_quantities_of_resampled_patients():
    """What the patient bootstrap computes for a resample (per-image weights = multiplicity of
    the image's patient) equals every quantity of the explicitly resampled data set (each drawn
    patient's images repeated), for 500 images and 30 resamples."""
    clean, adv = make_cell(n=500, seed=2)
    for same_task in (True, False):
        a = align_inputs(clean, adv)
        codes, n_clusters = cluster_codes(a["patient_id"], "patient")
        rng = np.random.default_rng(11)
        draws = rng.integers(0, n_clusters, (30, n_clusters))
        weighted = quantities(
            a, T_TARGET, T_SOURCE, same_task, cluster_weights(draws, codes, n_clusters)
        )
        for b, row in enumerate(draws):
            images = np.concatenate([np.flatnonzero(codes == k) for k in row])
            explicit = quantities(
                {k: v[images] for k, v in a.items()}, T_TARGET, T_SOURCE, same_task
            )
            for k in QUANTITIES:
                assert weighted[k][b] == pytest.approx(
                    float(explicit[k]), abs=1e-12, nan_ok=True
                ), k


def test_patient_bootstrap_with_one_image_per_patient_is_the_image_bootstrap(cell_data):
    clean, adv = cell_data
    clean = clean.assign(patient_id=np.arange(len(clean)))  # image_index order = patient order
    adv = adv.drop(columns="patient_id")
    by_patient = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=200, seed=3)
    by_image = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=200, seed=3, cluster="image")
    assert by_patient["n_patients"] == by_patient["n_images"]
    assert by_image.pop("bootstrap_cluster") == "image"
    assert by_patient.pop("bootstrap_cluster") == "patient"
    assert by_patient == by_image


def test_patient_bootstrap_is_wider_than_image_bootstrap_when_patients_repeat():
    """Every patient's images are identical copies: the patient bootstrap must not treat the
    copies as independent evidence (its CI equals that of one image per patient)."""
    clean, adv = make_cell(n=120, seed=8)
    clean = clean.assign(patient_id=np.arange(len(clean)))
    adv = adv.drop(columns="patient_id")
    copies = 4
    rep_clean = pd.concat(
        [clean.assign(image_index=clean["image_index"] + f"#{j}") for j in range(copies)]
    )
    rep_adv = pd.concat(
        [adv.assign(image_index=adv["image_index"] + f"#{j}") for j in range(copies)]
    )
    single = compute_cell(clean, adv, T_TARGET, T_SOURCE, n_boot=400, seed=1)
    by_patient = compute_cell(rep_clean, rep_adv, T_TARGET, T_SOURCE, n_boot=400, seed=1)
    by_image = compute_cell(
        rep_clean, rep_adv, T_TARGET, T_SOURCE, n_boot=400, seed=1, cluster="image"
    )
    assert by_patient["n_patients"] == 120 and by_patient["n_images"] == 480
    for k in ("fooling_rate", "adv_auroc", "adv_accuracy"):
        assert by_patient[k] == pytest.approx(single[k], abs=1e-12)
        width = {
            name: c[f"{k}_ci_high"] - c[f"{k}_ci_low"]
            for name, c in (("single", single), ("patient", by_patient), ("image", by_image))
        }
        assert width["patient"] == pytest.approx(width["single"], rel=0.25), (k, width)
        assert width["image"] < 0.7 * width["patient"], (k, width)


# ----------------------------------------------------------------------------------------------
# Conditional transfer: only source errors the attack caused
# ----------------------------------------------------------------------------------------------


def one_image_cell(label, source_clean, source_adv, target_clean, target_adv):
    clean = pd.DataFrame(
        {"image_index": ["a.png"], "patient_id": [1], "label": [label], "prob": [target_clean]}
    )
    adv = pd.DataFrame(
        {
            "image_index": ["a.png"],
            "label": [label],
            "prob": [target_adv],
            "source_clean_prob": [source_clean],
            "source_adv_prob": [source_adv],
            "l2": [1.0],
            "linf": [0.01],
        }
    )
    return clean, adv


def test_source_wrong_already_on_clean_image_is_not_in_transfer_base():
    # Label 1; the source says 0.1 on both the clean and the adversarial image (wrong on both:
    # the attack caused nothing); the target is right on clean (0.9) and wrong on adversarial.
    clean, adv = one_image_cell(1, 0.1, 0.1, 0.9, 0.2)
    c = compute_cell(clean, adv, 0.5, 0.5, n_boot=20)
    assert c["n_source_caused"] == 0 and c["n_transfer_base"] == 0 and c["n_transferred"] == 0
    assert math.isnan(c["transfer_rate"])
    assert "transfer_rate undefined" in c["notes"] and "n_transfer_base = 0" in c["notes"]
    assert "the attack made the source wrong" in c["notes"]
    assert c["fooling_rate"] == 1.0 and c["attack_success_rate"] == 1.0
    assert "the bootstrap needs at least 2 patients" in c["notes"]
    # The source right on clean and wrong on adversarial: now the image is in the base.
    c2 = compute_cell(*one_image_cell(1, 0.9, 0.1, 0.9, 0.2), 0.5, 0.5, n_boot=20)
    assert c2["n_source_caused"] == 1 and c2["n_transfer_base"] == 1 and c2["transfer_rate"] == 1.0


def cross_task_tables():
    """Five images; the source's own label differs from y, so only its flips matter."""
    #        label  src clean  src adv  target clean  target adv
    rows = [
        (1, 0.8, 0.3, 0.9, 0.2),  # source flipped 1 -> 0 (same task: "caused")   transferred
        (0, 0.8, 0.3, 0.1, 0.3),  # flipped 1 -> 0 (same task: wrong on clean)     not fooled
        (1, 0.2, 0.7, 0.9, 0.1),  # flipped 0 -> 1 (same task: adv "right")        transferred
        (1, 0.1, 0.1, 0.9, 0.2),  # no flip                                        -
        (0, 0.6, 0.9, 0.2, 0.7),  # no flip (same task: wrong on both)             -
    ]
    label, sc, sa, tc, ta = (np.array(col) for col in zip(*rows, strict=True))
    idx = [f"{i}.png" for i in range(len(rows))]
    clean = pd.DataFrame({"image_index": idx, "patient_id": range(5), "label": label, "prob": tc})
    adv = pd.DataFrame(
        {
            "image_index": idx,
            "label": label,
            "prob": ta,
            "source_clean_prob": sc,
            "source_adv_prob": sa,
            "l2": 1.0,
            "linf": 0.01,
        }
    )
    return clean, adv


def test_cross_task_transfer_base_is_a_source_decision_flip():
    clean, adv = cross_task_tables()
    cross = compute_cell(clean, adv, 0.5, 0.5, n_boot=50, source_task_is_data_task=False)
    assert cross["transfer_base_rule"] == "source decision flipped"
    assert cross["n_source_caused"] == 3 and cross["n_transfer_base"] == 3
    assert cross["n_transferred"] == 2 and cross["transfer_rate"] == pytest.approx(2 / 3)
    same = compute_cell(clean, adv, 0.5, 0.5, n_boot=50)
    assert same["transfer_base_rule"] == "source right on clean, wrong on adversarial"
    assert same["n_source_caused"] == 1 and same["n_transfer_base"] == 1
    assert same["transfer_rate"] == 1.0
    # No flip at all -> undefined, with the cross-task reason.
    none = compute_cell(
        clean,
        adv.assign(source_adv_prob=adv["source_clean_prob"]),
        0.5,
        0.5,
        n_boot=50,
        source_task_is_data_task=False,
    )
    assert none["n_source_caused"] == 0 and math.isnan(none["transfer_rate"])
    assert "the attack flipped the source's decision" in none["notes"]


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_mismatched_indices_name_missing_and_extra(cell_data):
    clean, adv = cell_data
    gone = list(clean["image_index"].iloc[[3, 7]])
    adv2 = adv[~adv["image_index"].isin(gone)].copy()
    adv2.loc[adv2.index[0], "image_index"] = "99999_000.png"
    removed = adv.loc[adv.index[0], "image_index"]
    with pytest.raises(WorkflowError) as e:
        compute_cell(clean, adv2, T_TARGET, T_SOURCE, n_boot=10)
    msg = str(e.value)
    assert "3 clean image(s) missing from the adversarial set" in msg
    assert gone[0] in msg and gone[1] in msg and removed in msg
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
    assert c2["n_source_caused"] == 0 and math.isnan(c2["transfer_rate"])
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
        (lambda c, a: (c.drop(columns=["patient_id"]), a), "lacks column.*patient_id"),
        (lambda c, a: (c.assign(patient_id=c["patient_id"] + 0.5), a), "patient_id must be"),
        (lambda c, a: (c, a.assign(patient_id=a["patient_id"] + 1)), "patient_id differs"),
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
        ({"cluster": "study"}, "cluster"),
    ],
)
def test_invalid_settings_raise_workflow_error(cell_data, kwargs, message):
    args = {"t_target": T_TARGET, "t_source": T_SOURCE, "n_boot": 10} | kwargs
    with pytest.raises(WorkflowError, match=message):
        compute_cell(*cell_data, **args)


def test_expert_cell_matches_recomputation_on_the_expert_subset(cell_data):
    """expert_* = every metric on the images with an expert label, the expert label as truth;
    expert_nlp_* = the same images with the NLP label; both against the independent
    recomputation (sklearn AUROC) on that subset."""
    from cxrtransfer.evaluate.sets import expert_cell

    clean, adv = cell_data
    rng = np.random.default_rng(5)
    names = clean["image_index"].to_numpy()
    chosen = names[rng.random(len(names)) < 0.6]
    nlp = dict(zip(clean["image_index"], clean["label"], strict=True))
    flip = rng.random(len(chosen)) < 0.15
    expert = {n: int(nlp[n]) ^ int(f) for n, f in zip(chosen, flip, strict=True)}
    ev = {"n_bootstrap": 50, "confidence": 0.95, "seed": 0}
    out = expert_cell(clean, adv, expert, T_TARGET, T_SOURCE, ev, True)
    c = clean[clean["image_index"].isin(expert)]
    a = adv[adv["image_index"].isin(expert)]
    relabel = {"label": lambda d: d["image_index"].map(expert)}
    ref_expert = reference(c.assign(**relabel), a.assign(**relabel), T_TARGET, T_SOURCE)
    ref_nlp = reference(c, a, T_TARGET, T_SOURCE)
    assert out["n_expert"] == len(expert) == ref_expert["n_images"]
    for prefix, ref in (("expert_", ref_expert), ("expert_nlp_", ref_nlp)):
        for k in QUANTITIES:
            assert out[prefix + k] == pytest.approx(ref[k], rel=1e-12, abs=1e-12), prefix + k
            assert out[f"{prefix}{k}_ci_low"] <= out[prefix + k] <= out[f"{prefix}{k}_ci_high"]
        for k in COUNTS:
            assert out[prefix + k] == ref[k], prefix + k
    ys = [expert[n] for n in c["image_index"]]
    q = a.set_index("image_index").loc[c["image_index"], "prob"]
    assert out["expert_adv_auroc"] == pytest.approx(roc_auc_score(ys, q))
    assert out["expert_adv_auroc"] != out["expert_nlp_adv_auroc"]  # the labels disagree
    assert f"disagree on {int(flip.sum())} of {len(expert)}" in out["expert_note"]


def test_expert_cell_one_class_and_empty_subsets(cell_data):
    from cxrtransfer.evaluate.sets import expert_cell

    clean, adv = cell_data
    ev = {"n_bootstrap": 20, "confidence": 0.95, "seed": 0}
    some = clean["image_index"].head(30)
    out = expert_cell(clean, adv, dict.fromkeys(some, 0), T_TARGET, T_SOURCE, ev, True)
    assert out["n_expert"] == 30 and math.isnan(out["expert_adv_auroc"])
    assert "every expert-labelled image is negative" in out["expert_note"]
    out = expert_cell(clean, adv, {"99999999_000.png": 1}, T_TARGET, T_SOURCE, ev, True)
    assert out["n_expert"] == 0 and math.isnan(out["expert_fooling_rate"])
    assert "no test image of this set has an expert label" in out["expert_note"]


def test_auroc_ci_resamples_patients_and_matches_a_direct_bootstrap():
    """The gate's CI against a plain loop: draw patients with replacement, repeat their images,
    sklearn's AUROC; the two percentile intervals agree to Monte-Carlo error."""
    rng = np.random.default_rng(5)
    pid = np.repeat(np.arange(40), 3)  # 3 images per patient, labels shared within a patient
    y = np.repeat(rng.integers(0, 2, 40), 3)
    # images of a patient look alike (follow-ups): a patient effect plus a little noise
    p = np.repeat(rng.normal(size=40), 3) + 0.2 * rng.normal(size=pid.size) + 0.8 * y
    low, high = auroc_ci(y, p, pid, n_boot=3000, seed=1)
    direct = []
    for _ in range(3000):
        drawn = rng.integers(0, 40, 40)
        idx = np.concatenate([np.flatnonzero(pid == k) for k in drawn])
        if 0 < y[idx].sum() < idx.size:
            direct.append(roc_auc_score(y[idx], p[idx]))
    ref_low, ref_high = np.quantile(direct, [0.025, 0.975])
    assert low == pytest.approx(ref_low, abs=0.03) and high == pytest.approx(ref_high, abs=0.03)
    assert low < roc_auc_score(y, p) < high
    # an image-level bootstrap of these clustered images is narrower: patients are the unit
    w_img = auroc_ci(y, p, np.arange(pid.size), n_boot=3000, seed=1)
    assert (w_img[1] - w_img[0]) < (high - low)
    # multi-label: the mean over the labels' AUROCs; two copies of one label give its CI
    two = auroc_ci(np.stack([y, y], 1), np.stack([p, p], 1), pid, n_boot=3000, seed=1)
    assert two == pytest.approx((low, high))
    assert all(math.isnan(v) for v in auroc_ci(y[:3], p[:3], pid[:3], n_boot=100))  # 1 patient
