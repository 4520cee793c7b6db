"""HDF5 shards: decoded, resized 8-bit grayscale images with labels and provenance.

Layout of ``results/shards/{task}/{split}/{shard}.h5``:

- ``images``      uint8 (N, H, W), chunked per image, gzip-compressed
- ``labels``      int8 (N,), 1 = the task's finding (multi-label task: any of its findings)
- ``targets``     multi-label tasks only: uint8 (N, K), column k = 1 if the image has finding
  ``label_names[k]`` (from the manifest's Finding Labels); attribute ``label_names`` (K,)
- ``image_index`` bytes (N,), e.g. b"00000013_005.png"
- ``patient_id``  int32 (N,)
- ``rejected_image_index`` / ``rejected_reason``: images of this shard that could not be decoded
- attributes: task, label, split, shard, source, manifest (set by the shard rule), image_size,
  resample, n_planned, n_rejected, format_version
"""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import FIX_DAMAGED, atomic_path, write_csv
from cxrtransfer.core.logs import LOG, Progress
from cxrtransfer.data.ingest import check_rejected_fraction

FORMAT_VERSION = 1
RESAMPLE = "bilinear (PIL, reducing_gap=2)"


def n_shards(n_images: int, shard_size: int) -> int:
    return max(1, math.ceil(n_images / shard_size))


def shard_rows(manifest: pd.DataFrame, split: str, shard: int, shard_size: int) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split].sort_values("image_index")
    return rows.iloc[shard * shard_size : (shard + 1) * shard_size]


def to_gray8(img: Image.Image) -> np.ndarray:
    """Convert any PNG mode the dataset may contain to 8-bit grayscale, correctly scaled.

    L: as is; RGB/RGBA/LA/P/1: luminance (alpha ignored); 16-bit (I;16*, I): scaled by 1/257
    (full 16-bit range to 8 bits), not clipped.
    """
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.max(initial=0) <= 255:
            scale = 1.0
        else:
            scale = 255.0 / 65535.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if mode == "P":
        img = img.convert("RGBA")
    return np.asarray(img.convert("L"), dtype=np.uint8)


def decode(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode one PNG to (size, size) uint8 grayscale; return (image, None) or (None, reason)."""
    try:
        with Image.open(path) as img:
            img.load()
            gray = to_gray8(img)
    except FileNotFoundError:
        return None, "missing on disk"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return None, f"unreadable or corrupt PNG: {str(e).splitlines()[0][:200]}"
    if gray.ndim != 2 or gray.size == 0:
        return None, f"unexpected image shape {gray.shape}"
    im = Image.fromarray(gray, mode="L")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8), None


def _decode_star(args):
    return decode(*args)


def write_shard(
    rows: pd.DataFrame,
    out_path: str | Path,
    image_size: int,
    attrs: dict,
    workers: int = 1,
    max_rejected_fraction: float = 1.0,
    rejected_log: str | Path | None = None,
) -> dict:
    """Decode ``rows`` (manifest rows) in parallel and stream them into one HDF5 shard.

    Memory stays bounded by a few images per worker: images are written as they arrive.
    Written atomically; fails (no output) if more than ``max_rejected_fraction`` are rejected.
    ``rejected_log``: a CSV listing every rejected image with its reason, written before the
    check so that it survives a failed job.
    """
    n = len(rows)
    if n == 0:
        raise WorkflowError(f"{out_path}: no images assigned to this shard (empty manifest split?)")
    columns = _row_columns(rows, attrs)
    progress = Progress(n, f"decode {Path(out_path).name}", every_seconds=15)
    with atomic_path(out_path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = _image_dataset(f, n, image_size)
            tasks = [(p, image_size) for p in rows["path"]]
            keep, rejected = _decode_into(ds, tasks, columns["image_index"], workers, progress)
            k = int(keep.sum())
            _check_rejected(out_path, rejected, n, k, max_rejected_fraction, rejected_log)
            ds.resize((k, image_size, image_size))
            _write_columns(f, columns, keep, rejected)
            f.attrs.update(
                {
                    **attrs,
                    "image_size": image_size,
                    "resample": RESAMPLE,
                    "n_planned": n,
                    "n_rejected": len(rejected),
                    "format_version": FORMAT_VERSION,
                }
            )
    if rejected:
        LOG.warning("%s: rejected %d of %d images", out_path, len(rejected), n)
    return {"written": k, "rejected": len(rejected)}


def _row_columns(rows: pd.DataFrame, attrs: dict) -> dict:
    """The per-image columns of a shard, in manifest order: labels, targets (multi-label tasks
    only, else None), image_index and patient_id."""
    label_names = attrs.get("label_names")
    targets = None
    if label_names is not None:  # a multi-label task
        targets = label_matrix(rows["finding_labels"], list(label_names))
    return {
        "labels": rows["label"].to_numpy(np.int8),
        "targets": targets,
        "image_index": rows["image_index"].to_numpy(str),
        "patient_id": rows["patient_id"].to_numpy(np.int32),
    }


def _image_dataset(f: h5py.File, n: int, image_size: int) -> h5py.Dataset:
    """The ``images`` dataset for up to ``n`` images, one gzip chunk per image."""
    return f.create_dataset(
        "images",
        shape=(n, image_size, image_size),
        maxshape=(n, image_size, image_size),
        dtype=np.uint8,
        chunks=(1, image_size, image_size),
        compression="gzip",
        compression_opts=1,
        shuffle=False,
    )


def _decode_into(
    ds: h5py.Dataset, tasks: list, names: np.ndarray, workers: int, progress: Progress
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode the images (``workers`` processes when > 1) and write each one as it arrives to
    the next row of ``ds``; returns (which rows were kept, [(image_index, reason)] of the
    rejected ones)."""
    keep = np.zeros(len(tasks), bool)
    rejected: list[tuple[str, str]] = []
    k = 0
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        it = pool.imap(_decode_star, tasks, chunksize=4) if pool else map(_decode_star, tasks)
        for i, (img, reason) in enumerate(it):
            if img is None:
                rejected.append((names[i], reason))
            else:
                ds[k] = img
                keep[i] = True
                k += 1
            progress.update()
    finally:
        if pool:
            pool.close()
            pool.join()
    return keep, rejected


def _check_rejected(
    out_path, rejected: list, n: int, k: int, max_rejected_fraction: float, rejected_log
) -> None:
    """Write the rejected-images log (if asked), then fail for too many rejections or none
    written."""
    if rejected_log is not None:
        write_csv(rejected_log, pd.DataFrame(rejected, columns=["image_index", "reason"]))
    where = str(out_path) + (f" (rejected images listed in {rejected_log})" if rejected_log else "")
    check_rejected_fraction(len(rejected), n, max_rejected_fraction, where)
    if k == 0:
        raise WorkflowError(f"{out_path}: every image of this shard was rejected")


def _write_columns(f: h5py.File, columns: dict, keep: np.ndarray, rejected: list) -> None:
    """The kept images' columns and the rejected images with their reasons."""
    f.create_dataset("labels", data=columns["labels"][keep])
    if columns["targets"] is not None:
        f.create_dataset("targets", data=columns["targets"][keep])
    f.create_dataset("image_index", data=np.array(columns["image_index"][keep], dtype="S"))
    f.create_dataset("patient_id", data=columns["patient_id"][keep])
    f.create_dataset("rejected_image_index", data=np.array([r[0] for r in rejected], dtype="S"))
    f.create_dataset("rejected_reason", data=np.array([r[1] for r in rejected], dtype="S"))


def label_matrix(finding_labels, label_names: list[str]) -> np.ndarray:
    """uint8 (N, K): 1 where an image's ``Finding Labels`` ("A|B" or "No Finding") has
    ``label_names[k]``."""
    sets = [set(str(x).split("|")) for x in finding_labels]
    return np.array([[n in s for n in label_names] for s in sets], np.uint8).reshape(
        len(sets), len(label_names)
    )


def read_shard(path: str | Path, image_size: int | None = None) -> dict:
    """Read a whole shard into memory (one shard is small by construction)."""
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"Shard '{path}' does not exist; rerun the shard rule.")
    try:
        with h5py.File(path, "r") as f:
            out = {
                "images": f["images"][...],
                "labels": f["labels"][...].astype(np.int64),
                "image_index": f["image_index"][...].astype(str),
                "patient_id": f["patient_id"][...],
                "attrs": dict(f.attrs),
            }
    except (OSError, KeyError) as e:
        raise WorkflowError(
            f"Cannot read shard '{path}' ({e}); it is corrupt or not a shard of this workflow. "
            f"{FIX_DAMAGED}"
        ) from None
    check_image_size(out["images"], path, image_size)
    return out


def check_image_size(images: np.ndarray, path, image_size: int | None) -> None:
    if image_size is not None and images.shape[1:] != (image_size, image_size):
        raise WorkflowError(
            f"Shard '{path}' holds {images.shape[1]}x{images.shape[2]} images but the model "
            f"expects {image_size}x{image_size} (data.image_size). Rebuild the shards."
        )
