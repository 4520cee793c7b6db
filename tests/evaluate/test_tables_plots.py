"""Tests of cxrtransfer.evaluate.tables and cxrtransfer.evaluate.plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.evaluate import examples, plots, summary, tables
from cxrtransfer.evaluate.cells import cell_columns, compute_cell
from PIL import Image
from sklearn.metrics import roc_auc_score

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
    assert md[0].startswith("| source \\ target |") and md[1].startswith("| --- |")
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


# ----------------------------------------------------------------------------------------------
# summary_markdown
# ----------------------------------------------------------------------------------------------


def test_summary_expected_ordering_synthetic(table):
    text = summary.summary_markdown(table, MODELS, "synthetic")
    assert "NOT clinical results" in text and "demonstration" in text
    assert "## Data task pneumothorax, attack pgd, eps 8\n" in text
    assert "As expected, the white-box attack is strongest" in text
    assert "Overall the expected ordering holds." in text
    assert "Unexpectedly" not in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| cross-task |"))
    assert row.split("|")[2].strip() == "3"  # card_r50 x 3 targets


def test_summary_reports_violated_ordering():
    df = tables.long_table(fake_cells(swap_wb=True))
    text = summary.summary_markdown(df, MODELS, "kaggle")
    assert "NOT clinical" not in text and "Kaggle" in text
    assert "the white-box attack is NOT the strongest" in text
    assert "Overall the expected ordering holds." not in text


def test_summary_reports_transfer_inversion(table):
    df = table.copy()
    xt = df["relation"] == "cross-task"
    df.loc[xt, "adv_auroc"] = 0.2  # cross-task suddenly stronger than the surrogates
    text = summary.summary_markdown(df, MODELS, "synthetic")
    assert "does not hold" in text and "cross-task (0.200) is stronger than surrogate" in text


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
    text = summary.summary_markdown(df, MODELS, "synthetic")
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
    # the single-model ordering sentence does not rank the ensemble
    assert "ensemble incl." not in eps8.split("|\n\n", 1)[-1]


# ----------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------


def _png(path):
    assert path.exists() and path.stat().st_size > 5_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture
def saved(monkeypatch):
    """The figures the plot functions save (in order), captured before they are written."""
    figs = []
    for module in (plots, examples):
        real = module._save
        monkeypatch.setattr(
            module, "_save", lambda fig, out, real=real: (figs.append(fig), real(fig, out))
        )
    return figs


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_plot_transfer_heatmap(tmp_path, saved):
    df = tables.long_table(fake_cells(eps_list=(1, 2, 4, 8)))
    df.loc[(df["source"] == "card_r50") & (df["target"] == "pneu_r50"), "transfer_rate"] = np.nan
    one = tables.long_table(fake_cells(eps_list=(4,)))
    plots.plot_transfer_heatmap(df, "pneumothorax", "pgd", tmp_path / "h4.png")
    plots.plot_transfer_heatmap(one, "pneumothorax", "pgd", tmp_path / "h1.png")
    w4, h4 = _png(tmp_path / "h4.png")
    w1, h1 = _png(tmp_path / "h1.png")
    assert w4 > 2.5 * w1 and h4 > 250 and w1 > 300
    fig = saved[0]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["ε = 1", "ε = 2", "ε = 4", "ε = 8"]
    assert fig._suptitle.get_text() == "Transfer rate: data task pneumothorax, attack pgd"
    sources, targets = sorted(MODELS), sorted(TARGETS)
    for j, ax in enumerate(panels):
        assert ax.get_xlabel() == "target model (evaluated on)"
        assert [lab.get_text() for lab in ax.get_xticklabels()] == targets
        if j == 0:
            assert ax.get_ylabel() == "source model (attack crafted on)"
            assert [lab.get_text() for lab in ax.get_yticklabels()] == sources
    # the eps 8 panel: every cell shows its table value and its relation's abbreviation
    texts = _texts(panels[3])
    abbrev = {"white-box": "WB", "surrogate": "S", "cross-architecture": "XA", "cross-task": "XT"}
    for s in sources:
        for t in targets:
            v = STRENGTH[_relation(s, t)]
            txt = "n/a" if (s, t) == ("card_r50", "pneu_r50") else f"{v:.2f}"
            assert f"{txt}\n{abbrev[_relation(s, t)]}" in texts, (s, t)
    # one colour bar, labelled with the value
    assert sum(ax.get_ylabel() == "transfer rate" for ax in fig.axes) == 1
    assert len([ax for ax in saved[1].axes if ax.get_title()]) == 1
    with pytest.raises(WorkflowError, match="no rows"):
        plots.plot_transfer_heatmap(df, "pneumothorax", "fgsm", tmp_path / "x.png")


def test_plot_auroc_vs_eps(tmp_path, table, saved):
    out = tmp_path / "auroc.png"
    plots.plot_auroc_vs_eps(table, "pneumothorax", "pgd", "pneu_r50", out)
    w, h = _png(out)
    assert 500 < w < 2000 and 300 < h < 1200
    (ax,) = saved[0].axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    # sources ordered by relation: white-box, surrogate, cross-architecture, cross-task
    assert legend == [
        "pneu_r50 (white-box)",
        "pneu_r50_s2 (surrogate)",
        "pneu_d121 (cross-architecture)",
        "card_r50 (cross-task)",
        "clean AUROC (0.900)",
        "chance (0.5)",
    ]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for src in ("pneu_r50", "pneu_d121", "card_r50"):
        rows = table[(table["source"] == src) & (table["target"] == "pneu_r50")].sort_values("eps")
        line = lines[f"{src} ({_relation(src, 'pneu_r50')})"]
        assert list(line.get_xdata()) == [2.0, 8.0]
        np.testing.assert_allclose(line.get_ydata(), rows["adv_auroc"].to_numpy(float))
    assert [lab.get_text() for lab in ax.get_xticklabels()] == ["2", "8"]
    assert ax.get_ylabel() == "adversarial AUROC of target"
    assert "bands = 50% bootstrap CI" in ax.get_title()  # the table's ci_level (0.5 here)
    assert len(ax.collections) == 4  # one CI band per source


def test_plot_roc(tmp_path, saved):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    clean = pd.DataFrame({"label": y, "prob": np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)})
    adv = clean.assign(prob=rng.random(200))
    plots.plot_roc(clean, adv, "ROC of target", tmp_path / "roc.png")
    w, h = _png(tmp_path / "roc.png")
    assert 300 < w < 1500 and 300 < h < 1500
    (ax,) = saved[0].axes
    auc_clean = roc_auc_score(clean["label"], clean["prob"])
    auc_adv = roc_auc_score(adv["label"], adv["prob"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        f"clean (AUC = {auc_clean:.3f})",
        f"adversarial (AUC = {auc_adv:.3f})",
        "chance",
    ]
    assert ax.get_title() == "ROC of target" and not ax.texts
    # A single class must not crash: the figure says why there is no curve.
    plots.plot_roc(clean.assign(label=0), adv.assign(label=0), "one class", tmp_path / "r1.png")
    _png(tmp_path / "r1.png")
    (ax,) = saved[1].axes
    assert _texts(ax) == [
        "clean: ROC undefined (only class 0)",
        "adversarial: ROC undefined (only class 0)",
    ]
    assert [ln.get_label() for ln in ax.get_lines()] == ["chance"]


def test_select_examples_picks_flipped_and_most_perturbed():
    #              0     1     2     3     4     5     6     7
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    clean = np.array([0.1, 0.2, 0.3, 0.6, 0.9, 0.8, 0.7, 0.4])
    adv = np.array([0.9, 0.55, 0.4, 0.9, 0.1, 0.45, 0.8, 0.1])
    l2 = np.array([1.0, 5.0, 9.0, 2.0, 1.0, 3.0, 8.0, 9.5])
    # class 0: flipped = 0 (+0.8), 1 (+0.35); 3 was wrong when clean. largest l2 = 2.
    # class 1: flipped = 4 (-0.8), 5 (-0.35); 7 was wrong when clean. largest l2 = 7, then 6.
    assert examples.select_examples(labels, clean, adv, l2, 2) == [0, 2, 4, 7]
    assert examples.select_examples(labels, clean, adv, l2, 3) == [0, 2, 1, 4, 7, 5]
    assert examples.select_examples(labels, clean, adv, l2, 1) == [0, 4]
    # No duplicates: the most flipped image is also the most perturbed one.
    l2b = np.array([9.0, 1.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0])
    sel = examples.select_examples(labels, clean, adv, l2b, 2)
    assert sel == [0, 1, 4, 5] and len(set(sel)) == len(sel)
    # More requested than available: every image of each class, once.
    assert sorted(examples.select_examples(labels, clean, adv, l2, 10)) == list(range(8))
    with pytest.raises(WorkflowError, match="differ in length"):
        examples.select_examples(labels, clean, adv[:3], l2, 1)


def test_plot_examples(tmp_path, saved):
    rng = np.random.default_rng(1)
    clean = (rng.random((3, 48, 48, 1)) * 255).astype(np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-4, 5, clean.shape), 0, 255).astype(np.uint8)
    args = (clean, adv, [0, 1, 1], [0.2, 0.8, 0.6], [0.7, 0.3, 0.5], ["a.png", "b.png", "c.png"])
    examples.plot_examples(*args, "Examples", tmp_path / "ex.png")
    examples.plot_examples(*args, "Examples", tmp_path / "ex2.png", amplify=10, threshold=0.5)
    w, h = _png(tmp_path / "ex.png")
    assert h > 600 and w > 500  # three rows, three columns
    fig = saved[1]  # amplify 10, threshold 0.5
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 9 and fig._suptitle.get_text() == "Examples"
    titles = [ax.get_title() for ax in panels]
    assert titles[0:2] == ["clean: p = 0.200 → pred 0", "adversarial: p = 0.700 → pred 1"]
    assert titles[3:5] == ["clean: p = 0.800 → pred 1", "adversarial: p = 0.300 → pred 0"]
    delta = adv[..., 0].astype(int) - clean[..., 0].astype(int)
    for i in range(3):
        linf = int(np.abs(delta[i]).max())
        assert titles[3 * i + 2] == f"perturbation ×10 (L∞ {linf}/255)"
        np.testing.assert_array_equal(panels[3 * i + 1].images[0].get_array(), adv[i, ..., 0])
        np.testing.assert_array_equal(panels[3 * i + 2].images[0].get_array(), delta[i])
        assert panels[3 * i + 2].images[0].get_clim() == (-25.5, 25.5)
    assert [ax.get_ylabel() for ax in panels[::3]] == [
        "a.png\nlabel 0",
        "b.png\nlabel 1",
        "c.png\nlabel 1",
    ]
    # without amplify the largest perturbation fills the colour range
    top = float(np.abs(delta).max())
    assert saved[0].axes[2].images[0].get_clim() == (-top, top)


def test_aligned_cell_matches_by_image_index_not_position():
    names = np.array(["a.png", "b.png", "c.png"])
    clean_imgs = {
        "images": np.stack([np.full((2, 2), i, np.uint8) for i in (1, 2, 3)]),
        "image_index": names,
    }
    # the attack cache and the prediction tables in other orders than the clean shard
    adv_imgs = {
        "images": np.stack([np.full((2, 2), i, np.uint8) for i in (30, 10, 20)]),
        "image_index": names[[2, 0, 1]],
    }
    clean = pd.DataFrame(
        {"image_index": names[[1, 2, 0]], "label": [0, 1, 1], "prob": [0.2, 0.3, 0.1]}
    )
    adv = pd.DataFrame(
        {
            "image_index": names[[0, 1, 2]],
            "label": [1, 0, 1],
            "prob": [0.9, 0.8, 0.7],
            "l2": [1.0, 2.0, 3.0],
        }
    )
    cell = examples.aligned_cell(clean, adv, clean_imgs, adv_imgs)
    assert list(cell["image_index"]) == ["c.png", "a.png", "b.png"]
    assert list(cell["clean_prob"]) == [0.3, 0.1, 0.2] and list(cell["adv_prob"]) == [0.7, 0.9, 0.8]
    assert [int(x[0, 0]) for x in cell["clean_u8"]] == [3, 1, 2]
    assert [int(x[0, 0]) for x in cell["adv_u8"]] == [30, 10, 20]
    with pytest.raises(WorkflowError, match="lack a clean image or a prediction"):
        examples.aligned_cell(clean.iloc[:2], adv, clean_imgs, adv_imgs)
