"""What defines a model to train: its settings (its config entry over the training defaults).

TensorFlow-free: the Snakefile imports ``model_settings`` at parse time.
"""

from __future__ import annotations

from cxrtransfer import LABELS, WorkflowError
from cxrtransfer.config.schema import defaults as schema_defaults

# Training defaults: the config schema's (one place), for settings built without a validated
# config (tests, benchmarks).
TRAINING_DEFAULTS = schema_defaults("training")
# Adversarial training (training.adversarial; off when absent): the defaults of its keys.
ADVERSARIAL_DEFAULTS = schema_defaults("training", "adversarial")


def model_settings(config: dict, name: str) -> dict:
    """Everything that defines model ``name``: its entry merged over the training defaults."""
    if name not in config["models"]:
        raise WorkflowError(f"Unknown model '{name}'; configured: {sorted(config['models'])}")
    m = dict(config["models"][name])
    training = {**TRAINING_DEFAULTS, **config.get("training", {}), **m.pop("training", {})}
    if "adversarial" in training:  # a model's own block replaces the default block as a whole
        training["adversarial"] = {**ADVERSARIAL_DEFAULTS, **training["adversarial"]}
    extra = {k: m[k] for k in ("init_from", "robust_base") if m.get(k)}
    task = config["tasks"][m["task"]]
    if "labels" in task:  # a multi-label model: its output columns, in order
        labels = list(LABELS) if task["labels"] == "all" else list(task["labels"])
        finding = {"labels": labels}
    else:
        finding = {"label": task["label"]}
    return {
        "name": name,
        "task": m["task"],
        **finding,
        "arch": m["arch"],
        "seed": int(m["seed"]),
        "pretrained": m.get("pretrained", "none"),
        "train_subset": m.get("train_subset", "all"),
        "image_size": int(config["data"]["image_size"]),
        "split_seed": int(config.get("split", {}).get("seed", 42)),
        "augment": dict(config.get("augmentation", {})) if training["augmentation"] else {},
        **training,
        **extra,
    }


def is_multilabel(s: dict) -> bool:
    """Whether settings ``s`` are a multi-label model's (``labels``: its output columns)."""
    return "labels" in s


def adversarial_cost(adv: dict) -> float:
    """Cost of an adversarial training epoch in clean epochs (forward-backward passes per
    image): 1 + fraction * steps for PGD; TRADES trains on the adversarial examples as well."""
    extra = 1 if adv["method"] == "trades" else 0
    return 1 + adv["fraction"] * (adv["steps"] + extra)
