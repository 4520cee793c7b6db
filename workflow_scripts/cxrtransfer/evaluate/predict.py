"""A target model's per-example predictions of whole clean test sets and adversarial sets
(rules predict_clean and predict_adv): the files ``evaluate.predictions`` describes and reads.

The writer needs the model (TensorFlow, loaded by ``models.inference`` once the job runs), the
readers do not: evaluation and plots import ``evaluate.predictions`` only, so their code version
does not cover this module or the inference code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.files import write_csv
from cxrtransfer.core.logs import LOG
from cxrtransfer.core.provenance import model_record
from cxrtransfer.data.adversarial_cache import read_attack
from cxrtransfer.data.shards import check_image_size, read_shard
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.inference import make_predict_fn, predict_probs


def predict_clean(
    *, model_path, metrics_path, shard_paths, out_csv, image_size: int, batch_size: int
) -> None:
    """One target's predictions for a whole clean test set (its shards, in order): the model is
    loaded once for all of them."""
    predict = _predictor(model_path, metrics_path, image_size, batch_size)
    _write_set(out_csv, [predict(read_shard(path, image_size)) for path in shard_paths])


def predict_adv(*, model_path, metrics_path, sets: list, image_size: int, batch_size: int) -> None:
    """One target's predictions for whole adversarial sets: ``sets`` is a list of
    (attack cache paths in shard order, output CSV), e.g. an attack's set and its noise
    control; the model is loaded once for all of them."""
    predict = _predictor(model_path, metrics_path, image_size, batch_size)
    for cache_paths, out_csv in sets:
        frames = []
        for path in cache_paths:
            cache = read_attack(path)
            check_image_size(cache["images"], path, image_size)
            frames.append(
                predict(cache).assign(
                    source_clean_prob=cache["source_clean_prob"],
                    source_adv_prob=cache["source_adv_prob"],
                    l2=cache["l2"],
                    linf=cache["linf"],
                    source_checkpoint_sha256=cache["attrs"]["source_checkpoint_sha256"],
                )
            )
        _write_set(out_csv, frames)


def _predictor(model_path, metrics_path, image_size: int, batch_size: int):
    """``predict(data) -> DataFrame`` of the CLEAN_COLUMNS for a shard or attack cache (dict
    of images, image_index, patient_id, labels), with the checkpoint loaded once."""
    record = model_record(model_path, metrics_path)
    model = load_checkpoint(model_path, image_size)
    fn = make_predict_fn(model)
    job = runconfig.job_record()  # empty outside a job: readers then refuse the file

    def predict(data: dict) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "image_index": data["image_index"],
                "patient_id": data["patient_id"].astype(np.int64),
                "label": data["labels"].astype(int),
                "prob": predict_probs(model, data["images"], batch_size, fn),
                "checkpoint_sha256": record["sha256"],
                **job,
            }
        )

    return predict


def _write_set(out_csv, frames: list) -> None:
    write_csv(out_csv, _concat(frames, out_csv))
    LOG.info("%s: %d images of %d file(s)", out_csv, sum(map(len, frames)), len(frames))


def _concat(frames: list, out_csv) -> pd.DataFrame:
    if not frames:
        raise WorkflowError(f"No input shards for '{out_csv}': the test split is empty.")
    return pd.concat(frames, ignore_index=True)
