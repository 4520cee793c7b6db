"""The summary's comparison of a robust surrogate with its standard twin of the same architecture
(``answer.robust_surrogate_sentences``) on planted comparison rows: an ordering only where the
paired CI excludes 0 (either row order), "no difference shown" otherwise, both with the CI; no
statement without a twin of the same architecture or with the twin as the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
from cxrtransfer.evaluate import answer
from cxrtransfer.evaluate.comparison_table import COMPARISON_COLUMNS

TARGET = "deployed_r50"
FACTS = {
    TARGET: {"task": "ptx", "arch": "ResNet50"},
    "small": {"task": "ptx", "arch": "MobileNetV3Small"},
    "small_at": {
        "task": "ptx",
        "arch": "MobileNetV3Small",
        "adversarial": "eps=2, fraction=1.0",
        "adversarial_eps": 2.0,
        "robust_base": "small",
    },
    "other": {"task": "ptx", "arch": "ResNet50V2"},
}


def planted_row(sa, sb, d, lo, hi, eps=2.0, attack="pgd", target=TARGET):
    """A comparisons.csv row of two sources under one attack on ``target``."""
    row = dict.fromkeys(COMPARISON_COLUMNS, np.nan)
    row.update(
        data_task="ptx",
        target=target,
        eps=eps,
        kind="same attack",
        source_a=sa,
        attack_a=attack,
        source_b=sb,
        attack_b=attack,
        fooling_rate_difference=d,
        fooling_rate_difference_ci_low=lo,
        fooling_rate_difference_ci_high=hi,
    )
    return row


def sentences(rows, facts=FACTS, target=TARGET):
    return answer.robust_surrogate_sentences(pd.DataFrame(rows), facts, target)


def test_an_excluding_ci_orders_in_either_row_order():
    (more,) = sentences([planted_row("small", "small_at", -0.214, -0.301, -0.122)])
    assert "Robust surrogate small_at" in more and "standard twin small" in more
    assert "-0.214 [-0.301, -0.122]" in more
    assert "fool the target more than its standard twin's" in more
    (less,) = sentences([planted_row("small_at", "small", -0.214, -0.301, -0.122)])
    assert "fool the target less than" in less and "pgd at eps 2" in less


def test_a_ci_that_includes_zero_shows_no_difference_with_the_ci():
    (s,) = sentences([planted_row("small_at", "small", 0.041, -0.012, 0.097)])
    assert s.endswith(f"0.041 [-0.012, 0.097], {answer.NO_DIFFERENCE}.")
    assert " more " not in s and " less " not in s


def test_only_the_pair_and_only_on_its_target():
    rows = [
        planted_row("small_at", "other", 0.3, 0.2, 0.4),  # not the twin
        planted_row("small_at", "small", 0.3, 0.2, 0.4, target="other"),  # another target
        planted_row("small", "small_at", 0.1, 0.05, 0.15, eps=8.0),
    ]
    out = sentences(rows)
    assert len(out) == 1 and "eps 8" in out[0] and "0.100 [0.050, 0.150]" in out[0]


def test_a_twin_of_another_architecture_or_a_missing_pair():
    other_arch = {**FACTS, "small": {"task": "ptx", "arch": "ResNet50"}}
    assert sentences([planted_row("small", "small_at", 0.1, 0.05, 0.15)], other_arch) == []
    (missing,) = sentences([planted_row("small_at", "other", 0.3, 0.2, 0.4)])
    assert "no paired comparison" in missing
    assert sentences([], target="small") == []


def test_the_statement_reaches_the_summary_of_the_deployed_target():
    rows = [planted_row("small", "small_at", -0.214, -0.301, -0.122)]
    cells = pd.DataFrame(
        [
            {
                "data_task": "ptx",
                "attack": "pgd",
                "eps": 2.0,
                "source": s,
                "target": TARGET,
                "relation": rel,
                "clean_auroc": 0.9,
                "adv_auroc": 0.4,
                "fooling_rate": fr,
                "flip_rate": fr,
                "transfer_rate": 0.5,
                "n_images": 146,
                "n_patients": 60,
            }
            for s, rel, fr in (
                (TARGET, "white-box", 0.95),
                ("small", "cross-architecture", 0.2),
                ("small_at", "cross-architecture", 0.4),
            )
        ]
    )
    text = answer.answer_lines(cells, pd.DataFrame(rows), FACTS, "synthetic", {TARGET: "ptx"})
    hits = [line for line in text if "Robust surrogate small_at" in line]
    assert len(hits) == 1 and hits[0].startswith("- ")


def test_an_ensemble_of_models_from_scratch_is_from_scratch_in_the_regime():
    rows = pd.DataFrame(
        [{"source": "a+b", "target": TARGET, "n_images": 146}, {"source": "a", "target": TARGET}]
    )
    facts = {"a+b": {"pretrained": "none+none"}, "a": {"pretrained": "none"}, TARGET: {}}
    assert "trained from scratch" in answer.regime_sentence(rows, facts, "synthetic")
    facts["a+b"] = {"pretrained": "none+imagenet"}
    assert "pretrained weights" in answer.regime_sentence(rows, facts, "synthetic")
