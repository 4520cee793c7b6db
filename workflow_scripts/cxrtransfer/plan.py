"""The experiment plan derived from the config: cross-checks and the job grid.

Pure Python (no TensorFlow import) so the Snakefile can use it at parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import WorkflowError

# keras.applications model names (Keras 3.15); checked without importing TensorFlow.
KERAS_APPLICATIONS = (
    "ConvNeXtBase ConvNeXtLarge ConvNeXtSmall ConvNeXtTiny ConvNeXtXLarge DenseNet121 "
    "DenseNet169 DenseNet201 EfficientNetB0 EfficientNetB1 EfficientNetB2 EfficientNetB3 "
    "EfficientNetB4 EfficientNetB5 EfficientNetB6 EfficientNetB7 EfficientNetV2B0 "
    "EfficientNetV2B1 EfficientNetV2B2 EfficientNetV2B3 EfficientNetV2L EfficientNetV2M "
    "EfficientNetV2S InceptionResNetV2 InceptionV3 MobileNet MobileNetV2 MobileNetV3Large "
    "MobileNetV3Small NASNetLarge NASNetMobile RegNetX002 RegNetY002 ResNet101 ResNet101V2 "
    "ResNet152 ResNet152V2 ResNet50 ResNet50V2 VGG16 VGG19 Xception"
).split()


def eps_label(eps: float) -> str:
    """Path label of an eps value in 1/255 units: 8 -> '8', 2.55 -> '2.55'."""
    return f"{float(eps):g}"


@dataclass(frozen=True)
class AdvSet:
    source: str
    data_task: str
    attack: str
    eps: str  # label, see eps_label


def check_config(config: dict, basedir: str | Path = ".") -> None:
    """Cross-checks the JSON schema cannot express; raise WorkflowError naming the key."""
    tasks = config["tasks"]
    models = config["models"]
    attacks = config["attacks"]
    for name, m in models.items():
        if m["task"] not in tasks:
            raise WorkflowError(
                f"models.{name}.task: '{m['task']}' is not a configured task ({sorted(tasks)})."
            )
        if m["arch"] not in KERAS_APPLICATIONS:
            raise WorkflowError(
                f"models.{name}.arch: '{m['arch']}' is not a keras.applications model. "
                f"Known: {', '.join(KERAS_APPLICATIONS)}."
            )
        pre = m.get("pretrained", "none")
        if (
            pre not in ("none", "imagenet")
            and not (Path(basedir) / pre).is_file()
            and not Path(pre).is_file()
        ):
            raise WorkflowError(
                f"models.{name}.pretrained: '{pre}' is neither 'imagenet', 'none' nor an "
                "existing weights file."
            )
    for t in tasks:
        if not any(m["task"] == t for m in models.values()):
            raise WorkflowError(f"tasks.{t}: no model is trained on this task; add one to models.")
    eps = config["eps"]
    labels = [eps_label(e) for e in eps]
    if len(set(labels)) != len(labels):
        raise WorkflowError(f"eps: values {eps} collide when written as path labels {labels}.")
    for name, a in attacks.items():
        if "step" in a and "step_fraction" in a:
            raise WorkflowError(f"attacks.{name}: give either step or step_fraction, not both.")
        iterative = a["method"] == "pgd" and a.get("steps", 10) > 1
        if iterative and "step" in a:
            too_small = [e for e in eps if a["step"] > e]
            if too_small:
                raise WorkflowError(
                    f"attacks.{name}.step = {a['step']} (1/255 units) is larger than eps "
                    f"{too_small}: every step would be clipped back to the eps ball. Use "
                    "step_fraction (a fraction of eps) or a smaller step."
                )
        if a["method"] == "fgsm" and (a.get("momentum", 0) or a.get("restarts", 1) > 1):
            raise WorkflowError(
                f"attacks.{name}: momentum and restarts need method: pgd (FGSM is one step)."
            )
    for i, g in enumerate(config["grid"]):
        srcs = g["sources"]
        if srcs != "all":
            bad = [s for s in srcs if s not in models]
            if bad:
                raise WorkflowError(
                    f"grid[{i}].sources: unknown model(s) {bad}; configured: {sorted(models)}."
                )
        if g["data_task"] != "own" and g["data_task"] not in tasks:
            raise WorkflowError(
                f"grid[{i}].data_task: '{g['data_task']}' is neither 'own' nor a task ({sorted(tasks)})."
            )
        atk = g.get("attacks", "all")
        if atk != "all":
            bad = [a for a in atk if a not in attacks]
            if bad:
                raise WorkflowError(
                    f"grid[{i}].attacks: unknown attack(s) {bad}; configured: {sorted(attacks)}."
                )


def adversarial_sets(config: dict) -> list[AdvSet]:
    """Every (source, data task, attack, eps) the grid asks for, without duplicates."""
    out: dict[AdvSet, None] = {}
    for g in config["grid"]:
        srcs = list(config["models"]) if g["sources"] == "all" else g["sources"]
        atks = list(config["attacks"]) if g.get("attacks", "all") == "all" else g["attacks"]
        for s in srcs:
            task = config["models"][s]["task"] if g["data_task"] == "own" else g["data_task"]
            for a in atks:
                for e in config["eps"]:
                    out[AdvSet(s, task, a, eps_label(e))] = None
    return list(out)


def targets_for(config: dict, data_task: str) -> list[str]:
    """Every model trained on ``data_task`` is a target for adversarial sets of that task."""
    return [n for n, m in config["models"].items() if m["task"] == data_task]


def eps_value(config: dict, label: str) -> float:
    for e in config["eps"]:
        if eps_label(e) == label:
            return float(e)
    raise WorkflowError(f"eps label '{label}' is not in the configured eps list {config['eps']}")


def relation(config: dict, source: str, target: str, data_task: str) -> str:
    """The cell's relation (see ``tables.relation``) from model names and the config."""
    from .tables import relation as _relation

    m = config["models"]
    return _relation(m[source], m[target], data_task, source, target)


def canon(obj):
    """The same settings with every mapping's keys sorted, recursively.

    Snakemake compares a rule's params with those of the last run as written, key order
    included; passing canonical dicts means reordering keys in a config file reruns nothing.
    """
    if isinstance(obj, dict):
        return {k: canon(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [canon(v) for v in obj]
    return obj
