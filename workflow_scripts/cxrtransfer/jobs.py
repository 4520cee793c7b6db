"""What the attack, prediction and evaluation rules do, as functions of files.

Attack caches (``results/attacks/{source}/{data_task}/{attack}/eps{k}/{shard}.h5``):

- ``images``      uint8 (N, H, W): the adversarial images exactly as evaluated later
- ``image_index`` bytes (N,), ``labels`` int8 (N,) (the data task's labels)
- ``source_clean_prob``, ``source_adv_prob`` float32 (N,): the source model's probability of
  the finding on the clean and on the stored (quantised) adversarial image;
  ``source_adv_prob_float`` on the unquantised attack output
- ``l2``, ``linf`` float32 (N,): size of the stored perturbation in [0, 1] pixel units
- attributes: the attack's settings under plain names (attack, method, norm, eps, step,
  steps, targeted, random_start, restarts, momentum, diversity_prob, diversity_scale, seed),
  source_model, source_checkpoint_sha256, source_threshold, data_task, shard,
  clean_shard, n_quantisation_unfooled, max_linf_255, max_l2_255
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import WorkflowError
from .train import json_threshold
from .utils import LOG, Progress, atomic_path, file_sha256, write_csv

CACHE_VERSION = 1


def attack_shard(
    model_path,
    metrics_path,
    shard_path,
    out_path,
    attack_name: str,
    attack_cfg: dict,
    eps: float,
    image_size: int,
    batch_size: int,
    source_model: str,
    data_task: str,
) -> dict:
    """Attack one shard with the source model and write the uint8 cache atomically."""
    from .attacks import make_attack, run_attack_batches, spec_from_config
    from .models import load_checkpoint
    from .shards import read_shard

    spec = spec_from_config(attack_cfg, eps)  # validates before any model is loaded
    model = load_checkpoint(model_path, image_size)
    threshold = json_threshold(metrics_path)
    shard = read_shard(shard_path, image_size)
    n = len(shard["labels"])
    LOG.info(
        "attack %s (%s) eps %g/255 on %s: %d images, source %s",
        attack_name,
        spec.method,
        spec.eps,
        shard_path,
        n,
        source_model,
    )
    attack_fn = make_attack(model, spec)
    progress = Progress(n, f"attack {attack_name} eps{eps:g}", every_seconds=30)
    r = run_attack_batches(
        model, attack_fn, shard["images"], shard["labels"], spec, batch_size, progress
    )
    d = r["adv_u8"].astype(np.int16) - shard["images"].astype(np.int16)
    max_linf = int(np.abs(d).max(initial=0))
    max_l2 = float(np.sqrt((d.astype(np.float64) ** 2).reshape(n, -1).sum(1)).max(initial=0))
    bound_ok = (
        max_linf <= math.floor(spec.eps + 1e-9)
        if spec.norm == "linf"
        else max_l2 <= spec.eps + 1e-9
    )
    if not bound_ok:
        raise WorkflowError(
            f"internal error: stored perturbation exceeds eps {spec.eps} ({max_linf}, {max_l2:.3f})"
        )
    y = shard["labels"]
    pred_float = r["adv_prob_float"] >= threshold
    pred_q = r["adv_prob"] >= threshold
    unfooled = int(((pred_float != y) & (pred_q == y)).sum())
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            h, w = r["adv_u8"].shape[1:]
            f.create_dataset(
                "images", data=r["adv_u8"], chunks=(1, h, w), compression="gzip", compression_opts=1
            )
            f.create_dataset("image_index", data=np.array(shard["image_index"], dtype="S"))
            f.create_dataset("labels", data=y.astype(np.int8))
            f.create_dataset("source_clean_prob", data=r["clean_prob"])
            f.create_dataset("source_adv_prob", data=r["adv_prob"])
            f.create_dataset("source_adv_prob_float", data=r["adv_prob_float"])
            f.create_dataset("l2", data=r["l2"])
            f.create_dataset("linf", data=r["linf"])
            f.attrs.update(
                {
                    "attack": attack_name,
                    **spec.attrs(),
                    "source_model": source_model,
                    "source_checkpoint": str(model_path),
                    "source_checkpoint_sha256": file_sha256(model_path),
                    "source_threshold": threshold,
                    "data_task": data_task,
                    "clean_shard": str(shard_path),
                    "n_images": n,
                    "n_quantisation_unfooled": unfooled,
                    "max_linf_255": max_linf,
                    "max_l2_255": max_l2,
                    "cache_version": CACHE_VERSION,
                }
            )
    fooled = int((pred_q != y).sum())
    LOG.info(
        "%s: source fooled on %d/%d images after quantisation (%d turned back to correct by it); "
        "max |delta| %d/255",
        out_path,
        fooled,
        n,
        unfooled,
        max_linf,
    )
    return {"n": n, "fooled": fooled, "unfooled_by_quantisation": unfooled}


def read_attack(path, expected_sha256: str | None = None) -> dict:
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            out = {k: f[k][...] for k in f.keys()}
            out["attrs"] = dict(f.attrs)
    except (OSError, KeyError) as e:
        raise WorkflowError(
            f"Cannot read attack cache '{path}' ({e}); delete it and rerun."
        ) from None
    out["image_index"] = out["image_index"].astype(str)
    if len(out["image_index"]) == 0:
        raise WorkflowError(f"Attack cache '{path}' is empty (no adversarial images).")
    if expected_sha256 and out["attrs"].get("source_checkpoint_sha256") != expected_sha256:
        raise WorkflowError(
            f"Attack cache '{path}' was made with another version of its source checkpoint "
            "(hash mismatch): it is stale. Delete it and rerun."
        )
    return out


def predict_clean_shard(model_path, shard_path, out_csv, image_size: int, batch_size: int) -> None:
    from .inference import predict_probs
    from .models import load_checkpoint
    from .shards import read_shard

    model = load_checkpoint(model_path, image_size)
    s = read_shard(shard_path, image_size)
    p = predict_probs(model, s["images"], batch_size)
    write_csv(
        out_csv, pd.DataFrame({"image_index": s["image_index"], "label": s["labels"], "prob": p})
    )


def predict_adv_shard(model_path, attack_path, out_csv, image_size: int, batch_size: int) -> None:
    from .inference import predict_probs
    from .models import load_checkpoint
    from .shards import check_image_size

    model = load_checkpoint(model_path, image_size)
    a = read_attack(attack_path)
    check_image_size(a["images"], attack_path, image_size)
    p = predict_probs(model, a["images"], batch_size)
    df = pd.DataFrame(
        {
            "image_index": a["image_index"],
            "label": a["labels"].astype(int),
            "prob": p,
            "source_clean_prob": a["source_clean_prob"],
            "source_adv_prob": a["source_adv_prob"],
            "l2": a["l2"],
            "linf": a["linf"],
        }
    )
    write_csv(out_csv, df)


def read_predictions(paths) -> pd.DataFrame:
    frames = []
    for p in paths:
        try:
            frames.append(pd.read_csv(p, dtype={"image_index": str}))
        except (OSError, pd.errors.EmptyDataError) as e:
            raise WorkflowError(
                f"Cannot read predictions '{p}' ({e}); delete it and rerun."
            ) from None
    if not frames:
        raise WorkflowError("No prediction files given.")
    return pd.concat(frames, ignore_index=True)


def evaluate_adv_set(
    config: dict,
    source: str,
    data_task: str,
    attack: str,
    eps_label: str,
    targets: list[str],
    clean_preds: dict,
    adv_preds: dict,
    metrics_files: dict,
    evaluation: dict,
) -> list[dict]:
    """Cells (source, target) of one adversarial set: every target of the data task."""
    from .metrics import compute_cell
    from .plan import relation

    t_source = json_threshold(metrics_files[source])
    cells = []
    for t in targets:
        clean = read_predictions(clean_preds[t])
        adv = read_predictions(adv_preds[t])
        where = f"cell source={source} target={t} data={data_task} attack={attack} eps={eps_label}"
        try:
            cell = compute_cell(
                clean,
                adv,
                json_threshold(metrics_files[t]),
                t_source,
                n_boot=evaluation["n_bootstrap"],
                confidence=evaluation["confidence"],
                seed=evaluation["seed"],
            )
        except WorkflowError as e:
            raise WorkflowError(f"{where}: {e}") from None
        cells.append(
            {
                "source": source,
                "target": t,
                "data_task": data_task,
                "attack": attack,
                "eps": float(eps_label),
                "relation": relation(config, source, t, data_task),
                "source_arch": config["models"][source]["arch"],
                "target_arch": config["models"][t]["arch"],
                **cell,
            }
        )
    return cells


def nan_to_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return nan_to_none(obj.item())
    return obj
