"""Shared fixtures and helpers of the tests (one folder per library package, plus workflow/ for
the end-to-end, cluster, docs and house tests): a small synthetic Kaggle-layout download and its
shards, a copy of the workflow, small models' training settings, reordered configs."""

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow_scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from cxrtransfer.config import runconfig  # noqa: E402
from cxrtransfer.data.synthetic import SyntheticSpec, generate  # noqa: E402
from cxrtransfer.models.settings import TRAINING_DEFAULTS  # noqa: E402

# The longest test files, longest first (durations measured with `pytest --durations=0`): with
# `make test` (pytest-xdist, one file per worker at a time, --no-loadscope-reorder) they start
# first and the short files fill the other worker meanwhile, instead of one long file starting
# last while the other worker has nothing left to do.
LONGEST_FIRST = ("test_slurm.py", "test_workflow.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def small_download(tmp_path_factory) -> Path:
    """A small synthetic download (read-only for tests; copy it before changing it)."""
    out = tmp_path_factory.mktemp("download") / "nih"
    spec = SyntheticSpec.from_config(
        dict(
            seed=3,
            n_patients=240,
            max_followups=4,
            image_size=64,
            images_per_folder=100,
            test_fraction=0.3,
            prevalence={"Pneumothorax": 0.5, "Cardiomegaly": 0.5},
            rgba_fraction=0.05,
            signal=2.0,
        )
    )
    generate(out, spec)
    return out


@pytest.fixture(scope="session")
def pneumothorax_shards(small_download, tmp_path_factory) -> dict:
    """Shards of the Pneumothorax task at 64 px: {split: [paths]}."""
    from cxrtransfer.data.ingest import build_manifest
    from cxrtransfer.data.shards import n_shards, shard_rows, write_shard

    manifest, _, _ = build_manifest(small_download, "Pneumothorax", 0.2, 1)
    out = tmp_path_factory.mktemp("shards")
    paths = {}
    for split in ("train", "val", "test"):
        n = int((manifest["split"] == split).sum())
        paths[split] = []
        for i in range(n_shards(n, 64)):
            p = out / split / f"{i:03d}.h5"
            write_shard(
                shard_rows(manifest, split, i, 64), p, 64, {"task": "pneumothorax", "split": split}
            )
            paths[split].append(p)
    return paths


@pytest.fixture(autouse=True)
def as_a_planned_job():
    """Library calls in tests run as a job of a planned run would (cxrtransfer.config.runconfig): the
    products they write record a config, which their readers check."""
    runconfig.check_job({}, {runconfig.ENV: runconfig.config_hash({})})
    yield
    runconfig._JOB.clear()


WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "config", "envs", "report", "profiles")


def workflow_copy(root: Path, dest: Path) -> Path:
    """A copy of the workflow's own files (no results, no .snakemake) at ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_PARTS:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    return dest


def training_settings(**kw) -> dict:
    """A model's training settings for a small test model: the schema's training defaults,
    no pretrained weights, all training patients, no augmentation or warm-up, seed 1;
    ``kw`` (name, task, label or labels, arch, image_size, epochs, ...) completes or
    overrides them."""
    return {
        **TRAINING_DEFAULTS,
        "seed": 1,
        "pretrained": "none",
        "train_subset": "all",
        "split_seed": 1,
        "augment": {},
        "learning_rate": 0.002,
        "warmup_epochs": 0,
        **kw,
    }


def reversed_mappings(obj):
    """The same config with every mapping's entries in reverse order (lists kept)."""
    if isinstance(obj, dict):
        return {k: reversed_mappings(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [reversed_mappings(v) for v in obj]
    return obj


def written(path: Path, text: str) -> Path:
    """``path`` after writing ``text`` to it."""
    path.write_text(text)
    return path
