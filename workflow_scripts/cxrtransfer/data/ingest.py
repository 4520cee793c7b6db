"""Ingest a Kaggle-layout ChestX-ray14 download (real or synthetic): check it, split it by
patient, and write one manifest per task.

A binary task is a positive finding versus ``No Finding``: negatives are ``No Finding`` images,
positives carry the task's label (possibly with other findings). Images with other findings
only are not part of the task. A multi-label task (a list of findings) holds every image; its
shards carry one target column per finding (``shards.label_matrix``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import LABELS, NO_FINDING, WorkflowError
from cxrtransfer.core.logs import LOG

CSV_NAME = "Data_Entry_2017.csv"
TRAIN_VAL = "train_val_list.txt"
TEST = "test_list.txt"
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# file_bytes / file_mtime_ns identify the image file version: a changed or regenerated image
# changes the manifest, so the shards built from it rerun (images are not Snakemake inputs).
MANIFEST_COLUMNS = [
    "image_index",
    "patient_id",
    "label",
    "split",
    "path",
    "finding_labels",
    "file_bytes",
    "file_mtime_ns",
]


def download_files(root: str | Path) -> dict[str, Path]:
    """The metadata files of a Kaggle-layout download, checked to exist (read only)."""
    root = Path(root)
    if not root.is_dir():
        raise WorkflowError(
            f"data.kaggle_dir '{root}' is not a directory. Point it at the extracted Kaggle "
            "download (the folder holding Data_Entry_2017.csv, train_val_list.txt, "
            "test_list.txt and images_001/ ... images_012/), or set data.source: synthetic. "
            "To download it: python -m cxrtransfer.data.fetch DEST (needs Kaggle credentials)."
        )
    files = {"csv": root / CSV_NAME, "train_val": root / TRAIN_VAL, "test": root / TEST}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise WorkflowError(
            f"data.kaggle_dir '{root}' does not look like the NIH ChestX-ray14 Kaggle download: "
            f"missing {', '.join(missing)}. Expected Data_Entry_2017.csv, train_val_list.txt, "
            "test_list.txt and images_001/images/*.png ... at its top level "
            "(kaggle datasets download -d nih-chest-xrays/data, then unzip)."
        )
    return files


def check_download(root: str | Path) -> Path:
    """Fail with one message naming everything missing when ``root`` is not a Kaggle download
    (its metadata files and its image folders); checked before any job is planned."""
    root = Path(root)
    if not root.is_dir():
        download_files(root)  # the message for a wrong path
    missing = [name for name in (CSV_NAME, TRAIN_VAL, TEST) if not (root / name).is_file()]
    if not any(root.glob("images_*/images")) and not (root / "images").is_dir():
        missing.append("the image folders images_001/images/ ... images_012/images/")
    if missing:
        raise WorkflowError(
            f"data.kaggle_dir '{root}' does not look like the NIH ChestX-ray14 Kaggle download: "
            f"missing {', '.join(missing)}. Expected Data_Entry_2017.csv, train_val_list.txt, "
            "test_list.txt and images_001/images/*.png ... at its top level (kaggle datasets "
            "download -d nih-chest-xrays/data, then unzip; or python -m cxrtransfer.data.fetch "
            "DEST). Was the archive fully extracted?"
        )
    return root


def read_data_entry(path: str | Path) -> pd.DataFrame:
    """Read Data_Entry_2017.csv (2017 Kaggle file or the 2020 NIH revision).

    Handles the trailing comma (an ``Unnamed: 11`` column), the bracketed column names that
    pandas splits, ``Patient Sex`` vs ``Patient Gender`` and ages as ``058Y`` strings or ints.
    Returns columns image_index, finding_labels, follow_up, patient_id, age, sex, view.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except Exception as e:  # noqa: BLE001
        raise WorkflowError(f"Cannot read '{path}' as CSV: {e}") from None
    df.columns = [c.strip() for c in df.columns]
    df = df.loc[:, [c for c in df.columns if not c.startswith("Unnamed")]]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise WorkflowError(
            f"'{path}' lacks the column(s) {missing}; found {list(df.columns)}. Expected the "
            "ChestX-ray14 header 'Image Index,Finding Labels,Follow-up #,Patient ID,...'."
        )
    sex_col = "Patient Sex" if "Patient Sex" in df.columns else "Patient Gender"
    out = pd.DataFrame(
        {
            "image_index": df["Image Index"].str.strip(),
            "finding_labels": df["Finding Labels"].str.strip(),
            "follow_up": df.get("Follow-up #", pd.Series("", index=df.index)),
            "patient_id": df["Patient ID"].str.strip(),
            "age": _parse_age(df.get("Patient Age", pd.Series("", index=df.index))),
            "sex": df.get(sex_col, pd.Series("", index=df.index)),
            "view": df.get("View Position", pd.Series("", index=df.index)),
        }
    )
    bad_pid = ~out["patient_id"].str.fullmatch(r"\d+")
    if bad_pid.any():
        ex = out.loc[bad_pid, "image_index"].head(3).tolist()
        raise WorkflowError(
            f"'{path}': {int(bad_pid.sum())} rows have a non-numeric Patient ID (e.g. {ex})."
        )
    out["patient_id"] = out["patient_id"].astype(int)
    unknown = set()
    for labels in out["finding_labels"]:
        for lab in labels.split("|"):
            if lab != NO_FINDING and lab not in LABELS:
                unknown.add(lab)
    if unknown:
        raise WorkflowError(
            f"'{path}' contains unknown label name(s) {sorted(unknown)} in 'Finding Labels'. "
            f"Known: {NO_FINDING!r} and {', '.join(LABELS)}."
        )
    dup = out["image_index"].duplicated(keep="first")
    if dup.any():
        same = out[out["image_index"].duplicated(keep=False)].groupby("image_index")
        conflicting = [k for k, g in same if g["finding_labels"].nunique() > 1]
        if conflicting:
            raise WorkflowError(
                f"'{path}' lists {len(conflicting)} image(s) twice with different labels "
                f"(e.g. {conflicting[:3]}); fix the CSV."
            )
        LOG.warning("%s: dropped %d duplicate rows", path, int(dup.sum()))
        out = out[~dup].reset_index(drop=True)
    out.attrs["duplicates_dropped"] = int(dup.sum())
    return out


def _parse_age(s: pd.Series) -> pd.Series:
    txt = s.astype(str).str.strip().str.upper()
    num = pd.to_numeric(txt.str.extract(r"^(\d+)", expand=False), errors="coerce")
    months = txt.str.endswith("M")
    num = num.where(~months, num / 12.0)
    return num


def read_list(path: str | Path) -> list[str]:
    names = [ln.strip() for ln in Path(path).read_text().splitlines()]
    return [n for n in names if n]


def image_paths(root: str | Path) -> dict[str, Path]:
    """Map image file name -> path for every PNG under images_*/images (or images/)."""
    root = Path(root)
    paths: dict[str, Path] = {}
    dirs = sorted(root.glob("images_*/images")) or [root / "images"]
    for d in dirs:
        with os.scandir(d) as it:
            for e in it:
                if e.name.endswith(".png"):
                    paths[e.name] = Path(e.path)
    return paths


def quick_check(path: Path) -> str | None:
    """Cheap check before decoding: None if plausible, else the reason for rejection."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing on disk"
    if st.st_size == 0:
        return "zero-byte file"
    with open(path, "rb") as f:
        head = f.read(8)
    if head != PNG_SIGNATURE:
        return "not a PNG file (bad signature)"
    return None


def split_patients(
    entries: pd.DataFrame, train_val: list[str], test: list[str], val_fraction: float, seed: int
) -> pd.Series:
    """Assign train / val / test per image: test from the official list, val by patient."""
    by_name = entries.set_index("image_index")["patient_id"]
    tv_set, te_set = set(train_val), set(test)
    both = tv_set & te_set
    if both:
        raise WorkflowError(
            f"train_val_list.txt and test_list.txt share {len(both)} image(s) "
            f"(e.g. {sorted(both)[:3]}); the official split must be disjoint."
        )
    tv_pat = set(by_name.reindex(list(tv_set)).dropna().astype(int))
    te_pat = set(by_name.reindex(list(te_set)).dropna().astype(int))
    leak = tv_pat & te_pat
    if leak:
        raise WorkflowError(
            f"{len(leak)} patient(s) appear in both train_val_list.txt and test_list.txt "
            f"(e.g. patient ids {sorted(leak)[:5]}): the lists are not patient-wise. Refusing "
            "to continue because test images would leak into training."
        )
    rng = np.random.default_rng(seed)
    pats = np.array(sorted(tv_pat))
    rng.shuffle(pats)
    n_val = int(round(val_fraction * len(pats)))
    val_pat = set(pats[:n_val].tolist())
    split = pd.Series(pd.NA, index=entries.index, dtype="object")
    in_test = entries["image_index"].isin(te_set)
    in_tv = entries["image_index"].isin(tv_set)
    split[in_test] = "test"
    split[in_tv & entries["patient_id"].isin(val_pat)] = "val"
    split[in_tv & ~entries["patient_id"].isin(val_pat)] = "train"
    return split


def build_manifest(
    root: str | Path, label: str | list[str], val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Return (manifest, rejected, summary) for the binary task ``label`` vs No Finding, or,
    when ``label`` is a list of findings, for the multi-label task of those findings: every
    listed image (No Finding images and images with other findings only are all-zero rows),
    ``label`` = 1 if the image has any of them. The patient-wise split does not depend on
    the task (the same val patients for every task)."""
    multi = isinstance(label, list | tuple)
    wanted = list(label) if multi else [label]
    unknown = [x for x in wanted if x not in LABELS]
    if unknown or not wanted:
        raise WorkflowError(f"Unknown label(s) {unknown or wanted}. Known: {', '.join(LABELS)}.")
    if multi and len(set(wanted)) != len(wanted):
        raise WorkflowError(f"The multi-label task's labels {wanted} name a finding twice.")
    root = check_download(root)
    entries = read_data_entry(root / CSV_NAME)
    train_val, test = read_list(root / TRAIN_VAL), read_list(root / TEST)
    entries["split"] = split_patients(entries, train_val, test, val_fraction, seed)
    not_listed = entries["split"].isna()
    if not_listed.any():
        LOG.warning("%d CSV rows are in neither list; they are not used", int(not_listed.sum()))
    labsets = entries["finding_labels"].str.split("|")
    pos = labsets.apply(lambda s: any(x in s for x in wanted))
    neg = entries["finding_labels"] == NO_FINDING
    task = entries[(multi | pos | neg) & ~not_listed].copy()
    task["label"] = pos[task.index].astype("int8")
    paths = image_paths(root)
    task["path"] = [str(paths.get(n, root / "MISSING" / n)) for n in task["image_index"]]
    reasons = [
        "missing on disk" if n not in paths else quick_check(Path(p))
        for n, p in zip(task["image_index"], task["path"], strict=True)
    ]
    task["reason"] = reasons
    stats = [os.stat(p) if r is None else None for p, r in zip(task["path"], reasons, strict=True)]
    task["file_bytes"] = [st.st_size if st else -1 for st in stats]
    task["file_mtime_ns"] = [st.st_mtime_ns if st else -1 for st in stats]
    rejected = task[task["reason"].notna()][
        ["image_index", "patient_id", "split", "path", "reason"]
    ]
    manifest = task[task["reason"].isna()][MANIFEST_COLUMNS].reset_index(drop=True)
    manifest = manifest.sort_values(["split", "image_index"]).reset_index(drop=True)
    summary = (
        manifest.groupby(["split", "label"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=["train", "val", "test"], columns=[0, 1], fill_value=0)
    )
    summary.columns = ["negatives", "positives"]
    summary = summary.reset_index()
    summary["rejected"] = [int((rejected["split"] == s).sum()) for s in summary["split"]]
    summary["patients"] = [
        manifest.loc[manifest["split"] == s, "patient_id"].nunique() for s in summary["split"]
    ]
    summary.insert(0, "label", "|".join(wanted))
    for _, row in summary.iterrows():
        if row["positives"] == 0 or row["negatives"] == 0:
            raise WorkflowError(
                f"Task '{'|'.join(wanted)}': the {row['split']} split has {row['positives']} "
                f"positives and {row['negatives']} negatives; a task needs both. Use more data (for "
                "the synthetic set: more data.synthetic.n_patients or a higher prevalence)."
            )
    return manifest, rejected.reset_index(drop=True), summary


def check_rejected_fraction(n_rejected: int, n_total: int, limit: float, where: str) -> None:
    if n_total and n_rejected / n_total > limit:
        raise WorkflowError(
            f"{where}: {n_rejected} of {n_total} images ({n_rejected / n_total:.1%}) were "
            f"rejected, more than data.max_rejected_fraction = {limit:.1%}. See the rejected.csv "
            "beside the output for the reasons; repair or re-download those files, or raise "
            "the limit if you accept losing them."
        )
