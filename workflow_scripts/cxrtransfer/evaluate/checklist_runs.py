"""The checklist job: a target's extra white-box runs (``plan.checklist.runs``: single-step,
unbounded, more steps) on its test images, with the target loaded once; one row per run
(``evaluate.checklist.RUN_COLUMNS``) with the adversarial AUROC of the stored (uint8) images
and its patient-bootstrap CI, as the grid's white-box cells measure it.

The images are quantised as an attack cache stores them, and scored by the same loaded model,
so a run's AUROC is comparable with the white-box cell's of predict_adv and evaluate."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import spec_from_config
from cxrtransfer.config import runconfig
from cxrtransfer.core.files import write_csv
from cxrtransfer.core.logs import LOG, Progress
from cxrtransfer.core.provenance import model_record
from cxrtransfer.data.shards import read_shard
from cxrtransfer.evaluate.checklist_io import RUN_COLUMNS
from cxrtransfer.metrics.bootstrap import auroc_ci
from cxrtransfer.metrics.measures import auroc
from cxrtransfer.models.checkpoints import load_checkpoint


def test_images(shard_paths: list, image_size: int) -> dict:
    """The test shards' images, labels and patients, concatenated in shard order."""
    if not shard_paths:
        raise WorkflowError("The checklist job got no test shards: the test split is empty.")
    shards = [read_shard(p, image_size) for p in shard_paths]
    return {
        k: np.concatenate([s[k] for s in shards])
        for k in ("images", "labels", "patient_id", "image_index")
    }


def run_checklist(
    *,
    model_path,
    metrics_path,
    shard_paths: list,
    out_csv,
    runs: list[dict],
    target: str,
    data_task: str,
    image_size: int,
    batch_size: int,
    n_bootstrap: int,
    confidence: float,
    seed: int,
) -> pd.DataFrame:
    """Run every variant of ``runs`` on the target's test images; write and return the rows."""
    specs = [spec_from_config(dict(r["config"]), r["variant_eps"]) for r in runs]  # validated
    record = model_record(model_path, metrics_path)
    data = test_images(shard_paths, image_size)
    model = load_checkpoint(model_path, image_size)
    rows = []
    for run, spec in zip(runs, specs, strict=True):
        prob = _attacked_probs(model, spec, data, batch_size, (target, data_task, run))
        low, high = auroc_ci(
            data["labels"], prob, data["patient_id"], n_bootstrap, confidence, seed
        )
        rows.append(
            {
                "target": target,
                "data_task": data_task,
                "attack": run["attack"],
                "eps": float(run["eps"]),
                "variant": run["variant"],
                "variant_eps": float(run["variant_eps"]),
                "variant_steps": int(run["variant_steps"]),
                "adv_auroc": auroc(data["labels"], prob),
                "adv_auroc_ci_low": low,
                "adv_auroc_ci_high": high,
                "n_images": len(prob),
            }
        )
        LOG.info(
            "%s %s eps %g -> %s (eps %g, %d steps): adversarial AUROC %.3f [%.3f, %.3f]",
            target,
            run["attack"],
            run["eps"],
            run["variant"],
            run["variant_eps"],
            run["variant_steps"],
            rows[-1]["adv_auroc"],
            low,
            high,
        )
    df = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    write_csv(out_csv, df.assign(checkpoint_sha256=record["sha256"], **runconfig.job_record()))
    return df


def _attacked_probs(model, spec, data: dict, batch_size: int, keys: tuple) -> np.ndarray:
    """The model's probability of the finding on the attacked, quantised images."""
    # heavy: attacks.batches and attacks.iterative import TensorFlow at their top
    from cxrtransfer.attacks.batches import run_attack_batches
    from cxrtransfer.attacks.iterative import make_attack

    target, data_task, run = keys
    what = f"checklist {run['attack']} {run['variant']}"
    progress = Progress(len(data["labels"]), what, every_seconds=30)
    stream = ("checklist", target, data_task, run["attack"], run["variant"])
    result = run_attack_batches(
        model,
        make_attack(model, spec),
        data["images"],
        data["labels"],
        spec,
        batch_size,
        progress,
        stream=stream,
    )
    return result["adv_prob"]
