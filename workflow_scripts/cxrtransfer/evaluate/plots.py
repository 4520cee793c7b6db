"""Figures of the tables and predictions: transfer heatmaps, AUROC vs eps, ROC curves (the
example images: ``evaluate.examples``). Every figure has a title, axis labels and a legend or
annotations, and is written by ``figures.save_png``.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import roc_curve

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import eps_label

# every figure is written through figures.save_png (tests patch ``_save`` to capture it)
from cxrtransfer.evaluate.figures import save_png as _save
from cxrtransfer.evaluate.relations import RELATIONS
from cxrtransfer.evaluate.tables import matrices
from cxrtransfer.metrics.measures import auroc


def _eps_label(eps) -> str:
    return f"ε = {eps_label(eps)}"


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


# ----------------------------------------------------------------------------------------------
# Transfer-rate heatmaps
# ----------------------------------------------------------------------------------------------


def plot_transfer_heatmap(
    df: pd.DataFrame, data_task: str, attack: str, out_png, value: str = "transfer_rate"
) -> None:
    """One annotated source x target heatmap of ``value`` per eps (subplots, shared colour
    scale 0..1). Cells show the value and the relation (WB white-box, S surrogate,
    XA cross-architecture, XT cross-task); undefined cells are grey with "n/a"."""
    sub = _subset(df, f"Heatmap of {value}", data_task=data_task, attack=attack)
    mats = matrices(sub, value)
    rel = _relation_abbrevs(sub)
    keys = sorted(mats, key=lambda k: float(k[2]))
    n = len(keys)
    first = mats[keys[0]]
    same_rows = all(list(mats[k].index) == list(first.index) for k in keys)
    w = max(3.2, 1.1 * first.shape[1] + 1.6) + (0 if same_rows else 2.5)
    h = max(2.8, 0.75 * max(mats[k].shape[0] for k in keys) + 1.8) + 0.4
    fig, axes = plt.subplots(1, n, figsize=(w * n + 1.0, h), squeeze=False)
    cbar_ax = fig.add_axes((0.92 + 0.02 / n, 0.2, 0.015, 0.6))
    for j, key in enumerate(keys):
        m = mats[key]
        annot = _cell_texts(m, float(key[2]), rel)
        _heatmap_panel(axes[0, j], m, annot, j, cbar_ax, value)
        axes[0, j].set_title(_eps_label(key[2]))
        _panel_labels(axes[0, j], j, same_rows)
    fig.suptitle(
        f"{value.replace('_', ' ').capitalize()}: data task {data_task}, attack {attack}",
        fontsize=11,
    )
    fig.subplots_adjust(
        left=0.08, right=0.9, top=0.84, bottom=0.3, wspace=0.08 if same_rows else 0.6
    )
    _relation_legend(fig, axes)
    _save(fig, out_png)


def _relation_abbrevs(sub: pd.DataFrame) -> dict:
    """{(eps, source, target): the relation's abbreviation} of the table's rows."""
    rel = {}
    if "relation" in sub.columns:
        for row in sub[["attack", "eps", "source", "target", "relation"]].itertuples(index=False):
            abbrev = RELATIONS.get(row.relation, "?")  # label -> its abbreviation
            rel[(float(row.eps), row.source, row.target)] = abbrev
    return rel


def _cell_texts(m: pd.DataFrame, eps: float, rel: dict) -> np.ndarray:
    """Each cell's text: the value (2 decimals, "n/a" when undefined) and the relation."""
    annot = np.full(m.shape, "", dtype=object)
    for r in range(m.shape[0]):
        for c in range(m.shape[1]):
            v = m.iat[r, c]
            txt = "n/a" if math.isnan(v) else f"{v:.2f}"
            rv = rel.get((eps, m.index[r], m.columns[c]))
            if rv:
                txt += f"\n{rv}"
            annot[r, c] = txt
    return annot


def _heatmap_panel(ax, m, annot, j: int, cbar_ax, value: str) -> None:
    """One eps's heatmap (the first panel draws the shared colour bar)."""
    ax.set_facecolor("0.85")
    sns.heatmap(
        m,
        ax=ax,
        vmin=0.0,
        vmax=1.0,
        cmap="rocket_r",
        annot=annot,
        fmt="",
        annot_kws={"fontsize": 8},
        linewidths=0.5,
        linecolor="white",
        cbar=j == 0,
        cbar_ax=cbar_ax if j == 0 else None,
        cbar_kws={"label": value.replace("_", " ")},
    )
    for r in range(m.shape[0]):  # seaborn does not annotate masked (NaN) cells
        for c in range(m.shape[1]):
            if math.isnan(m.iat[r, c]):
                ax.text(c + 0.5, r + 0.5, annot[r, c], ha="center", va="center", fontsize=8)


def _panel_labels(ax, j: int, same_rows: bool) -> None:
    """Axis labels and tick labels of panel ``j``."""
    ax.set_xlabel("target model (evaluated on)")
    ax.set_ylabel("source model (attack crafted on)" if j == 0 else "")
    ax.tick_params(axis="x", labelrotation=35)
    ax.tick_params(axis="y", labelrotation=0)
    if j > 0 and same_rows:  # the rows are the same sources in every panel: label them once
        ax.set_yticklabels([])
    for lab in ax.get_xticklabels():
        lab.set_horizontalalignment("right")


def _relation_legend(fig, axes) -> None:
    """The abbreviations below the lowest axis label (bbox_inches="tight" keeps text that lies
    outside the figure), where they cannot collide with panel titles or tick labels."""
    renderer = fig.canvas.get_renderer()
    lowest = min(ax.get_tightbbox(renderer).y0 for ax in axes[0]) / fig.bbox.height
    legend = (
        "WB white-box, ND same network, other defence, S surrogate, XA cross-arch., XT "
        "cross-task; = all, ~ some training patients shared; E ensemble: +T incl. the target, "
        "+S incl. a surrogate of it, -XA of other architectures, -XT of other tasks"
    )
    fig.text(
        0.5,
        lowest - 0.02,
        textwrap.fill(legend, width=max(40, int(fig.get_figwidth() * 11))),
        ha="center",
        va="top",
        fontsize=9,
    )


# ----------------------------------------------------------------------------------------------
# Adversarial AUROC against eps
# ----------------------------------------------------------------------------------------------


def plot_auroc_vs_eps(df: pd.DataFrame, data_task: str, attack: str, target: str, out_png) -> None:
    """Adversarial AUROC of ``target`` against eps, one line per source (legend: source and
    relation) with its bootstrap CI band; the target's clean AUROC as a dashed line and chance
    (0.5) as a dotted line."""
    sub = _subset(df, "AUROC vs eps", data_task=data_task, attack=attack, target=target)
    order = {r: i for i, r in enumerate(RELATIONS)}
    rels = sub.groupby("source")["relation"].first() if "relation" in sub else None
    sources = sorted(
        sub["source"].unique(),
        key=lambda s: (order.get(rels[s], 99) if rels is not None else 0, str(s)),
    )
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    palette = sns.color_palette("tab10", n_colors=max(len(sources), 3))
    eps_all = sorted(float(e) for e in sub["eps"].unique())
    for color, src in zip(palette, sources, strict=False):
        g = sub[sub["source"] == src].assign(_e=lambda d: d["eps"].astype(float)).sort_values("_e")
        label = f"{src} ({rels[src]})" if rels is not None else str(src)
        style = "-" if rels is None or rels[src] != "cross-task" else "-."
        ax.plot(g["_e"], g["adv_auroc"], style, marker="o", color=color, label=label)
        if {"adv_auroc_ci_low", "adv_auroc_ci_high"} <= set(g.columns):
            ax.fill_between(
                g["_e"].to_numpy(float),
                g["adv_auroc_ci_low"].to_numpy(float),
                g["adv_auroc_ci_high"].to_numpy(float),
                color=color,
                alpha=0.15,
                linewidth=0,
            )
    if "clean_auroc" in sub.columns:
        clean = pd.to_numeric(sub["clean_auroc"], errors="coerce").median()
        if np.isfinite(clean):
            ax.axhline(clean, color="black", ls="--", lw=1.2, label=f"clean AUROC ({clean:.3f})")
    ax.axhline(0.5, color="0.5", ls=":", lw=1, label="chance (0.5)")
    ax.set_xticks(eps_all)
    ax.set_xticklabels([f"{e:g}" for e in eps_all])
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("ε (attack budget: 1/255 units for L-inf, [0, 1] pixel L2 norm for L2)")
    ax.set_ylabel("adversarial AUROC of target")
    level = pd.to_numeric(sub.get("ci_level", pd.Series([0.95])), errors="coerce").median()
    ci_txt = f"{100 * level:g}%" if np.isfinite(level) else "percentile"
    ax.set_title(
        f"Target {target}: adversarial AUROC vs ε\n(data task {data_task}, attack {attack}; "
        f"bands = {ci_txt} bootstrap CI)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="source (relation)")
    _save(fig, out_png)


# ----------------------------------------------------------------------------------------------
# ROC curves
# ----------------------------------------------------------------------------------------------


def plot_roc(clean: pd.DataFrame, adv: pd.DataFrame, title: str, out_png) -> None:
    """ROC curves of the target on clean and adversarial images (AUC in the legend). With a
    single class in the labels the figure states that the ROC is undefined instead."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for df, what in ((clean, "clean"), (adv, "adversarial")):
        if not {"label", "prob"} <= set(df.columns):
            plt.close(fig)
            raise WorkflowError(f"ROC plot: {what} predictions need columns label and prob.")
    drawn = False
    for df, what, color in ((clean, "clean", "tab:blue"), (adv, "adversarial", "tab:red")):
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
                color=color,
            )
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, color=color, lw=1.8, label=f"{what} (AUC = {auroc(y, p):.3f})")
        drawn = True
    ax.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if not drawn:
        ax.set_facecolor("0.95")
    _save(fig, out_png)
