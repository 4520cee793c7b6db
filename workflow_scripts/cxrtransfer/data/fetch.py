"""Download the real dataset with the kaggle CLI: an explicit command, never a workflow rule.

    python -m cxrtransfer.data.fetch DEST        (or: make fetch-kaggle DEST=...)

It is deliberately not a Snakemake rule: a rule whose output is a file of the user's download
could be scheduled implicitly, and Snakemake deletes a job's outputs before running it. This
command refuses to write into a folder that already holds a download.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.core.logs import LOG, setup_logging
from cxrtransfer.data.ingest import CSV_NAME

DATASET = "nih-chest-xrays/data"


def check_prerequisites() -> None:
    if shutil.which("kaggle") is None:
        raise WorkflowError(
            "The kaggle CLI is not installed. Install it (`.venv/bin/pip install kaggle`), put "
            "your API token in ~/.kaggle/kaggle.json (Kaggle > Settings > API > Create New "
            "Token), accept the dataset's terms on its Kaggle page, and rerun."
        )
    token = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle")) / "kaggle.json"
    if not token.is_file() and not (
        os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    ):
        raise WorkflowError(
            f"No Kaggle credentials: neither {token} nor KAGGLE_USERNAME/KAGGLE_KEY is set. "
            "Create an API token on kaggle.com (Settings > API) and save it there."
        )


def fetch(dest: str | Path, dataset: str = DATASET) -> Path:
    """Download and unzip ``dataset`` into ``dest`` (which must not hold a download yet)."""
    dest = Path(dest)
    if (dest / CSV_NAME).exists():
        raise WorkflowError(
            f"'{dest}' already holds {CSV_NAME}: refusing to download over an existing "
            "download. Point data.kaggle_dir at it, or choose an empty folder."
        )
    check_prerequisites()
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["kaggle", "datasets", "download", "-d", dataset, "-p", str(dest), "--unzip"]
    LOG.info("running: %s (about 45 GB)", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise WorkflowError(
            f"kaggle download failed (exit {r.returncode}): {' / '.join(tail)}. Check the "
            "network, your credentials and that you accepted the dataset's terms."
        )
    if not (dest / CSV_NAME).is_file():
        raise WorkflowError(f"kaggle finished but {dest}/{CSV_NAME} is missing.")
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cxrtransfer.data.fetch", description=__doc__)
    ap.add_argument(
        "dest", help="empty folder to download into, e.g. resources/nih-chest-xrays/data"
    )
    ap.add_argument("--dataset", default=DATASET)
    args = ap.parse_args(argv)
    setup_logging()
    try:
        fetch(args.dest, args.dataset)
    except WorkflowError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
