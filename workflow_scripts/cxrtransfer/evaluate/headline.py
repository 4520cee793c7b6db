"""The headline figure: per deployed target and eps, the fooling rate of every attack on it
with its patient-bootstrap CI, beside the same perturbations shuffled (the noise control),
coloured by relation. It answers the workflow's question in one picture: do attacks crafted
elsewhere fool the deployed model, and by how much more than noise?
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import CONTROL_SUFFIX, eps_text
from cxrtransfer.evaluate import style
from cxrtransfer.evaluate.figures import figure
from cxrtransfer.evaluate.figures import save as _save
from cxrtransfer.evaluate.relations import RELATIONS

KEYS = ["data_task", "attack", "eps", "source", "target"]
RATE = ["fooling_rate", "fooling_rate_ci_low", "fooling_rate_ci_high"]
NOISE = ["noise", "noise_ci_low", "noise_ci_high"]
ABOVE_LOW = "fooling_rate_above_noise_ci_low"  # the paired CI of (rate - its control's)
TITLE = "Do attacks crafted elsewhere fool the deployed model, beyond noise?"


def headline_cells(df: pd.DataFrame, deployed: dict[str, str], norms: dict[str, str]):
    """The attack rows of the deployed targets (``deployed`` {target: data task}), each with
    its noise control's fooling rate and CI (``noise``, ``noise_ci_low``/``_high``) and its
    attack's norm, ordered by target, norm, eps, relation (as ``RELATIONS``), source, attack."""
    rows = df[df["target"].map(deployed) == df["data_task"]]
    control = rows["attack"].str.endswith(CONTROL_SUFFIX)
    noise = rows[control][KEYS + RATE].copy()
    noise["attack"] = noise["attack"].str.slice(0, -len(CONTROL_SUFFIX))
    noise = noise.rename(columns=dict(zip(RATE, NOISE, strict=True)))
    cells = rows[~control].merge(noise, on=KEYS, how="left")
    cells["norm"] = cells["attack"].map(lambda a: norms.get(a, "linf"))
    order = {r: i for i, r in enumerate(RELATIONS)}
    cells["_rel"] = cells["relation"].map(lambda r: order.get(r, len(order)))
    keys = ["target", "norm", "eps", "_rel", "source", "attack"]
    return cells.sort_values(keys).drop(columns="_rel").reset_index(drop=True)


def above_noise(row) -> bool:
    """Whether the paired CI of the cell's fooling rate minus its control's lies above 0."""
    low = row.get(ABOVE_LOW, np.nan)
    return bool(pd.notna(low) and float(low) > 0)


def _interval(ax, x, lo, hi, y, **kw) -> None:
    ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", capsize=2, **kw)


def _panel(ax, cells: pd.DataFrame, colours: dict, title: str, level: str) -> None:
    """One (target, eps): a row per attack cell, its rate (filled) over its control (hollow)."""
    ys = np.arange(len(cells))[::-1].astype(float)
    labels = []
    for y, (_, c) in zip(ys, cells.iterrows(), strict=True):
        _interval(ax, *(c[k] for k in RATE), y, color=colours[c["relation"]])
        if pd.notna(c["noise"]):
            _interval(ax, *(c[k] for k in NOISE), y - 0.3, mfc="none", color=style.REFERENCE_COLOUR)
        labels.append(f"{c['source']} · {c['attack']}" + (" *" if above_noise(c) else ""))
    ax.set_yticks(ys, labels)
    ax.set_ylim(-0.8, len(cells) - 0.4)
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel(f"fooling rate of the deployed target ({level} CI)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def _legend(fig, colours: dict, level: str) -> None:
    """The relations' colours and the noise control's hollow marker (proxy artists: the axes
    hold only the plotted intervals)."""
    handles = [Line2D([], [], marker="o", ls="", color=c, label=r) for r, c in colours.items()]
    handles.append(
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="none",
            color=style.REFERENCE_COLOUR,
            label="noise control",
        )
    )
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(3, len(handles)),
        title=f"relation of source and target; * above noise (paired {level} CI of the "
        "difference > 0); noise control: the same perturbations, pixels shuffled",
    )


def plot_headline(df, deployed: dict[str, str], norms: dict[str, str], out_png, out_pdf=None):
    """One panel per (deployed target, eps): each attack's fooling rate (coloured by relation)
    and, just below it, its noise control (hollow grey). ``norms`` {attack: linf or l2} says
    how each eps is written. Returns the plotted cells."""
    cells = headline_cells(df, deployed, norms)
    if cells.empty:
        raise WorkflowError(
            "headline figure: the table has no cell of a deployed target (tasks.<task>.deployed "
            f"= {sorted(deployed)}); add a grid entry that attacks one."
        )
    level = pd.to_numeric(cells.get("ci_level", pd.Series([0.95])), errors="coerce").median()
    level = f"{100 * level:g}%" if np.isfinite(level) else "bootstrap"
    panels = [(k, g) for k, g in cells.groupby(["target", "norm", "eps"], sort=False)]
    targets = list(dict.fromkeys(k[0] for k, _ in panels))
    columns = [[k for k, _ in panels if k[0] == t] for t in targets]
    ncols = max(len(c) for c in columns)
    rows_per_panel = max(len(g) for _, g in panels)
    fig, axes = figure(
        len(targets), ncols, figsize=(5.5 * ncols, (0.35 * rows_per_panel + 1.4) * len(targets))
    )
    relations = list(dict.fromkeys(cells["relation"]))
    colours = dict(zip(relations, style.colours(len(relations)), strict=True))
    for (target, norm, eps), g in panels:
        r = targets.index(target)
        ax = axes[r][columns[r].index((target, norm, eps))]
        task = g["data_task"].iloc[0]
        _panel(ax, g, colours, f"{target} ({task}), ε = {eps_text(eps, norm)}", level)
    for r, cols in enumerate(columns):
        for c in range(len(cols), ncols):
            axes[r][c].set_visible(False)
    _legend(fig, colours, level)
    fig.suptitle(TITLE)
    _save(fig, out_png, out_pdf)
    return cells
