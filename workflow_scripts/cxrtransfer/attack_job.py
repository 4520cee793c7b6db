"""The attack job: craft one shard's adversarial set, write its cache (format: ``attack_cache``)
and, when asked, its noise control (the same perturbations shuffled per image) with the
source model the job has already loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import WorkflowError
from .attack_cache import (
    check_budget,
    perturbation_norms,
    read_attack,
    shuffle_perturbations,
    write_cache,
)
from .provenance import model_record
from .utils import FIX_DAMAGED, LOG, Progress


def attack_shard(
    *,
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
    control_path=None,
) -> dict:
    """Attack one shard with the source model and write the uint8 cache atomically; with
    ``control_path``, then write its noise control there (see ``control_shard``)."""
    from .attacks import make_attack, run_attack_batches, spec_from_config
    from .models import load_checkpoint
    from .shards import read_shard

    spec = spec_from_config(attack_cfg, eps)  # validates before any model is loaded
    record = model_record(model_path, metrics_path)
    model = load_checkpoint(model_path, image_size)
    shard = read_shard(shard_path, image_size)
    n = len(shard["labels"])
    LOG.info(
        "attack %s (%s, %s eps %g) on %s: %d images, source %s",
        attack_name,
        spec.method,
        spec.norm,
        spec.eps,
        shard_path,
        n,
        source_model,
    )
    progress = Progress(n, f"attack {attack_name} eps {eps:g}", every_seconds=30)
    result = run_attack_batches(
        model,
        make_attack(model, spec),
        shard["images"],
        shard["labels"],
        spec,
        batch_size,
        progress,
        stream=(source_model, data_task, Path(shard_path).stem),
    )
    adv = result["adv_u8"]
    max_linf, max_l2 = check_budget(shard["images"], adv, spec.norm, spec.eps, out_path)
    y = shard["labels"]
    threshold = record["threshold"]
    pred_float = result["adv_prob_float"] >= threshold
    pred_q = result["adv_prob"] >= threshold
    unfooled = int(((pred_float != y) & (pred_q == y)).sum())
    l2, linf = perturbation_norms(shard["images"], adv)
    write_cache(
        out_path,
        {
            "images": adv,
            "image_index": shard["image_index"],
            "patient_id": shard["patient_id"].astype(np.int32),
            "labels": y.astype(np.int8),
            "source_clean_prob": result["clean_prob"],
            "source_adv_prob": result["adv_prob"],
            "source_adv_prob_float": result["adv_prob_float"],
            "l2": l2,
            "linf": linf,
        },
        {
            "attack": attack_name,
            "control": "",
            **spec.attrs(),
            "source_model": source_model,
            "source_checkpoint_sha256": record["sha256"],
            "source_threshold": threshold,
            "data_task": data_task,
            "clean_shard": str(shard_path),
            "n_images": n,
            "n_quantisation_unfooled": unfooled,
            "max_linf_255": max_linf,
            "max_l2": max_l2,
        },
    )
    fooled = int((pred_q != y).sum())
    LOG.info(
        "%s: source wrong on %d/%d images after quantisation (%d turned back to correct by it); "
        "max |delta| %d/255, max L2 %.3f",
        out_path,
        fooled,
        n,
        unfooled,
        max_linf,
        max_l2,
    )
    out = {"n": n, "fooled": fooled, "unfooled_by_quantisation": unfooled}
    if control_path is not None:
        out["control"] = _write_control(
            model, record, out_path, control_path, image_size, batch_size
        )
    return out


def control_shard(
    *, attack_path, model_path, metrics_path, out_path, image_size: int, batch_size: int
) -> dict:
    """Write the noise control of one attack cache: shuffled perturbations, with the source
    model's probabilities on them, in the same format."""
    from .models import load_checkpoint

    record = model_record(model_path, metrics_path)
    model = load_checkpoint(model_path, image_size)
    return _write_control(model, record, attack_path, out_path, image_size, batch_size)


def _write_control(model, record, attack_path, out_path, image_size: int, batch_size: int):
    from .inference import predict_probs
    from .shards import read_shard

    adv = read_attack(attack_path, expected_sha256=record["sha256"])
    attrs = adv["attrs"]
    clean = read_shard(attrs["clean_shard"], image_size)
    if not np.array_equal(clean["image_index"], adv["image_index"]):
        raise WorkflowError(
            f"'{attack_path}' does not hold the images of its clean shard "
            f"'{attrs['clean_shard']}' (image_index differs): it is stale. "
            f"{FIX_DAMAGED}"
        )
    from .attacks import stream_seed

    keys = ("noise_control", attrs["source_model"], attrs["data_task"], attrs["attack"])
    seed = stream_seed(int(attrs["seed"]), *keys, float(attrs["eps"]), Path(attack_path).stem)
    images = shuffle_perturbations(clean["images"], adv["images"], seed)
    source_prob = predict_probs(model, images, batch_size)
    l2, linf = perturbation_norms(clean["images"], images)
    write_cache(
        out_path,
        {
            "images": images,
            "image_index": adv["image_index"],
            "patient_id": adv["patient_id"],
            "labels": adv["labels"],
            "source_clean_prob": adv["source_clean_prob"],
            "source_adv_prob": source_prob,
            "l2": l2,
            "linf": linf,
        },
        {
            **{k: v for k, v in attrs.items() if k not in ("n_quantisation_unfooled",)},
            "control": "shuffled",
            "control_of": str(attack_path),
            "control_seed": list(seed),
            "max_linf_255": int(round(float(linf.max(initial=0)) * 255)),
            "max_l2": float(l2.max(initial=0)),
        },
    )
    fooled = int(((source_prob >= record["threshold"]) != adv["labels"].astype(bool)).sum())
    LOG.info("%s: source wrong on %d/%d shuffled-noise images", out_path, fooled, len(images))
    return {"n": len(images), "fooled": fooled}
