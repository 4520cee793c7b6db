"""Benchmark one training epoch through the real input pipeline against the model's own step.

- ours:       cxrtransfer.data.pipelines.make_dataset over HDF5 shards (shuffle, uint8 -> float, the
              config's augmentation) + model.fit(epochs=1, class_weight=...) with the optimizer,
              loss and metrics of cxrtransfer.models.train (no per-epoch callbacks: validation and
              checkpointing are not the input pipeline)
- ours_noaug: the same without augmentation (how much of the gap augmentation costs)
- bound:      the same model's forward + backward + optimizer update on one batch already in
              memory, a tf.function train step called once per batch of the epoch

Images/s, median of repeats after a warm-up, methods interleaved round-robin.

    .venv/bin/python benchmarks/bench_training.py --images 512 --json out.json
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import common
import numpy as np

common.quiet_tensorflow()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="ResNet50")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=512, help="training images per epoch")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-noaug", action="store_true", help="skip the no-augmentation variant")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p.parse_args(argv)


def make_shards(work: Path, n: int, image_size: int, shard_size: int) -> list[Path]:
    """Synthetic download (128 px PNGs) -> shards at ``image_size`` via the shard writer."""
    import pandas as pd
    from cxrtransfer.data.ingest import read_data_entry
    from cxrtransfer.data.shards import n_shards, shard_rows, write_shard
    from cxrtransfer.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec.from_config(
        dict(seed=64, n_patients=n, max_followups=1, image_size=128, signal=1.5)
    )
    generate(work / "download", spec)
    entries = read_data_entry(work / "download" / "Data_Entry_2017.csv")
    paths = {p.name: str(p) for p in (work / "download").glob("images_*/images/*.png")}
    rows = pd.DataFrame(
        {
            "image_index": entries["image_index"],
            "patient_id": entries["patient_id"],
            "label": entries["finding_labels"].str.contains("Pneumothorax").astype("int8"),
            "split": "train",
            "path": [paths[x] for x in entries["image_index"]],
        }
    )
    out = []
    for i in range(n_shards(len(rows), shard_size)):
        p = work / "shards" / f"{i:03d}.h5"
        write_shard(shard_rows(rows, "train", i, shard_size), p, image_size, {"shard": i}, 2)
        out.append(p)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import keras
    import tensorflow as tf
    import yaml
    from cxrtransfer.data.datasets import count_labels
    from cxrtransfer.data.pipelines import make_dataset
    from cxrtransfer.models.settings import model_settings
    from cxrtransfer.models.trainable import compiled_model as train_compiled_model
    from cxrtransfer.models.trainable import make_optimizer

    cfg = yaml.safe_load((common.ROOT / "config" / "config.yaml").read_text())
    cfg["data"]["image_size"] = args.image_size
    model_name = (
        next(m for m, v in cfg["models"].items() if v["arch"] == args.arch)
        if any(v["arch"] == args.arch for v in cfg["models"].values())
        else None
    )
    if model_name is None:  # an arch the default config does not use: its first model's settings
        model_name = next(iter(cfg["models"]))
        cfg["models"][model_name]["arch"] = args.arch
    s = model_settings(cfg, model_name)
    s["batch_size"] = args.batch
    print(f"settings of '{model_name}' from config/config.yaml: augment={s['augment']}", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="bench_training_")
    work = Path(tmp.name)
    shards = make_shards(work, args.images, args.image_size, args.shard_size)
    size, bs = args.image_size, args.batch
    n0, n1 = count_labels(shards, size)
    n = n0 + n1
    steps = math.ceil(n / bs)
    class_weight = {0: n / (2.0 * n0), 1: n / (2.0 * n1)}
    print(f"{n} training images ({n1} positive) in {len(shards)} shards, {steps} steps/epoch")

    def compiled_model():
        return train_compiled_model({**s, "image_size": size}, steps)

    model = compiled_model()
    ds_aug = make_dataset(
        shards, size, bs, shuffle=True, seed=s["seed"], augment=s["augment"] or None, n_images=n
    )
    ds_plain = make_dataset(shards, size, bs, shuffle=True, seed=s["seed"], n_images=n)

    def fit(ds):
        def run():
            model.fit(ds, epochs=1, class_weight=class_weight, shuffle=False, verbose=0)

        return run

    # bound: the same architecture, loss and optimizer, one batch already in memory
    bmodel = compiled_model()
    opt = make_optimizer(s, steps)
    opt.build(bmodel.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (bs, size, size, 1)).astype(np.float32))
    y = tf.constant(rng.integers(0, 2, bs).astype(np.int64))
    w = tf.constant(np.where(y.numpy() == 1, class_weight[1], class_weight[0]).astype(np.float32))

    @tf.function
    def train_step(x, y, w):
        with tf.GradientTape() as tape:
            probs = bmodel(x, training=True)
            loss = loss_fn(y, probs, sample_weight=w)
        grads = tape.gradient(loss, bmodel.trainable_variables)
        opt.apply(grads, bmodel.trainable_variables)
        return loss

    def bound():
        for _ in range(steps):
            loss = train_step(x, y, w)
        loss.numpy()

    methods = {"ours": fit(ds_aug)}
    if not args.no_noaug and s["augment"]:
        methods["ours_noaug"] = fit(ds_plain)
    methods["bound"] = bound
    units = {k: n for k in methods} | {"bound": steps * bs}
    print(f"timing {list(methods)} x {args.repeats} rounds (one epoch each)", flush=True)
    res = common.run_interleaved(methods, args.repeats, units)
    ratios = {"ours/bound": common.ratio(res, "ours", "bound")}
    if "ours_noaug" in res:
        ratios["ours_noaug/bound"] = common.ratio(res, "ours_noaug", "bound")
    result = {
        "settings": vars(args),
        "model": model_name,
        "augment": s["augment"],
        "machine": common.machine_info(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "n_images": n,
        "steps_per_epoch": steps,
        "results": res,
        "ratios": ratios,
        "targets": {"ours/bound": 0.85},
    }
    common.print_rates(
        f"Training epoch, {args.arch} {size}px, batch {bs}, {n} images",
        res,
        ratios,
        result["targets"],
    )
    if args.json:
        common.write_json(args.json, result)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
