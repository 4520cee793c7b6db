"""The format checks of the products: one ``check_*`` per kind, returning a reason or None.

Each check raises :class:`Bad` with the reason inside and is wrapped by :func:`_reason`, which
turns :class:`Bad` (or a failure to read the file) into the reason returned. JSON products are
read through :mod:`cxrtransfer.core.products`; their :class:`WorkflowError` becomes verify's
classification (:func:`read_with`).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import yaml

from cxrtransfer import SPLITS, WorkflowError
from cxrtransfer.attacks.uap import read_uap
from cxrtransfer.core import paths as P
from cxrtransfer.core.files import file_sha256
from cxrtransfer.core.products import read_json, read_model_metrics
from cxrtransfer.data.adversarial_cache import DATASETS as CACHE_DATASETS
from cxrtransfer.data.ingest import MANIFEST_COLUMNS, PNG_SIGNATURE
from cxrtransfer.evaluate.predictions import ADV_COLUMNS as ADV_PRED_COLUMNS
from cxrtransfer.evaluate.predictions import CLEAN_COLUMNS as CLEAN_PRED_COLUMNS
from cxrtransfer.verify.products import walk_files

SHARD_DATASETS = (
    "images",
    "labels",
    "image_index",
    "patient_id",
    "rejected_image_index",
    "rejected_reason",
)
SHARD_PER_IMAGE = ("images", "labels", "image_index", "patient_id")
ATTACK_DATASETS = (*CACHE_DATASETS, "l2", "linf")
METRICS_FILE, CHECKPOINT_FILE, HISTORY_FILE = (
    Path(t).name for t in (P.MODEL_METRICS, P.MODEL, P.MODEL_HISTORY)
)


class Bad(Exception):
    """A product fails a check; the message is the reason."""


READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    UnicodeDecodeError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
)


def _reason(check: Callable) -> Callable:
    """Turn a check that raises :class:`Bad` (or fails to read) into one returning a reason."""

    def wrapped(*args, **kwargs) -> str | None:
        try:
            check(*args, **kwargs)
        except Bad as e:
            return str(e)
        except READ_ERRORS as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return f"cannot be read ({type(e).__name__}: {msg})"
        return None

    wrapped.__name__ = check.__name__
    wrapped.__doc__ = check.__doc__
    return wrapped


def read_csv_checked(path: str | os.PathLike, columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV written by the workflow; raise :class:`Bad` if it is empty, cut off (no final
    newline), unparsable or lacks one of ``columns``."""
    data = Path(path).read_bytes()
    if not data:
        raise Bad("empty file")
    if not data.endswith(b"\n"):
        raise Bad("truncated: the last line has no final newline (cut-off write)")
    try:
        df = pd.read_csv(io.BytesIO(data), dtype={"image_index": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise Bad(f"does not parse as CSV ({str(e).strip().splitlines()[0][:200]})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise Bad(f"missing column(s) {', '.join(missing)}")
    return df


def _check_probs(df: pd.DataFrame, columns: Iterable[str]) -> None:
    for c in columns:
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
        bad = ~(np.isfinite(v) & (v >= 0) & (v <= 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise Bad(
                f"column {c}: {int(bad.sum())} value(s) not a probability in [0, 1] "
                f"(first at row {i + 1}: {df[c].iloc[i]!r})"
            )


@_reason
def check_manifest(path: Path, role: str = "manifest") -> None:
    """A manifest CSV (role manifest, rejected or summary) parses; the manifest has its columns,
    known splits and at least one row."""
    if role != "manifest":
        read_csv_checked(path)
        return
    df = read_csv_checked(path, MANIFEST_COLUMNS)
    if df.empty:
        raise Bad("no rows")
    unknown = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if unknown:
        raise Bad(f"unknown split value(s) {unknown}")


def read_h5(path: Path, names: Iterable[str]) -> tuple[dict[str, np.ndarray], dict]:
    """Read the datasets ``names`` entirely (a truncated file fails here) and the attributes."""
    with h5py.File(path, "r") as f:
        missing = [n for n in names if n not in f]
        if missing:
            raise Bad(f"missing dataset(s) {', '.join(missing)}")
        return {n: f[n][...] for n in names}, dict(f.attrs)


def _same_length(data: dict[str, np.ndarray], names: Iterable[str]) -> int:
    lengths = {n: len(data[n]) for n in names}
    if len(set(lengths.values())) != 1:
        raise Bad(f"datasets differ in length: {lengths}")
    return next(iter(lengths.values()))


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 3:
        raise Bad(f"images are {images.dtype} {images.shape}, expected uint8 (N, H, W)")
    if len(images) == 0:
        raise Bad("no images")


def attr_text(a) -> str:
    return a.decode() if isinstance(a, bytes) else str(a)


@_reason
def check_shard(path: Path, task: str | None = None, split: str | None = None) -> None:
    """An image shard opens, has every dataset, one length N > 0 per image, uint8 images that
    read completely, and attributes naming its task and split."""
    data, attrs = read_h5(path, SHARD_DATASETS)
    _check_images(data["images"])
    _same_length(data, SHARD_PER_IMAGE)
    _same_length(data, ("rejected_image_index", "rejected_reason"))
    if "label_names" in attrs:  # a multi-label task's shard: targets (N, K)
        with h5py.File(path, "r") as f:
            shape = f["targets"].shape if "targets" in f else None
        want_shape = (len(data["labels"]), len(attrs["label_names"]))
        if shape != want_shape:
            raise Bad(f"targets are {shape}, expected {want_shape} (images, label_names)")
    for name, want in (("task", task), ("split", split)):
        if want is not None and name in attrs and attr_text(attrs[name]) != want:
            raise Bad(f"attribute {name} is '{attr_text(attrs[name])}', expected '{want}'")


@_reason
def check_csv(path: Path) -> None:
    """A CSV product parses and ends with a newline."""
    read_csv_checked(path)


def read_with(read: Callable, path: Path, invalid: str):
    """``read(path)`` with a reader of :mod:`cxrtransfer.core.products`, its WorkflowError turned
    into verify's classification: the read error that caused it (the file cannot be read or does
    not parse) is raised again; a file read but not of the product's shape is ``Bad(invalid)``."""
    try:
        return read(path)
    except WorkflowError as e:
        if isinstance(e.__context__, READ_ERRORS):
            raise e.__context__ from None
        raise Bad(invalid) from None


def read_metrics(model_dir: Path) -> dict:
    """A model's metrics.json as a dict with a checkpoint hash; raise :class:`Bad` otherwise."""
    p = model_dir / METRICS_FILE
    if not p.is_file():
        raise Bad("metrics.json is missing")
    try:
        m = read_with(read_model_metrics, p, "metrics.json has no checkpoint_sha256")
    except (ValueError, UnicodeDecodeError) as e:
        raise Bad(f"metrics.json does not parse ({e})") from None
    if not m.get("checkpoint_sha256"):
        raise Bad("metrics.json has no checkpoint_sha256")
    return m


@_reason
def check_model(model_dir: Path) -> None:
    """metrics.json parses, model.keras exists and hashes to metrics.json's checkpoint_sha256,
    history.csv parses."""
    m = read_metrics(model_dir)
    if not m.get("task"):
        raise Bad("metrics.json has no task")
    ckpt = model_dir / CHECKPOINT_FILE
    if not ckpt.is_file():
        raise Bad("model.keras is missing")
    sha = file_sha256(ckpt)
    if sha != m["checkpoint_sha256"]:
        raise Bad(
            f"model.keras: its SHA-256 is {sha[:12]}… but metrics.json records "
            f"{str(m['checkpoint_sha256'])[:12]}… (checkpoint replaced or damaged)"
        )
    if not (model_dir / HISTORY_FILE).is_file():
        raise Bad("history.csv is missing")
    try:
        read_csv_checked(model_dir / HISTORY_FILE)
    except Bad as e:
        raise Bad(f"history.csv: {e}") from None


@_reason
def check_uap(path: Path, source_sha256: str | None) -> None:
    """A universal perturbation: readable, within its budget, crafted on the source's current
    checkpoint."""
    try:
        read_uap(path, source_sha256)
    except WorkflowError as e:
        raise Bad(str(e).split(" Run `python -m")[0]) from None


def resolve_clean_shard(attr: str, results: Path) -> Path:
    """The clean shard an attack cache names (relative to the working directory, e.g.
    ``results/shards/t/test/000.h5``) under ``results``: ``results``' parent / attr, or, if the
    attr starts with the results directory's name, that prefix replaced by ``results``."""
    rel = Path(attr)
    if rel.is_absolute():
        return rel
    if rel.parts and rel.parts[0] == results.name:
        return results.joinpath(*rel.parts[1:])
    return results.parent / rel


def eps_violation(adv: np.ndarray, clean: np.ndarray, norm: str, eps: float) -> str | None:
    """Why uint8 ``adv`` is not within ``eps`` (1/255 units for L-inf, [0, 1] pixel units for
    L2) of ``clean``, or None."""
    d = adv.astype(np.int16) - clean.astype(np.int16)
    if norm == "linf":
        worst = int(np.abs(d).max(initial=0))
        if worst > math.floor(eps + 1e-9):
            return f"L-inf perturbation {worst}/255 exceeds eps {eps:g}/255"
        return None
    if norm == "l2":
        per = np.sqrt(((d.astype(np.float64) / 255.0) ** 2).reshape(len(d), -1).sum(1))
        worst = float(per.max(initial=0.0))
        if worst > eps + 1e-6:
            return f"L2 perturbation {worst:.6g} exceeds eps {eps:g}"
        return None
    return f"unknown norm '{norm}'"


@_reason
def check_attack(path: Path, clean_shard: Path, source_sha256: str | None) -> None:
    """An attack cache reads completely, has one length N for every dataset, the clean shard's
    image_index, every image within eps of its clean image, and the current source checkpoint's
    hash."""
    data, attrs = read_h5(path, ATTACK_DATASETS)
    _check_images(data["images"])
    _same_length(data, ATTACK_DATASETS)
    if not clean_shard.is_file():
        raise Bad(f"its clean shard {clean_shard} is missing")
    try:
        clean, _ = read_h5(clean_shard, ("images", "image_index"))
    except READ_ERRORS as e:
        raise Bad(f"its clean shard {clean_shard} cannot be read ({e})") from None
    if not np.array_equal(data["image_index"].astype(str), clean["image_index"].astype(str)):
        raise Bad(f"image_index differs from its clean shard {clean_shard}")
    if data["images"].shape != clean["images"].shape:
        raise Bad(
            f"images {data['images'].shape} differ in shape from the clean shard's "
            f"{clean['images'].shape}"
        )
    for key in ("eps", "norm"):
        if key not in attrs:
            raise Bad(f"attribute {key} is missing")
    why = eps_violation(
        data["images"], clean["images"], attr_text(attrs["norm"]), float(attrs["eps"])
    )
    if why:
        raise Bad(why)
    if source_sha256 is None:
        raise Bad("its source model has no readable metrics.json")
    got = attr_text(attrs.get("source_checkpoint_sha256", ""))
    if got != source_sha256:
        raise Bad(
            f"made with source checkpoint {got[:12] or 'unknown'}… but the source model is now "
            f"{source_sha256[:12]}… (stale)"
        )


def read_image_index(path: Path) -> np.ndarray:
    """image_index of a shard or attack cache as str."""
    with h5py.File(path, "r") as f:
        return f["image_index"][...].astype(str)


@_reason
def check_prediction(
    path: Path,
    references: list[Path],
    target_sha256: str | None,
    source_sha256: str | None = None,
    adversarial: bool = False,
    image_index: np.ndarray | None = None,
) -> None:
    """A prediction CSV is complete (final newline), parses, has probabilities in [0, 1], the
    rows of its set (the test shards or attack caches ``references``, in order; ``image_index``
    if already read), and the current target (and source) checkpoint hashes."""
    df = read_csv_checked(path, ADV_PRED_COLUMNS if adversarial else CLEAN_PRED_COLUMNS)
    _check_probs(df, ("prob", "source_clean_prob", "source_adv_prob") if adversarial else ("prob",))
    where = f"{references[0].parent}/*{references[0].suffix}" if references else "its inputs"
    gone = [r for r in references if not r.is_file()]
    if gone:
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise Bad(f"its input {gone[0]} is missing{more}")
    if image_index is None:
        if not references:
            raise Bad(f"its inputs ({where}) are missing")
        try:
            image_index = np.concatenate([read_image_index(r) for r in references])
        except READ_ERRORS as e:
            raise Bad(f"its inputs {where} cannot be read ({e})") from None
    if len(df) != len(image_index):
        raise Bad(f"{len(df)} rows but {where} hold {len(image_index)} images")
    ids = df["image_index"].astype(str)
    if ids.duplicated().any() or set(ids) != set(image_index):
        raise Bad(f"image_index does not match {where}")
    hashes = [("checkpoint_sha256", target_sha256, "target")]
    if adversarial:
        hashes.append(("source_checkpoint_sha256", source_sha256, "source"))
    for col, want, who in hashes:
        if want is None:
            raise Bad(f"its {who} model has no readable metrics.json")
        got = set(df[col].astype(str))
        if got != {want}:
            stale = sorted(got - {want})
            raise Bad(
                f"{col} {stale[0][:12]}… is not the current {who} checkpoint {want[:12]}… (stale)"
            )


@_reason
def check_set(path: Path) -> None:
    """A metrics set is a non-empty JSON list of cell objects."""
    cells = read_with(read_json, Path(path), "")
    if not isinstance(cells, list) or not cells:
        raise Bad("not a non-empty JSON list of cells")
    if not all(isinstance(c, dict) for c in cells):
        raise Bad("holds entries that are not cell objects")


# the first bytes of a figure file, by suffix
SIGNATURES = {".png": ("PNG", PNG_SIGNATURE), ".pdf": ("PDF", b"%PDF-")}


@_reason
def check_final(path: Path) -> None:
    """A table, plot or report file: CSVs parse, PNGs have the PNG signature, YAML parses, other
    files are not empty; a directory (tables/matrices) checks each file in it."""
    path = Path(path)
    files = walk_files(path) if path.is_dir() else [path]
    for p in files:
        where = f"{p.relative_to(path)}: " if path.is_dir() else ""
        if p.name.startswith(".snakemake"):
            continue
        if p.suffix == ".csv":
            try:
                read_csv_checked(p)
            except Bad as e:
                raise Bad(f"{where}{e}") from None
        elif p.suffix in SIGNATURES:
            kind, signature = SIGNATURES[p.suffix]
            with open(p, "rb") as f:
                if f.read(len(signature)) != signature:
                    raise Bad(f"{where}not a {kind} file (no {kind} signature)")
        elif p.stat().st_size == 0:
            raise Bad(f"{where}empty file")
        elif p.suffix in (".yaml", ".yml"):
            try:
                yaml.safe_load(p.read_text())
            except yaml.YAMLError as e:
                raise Bad(f"{where}does not parse as YAML ({str(e).splitlines()[0]})") from None
