"""Adversarial-set caches: their format, writer, reader and the noise-control transform.

A cache (``results/attacks/{source}/{data_task}/{attack}/eps{eps}/{shard}.h5``) holds:

- ``images``      uint8 (N, H, W): the adversarial images exactly as evaluated later
- ``image_index`` bytes (N,), ``patient_id`` int32 (N,), ``labels`` int8 (N,) (the data
  task's labels), in the order of the clean shard
- ``source_clean_prob``, ``source_adv_prob`` float32 (N,): the source model's probability of
  its finding on the clean and on the stored (quantised) image; ``source_adv_prob_float`` on the
  unquantised attack output (attacks only)
- ``l2``, ``linf`` float32 (N,): size of the stored perturbation in [0, 1] pixel units
- attributes: the attack's settings (``AttackSpec.attrs()``: method, norm, eps, eps_unit,
  step, steps, targeted, random_start, restarts, momentum, diversity_prob, diversity_scale,
  seed, ti_kernel, scales, nesterov, variance_samples, variance_bound, eot_samples; a
  universal set: the ``UapSpec`` settings, ``uap_file`` and ``uap_sha256``), attack, control
  ("" or "shuffled"), source_model, source_checkpoint_sha256, source_threshold, data_task,
  clean_shard, n_images, n_quantisation_unfooled, max_linf_255, max_l2
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED, atomic_path

DATASETS = ("images", "image_index", "patient_id", "labels", "source_clean_prob", "source_adv_prob")


def perturbation_norms(clean_u8: np.ndarray, adv_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image L2 and L-inf norms of ``adv - clean`` in [0, 1] pixel units."""
    d = (adv_u8.astype(np.float64) - clean_u8.astype(np.float64)).reshape(len(adv_u8), -1) / 255.0
    l2 = np.sqrt(np.sum(d**2, axis=1))
    linf = np.max(np.abs(d), axis=1) if d.shape[1] else np.zeros(len(d))
    return l2.astype(np.float32), linf.astype(np.float32)


def check_reached(max_linf_255: int, eps: float, where) -> None:
    """Refuse a perturbation labelled eps (1/255) whose largest entry is more than one grey
    level below it: its rows would compare a smaller attack with the label's budget."""
    if max_linf_255 < math.floor(eps + 1e-9) - 1:
        raise WorkflowError(
            f"{where}: the perturbation labelled eps {eps:g}/255 reaches only "
            f"{max_linf_255}/255 (more than one grey level short), so its rows would not be the "
            "attack their label says. Give the attack more steps (or a larger step) in the "
            "config's attacks: section, then rerun."
        )


def check_budget(clean_u8, adv_u8, norm: str, eps: float, where) -> tuple[int, float]:
    """Raise unless every stored perturbation is within the budget and, for L-inf, the set
    reaches it (``check_reached``); return (max L-inf in 1/255 units, max L2 in [0, 1] units).
    L-inf eps is in 1/255 units, L2 eps in [0, 1] units."""
    d = adv_u8.astype(np.int16) - clean_u8.astype(np.int16)
    max_linf = int(np.abs(d).max(initial=0))
    l2 = np.sqrt((d.astype(np.float64) ** 2).reshape(len(d), -1).sum(1)) / 255.0
    max_l2 = float(l2.max(initial=0))
    ok = (
        max_linf <= math.floor(eps + 1e-9) if norm == "linf" else max_l2 <= eps * (1 + 1e-9) + 1e-12
    )
    if not ok:
        raise WorkflowError(
            f"{where}: stored perturbation exceeds the {norm} budget {eps} (max L-inf "
            f"{max_linf}/255, max L2 {max_l2:.4f}). This is a bug; please report it."
        )
    if norm == "linf" and len(d):
        check_reached(max_linf, eps, where)
    return max_linf, max_l2


def write_cache(out_path, data: dict, attrs: dict) -> None:
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            h, w = data["images"].shape[1:]
            for k, v in data.items():
                if k == "images":
                    f.create_dataset(
                        k, data=v, chunks=(1, h, w), compression="gzip", compression_opts=1
                    )
                elif k == "image_index":
                    f.create_dataset(k, data=np.array(v, dtype="S"))
                else:
                    f.create_dataset(k, data=v)
            f.attrs.update(attrs)


def shuffle_perturbations(clean_u8: np.ndarray, adv_u8: np.ndarray, seed) -> np.ndarray:
    """The noise control of Bortsova et al.: each image's perturbation with its pixels randomly
    permuted (same values, so the same L-inf and, before clipping to [0, 255], the same L2
    norm), added to the clean image. Clipping can only shrink the perturbation."""
    rng = np.random.default_rng([int(x) % 2**63 for x in np.atleast_1d(seed)])
    d = adv_u8.astype(np.int16) - clean_u8.astype(np.int16)
    flat = d.reshape(len(d), -1)
    shuffled = np.stack([row[rng.permutation(row.size)] for row in flat]) if len(flat) else flat
    out = clean_u8.astype(np.int16) + shuffled.reshape(d.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def set_caches(directory) -> list[Path]:
    """The caches of one adversarial set (one per test shard), in shard order."""
    directory = Path(directory)
    found = sorted(p for p in directory.glob("*.h5") if not p.name.startswith("."))
    if not found:
        raise WorkflowError(
            f"No attack caches in '{directory}': the directory is empty or missing. {FIX_DAMAGED}"
        )
    return found


def read_attack(path, expected_sha256: str | None = None) -> dict:
    """Read a cache; with ``expected_sha256``, refuse a cache made by another checkpoint."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            out = {k: f[k][...] for k in f.keys()}
            out["attrs"] = dict(f.attrs)
    except (OSError, KeyError) as e:
        raise WorkflowError(
            f"Cannot read attack cache '{path}' ({e}): it is truncated or damaged. {FIX_DAMAGED}"
        ) from None
    missing = [k for k in DATASETS if k not in out]
    if missing:
        raise WorkflowError(
            f"Attack cache '{path}' lacks {', '.join(missing)}: it was written by an older "
            "version of the workflow. " + FIX_DAMAGED
        )
    out["image_index"] = out["image_index"].astype(str)
    if len(out["image_index"]) == 0:
        raise WorkflowError(f"Attack cache '{path}' is empty (no adversarial images).")
    if expected_sha256 and out["attrs"].get("source_checkpoint_sha256") != expected_sha256:
        raise WorkflowError(
            f"Attack cache '{path}' was made with another version of its source checkpoint "
            "(hash mismatch): it is stale. " + FIX_DAMAGED
        )
    return out
