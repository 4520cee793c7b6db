"""The real ChestX-ray14 metadata as the synthetic generator's plan (``data.synthetic.metadata``).

The NIH metadata table (``Data_Entry_2017.csv`` of the Kaggle download, or the 2020 NIH
revision ``Data_Entry_2017_v2020.csv[.gz]``) lists every image with its patient, follow-up,
labels, age, sex and view. Given one, the generator draws an image for exactly those rows, so
patient structure, follow-ups, label co-occurrence and class imbalance are the real ones (the
images stay drawn: numbers are still a demonstration, not clinical results).

The table is on PyPI: the ``torchxrayvision`` 1.5.7 wheel ships the 2020 revision (112,120
rows, 30,805 patients). Fetch it (no torch needed; only this table, the expert labels and
the boxes beside it are extracted)::

    python -m cxrtransfer.data.nih_wheel DEST      (or: make real-metadata)

No public file holds the official ``train_val_list.txt`` / ``test_list.txt`` besides the
image download itself, so the generator derives a patient-wise split (``test_fraction`` of
the patients, seeded): the real official test list is enriched in follow-up-heavy patients
with findings, so split sizes differ from the official ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import LABELS, NO_FINDING, WorkflowError

WHEEL = "torchxrayvision==1.5.7"
MEMBER = "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz"
FILE_NAME = "Data_Entry_2017_v2020.csv.gz"
SHA256 = "9d4de640ee4f760215d8be98376b20387ca52f9c6b4d1b727cb588fb82f40b80"
DEFAULT_PATH = f"resources/nih-metadata/{FILE_NAME}"
REAL_COUNTS = {"images": 112_120, "patients": 30_805}
# The NIH boxes (data.bboxes, read by cxrtransfer.data.boxes), extracted from the same wheel. Kept
# here, not imported from boxes: a rule's code version covers every module its script imports
# (plan.code_version), and the ingest must not rerun for an edit of the box code.
BOXES_FILE_NAME = "BBox_List_2017.csv.gz"
BOXES_MEMBER = f"torchxrayvision/data/{BOXES_FILE_NAME}"
BOXES_SHA256 = "cf9dc6029f65daa8b389415b0546af0eeeb91fbac7d63ec49d7f8de2fd8f40cd"

# Columns every revision has (pandas splits the bracketed names at their commas); the sex
# column is "Patient Gender" (Kaggle 2017, NIH v2020) or "Patient Sex" (some copies).
REQUIRED = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age")
SEX_COLUMNS = ("Patient Gender", "Patient Sex")
VIEW = "View Position"
ORIGINAL = ("OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]")
EXPECTED_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NAME_RE = re.compile(r"^(\d{8})_(\d{3})\.png$")
# Headers of the other NIH tables people may point at by mistake: what each one is.
OTHER_TABLES = {
    "Bbox [x": "BBox_List_2017.csv (the bounding boxes)",
    "Set Id": "google2019_nih-chest-xray-labels.csv (the adjudicated labels of 4,376 images)",
    "Path": "a CheXpert-style table (image paths, not the NIH Data_Entry file)",
}
WHAT_TO_DO = (
    f"Point data.synthetic.metadata at the NIH table: `make real-metadata` writes "
    f"{DEFAULT_PATH} (from the {WHEEL} wheel on PyPI), or use Data_Entry_2017.csv of the "
    "Kaggle download. Its header must be: " + EXPECTED_HEADER
)


def duplicate_names(column: str, names: pd.Series) -> str | None:
    """The complaint about repeated image names in ``column`` (None if every name is once)."""
    dup = names.duplicated(keep=False)
    if not dup.any():
        return None
    return (
        f"column '{column}': {int(names.duplicated().sum())} duplicate image name(s) (e.g. "
        f"{sorted(set(names[dup]))[:3]}); every image must be listed once."
    )


def bad_image_names(column: str, names: pd.Series) -> str | None:
    """The complaint about values of ``column`` that are not image file names like
    00000013_005.png (None if all are)."""
    bad = ~names.str.fullmatch(r"\d{8}_\d{3}\.png")
    if not bad.any():
        return None
    return (
        f"column '{column}': {int(bad.sum())} value(s) are not image file names like "
        f"00000013_005.png (e.g. {names[bad].head(3).tolist()})."
    )


def read_text_table(path: Path, fail) -> pd.DataFrame:
    """A CSV table (``.csv`` or ``.csv.gz``) as text columns with stripped names, without the
    empty ``Unnamed`` columns of trailing commas; an unreadable file raises
    ``fail(path, what)`` (the reader's own message, naming its config key)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except Exception as e:  # noqa: BLE001 (gzip, encoding and parser errors alike)
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise fail(path, f"cannot be read as a CSV table ({msg}).") from None
    df.columns = [c.strip() for c in df.columns]
    return df.loc[:, [c for c in df.columns if not c.startswith("Unnamed")]]


def absent_names(names, metadata_images) -> list[str]:
    """The image names of ``names`` that ``metadata_images`` lacks, sorted."""
    return sorted(set(map(str, names)) - set(map(str, metadata_images)))


def metadata_images(path) -> tuple[Path, pd.Series]:
    """(the metadata file, its image names) of a download's ``Data_Entry_2017.csv`` (``path``
    the file or the download's folder): what expert labels and boxes are checked against."""
    path = Path(path)
    if path.is_dir():
        path = path / "Data_Entry_2017.csv"
    try:
        meta = pd.read_csv(path, usecols=["Image Index"], dtype=str)
    except (OSError, ValueError) as e:
        raise WorkflowError(f"Cannot read the metadata '{path}' ({e}).") from None
    return path, meta["Image Index"].str.strip()


def _fail(path, what: str) -> WorkflowError:
    return WorkflowError(f"data.synthetic.metadata '{path}': {what} {WHAT_TO_DO}")


def read_metadata(path: str | Path) -> pd.DataFrame:
    """Read and check a ChestX-ray14 metadata table (csv or csv.gz, 2017 Kaggle or v2020).

    Returns one row per image, in the file's order, with columns image_index, finding_labels,
    follow_up, patient_id, age (int years), sex, view, and the original-image columns as text
    (width, height, spacing_x, spacing_y; empty when the file lacks them). Raises WorkflowError
    naming the file, the column and what to do for a wrong table or revision, missing columns,
    bad values, unknown labels or duplicate image names.
    """
    path = Path(path)
    _check_exists(path)
    df = read_text_table(path, _fail)
    _check_columns(path, df)
    names, patient_in_name = _image_names(path, df)
    pid = _patient_ids(path, df, names, patient_in_name)
    follow = _follow_ups(path, df, names)
    age = _ages(path, df)
    labels = _finding_labels(path, df, names)
    dup = duplicate_names("Image Index", names)
    if dup:
        raise _fail(path, f"{dup} Remove the repeated rows (or fetch the file again).")
    out = _metadata_frame(df, names, labels, follow, pid, age)
    out.attrs["path"] = str(path)
    return out.reset_index(drop=True)


def _check_exists(path: Path) -> None:
    """A missing file: how to fetch the table."""
    if not path.is_file():
        raise WorkflowError(
            f"data.synthetic.metadata '{path}' does not exist. Run `make real-metadata` (it "
            f"downloads the {WHEEL} wheel from PyPI and extracts {FILE_NAME} to "
            f"{DEFAULT_PATH}), or point the key at a Data_Entry_2017.csv you have."
        )


def _check_columns(path: Path, df: pd.DataFrame) -> None:
    """Another NIH table, missing columns or no rows."""
    if "Finding Labels" not in df.columns:
        for key, what in OTHER_TABLES.items():
            if any(c.startswith(key) for c in df.columns):
                raise _fail(path, f"this looks like {what}, not the Data_Entry table.")
    missing = [c for c in REQUIRED if c not in df.columns]
    if not any(c in df.columns for c in SEX_COLUMNS):
        missing.append(" or ".join(repr(c) for c in SEX_COLUMNS))
    if missing:
        raise _fail(
            path,
            f"missing column(s) {missing} (found {list(df.columns)}): another table or "
            "revision of the file.",
        )
    if df.empty:
        raise _fail(path, "the table has a header but no rows.")


def _image_names(path: Path, df: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(the image names, the patient number each name holds as text); bare names only."""
    names = df["Image Index"].str.strip()
    parts = names.str.extract(NAME_RE)
    bad = parts[0].isna()
    if bad.any():
        raise _fail(
            path,
            f"column 'Image Index': {int(bad.sum())} value(s) are not bare image file names "
            f"like 00000013_005.png (e.g. {names[bad].head(3).tolist()}): another revision "
            "or a derived table.",
        )
    return names, parts[0]


def _patient_ids(
    path: Path, df: pd.DataFrame, names: pd.Series, patient_in_name: pd.Series
) -> pd.Series:
    """The patient IDs (int64), numeric and agreeing with the image names."""
    pid = df["Patient ID"].str.strip()
    bad = ~pid.str.fullmatch(r"\d+")
    if bad.any():
        raise _fail(
            path,
            f"column 'Patient ID': {int(bad.sum())} non-numeric value(s) (rows of "
            f"{names[bad].head(3).tolist()}).",
        )
    pid = pid.astype(np.int64)
    bad = patient_in_name.astype(np.int64) != pid
    if bad.any():
        raise _fail(
            path,
            f"column 'Patient ID' disagrees with the patient number in 'Image Index' for "
            f"{int(bad.sum())} row(s) (e.g. {names[bad].head(3).tolist()}): the columns are "
            "shifted or the table is not ChestX-ray14's.",
        )
    return pid


def _follow_ups(path: Path, df: pd.DataFrame, names: pd.Series) -> pd.Series:
    """The follow-up numbers as text, checked numeric."""
    follow = df["Follow-up #"].str.strip()
    bad = ~follow.str.fullmatch(r"\d+")
    if bad.any():
        raise _fail(
            path,
            f"column 'Follow-up #': {int(bad.sum())} non-numeric value(s) (rows of "
            f"{names[bad].head(3).tolist()}).",
        )
    return follow


def _ages(path: Path, df: pd.DataFrame) -> pd.Series:
    """Ages in whole years (int64): 58 or '058Y' as is, months or days old as 0."""
    age_txt = df["Patient Age"].str.strip().str.upper()
    age_parts = age_txt.str.extract(r"^(\d+)([YMD]?)$")
    bad = age_parts[0].isna()
    if bad.any():
        raise _fail(
            path,
            f"column 'Patient Age': {int(bad.sum())} value(s) are neither years (58) nor "
            f"'058Y'/'006M'/'010D' strings (e.g. {age_txt[bad].head(3).tolist()}).",
        )
    age = age_parts[0].astype(np.int64)
    return age.where(age_parts[1].isin(["", "Y"]), 0)  # months or days old: 0 years


def _finding_labels(path: Path, df: pd.DataFrame, names: pd.Series) -> pd.Series:
    """The Finding Labels: known findings joined with '|', or No Finding alone."""
    labels = df["Finding Labels"].str.strip()
    unknown: dict[str, str] = {}
    for name, s in zip(names, labels, strict=True):
        for lab in s.split("|"):
            if lab != NO_FINDING and lab not in LABELS:
                unknown.setdefault(lab, name)
    if unknown:
        ex = [f"{lab!r} ({name})" for lab, name in list(unknown.items())[:5]]
        raise _fail(
            path,
            f"column 'Finding Labels' holds unknown label(s) {', '.join(ex)}. Known: "
            f"{NO_FINDING!r} and {', '.join(LABELS)} (joined with '|', Pleural_Thickening "
            "with its underscore).",
        )
    mixed = labels.str.contains(NO_FINDING, regex=False) & labels.str.contains("|", regex=False)
    if mixed.any():
        raise _fail(
            path,
            f"column 'Finding Labels': {int(mixed.sum())} row(s) combine {NO_FINDING!r} with a "
            f"finding (e.g. {names[mixed].head(3).tolist()}).",
        )
    return labels


def _metadata_frame(df, names, labels, follow, pid, age) -> pd.DataFrame:
    """The checked columns under the generator's names (original-image columns empty when the
    file lacks them)."""
    sex_col = next(c for c in SEX_COLUMNS if c in df.columns)
    empty = pd.Series("", index=df.index)
    return pd.DataFrame(
        {
            "image_index": names,
            "finding_labels": labels,
            "follow_up": follow.astype(np.int64),
            "patient_id": pid,
            "age": age,
            "sex": df[sex_col].str.strip(),
            "view": df[VIEW].str.strip() if VIEW in df.columns else empty,
            "width": df.get(ORIGINAL[0], empty).str.strip(),
            "height": df.get(ORIGINAL[1], empty).str.strip(),
            "spacing_x": _spacing(df.get(ORIGINAL[2], empty)),
            "spacing_y": _spacing(df.get(ORIGINAL[3], empty)),
        }
    )


def _spacing(s: pd.Series) -> pd.Series:
    """Pixel spacings as the Kaggle file writes them (0.143; the v2020 file has binary-float
    artefacts like 0.14300000000000002); non-numbers kept as they are."""
    num = pd.to_numeric(s.str.strip(), errors="coerce")
    return pd.Series(
        [f"{v:.6g}" if np.isfinite(v) else t.strip() for v, t in zip(num, s, strict=True)],
        index=s.index,
    )


def select_patients(meta: pd.DataFrame, max_patients: int | None, seed: int) -> pd.DataFrame:
    """All rows, or every row of ``max_patients`` patients drawn with ``seed`` (whole
    patients: all their follow-ups). Keeps the file's row order."""
    patients = np.unique(meta["patient_id"].to_numpy())
    if max_patients is None or max_patients >= len(patients):
        return meta
    rng = np.random.default_rng([seed, 0])
    keep = rng.choice(patients, size=int(max_patients), replace=False)
    return meta[meta["patient_id"].isin(keep)].reset_index(drop=True)


def split_test_patients(meta: pd.DataFrame, test_fraction: float, seed: int) -> set[int]:
    """A seeded patient-wise test split: ``test_fraction`` of the patients (at least one,
    never all of them). Not the official list, which is not in the public metadata."""
    patients = np.unique(meta["patient_id"].to_numpy())
    if len(patients) < 2:
        raise WorkflowError(
            f"data.synthetic.metadata '{meta.attrs.get('path', '')}': {len(patients)} patient "
            "selected; a patient-wise train/test split needs at least two "
            "(raise data.synthetic.max_patients)."
        )
    n_test = min(len(patients) - 1, max(1, int(round(test_fraction * len(patients)))))
    rng = np.random.default_rng([seed, 1])
    return {int(p) for p in rng.permutation(patients)[:n_test]}
