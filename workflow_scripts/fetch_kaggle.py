"""Rule fetch_kaggle (optional): download the real dataset with the kaggle CLI."""

import os
import shutil
import subprocess
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.utils import LOG, run_main


def main(sm):
    dest = Path(sm.params.dest)
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
    dest.mkdir(parents=True, exist_ok=True)
    cmd = ["kaggle", "datasets", "download", "-d", sm.params.dataset, "-p", str(dest), "--unzip"]
    LOG.info("running: %s (about 45 GB)", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise WorkflowError(
            f"kaggle download failed (exit {r.returncode}): {' / '.join(tail)}. Check the "
            "network, your credentials and that you accepted the dataset's terms."
        )
    if not (dest / "Data_Entry_2017.csv").is_file():
        raise WorkflowError(f"kaggle finished but {dest}/Data_Entry_2017.csv is missing.")


run_main(main, snakemake)  # noqa: F821
