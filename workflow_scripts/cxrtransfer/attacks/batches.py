"""Running a compiled attack over many images: ``run_attack_batches`` attacks uint8 images in
batches, one random stream per batch, quantises and reports probabilities and norms."""

from __future__ import annotations

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.attacks.budget import quantise
from cxrtransfer.attacks.spec import AttackSpec
from cxrtransfer.models.inference import make_predict_fn


def run_attack_batches(
    model,
    attack_fn,
    images_u8: np.ndarray,
    labels: np.ndarray,
    spec: AttackSpec,
    batch_size: int,
    progress=None,
    *,
    stream: tuple = (),
    predict_fn=None,
) -> dict:
    """Attack ``images_u8`` (N, H, W) uint8 in batches; quantise; report probabilities/norms.

    ``stream``: keys naming this job's random stream, e.g. (source model, data task, shard);
    batch ``i`` (0-based, of ``batch_size`` images) is attacked with
    ``spec.stream_seed(*stream, i)``. ``predict_fn``: ``inference.make_predict_fn(model,
    input_dtype="float32")`` to reuse a traced one. Returns ``adv_u8`` (N, H, W) uint8 and
    float32 (N,) ``clean_prob``, ``adv_prob_float`` (unquantised), ``adv_prob`` (stored),
    ``l2``, ``linf`` (stored perturbation, [0, 1] units).
    """
    images_u8 = np.asarray(images_u8)
    labels = np.asarray(labels)
    if images_u8.dtype != np.uint8 or images_u8.ndim != 3:
        raise WorkflowError(
            f"Attack input must be uint8 images (N, H, W), got {images_u8.dtype} {images_u8.shape}."
        )
    if labels.shape != (len(images_u8),):
        raise WorkflowError(f"Labels {labels.shape} do not match images {images_u8.shape}.")
    if batch_size < 1:
        raise WorkflowError(f"batch_size must be >= 1, got {batch_size}.")
    own = getattr(attack_fn, "spec", spec)
    if own != spec:
        raise WorkflowError(f"run_attack_batches: attack built for {own}, given spec {spec}.")
    stream = tuple(stream)
    n = len(images_u8)
    prob = predict_fn or make_predict_fn(model, input_dtype="float32")
    out = {
        "adv_u8": np.zeros_like(images_u8),
        "clean_prob": np.zeros(n, np.float32),
        "adv_prob_float": np.zeros(n, np.float32),
        "adv_prob": np.zeros(n, np.float32),
        "l2": np.zeros(n, np.float32),
        "linf": np.zeros(n, np.float32),
    }
    for i, a in enumerate(range(0, n, batch_size)):
        b = min(a + batch_size, n)
        clean_u8 = images_u8[a:b]
        x = clean_u8[..., None].astype(np.float32) / 255.0
        seed = spec.stream_seed(*stream, i)
        x_adv = np.asarray(attack_fn(x, labels[a:b].astype(np.int32), seed))
        adv_u8 = quantise(clean_u8, x_adv, spec)
        xq = adv_u8[..., None].astype(np.float32) / 255.0
        p = np.asarray(prob(np.concatenate([x, x_adv.astype(np.float32), xq])))
        k = b - a
        out["adv_u8"][a:b] = adv_u8
        out["clean_prob"][a:b] = p[:k]
        out["adv_prob_float"][a:b] = p[k : 2 * k]
        out["adv_prob"][a:b] = p[2 * k :]
        d = (adv_u8.astype(np.float64) - clean_u8.astype(np.float64)).reshape(k, -1) / 255.0
        out["l2"][a:b] = np.sqrt(np.sum(d**2, axis=1))
        out["linf"][a:b] = np.max(np.abs(d), axis=1) if d.shape[1] else 0.0
        if progress is not None:
            progress.update(k)
    return out
