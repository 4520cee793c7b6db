"""tf.data input pipelines that feed a model, read straight from the HDF5 shards
(``data.datasets`` streams them): shuffled, prefetched batches of [0, 1] float32 images with
Keras augmentation for training. Only the jobs that train or run a model import this module."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cxrtransfer import WorkflowError
from cxrtransfer.data.datasets import shard_arrays


def augmentation_layers(aug: dict, seed: int):
    """Keras preprocessing layers of a model's ``augment`` settings (rotation, zoom, shift,
    horizontal flip), seeded."""
    layers = []
    if aug.get("rotation", 0) > 0:
        layers.append(keras.layers.RandomRotation(aug["rotation"], fill_mode="constant", seed=seed))
    if aug.get("zoom", 0) > 0:
        z = aug["zoom"]
        layers.append(keras.layers.RandomZoom((-z, z), fill_mode="constant", seed=seed + 1))
    if aug.get("shift", 0) > 0:
        s = aug["shift"]
        layers.append(keras.layers.RandomTranslation(s, s, fill_mode="constant", seed=seed + 2))
    if aug.get("horizontal_flip", False):
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 3))
    return layers


def make_dataset(
    paths,
    image_size: int,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    patients: set[int] | None = None,
    augment: dict | None = None,
    shuffle_buffer: int = 4096,
    n_images: int | None = None,
    n_targets: int | None = None,
):
    """(images float32 in [0, 1] (B,H,W,1), labels int) batches, shuffled and prefetched.

    Augmentation (Keras preprocessing layers) is applied only when ``augment`` is given,
    i.e. for training. ``n_targets``: multi-label shards, the labels are their ``targets``
    (float32 (B, n_targets)).
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise WorkflowError("No shards given to the input pipeline.")
    order = list(paths)

    def gen():
        shard_order = order
        if shuffle:
            shard_order = list(np.random.default_rng(seed + gen.epoch).permutation(order))
            gen.epoch += 1
        multi = n_targets is not None
        for imgs, labels, _ in shard_arrays(shard_order, image_size, patients, targets=multi):
            yield from zip(imgs, labels, strict=True)

    gen.epoch = 0
    label_spec = (
        tf.TensorSpec((), tf.int64)
        if n_targets is None
        else tf.TensorSpec((n_targets,), tf.float32)
    )
    ds = tf.data.Dataset.from_generator(
        gen,
        output_signature=(tf.TensorSpec((image_size, image_size), tf.uint8), label_spec),
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if n_images is not None:  # lets Keras know the epoch length (no "ran out of data")
        ds = ds.apply(tf.data.experimental.assert_cardinality(n_images))
    ds = ds.batch(batch_size)

    def to_float(x, y):
        return tf.cast(x, tf.float32)[..., None] / 255.0, y

    # Sequential maps: training enables op determinism, under which tf.data's make_deterministic
    # rewrite turns every parallel map of this pipeline (its generator is a stateful py_func)
    # into a sequential one anyway, and TF 2.21's rewrite then logs an error line about the
    # parallel map's use_unbounded_threadpool attribute. A sequential map keeps its order, so
    # it takes no `deterministic` argument (TensorFlow warns that it has no effect).
    ds = ds.map(to_float)
    if augment:
        layers = augmentation_layers(augment, seed)
        if layers:
            pipe = keras.Sequential(layers)

            def aug(x, y):
                return tf.clip_by_value(pipe(x, training=True), 0.0, 1.0), y

            # Sequential on purpose too: the layers draw from stateful seed generators, and
            # parallel calls would consume their states in a run-dependent order (seeded runs
            # then differ). One vectorised call per batch.
            ds = ds.map(aug)
    return ds.prefetch(tf.data.AUTOTUNE)
