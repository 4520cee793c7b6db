"""Clean and white-box AUROC of trained models of a finished run, on the validation and test
images of one task: the quick check used to choose the settings of the demo's robust pair
(docs/MODELS.md, "What worked on the demo's data"). Every model is attacked by the study's own
attack (by default the demo's ``pgd``: L-inf, 6 steps of eps/4) at ``--eps`` against its own
weights, as the workflow's white-box cells are; point estimates only (the run's transfer.csv
has the cells with their patient-bootstrap CIs).

    PYTHONPATH=workflow_scripts .venv/bin/python benchmarks/bench_robust_pair.py \\
        pneumothorax_mobilenetv3s pneumothorax_mobilenetv3s_at --results results --eps 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common
import h5py
import numpy as np
import yaml
from sklearn.metrics import roc_auc_score


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("models", nargs="+", help="model names under RESULTS/models/")
    p.add_argument("--results", default="results", help="the run's results directory")
    p.add_argument("--task", default="pneumothorax", help="the data task whose shards are read")
    p.add_argument("--config", default="config/config.yaml", help="the attack's definition")
    p.add_argument("--attack", default="pgd")
    p.add_argument("--eps", type=float, default=2.0, help="L-inf budget in 1/255 units")
    return p.parse_args(argv)


def load_split(results: Path, task: str, split: str):
    """The split's images in [0, 1] (N, H, W, 1) and labels, from the run's shards."""
    xs, ys = [], []
    for f in sorted((results / "shards" / task / split).glob("*.h5")):
        with h5py.File(f) as h:
            xs.append(h["images"][:])
            ys.append(h["labels"][:])
    x = np.concatenate(xs).astype("float32")[..., None] / 255.0
    return x, np.concatenate(ys).astype("int32")


def clean_and_adversarial(model, attack, x, y, batch: int = 64) -> tuple[float, float]:
    p_clean = model.predict(x, batch_size=128, verbose=0)[:, 1]
    adv = np.concatenate(
        [np.asarray(attack(x[i : i + batch], y[i : i + batch])) for i in range(0, len(x), batch)]
    )
    p_adv = model.predict(adv, batch_size=128, verbose=0)[:, 1]
    return roc_auc_score(y, p_clean), roc_auc_score(y, p_adv)


def main(argv=None) -> None:
    args = parse_args(argv)
    common.quiet_tensorflow()
    # heavy: TensorFlow, loaded only after the arguments are read
    from cxrtransfer.attacks.iterative import make_attack
    from cxrtransfer.attacks.spec import spec_from_config
    from cxrtransfer.models.checkpoints import load_checkpoint

    attacks = yaml.safe_load(Path(args.config).read_text())["attacks"]
    spec = spec_from_config(attacks[args.attack], args.eps)
    results = Path(args.results)
    data = {s: load_split(results, args.task, s) for s in ("val", "test")}
    print(f"{args.attack} at eps {args.eps:g}: clean / white-box AUROC")
    for name in args.models:
        model = load_checkpoint(str(results / "models" / name / "model.keras"))
        attack = make_attack(model, spec)
        parts = []
        for split, (x, y) in data.items():
            clean, adv = clean_and_adversarial(model, attack, x, y)
            parts.append(f"{split} {clean:.3f} / {adv:.3f}")
        print(f"{name}: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()
