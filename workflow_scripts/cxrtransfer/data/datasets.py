"""tf.data input pipelines read straight from the HDF5 shards."""

from __future__ import annotations

import contextlib
import hashlib

import h5py
import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED
from cxrtransfer.data.shards import check_image_size


@contextlib.contextmanager
def open_shard(path):
    """Open an HDF5 shard for reading; a truncated or corrupt file becomes a WorkflowError
    that names the file and the fix (instead of an h5py traceback)."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _shard_error(path, e) from None
    try:
        with f:
            yield f
    except (OSError, KeyError) as e:
        raise _shard_error(path, e) from None


def _shard_error(path, e: Exception) -> WorkflowError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return WorkflowError(
        f"Cannot read shard '{path}' ({first}): it is truncated, corrupt or not a shard of this "
        f"workflow. {FIX_DAMAGED}"
    )


def shard_arrays(paths, image_size: int, patients: set[int] | None = None, targets: bool = False):
    """Yield (images uint8 (n,H,W), labels int64, image_index str) per shard, optionally only
    the given patients. Reads one shard at a time: memory is bounded by one shard.
    ``targets``: yield a multi-label shard's targets (float32 (n, K)) instead of labels."""
    for p in paths:
        with open_shard(p) as f:
            images = f["images"]
            check_image_size(images, p, image_size)
            if targets:
                if "targets" not in f:
                    raise WorkflowError(
                        f"Shard '{p}' has no 'targets' (it is a binary task's shard); a "
                        "multi-label model trains on the shards of its multi-label task."
                    )
                labels = f["targets"][...].astype(np.float32)
            else:
                labels = f["labels"][...].astype(np.int64)
            names = f["image_index"][...].astype(str)
            pids = f["patient_id"][...]
            keep = np.ones(len(labels), bool) if patients is None else np.isin(pids, list(patients))
            idx = np.flatnonzero(keep)
            if len(idx) == 0:
                continue
            imgs = images[...][idx] if len(idx) < len(keep) else images[...]
        yield imgs, labels[idx], names[idx]


def shard_patient_ids(paths) -> np.ndarray:
    """The patient id of every image of ``paths``, in the order ``shard_arrays`` yields them
    (no patient filter), read without decoding images."""
    out = []
    for p in paths:
        with open_shard(p) as f:
            out.append(f["patient_id"][...].astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def label_summary(paths, image_size: int, patients: set[int] | None = None) -> dict:
    """Negatives ``n0``, positives ``n1`` and the sorted unique ``patient_ids`` of the images
    of ``paths`` (only ``patients`` if given), read without decoding images."""
    n0 = n1 = 0
    used: set[int] = set()
    for p in paths:
        with open_shard(p) as f:
            labels = f["labels"][...]
            pids = f["patient_id"][...]
            check_image_size(f["images"], p, image_size)
        if patients is not None:
            keep = np.isin(pids, list(patients))
            labels, pids = labels[keep], pids[keep]
        n1 += int((labels == 1).sum())
        n0 += int((labels == 0).sum())
        used.update(int(x) for x in pids)
    return {"n0": n0, "n1": n1, "patient_ids": sorted(used)}


def count_labels(paths, image_size: int, patients: set[int] | None = None) -> tuple[int, int]:
    summary = label_summary(paths, image_size, patients)
    return summary["n0"], summary["n1"]


def augmentation_layers(aug: dict, seed: int):
    # heavy: Keras loads in training jobs only (evaluation reads shards without it)
    import keras

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
    # heavy: TensorFlow loads in the jobs that feed a model only
    import tensorflow as tf

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

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment:
        layers = augmentation_layers(augment, seed)
        if layers:
            # heavy: Keras loads in training jobs only
            import keras

            pipe = keras.Sequential(layers)

            def aug(x, y):
                return tf.clip_by_value(pipe(x, training=True), 0.0, 1.0), y

            # Sequential on purpose: the layers draw from stateful seed generators, and
            # parallel calls would consume their states in a run-dependent order (seeded runs
            # then differ). One vectorised call per batch; prefetch still overlaps training.
            ds = ds.map(aug, num_parallel_calls=None, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def patient_half(patient_id: int, seed: int) -> str:
    """The half (``half_a`` / ``half_b``) of a patient: a function of the patient id and the
    seed only (a seeded hash), not of the task whose shards hold the patient, so half_a and
    half_b are disjoint across tasks (a multi-label model on half_b shares no patient with a
    binary model on half_a)."""
    digest = hashlib.sha256(f"cxrtransfer-half:{int(seed)}:{int(patient_id)}".encode()).digest()
    return "half_a" if digest[0] & 1 == 0 else "half_b"


def subset_patients(train_shards, subset: str, seed: int) -> set[int] | None:
    """Patients of the training shards kept by ``train_subset``: None (all), or those of one
    of two halves of the patients (``patient_half``: each patient's half depends only on its
    id and ``seed``), so models trained on half_a and half_b share no patient, whatever
    their tasks."""
    if subset == "all":
        return None
    if subset not in ("half_a", "half_b"):
        raise WorkflowError(f"train_subset must be all, half_a or half_b, not '{subset}'")
    pids = set()
    for p in train_shards:
        with open_shard(p) as f:
            pids.update(int(x) for x in f["patient_id"][...])
    return {p for p in pids if patient_half(p, seed) == subset}
