"""Tests of cxrtransfer.evaluate.paired and cxrtransfer.evaluate.compare: a cell's paired CI
above its noise control and the compare job on planted prediction files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.files import write_csv
from cxrtransfer.evaluate.compare import compare_target
from cxrtransfer.evaluate.comparison_table import (
    COMPARISON_COLUMNS,
    read_all_comparisons,
    read_comparisons,
)
from cxrtransfer.evaluate.paired import ABOVE_NOISE_CI, above_noise
from cxrtransfer.evaluate.tables import add_noise_controls, long_table

EVALUATION = {"n_bootstrap": 400, "confidence": 0.95, "seed": 0}
N = 160


def planted(fooled: np.ndarray, seed: int = 0):
    """Clean predictions (all right, label alternating) and an adversarial set whose target
    decision is wrong exactly on ``fooled``; two images per patient."""
    label = np.arange(N) % 2
    clean = pd.DataFrame(
        {
            "image_index": [f"{i:04d}.png" for i in range(N)],
            "patient_id": np.arange(N) // 2,
            "label": label,
            "prob": np.where(label == 1, 0.9, 0.1),
        }
    )
    prob = np.where(fooled, 1 - clean["prob"], clean["prob"])
    adv = clean.assign(prob=prob, source_clean_prob=0.9, source_adv_prob=0.1, l2=1.0, linf=8 / 255)
    return clean, adv


def test_above_noise_of_identical_sets_is_zero_and_a_planted_excess_is_distinguishable():
    rng = np.random.default_rng(0)
    base = rng.random(N) < 0.2
    clean, control = planted(base)
    same = above_noise(clean, control, control, 0.5, 0.5, True, EVALUATION)
    assert same == {ABOVE_NOISE_CI[0]: 0.0, ABOVE_NOISE_CI[1]: 0.0}
    more = base | (rng.random(N) < 0.3)
    adv = planted(more)[1]
    res = above_noise(clean, adv, control, 0.5, 0.5, True, EVALUATION)
    assert 0 < res[ABOVE_NOISE_CI[0]] < more.mean() - base.mean() < res[ABOVE_NOISE_CI[1]]
    # the table keeps its columns and adds the paired CI right after the point estimate
    cells = []
    for attack, ci in (("pgd", res), ("pgd__shuffled", {})):
        fr = more.mean() if attack == "pgd" else base.mean()
        cells.append(
            dict(
                source="s",
                target="t",
                data_task="d",
                attack=attack,
                eps=8.0,
                relation="surrogate",
                fooling_rate=fr,
                adv_auroc=0.5,
                **ci,
            )
        )
    df = add_noise_controls(long_table(cells))
    cols = list(df.columns)
    i = cols.index("fooling_rate_above_noise")
    assert cols[i + 1 : i + 3] == list(ABOVE_NOISE_CI)
    row = df[df["attack"] == "pgd"].iloc[0]
    assert row["fooling_rate_above_noise"] == pytest.approx(more.mean() - base.mean())
    assert row[ABOVE_NOISE_CI[0]] == res[ABOVE_NOISE_CI[0]]


def _files(tmp_path, sets: dict):
    """Prediction files and metrics.json of target t and sources, as the jobs write them."""
    rec = runconfig.job_record()
    clean = None
    adv_files = []
    for i, (source, fooled) in enumerate(sets.items()):
        clean, adv = planted(fooled)
        adv = adv.assign(checkpoint_sha256="t-sha", source_checkpoint_sha256=f"{source}-sha", **rec)
        adv_files.append(tmp_path / f"adv{i}.csv")
        adv.to_csv(adv_files[-1], index=False)
    clean_file = tmp_path / "clean.csv"
    clean.assign(checkpoint_sha256="t-sha", **rec).to_csv(clean_file, index=False)
    metrics = {}
    for m in ["t", *sets]:
        metrics[m] = tmp_path / f"{m}.json"
        metrics[m].write_text(
            json.dumps({"threshold": 0.5, "checkpoint_sha256": f"{m}-sha", **rec})
        )
    return clean_file, adv_files, metrics


def test_compare_target_on_planted_files(tmp_path):
    rng = np.random.default_rng(4)
    weak = rng.random(N) < 0.1
    strong = weak | (rng.random(N) < 0.4)
    clean_file, adv_files, metrics = _files(tmp_path, {"s1": strong, "s2": weak, "s3": weak})
    sets = [{"source": s, "attack": "pgd", "eps": "8"} for s in ("s1", "s2", "s3")]
    pairs = [{"a": 0, "b": 1, "kind": "same attack"}, {"a": 1, "b": 2, "kind": "same attack"}]

    def compare():
        return compare_target(
            target="t",
            data_task="d",
            sets=sets,
            pairs=pairs,
            clean_file=clean_file,
            adv_files=adv_files,
            metrics_files=metrics,
            source_tasks={"s1": "d", "s2": "d", "s3": "d"},
            evaluation=EVALUATION,
        )

    table = compare()
    assert list(table.columns) == list(COMPARISON_COLUMNS) and len(table) == 2
    first, second = table.iloc[0], table.iloc[1]
    assert first["fooling_rate_difference"] == pytest.approx(strong.mean() - weak.mean())
    assert first["fooling_rate_difference_ci_low"] > 0
    assert first["fooling_rate_a"] == pytest.approx(strong.mean())
    # identical sets: [0, 0] for every rate
    for rate in ("fooling_rate", "flip_rate", "transfer_rate"):
        assert second[f"{rate}_difference_ci_low"] == second[f"{rate}_difference_ci_high"] == 0
    assert first["n_patients"] == N // 2 and first["source_a_checkpoint_sha256"] == "s1-sha"
    assert first["config_sha256"] == runconfig.job_record()["config_sha256"]
    # a stale prediction file (another source checkpoint) is refused
    metrics["s2"].write_text(
        json.dumps({"threshold": 0.5, "checkpoint_sha256": "new", **runconfig.job_record()})
    )
    with pytest.raises(WorkflowError, match="another checkpoint"):
        compare()


def test_comparisons_round_trip_and_checks(tmp_path):
    rec = runconfig.job_record()
    row = {c: 0.5 for c in COMPARISON_COLUMNS} | {"target": "t", "kind": "same attack", **rec}
    path = tmp_path / "t.csv"
    write_csv(path, pd.DataFrame([row], columns=list(COMPARISON_COLUMNS)))
    empty = tmp_path / "none.csv"
    write_csv(empty, pd.DataFrame(columns=list(COMPARISON_COLUMNS)))  # a target without pairs
    both = read_all_comparisons([path, empty])
    assert list(both.columns) == list(COMPARISON_COLUMNS) and len(both) == 1
    assert read_all_comparisons([]).empty
    write_csv(path, pd.DataFrame([row]).drop(columns=["fooling_rate_difference"]))
    with pytest.raises(WorkflowError, match="lack column"):
        read_comparisons(path)
    write_csv(path, pd.DataFrame([{**row, "planned_config_sha256": "other"}]))
    with pytest.raises(WorkflowError, match="not with the config"):
        read_comparisons(path)
