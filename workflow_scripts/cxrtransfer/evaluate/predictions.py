"""Per-example prediction files of a target model: their format and their checked reader
(``evaluate.predict`` writes them).

``results/predictions/{target}/clean/{data_task}.csv``: image_index, patient_id, label, prob
(the target's probability of the finding), checkpoint_sha256 (of the target checkpoint),
config_sha256 and planned_config_sha256 (the config the job ran with and the one its run
planned: ``runconfig``), one row per image of the data task's test shards, in shard order.
``results/predictions/{target}/adv/{set}.csv``: the same plus source_clean_prob,
source_adv_prob, l2, linf (copied from the attack caches) and source_checkpoint_sha256.

A consumer checks every file against what it claims to describe: the rows and image set of
its shards, and the checkpoints that are current now.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.files import FIX_DAMAGED

CLEAN_COLUMNS = (
    "image_index",
    "patient_id",
    "label",
    "prob",
    "checkpoint_sha256",
    *runconfig.FIELDS,
)
ADV_COLUMNS = (
    *CLEAN_COLUMNS,
    "source_clean_prob",
    "source_adv_prob",
    "l2",
    "linf",
    "source_checkpoint_sha256",
)
_FIX = FIX_DAMAGED


def read_prediction_file(
    path,
    columns=CLEAN_COLUMNS,
    expected_images: np.ndarray | None = None,
    checkpoint_sha256: str | None = None,
    source_checkpoint_sha256: str | None = None,
) -> pd.DataFrame:
    """Read one prediction file and check it is complete and current, or raise naming it.

    Checks: it ends with a newline (a file cut inside its last line is truncated), has the
    columns, finite probabilities in [0, 1], exactly the images of its shards in order (when
    ``expected_images`` is given), and was made by the given checkpoints."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WorkflowError(f"Cannot read predictions '{path}' ({e}). {_FIX}") from None
    if not raw.endswith(b"\n"):
        raise WorkflowError(f"Predictions '{path}' are truncated (cut inside a line). {_FIX}")
    try:
        frame = pd.read_csv(
            path,
            dtype={
                "image_index": str,
                "checkpoint_sha256": str,
                **dict.fromkeys(runconfig.FIELDS, str),
            },
        )
    except (ValueError, pd.errors.ParserError) as e:
        raise WorkflowError(f"Cannot parse predictions '{path}' ({e}). {_FIX}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WorkflowError(
            f"Predictions '{path}' lack column(s) {', '.join(missing)} (written by an older "
            f"version of the workflow?). {_FIX}"
        )
    runconfig.check_record(
        {
            f: (frame[f].iloc[0] if len(frame) and frame[f].nunique() == 1 else None)
            for f in runconfig.FIELDS
            if f in frame.columns
        },
        path,
    )
    for col in [c for c in ("prob", "source_clean_prob", "source_adv_prob") if c in columns]:
        x = pd.to_numeric(frame[col], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(x) & (x >= 0) & (x <= 1)):
            raise WorkflowError(f"Predictions '{path}': column {col} has values outside [0, 1].")
    if expected_images is not None:
        got = frame["image_index"].to_numpy(str)
        if len(got) != len(expected_images) or not np.array_equal(got, expected_images):
            raise WorkflowError(
                f"Predictions '{path}' hold {len(got)} rows but their shards have "
                f"{len(expected_images)} images (or other images): the file is truncated or "
                f"stale. {_FIX}"
            )
    for col, want in (
        ("checkpoint_sha256", checkpoint_sha256),
        ("source_checkpoint_sha256", source_checkpoint_sha256),
    ):
        if want is not None and not (frame[col].astype(str) == want).all():
            raise WorkflowError(
                f"Predictions '{path}' were made with another checkpoint than the current one "
                f"({col} differs): they are stale. {_FIX}"
            )
    return frame


def shard_images(path) -> np.ndarray:
    """The image_index of a shard or attack cache, in file order (cheap: no pixels read)."""
    try:
        with h5py.File(path, "r") as f:
            return f["image_index"][...].astype(str)
    except (OSError, KeyError) as e:
        raise WorkflowError(f"Cannot read '{path}' ({e}): truncated or damaged. {_FIX}") from None


def read_predictions(
    path,
    columns=CLEAN_COLUMNS,
    shard_paths=None,
    checkpoint_sha256: str | None = None,
    source_checkpoint_sha256: str | None = None,
) -> pd.DataFrame:
    """Read and check the prediction file of a whole set: its rows must be the images of
    ``shard_paths`` (the test shards, in order) when given."""
    expected = None
    if shard_paths is not None:
        shard_paths = list(shard_paths)
        if not shard_paths:
            raise WorkflowError(f"No test shards given to check predictions '{path}' against.")
        expected = np.concatenate([shard_images(p) for p in shard_paths])
    return read_prediction_file(
        path, columns, expected, checkpoint_sha256, source_checkpoint_sha256
    )
