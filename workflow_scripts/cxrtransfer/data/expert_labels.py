"""Radiologist-adjudicated labels of NIH test images (``data.expert_labels``).

Majkowska et al. 2020 (Radiology) had 4,376 NIH ChestX-ray14 images re-read by radiologists
with adjudication, for four findings. The ``torchxrayvision`` 1.5.7 wheel ships them as one
combined file, ``torchxrayvision/data/google2019_nih-chest-xray-labels.csv.gz``: the
Data_Entry columns of each image (``Image Index``, ``Finding Labels``, ``Patient ID``, ...),
then ``Fracture, Pneumothorax, Airspace opacity, Nodule or mass`` as ``YES``/``NO`` and
``Set Id`` (``test``/``val``). That combined format is what this module reads (the ``Set Id``
and Data_Entry columns are optional, so a file of ``Image Index`` plus expert columns reads
too). Google's own release as separate files (per-reader labels, per-split files) is not
supported: its exact layout is not documented here.

The evaluation then scores every cell again on the test images that have an expert label,
with the expert label as truth (``EXPERT_COLUMN``: which expert column is the finding of an
NIH label; a task whose label has none is not evaluated against expert labels, which the
summary states).

``prepare`` checks the file against the download's metadata and writes the checked, normalised
table the evaluation reads (``image_index``, ``set_id``, one 0/1 column per expert finding).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import atomic_path, write_csv
from cxrtransfer.data.real_metadata import (
    absent_names,
    bad_image_names,
    duplicate_names,
    metadata_images,
    read_text_table,
)

FINDINGS = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
IMAGE = "Image Index"
SET_ID = "Set Id"
SET_IDS = {"test": "test", "val": "val", "validation": "val"}
VALUES = {"YES": 1, "NO": 0}
# The Data_Entry columns the combined file repeats (pandas splits the bracketed names).
METADATA_COLUMNS = (
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "Patient Sex",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
)
# The expert finding of an NIH label, where one is the same finding. "Nodule or mass" merges
# two NIH labels and "Airspace opacity" spans several (Consolidation, Infiltration,
# Pneumonia, ...): neither is the truth of one NIH label, so those tasks are not mapped.
EXPERT_COLUMN = {"Pneumothorax": "Pneumothorax"}
FILE_NAME = "google2019_nih-chest-xray-labels.csv.gz"
MEMBER = f"torchxrayvision/data/{FILE_NAME}"
SHA256 = "1d1b846e463753ed0219f67e21b10c8aef381897dbd64865c8191aa5794e8048"
DEFAULT_PATH = f"resources/nih-metadata/{FILE_NAME}"
WHAT_TO_DO = (
    f"data.expert_labels must be the combined Google expert-label file ({FILE_NAME} of the "
    f"torchxrayvision 1.5.7 wheel; `make real-metadata` writes it to {DEFAULT_PATH}): columns "
    f"'{IMAGE}', optionally the Data_Entry columns and '{SET_ID}' (test/val), and any of "
    f"{', '.join(repr(f) for f in FINDINGS)} as YES/NO."
)


def expert_column(label: str) -> str | None:
    """The expert column that is the finding ``label`` (an NIH label), or None."""
    return EXPERT_COLUMN.get(label)


def _fail(path, what: str) -> WorkflowError:
    return WorkflowError(f"data.expert_labels '{path}': {what} {WHAT_TO_DO}")


def read_expert_labels(path: str | Path) -> pd.DataFrame:
    """Read and check an expert-label file; return ``image_index``, ``set_id`` ("test", "val"
    or "" when the file has no Set Id) and one 0/1 int column per expert finding it holds.

    Raises WorkflowError naming the file, the column and what to do for: a missing or
    unreadable file, no ``Image Index`` or no expert column, unknown columns, values other
    than YES/NO (or test/val in Set Id), bad or duplicate image names."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "the file does not exist.")
    df = read_text_table(path, _fail)
    if IMAGE not in df.columns:
        raise _fail(path, f"no column '{IMAGE}' (found {list(df.columns)}).")
    known = {IMAGE, SET_ID, *FINDINGS, *METADATA_COLUMNS}
    unknown = [c for c in df.columns if c not in known]
    if unknown:
        raise _fail(
            path,
            f"unknown column(s) {unknown}: another table, or Google's per-reader/per-split "
            "release, which is not supported.",
        )
    findings = [f for f in FINDINGS if f in df.columns]
    if not findings:
        raise _fail(path, f"no expert-label column (found {list(df.columns)}).")
    if df.empty:
        raise _fail(path, "the table has a header but no rows.")
    names = df[IMAGE].str.strip()
    problem = bad_image_names(IMAGE, names)
    if problem:
        raise _fail(path, problem)
    dup = duplicate_names(IMAGE, names)
    if dup:
        raise _fail(path, dup)
    out = pd.DataFrame({"image_index": names})
    if SET_ID in df.columns:
        s = df[SET_ID].str.strip().str.lower()
        bad = ~s.isin(list(SET_IDS))
        if bad.any():
            raise _fail(
                path,
                f"column '{SET_ID}': unknown value(s) {sorted(set(df[SET_ID][bad]))[:5]} (rows "
                f"of {names[bad].head(3).tolist()}); expected test or val (validation).",
            )
        out["set_id"] = s.map(SET_IDS)
    else:
        out["set_id"] = ""
    for f in findings:
        v = df[f].str.strip().str.upper()
        bad = ~v.isin(list(VALUES))
        if bad.any():
            raise _fail(
                path,
                f"column '{f}': unknown value(s) {sorted(set(df[f][bad]))[:5]} (rows of "
                f"{names[bad].head(3).tolist()}); expected YES or NO.",
            )
        out[f] = v.map(VALUES).astype(np.int64)
    out.attrs["path"] = str(path)
    return out


def check_against_metadata(labels: pd.DataFrame, metadata_images, metadata_path) -> None:
    """Every image of the expert file must be an image of the download's metadata."""
    absent = absent_names(labels["image_index"], metadata_images)
    if absent:
        raise WorkflowError(
            f"data.expert_labels '{labels.attrs.get('path', '')}': column '{IMAGE}': "
            f"{len(absent)} of {len(labels)} image(s) are absent from the download's metadata "
            f"'{metadata_path}' (e.g. {absent[:3]}): the expert labels belong to another "
            "download or dataset. Point data.expert_labels at the file for this download (with "
            "data.source: synthetic, `data.expert_labels: synthetic` uses the generator's)."
        )


def prepare(expert_path, metadata_path, out_csv, column: str) -> pd.DataFrame:
    """Read and check the expert file against the download's Data_Entry table (a file, or the
    download folder holding Data_Entry_2017.csv) and write one finding's labels, the table the
    evaluation reads: image_index, set_id, expert_label (0/1), sorted by image."""
    labels = read_expert_labels(expert_path)
    if column not in labels.columns:
        raise _fail(
            expert_path,
            f"no column '{column}', the expert finding of this task (columns: "
            f"{list(labels.columns)}).",
        )
    metadata_path, images = metadata_images(metadata_path)
    check_against_metadata(labels, images, metadata_path)
    out = labels[["image_index", "set_id", column]].rename(columns={column: "expert_label"})
    out = out.sort_values("image_index", kind="stable").reset_index(drop=True)
    write_csv(out_csv, out)
    return out


def read_prepared(path) -> dict[str, int]:
    """{image_index: expert label} from ``prepare``'s table."""
    try:
        df = pd.read_csv(path, dtype={"image_index": str})
        return dict(zip(df["image_index"], df["expert_label"].astype(int), strict=True))
    except (OSError, KeyError, ValueError) as e:
        raise WorkflowError(f"Cannot read the expert labels '{path}' ({e}).") from None


def write_combined(path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the Data_Entry columns, the findings as YES/NO and Set Id)
    in the combined format, gzipped without a timestamp (same rows, same bytes)."""
    header = [
        IMAGE,
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
        *FINDINGS,
        SET_ID,
    ]
    text = io.StringIO()
    text.write(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View "
        "Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
        + ",".join(FINDINGS)
        + f",{SET_ID}\n"
    )
    for r in rows:
        text.write(",".join(str(r[h]) for h in header) + "\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as f:
            f.write(text.getvalue().encode())
