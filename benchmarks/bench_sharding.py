"""Benchmark the shard writer on real-size (1024x1024, 8-bit) chest-like PNGs.

Measures in one run, interleaved (images/s, median of repeats after a warm-up):

- ours:   cxrtransfer.data.shards.write_shard(rows, out, 224, attrs, workers=2) (the shard rule);
          also with workers=1 (per-core efficiency against the one-process naive way)
- naive:  PIL open, convert("RGB"), resize to 224, float64 array, stack all (one process),
          as such datasets are commonly prepared
- bound:  pure PNG decoding of the same files (PIL open + load) in the same 2 worker processes

and bytes per image on disk (shard file / N) against a float64 RGB 224x224 array, and the peak
RSS of a shard job (fresh subprocess) for N and 2N images: it should not grow with N.

    .venv/bin/python benchmarks/bench_sharding.py --n 150 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

SIZE = 224
FLOAT64_RGB_BYTES = SIZE * SIZE * 3 * 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=150, help="number of 1024x1024 PNGs to generate")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=1024, help="side of the generated PNGs")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--workdir", help="keep the generated files here (default: a temp dir)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def generate_pngs(out: Path, n: int, image_size: int):
    """n chest-like PNGs (one per patient) in the Kaggle layout; returns the manifest rows."""
    import pandas as pd
    from cxrtransfer.data.ingest import read_data_entry
    from cxrtransfer.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec.from_config(
        dict(
            seed=1024, n_patients=n, max_followups=1, image_size=image_size, images_per_folder=1000
        )
    )
    t0 = time.perf_counter()
    generate(out, spec)
    gen_s = time.perf_counter() - t0
    entries = read_data_entry(out / "Data_Entry_2017.csv")
    paths = {p.name: str(p) for p in out.glob("images_*/images/*.png")}
    rows = pd.DataFrame(
        {
            "image_index": entries["image_index"],
            "patient_id": entries["patient_id"],
            "label": entries["finding_labels"].str.contains("Pneumothorax").astype("int8"),
            "split": "train",
            "path": [paths[n] for n in entries["image_index"]],
        }
    ).sort_values("image_index")
    return rows.reset_index(drop=True), gen_s


def _load(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.size


def naive(paths) -> np.ndarray:
    """The common way: RGB float64 arrays of every image in one process, stacked in memory."""
    from PIL import Image

    arrs = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((SIZE, SIZE))
        arrs.append(np.asarray(im, dtype=np.float64))
    return np.stack(arrs)


def decode_bound(paths, workers: int) -> None:
    with mp.get_context("fork").Pool(workers) as pool:
        for _ in pool.imap(_load, paths, chunksize=4):
            pass


MEM_SNIPPET = r"""
import json, resource, sys
import pandas as pd
from cxrtransfer.data.shards import write_shard
rows = pd.read_csv(sys.argv[1], dtype={"image_index": str})
write_shard(rows, sys.argv[2], 224, {"task": "bench"}, workers=int(sys.argv[3]))
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"main_peak_rss_mb": self_kb / 1024, "worker_peak_rss_mb": kids_kb / 1024}))
"""


def shard_job_memory(rows, work: Path, workers: int, n: int) -> dict:
    """Peak RSS of a fresh process that writes one shard of ``n`` rows (paths repeat if needed)."""
    reps = int(np.ceil(n / len(rows)))
    big = rows.loc[np.tile(np.arange(len(rows)), reps)[:n]].copy()
    big["image_index"] = [f"{i:08d}_000.png" for i in range(n)]  # unique names, same files
    csv = work / f"rows_{n}.csv"
    big.to_csv(csv, index=False)
    out = work / f"mem_{n}.h5"
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-c", MEM_SNIPPET, str(csv), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(n=n, wall_s=time.perf_counter() - t0, shard_bytes=out.stat().st_size)
    out.unlink()
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    from cxrtransfer.data.shards import write_shard

    tmp = tempfile.TemporaryDirectory(prefix="bench_sharding_") if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    print(f"generating {args.n} {args.image_size}x{args.image_size} PNGs in {work}", flush=True)
    rows, gen_s = generate_pngs(work / "download", args.n, args.image_size)
    n = len(rows)
    paths = list(rows["path"])
    png_bytes = sum(os.path.getsize(p) for p in paths)
    print(f"  {n} PNGs, {png_bytes / n / 1e6:.2f} MB each, generated in {gen_s:.0f}s", flush=True)
    shard = work / "shard.h5"
    attrs = {"task": "bench", "split": "train", "shard": 0}

    def ours():
        write_shard(rows, shard, SIZE, attrs, workers=args.workers)

    naive_shape = []

    def run_naive():
        a = naive(paths)
        naive_shape[:] = [a.shape, a.dtype.str, a.nbytes]

    methods = {
        "ours": ours,
        "ours_1worker": lambda: write_shard(
            rows, shard.with_name("one.h5"), SIZE, attrs, workers=1
        ),
        "naive": run_naive,
        "decode_bound": lambda: decode_bound(paths, args.workers),
    }
    print(f"timing {list(methods)} x {args.repeats} rounds (after a warm-up each)", flush=True)
    res = common.run_interleaved(methods, args.repeats, n)
    shard_bytes = shard.stat().st_size
    per_image = shard_bytes / n
    ratios = {
        "ours/naive": common.ratio(res, "ours", "naive"),
        "ours/decode_bound": common.ratio(res, "ours", "decode_bound"),
        "ours_1worker/naive": common.ratio(res, "ours_1worker", "naive"),
        "float64_bytes/shard_bytes": {"value": FLOAT64_RGB_BYTES / per_image},
    }
    memory = []
    if not args.no_memory:
        for k in (n, 2 * n):
            print(f"peak RSS of a shard job with {k} images ...", flush=True)
            memory.append(shard_job_memory(rows, work, args.workers, k))
            print(f"  {memory[-1]}", flush=True)
    result = {
        "settings": vars(args),
        "machine": common.machine_info(),
        "n_images": n,
        "png_mb_per_image": png_bytes / n / 1e6,
        "generate_s": gen_s,
        "results": res,
        "ratios": ratios,
        "shard_bytes": shard_bytes,
        "shard_bytes_per_image": per_image,
        "float64_rgb_bytes_per_image": FLOAT64_RGB_BYTES,
        "naive_array": {
            "shape": list(naive_shape[0]),
            "dtype": naive_shape[1],
            "bytes": naive_shape[2],
        },
        "memory": memory,
        "targets": {"ours/naive": 3.0, "ours/decode_bound": 0.7, "float64_bytes/shard_bytes": 20.0},
    }
    common.print_rates(
        f"Shard writing, {n} PNGs {args.image_size}px -> {SIZE}px, {args.workers} workers",
        res,
        ratios,
        result["targets"],
    )
    print(f"- shard bytes/image {per_image:.0f} vs float64 RGB {FLOAT64_RGB_BYTES}")
    for m in memory:
        print(
            f"- N={m['n']}: main peak RSS {m['main_peak_rss_mb']:.0f} MB, "
            f"largest worker {m['worker_peak_rss_mb']:.0f} MB"
        )
    if args.json:
        common.write_json(args.json, result)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
