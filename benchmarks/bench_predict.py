"""Benchmark batched inference on uint8 images (images/s, interleaved, median of repeats).

- ours:     cxrtransfer.models.inference.predict_probs with its compiled predict function traced once
            (as predict_shards and the predict rules use it), uint8 in, batch 128
- baseline: model.predict with default arguments (batch 32; verbose=0 only to keep the log
            clean) on the same images converted to float32 [0, 1] (the conversion is timed)
- bound:    the compiled forward pass alone on float32 batches already in memory

    .venv/bin/python benchmarks/bench_predict.py --images 512 --json out.json
"""

from __future__ import annotations

import argparse

import common
import numpy as np

common.quiet_tensorflow()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="ResNet50")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=128, help="our batch size (predict_batch_size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import tensorflow as tf
    from cxrtransfer.models.build import build_model
    from cxrtransfer.models.inference import make_predict_fn, predict_probs

    s, n, bs = args.image_size, args.images, args.batch
    model = build_model(args.arch, s, "none", seed=0)
    rng = np.random.default_rng(0)
    x_u8 = rng.integers(0, 256, (n, s, s), dtype=np.uint8)
    fn = make_predict_fn(model)
    out = {}

    def ours():
        out["ours"] = predict_probs(model, x_u8, batch_size=bs, predict_fn=fn)

    def baseline():
        x = x_u8.astype(np.float32)[..., None] / 255.0
        out["baseline"] = model.predict(x, verbose=0)[:, 1]

    @tf.function(reduce_retracing=True)
    def forward(x):
        return model(x, training=False)[:, 1]

    batches = [
        tf.constant(x_u8[i : i + bs].astype(np.float32)[..., None] / 255.0) for i in range(0, n, bs)
    ]

    def bound():
        for b in batches:
            r = forward(b)
        r.numpy()

    methods = {"ours": ours, "baseline": baseline, "bound": bound}
    print(f"{args.arch} {s}px, {n} images, timing {list(methods)} x {args.repeats}", flush=True)
    res = common.run_interleaved(methods, args.repeats, n)
    diff = float(np.abs(out["ours"] - out["baseline"]).max())
    ratios = {
        "ours/baseline": common.ratio(res, "ours", "baseline"),
        "ours/bound": common.ratio(res, "ours", "bound"),
    }
    result = {
        "settings": vars(args),
        "machine": common.machine_info(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "results": res,
        "ratios": ratios,
        "max_abs_diff_probs": diff,
        "targets": {"ours/baseline": 1.0},
    }
    common.print_rates(
        f"Inference, {args.arch} {s}px, {n} uint8 images, our batch {bs}",
        res,
        ratios,
        result["targets"],
    )
    print(f"- max |p_ours - p_predict| = {diff:.2g}")
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
