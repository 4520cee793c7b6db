"""``python -m cxrtransfer.verify [--results results] [--remove]``: check every product of the
results tree; optionally remove bad files and what depends on them.

Snakemake does not rebuild a missing intermediate file while the files made from it still
exist, so "delete the damaged file and rerun" does nothing in the middle of the tree. This
command finds damaged or stale products (truncated HDF5/CSV, adversarial images outside their
eps ball, caches or predictions made with another version of a checkpoint, rows missing) and,
with ``--remove``, deletes each of them together with everything downstream of it (up to the
final tables, plots and report files), so that the next ``snakemake`` run rebuilds exactly
those. It also reports, and with ``--remove`` deletes, the ``.tmp-{pid}-{name}`` files left by
jobs that were killed (their pid is no longer a running process).

Only recognised products under the results directory are ever deleted; ``logs/``,
``benchmarks/`` and ``synthetic/`` (the generated dataset) are neither checked nor touched.

The parts: :func:`cxrtransfer.verify.products.list_products` (products by kind), one
``check_*`` per kind in :mod:`cxrtransfer.verify.formats`, what depends on a product in
:mod:`cxrtransfer.verify.index`, and here :func:`verify` (bad products, dead temporary files,
removal set) and :func:`main`. Imported without TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from cxrtransfer import WorkflowError
from cxrtransfer.core import paths as P
from cxrtransfer.evaluate.checklist_io import read_runs
from cxrtransfer.verify import formats as F
from cxrtransfer.verify.index import (
    Index,
    build_index,
    downstream,
    incomplete_sets,
    missing,
    missing_set_inputs,
    missing_sets,
    model_sha256,
    set_references,
)
from cxrtransfer.verify.products import KINDS, TMP_RE, Product, list_products

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
    synthetic = P.relative(P.SYNTHETIC)
    out = []
    for dirpath, dirnames, filenames in os.walk(results):
        if Path(dirpath) == results:
            dirnames[:] = [d for d in dirnames if d != synthetic]
        dirnames.sort()
        for name in sorted(filenames):
            m = TMP_RE.match(name)
            if m and not running(int(m.group(1))):
                out.append(Path(dirpath) / name)
    return out


# ---------------------------------------------------------------------------------------------
# the whole tree


def _check_attack(p: Product, results: Path, sha: Callable) -> str | None:
    """An attack cache, against the clean shard it names (else its data task's test shard)."""
    fallback = P.under(results, P.SHARD, task=p["data_task"], split="test", shard=p["shard"])
    try:
        with h5py.File(p.path, "r") as f:
            attr = f.attrs.get("clean_shard")
    except F.READ_ERRORS as e:
        return f"cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    clean = F.resolve_clean_shard(F.attr_text(attr), results) if attr is not None else fallback
    return F.check_attack(p.path, clean, sha(p["source"]))


def _check_prediction(p: Product, results: Path, sha: Callable, cache: dict, ix) -> str | None:
    """A prediction file, against the image_index of its set's inputs (memoised in ``cache``)."""
    adversarial = p.kind == "adv_prediction"
    refs = set_references(p, ix, results) if ix else []
    key = ("index", tuple(refs))
    if key not in cache and refs and all(r.is_file() for r in refs):
        try:
            cache[key] = np.concatenate([F.read_image_index(r) for r in refs])
        except F.READ_ERRORS:
            cache[key] = None
    return F.check_prediction(
        p.path,
        refs,
        sha(p["target"]),
        sha(p["source"]) if adversarial else None,
        adversarial=adversarial,
        image_index=cache.get(key),
    )


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
        return F.check_manifest(p.path, p["role"])
    if k == "shard":
        manifest = P.under(results, P.MANIFEST, task=p["task"])
        if not manifest.is_file():
            return f"its manifest {manifest.relative_to(results).as_posix()} is missing"
        return F.check_shard(p.path, p["task"], p["split"])
    if k in ("shard_summary", "comparison"):
        return F.check_csv(p.path)
    if k == "checklist":  # its columns, its job's config record, the checkpoint it attacked
        try:
            read_runs([p.path], {p["target"]: sha(p["target"])})
        except WorkflowError as e:
            return str(e)
        return None
    if k == "model":
        return F.check_model(p.path)
    if k == "uap":
        return F.check_uap(p.path, sha(p["source"]))
    if k == "attack":
        return _check_attack(p, results, sha)
    if k in ("clean_prediction", "adv_prediction"):
        return _check_prediction(p, results, sha, cache, ix)
    if k == "set":
        gone = missing_set_inputs(p, ix, results) if ix else []
        return missing(gone) if gone else F.check_set(p.path)
    if k == "table" and p.path.name == Path(P.TRANSFER_TABLE).name and ix:
        gone = missing_sets(ix, results)
        if gone:
            return missing(gone)
    return F.check_final(p.path)


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


# ---------------------------------------------------------------------------------------------
# removal


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (not following a final symlink) lies strictly inside ``root``."""
    parent = Path(os.path.realpath(path.parent))
    real_root = Path(os.path.realpath(root))
    return path.name not in ("", ".", "..") and (parent == real_root or real_root in parent.parents)


def emptied_set_dirs(removed: list[Product]) -> list[Path]:
    """Directories of adversarial sets whose caches were all removed. One attack job writes a
    whole set's directory (a Snakemake ``directory()`` output, with its ``.snakemake_timestamp``):
    while the directory exists Snakemake would not rerun the job, so it goes too."""
    dirs = {p.path.parent for p in removed if p.kind == "attack"}
    return sorted(d for d in dirs if d.is_dir() and not any(d.glob("*" + Path(P.ATTACK).suffix)))


def remove_path(path: Path, results: Path) -> None:
    """Delete a file, symlink or directory that lies inside ``results``; refuse anything else."""
    if not inside(path, results):
        raise ValueError(f"refusing to remove {path}: not inside {results}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove(rep: Report, results: Path, bad_paths: set[Path]) -> None:
    """Delete the bad products, everything downstream, emptied set directories and dead
    temporary files, printing each."""
    for p in rep.remove:
        remove_path(p.path, results)
        print(f"removed {p.path}" + ("" if p.path in bad_paths else " (downstream of a bad file)"))
    for d in emptied_set_dirs(rep.remove):
        remove_path(d, results)
        print(f"removed {d} (the attack job's output directory, now without caches)")
    for t in rep.dead_tmp:
        remove_path(t, results)
        print(f"removed {t}")


# ---------------------------------------------------------------------------------------------
# the command


def _parser() -> argparse.ArgumentParser:
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
    return ap


def _summary(rep: Report, removed: bool, n_down: int) -> str:
    n_bad, n_tmp = len(rep.bad), len(rep.dead_tmp)
    summary = f"{n_bad} bad file(s), {n_tmp} dead temporary file(s)"
    if not (n_bad or n_tmp):
        return summary + f"; all {rep.n_products} products are fine."
    if removed:
        return summary + (
            f"; removed {len(rep.remove)} product(s) ({n_down} downstream of the bad ones) "
            f"and {n_tmp} temporary file(s). Run snakemake to rebuild them."
        )
    return summary + (
        f"; {n_down} more product(s) depend on the bad ones. Rerun with --remove to "
        "delete them all, then run snakemake to rebuild them."
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    bad_paths = {p.path for p, _ in rep.bad}
    n_down = sum(p.path not in bad_paths for p in rep.remove)
    if args.remove:
        _remove(rep, results, bad_paths)
    print(_summary(rep, args.remove, n_down))
    return 1 if (rep.bad or rep.dead_tmp) else 0


if __name__ == "__main__":
    sys.exit(main())
