"""Figures (PNG, matplotlib Agg backend): transfer heatmaps, AUROC vs eps, ROC curves, examples.

Every figure has a title, axis labels and a legend or annotations, and is written atomically
(a crash never leaves a half-written PNG under the final name).
"""

from __future__ import annotations

import math
import os
import textwrap

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from cxrtransfer import WorkflowError  # noqa: E402
from cxrtransfer.core.files import atomic_path  # noqa: E402
from cxrtransfer.core.paths import eps_label  # noqa: E402
from cxrtransfer.data.boxes import energy_table  # noqa: E402
from cxrtransfer.evaluate.relations import RELATIONS  # noqa: E402
from cxrtransfer.evaluate.tables import matrices  # noqa: E402
from cxrtransfer.metrics.measures import auroc  # noqa: E402

DPI = 110


def _save(fig, out_png: str | os.PathLike) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)


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
    rel = {}
    if "relation" in sub.columns:
        for row in sub[["attack", "eps", "source", "target", "relation"]].itertuples(index=False):
            abbrev = RELATIONS.get(row.relation, "?")  # label -> its abbreviation
            rel[(float(row.eps), row.source, row.target)] = abbrev
    keys = sorted(mats, key=lambda k: float(k[2]))
    n = len(keys)
    first = mats[keys[0]]
    same_rows = all(list(mats[k].index) == list(first.index) for k in keys)
    w = max(3.2, 1.1 * first.shape[1] + 1.6) + (0 if same_rows else 2.5)
    h = max(2.8, 0.75 * max(mats[k].shape[0] for k in keys) + 1.8) + 0.4
    fig, axes = plt.subplots(1, n, figsize=(w * n + 1.0, h), squeeze=False)
    cbar_ax = fig.add_axes((0.92 + 0.02 / n, 0.2, 0.015, 0.6))
    for j, key in enumerate(keys):
        ax = axes[0, j]
        m = mats[key]
        annot = np.full(m.shape, "", dtype=object)
        for r in range(m.shape[0]):
            for c in range(m.shape[1]):
                v = m.iat[r, c]
                txt = "n/a" if math.isnan(v) else f"{v:.2f}"
                rv = rel.get((float(key[2]), m.index[r], m.columns[c]))
                if rv:
                    txt += f"\n{rv}"
                annot[r, c] = txt
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
        ax.set_title(_eps_label(key[2]))
        ax.set_xlabel("target model (evaluated on)")
        ax.set_ylabel("source model (attack crafted on)" if j == 0 else "")
        ax.tick_params(axis="x", labelrotation=35)
        ax.tick_params(axis="y", labelrotation=0)
        if j > 0 and same_rows:  # the rows are the same sources in every panel: label them once
            ax.set_yticklabels([])
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
    fig.suptitle(
        f"{value.replace('_', ' ').capitalize()}: data task {data_task}, attack {attack}",
        fontsize=11,
    )
    fig.subplots_adjust(
        left=0.08, right=0.9, top=0.84, bottom=0.3, wspace=0.08 if same_rows else 0.6
    )
    # the abbreviations below the lowest axis label (bbox_inches="tight" keeps text that lies
    # outside the figure), where they cannot collide with panel titles or tick labels
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
    _save(fig, out_png)


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


# ----------------------------------------------------------------------------------------------
# Example images
# ----------------------------------------------------------------------------------------------


def select_examples(
    labels, clean_prob, adv_prob, l2, per_class: int, threshold: float = 0.5, prefer=None
):
    """Positions of images to show, class 0 first, then class 1, without duplicates.

    For each class, up to ``per_class`` images, alternating between two rankings (starting with
    the first): (1) the most confidently flipped images — those classified correctly when clean
    and wrongly when adversarial (at ``threshold``), ranked by the change in probability towards
    the wrong class (``clean - adv`` for class 1, ``adv - clean`` for class 0); (2) the most
    perturbed images (largest ``l2``). A ranking that runs out is skipped; ties keep input order.

    ``prefer`` (optional, one bool per image, e.g. "has a box of the finding"): the preferred
    images of a class are picked first (alternating between their own two rankings), and only
    the slots they leave are filled from the others the same way.
    """
    y = np.asarray(labels).astype(int)
    p = np.asarray(clean_prob, dtype=float)
    q = np.asarray(adv_prob, dtype=float)
    d = np.asarray(l2, dtype=float)
    pref = np.zeros(len(y), bool) if prefer is None else np.asarray(prefer, dtype=bool)
    if not (len(y) == len(p) == len(q) == len(d) == len(pref)):
        raise WorkflowError(
            f"select_examples: arrays differ in length (labels {len(y)}, clean_prob {len(p)}, "
            f"adv_prob {len(q)}, l2 {len(d)}, prefer {len(pref)})."
        )
    if per_class < 0:
        raise WorkflowError(f"per_class must be >= 0, got {per_class}.")
    flipped = ((p >= threshold) == y.astype(bool)) & ((q >= threshold) != y.astype(bool))
    toward_wrong = np.where(y == 1, p - q, q - p)
    chosen: list[int] = []
    for cls in (0, 1):
        picked: list[int] = []
        for group in (pref, ~pref):
            idx = np.flatnonzero((y == cls) & group)
            fl = idx[flipped[idx]]
            by_flip = list(fl[np.argsort(-toward_wrong[fl], kind="stable")])
            by_l2 = list(idx[np.argsort(-d[idx], kind="stable")])
            rankings = [by_flip, by_l2]
            turn = 0
            while len(picked) < per_class and any(rankings):
                r = rankings[turn % 2]
                while r and (r[0] in picked):
                    r.pop(0)
                if r:
                    picked.append(int(r.pop(0)))
                turn += 1
        chosen += picked
    return chosen


def cell_examples(cell: dict, per_class: int, threshold: float, finding=None, boxes=None):
    """The example images of a cell and its energy-in-box table.

    ``cell``: ``aligned_cell``'s arrays of the whole adversarial set; ``boxes``: {image name:
    (x, y, w, h, png_width, png_height)} of ``finding`` (``boxes.finding_boxes``), or None.
    Returns ``(pick, energy)``: ``pick`` the positions of the images the example plot draws
    (``select_examples``, images with a box of the finding first); ``energy`` one row per image
    of the **whole set** that has a box (``boxes.energy_table``, in set order; column
    ``in_example_plot`` says whether the plot draws it), header only when none has one.
    """
    boxes = boxes or {}
    names = np.asarray(cell["image_index"]).astype(str)
    boxed = np.array([n in boxes for n in names], dtype=bool)
    pick = select_examples(
        cell["label"],
        cell["clean_prob"],
        cell["adv_prob"],
        cell["l2"],
        per_class,
        threshold=threshold,
        prefer=boxed,
    )
    at = np.flatnonzero(boxed)
    clean_u8, adv_u8 = np.asarray(cell["clean_u8"]), np.asarray(cell["adv_u8"])
    energy = energy_table(
        names[at],
        clean_u8[at],
        adv_u8[at],
        np.asarray(cell["label"])[at],
        finding,
        boxes,
        clean_u8.shape[-1],
        drawn=set(names[pick]),
    )
    return pick, energy


def _as_images(x, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise WorkflowError(f"{what}: expected images of shape (N, H, W[, 1]), got {a.shape}.")
    return a


def aligned_cell(clean: pd.DataFrame, adv: pd.DataFrame, clean_images: dict, adv_images: dict):
    """Align a cell's predictions and images by ``image_index`` (never by position).

    ``clean_images`` / ``adv_images``: {"images": uint8 (N, H, W), "image_index": (N,)} of the
    clean shards and the attack caches. Returns a dict of arrays in the adversarial set's
    image order: image_index, label, clean_prob, adv_prob, l2, clean_u8, adv_u8."""
    names = np.asarray(adv_images["image_index"]).astype(str)
    c = clean.set_index(clean["image_index"].astype(str))
    a = adv.set_index(adv["image_index"].astype(str))
    pos = {n: i for i, n in enumerate(np.asarray(clean_images["image_index"]).astype(str))}
    missing = [n for n in names if n not in c.index or n not in a.index or n not in pos]
    if missing:
        raise WorkflowError(
            f"{len(missing)} adversarial image(s) lack a clean image or a prediction "
            f"(e.g. {missing[:3]}): the files of this cell are inconsistent."
        )
    c, a = c.loc[names], a.loc[names]
    return {
        "image_index": names,
        "label": a["label"].to_numpy(int),
        "clean_prob": c["prob"].to_numpy(float),
        "adv_prob": a["prob"].to_numpy(float),
        "l2": a["l2"].to_numpy(float),
        "clean_u8": np.asarray(clean_images["images"])[[pos[n] for n in names]],
        "adv_u8": np.asarray(adv_images["images"]),
    }


def plot_examples(
    clean_u8,
    adv_u8,
    labels,
    clean_prob,
    adv_prob,
    image_index,
    title: str,
    out_png,
    amplify: float | None = None,
    threshold: float | None = None,
    boxes=None,
    box_finding: str | None = None,
    energy=None,
    set_boxed: tuple[int, int] | None = None,
):
    """Grid: one row per image; columns clean image, adversarial image, perturbation
    ``adv - clean`` (diverging colormap, symmetric about 0, shared across rows).

    ``boxes``: per row a box (x, y, w, h in pixels of these images, pixel (i, j) spanning
    [j, j+1) x [i, i+1); ``boxes.scale_box``) or None; a row's box is drawn on its three
    panels (``box_finding`` names the finding in the legend) and ``energy`` (per row, the
    share of the perturbation's energy inside the box, or None) goes into the perturbation
    panel's title. ``set_boxed`` = (images of the whole set with a box, images of the set):
    the footnote then says how many the energy table covers (unless none has a box). Returns
    the figure's box Rectangles (empty without boxes).

    ``amplify`` = k shows the perturbation multiplied by k over the full colour range (colour
    limits +-255/k in 1/255 units); None picks k so the largest perturbation fills the range.
    Titles give the target's probabilities (and predictions if ``threshold`` is given).
    """
    c = _as_images(clean_u8, "clean images")
    a = _as_images(adv_u8, "adversarial images")
    n = c.shape[0]
    lens = {len(np.atleast_1d(v)) for v in (labels, clean_prob, adv_prob, image_index)}
    if c.shape != a.shape or lens != {n}:
        raise WorkflowError(
            f"plot_examples: inputs disagree (clean {c.shape}, adversarial {a.shape}, "
            f"per-image lengths {sorted(lens)})."
        )
    if n == 0:
        raise WorkflowError("plot_examples: no images to show.")
    boxes = [None] * n if boxes is None else list(boxes)
    energy = [None] * n if energy is None else list(energy)
    if len(boxes) != n or len(energy) != n:
        raise WorkflowError(
            f"plot_examples: {len(boxes)} boxes and {len(energy)} energy values for {n} images."
        )
    delta = a.astype(np.int16) - c.astype(np.int16)  # 1/255 units
    max_abs = max(int(np.abs(delta).max()), 1)
    if amplify is None:
        lim = float(max_abs)
        amplify = 255.0 / lim
    else:
        if not amplify > 0:
            raise WorkflowError(f"amplify must be > 0, got {amplify}.")
        lim = 255.0 / float(amplify)
    labels = np.atleast_1d(labels)
    clean_prob = np.atleast_1d(clean_prob).astype(float)
    adv_prob = np.atleast_1d(adv_prob).astype(float)
    image_index = list(np.atleast_1d(image_index))

    def ptxt(prob):
        s = f"p = {prob:.3f}"
        if threshold is not None:
            s += f" → pred {int(prob >= threshold)}"
        return s

    row_h = 2.9 if any(b is not None for b in boxes) else 2.7  # room for two-line titles
    fig, axes = plt.subplots(n, 3, figsize=(8.4, row_h * n + 0.6), squeeze=False)
    im = None
    drawn: list = []
    for i in range(n):
        ax0, ax1, ax2 = axes[i]
        ax0.imshow(c[i], cmap="gray", vmin=0, vmax=255)
        ax0.set_title(f"clean: {ptxt(clean_prob[i])}", fontsize=9)
        ax1.imshow(a[i], cmap="gray", vmin=0, vmax=255)
        ax1.set_title(f"adversarial: {ptxt(adv_prob[i])}", fontsize=9)
        im = ax2.imshow(delta[i], cmap="RdBu_r", vmin=-lim, vmax=lim)
        linf = int(np.abs(delta[i]).max())
        ptitle = f"perturbation ×{amplify:.0f} (L∞ {linf}/255)"
        if boxes[i] is not None:
            x, y, w, h = boxes[i]
            for ax, color in ((ax0, "gold"), (ax1, "gold"), (ax2, "lime")):
                # imshow centres pixel j at j: the edge-based box starts half a pixel before
                r = Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec=color, lw=1.4, ls="--")
                ax.add_patch(r)
                drawn.append(r)
            if energy[i] is not None and np.isfinite(energy[i]):
                ptitle += f"\nenergy in box {100 * energy[i]:.0f}%"
        ax2.set_title(ptitle, fontsize=9)
        ax0.set_ylabel(f"{image_index[i]}\nlabel {int(labels[i])}", fontsize=9)
        for ax in (ax0, ax1, ax2):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=11)
    bottom = 0.0
    if box_finding is not None:
        n_box = sum(b is not None for b in boxes)
        in_set = ""
        if set_boxed is not None and set_boxed[0] > 0:
            in_set = (
                f"\n{set_boxed[0]} of the set's {set_boxed[1]} images have one; the _boxes.csv "
                "table beside this plot has the energy in the box of every one of them."
            )
        bottom = min(0.12, (0.65 if in_set else 0.5) / (row_h * n + 0.6))
        fig.text(
            0.45,
            0.0,
            f"Dashed box: the {box_finding} box of the image (data.bboxes; drawn findings' true "
            f"region on synthetic data), scaled to these pixels. {n_box} of {n} example "
            f"image(s) have one.{in_set}\n'energy in box' = share of the perturbation's squared "
            "magnitude inside it (uniform noise: the box's share of the area).",
            ha="center",
            va="bottom",
            fontsize=8,
        )
        if drawn:
            fig.legend(
                handles=[Rectangle((0, 0), 1, 1, fill=False, ec="gold", ls="--")],
                labels=[f"{box_finding} box"],
                loc="upper left",  # the centred title leaves the corners free
                fontsize=8,
            )
    fig.tight_layout(rect=(0, bottom, 0.9, 0.97))
    cax = fig.add_axes((0.91, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax, label="adversarial − clean (1/255 pixel units)")
    _save(fig, out_png)
    return drawn
