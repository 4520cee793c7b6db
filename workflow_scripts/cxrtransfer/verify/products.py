"""Check every product of the results tree; optionally remove bad files and what depends on them.

``python -m cxrtransfer.verify [--results results] [--remove]``

Snakemake does not rebuild a missing intermediate file while the files made from it still
exist, so "delete the damaged file and rerun" does nothing in the middle of the tree. This
module finds damaged or stale products (truncated HDF5/CSV, adversarial images outside their
eps ball, caches or predictions made with another version of a checkpoint, rows missing) and,
with ``--remove``, deletes each of them together with everything downstream of it (up to the
final tables, plots and report files), so that the next ``snakemake`` run rebuilds exactly
those. It also reports, and with ``--remove`` deletes, the ``.tmp-{pid}-{name}`` files left by
jobs that were killed (their pid is no longer a running process).

Only recognised products under the results directory are ever deleted; ``logs/``,
``benchmarks/`` and ``synthetic/`` (the generated dataset) are neither checked nor touched.

The logic is small functions: :func:`list_products` (products by kind), one ``check_*``
function per kind returning a reason or ``None``, :func:`downstream` (what depends on a
product), :func:`verify` (bad products, dead temporary files, removal set) and :func:`main`.
Imported without TensorFlow.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from cxrtransfer import SPLITS, WorkflowError
from cxrtransfer.core import paths as P
from cxrtransfer.core.files import file_sha256
from cxrtransfer.data.adversarial_cache import DATASETS as _CACHE_DATASETS
from cxrtransfer.data.ingest import MANIFEST_COLUMNS
from cxrtransfer.evaluate.predictions import ADV_COLUMNS as ADV_PRED_COLUMNS
from cxrtransfer.evaluate.predictions import CLEAN_COLUMNS as CLEAN_PRED_COLUMNS
from cxrtransfer.plan.study import ENSEMBLE_SEP, VIEW_SEP

SHARD_DATASETS = (
    "images",
    "labels",
    "image_index",
    "patient_id",
    "rejected_image_index",
    "rejected_reason",
)
SHARD_PER_IMAGE = ("images", "labels", "image_index", "patient_id")
ATTACK_DATASETS = (*_CACHE_DATASETS, "l2", "linf")
SHUFFLED_SUFFIX = P.CONTROL_SUFFIX
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TMP_RE = re.compile(r"^\.tmp-(\d+)-(.+)$")
SHARD_RE = re.compile(r"^\d{3,}$")
# top-level directories that are not products: never checked, never touched
NOT_CHECKED = ("logs", "benchmarks", "synthetic")
# order in which kinds are checked: upstream first (a product downstream of a bad one is not
# checked again: it is removed with it anyway)
KINDS = (
    "manifest",
    "shard",
    "shard_summary",
    "model",
    "uap",
    "attack",
    "clean_prediction",
    "adv_prediction",
    "set",
    "table",
    "plot",
    "report",
)
FINAL_KINDS = ("table", "plot", "report")


@dataclass(frozen=True, order=True)
class Product:
    """One removable product: a file, or a directory for a model and ``tables/matrices``.

    ``fields`` are the wildcards parsed from the path, as sorted (name, value) pairs.
    """

    kind: str
    path: Path
    fields: tuple[tuple[str, str], ...] = ()

    def __getitem__(self, name: str) -> str:
        return dict(self.fields)[name]

    def get(self, name: str, default=None):
        return dict(self.fields).get(name, default)


def _product(kind: str, path: Path, **fields: str) -> Product:
    return Product(kind, path, tuple(sorted(fields.items())))


# ---------------------------------------------------------------------------------------------
# listing


def _dirs(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink())


# (kind, path template, fixed fields), tried in order: the first that matches names a file.
FILE_KINDS = (
    ("manifest", P.MANIFEST_REJECTED, {"role": "rejected"}),
    ("manifest", P.MANIFEST_SUMMARY, {"role": "summary"}),
    ("manifest", P.MANIFEST, {"role": "manifest"}),
    ("shard", P.SHARD, {}),
    ("shard_summary", P.SHARD_SUMMARY, {}),
    ("shard_summary", P.SHARD_REJECTED, {}),
    ("uap", P.UAP, {}),
    ("attack", P.ATTACK, {}),
    ("clean_prediction", P.PRED_CLEAN, {}),
    ("adv_prediction", P.PRED_ADV, {}),
    ("set", P.SET_METRICS, {}),
)
_FILE_PATTERNS = [(kind, P.pattern(t), fixed) for kind, t, fixed in FILE_KINDS]
_MODEL_DIR = P.pattern(P.MODEL_DIR)
_MATRICES = P.pattern(P.MATRICES)
FINAL_DIRS = {"table": "tables", "plot": "plots", "report": "report"}


def classify(rel: str) -> tuple[str, dict] | None:
    """(kind, wildcards) of a file path relative to the results directory, or None."""
    for kind, pat, fixed in _FILE_PATTERNS:
        m = pat.match(rel)
        if m:
            return kind, {**m.groupdict(), **fixed}
    return None


def list_products(results: str | os.PathLike) -> dict[str, list[Product]]:
    """Every product present under ``results``, by kind (see :data:`KINDS`), recognised by
    the path templates of :mod:`cxrtransfer.core.paths`.

    Files that match no pattern of the results tree are ignored (never reported or removed).
    A model directory counts as a product once any of model.keras, metrics.json or
    history.csv exists (a directory with only ``work/`` is an interrupted training that
    Snakemake resumes).
    """
    r = Path(results)
    out: dict[str, list[Product]] = {k: [] for k in KINDS}
    for p in _walk_files(r):
        rel = p.relative_to(r).as_posix()
        if rel.split("/")[0] in NOT_CHECKED:
            continue
        found = classify(rel)
        if found:
            out[found[0]].append(_product(found[0], p, **found[1]))
        else:
            for kind, top in FINAL_DIRS.items():
                if rel.startswith(top + "/") and not _MATRICES.match(str(Path(rel).parent)):
                    out[kind].append(_product(kind, p))
    for d in _dirs(r / "models"):
        m = _MODEL_DIR.match(d.relative_to(r).as_posix())
        if m and any((d / n).exists() for n in ("model.keras", "metrics.json", "history.csv")):
            out["model"].append(_product("model", d, **m.groupdict()))
    out["table"] += [_product("table", d) for d in _dirs(r / "tables")]  # tables/matrices
    for kind in out:
        out[kind].sort(key=lambda x: x.path)
    # base caches before their shuffled controls
    out["attack"].sort(key=lambda a: (a["attack"].endswith(SHUFFLED_SUFFIX), a.path))
    return out


def _walk_files(d: Path) -> list[Path]:
    """Files under ``d`` at any depth (not following directory symlinks), without temporary
    files."""
    out = []
    for dirpath, _, filenames in os.walk(d):
        out += [Path(dirpath) / n for n in filenames if not TMP_RE.match(n)]
    return sorted(p for p in out if p.is_file())


# ---------------------------------------------------------------------------------------------
# checkers: each returns a reason (str) or None


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


def _text(a) -> str:
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
        if want is not None and name in attrs and _text(attrs[name]) != want:
            raise Bad(f"attribute {name} is '{_text(attrs[name])}', expected '{want}'")


@_reason
def check_csv(path: Path) -> None:
    """A CSV product parses and ends with a newline."""
    read_csv_checked(path)


def read_metrics(model_dir: Path) -> dict:
    """A model's metrics.json as a dict with a checkpoint hash; raise :class:`Bad` otherwise."""
    p = model_dir / "metrics.json"
    if not p.is_file():
        raise Bad("metrics.json is missing")
    try:
        m = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise Bad(f"metrics.json does not parse ({e})") from None
    if not isinstance(m, dict) or not m.get("checkpoint_sha256"):
        raise Bad("metrics.json has no checkpoint_sha256")
    return m


@_reason
def check_model(model_dir: Path) -> None:
    """metrics.json parses, model.keras exists and hashes to metrics.json's checkpoint_sha256,
    history.csv parses."""
    m = read_metrics(model_dir)
    if not m.get("task"):
        raise Bad("metrics.json has no task")
    ckpt = model_dir / "model.keras"
    if not ckpt.is_file():
        raise Bad("model.keras is missing")
    sha = file_sha256(ckpt)
    if sha != m["checkpoint_sha256"]:
        raise Bad(
            f"model.keras: its SHA-256 is {sha[:12]}… but metrics.json records "
            f"{str(m['checkpoint_sha256'])[:12]}… (checkpoint replaced or damaged)"
        )
    if not (model_dir / "history.csv").is_file():
        raise Bad("history.csv is missing")
    try:
        read_csv_checked(model_dir / "history.csv")
    except Bad as e:
        raise Bad(f"history.csv: {e}") from None


@_reason
def check_uap(path: Path, source_sha256: str | None) -> None:
    """A universal perturbation: readable, within its budget, crafted on the source's current
    checkpoint."""
    from cxrtransfer.attacks.uap import read_uap

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
    why = eps_violation(data["images"], clean["images"], _text(attrs["norm"]), float(attrs["eps"]))
    if why:
        raise Bad(why)
    if source_sha256 is None:
        raise Bad("its source model has no readable metrics.json")
    got = _text(attrs.get("source_checkpoint_sha256", ""))
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
    where = f"{references[0].parent}/*.h5" if references else "its inputs"
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
    cells = json.loads(Path(path).read_text())
    if not isinstance(cells, list) or not cells:
        raise Bad("not a non-empty JSON list of cells")
    if not all(isinstance(c, dict) for c in cells):
        raise Bad("holds entries that are not cell objects")


@_reason
def check_final(path: Path) -> None:
    """A table, plot or report file: CSVs parse, PNGs have the PNG signature, YAML parses, other
    files are not empty; a directory (tables/matrices) checks each file in it."""
    path = Path(path)
    files = _walk_files(path) if path.is_dir() else [path]
    for p in files:
        where = f"{p.relative_to(path)}: " if path.is_dir() else ""
        if p.name.startswith(".snakemake"):
            continue
        if p.suffix == ".csv":
            try:
                read_csv_checked(p)
            except Bad as e:
                raise Bad(f"{where}{e}") from None
        elif p.suffix == ".png":
            with open(p, "rb") as f:
                if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                    raise Bad(f"{where}not a PNG file (no PNG signature)")
        elif p.stat().st_size == 0:
            raise Bad(f"{where}empty file")
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            try:
                yaml.safe_load(p.read_text())
            except yaml.YAMLError as e:
                raise Bad(f"{where}does not parse as YAML ({str(e).splitlines()[0]})") from None


# ---------------------------------------------------------------------------------------------
# dependencies


def model_sha256(results: Path, model: str) -> str | None:
    """The checkpoint hash recorded in ``models/{model}/metrics.json`` or None if unreadable."""
    try:
        return str(read_metrics(results / "models" / model)["checkpoint_sha256"])
    except (Bad, OSError):
        return None


def model_task(results: Path, model: str) -> str | None:
    """A model's task: metrics.json's "task"; if unreadable, the one task of its clean
    predictions; else None (unknown)."""
    try:
        task = read_metrics(results / "models" / model).get("task")
        if task:
            return str(task)
    except (Bad, OSError):
        pass
    clean = results / "predictions" / model / "clean"
    tasks = sorted(f.stem for f in clean.glob("*.csv")) if clean.is_dir() else []
    return tasks[0] if len(tasks) == 1 else None


@dataclass
class Index:
    """Products of a tree looked up by (kind, field, value), and each model's task."""

    products: dict[str, list[Product]]
    model_tasks: dict[str, str | None]
    # a defended model -> the model inside it (metrics.json's base_model)
    model_bases: dict[str, str] = field(default_factory=dict)
    by: dict[tuple[str, str, str], set[Product]] = field(default_factory=dict)

    def __post_init__(self):
        by = defaultdict(set)
        for kind, prods in self.products.items():
            for p in prods:
                for k, v in p.fields:
                    by[(kind, k, v)].add(p)
        for model, task in self.model_tasks.items():
            for p in self.products["model"]:
                if p["model"] == model:
                    by[("model", "task", str(task))].add(p)
        self.by = dict(by)

    def select(self, kind: str, **fields: str) -> set[Product]:
        """Products of ``kind`` whose fields equal all of ``fields``."""
        if not fields:
            return set(self.products[kind])
        sets = [self.by.get((kind, k, v), set()) for k, v in fields.items()]
        return set.intersection(*sets)


def build_index(results: Path, products: dict[str, list[Product]]) -> Index:
    tasks = {p["model"]: model_task(results, p["model"]) for p in products["model"]}
    bases = {}
    for p in products["model"]:
        try:
            base = read_metrics(results / "models" / p["model"]).get("base_model")
        except (Bad, OSError):
            base = None
        if base:
            bases[p["model"]] = str(base)
    return Index(products, tasks, bases)


def children(p: Product, ix: Index) -> set[Product]:
    """Products made directly from ``p`` (or by the same job as ``p``)."""
    k, sel = p.kind, ix.select
    if k == "manifest":
        t = p["task"]
        return sel("manifest", task=t) | sel("shard", task=t) | sel("shard_summary", task=t)
    if k == "shard":
        t = p["task"]
        # the train rule reads all three splits (test metrics), so a rebuilt test shard also
        # retrains the task's models (Snakemake: input newer than output)
        out = sel("shard_summary", task=t) | sel("model", task=t)
        if p["split"] == "test":  # one attack job reads all test shards of its data task
            out |= sel("attack", data_task=t)
            out |= sel("clean_prediction", data_task=t)
        return out
    if k == "shard_summary":
        return sel("shard_summary", task=p["task"])
    if k == "model":
        m = p["model"]
        task = ix.model_tasks.get(m)
        out = sel("attack", source=m) | sel("clean_prediction", target=m) | sel("uap", source=m)
        # an ensemble source is made from its members' checkpoints
        out |= {e for e in sel("model") if m in e["model"].split(ENSEMBLE_SEP) and e != p}
        # a defended model is made from the model inside it
        out |= {d for d in sel("model") if ix.model_bases.get(d["model"]) == m}
        # a finding view {model}@{task} is made from the multi-label model
        out |= {v for v in sel("model") if v["model"].partition(VIEW_SEP)[0] == m and v != p}
        out |= sel("adv_prediction", target=m) | sel("adv_prediction", source=m)
        out |= sel("set", source=m)
        # targets of a set are all models of its data task (an ensemble is never a target);
        # unknown task: every set
        if ENSEMBLE_SEP not in m:
            out |= sel("set", data_task=task) if task else sel("set")
        return out
    if k == "uap":  # applied to any data task's test images by the attack jobs
        return sel("attack", source=p["source"], attack=p["attack"], eps=p["eps"])
    if k == "attack":
        keys = {f: p[f] for f in ("source", "data_task", "attack", "eps")}
        out = sel("adv_prediction", **keys) | sel("set", **keys)
        # one attack job writes every shard's cache of a set and of its control
        return out | sel("attack", **keys) | twins(p, ix)
    if k == "clean_prediction":
        return sel("set", data_task=p["data_task"])
    if k == "adv_prediction":
        keys = {f: p[f] for f in ("source", "data_task", "attack", "eps")}
        return sel("set", **keys) | twins(p, ix, target=p["target"])
    if k == "set":
        return set().union(*(sel(f) for f in FINAL_KINDS)) | twins(p, ix)
    if k == "table":  # the tables job writes all of tables/; every plot reads transfer.csv
        return sel("table") | sel("plot")
    return set()  # a plot or the report config: nothing is made from it


def twins(p: Product, ix: Index, **fields: str) -> set[Product]:
    """Products of the same kind made by the same job as ``p``: an attack set's noise control
    and the control's attack set (one attack job writes both), likewise their predictions (one
    predict_adv job) and metrics sets (one evaluate job)."""
    attack = p["attack"]
    other = (
        attack.removesuffix(SHUFFLED_SUFFIX)
        if attack.endswith(SHUFFLED_SUFFIX)
        else attack + SHUFFLED_SUFFIX
    )
    keys = {f: p[f] for f in ("source", "data_task", "eps")}
    return ix.select(p.kind, attack=other, **keys, **fields)


def downstream(p: Product, ix: Index) -> set[Product]:
    """``p`` and every product made from it, transitively."""
    seen = {p}
    todo = [p]
    while todo:
        for c in children(todo.pop(), ix):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return seen


# ---------------------------------------------------------------------------------------------
# temporary files


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a running process on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def dead_tmp_files(results: Path, running: Callable[[int], bool] = pid_running) -> list[Path]:
    """``.tmp-{pid}-{name}`` files anywhere under ``results`` (except ``synthetic/``) whose
    pid is not a running process."""
    out = []
    for dirpath, dirnames, filenames in os.walk(results):
        if Path(dirpath) == results:
            dirnames[:] = [d for d in dirnames if d != "synthetic"]
        dirnames.sort()
        for name in sorted(filenames):
            m = TMP_RE.match(name)
            if m and not running(int(m.group(1))):
                out.append(Path(dirpath) / name)
    return out


def missing_set_inputs(p: Product, ix: Index, results: Path) -> list[Path]:
    """Inputs of a metrics set that no longer exist: the attack cache of every test shard seen
    for the data task (shards and this set's caches) and, for every target (model of the set's
    data task), its clean and adversarial predictions."""
    src, dt, atk, eps = (p[f] for f in ("source", "data_task", "attack", "eps"))
    keys = {"source": src, "data_task": dt, "attack": atk, "eps": eps}
    shards = {s["shard"] for s in ix.select("shard", task=dt, split="test")}
    shards |= {a["shard"] for a in ix.select("attack", **keys)}
    # an ensemble (members joined with ENSEMBLE_SEP) is a source only, never a target
    targets = sorted(m for m, t in ix.model_tasks.items() if t == dt and ENSEMBLE_SEP not in m)
    need = [attack_path(results, keys, s) for s in sorted(shards)]
    for t in targets:
        need.append(_under(results, P.PRED_CLEAN, target=t, data_task=dt))
        need.append(_under(results, P.PRED_ADV, target=t, **keys))
    return [n for n in need if not n.is_file()]


def _under(results: Path, template: str, **fields: str) -> Path:
    """A template's path under ``results`` (which may be another tree than ./results)."""
    return results / template.removeprefix(P.RESULTS + "/").format(**fields)


def attack_path(results: Path, keys: dict, shard: str) -> Path:
    return _under(results, P.ATTACK, shard=shard, **keys)


def set_references(p: Product, ix: Index, results: Path) -> list[Path]:
    """The files a prediction file of a whole set was made from, in shard order: the data
    task's test shards (clean predictions) or the set's attack cache of each of them
    (adversarial ones); every test shard seen in the tree for the data task counts."""
    dt = p["data_task"]
    shards = {s["shard"] for s in ix.select("shard", task=dt, split="test")}
    if p.kind == "clean_prediction":
        return [_under(results, P.SHARD, task=dt, split="test", shard=s) for s in sorted(shards)]
    keys = {f: p[f] for f in ("source", "data_task", "attack", "eps")}
    shards |= {a["shard"] for a in ix.select("attack", **keys)}
    return [attack_path(results, keys, s) for s in sorted(shards)]


def missing_sets(ix: Index, results: Path) -> list[Path]:
    """Metrics sets that the tables were made from (a set's attack caches or predictions
    exist) but that no longer exist."""
    keys = {
        tuple(x[f] for f in ("source", "data_task", "attack", "eps"))
        for kind in ("attack", "adv_prediction")
        for x in ix.products[kind]
    }
    paths = [results / "metrics" / "sets" / s / d / a / f"eps{e}.json" for s, d, a, e in keys]
    return sorted(p for p in paths if not p.is_file())


def _missing(what: list[Path]) -> str:
    more = f" (and {len(what) - 1} more)" if len(what) > 1 else ""
    return f"its input {what[0]} is missing{more}; Snakemake would not rebuild it"


# ---------------------------------------------------------------------------------------------
# the whole tree


def check_product(p: Product, results: Path, cache: dict, ix: Index | None = None) -> str | None:
    """Run the kind's checker on ``p`` with the references it needs (memoised in ``cache``);
    with the tree's index ``ix``, a set or the tables whose inputs are gone are bad too."""

    def sha(model: str) -> str | None:
        key = ("sha", model)
        if key not in cache:
            cache[key] = model_sha256(results, model)
        return cache[key]

    k = p.kind
    if k == "manifest":
        return check_manifest(p.path, p["role"])
    if k == "shard":
        if not (results / "manifests" / f"{p['task']}.csv").is_file():
            return f"its manifest manifests/{p['task']}.csv is missing"
        return check_shard(p.path, p["task"], p["split"])
    if k == "shard_summary":
        return check_csv(p.path)
    if k == "model":
        return check_model(p.path)
    if k == "uap":
        return check_uap(p.path, sha(p["source"]))
    if k == "attack":
        fallback = results / "shards" / p["data_task"] / "test" / f"{p['shard']}.h5"
        try:
            with h5py.File(p.path, "r") as f:
                attr = f.attrs.get("clean_shard")
        except READ_ERRORS as e:
            return f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        clean = resolve_clean_shard(_text(attr), results) if attr is not None else fallback
        return check_attack(p.path, clean, sha(p["source"]))
    if k in ("clean_prediction", "adv_prediction"):
        refs = set_references(p, ix, results) if ix else []
        key = ("index", tuple(refs))
        if key not in cache and refs and all(r.is_file() for r in refs):
            try:
                cache[key] = np.concatenate([read_image_index(r) for r in refs])
            except READ_ERRORS:
                cache[key] = None
        return check_prediction(
            p.path,
            refs,
            sha(p["target"]),
            sha(p["source"]) if k == "adv_prediction" else None,
            adversarial=k == "adv_prediction",
            image_index=cache.get(key),
        )
    if k == "set":
        gone = missing_set_inputs(p, ix, results) if ix else []
        return _missing(gone) if gone else check_set(p.path)
    if k == "table" and p.path.name == "transfer.csv" and ix:
        gone = missing_sets(ix, results)
        if gone:
            return _missing(gone)
    return check_final(p.path)


@dataclass
class Report:
    bad: list[tuple[Product, str]]  # (product, reason), in check order
    dead_tmp: list[Path]
    remove: list[Product]  # bad products and everything downstream, sorted
    n_products: int = 0


def verify(results: str | os.PathLike, running: Callable[[int], bool] = pid_running) -> Report:
    """Check every product under ``results``; nothing is changed."""
    results = Path(results)
    products = list_products(results)
    ix = build_index(results, products)
    cache: dict = {}
    bad: list[tuple[Product, str]] = []
    doomed: set[Product] = set()
    for kind in KINDS:
        for p in products[kind]:
            if p in doomed:  # downstream of a bad product: removed with it anyway
                continue
            why = check_product(p, results, cache, ix)
            if why:
                bad.append((p, why))
                doomed |= downstream(p, ix)
    for p, why in incomplete_sets(results, ix):
        if p not in doomed:
            bad.append((p, why))
            doomed |= downstream(p, ix)
    return Report(
        bad,
        dead_tmp_files(results, running),
        sorted(doomed, key=lambda p: p.path),
        sum(map(len, products.values())),
    )


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (not following a final symlink) lies strictly inside ``root``."""
    parent = Path(os.path.realpath(path.parent))
    real_root = Path(os.path.realpath(root))
    return path.name not in ("", ".", "..") and (parent == real_root or real_root in parent.parents)


_SET_DIR = P.pattern(P.ATTACK_DIR)


def incomplete_sets(results: Path, ix: Index) -> list[tuple[Product, str]]:
    """Adversarial-set directories that lack the cache of a test shard of their data task
    (e.g. a cache deleted by hand): Snakemake would not rerun the attack job while the
    directory exists. Each is reported as its first missing cache."""
    out = []
    root = results / "attacks"
    for d in sorted(root.glob("*/*/*/*")) if root.is_dir() else []:
        m = _SET_DIR.match(d.relative_to(results).as_posix())
        if not m or not d.is_dir():
            continue
        keys = m.groupdict()
        shards = {s["shard"] for s in ix.select("shard", task=keys["data_task"], split="test")}
        gone = sorted(s for s in shards if not (d / f"{s}.h5").is_file())
        if gone:
            more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
            p = _product("attack", d / f"{gone[0]}.h5", shard=gone[0], **keys)
            out.append((p, f"missing: the set has no cache of test shard {gone[0]}{more}"))
    return out


def emptied_set_dirs(removed: list[Product]) -> list[Path]:
    """Directories of adversarial sets whose caches were all removed. One attack job writes a
    whole set's directory (a Snakemake ``directory()`` output, with its ``.snakemake_timestamp``):
    while the directory exists Snakemake would not rerun the job, so it goes too."""
    dirs = {p.path.parent for p in removed if p.kind == "attack"}
    return sorted(d for d in dirs if d.is_dir() and not any(d.glob("*.h5")))


def remove_path(path: Path, results: Path) -> None:
    """Delete a file, symlink or directory that lies inside ``results``; refuse anything else."""
    if not inside(path, results):
        raise ValueError(f"refusing to remove {path}: not inside {results}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cxrtransfer.verify",
        description=(
            "Check every product of the results tree (HDF5 shards and attack caches, models, "
            "predictions, metrics, tables, plots) and list bad files with the reason. With "
            "--remove, delete each bad file together with everything downstream of it, so the "
            "next snakemake run rebuilds exactly those, and delete temporary files of jobs "
            "that are no longer running. Run it while no workflow job is running (on a "
            "cluster, a job on another node is not visible as a process here)."
        ),
    )
    ap.add_argument("--results", default="results", help="results directory (default: results)")
    ap.add_argument(
        "--remove",
        action="store_true",
        help="delete the bad files, everything downstream of them, and dead temporary files",
    )
    args = ap.parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(f"error: results directory '{results}' does not exist", file=sys.stderr)
        return 2
    rep = verify(results)
    for p, why in rep.bad:
        print(f"BAD {p.path}: {why}")
    for t in rep.dead_tmp:
        m = TMP_RE.match(t.name)
        print(f"DEAD-TMP {t}: temporary file of process {m.group(1)}, which is not running")
    n_bad, n_tmp = len(rep.bad), len(rep.dead_tmp)
    bad_paths = {p.path for p, _ in rep.bad}
    n_down = sum(p.path not in bad_paths for p in rep.remove)
    if args.remove:
        for p in rep.remove:
            remove_path(p.path, results)
            print(
                f"removed {p.path}" + ("" if p.path in bad_paths else " (downstream of a bad file)")
            )
        for d in emptied_set_dirs(rep.remove):
            remove_path(d, results)
            print(f"removed {d} (the attack job's output directory, now without caches)")
        for t in rep.dead_tmp:
            remove_path(t, results)
            print(f"removed {t}")
    summary = f"{n_bad} bad file(s), {n_tmp} dead temporary file(s)"
    if n_bad or n_tmp:
        if args.remove:
            summary += (
                f"; removed {len(rep.remove)} product(s) ({n_down} downstream of the bad ones) "
                f"and {n_tmp} temporary file(s). Run snakemake to rebuild them."
            )
        else:
            summary += (
                f"; {n_down} more product(s) depend on the bad ones. Rerun with --remove to "
                "delete them all, then run snakemake to rebuild them."
            )
    else:
        summary += f"; all {rep.n_products} products are fine."
    print(summary)
    return 1 if (n_bad or n_tmp) else 0


if __name__ == "__main__":
    sys.exit(main())
