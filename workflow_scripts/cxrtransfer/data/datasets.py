"""Reading the HDF5 shards: open one with a clear error, stream its arrays one shard at a time,
count labels, and the patient halves of the training split. TensorFlow-free; the tf.data
pipelines that feed a model over these readers are in ``data.pipelines``."""

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
