"""Tests of cxrtransfer.evaluate.plots, examples, figures and style: what each figure shows,
asserted on the figure objects captured before saving (panel titles, tick labels, cell texts,
lines and CI bands, legends, layout), and the files written (PNG resolution, PDF text)."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.evaluate import examples, headline, plots, style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.layout_engine import ConstrainedLayoutEngine
from PIL import Image
from sklearn.metrics import roc_auc_score

# A planted study: at eps 2 only the white-box source, at eps 8 four sources (one per relation)
RELATION = {
    ("tgt", "tgt"): "white-box",
    ("tgt", "sur"): "surrogate",
    ("sur", "tgt"): "surrogate",
    ("sur", "sur"): "white-box",
    ("xa", "tgt"): "cross-architecture",
    ("xa", "sur"): "cross-architecture",
    ("xt", "tgt"): "cross-task",
    ("xt", "sur"): "cross-task",
}
SOURCES = {2: ["tgt"], 8: ["sur", "tgt", "xa", "xt"]}
TARGETS = ["sur", "tgt"]
CLEAN = {"tgt": (0.9, 0.85, 0.94), "sur": (0.88, 0.82, 0.93)}


def planted_table() -> pd.DataFrame:
    """One row per cell; transfer rate and adversarial AUROC follow the source's index and the
    eps, with CIs of known width (transfer rate -0.04/+0.06, adversarial AUROC +-0.05)."""
    rows = []
    for eps, sources in SOURCES.items():
        for i, s in enumerate(sources):
            for t in TARGETS:
                rate = round(0.1 * (i + 1) * eps / 8, 4)
                adv = round(CLEAN[t][0] - 0.08 * eps / (i + 1), 4)
                rows.append(
                    {
                        "data_task": "pneumothorax",
                        "attack": "pgd",
                        "eps": eps,
                        "source": s,
                        "target": t,
                        "relation": RELATION[(s, t)],
                        "clean_auroc": CLEAN[t][0],
                        "clean_auroc_ci_low": CLEAN[t][1],
                        "clean_auroc_ci_high": CLEAN[t][2],
                        "adv_auroc": adv,
                        "adv_auroc_ci_low": adv - 0.05,
                        "adv_auroc_ci_high": adv + 0.05,
                        "transfer_rate": rate,
                        "transfer_rate_ci_low": rate - 0.04,
                        "transfer_rate_ci_high": rate + 0.06,
                        "ci_level": 0.95,
                    }
                )
    return pd.DataFrame(rows)


@pytest.fixture
def saved(monkeypatch):
    """The figures the plot functions save (in order), captured before they are written."""
    figs = []
    for module in (plots, examples, headline):
        real = module._save
        monkeypatch.setattr(
            module, "_save", lambda fig, *outs, real=real: (figs.append(fig), real(fig, *outs))
        )
    return figs


def _written(png, pdf) -> None:
    """The PNG has >= 150 dpi; the PDF keeps its text as TrueType text (no Type 3 glyphs)."""
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert min(im.info["dpi"]) >= 150 - 0.5
    raw = pdf.read_bytes()
    assert raw.startswith(b"%PDF") and b"/CIDFontType2" in raw and b"/Type3" not in raw


def _pdf_text(pdf) -> str:
    """The text of a matplotlib PDF: the strings of its text operators (Type 42 fonts write
    UTF-16 code units), one text object per line."""
    raw = pdf.read_bytes()
    out = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", raw, re.S):
        try:
            body = zlib.decompress(stream)
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", body, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block, re.S)
            text = b"".join(re.sub(rb"\\(.)", rb"\1", p, flags=re.S) for p in parts)
            out.append(text.decode("utf-16-be", errors="replace"))
    return "\n".join(out)


def _ticks(labels) -> list[str]:
    return [lab.get_text() for lab in labels]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _no_text_overlaps(fig, texts) -> None:
    canvas = FigureCanvasAgg(fig)  # the saved figure was closed: draw it again
    canvas.draw()
    r = canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(r)) for t in texts if t.get_text()]
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1 :]:
            assert not _overlap(a, b), (ta, tb)


# ----------------------------------------------------------------------------------------------
# Heatmap
# ----------------------------------------------------------------------------------------------


def test_heatmap_every_panel_labels_its_own_rows_and_shows_cis(tmp_path, saved):
    df = planted_table()
    na = (df["source"] == "xt") & (df["target"] == "tgt")
    df.loc[na, ["transfer_rate", "transfer_rate_ci_low", "transfer_rate_ci_high"]] = np.nan
    png, pdf = tmp_path / "h.png", tmp_path / "h.pdf"
    plots.plot_transfer_heatmap(df, "pneumothorax", "pgd", png, pdf)
    fig = saved[0]
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("ε")]
    assert [ax.get_title() for ax in panels] == ["ε = 2/255 (1 source)", "ε = 8/255 (4 sources)"]
    assert fig._suptitle.get_text() == "Transfer rate: data task pneumothorax, attack pgd"
    for ax, eps in zip(panels, (2, 8), strict=True):
        assert _ticks(ax.get_yticklabels()) == SOURCES[eps]  # each panel its own sources
        assert _ticks(ax.get_xticklabels()) == TARGETS
        assert ax.get_ylabel() == "source model (attack crafted on)"
        assert ax.get_xlabel() == "target model (evaluated on)"
        assert ax.collections[0].get_cmap().name == style.SEQUENTIAL_CMAP
    abbrev = {"white-box": "WB", "surrogate": "S", "cross-architecture": "XA", "cross-task": "XT"}
    texts = [t.get_text() for t in panels[1].texts]
    for row in df[df["eps"] == 8].itertuples():
        if (row.source, row.target) == ("xt", "tgt"):
            want = "n/a\nXT"
        else:
            lo, hi = row.transfer_rate_ci_low, row.transfer_rate_ci_high
            want = f"{row.transfer_rate:.2f}\n[{lo:.2f}, {hi:.2f}]\n{abbrev[row.relation]}"
        assert want in texts, (row.source, row.target)
    assert len(texts) == len(SOURCES[8]) * len(TARGETS)
    assert sum(ax.get_ylabel() == "transfer rate" for ax in fig.axes) == 1  # one colour bar
    legend = fig._supxlabel.get_text()
    assert "95% patient-bootstrap CI" in legend and "XA cross-architecture" in legend
    assert "ND " not in legend  # only the relations the table has
    _no_text_overlaps(
        fig,
        [fig._suptitle, fig._supxlabel]
        + [ax.title for ax in panels]
        + [lab for ax in panels for lab in ax.get_yticklabels() + ax.get_xticklabels()]
        + [ax.yaxis.label for ax in panels],
    )
    _written(png, pdf)
    text = _pdf_text(pdf)
    assert "Transfer rate: data task pneumothorax, attack pgd" in text and "8/255" in text
    with pytest.raises(WorkflowError, match="no rows"):
        plots.plot_transfer_heatmap(df, "pneumothorax", "fgsm", tmp_path / "x.png")


def test_heatmap_writes_l2_budgets_as_l2(tmp_path, saved):
    plots.plot_transfer_heatmap(
        planted_table(), "pneumothorax", "pgd", tmp_path / "h.png", norm="l2"
    )
    titles = [ax.get_title() for ax in saved[0].axes if ax.get_title()]
    assert titles == ["ε = 2 (L2) (1 source)", "ε = 8 (L2) (4 sources)"]


# ----------------------------------------------------------------------------------------------
# AUROC against eps
# ----------------------------------------------------------------------------------------------


def test_auroc_vs_eps_lines_and_bands_for_every_source(tmp_path, saved):
    df = planted_table()
    png, pdf = tmp_path / "a.png", tmp_path / "a.pdf"
    plots.plot_auroc_vs_eps(df, "pneumothorax", "pgd", "tgt", png, pdf)
    fig = saved[0]
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    (ax,) = fig.axes
    order = ["tgt", "sur", "xa", "xt"]  # white-box, surrogate, cross-architecture, cross-task
    labels = [f"{s} ({RELATION[(s, 'tgt')]})" for s in order]
    (legend,) = fig.legends
    assert _ticks(legend.get_texts()) == [*labels, "clean AUROC (0.900)", "chance (0.5)"]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(ax.get_lines()) == len(order) + 2
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == len(order)  # one CI band per source, transfer sources included
    clean, lo, hi = CLEAN["tgt"]
    for k, (src, label) in enumerate(zip(order, labels, strict=True)):
        rows = df[(df["source"] == src) & (df["target"] == "tgt")].sort_values("eps")
        line = lines[label]
        # every line starts at eps 0 from the clean AUROC (no perturbation)
        assert list(line.get_xdata()) == [0.0, *rows["eps"].astype(float)]
        np.testing.assert_allclose(line.get_ydata(), [clean, *rows["adv_auroc"]])
        assert line.get_color() == style.PALETTE[k]
        ys = bands[k].get_paths()[0].vertices[:, 1]
        assert min(ys) == pytest.approx(min(lo, rows["adv_auroc_ci_low"].min()))
        assert max(ys) == pytest.approx(max(hi, rows["adv_auroc_ci_high"].max()))
    assert lines[labels[3]].get_linestyle() == "-."  # cross-task dash-dotted
    assert _ticks(ax.get_xticklabels()) == ["0", "2/255", "8/255"]
    assert ax.get_ylabel() == "adversarial AUROC of the target"
    assert "bands = 95% patient-bootstrap CI" in ax.get_title()
    _written(png, pdf)
    assert "Target tgt: adversarial AUROC vs ε" in _pdf_text(pdf)


# ----------------------------------------------------------------------------------------------
# ROC
# ----------------------------------------------------------------------------------------------


def test_plot_roc(tmp_path, saved):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    clean = pd.DataFrame({"label": y, "prob": np.clip(0.3 * y + rng.random(200) * 0.7, 0, 1)})
    adv = clean.assign(prob=rng.random(200))
    png, pdf = tmp_path / "roc.png", tmp_path / "roc.pdf"
    plots.plot_roc(clean, adv, "ROC of target", png, pdf)
    ((ax,),) = [saved[0].axes]
    auc_clean = roc_auc_score(clean["label"], clean["prob"])
    auc_adv = roc_auc_score(adv["label"], adv["prob"])
    assert _ticks(ax.get_legend().get_texts()) == [
        f"clean (AUC = {auc_clean:.3f})",
        f"adversarial (AUC = {auc_adv:.3f})",
        "chance",
    ]
    colours = [ln.get_color() for ln in ax.get_lines()[:2]]
    assert colours == [style.CLEAN_COLOUR, style.ADV_COLOUR]
    assert ax.get_title() == "ROC of target" and not ax.texts
    _written(png, pdf)
    assert "ROC of target" in _pdf_text(pdf)
    # A single class must not crash: the figure says why there is no curve.
    plots.plot_roc(clean.assign(label=0), adv.assign(label=0), "one class", tmp_path / "r1.png")
    (ax,) = saved[1].axes
    assert [t.get_text() for t in ax.texts] == [
        "clean: ROC undefined (only class 0)",
        "adversarial: ROC undefined (only class 0)",
    ]
    assert [ln.get_label() for ln in ax.get_lines()] == ["chance"]
    with pytest.raises(WorkflowError, match="need columns label and prob"):
        plots.plot_roc(clean.drop(columns="prob"), adv, "x", tmp_path / "r2.png")


# ----------------------------------------------------------------------------------------------
# Example images
# ----------------------------------------------------------------------------------------------


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
    png, pdf = tmp_path / "ex2.png", tmp_path / "ex2.pdf"
    examples.plot_examples(*args, "Examples", png, amplify=10, threshold=0.5, out_pdf=pdf)
    fig = saved[1]  # amplify 10, threshold 0.5
    assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 9
    # the title states the columns, the amplification and the colour scale
    assert fig._suptitle.get_text() == (
        "Examples\ncolumns: clean | adversarial | difference (adversarial − clean) ×10, "
        "colour scale ±25.5/255"
    )
    titles = [ax.get_title() for ax in panels]
    assert titles[0:2] == ["clean: p = 0.200 → pred 0", "adversarial: p = 0.700 → pred 1"]
    assert titles[3:5] == ["clean: p = 0.800 → pred 1", "adversarial: p = 0.300 → pred 0"]
    delta = adv[..., 0].astype(int) - clean[..., 0].astype(int)
    for i in range(3):
        linf = int(np.abs(delta[i]).max())
        assert titles[3 * i + 2] == f"difference ×10 (L∞ {linf}/255)"
        np.testing.assert_array_equal(panels[3 * i].images[0].get_array(), clean[i, ..., 0])
        np.testing.assert_array_equal(panels[3 * i + 1].images[0].get_array(), adv[i, ..., 0])
        np.testing.assert_array_equal(panels[3 * i + 2].images[0].get_array(), delta[i])
        assert panels[3 * i + 2].images[0].get_clim() == (-25.5, 25.5)
        assert panels[3 * i + 2].images[0].get_cmap().name == style.DIVERGING_CMAP
    assert [ax.get_ylabel() for ax in panels[::3]] == [
        "a.png\nlabel 0",
        "b.png\nlabel 1",
        "c.png\nlabel 1",
    ]
    (bar,) = [ax for ax in fig.axes if ax.get_ylabel().startswith("adversarial − clean")]
    assert "±25.5 = full colour" in bar.get_ylabel()
    _no_text_overlaps(fig, [fig._suptitle] + [ax.title for ax in panels])
    _written(png, pdf)
    assert "clean: p = 0.200" in _pdf_text(pdf)
    # without amplify the largest perturbation fills the colour range
    top = float(np.abs(delta).max())
    assert saved[0].axes[2].images[0].get_clim() == (-top, top)


def test_plot_examples_box_footnote_and_legend(tmp_path, saved):
    img = np.full((2, 32, 32), 100, np.uint8)
    adv = img.copy()
    adv[:, 4:8, 4:8] += 3
    drawn = examples.plot_examples(
        img,
        adv,
        [1, 0],
        [0.9, 0.2],
        [0.1, 0.6],
        ["a.png", "b.png"],
        "Boxes",
        tmp_path / "b.png",
        boxes=[(4, 4, 4, 4), None],
        box_finding="Pneumothorax",
        energy=[1.0, None],
        set_boxed=(5, 40),
    )
    fig = saved[0]
    assert len(drawn) == 3  # the box on the three panels of the first row
    assert fig.axes[2].get_title().endswith("\nenergy in box 100%")
    assert "1 of 2 example image(s) have one" in fig._supxlabel.get_text()
    assert "5 of the set's 40 images have one" in fig._supxlabel.get_text()
    assert "Dashed box (orange on the images, green on the difference): the Pneumothorax box" in (
        fig._supxlabel.get_text()
    )
    colours = [r.get_edgecolor() for r in drawn]
    assert colours[0] == colours[1] != colours[2]
    _no_text_overlaps(fig, [fig._suptitle, fig._supxlabel] + [ax.title for ax in fig.axes])


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


# ----------------------------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------------------------


def test_one_style_for_every_figure():
    assert len(set(style.PALETTE)) == len(style.PALETTE) == 8  # Okabe-Ito
    assert style.colours(10)[8:] == list(style.PALETTE[:2])
    assert style.RC["pdf.fonttype"] == 42 and style.DPI >= 150


# ----------------------------------------------------------------------------------------------
# The headline figure
# ----------------------------------------------------------------------------------------------

HEADLINE_SOURCES = {2: ["tgt"], 8: ["tgt", "sur", "xt"]}


def headline_table() -> pd.DataFrame:
    """The deployed target ``tgt``'s cells (and the other target's, which the figure leaves
    out), each with its shuffled control; the surrogate's cell is above noise."""
    rows = []
    for eps, sources in HEADLINE_SOURCES.items():
        for i, s in enumerate(sources):
            for t in TARGETS:
                rate = 1.0 if s == t else 0.2 + 0.1 * i
                base = {"data_task": "pneumothorax", "eps": eps, "source": s, "target": t}
                rel = RELATION.get((s, t), "cross-task")
                above = 0.05 if s == "sur" else -0.02
                rows.append(
                    {
                        **base,
                        "attack": "pgd",
                        "relation": rel,
                        "fooling_rate": rate,
                        "fooling_rate_ci_low": rate - 0.05,
                        "fooling_rate_ci_high": min(rate + 0.05, 1),
                        "fooling_rate_above_noise_ci_low": above,
                        "ci_level": 0.95,
                    }
                )
                rows.append(
                    {
                        **base,
                        "attack": "pgd__shuffled",
                        "relation": rel,
                        "fooling_rate": 0.15,
                        "fooling_rate_ci_low": 0.1,
                        "fooling_rate_ci_high": 0.2,
                        "ci_level": 0.95,
                    }
                )
    return pd.DataFrame(rows)


def test_the_headline_shows_each_deployed_cell_beside_its_noise_control(tmp_path, saved):
    png, pdf = tmp_path / "h.png", tmp_path / "h.pdf"
    cells = headline.plot_headline(
        headline_table(), {"tgt": "pneumothorax"}, {"pgd": "linf"}, png, pdf
    )
    assert set(cells["target"]) == {"tgt"} and len(cells) == 4  # no control, no other target
    fig = saved[-1]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "tgt (pneumothorax), ε = 2/255",
        "tgt (pneumothorax), ε = 8/255",
    ]
    # white-box first (RELATIONS order), then by source; * where the paired CI is above 0
    assert _ticks(axes[1].get_yticklabels()) == ["tgt · pgd", "sur · pgd *", "xt · pgd"]
    # one interval per cell and one per control: filled dots, hollow grey controls
    for ax, n in zip(axes, (1, 3), strict=True):
        assert len(ax.containers) == 2 * n
        hollow = [c for c in ax.containers if c.lines[0].get_markerfacecolor() == "none"]
        assert len(hollow) == n
        xs = sorted(float(c.lines[0].get_xdata()[0]) for c in hollow)
        assert xs == [0.15] * n
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert {"white-box", "surrogate", "cross-task", "noise control"} <= set(legend)
    _written(png, pdf)
    assert "beyond noise" in _pdf_text(pdf)


def test_the_headline_without_a_deployed_cell_says_what_to_do(tmp_path):
    with pytest.raises(WorkflowError, match="no cell of a deployed target"):
        headline.plot_headline(headline_table(), {"other": "pneumothorax"}, {}, tmp_path / "h.png")
