"""What TF_ENABLE_ONEDNN_OPTS=0 would cost: one input-gradient step (the inner step of every
attack) of the demo's architectures, with TensorFlow's oneDNN optimisations on (its default on
x86) and off.

TensorFlow 2.21 prints two start-up notices on import (``WARNING: All log messages before
absl::InitializeLog() ...`` and ``oneDNN custom operations are on ...``) before its logging is
set up, so TF_CPP_MIN_LOG_LEVEL cannot silence them; only turning oneDNN off does. This
benchmark is why the workflow keeps oneDNN on and drops the two notices at import instead
(cxrtransfer.config.job.import_tensorflow). The flag is read when TensorFlow loads, so each
setting runs in its own process; the processes alternate (on, off, on, off, ...) so background
load hits both alike, and the ratio is of medians of the same run.

    .venv/bin/python benchmarks/bench_onednn.py --repeats 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import common

SETTINGS = {"on": {}, "off": {"TF_ENABLE_ONEDNN_OPTS": "0"}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["ResNet50", "ResNet50V2", "MobileNetV3Small"])
    p.add_argument("--image-size", type=int, default=48, help="the demo's image side")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed gradient steps per process")
    p.add_argument("--repeats", type=int, default=2, help="processes per setting")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args) -> dict:
    """In one process: seconds per input-gradient step of a batch, per architecture."""
    # heavy: TensorFlow loads in the child process only, with the setting under test
    import numpy as np
    import tensorflow as tf
    from cxrtransfer.models.build import build_model

    out = {}
    x = tf.constant(np.random.default_rng(0).random((args.batch, *(args.image_size,) * 2, 1)))
    x = tf.cast(x, tf.float32)
    y = tf.one_hot(np.zeros(args.batch, int), 2)
    for arch in args.archs:
        model = build_model(arch, args.image_size, "none", seed=1)

        @tf.function
        def step(x, model=model):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.keras.losses.categorical_crossentropy(y, model(x, training=False))
            return tape.gradient(loss, x)

        step(x).numpy()  # trace
        t0 = time.perf_counter()
        for _ in range(args.steps):
            g = step(x)
        g.numpy()
        out[arch] = (time.perf_counter() - t0) / args.steps
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    common.quiet_tensorflow()
    cmd = [sys.executable, __file__, "--child", "--archs", *args.archs]
    cmd += ["--image-size", str(args.image_size), "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps)]
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, env in SETTINGS.items():
            p = subprocess.run(
                cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True
            )
            runs[name].append(json.loads(p.stdout.strip().splitlines()[-1]))
    res = {
        arch: {name: statistics.median(r[arch] for r in runs[name]) for name in SETTINGS}
        for arch in args.archs
    }
    print(f"input-gradient step of {args.batch} images at {args.image_size} px, median of")
    print(f"{args.repeats} processes x {args.steps} steps each, settings alternated:\n")
    print("| architecture | oneDNN on (s/step) | oneDNN off (s/step) | off / on |")
    print("|---|---:|---:|---:|")
    for arch, r in res.items():
        print(f"| {arch} | {r['on']:.3f} | {r['off']:.3f} | {r['off'] / r['on']:.2f} |")
    if args.json:
        common.write_json(args.json, {"machine": common.machine_info(), "seconds": res})


if __name__ == "__main__":
    main()
