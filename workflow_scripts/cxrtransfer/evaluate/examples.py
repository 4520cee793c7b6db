"""The example-image figure of a cell: which images to show, their alignment with the
predictions, and the grid of clean / adversarial / perturbation panels (with the finding's
box and the perturbation energy inside it when boxes are configured)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from cxrtransfer import WorkflowError
from cxrtransfer.data.boxes import energy_table
from cxrtransfer.evaluate import style
from cxrtransfer.evaluate.figures import figure

# every figure is written through figures.save (tests patch ``_save`` to capture it)
from cxrtransfer.evaluate.figures import save as _save


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
    out_pdf=None,
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
    The title states the amplification and the colour scale; the panel titles give the
    target's probabilities (and predictions if ``threshold`` is given).
    """
    c, a, boxes, energy = _example_inputs(
        clean_u8, adv_u8, labels, clean_prob, adv_prob, image_index, boxes, energy
    )
    n = c.shape[0]
    delta = a.astype(np.int16) - c.astype(np.int16)  # 1/255 units
    lim, amplify = _perturbation_range(delta, amplify)
    labels = np.atleast_1d(labels)
    probs = (np.atleast_1d(clean_prob).astype(float), np.atleast_1d(adv_prob).astype(float))
    image_index = list(np.atleast_1d(image_index))
    row_h = 2.9 if any(b is not None for b in boxes) else 2.7  # room for two-line titles
    fig, axes = figure(n, 3, figsize=(8.4, row_h * n + 1.0))
    im, drawn = None, []
    for i in range(n):
        ptxt = [_prob_text(p[i], threshold) for p in probs]
        im = _example_row(axes[i], c[i], a[i], delta[i], lim, amplify, ptxt)
        if boxes[i] is not None:
            drawn += _draw_box(axes[i], boxes[i])
            if energy[i] is not None and np.isfinite(energy[i]):
                axes[i, 2].set_title(
                    axes[i, 2].get_title() + f"\nenergy in box {100 * energy[i]:.0f}%"
                )
        axes[i, 0].set_ylabel(f"{image_index[i]}\nlabel {int(labels[i])}", fontsize=9)
    fig.suptitle(
        f"{title}\ncolumns: clean | adversarial | difference (adversarial − clean) ×"
        f"{amplify:.0f}, colour scale ±{lim:.3g}/255"
    )
    if box_finding is not None:
        _box_footnote(fig, box_finding, boxes, set_boxed)
    fig.colorbar(
        im,
        ax=list(axes[:, 2]),
        shrink=0.8,
        label=f"adversarial − clean (1/255 pixel units); ±{lim:.3g} = full colour",
    )
    _save(fig, out_png, out_pdf)
    return drawn


def _prob_text(prob: float, threshold: float | None) -> str:
    """The target's probability of the finding (and its decision at ``threshold``)."""
    s = f"p = {prob:.3f}"
    if threshold is not None:
        s += f" → pred {int(prob >= threshold)}"
    return s


def _example_row(row_axes, clean, adv, delta, lim: float, amplify: float, ptxt) -> object:
    """One image's three panels: clean, adversarial (grey, 0..255) and the difference on the
    diverging scale +-``lim``; returns the difference's image (for the colour bar)."""
    ax0, ax1, ax2 = row_axes
    ax0.imshow(clean, cmap="gray", vmin=0, vmax=255)
    ax0.set_title(f"clean: {ptxt[0]}", fontsize=9)
    ax1.imshow(adv, cmap="gray", vmin=0, vmax=255)
    ax1.set_title(f"adversarial: {ptxt[1]}", fontsize=9)
    im = ax2.imshow(delta, cmap=style.DIVERGING_CMAP, vmin=-lim, vmax=lim)
    linf = int(np.abs(delta).max())
    ax2.set_title(f"difference ×{amplify:.0f} (L∞ {linf}/255)", fontsize=9)
    for ax in row_axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return im


def _example_inputs(clean_u8, adv_u8, labels, clean_prob, adv_prob, image_index, boxes, energy):
    """The checked images (N, H, W) and the per-row boxes and energies of ``plot_examples``."""
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
    return c, a, boxes, energy


def _perturbation_range(delta, amplify):
    """``(lim, amplify)``: the perturbation panels' colour limits +-lim (1/255 units) and the
    amplification they show (None: the largest perturbation fills the range)."""
    max_abs = max(int(np.abs(delta).max()), 1)
    if amplify is None:
        lim = float(max_abs)
        amplify = 255.0 / lim
    else:
        if not amplify > 0:
            raise WorkflowError(f"amplify must be > 0, got {amplify}.")
        lim = 255.0 / float(amplify)
    return lim, amplify


def _draw_box(row_axes, box) -> list:
    """A row's box (x, y, w, h in pixels) on its three panels; returns the Rectangles."""
    x, y, w, h = box
    drawn = []
    colours = (style.BOX_COLOUR, style.BOX_COLOUR, style.BOX_DELTA_COLOUR)
    for ax, color in zip(row_axes, colours, strict=True):
        # imshow centres pixel j at j: the edge-based box starts half a pixel before
        r = Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec=color, lw=1.4, ls="--")
        ax.add_patch(r)
        drawn.append(r)
    return drawn


def _box_footnote(fig, box_finding: str, boxes: list, set_boxed) -> None:
    """The footnote on the boxes below the panels (it says what the dashed boxes are: a
    figure legend would take room from the panels or collide with the title)."""
    n = len(boxes)
    n_box = sum(b is not None for b in boxes)
    in_set = ""
    if set_boxed is not None and set_boxed[0] > 0:
        in_set = (
            f"\n{set_boxed[0]} of the set's {set_boxed[1]} images have one; the _boxes.csv "
            "table beside this plot has the energy in the box of every one of them."
        )
    fig.supxlabel(
        f"Dashed box (orange on the images, green on the difference): the {box_finding} box of "
        "the image (data.bboxes; drawn findings' true region on synthetic data), scaled to "
        f"these pixels. {n_box} of {n} example "
        f"image(s) have one.{in_set}\n'energy in box' = share of the perturbation's squared "
        "magnitude inside it (uniform noise: the box's share of the area).",
        fontsize=8,
    )
