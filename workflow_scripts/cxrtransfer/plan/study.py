"""The experiment plan derived from the config: cross-checks, the job grid, the output lists.

Pure Python (no TensorFlow, SciPy or scikit-learn import) so the Snakefile can use it at parse
time. Everything here is a function of the config; the rules only look things up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cxrtransfer import LABELS, WorkflowError
from cxrtransfer.attacks.uap import is_uap, uap_spec_from_config
from cxrtransfer.core import paths as P
from cxrtransfer.core.paths import eps_label
from cxrtransfer.data.expert_labels import expert_column
from cxrtransfer.models.layers import defence_label

# keras.applications model names (Keras 3); checked without importing TensorFlow. A test ties
# this list to keras.applications.
KERAS_APPLICATIONS = (
    "ConvNeXtBase ConvNeXtLarge ConvNeXtSmall ConvNeXtTiny ConvNeXtXLarge DenseNet121 "
    "DenseNet169 DenseNet201 EfficientNetB0 EfficientNetB1 EfficientNetB2 EfficientNetB3 "
    "EfficientNetB4 EfficientNetB5 EfficientNetB6 EfficientNetB7 EfficientNetV2B0 "
    "EfficientNetV2B1 EfficientNetV2B2 EfficientNetV2B3 EfficientNetV2L EfficientNetV2M "
    "EfficientNetV2S InceptionResNetV2 InceptionV3 MobileNet MobileNetV2 MobileNetV3Large "
    "MobileNetV3Small NASNetLarge NASNetMobile ResNet101 ResNet101V2 "
    "ResNet152 ResNet152V2 ResNet50 ResNet50V2 VGG16 VGG19 Xception"
).split()


@dataclass(frozen=True)
class AdvSet:
    """One adversarial set: a source's attack at one budget on one task's test images."""

    source: str
    data_task: str
    attack: str  # an attack of the config, or f"{attack}{paths.CONTROL_SUFFIX}" (noise control)
    eps: str  # label, see eps_label

    @property
    def is_control(self) -> bool:
        return self.attack.endswith(P.CONTROL_SUFFIX)

    @property
    def base_attack(self) -> str:
        return self.attack.removesuffix(P.CONTROL_SUFFIX)

    @property
    def path(self) -> str:
        """``{source}/{data_task}/{attack}/eps{eps}`` (the set's part of every path)."""
        return P.ADV_SET.format(**self.__dict__)


# ----------------------------------------------------------------------------------------------
# Sources: a model, an ensemble of models (a list in a grid entry's sources) or a defended
# model (``defences:``, a model behind an input transform; also a target)
# ----------------------------------------------------------------------------------------------

ENSEMBLE_SEP = "+"  # an ensemble is named by its members joined (model names cannot hold it)
MODEL_FACTS = ("arch", "task", "pretrained", "seed")


def defended(config: dict) -> list[str]:
    """Names of the defended models (``defences:``), in config order."""
    return list(config.get("defences") or {})


def is_defended(config: dict, name: str) -> bool:
    return name in (config.get("defences") or {})


def base_model(config: dict, name: str) -> str:
    """The trained model inside a defended model (a model's own name otherwise)."""
    return config["defences"][name]["model"] if is_defended(config, name) else name


def ensemble_name(members) -> str:
    return ENSEMBLE_SEP.join(members)


def ensemble_members(name: str) -> list[str]:
    """The members of an ensemble source (a model's name gives ``[name]``)."""
    return name.split(ENSEMBLE_SEP)


def is_ensemble(name: str) -> bool:
    return ENSEMBLE_SEP in name


# ----------------------------------------------------------------------------------------------
# Multi-label tasks and models (``tasks: {chest14: {labels: all}}``) and their finding views
# ----------------------------------------------------------------------------------------------

VIEW_SEP = "@"  # a view is named {multi-label model}@{binary task} (names cannot hold "@")


def is_multilabel_task(config: dict, task: str) -> bool:
    return "labels" in config["tasks"][task]


def task_labels(config: dict, task: str) -> list[str]:
    """The findings of a task: ``[label]`` for a binary task; a multi-label task's ``labels``
    (``all`` = every ChestX-ray14 finding, in ``cxrtransfer.LABELS`` order), i.e. its
    model's output columns in order."""
    cfg = config["tasks"][task]
    if "labels" not in cfg:
        return [cfg["label"]]
    return list(LABELS) if cfg["labels"] == "all" else list(cfg["labels"])


def binary_tasks(config: dict) -> list[str]:
    return [t for t in config["tasks"] if not is_multilabel_task(config, t)]


def is_multilabel(config: dict, model: str) -> bool:
    """Whether ``model`` is a multi-label model (of models:, trained on a multi-label task)."""
    m = (config.get("models") or {}).get(model)
    return m is not None and m["task"] in config["tasks"] and is_multilabel_task(config, m["task"])


def view_name(model: str, task: str) -> str:
    return f"{model}{VIEW_SEP}{task}"


def is_view(name: str) -> bool:
    return VIEW_SEP in name


def view_parts(name: str) -> tuple[str, str]:
    """(multi-label model, binary task) of a view ``M@T``."""
    model, _, task = name.partition(VIEW_SEP)
    return model, task


def views(config: dict) -> list[str]:
    """Every finding view ``M@T``: per multi-label model M and binary task T whose finding M
    has an output for, a 2-class checkpoint whose column 1 is M's column of that finding."""
    out = []
    for m in config["models"]:
        if not is_multilabel(config, m):
            continue
        covered = task_labels(config, config["models"][m]["task"])
        out += [
            view_name(m, t) for t in binary_tasks(config) if task_labels(config, t)[0] in covered
        ]
    return out


def view_column(config: dict, name: str) -> int:
    """The output column of the multi-label model that view ``name`` reads."""
    model, task = view_parts(name)
    return task_labels(config, config["models"][model]["task"]).index(task_labels(config, task)[0])


def resolve_source(config: dict, source: str, data_task: str) -> str:
    """A grid source as attacked on ``data_task``: a multi-label model M is its view M@T."""
    return view_name(source, data_task) if is_multilabel(config, source) else source


def model_views(config: dict, model: str) -> list[str]:
    """The views ``M@T`` of multi-label model ``model``, one per binary task it covers."""
    return [v for v in views(config) if view_parts(v)[0] == model]


def grid_sources(config: dict, entry: dict) -> list[str]:
    """Source names of a grid entry: models by name, ensembles as their members joined, a
    multi-label model as its view of the entry's data task (``M@T``); with ``data_task: own``
    as each of its views, on that view's task (its own tasks are the binary tasks it
    covers)."""
    if entry["sources"] == "all":
        names = list(config["models"])
    else:
        names = [s if isinstance(s, str) else ensemble_name(s) for s in entry["sources"]]
    if entry["data_task"] == "own":
        return [
            v for s in names for v in (model_views(config, s) if is_multilabel(config, s) else [s])
        ]
    return [resolve_source(config, s, entry["data_task"]) for s in names]


def ensembles(config: dict) -> list[str]:
    """Every ensemble source of the grid (names), in grid order."""
    out = {s: None for g in config["grid"] for s in grid_sources(config, g) if is_ensemble(s)}
    return list(out)


def source_facts(config: dict, name: str) -> dict:
    """A source's recorded settings (``MODEL_FACTS``): a model's own; an ensemble's are its
    members' joined with ``+`` (it is "same architecture" as a target only if every member
    is; see relations), with ``members``; a defended model's are its model's, with
    ``defence`` (e.g. ``jpeg_quality=75``) and ``defended_model``; an adversarially trained
    model's have ``adversarial`` (its settings as text) and ``adversarial_eps``, a fine-tuned
    model's ``init_from``."""
    if is_defended(config, name):
        d = config["defences"][name]
        return {
            **source_facts(config, d["model"]),
            "defence": defence_label(d["defence"]),
            "defended_model": d["model"],
        }
    if is_view(name):  # a classifier of the binary task's finding: its task is that task
        model, task = view_parts(name)
        return {**source_facts(config, model), "task": task, "multi_label_model": model}
    members = ensemble_members(name)
    facts = [{k: str(config["models"][m].get(k, "none")) for k in MODEL_FACTS} for m in members]
    if len(members) == 1:
        return {
            **{k: config["models"][name].get(k, "none") for k in MODEL_FACTS},
            **_robust_facts(config, name),
        }
    out = {k: ENSEMBLE_SEP.join(f[k] for f in facts) for k in MODEL_FACTS}
    out["task"] = facts[0]["task"]  # members share a task (checked)
    out["members"] = members
    return out


def _robust_facts(config: dict, name: str) -> dict:
    """A model's adversarial training (``training.adversarial``, the model's own over the
    study's), the model it was fine-tuned from (``init_from``) and its ``robust_base``, where
    set."""
    m = config["models"][name]
    adv = {**config.get("training", {}), **m.get("training", {})}.get("adversarial")
    out = {}
    if adv:
        out["adversarial"] = ", ".join(f"{k}={adv[k]}" for k in sorted(adv))
        out["adversarial_eps"] = float(adv["eps"])
    if m.get("init_from"):
        out["init_from"] = m["init_from"]
    if m.get("robust_base"):  # its standard twin (the summary's robust-surrogate comparison)
        out["robust_base"] = m["robust_base"]
    return out


def source_task(config: dict, name: str) -> str:
    if is_view(name):
        return view_parts(name)[1]
    return config["models"][ensemble_members(base_model(config, name))[0]]["task"]


def attack_norm(config: dict, attack: str) -> str:
    return config["attacks"][attack].get("norm", "linf")


def eps_grid(config: dict, attack: str) -> list[float]:
    """The budgets an attack runs at: ``eps`` (1/255 units) for L-inf, ``eps_l2`` (L2 norm in
    [0, 1] pixel units) for L2 attacks."""
    return list(config["eps"] if attack_norm(config, attack) == "linf" else config["eps_l2"])


def expert_labels_file(config: dict) -> str | None:
    """The expert-label file the study reads (``data.expert_labels``; the keyword
    ``synthetic`` = the generator's file), or None."""
    value = config["data"].get("expert_labels")
    if not value:
        return None
    return P.SYNTHETIC_EXPERT_LABELS if value == "synthetic" else value


def expert_columns(config: dict) -> dict:
    """{task: expert column or None} when the study has expert labels, else {}."""
    if not expert_labels_file(config):
        return {}
    return {t: expert_column(config["tasks"][t]["label"]) for t in binary_tasks(config)}


def entry_eps(config: dict, entry: dict, attack: str) -> list[float]:
    """The budgets a grid entry runs an attack at: the attack's budgets (``eps`` or
    ``eps_l2``), or those of them the entry's own ``eps`` list names."""
    grid = eps_grid(config, attack)
    if "eps" not in entry:
        return grid
    wanted = {eps_label(e) for e in entry["eps"]}
    return [e for e in grid if eps_label(e) in wanted]


def adversarial_sets(config: dict, controls: bool | None = None) -> list[AdvSet]:
    """Every (source, data task, attack, eps) the grid asks for, without duplicates; with the
    noise control of each set (``noise_control`` in the config) right after it."""
    if controls is None:
        controls = bool(config.get("noise_control", True))
    out: dict[AdvSet, None] = {}
    for g in config["grid"]:
        atks = list(config["attacks"]) if g.get("attacks", "all") == "all" else g["attacks"]
        for s in grid_sources(config, g):  # a multi-label model already as its view
            task = source_task(config, s) if g["data_task"] == "own" else g["data_task"]
            for a in atks:
                for e in entry_eps(config, g, a):
                    out[AdvSet(s, task, a, eps_label(e))] = None
                    if controls:
                        out[AdvSet(s, task, a + P.CONTROL_SUFFIX, eps_label(e))] = None
    return list(out)


def universal_attacks(config: dict) -> list[str]:
    """Attacks of method uap (one perturbation per source, crafted by the rule uap)."""
    return [n for n, a in config["attacks"].items() if is_uap(a)]


def uap_split(config: dict, attack: str) -> str:
    """The split a universal attack is crafted on (its spec's, default included)."""
    cfg = config["attacks"][attack]
    return uap_spec_from_config(cfg, eps_grid(config, attack)[0]).split


def targets_for(config: dict, data_task: str) -> list[str]:
    """Every model trained on ``data_task`` is a target for adversarial sets of that task, and
    so is every defended model of such a model (after the models), and every view ``M@T`` of
    a multi-label model that has an output for the task's finding (last)."""
    models = [n for n, m in config["models"].items() if m["task"] == data_task]
    models += [d for d in defended(config) if source_task(config, d) == data_task]
    return models + [v for v in views(config) if view_parts(v)[1] == data_task]


def eps_value(config: dict, attack: str, label: str) -> float:
    base = attack.removesuffix(P.CONTROL_SUFFIX)
    for e in eps_grid(config, base):
        if eps_label(e) == label:
            return float(e)
    raise WorkflowError(
        f"eps label '{label}' is not in the budgets {eps_grid(config, base)} of attack '{base}'."
    )


def shard_labels(n_images: int, shard_size: int) -> list[str]:
    """Shard names of a split with ``n_images`` images (at least one shard)."""
    return [f"{i:03d}" for i in range(max(1, math.ceil(n_images / shard_size)))]


def task_attacks(config: dict) -> list[tuple[str, str]]:
    """(data task, attack) pairs with plots (noise controls are shown in the tables)."""
    return sorted({(s.data_task, s.attack) for s in adversarial_sets(config) if not s.is_control})


def closeness(config: dict, source: str, target: str, data_task: str) -> int:
    """Sort key of a cell for choosing plots: white-box, same architecture, other
    architecture, other task. Only an order from the config; the published relation is
    measured (see ``relations``)."""
    if source == target:
        return 0
    src = source_facts(config, source)
    if src["task"] != data_task:
        return 3
    return 1 if src["arch"] == source_facts(config, target)["arch"] else 2


def deployed_target(config: dict, task: str) -> str:
    """The model a hospital would deploy for ``task`` (``tasks.<task>.deployed``); without it,
    the first of the task's targets in name order (never config order: a config whose
    mappings are written in another order plans the same study)."""
    return config["tasks"][task].get("deployed") or sorted(targets_for(config, task))[0]


def chosen_cells(config: dict) -> list[tuple[AdvSet, str]]:
    """Cells with ROC and example plots, the first ``evaluation.roc_cells`` of: the deployed
    targets' cells, the data tasks in turn (every deployed target gets its closest cell before
    any gets a second; tasks by name), then the other targets'
    cells the same way. A task's cells: per (real) attack at its largest eps, the target
    attacked from each source, in ``_by_relation``'s order."""
    n = config["evaluation"]["roc_cells"]
    sets = [s for s in adversarial_sets(config) if not s.is_control]
    top = {}
    for s in sets:
        top[(s.data_task, s.attack)] = max(float(s.eps), top.get((s.data_task, s.attack), 0.0))
    deployed, others = {}, {}
    for task in sorted({s.data_task for s in sets}):
        group = [s for s in sets if s.data_task == task and float(s.eps) == top[(task, s.attack)]]
        main = deployed_target(config, task)
        cells = [(s, t) for t in targets_for(config, task) for s in group]
        deployed[task] = _by_relation(config, task, [c for c in cells if c[1] == main])
        others[task] = _by_relation(config, task, [c for c in cells if c[1] != main])
    return (_in_turn(deployed) + _in_turn(others))[:n] if n else []


def _by_relation(config: dict, task: str, cells: list) -> list:
    """Cells closest first, but one of each closeness (white-box, same architecture, other
    architecture, other task) before a second of any (each class ordered by attack, source,
    target): the plots show every kind of relation early."""
    keyed = sorted(
        (((closeness(config, s.source, t, task), s.attack, s.source, t), (s, t)) for s, t in cells),
        key=lambda p: p[0],
    )
    done: dict[int, int] = {}
    ranked = []
    for key, cell in keyed:
        ranked.append(((done.get(key[0], 0), key[0]), cell))
        done[key[0]] = done.get(key[0], 0) + 1
    return [cell for _, cell in sorted(ranked, key=lambda p: p[0])]


def _in_turn(by_task: dict[str, list]) -> list:
    """The tasks' lists interleaved: the first of each, then the second of each, ... (tasks by
    name: adding models or sets to one task does not move another task's plotted cells)."""
    tasks = sorted(by_task)
    longest = max((len(v) for v in by_task.values()), default=0)
    return [by_task[t][i] for i in range(longest) for t in tasks if i < len(by_task[t])]


def plot_files(config: dict) -> list[str]:
    files = [P.HEADLINE] if task_attacks(config) else []
    files += [P.HEATMAP.format(data_task=t, attack=a) for t, a in task_attacks(config)]
    files += [
        P.AUROC_PLOT.format(data_task=t, attack=a, target=m)
        for t, a in task_attacks(config)
        for m in targets_for(config, t)
    ]
    for s, target in chosen_cells(config):
        files += [
            P.ROC_PLOT.format(**s.__dict__, target=target),
            P.EXAMPLES_PLOT.format(**s.__dict__, target=target),
        ]
    return files


def final_outputs(config: dict) -> list[str]:
    """What the default target builds (shard summaries, models, tables, plots, config)."""
    return [
        *[P.SHARD_SUMMARY.format(task=t) for t in config["tasks"]],
        *[P.MODEL.format(model=m) for m in [*config["models"], *ensembles(config), *views(config)]],
        P.TRANSFER_TABLE,
        P.SUMMARY,
        P.STUDY_CONFIG,
        *plot_files(config),
    ]


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
