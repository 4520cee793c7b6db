"""Radiologist bounding boxes of findings (``data.bboxes``) and the perturbation energy inside them.

The Kaggle download has ``BBox_List_2017.csv`` at its top level: 984 boxes of 880 images,
header ``Image Index,Finding Label,Bbox [x,y,w,h],,,`` (pandas splits the bracketed name into
``Bbox [x``, ``y``, ``w``, ``h]`` and adds ``Unnamed`` columns for the trailing commas), the
coordinates in pixels of the 1024 x 1024 PNG (x, y = top-left corner, w, h = width, height).
The file writes ``Infiltrate`` for the Data_Entry label ``Infiltration`` (``ALIASES``). The
``torchxrayvision`` 1.5.7 wheel ships the same table as ``BBox_List_2017.csv.gz``
(``make real-metadata`` writes it to ``DEFAULT_PATH``); the synthetic generator writes the true
box of the finding it painted for a fraction of its positive images.

``prepare`` checks a box file against the download's metadata and PNGs and writes the table the
plot jobs read (``image_index, label, x, y, w, h, png_width, png_height``, PNG pixels).
``scale_box`` maps a box into the shard images (``shards.decode``: the whole PNG resized to
``data.image_size`` squared, no crop, no pad), ``box_weights`` gives each shard pixel's covered
fraction and ``energy_inside`` the share of a perturbation's energy inside the box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import LABELS, WorkflowError
from cxrtransfer.core.files import write_csv
from cxrtransfer.core.logs import LOG
from cxrtransfer.data.ingest import image_paths

# the fetched file's name, wheel member and SHA-256 (real_metadata extracts it)
from cxrtransfer.data.real_metadata import BOXES_FILE_NAME as GZ_NAME
from cxrtransfer.data.real_metadata import BOXES_MEMBER as MEMBER  # noqa: F401 (re-exported)
from cxrtransfer.data.real_metadata import BOXES_SHA256 as SHA256  # noqa: F401 (re-exported)
from cxrtransfer.data.real_metadata import (
    absent_names,
    bad_image_names,
    metadata_images,
    read_text_table,
)

FILE_NAME = "BBox_List_2017.csv"
DEFAULT_PATH = f"resources/nih-metadata/{GZ_NAME}"
IMAGE, LABEL = "Image Index", "Finding Label"
COORDS = {"Bbox [x": "x", "y": "y", "w": "w", "h]": "h"}
HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
# names of the box file that differ from the Data_Entry label of the same finding
ALIASES = {"Infiltrate": "Infiltration"}
WHAT_TO_DO = (
    f"data.bboxes must be the NIH box table ({FILE_NAME} of the Kaggle download, or {GZ_NAME} "
    f"of the torchxrayvision 1.5.7 wheel: `make real-metadata` writes it to {DEFAULT_PATH}) "
    f"with the header '{HEADER}' and coordinates in pixels of the PNG; or `auto` (the "
    f"download's {FILE_NAME} if it has one) or `none`."
)
PREPARED_COLUMNS = ["image_index", "label", "x", "y", "w", "h", "png_width", "png_height"]
ENERGY_COLUMNS = [
    "image_index",
    "label",
    "finding",
    "box_x",
    "box_y",
    "box_w",
    "box_h",
    "energy_inside",
    "area_share",
    "ratio",
    "l2",
    "in_example_plot",
]


def _fail(path, what: str) -> WorkflowError:
    return WorkflowError(f"data.bboxes '{path}': {what} {WHAT_TO_DO}")


def resolve(data: dict, download_dir: str | Path) -> str | None:
    """The box file of the config's ``data`` section, or None (no boxes).

    ``none``: None. A path: that file (it must exist). ``auto``: ``download_dir``'s
    BBox_List_2017.csv; for the synthetic source the generator always writes it, for a Kaggle
    download only if it is there."""
    value = data.get("bboxes", "auto")
    if value in (None, "none"):
        return None
    if value == "auto":
        path = Path(download_dir) / FILE_NAME
        if data.get("source", "synthetic") == "synthetic" or path.is_file():
            return str(path)
        return None
    if not Path(value).is_file():
        raise _fail(value, "the file does not exist.")
    return str(value)


def read_boxes(path: str | Path, sizes: dict | None = None) -> pd.DataFrame:
    """Read and check a box table; return ``image_index, label, x, y, w, h`` (floats, PNG
    pixels; ``label`` the Data_Entry name, Infiltrate -> Infiltration), in the file's order.

    ``sizes``: {image name: (width, height)} of the PNGs; boxes must then lie inside their
    image. Raises WorkflowError naming the file, the column and what to do for: a missing or
    unreadable file, missing columns, non-numeric or negative coordinates, zero-size boxes,
    unknown labels, bad image names, a finding boxed twice in one image, a box outside its
    image."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "the file does not exist.")
    df = read_text_table(path, _fail)
    missing = [c for c in (IMAGE, LABEL, *COORDS) if c not in df.columns]
    if missing:
        raise _fail(
            path,
            f"missing column(s) {missing} (found {list(df.columns)}): another table, or the "
            "header was edited.",
        )
    names = df[IMAGE].str.strip()
    problem = bad_image_names(IMAGE, names)
    if problem:
        raise _fail(path, problem)
    raw = df[LABEL].str.strip()
    labels = raw.replace(ALIASES)
    unknown = sorted(set(labels[~labels.isin(LABELS)]))
    if unknown:
        raise _fail(
            path,
            f"column '{LABEL}': unknown label(s) {unknown[:5]}. Known: {', '.join(LABELS)} "
            f"(and the box file's spellings {ALIASES}).",
        )
    out = pd.DataFrame({"image_index": names, "label": labels})
    for col, key in COORDS.items():
        v = pd.to_numeric(df[col].str.strip(), errors="coerce")
        bad = ~np.isfinite(v.to_numpy(float))
        if bad.any():
            raise _fail(
                path,
                f"column '{col}': {int(bad.sum())} value(s) are not numbers (e.g. "
                f"{df[col][bad].head(3).tolist()} of {names[bad].head(3).tolist()}).",
            )
        low = 0.0 if key in ("x", "y") else np.nextafter(0.0, 1.0)
        bad = v < low
        if bad.any():
            what = "negative" if key in ("x", "y") else "zero or negative"
            raise _fail(
                path,
                f"column '{col}': {int(bad.sum())} {what} value(s) (rows of "
                f"{names[bad].head(3).tolist()}); coordinates are PNG pixels, x/y >= 0, w/h > 0.",
            )
        out[key] = v.astype(float)
    pairs = names + " " + labels
    dup = pairs.duplicated(keep=False)
    if dup.any():
        raise _fail(
            path,
            f"columns '{IMAGE}' and '{LABEL}': {int(pairs.duplicated().sum())} finding(s) "
            f"boxed twice in one image (e.g. {sorted(set(pairs[dup]))[:3]}); each finding of "
            "an image has one box in the NIH table. Remove the repeated rows.",
        )
    if sizes is not None:
        check_inside(out, sizes, path)
    out.attrs["path"] = str(path)
    return out.reset_index(drop=True)


def check_inside(boxes: pd.DataFrame, sizes: dict, path) -> None:
    """Every box must lie inside its PNG (``sizes``: {name: (width, height)}); a tolerance of
    0.5 px allows for rounding of the published coordinates."""
    wh = np.array([sizes.get(n, (np.inf, np.inf)) for n in boxes["image_index"]], dtype=float)
    if len(boxes) == 0:
        return
    for end, (start, ext), col, side in (
        ("right", ("x", "w"), "Bbox [x", 0),
        ("bottom", ("y", "h"), "y", 1),
    ):
        bad = (boxes[start] + boxes[ext]).to_numpy(float) > wh[:, side] + 0.5
        if bad.any():
            ex = [
                f"{n} ({boxes[start].iat[i]:g} + {boxes[ext].iat[i]:g} > {wh[i, side]:g})"
                for i, n in zip(np.flatnonzero(bad)[:3], boxes["image_index"][bad], strict=False)
            ]
            raise _fail(
                path,
                f"columns '{col}' and '{'w' if side == 0 else 'h]'}': {int(bad.sum())} box(es) "
                f"end past the {end} edge of their PNG: {', '.join(ex)}. The coordinates must "
                "be pixels of the PNG as downloaded (1024 for the Kaggle images).",
            )


def check_against_metadata(boxes: pd.DataFrame, metadata_images, metadata_path) -> None:
    """Every boxed image must be an image of the download's metadata."""
    absent = absent_names(boxes["image_index"], metadata_images)
    if absent:
        raise _fail(
            boxes.attrs.get("path", ""),
            f"column '{IMAGE}': {len(absent)} of {boxes['image_index'].nunique()} boxed "
            f"image(s) are absent from the download's metadata '{metadata_path}' (e.g. "
            f"{absent[:3]}): the boxes belong to another download or dataset.",
        )


def png_sizes(download_dir, names) -> dict:
    """{name: (width, height)} of the PNGs ``names`` in a Kaggle-layout download (headers
    only); names without a PNG are left out."""
    # heavy: the Snakefile imports this module at parse time; PIL loads in the box job only
    from PIL import Image

    paths = image_paths(download_dir)
    sizes = {}
    for n in sorted(set(names)):
        if n in paths:
            with Image.open(paths[n]) as im:
                sizes[n] = im.size
    return sizes


def prepare(box_path, metadata_path, download_dir, out_csv) -> pd.DataFrame:
    """Check the box file against the download (its Data_Entry table and PNG sizes) and write
    the table the plot jobs read: PREPARED_COLUMNS, sorted by image and label. Boxes of images
    without a PNG in the download are left out and logged (such images are never in a shard)."""
    boxes = read_boxes(box_path)
    metadata_path, images = metadata_images(metadata_path)
    check_against_metadata(boxes, images, metadata_path)
    sizes = png_sizes(download_dir, boxes["image_index"])
    no_png = sorted(set(boxes["image_index"]) - set(sizes))
    if no_png:
        LOG.warning(
            "%d boxed image(s) have no PNG in %s and are left out (e.g. %s)",
            len(no_png),
            download_dir,
            no_png[:3],
        )
    boxes = boxes[boxes["image_index"].isin(sizes)].reset_index(drop=True)
    check_inside(boxes, sizes, box_path)
    boxes["png_width"] = [sizes[n][0] for n in boxes["image_index"]]
    boxes["png_height"] = [sizes[n][1] for n in boxes["image_index"]]
    out = boxes[PREPARED_COLUMNS].sort_values(["image_index", "label"], kind="stable")
    write_csv(out_csv, out)
    LOG.info(
        "%d box(es) of %d image(s) checked: %s",
        len(out),
        out["image_index"].nunique(),
        out["label"].value_counts().to_dict(),
    )
    return out.reset_index(drop=True)


def read_prepared(path) -> pd.DataFrame:
    """``prepare``'s table."""
    try:
        df = pd.read_csv(path, dtype={"image_index": str, "label": str})
    except (OSError, ValueError) as e:
        raise WorkflowError(f"Cannot read the checked boxes '{path}' ({e}).") from None
    missing = [c for c in PREPARED_COLUMNS if c not in df.columns]
    if missing:
        raise WorkflowError(f"The checked boxes '{path}' lack column(s) {missing}.")
    return df


def finding_boxes(prepared: pd.DataFrame, label: str) -> dict:
    """{image name: (x, y, w, h, png_width, png_height)} of the boxes of finding ``label``."""
    sub = prepared[prepared["label"] == label]
    return {
        r.image_index: (r.x, r.y, r.w, r.h, r.png_width, r.png_height)
        for r in sub.itertuples(index=False)
    }


def scale_box(box, png_size, image_size: int) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) in pixels of a PNG of ``png_size`` (width, height), in pixels of the
    shard image: ``shards.decode`` resizes the whole PNG to ``image_size`` squared (no crop, no
    pad; PIL maps pixel edges linearly), so x and w scale by image_size / width, y and h by
    image_size / height. Coordinates are continuous (pixel edges at integers)."""
    x, y, w, h = (float(v) for v in box)
    pw, ph = (float(v) for v in png_size)
    if not (pw > 0 and ph > 0 and image_size > 0):
        raise WorkflowError(f"scale_box: bad sizes (PNG {png_size}, image size {image_size}).")
    sx, sy = image_size / pw, image_size / ph
    return x * sx, y * sy, w * sx, h * sy


def box_weights(box, shape) -> np.ndarray:
    """Per pixel of an image of ``shape`` (H, W), the fraction of its area inside ``box``
    (x, y, w, h in that image's pixels; pixel (i, j) spans [j, j+1) x [i, i+1))."""
    x, y, w, h = (float(v) for v in box)
    H, W = shape

    def cover(lo, hi, n):
        edges = np.arange(n, dtype=float)
        return np.clip(np.minimum(edges + 1, hi) - np.maximum(edges, lo), 0.0, 1.0)

    return np.outer(cover(y, y + h, H), cover(x, x + w, W))


def energy_inside(clean_u8, adv_u8, box) -> dict:
    """The share of the perturbation's energy inside ``box`` (shard pixels): with delta =
    (adv - clean) / 255, sum(weight * delta^2) / sum(delta^2); beside it the box's share of the
    image area (what a spatially uniform perturbation gives) and their ratio (> 1: the
    perturbation concentrates in the box). NaN energy share for a zero perturbation."""
    c = np.asarray(clean_u8, dtype=np.float64)
    a = np.asarray(adv_u8, dtype=np.float64)
    if c.shape != a.shape or c.ndim != 2:
        raise WorkflowError(f"energy_inside: images {c.shape} and {a.shape} must be one 2-D shape.")
    d2 = ((a - c) / 255.0) ** 2
    wts = box_weights(box, c.shape)
    total = float(d2.sum())
    inside = float((wts * d2).sum()) / total if total > 0 else float("nan")
    area = float(wts.sum()) / c.size
    return {
        "energy_inside": inside,
        "area_share": area,
        "ratio": inside / area if area > 0 else float("nan"),
        "l2": float(np.sqrt(total)),
    }


def energy_table(
    image_index, clean_u8, adv_u8, label_of, finding: str, boxes: dict, size: int, drawn=None
):
    """One row per image of ``image_index`` with a box of ``finding`` (ENERGY_COLUMNS; the box in
    shard pixels; ``in_example_plot``: the name is in ``drawn``, the images the example plot
    shows); a header-only table when none has one."""
    drawn = set() if drawn is None else {str(n) for n in drawn}
    rows = []
    for i, name in enumerate(np.asarray(image_index).astype(str)):
        if name not in boxes:
            continue
        x, y, w, h, pw, ph = boxes[name]
        b = scale_box((x, y, w, h), (pw, ph), size)
        e = energy_inside(clean_u8[i], adv_u8[i], b)
        rows.append(
            {
                "image_index": name,
                "label": int(label_of[i]),
                "finding": finding,
                "box_x": b[0],
                "box_y": b[1],
                "box_w": b[2],
                "box_h": b[3],
                **e,
                "in_example_plot": name in drawn,
            }
        )
    return pd.DataFrame(rows, columns=ENERGY_COLUMNS)
