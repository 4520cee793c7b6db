"""Fetch the real NIH metadata table, the Google expert labels and the NIH boxes from the
torchxrayvision 1.5.7 wheel on PyPI (pip download, no install, no torch)::

    python -m cxrtransfer.data.nih_wheel DEST      (or: make real-metadata)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.data import expert_labels as E
from cxrtransfer.data.real_metadata import (
    BOXES_FILE_NAME,
    BOXES_MEMBER,
    BOXES_SHA256,
    DEFAULT_PATH,
    FILE_NAME,
    MEMBER,
    SHA256,
    WHEEL,
    read_metadata,
)

# ----------------------------------------------------------------------------------------------
# Fetching the 2020 revision from PyPI
# ----------------------------------------------------------------------------------------------


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(dest: str | Path, python: str = sys.executable) -> Path:
    """Download the torchxrayvision wheel (pip, no dependencies, not installed), extract the
    metadata table to ``dest`` and the Google expert labels and the NIH boxes beside it
    (atomically), and check their SHA-256."""
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix="real_metadata_") as tmp:
        cmd = [python, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", tmp]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            detail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise WorkflowError(
                f"Could not download {WHEEL} from PyPI (`{' '.join(cmd[2:])}` failed: "
                f"{' / '.join(detail)}). This needs network access to PyPI (or a pip index "
                "configured with PIP_INDEX_URL). Offline, copy the file from a machine that "
                f"has it: {FILE_NAME} from the wheel's torchxrayvision/data/, or the Kaggle "
                f"Data_Entry_2017.csv, to {dest}."
            )
        wheels = list(Path(tmp).glob("torchxrayvision-*.whl"))
        if len(wheels) != 1:
            raise WorkflowError(f"pip download of {WHEEL} gave {wheels}, expected one wheel.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        # the metadata table, and beside it the Google expert labels (data.expert_labels) and
        # the NIH boxes (data.bboxes)
        for member, out, want in (
            (MEMBER, dest, SHA256),
            (E.MEMBER, dest.parent / E.FILE_NAME, E.SHA256),
            (BOXES_MEMBER, dest.parent / BOXES_FILE_NAME, BOXES_SHA256),
        ):
            _extract(wheels[0], member, out, want)
    return dest


def _extract(wheel: Path, member: str, dest: Path, want: str) -> None:
    """Extract one member of the wheel to ``dest`` atomically, checking its SHA-256."""
    part = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(part, "wb") as f:
            f.write(src.read())
        digest = sha256(part)
        if digest != want:
            raise WorkflowError(
                f"{member} of {wheel.name} has SHA-256 {digest}, expected {want} "
                "(the file this workflow was measured with). Refusing to use it."
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dest", nargs="?", default=DEFAULT_PATH, help=f"default: {DEFAULT_PATH}")
    args = p.parse_args(argv)
    try:
        out = fetch(args.dest)
    except WorkflowError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    meta = read_metadata(out)
    print(f"{out}: {len(meta)} images of {meta['patient_id'].nunique()} patients (SHA-256 ok)")
    expert = E.read_expert_labels(out.parent / E.FILE_NAME)
    print(f"{out.parent / E.FILE_NAME}: expert labels of {len(expert)} images (SHA-256 ok)")
    boxes = pd.read_csv(out.parent / BOXES_FILE_NAME, usecols=["Image Index"], dtype=str)
    n_img = boxes["Image Index"].nunique()
    print(f"{out.parent / BOXES_FILE_NAME}: {len(boxes)} boxes of {n_img} images (SHA-256 ok)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
