"""Batched, compiled inference: probability of the finding for uint8 or float images."""

from __future__ import annotations

import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.data.datasets import shard_arrays, shard_patient_ids

INPUT_DTYPES = ("uint8", "float32")


def make_predict_fn(model, input_dtype: str = "uint8", all_columns: bool = False):
    """Compiled ``predict(x) -> p``: the model's column-1 (finding) probability, float32 (N,).

    ``input_dtype`` "uint8": x uint8 images (N, H, W) (grey levels, scaled by 1/255 here);
    "float32": x float32 (N, H, W, 1) in [0, 1] (the model contract). Traced once for any N.
    ``all_columns``: every output column, float32 (N, K) (a multi-label model's K findings).
    """
    # heavy: TensorFlow loads in the jobs that predict only
    import tensorflow as tf

    if input_dtype not in INPUT_DTYPES:
        raise WorkflowError(f"input_dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}.")
    shape = tuple(model.input_shape[1:])

    def prob(x):
        out = model(x, training=False)
        return tf.cast(out if all_columns else out[:, 1], tf.float32)

    if input_dtype == "uint8":

        @tf.function(input_signature=[tf.TensorSpec((None, *shape[:2]), tf.uint8)])
        def predict(x_u8):
            return prob(tf.cast(x_u8, tf.float32)[..., None] / 255.0)

    else:

        @tf.function(input_signature=[tf.TensorSpec((None, *shape), tf.float32)])
        def predict(x):
            return prob(x)

    return predict


def predict_probs(
    model, images_u8: np.ndarray, batch_size: int = 128, predict_fn=None
) -> np.ndarray:
    """Probability of the finding (column 1 of the softmax) for uint8 images (N,H,W)."""
    fn = predict_fn or make_predict_fn(model)
    parts = [
        fn(images_u8[i : i + batch_size]).numpy() for i in range(0, len(images_u8), batch_size)
    ]
    if not parts:
        return np.empty(0, np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def predict_shards(
    model,
    paths,
    image_size: int,
    batch_size: int = 128,
    predict_fn=None,
    multilabel: bool = False,
) -> dict:
    """Stream shards through the model; returns labels, probs, image_index and patient_id (one
    shard in memory). ``multilabel``: labels are the shards' targets (N, K) and probs every
    output column (N, K)."""
    fn = predict_fn or make_predict_fn(model, all_columns=multilabel)
    labels, probs, names = [], [], []
    for imgs, y, n in shard_arrays(paths, image_size, targets=multilabel):
        probs.append(predict_probs(model, imgs, batch_size, fn))
        labels.append(y)
        names.append(n)
    return {
        "labels": np.concatenate(labels),
        "probs": np.concatenate(probs),
        "image_index": np.concatenate(names),
        "patient_id": shard_patient_ids(paths),
    }
