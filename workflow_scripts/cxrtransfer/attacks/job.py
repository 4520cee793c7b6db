"""The attack job: craft one shard's adversarial set, write its cache (format: ``attack_cache``)
and, when asked, its noise control (the same perturbations shuffled per image) with the
source model the job has already loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.spec import spec_from_config, stream_seed
from cxrtransfer.attacks.uap import (
    apply_uap,
    is_uap,
    read_uap,
    uap_record,
    uap_spec_from_config,
)
from cxrtransfer.core.files import FIX_DAMAGED, file_sha256
from cxrtransfer.core.logs import LOG, Progress
from cxrtransfer.core.provenance import model_record
from cxrtransfer.data.adversarial_cache import (
    DATASETS,
    check_budget,
    perturbation_norms,
    read_attack,
    shuffle_perturbations,
    write_cache,
)
from cxrtransfer.data.shards import read_shard
from cxrtransfer.models.checkpoints import load_checkpoint
from cxrtransfer.models.inference import predict_probs


def attack_set(
    *,
    model_path,
    metrics_path,
    shard_paths,
    out_dir,
    work_dir,
    stamp: dict,
    attack_name: str,
    attack_cfg: dict,
    eps: float,
    image_size: int,
    batch_size: int,
    source_model: str,
    data_task: str,
    control_dir=None,
    after_shard=None,
    uap_path=None,
) -> list[str]:
    """Attack every shard of a test set with one loaded source model: one cache per shard in
    ``out_dir`` (and its noise control in ``control_dir``), named like the shard.

    Finished shards are kept in ``work_dir`` until the whole set is done, stamped with
    ``stamp`` (everything the result depends on: the job's settings and code version) and the
    checkpoint and shard hashes; a rerun of a killed job reuses exactly the finished shards
    whose stamp matches and redoes the rest. ``after_shard(i)`` is called after each shard
    (tests use it to kill the job). ``uap_path``: for a universal attack (method uap), the
    source's stored perturbation, added to every image instead of attacking each. Returns the
    cache names."""
    spec = _spec(attack_cfg, eps)  # validates before any model is loaded
    record = model_record(model_path, metrics_path)
    uap, stamp = _universal(uap_path, record, stamp)
    settings = dict(
        attack_name=attack_name,
        eps=eps,
        image_size=image_size,
        batch_size=batch_size,
        source_model=source_model,
        data_task=data_task,
    )
    work_dir = Path(work_dir)
    model = None
    done = []
    for i, shard_path in enumerate(shard_paths):
        name = Path(shard_path).name
        job_stamp = _job_stamp(stamp, record, shard_path)
        cache, control = work_dir / "sets" / name, work_dir / "controls" / name
        wanted = [cache] + ([control] if control_dir is not None else [])
        if all(_finished(p, job_stamp) for p in wanted):
            LOG.info("%s: reusing the finished shard of an interrupted run (%s)", shard_path, cache)
        else:
            if model is None:
                model = load_checkpoint(model_path, image_size)
            _attack_with_control(
                model,
                record,
                spec,
                shard_path=shard_path,
                out_path=cache,
                control_path=control if control_dir is not None else None,
                control_of=Path(out_dir) / name,
                extra_attrs={"job_stamp": job_stamp, **(uap[1] if uap else {})},
                uap=uap[0] if uap else None,
                **settings,
            )
        done.append(name)
        if after_shard is not None:
            after_shard(i)
    _publish(work_dir, done, out_dir, control_dir)
    return done


def _universal(uap_path, record: dict, stamp: dict):
    """For a universal attack: ``((perturbation, its record), stamp with its hash)``; else
    ``(None, stamp)``."""
    if uap_path is None:
        return None, stamp
    uap = (read_uap(uap_path, record["sha256"])[0], uap_record(uap_path))
    return uap, {**stamp, "uap_sha256": uap[1]["uap_sha256"]}


def _job_stamp(stamp: dict, record: dict, shard_path) -> str:
    """What one shard's result depends on: the job's settings, the checkpoint and the shard."""
    return json.dumps(
        {**stamp, "source_sha256": record["sha256"], "shard_sha256": file_sha256(shard_path)},
        sort_keys=True,
    )


def _publish(work_dir: Path, done: list, out_dir, control_dir) -> None:
    """The whole set is done: publish it (the work files become the outputs)."""
    for sub, dest in (("sets", out_dir), ("controls", control_dir)):
        if dest is None:
            continue
        Path(dest).mkdir(parents=True, exist_ok=True)
        for name in done:
            os.replace(work_dir / sub / name, Path(dest) / name)
    shutil.rmtree(work_dir, ignore_errors=True)


def _spec(attack_cfg: dict, eps: float):
    """The attack's validated settings: a universal perturbation's or a per-image attack's."""
    return (
        uap_spec_from_config(attack_cfg, eps)
        if is_uap(attack_cfg)
        else spec_from_config(attack_cfg, eps)
    )


def _finished(path: Path, job_stamp: str) -> bool:
    """A work file of an interrupted run that is complete and belongs to exactly this job."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("job_stamp") == job_stamp and all(k in f for k in DATASETS)
    except OSError:
        return False


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
    spec = spec_from_config(attack_cfg, eps)  # validates before any model is loaded
    record = model_record(model_path, metrics_path)
    model = load_checkpoint(model_path, image_size)
    return _attack_with_control(
        model,
        record,
        spec,
        shard_path=shard_path,
        out_path=out_path,
        control_path=control_path,
        attack_name=attack_name,
        eps=eps,
        image_size=image_size,
        batch_size=batch_size,
        source_model=source_model,
        data_task=data_task,
    )


def _attack_with_control(
    model,
    record,
    spec,
    *,
    shard_path,
    out_path,
    control_path,
    control_of=None,
    extra_attrs: dict | None = None,
    uap=None,
    **settings,
) -> dict:
    """Attack one shard with a loaded model (or add the universal perturbation ``uap``) and,
    with ``control_path``, write its noise control (``control_of``: the path the cache is
    published under, if not ``out_path``)."""
    out = _attack_loaded(
        model,
        record,
        spec,
        shard_path=shard_path,
        out_path=out_path,
        extra_attrs=extra_attrs,
        uap=uap,
        **settings,
    )
    if control_path is not None:
        out["control"] = _write_control(
            model,
            record,
            out_path,
            control_path,
            settings["image_size"],
            settings["batch_size"],
            extra_attrs=extra_attrs,
            control_of=control_of,
        )
    return out


def _attack_loaded(
    model,
    record,
    spec,
    *,
    shard_path,
    out_path,
    attack_name: str,
    eps: float,
    image_size: int,
    batch_size: int,
    source_model: str,
    data_task: str,
    extra_attrs: dict | None = None,
    uap=None,
) -> dict:
    """Attack one shard with a loaded model (or add ``uap``), check the stored budget and
    write the cache."""
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
    stream = (source_model, data_task, Path(shard_path).stem)
    result = _craft(model, spec, shard, uap, batch_size, progress, stream)
    adv = result["adv_u8"]
    max_linf, max_l2 = check_budget(shard["images"], adv, spec.norm, spec.eps, out_path)
    y = shard["labels"]
    threshold = record["threshold"]
    pred_float = result["adv_prob_float"] >= threshold
    pred_q = result["adv_prob"] >= threshold
    unfooled = int(((pred_float != y) & (pred_q == y)).sum())
    attrs = {
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
        **(extra_attrs or {}),
    }
    write_cache(out_path, _cache_datasets(shard, result), attrs)
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
    return {"n": n, "fooled": fooled, "unfooled_by_quantisation": unfooled}


def _craft(model, spec, shard: dict, uap, batch_size: int, progress, stream: tuple) -> dict:
    """The shard's adversarial images: the universal perturbation ``uap`` added, or the
    per-image attack run in batches on the random ``stream`` (``run_attack_batches``)."""
    # heavy: attacks.batches and attacks.iterative import TensorFlow at their top; imported once
    # the job runs (after config.job.run_main sends the process's output to the rule's log)
    from cxrtransfer.attacks.batches import run_attack_batches
    from cxrtransfer.attacks.iterative import make_attack

    if uap is not None:
        return _apply_universal(model, shard["images"], uap, batch_size, progress)
    return run_attack_batches(
        model,
        make_attack(model, spec),
        shard["images"],
        shard["labels"],
        spec,
        batch_size,
        progress,
        stream=stream,
    )


def _cache_datasets(shard: dict, result: dict) -> dict:
    """The datasets of an attack cache: the stored images, the shard's identifiers and labels,
    the source's probabilities and the stored perturbation's norms."""
    adv = result["adv_u8"]
    l2, linf = perturbation_norms(shard["images"], adv)
    return {
        "images": adv,
        "image_index": shard["image_index"],
        "patient_id": shard["patient_id"].astype(np.int32),
        "labels": shard["labels"].astype(np.int8),
        "source_clean_prob": result["clean_prob"],
        "source_adv_prob": result["adv_prob"],
        "source_adv_prob_float": result["adv_prob_float"],
        "l2": l2,
        "linf": linf,
    }


def _apply_universal(model, images_u8, delta, batch_size: int, progress) -> dict:
    """The images with the universal perturbation added (exact in uint8) and the source's
    probabilities on both (the stored images are the attack's output: nothing to quantise)."""
    adv = apply_uap(images_u8, delta)
    clean_prob = predict_probs(model, images_u8, batch_size)
    adv_prob = predict_probs(model, adv, batch_size)
    progress.update(len(adv))
    return {
        "adv_u8": adv,
        "clean_prob": clean_prob,
        "adv_prob": adv_prob,
        "adv_prob_float": adv_prob,
    }


def control_shard(
    *, attack_path, model_path, metrics_path, out_path, image_size: int, batch_size: int
) -> dict:
    """Write the noise control of one attack cache: shuffled perturbations, with the source
    model's probabilities on them, in the same format."""
    record = model_record(model_path, metrics_path)
    model = load_checkpoint(model_path, image_size)
    return _write_control(model, record, attack_path, out_path, image_size, batch_size)


def _write_control(
    model,
    record,
    attack_path,
    out_path,
    image_size: int,
    batch_size: int,
    extra_attrs=None,
    control_of=None,
):
    adv = read_attack(attack_path, expected_sha256=record["sha256"])
    attrs = adv["attrs"]
    clean = read_shard(attrs["clean_shard"], image_size)
    if not np.array_equal(clean["image_index"], adv["image_index"]):
        raise WorkflowError(
            f"'{attack_path}' does not hold the images of its clean shard "
            f"'{attrs['clean_shard']}' (image_index differs): it is stale. "
            f"{FIX_DAMAGED}"
        )
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
            "control_of": str(control_of or attack_path),
            "control_seed": list(seed),
            "max_linf_255": int(round(float(linf.max(initial=0)) * 255)),
            "max_l2": float(l2.max(initial=0)),
            **(extra_attrs or {}),
        },
    )
    fooled = int(((source_prob >= record["threshold"]) != adv["labels"].astype(bool)).sum())
    LOG.info("%s: source wrong on %d/%d shuffled-noise images", out_path, fooled, len(images))
    return {"n": len(images), "fooled": fooled}
