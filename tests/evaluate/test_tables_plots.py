"""Tests of cxrtransfer.evaluate.tables and summary (the plots: test_plots.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.evaluate import summary, tables
from cxrtransfer.evaluate.cells import cell_columns, compute_cell

MODELS = {
    "pneu_r50": {"task": "pneumothorax", "arch": "ResNet50"},
    "pneu_r50_s2": {"task": "pneumothorax", "arch": "ResNet50"},
    "pneu_d121": {"task": "pneumothorax", "arch": "DenseNet121"},
    "card_r50": {"task": "cardiomegaly", "arch": "ResNet50"},
}
TARGETS = ("pneu_d121", "pneu_r50", "pneu_r50_s2")
STRENGTH = {"white-box": 0.9, "surrogate": 0.6, "cross-architecture": 0.4, "cross-task": 0.1}


def _relation(s: str, t: str) -> str:
    """Relations of the fake models (disjoint training data assumed)."""
    if s == t:
        return "white-box"
    if MODELS[s]["task"] != "pneumothorax":
        return "cross-task"
    return "surrogate" if MODELS[s]["arch"] == MODELS[t]["arch"] else "cross-architecture"


def fake_cells(eps_list=(2, 8), attacks=("pgd",), swap_wb=False):
    """Cell dicts with every compute_cell key; values follow a known formula."""
    cells = []
    for attack in attacks:
        for eps in eps_list:
            for s in MODELS:
                for t in TARGETS:
                    rel = _relation(s, t)
                    st = STRENGTH[rel] * eps / 8
                    if swap_wb and rel in ("white-box", "surrogate"):
                        st = STRENGTH["surrogate" if rel == "white-box" else "white-box"] * eps / 8
                    c = {k: 0.5 for k in cell_columns()}
                    c.update(
                        notes="",
                        transfer_rate=st,
                        fooling_rate=st * 0.8,
                        clean_auroc=0.9,
                        adv_auroc=0.9 * (1 - st),
                        adv_auroc_ci_low=0.9 * (1 - st) - 0.05,
                        adv_auroc_ci_high=min(0.9 * (1 - st) + 0.05, 1.0),
                        source=s,
                        target=t,
                        data_task="pneumothorax",
                        attack=attack,
                        eps=eps,
                        relation=rel,
                    )
                    cells.append(c)
    return cells


@pytest.fixture(scope="module")
def table():
    return tables.long_table(fake_cells())


# ----------------------------------------------------------------------------------------------
# long_table, matrices, write_matrix
# ----------------------------------------------------------------------------------------------


def test_long_table_columns_and_rows(table):
    cols = list(table.columns)
    assert cols[:6] == list(tables.ID_COLUMNS)
    assert cols[6:9] == ["clean_auroc", "clean_auroc_ci_low", "clean_auroc_ci_high"]
    assert cols[-1] == "notes"
    assert len(table) == 2 * len(MODELS) * len(TARGETS)
    # Input order does not matter: rows are sorted.
    rev = tables.long_table(list(reversed(fake_cells())))
    pd.testing.assert_frame_equal(rev, table)
    assert list(table["eps"].iloc[:3]) == [2, 2, 2]


def test_long_table_with_real_cells_and_errors():
    rng = np.random.default_rng(0)
    n = 40
    y = rng.integers(0, 2, n)
    idx = [str(i) for i in range(n)]
    clean = pd.DataFrame(
        {"image_index": idx, "patient_id": np.arange(n) // 2, "label": y, "prob": rng.random(n)}
    )
    adv = clean.assign(
        prob=rng.random(n), source_clean_prob=0.5, source_adv_prob=rng.random(n), l2=1.0, linf=0.01
    )
    c = compute_cell(clean, adv, 0.5, 0.5, n_boot=20)
    c.update(source="a", target="b", data_task="t", attack="pgd", eps=4, relation="surrogate")
    df = tables.long_table([c])
    assert list(df.columns) == list(tables.ID_COLUMNS) + cell_columns()
    with pytest.raises(WorkflowError, match="duplicate"):
        tables.long_table([c, c])
    bad = dict(c)
    del bad["relation"]
    with pytest.raises(WorkflowError, match="relation"):
        tables.long_table([bad])
    with pytest.raises(WorkflowError, match="empty"):
        tables.long_table([])


def test_matrices_shape_and_values(table):
    mats = tables.matrices(table, "transfer_rate")
    assert sorted(mats) == [("pneumothorax", "pgd", 2), ("pneumothorax", "pgd", 8)]
    m = mats[("pneumothorax", "pgd", 8)]
    assert m.shape == (len(MODELS), len(TARGETS))
    assert list(m.index) == sorted(MODELS) and list(m.columns) == sorted(TARGETS)
    assert m.loc["pneu_r50", "pneu_r50"] == pytest.approx(STRENGTH["white-box"])
    assert m.loc["pneu_r50_s2", "pneu_r50"] == pytest.approx(STRENGTH["surrogate"])
    assert m.loc["pneu_d121", "pneu_r50"] == pytest.approx(STRENGTH["cross-architecture"])
    assert m.loc["card_r50", "pneu_d121"] == pytest.approx(STRENGTH["cross-task"])
    m2 = tables.matrices(table, "adv_auroc")[("pneumothorax", "pgd", 2)]
    assert m2.loc["pneu_r50", "pneu_r50"] == pytest.approx(0.9 * (1 - 0.9 * 2 / 8))
    # A missing (source, target) combination is NaN.
    part = table[~((table["source"] == "card_r50") & (table["target"] == "pneu_r50"))]
    m3 = tables.matrices(part, "transfer_rate")[("pneumothorax", "pgd", 8)]
    assert math.isnan(m3.loc["card_r50", "pneu_r50"]) and m3.shape == m.shape
    with pytest.raises(WorkflowError, match="no_such"):
        tables.matrices(table, "no_such")


def test_write_matrix_round_trip(table, tmp_path):
    m = tables.matrices(table, "transfer_rate")[("pneumothorax", "pgd", 8)].copy()
    m.loc["card_r50", "pneu_r50"] = np.nan
    m.loc["pneu_d121", "pneu_d121"] = 1 / 3
    paths = tables.write_matrix(m, tmp_path / "sub" / "transfer_pgd_8")
    assert [p.name for p in paths] == [f"transfer_pgd_8.{e}" for e in ("csv", "md", "tex")]
    back = pd.read_csv(paths[0], index_col=0)
    assert list(back.index) == list(m.index) and list(back.columns) == list(m.columns)
    np.testing.assert_array_equal(back.to_numpy(), m.to_numpy())  # exact, NaN where NaN

    md = paths[1].read_text().splitlines()
    assert re.match(r"\| source \\ target +\|", md[0])
    assert re.fullmatch(r"\|:-+(\|-+:){3}\|", md[1])  # labels left-, numbers right-aligned
    cells = {r.split("|")[1].strip(): [x.strip() for x in r.split("|")[2:-1]] for r in md[2:]}
    header = [x.strip() for x in md[0].split("|")[2:-1]]
    assert cells["card_r50"][header.index("pneu_r50")] == "n/a"
    assert cells["pneu_d121"][header.index("pneu_d121")] == "0.333"
    for name, vals in cells.items():
        for col, v in zip(header, vals, strict=True):
            if v != "n/a":
                assert float(v) == pytest.approx(m.loc[name, col], abs=5e-4)

    tex = paths[2].read_text()
    assert tex.startswith("\\begin{tabular}{lrrr}") and tex.rstrip().endswith("\\end{tabular}")
    assert "pneu\\_d121 & 0.333 &" in tex and "n/a" in tex
    assert "pneu_r50" not in tex  # underscores escaped
    assert len([ln for ln in tex.splitlines() if ln.endswith("\\\\")]) == 1 + len(m)
    assert tex.count("\\hline") == 3 and "rule" not in tex  # no booktabs package needed


def test_tables_escape_what_markdown_and_latex_would_read():
    m = pd.DataFrame(
        [[0.5, np.nan]],
        index=pd.Index(["a|b~c%"], name="source"),
        columns=pd.Index(["x_1", "y&z"], name="target"),
    )
    md = tables.matrix_markdown(m).splitlines()
    assert md[2].split() == ["|", "a\\|b~c%", "|", "0.500", "|", "n/a", "|"]  # `|` escaped
    tex = tables.matrix_latex(m)
    assert "a|b\\textasciitilde c\\% & 0.500 & n/a \\\\\n" in tex
    assert "x\\_1 & y\\&z \\\\" in tex and "source \\textbackslash " in tex
    # text cells stay as written: "8" and "0.100" are not re-formatted as numbers
    lines = tables.markdown_table(["eps", "rate"], [["8", "0.100"], ["2", "n/a"]], "rr")
    assert lines[1] == "|------:|-------:|" and lines[2].split() == ["|", "8", "|", "0.100", "|"]
    with pytest.raises(ValueError, match="ragged"):
        tables.markdown_table(["a", "b"], [["1"]], "ll")


# ----------------------------------------------------------------------------------------------
# summary_markdown
# ----------------------------------------------------------------------------------------------


def _squeezed(text: str) -> str:
    """A summary with its tables' padding (tabulate's column widths) squeezed to one space."""
    return re.sub(" {2,}", " ", text)


def test_summary_tables_show_ranges_over_cells_not_means(table):
    text = _squeezed(summary.summary_markdown(table, MODELS, "synthetic"))
    assert "NOT clinical results" in text and "demonstration" in text
    assert "## Data task pneumothorax, attack pgd, eps 8\n" in text
    assert "ordering holds" not in text and "mean" not in text.split("## Data task", 1)[1]
    eps8 = text.split("## Data task pneumothorax, attack pgd, eps 8\n", 1)[1].split("##", 1)[0]
    row = next(ln for ln in eps8.splitlines() if ln.startswith("| cross-task |"))
    assert row.split("|")[2].strip() == "3"  # card_r50 x 3 targets
    # cells of one relation that differ are shown as their lowest and highest value
    df = table.copy()
    xa = (df["relation"] == "cross-architecture") & (df["eps"] == 8)
    df.loc[xa, "fooling_rate"] = np.linspace(0.1, 0.7, int(xa.sum()))
    row = next(
        ln
        for ln in _squeezed(summary.summary_markdown(df, MODELS, "kaggle"))
        .split("eps 8\n", 1)[1]
        .splitlines()
        if ln.startswith("| cross-architecture |")
    )
    assert row.split("|")[4].strip() == "0.100 to 0.700"


def test_an_ensemble_is_never_pooled_and_is_shown_beside_its_members(table):
    df = table.copy()
    members = ["pneu_r50_s2", "pneu_d121"]
    ens = df[(df["source"] == "pneu_r50_s2") & (df["eps"] == 8)].copy()
    ens["source"] = "+".join(members)
    ens["relation"] = "ensemble incl. a surrogate of the target"
    ens["member_relations"] = [
        f"pneu_r50_s2: {_relation('pneu_r50_s2', t)}; pneu_d121: {_relation('pneu_d121', t)}"
        for t in ens["target"]
    ]
    ens["fooling_rate"] = 0.123
    df = pd.concat([df.assign(member_relations=""), ens], ignore_index=True)
    text = _squeezed(summary.summary_markdown(df, MODELS, "synthetic"))
    eps8 = text.split("## Data task pneumothorax, attack pgd, eps 8\n", 1)[1].split("##", 1)[0]
    xa = next(ln for ln in eps8.splitlines() if ln.startswith("| cross-architecture |"))
    assert xa.split("|")[2].strip() == "4"  # the single-model cells only, no ensemble cell
    assert "| ensemble incl. a surrogate of the target | 3 |" in eps8
    block = text.split("## Ensembles beside their members", 1)[1].split("\n## ", 1)[0]
    row = next(ln for ln in block.splitlines() if "| pneu_r50 | **pneu_r50_s2+pneu_d121**" in ln)
    assert "| 0.123 [" in row
    member = next(
        ln
        for ln in block.splitlines()
        if "| pneu_r50 | member pneu_d121 (cross-architecture)" in ln
    )
    own = df[(df["source"] == "pneu_d121") & (df["target"] == "pneu_r50") & (df["eps"] == 8)]
    assert f"| {own['fooling_rate'].iloc[0]:.3f} [" in member
