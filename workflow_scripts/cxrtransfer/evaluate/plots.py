"""Figures of the tables and predictions: transfer heatmaps, AUROC vs eps, ROC curves (the
example images: ``evaluate.examples``). Every figure has a title, axis labels and a legend or
annotations, is drawn in the shared style (``evaluate.style``) with constrained layout, and is
written as PNG and PDF by ``figures.save``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from sklearn.metrics import roc_curve

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import eps_text
from cxrtransfer.evaluate import style
from cxrtransfer.evaluate.figures import figure

# every figure is written through figures.save (tests patch ``_save`` to capture it)
from cxrtransfer.evaluate.figures import save as _save
from cxrtransfer.evaluate.relations import RELATIONS
from cxrtransfer.evaluate.tables import matrices
from cxrtransfer.metrics.measures import auroc

CELL_ASPECT = 0.6  # a heatmap cell's height / width
EPS_AXIS = {
    "linf": "ε (L∞ budget, 1/255 per pixel)",
    "l2": "ε (L2 norm of the perturbation, [0, 1] pixel units)",
}


def _subset(df: pd.DataFrame, what: str, **conds) -> pd.DataFrame:
    missing = [c for c in conds if c not in df.columns]
    if missing:
        raise WorkflowError(f"{what}: table lacks column(s) {', '.join(missing)}.")
    mask = np.ones(len(df), dtype=bool)
    for k, v in conds.items():
        mask &= (df[k] == v).to_numpy()
    sub = df[mask]
    if sub.empty:
        desc = ", ".join(f"{k}={v}" for k, v in conds.items())
        raise WorkflowError(f"{what}: no rows for {desc}.")
    return sub


def ci_text(sub: pd.DataFrame) -> str:
    """The table's confidence level as text ("95%"; "bootstrap" when the table lacks it)."""
    level = pd.to_numeric(sub.get("ci_level", pd.Series([0.95])), errors="coerce").median()
    return f"{100 * level:g}%" if np.isfinite(level) else "bootstrap"


# ----------------------------------------------------------------------------------------------
# Transfer-rate heatmaps
# ----------------------------------------------------------------------------------------------


def plot_transfer_heatmap(
    df: pd.DataFrame,
    data_task: str,
    attack: str,
    out_png,
    out_pdf=None,
    value: str = "transfer_rate",
    norm: str = "linf",
) -> None:
    """One annotated source x target heatmap of ``value`` per eps (shared colour scale 0..1).
    Every panel labels its own rows (the sources attacked at that eps) and columns; a cell
    shows the value, its CI ``[low, high]`` and the relation's abbreviation (the legend
    below spells out those present); undefined cells are grey with "n/a"."""
    sub = _subset(df, f"Heatmap of {value}", data_task=data_task, attack=attack)
    mats = matrices(sub, value)
    cis = _ci_matrices(sub, value)
    rel = _relation_abbrevs(sub)
    keys = sorted(mats, key=lambda k: float(k[2]))
    widths = [max(2.2, 1.15 * mats[k].shape[1]) for k in keys]
    rows = max(mats[k].shape[0] for k in keys)
    fig, axes = figure(
        1,
        len(keys),
        figsize=(sum(widths) + 2.4 * len(keys) + 1.4, max(3.2, 0.72 * rows + 2.6)),
        gridspec_kw={"width_ratios": widths},
    )
    for ax, key in zip(axes[0], keys, strict=True):
        m, eps = mats[key], float(key[2])
        lows, highs = (cis[0][key], cis[1][key]) if cis else (None, None)
        _heatmap_panel(ax, m, _cell_texts(m, lows, highs, eps, rel))
        n_src = m.shape[0]
        ax.set_title(f"ε = {eps_text(eps, norm)} ({n_src} source{'s' if n_src > 1 else ''})")
        _panel_labels(ax)
    bar = ScalarMappable(Normalize(0.0, 1.0), cmap=style.SEQUENTIAL_CMAP)
    fig.colorbar(bar, ax=list(axes[0]), label=value.replace("_", " "), shrink=0.85)
    fig.suptitle(f"{value.replace('_', ' ').capitalize()}: data task {data_task}, attack {attack}")
    fig.supxlabel(_relation_legend(sub, ci_text(sub)), fontsize=8)
    _save(fig, out_png, out_pdf)


def _ci_matrices(sub: pd.DataFrame, value: str):
    """(low, high) matrices of ``value``'s CI per key, or None when the table has no CI."""
    low, high = f"{value}_ci_low", f"{value}_ci_high"
    if not {low, high} <= set(sub.columns):
        return None
    return matrices(sub, low), matrices(sub, high)


def _relation_abbrevs(sub: pd.DataFrame) -> dict:
    """{(eps, source, target): the relation's abbreviation} of the table's rows."""
    rel = {}
    if "relation" in sub.columns:
        for row in sub[["attack", "eps", "source", "target", "relation"]].itertuples(index=False):
            abbrev = RELATIONS.get(row.relation, "?")  # label -> its abbreviation
            rel[(float(row.eps), row.source, row.target)] = abbrev
    return rel


def _cell_texts(m: pd.DataFrame, lows, highs, eps: float, rel: dict) -> np.ndarray:
    """Each cell's text: the value (2 decimals, "n/a" when undefined), its CI and the
    relation."""
    annot = np.full(m.shape, "", dtype=object)
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            v = m.iat[r, c]
            lines = ["n/a" if math.isnan(v) else f"{v:.2f}"]
            if lows is not None and not math.isnan(v):
                lo, hi = lows.iat[r, c], highs.iat[r, c]
                if not (math.isnan(lo) or math.isnan(hi)):
                    lines.append(f"[{lo:.2f}, {hi:.2f}]")
            rv = rel.get((eps, m.index[r], m.columns[c]))
            if rv:
                lines.append(rv)
            annot[r, c] = "\n".join(lines)
    return annot


def _heatmap_panel(ax, m, annot) -> None:
    """One eps's heatmap, every row and column labelled."""
    ax.set_facecolor(style.MISSING_COLOUR)
    sns.heatmap(
        m,
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap=style.SEQUENTIAL_CMAP,
        annot=annot,
        fmt="",
        annot_kws={"fontsize": 7},
        linewidths=0.5,
        linecolor="white",
        cbar=False,
        xticklabels=True,
        yticklabels=True,
    )
    ax.set_aspect(CELL_ASPECT)  # cells of one size in every panel, whatever its rows
    for r in range(m.shape[0]):  # seaborn does not annotate masked (NaN) cells
        for c in range(m.shape[1]):
            if math.isnan(m.iat[r, c]):
                ax.text(c + 0.5, r + 0.5, annot[r, c], ha="center", va="center", fontsize=7)


def _panel_labels(ax) -> None:
    """Axis labels and tick labels of a panel (each panel has its own sources)."""
    ax.set_xlabel("target model (evaluated on)")
    ax.set_ylabel("source model (attack crafted on)")
    ax.tick_params(axis="x", labelrotation=35)
    ax.tick_params(axis="y", labelrotation=0)
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")


def _relation_legend(sub: pd.DataFrame, level: str) -> str:
    """The abbreviations of the relations in the table, spelled out, and how to read a cell."""
    present = set(sub["relation"]) if "relation" in sub.columns else set()
    names = [f"{abbrev} {name}" for name, abbrev in RELATIONS.items() if name in present]
    text = f"Cell: value, [{level} patient-bootstrap CI], relation; n/a: undefined."
    return text + ("\n" + "; ".join(names) if names else "")


# ----------------------------------------------------------------------------------------------
# Adversarial AUROC against eps
# ----------------------------------------------------------------------------------------------


def _ordered_sources(sub: pd.DataFrame) -> tuple[list, dict | None]:
    """The sources, by relation (white-box first) then name, and {source: relation}."""
    order = {r: i for i, r in enumerate(RELATIONS)}
    rels = sub.groupby("source")["relation"].first().to_dict() if "relation" in sub else None
    sources = sorted(
        sub["source"].unique(),
        key=lambda s: (order.get(rels[s], 99) if rels is not None else 0, str(s)),
    )
    return sources, rels


def _clean_point(sub: pd.DataFrame):
    """(clean AUROC, CI low, CI high) of the target on this data task (NaN when absent)."""
    out = []
    for col in ("clean_auroc", "clean_auroc_ci_low", "clean_auroc_ci_high"):
        vals = pd.to_numeric(sub[col], errors="coerce") if col in sub else pd.Series([np.nan])
        out.append(float(vals.median()))
    return tuple(out)


def _source_line(ax, g: pd.DataFrame, clean, label: str, colour, marker, ls: str) -> None:
    """A source's adversarial AUROC against eps, from eps 0 (the clean AUROC: no
    perturbation) through its budgets, with its CI band."""
    g = g.assign(_e=g["eps"].astype(float)).sort_values("_e")
    x, y = g["_e"].to_numpy(float), g["adv_auroc"].to_numpy(float)
    has_ci = {"adv_auroc_ci_low", "adv_auroc_ci_high"} <= set(g.columns)
    lo = g["adv_auroc_ci_low"].to_numpy(float) if has_ci else None
    hi = g["adv_auroc_ci_high"].to_numpy(float) if has_ci else None
    if np.isfinite(clean[0]):
        x, y = np.r_[0.0, x], np.r_[clean[0], y]
        if has_ci:
            lo, hi = np.r_[clean[1], lo], np.r_[clean[2], hi]
    ax.plot(x, y, ls=ls, marker=marker, color=colour, label=label, ms=5, lw=1.6)
    if has_ci:
        ax.fill_between(x, lo, hi, color=colour, alpha=style.BAND_ALPHA, linewidth=0)


def plot_auroc_vs_eps(
    df: pd.DataFrame,
    data_task: str,
    attack: str,
    target: str,
    out_png,
    out_pdf=None,
    norm: str = "linf",
) -> None:
    """Adversarial AUROC of ``target`` against eps: one line per source (legend: source and
    relation), each starting at eps 0 from the target's clean AUROC, with its bootstrap CI
    band; the clean AUROC as a dashed line and chance (0.5) as a dotted line."""
    sub = _subset(df, "AUROC vs eps", data_task=data_task, attack=attack, target=target)
    sources, rels = _ordered_sources(sub)
    clean = _clean_point(sub)
    fig, axes = figure(figsize=(7.6, 4.6))
    ax = axes[0, 0]
    n = len(sources)
    for colour, marker, src in zip(style.colours(n), style.markers(n), sources, strict=True):
        rel = rels[src] if rels is not None else None
        label = f"{src} ({rel})" if rel is not None else str(src)
        ls = "-." if rel is not None and "cross-task" in rel else "-"
        _source_line(ax, sub[sub["source"] == src], clean, label, colour, marker, ls)
    if np.isfinite(clean[0]):
        ax.axhline(clean[0], color="black", ls="--", lw=1.0, label=f"clean AUROC ({clean[0]:.3f})")
    ax.axhline(0.5, color=style.REFERENCE_COLOUR, ls=":", lw=1, label="chance (0.5)")
    eps_all = sorted(float(e) for e in sub["eps"].unique())
    ticks = ([0.0] if np.isfinite(clean[0]) else []) + eps_all
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0" if e == 0 else eps_text(e, norm) for e in ticks])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(EPS_AXIS.get(norm, "ε"))
    ax.set_ylabel("adversarial AUROC of the target")
    ax.set_title(
        f"Target {target}: adversarial AUROC vs ε\n(data task {data_task}, attack {attack}; "
        f"bands = {ci_text(sub)} patient-bootstrap CI; ε = 0: clean images)"
    )
    ax.grid(alpha=0.3)
    fig.legend(loc="outside right center", title="source (relation)")
    _save(fig, out_png, out_pdf)


# ----------------------------------------------------------------------------------------------
# ROC curves
# ----------------------------------------------------------------------------------------------


def plot_roc(clean: pd.DataFrame, adv: pd.DataFrame, title: str, out_png, out_pdf=None) -> None:
    """ROC curves of the target on clean and adversarial images (AUC in the legend). With a
    single class in the labels the figure states that the ROC is undefined instead."""
    for df, what in ((clean, "clean"), (adv, "adversarial")):
        if not {"label", "prob"} <= set(df.columns):
            raise WorkflowError(f"ROC plot: {what} predictions need columns label and prob.")
    fig, axes = figure(figsize=(5.2, 5.0))
    ax = axes[0, 0]
    drawn = False
    for df, what, colour in (
        (clean, "clean", style.CLEAN_COLOUR),
        (adv, "adversarial", style.ADV_COLOUR),
    ):
        y = df["label"].to_numpy(int)
        p = df["prob"].to_numpy(float)
        if len(y) == 0 or np.unique(y).size < 2:
            only = "no images" if len(y) == 0 else f"only class {int(y[0])}"
            ax.text(
                0.5,
                0.35 if what == "clean" else 0.25,
                f"{what}: ROC undefined ({only})",
                ha="center",
                transform=ax.transAxes,
                color=colour,
            )
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ls = "-" if what == "clean" else "--"
        ax.plot(fpr, tpr, color=colour, ls=ls, lw=1.8, label=f"{what} (AUC = {auroc(y, p):.3f})")
        drawn = True
    ax.plot([0, 1], [0, 1], color=style.REFERENCE_COLOUR, ls=":", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if not drawn:
        ax.set_facecolor("0.95")
    _save(fig, out_png, out_pdf)
