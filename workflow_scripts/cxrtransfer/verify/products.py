"""The products of a results tree: what is there, by kind, recognised by the path templates.

:func:`list_products` lists every product under a results directory as :class:`Product`\\ s
(kind, path, wildcards) by the templates of :mod:`cxrtransfer.core.paths`; the checks are in
:mod:`cxrtransfer.verify.formats`, what depends on what in :mod:`cxrtransfer.verify.index` and
the command (``python -m cxrtransfer.verify``) in :mod:`cxrtransfer.verify.command`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cxrtransfer.core import paths as P

TMP_RE = re.compile(r"^\.tmp-(\d+)-(.+)$")
# top-level directories that are not products: never checked, never touched
NOT_CHECKED = tuple(P.relative(d) for d in (P.LOGS, P.BENCHMARKS, P.SYNTHETIC))
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
    "comparison",
    "checklist",
    "table",
    "plot",
    "report",
)
FINAL_KINDS = ("table", "plot", "report")
# the wildcards naming an adversarial set: source, data_task, attack, eps
SET_FIELDS = P.fields(P.ADV_SET)
# the files of a model directory that make it a product (model.keras, metrics.json, history.csv)
MODEL_FILES = tuple(Path(t).name for t in (P.MODEL, P.MODEL_METRICS, P.MODEL_HISTORY))


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

    def set_keys(self) -> dict[str, str]:
        """The adversarial set this product belongs to (see :data:`SET_FIELDS`)."""
        return {f: self[f] for f in SET_FIELDS}


def product(kind: str, path: Path, **fields: str) -> Product:
    return Product(kind, path, tuple(sorted(fields.items())))


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
    ("comparison", P.COMPARISONS, {}),
    ("checklist", P.CHECKLIST_RUNS, {}),
)
_FILE_PATTERNS = [(kind, P.pattern(t), fixed) for kind, t, fixed in FILE_KINDS]
_MODEL_DIR = P.pattern(P.MODEL_DIR)
_MATRICES = P.pattern(P.MATRICES)
FINAL_DIRS = {"table": P.TABLES, "plot": P.PLOTS, "report": P.REPORT}


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
    for p in walk_files(r):
        rel = p.relative_to(r).as_posix()
        if rel.split("/")[0] in NOT_CHECKED:
            continue
        found = classify(rel)
        if found:
            out[found[0]].append(product(found[0], p, **found[1]))
        else:
            for kind, top in FINAL_DIRS.items():
                in_final = rel.startswith(P.relative(top) + "/")
                if in_final and not _MATRICES.match(str(Path(rel).parent)):
                    out[kind].append(product(kind, p))
    for d in _dirs(P.under(r, P.MODELS)):
        m = _MODEL_DIR.match(d.relative_to(r).as_posix())
        if m and any((d / n).exists() for n in MODEL_FILES):
            out["model"].append(product("model", d, **m.groupdict()))
    out["table"] += [product("table", d) for d in _dirs(P.under(r, P.TABLES))]  # tables/matrices
    for kind in out:
        out[kind].sort(key=lambda x: x.path)
    # base caches before their shuffled controls
    out["attack"].sort(key=lambda a: (a["attack"].endswith(P.CONTROL_SUFFIX), a.path))
    return out


def walk_files(d: Path) -> list[Path]:
    """Files under ``d`` at any depth (not following directory symlinks), without temporary
    files."""
    out = []
    for dirpath, _, filenames in os.walk(d):
        out += [Path(dirpath) / n for n in filenames if not TMP_RE.match(n)]
    return sorted(p for p in out if p.is_file())
