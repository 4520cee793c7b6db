"""Batched, compiled inference: probability of the finding for uint8 images."""

from __future__ import annotations

import numpy as np

from .data import shard_arrays


def make_predict_fn(model):
    import tensorflow as tf

    h, w = model.input_shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec((None, h, w), tf.uint8)], reduce_retracing=True)
    def predict(x_u8):
        x = tf.cast(x_u8, tf.float32)[..., None] / 255.0
        return model(x, training=False)[:, 1]

    return predict


def predict_probs(
    model, images_u8: np.ndarray, batch_size: int = 128, predict_fn=None
) -> np.ndarray:
    """Probability of the finding (column 1 of the softmax) for uint8 images (N,H,W)."""
    fn = predict_fn or make_predict_fn(model)
    out = np.empty(len(images_u8), np.float32)
    for i in range(0, len(images_u8), batch_size):
        out[i : i + batch_size] = fn(images_u8[i : i + batch_size]).numpy()
    return out


def predict_shards(model, paths, image_size: int, batch_size: int = 128, predict_fn=None) -> dict:
    """Stream shards through the model; returns labels, probs, image_index (one shard in memory)."""
    fn = predict_fn or make_predict_fn(model)
    labels, probs, names = [], [], []
    for imgs, y, n in shard_arrays(paths, image_size):
        probs.append(predict_probs(model, imgs, batch_size, fn))
        labels.append(y)
        names.append(n)
    return {
        "labels": np.concatenate(labels),
        "probs": np.concatenate(probs),
        "image_index": np.concatenate(names),
    }
