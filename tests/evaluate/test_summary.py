"""Tests of the summary's answer (cxrtransfer.evaluate.answer) on planted tables: orderings only
from paired CIs that exclude 0, rates at or below noise called so, missing relations said, and
every number traceable to a row of transfer.csv or comparisons.csv."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from cxrtransfer.evaluate import answer, summary
from cxrtransfer.evaluate.comparison_table import COMPARISON_COLUMNS
from cxrtransfer.evaluate.tables import fmt

T = "t_r50"
ENS = "s_r50+x_d121"
MODELS = {
    T: {"task": "pneu", "arch": "ResNet50", "pretrained": "none"},
    "s_r50": {"task": "pneu", "arch": "ResNet50", "pretrained": "none"},
    "x_d121": {"task": "pneu", "arch": "DenseNet121", "pretrained": "none"},
    "x_v2": {"task": "pneu", "arch": "ResNet50V2", "pretrained": "none"},
    ENS: {"task": "pneu", "arch": "ResNet50+DenseNet121", "pretrained": "none"},
}


def cell(source, attack, relation, fr, above, above_ci, tr=0.5, target=T, eps=8.0):
    """A row of transfer.csv (after add_noise_controls) with the columns the summary reads."""
    noise = fr - above
    return {
        "data_task": "pneu",
        "attack": attack,
        "eps": eps,
        "source": source,
        "target": target,
        "relation": relation,
        "clean_auroc": 0.912,
        "clean_auroc_ci_low": 0.871,
        "clean_auroc_ci_high": 0.948,
        "adv_auroc": 0.8 - fr / 2,
        "adv_auroc_ci_low": 0.7 - fr / 2,
        "adv_auroc_ci_high": 0.9 - fr / 2,
        "fooling_rate": fr,
        "fooling_rate_ci_low": fr - 0.04,
        "fooling_rate_ci_high": fr + 0.04,
        "flip_rate": fr,
        "transfer_rate": tr,
        "transfer_rate_ci_low": tr - 0.1,
        "transfer_rate_ci_high": tr + 0.1,
        "n_images": 300,
        "n_patients": 211,
        "member_relations": "",
        "noise_fooling_rate": noise,
        "noise_adv_auroc": 0.9,
        "fooling_rate_above_noise": above,
        "fooling_rate_above_noise_ci_low": above_ci[0],
        "fooling_rate_above_noise_ci_high": above_ci[1],
    }


def comparison(sa, aa, sb, ab, d, lo, hi, kind="same attack"):
    row = dict.fromkeys(COMPARISON_COLUMNS, np.nan)
    row.update(
        data_task="pneu",
        target=T,
        eps=8.0,
        kind=kind,
        source_a=sa,
        attack_a=aa,
        source_b=sb,
        attack_b=ab,
        fooling_rate_difference=d,
        fooling_rate_difference_ci_low=lo,
        fooling_rate_difference_ci_high=hi,
    )
    return row


@pytest.fixture
def planted():
    cells = [
        cell(T, "pgd", "white-box", 0.981, 0.912, (0.874, 0.944), tr=0.993),
        cell("s_r50", "pgd", "surrogate", 0.412, 0.305, (0.251, 0.362)),
        cell("s_r50", "ti", "surrogate", 0.433, 0.318, (0.262, 0.371)),
        cell("x_d121", "pgd", "cross-architecture", 0.102, -0.003, (-0.021, 0.015)),
        cell("x_v2", "pgd", "cross-architecture", 0.694, 0.521, (0.466, 0.577)),
        cell("x_d121", "pgd", "cross-architecture", 0.994, 0.8, (0.7, 0.9), target="x_v2"),
        {
            **cell(
                ENS, "pgd", "ensemble incl. a surrogate of the target", 0.488, 0.37, (0.31, 0.43)
            ),
            "member_relations": "s_r50: surrogate; x_d121: cross-architecture",
        },
    ]
    comps = [
        comparison("s_r50", "pgd", "s_r50", "ti", -0.021, -0.056, 0.014, kind="same source"),
        comparison("s_r50", "pgd", "x_v2", "pgd", -0.282, -0.341, -0.222),
        comparison("x_d121", "pgd", "x_v2", "pgd", -0.592, -0.65, -0.53),
        comparison(ENS, "pgd", "s_r50", "pgd", 0.076, 0.021, 0.13),
        comparison(T, "pgd", "s_r50", "pgd", 0.569, 0.502, 0.633),
    ]
    return pd.DataFrame(cells), pd.DataFrame(comps)


def text_of(df, comp, deployed=None):
    return summary.summary_markdown(
        df, MODELS, "synthetic", comparisons=comp, deployed=deployed or {T: "pneu"}
    )


def answer_block(text: str) -> str:
    return text.split("## The answer, per deployed target", 1)[1].split("\nModels:", 1)[0]


def test_the_summary_opens_with_the_answer(planted):
    text = text_of(*planted)
    assert text.index("## The answer") < text.index("Models:") < text.index("## Data task")
    block = answer_block(text)
    assert "Clean AUROC 0.912 [0.871, 0.948] on 300 test images of 211 patients" in block
    assert "White-box at eps 8: pgd: adversarial AUROC" in block
    assert "Regime: a demonstration, models trained from scratch" in block
    assert "not clinical results" in block


def test_overlapping_paired_ci_gives_no_ordering(planted):
    block = answer_block(text_of(*planted))
    line = next(ln for ln in block.splitlines() if ln.startswith("- surrogate"))
    # ti has the higher point estimate, but the paired CI of pgd - ti contains 0
    assert "strongest s_r50 (ti)" in line
    assert "minus s_r50 (ti): -0.021 [-0.056, 0.014], indistinguishable at this sample size" in line
    assert "fools the target more" not in line
    table = text_of(*planted).split("## Which attack transferred more (matched cells)", 1)[1]
    table = re.sub(" {2,}", " ", table)  # the padding of tabulate's columns
    row = next(ln for ln in table.splitlines() if "| pgd - ti |" in ln)
    assert row.endswith("| indistinguishable at this sample size |")
    # planted apart: the same pair with a CI that excludes 0 is ordered
    df, comp = planted
    comp.loc[0, ["fooling_rate_difference_ci_low", "fooling_rate_difference_ci_high"]] = (
        -0.04,
        -0.002,
    )
    line = next(ln for ln in answer_block(text_of(df, comp)).splitlines() if "- surrogate" in ln)
    assert "so s_r50 (ti) fools the target more than s_r50 (pgd)" in line


def test_below_noise_is_called_so_and_cells_of_opposite_direction_are_shown(planted):
    block = answer_block(text_of(*planted))
    line = next(ln for ln in block.splitlines() if ln.startswith("- cross-architecture"))
    assert "strongest x_v2 (pgd)" in line and "distinguishable from noise" in line
    # the other cell of the relation, at or below its noise control, is shown beside it
    assert "x_d121 (pgd): fooling rate above noise -0.003 [-0.021, 0.015]: at or below its " in line
    # the table per attack shows both cells' values, not their mean (0.398)
    rows = re.sub(" {2,}", " ", text_of(*planted)).splitlines()  # tabulate's padding squeezed
    xa = next(ln for ln in rows if ln.startswith("| cross-architecture |"))
    assert "0.102 to 0.994" in xa and "0.398" not in xa
    assert "| 2 / 0 / 1 |" in xa  # above / indistinguishable / at or below noise


def test_relations_and_ensembles_on_matched_cells(planted):
    block = answer_block(text_of(*planted))
    order = next(ln for ln in block.splitlines() if ln.startswith("- Relations on matched cells"))
    assert (
        "surrogate against cross-architecture: fooling rate of s_r50 (pgd) minus x_v2 (pgd)"
        in order
    )
    assert "so x_v2 (pgd) fools the target more than s_r50 (pgd)" in order
    assert order.startswith("- Relations on matched cells (pgd at eps 8): white-box against ")
    assert "0.569 [0.502, 0.633], so t_r50 (pgd) fools the target more than s_r50 (pgd)" in order
    ens = next(ln for ln in block.splitlines() if ln.startswith("- Ensemble"))
    assert f"Ensemble {ENS} against its best member s_r50" in ens
    assert "0.076 [0.021, 0.130], so " + f"{ENS} (pgd) fools the target more" in ens


def test_a_missing_relation_and_a_target_without_cells_are_said(planted):
    df, comp = planted
    text = text_of(df, comp, {T: "pneu", "other": "card"})
    assert "No cells of: cross-task" in answer_block(text)
    assert "**other** (deployed for data task card): no evaluated cells, so no claim." in text
    # no comparisons at all: said per pair, no crash and no ordering
    bare = answer_block(text_of(df, None))
    # two runners-up, white-box against surrogate, surrogate against cross-architecture, ensemble
    assert bare.count("no paired comparison") == 5
    assert "fools the target more" not in bare
    only_wb = answer_block(text_of(df[df["relation"] == "white-box"], comp))
    assert "too few cells for any claim" in only_wb


def test_every_number_is_traceable_and_no_equal_pair_is_compared(planted):
    df, comp = planted
    text = text_of(df, comp)
    known = set()
    for frame in (df, comp):
        for col in frame.columns:
            v = pd.to_numeric(frame[col], errors="coerce").dropna()
            known |= {fmt(x) for x in v}
    numbers = re.findall(r"-?\d+\.\d{3}", text)
    assert numbers and not [x for x in numbers if x not in known]
    assert " vs " not in text
    assert not re.search(r"(\d\.\d{3}) (vs|and|/) \1\b", answer_block(text))


def test_noise_verdicts():
    row = {
        "fooling_rate_above_noise": 0.02,
        "fooling_rate_above_noise_ci_low": -0.01,
        "fooling_rate_above_noise_ci_high": 0.05,
    }
    assert answer.noise_verdict(row).endswith(
        "indistinguishable at this sample size from its noise control"
    )
    row.update(
        fooling_rate_above_noise=-0.03,
        fooling_rate_above_noise_ci_high=-0.005,
        fooling_rate_above_noise_ci_low=-0.06,
    )
    assert answer.noise_verdict(row).endswith("below its noise control")
    assert answer.noise_verdict({}) == "no noise control to compare with"


def test_the_summary_page_renders_its_tables_and_headings():
    from cxrtransfer.evaluate.summary_page import summary_html

    page = summary_html("## The answer\n\n| a | b |\n|---|---|\n| 1 & 2 | 3 |\n", "S <1>")
    assert page.startswith("<!DOCTYPE html>") and "<title>S &lt;1&gt;</title>" in page
    assert "<h2>The answer</h2>" in page
    assert "<table>" in page and "<th>a</th>" in page and "<td>1 &amp; 2</td>" in page


def test_relations_are_ordered_at_the_attack_that_spans_most_of_them(planted):
    """The strongest transfer cell is a one-relation attack (a surrogate's UAP): the relations
    are still ordered on the attack whose cells span the most relations (pgd)."""
    df, comp = planted
    uap = cell("s_r50", "uap", "surrogate", 0.95, 0.6, (0.5, 0.7))
    block = answer_block(text_of(pd.concat([df, pd.DataFrame([uap])]), comp))
    order = next(ln for ln in block.splitlines() if ln.startswith("- Relations on matched cells"))
    assert order.startswith("- Relations on matched cells (pgd at eps 8): white-box against ")
    assert "too few for an ordering" not in block
