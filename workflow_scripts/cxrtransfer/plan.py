"""The experiment plan derived from the config: cross-checks, the job grid, the output lists.

Pure Python (no TensorFlow, SciPy or scikit-learn import) so the Snakefile can use it at parse
time. Everything here is a function of the config; the rules only look things up.
"""

from __future__ import annotations

import ast
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from . import WorkflowError
from . import paths as P
from .attacks import spec_from_config
from .defences import defence_label
from .uap import is_uap, uap_spec_from_config

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


def eps_label(eps: float) -> str:
    """Path label of an eps value: 8 -> '8', 2.55 -> '2.55', 0.5 -> '0.5'."""
    return f"{float(eps):g}"


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
    from . import LABELS

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
    study's) and the model it was fine-tuned from (``init_from``), where set."""
    m = config["models"][name]
    adv = {**config.get("training", {}), **m.get("training", {})}.get("adversarial")
    out = {}
    if adv:
        out["adversarial"] = ", ".join(f"{k}={adv[k]}" for k in sorted(adv))
        out["adversarial_eps"] = float(adv["eps"])
    if m.get("init_from"):
        out["init_from"] = m["init_from"]
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


def check_config(config: dict, basedir: str | Path = ".") -> None:
    """Cross-checks the JSON schema cannot express; raise WorkflowError naming the key."""
    _check_tasks(config)
    _check_models(config, basedir)
    _check_adversarial_training(config)
    _check_defences(config)
    _check_attacks(config)
    _check_grid(config)
    _check_expert_labels(config, basedir)
    _check_deployed(config)


def expert_labels_file(config: dict) -> str | None:
    """The expert-label file the study reads (``data.expert_labels``; the keyword
    ``synthetic`` = the generator's file), or None."""
    value = config["data"].get("expert_labels")
    if not value:
        return None
    return P.SYNTHETIC_EXPERT_LABELS if value == "synthetic" else value


def expert_columns(config: dict) -> dict:
    """{task: expert column or None} when the study has expert labels, else {}."""
    from .expert_labels import expert_column

    if not expert_labels_file(config):
        return {}
    return {t: expert_column(config["tasks"][t]["label"]) for t in binary_tasks(config)}


def _check_expert_labels(config: dict, basedir) -> None:
    data = config["data"]
    value = data.get("expert_labels")
    synthetic = (data.get("synthetic") or {}).get("expert_labels")
    if synthetic is not None:
        from .synthetic import expert_label_settings

        expert_label_settings(synthetic)
    if not value:
        return
    if value == "synthetic":
        if data["source"] != "synthetic" or synthetic is None:
            raise WorkflowError(
                "data.expert_labels: 'synthetic' means the file the synthetic generator writes: "
                "it needs data.source: synthetic and data.synthetic.expert_labels (fraction, "
                "disagreement). With real data, point it at the Google expert-label file."
            )
        return
    if not (Path(basedir) / value).is_file() and not Path(value).is_file():
        from .expert_labels import DEFAULT_PATH

        raise WorkflowError(
            f"data.expert_labels: '{value}' does not exist. `make real-metadata` writes the "
            f"combined Google file to {DEFAULT_PATH} (from the torchxrayvision 1.5.7 wheel); "
            "with synthetic data, `data.expert_labels: synthetic` uses the generator's file."
        )


def _check_tasks(config: dict) -> None:
    """A task has exactly one of ``label`` (binary) and ``labels`` (multi-label: ``all`` or a
    list of known findings without duplicates)."""
    from . import LABELS

    for name, cfg in config["tasks"].items():
        key = f"tasks.{name}"
        if ("label" in cfg) == ("labels" in cfg):
            raise WorkflowError(
                f"{key}: give exactly one of 'label' (a binary task: the finding vs No Finding) "
                "and 'labels' (a multi-label task: 'all' or a list of findings)."
            )
        if "label" in cfg:
            continue
        labels = cfg["labels"]
        if labels == "all":
            continue
        if not isinstance(labels, list) or not labels:
            raise WorkflowError(
                f"{key}.labels: {labels!r} is neither 'all' nor a non-empty list of findings."
            )
        bad = [x for x in labels if x not in LABELS]
        if bad:
            raise WorkflowError(
                f"{key}.labels: unknown finding(s) {bad}; known: {', '.join(LABELS)} "
                "(ChestX-ray14 spelling, e.g. Pleural_Thickening)."
            )
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise WorkflowError(f"{key}.labels: {dup} listed more than once.")


def _check_models(config: dict, basedir) -> None:
    tasks, models = config["tasks"], config["models"]
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


def _check_defences(config: dict) -> None:
    """A defended model is a trained model behind one input transform (the schema checks the
    transform's value)."""
    models = config["models"]
    for name, d in (config.get("defences") or {}).items():
        key = f"defences.{name}"
        if name in models:
            raise WorkflowError(
                f"{key}: the name is also a model's; give the defended model its own."
            )
        if is_multilabel(config, d["model"]) or is_view(d["model"]):
            raise WorkflowError(
                f"{key}.model: '{d['model']}' is a multi-label model or its view; defended "
                "multi-label models are not implemented (a defence wraps one binary model)."
            )
        if d["model"] not in models:
            what = "another defended model" if is_defended(config, d["model"]) else "not a model"
            raise WorkflowError(
                f"{key}.model: '{d['model']}' is {what}; a defence wraps one trained model of "
                f"models: ({sorted(models)})."
            )


def _check_adversarial_training(config: dict) -> None:
    """training.adversarial (defaults and each model's own) and models.<name>.init_from."""
    models = config["models"]
    blocks = [("training.adversarial", config.get("training", {}).get("adversarial"))]
    blocks += [
        (f"models.{n}.training.adversarial", m.get("training", {}).get("adversarial"))
        for n, m in models.items()
    ]
    for key, adv in blocks:
        if adv is None:
            continue
        eps = adv.get("eps")
        if not isinstance(eps, int | float) or not 0 < eps <= 255:
            raise WorkflowError(
                f"{key}.eps: {eps!r} is outside the data range; adversarial training eps is "
                "in 1/255 units like the study's eps (0 < eps <= 255; 255 already allows any "
                "image, typical values are 2-8)."
            )
        cfg = {"method": "pgd", "norm": "linf"}
        cfg.update(
            {k: adv[k] for k in ("steps", "step_fraction", "random_start", "seed") if k in adv}
        )
        try:
            spec_from_config(cfg, eps)
        except WorkflowError as err:
            raise WorkflowError(f"{key}: {err}") from None
        if not 0 <= adv.get("fraction", 0.5) <= 1:
            raise WorkflowError(f"{key}.fraction: {adv['fraction']} is not in [0, 1].")
    for name, m in models.items():
        adv = {**config.get("training", {}), **m.get("training", {})}.get("adversarial")
        if adv and is_multilabel(config, name):
            own = "adversarial" in m.get("training", {})
            where = f"models.{name}.training.adversarial" if own else "training.adversarial"
            raise WorkflowError(
                f"{where}: '{name}' is a multi-label model; "
                "adversarial training of multi-label models is not implemented (it trains the "
                "2-class contract). Give it its own training: block without adversarial."
            )
    for name, m in models.items():
        init = m.get("init_from")
        if init is None:
            continue
        key = f"models.{name}.init_from"
        if init == name:
            raise WorkflowError(f"{key}: a model cannot be fine-tuned from itself.")
        if init not in models:
            raise WorkflowError(
                f"{key}: '{init}' is not a configured model; configured: {sorted(models)}."
            )
        for fact in ("task", "arch"):
            if models[init][fact] != m[fact]:
                raise WorkflowError(
                    f"{key}: '{init}' has {fact} '{models[init][fact]}', this model "
                    f"'{m[fact]}'; a model is fine-tuned from a checkpoint of its own task and "
                    "architecture."
                )
        chain = [name]
        while init is not None:
            if init in chain:
                cycle = " -> ".join([*chain[chain.index(init) :], init])
                raise WorkflowError(f"{key}: the init_from chain has a cycle ({cycle}).")
            chain.append(init)
            init = models[init].get("init_from") if init in models else None


def _check_attacks(config: dict) -> None:
    for key in ("eps", "eps_l2"):
        labels = [eps_label(e) for e in config.get(key, [])]
        if len(set(labels)) != len(labels):
            raise WorkflowError(f"{key}: values collide when written as path labels {labels}.")
    for name, a in config["attacks"].items():
        if name.endswith(P.CONTROL_SUFFIX):
            raise WorkflowError(
                f"attacks.{name}: names ending in '{P.CONTROL_SUFFIX}' are reserved for the "
                "noise controls; rename the attack."
            )
        grid = eps_grid(config, name)
        if not grid:
            raise WorkflowError(
                f"attacks.{name} is an L2 attack but eps_l2 is empty: give its budgets as "
                "eps_l2 (L2 norm of the perturbation in [0, 1] pixel units, e.g. [0.5, 1, 2])."
            )
        # the one validation of an attack's settings: the spec every attack job builds
        build = uap_spec_from_config if is_uap(a) else spec_from_config
        for e in grid:
            try:
                build(a, e)
            except WorkflowError as err:
                raise WorkflowError(f"attacks.{name} (at eps {e:g}): {err}") from None
        # every model takes data.image_size pixels (models.build_model / check_contract)
        size = config.get("data", {}).get("image_size")
        kernel = a.get("ti_kernel", 0)
        if size is not None and kernel > size:
            raise WorkflowError(
                f"attacks.{name}.ti_kernel: the TI kernel ({kernel} px) is larger than the images "
                f"(data.image_size {size} px); use an odd size <= {size} (the TI paper used 15 "
                "at 299 px; 7 is common at 224 px, 3 at 64 px)."
            )


def _check_grid(config: dict) -> None:
    tasks, models, attacks = config["tasks"], config["models"], config["attacks"]
    for i, g in enumerate(config["grid"]):
        srcs = g["sources"]
        if srcs != "all":
            bad = [
                s
                for s in srcs
                if isinstance(s, str)
                and s not in models
                and not is_defended(config, s)
                and not is_view(s)  # refused with its own message below
            ]
            if bad:
                raise WorkflowError(
                    f"grid[{i}].sources: unknown model(s) {bad}; configured: {sorted(models)} "
                    f"and the defended models {defended(config)}."
                )
            for members in (s for s in srcs if not isinstance(s, str)):
                _check_ensemble(config, f"grid[{i}].sources", members)
            _check_defended_sources(config, i, g)
        if g["data_task"] != "own" and g["data_task"] not in tasks:
            raise WorkflowError(
                f"grid[{i}].data_task: '{g['data_task']}' is neither 'own' nor a task "
                f"({sorted(tasks)})."
            )
        _check_multilabel_sources(config, i, g)
        atk = g.get("attacks", "all")
        if atk != "all":
            bad = [a for a in atk if a not in attacks]
            if bad:
                raise WorkflowError(
                    f"grid[{i}].attacks: unknown attack(s) {bad}; configured: {sorted(attacks)}."
                )
        if "eps" in g:
            names = list(attacks) if atk == "all" else atk
            known = {eps_label(e) for a in names for e in eps_grid(config, a)}
            bad = [e for e in g["eps"] if eps_label(e) not in known]
            if bad:
                raise WorkflowError(
                    f"grid[{i}].eps: {bad} is not a budget of its attacks ({sorted(known)}); "
                    "a grid entry's eps picks budgets from eps (or eps_l2)."
                )
    _refuse_targeted_twins(config)


def _check_multilabel_sources(config: dict, i: int, g: dict) -> None:
    """Adversarial sets are per binary task: a multi-label task is no data task, and a
    multi-label source M is attacked on a named binary task T through its view M@T."""
    task = g["data_task"]
    if task != "own" and is_multilabel_task(config, task):
        raise WorkflowError(
            f"grid[{i}].data_task: '{task}' is a multi-label task; adversarial sets are per "
            f"binary task (a finding vs No Finding). Name a binary task ({binary_tasks(config)}); "
            "a multi-label model is attacked and evaluated on it through its view of the finding."
        )
    srcs = list(config["models"]) if g["sources"] == "all" else g["sources"]
    for s in srcs:
        if not isinstance(s, str):
            continue
        if is_view(s):
            model, _ = view_parts(s)
            raise WorkflowError(
                f"grid[{i}].sources: '{s}' names a view; list the multi-label model '{model}' "
                "itself: it is attacked through its view of the entry's data_task."
            )
        if not is_multilabel(config, s):
            continue
        if task == "own":  # attacked on each binary task it covers (its views)
            if not model_views(config, s):
                what = "sources: all includes" if g["sources"] == "all" else "sources:"
                raise WorkflowError(
                    f"grid[{i}]: {what} the multi-label model '{s}' with data_task: own, but "
                    f"no binary task's finding is among its labels "
                    f"{task_labels(config, config['models'][s]['task'])}; add such a task to "
                    f"tasks: (binary tasks now: {binary_tasks(config)}) or list the sources."
                )
            continue
        label = task_labels(config, task)[0]
        if label not in task_labels(config, config["models"][s]["task"]):
            raise WorkflowError(
                f"grid[{i}].sources: the multi-label model '{s}' has no output for {label} "
                f"(the finding of data_task '{task}'); its labels: "
                f"{task_labels(config, config['models'][s]['task'])}."
            )


def _check_defended_sources(config: dict, i: int, g: dict) -> None:
    """A defended model as a source is attacked through its transform (the adaptive attack):
    per image. A universal perturbation crafted through a defence is not implemented."""
    atk = list(config["attacks"]) if g.get("attacks", "all") == "all" else g["attacks"]
    universal = [a for a in atk if is_uap(config["attacks"][a])]
    for s in g["sources"]:
        if isinstance(s, str) and is_defended(config, s) and universal:
            raise WorkflowError(
                f"grid[{i}].sources: '{s}' is a defended model and grid[{i}].attacks has the "
                f"universal attack(s) {universal}: universal perturbations are crafted on "
                "undefended models only (crafting one through a defence is not implemented). "
                f"Use the model '{base_model(config, s)}' as the source (its perturbation is "
                "evaluated on the defended target too), or list the per-image attacks only."
            )


def _check_ensemble(config: dict, key: str, members: list) -> None:
    models = config["models"]
    name = ensemble_name(members)
    multi = [m for m in members if is_multilabel(config, m) or is_view(m)]
    if multi:
        raise WorkflowError(
            f"{key}: ensemble {name}: {multi} are multi-label models or views; ensembles of "
            "multi-label models are not implemented. Use binary models as members."
        )
    defended_members = [m for m in members if is_defended(config, m)]
    if defended_members:
        raise WorkflowError(
            f"{key}: ensemble {name}: {defended_members} are defended models; an ensemble "
            "averages its members' logits, which an input defence does not have. Use the "
            "models themselves as members."
        )
    if len(members) < 2:
        raise WorkflowError(
            f"{key}: the ensemble {members} has {len(members)} member; an ensemble needs at "
            "least two models (give a single model by its name, not as a list)."
        )
    if len(set(members)) != len(members):
        raise WorkflowError(f"{key}: the ensemble {members} names a model twice.")
    bad = [m for m in members if m not in models]
    if bad:
        raise WorkflowError(
            f"{key}: ensemble {name}: unknown model(s) {bad}; configured: {sorted(models)}."
        )
    tasks = sorted({models[m]["task"] for m in members})
    if len(tasks) > 1:
        raise WorkflowError(
            f"{key}: ensemble {name} mixes models of the tasks {tasks}; its members must "
            "detect the same finding (their averaged logits are one classifier)."
        )
    # Every model sees data.image_size pixels, so members cannot differ in input size here;
    # the ensemble job checks the loaded checkpoints' input shapes (models.build_ensemble).


def _refuse_targeted_twins(config: dict) -> None:
    """On a 2-class softmax, minimising the loss of the opposite class and maximising the loss
    of the true class have gradients that are positive multiples of each other: sign-gradient
    and normalised-gradient steps are identical, so the two attacks make the same images."""
    by_pair: dict[tuple, set[str]] = {}
    for s in adversarial_sets(config, controls=False):
        by_pair.setdefault((s.source, s.data_task), set()).add(s.attack)
    for (source, task), names in by_pair.items():
        seen: dict[str, str] = {}
        for name in sorted(names):
            a = {k: v for k, v in config["attacks"][name].items() if k != "targeted"}
            key = repr(canon(a))
            if key in seen and bool(config["attacks"][name].get("targeted")) != bool(
                config["attacks"][seen[key]].get("targeted")
            ):
                raise WorkflowError(
                    f"attacks '{seen[key]}' and '{name}' differ only in 'targeted' and both "
                    f"run for source {source} on {task}: on a 2-class softmax the targeted and "
                    "the untargeted attack are the same attack (their gradients are positive "
                    "multiples of each other), so one of them only doubles the cost. Drop one "
                    "from the grid."
                )
            seen[key] = name


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


def _check_deployed(config: dict) -> None:
    for task, t in config["tasks"].items():
        name = t.get("deployed")
        if name is None:
            continue
        if "labels" in t:
            raise WorkflowError(
                f"tasks.{task}.deployed: a multi-label task is no target of adversarial sets; "
                "name the deployed model in a binary task (a finding view M@T is one)."
            )
        targets = targets_for(config, task)
        if name not in targets:
            raise WorkflowError(
                f"tasks.{task}.deployed: '{name}' is not a target of task '{task}'; its targets "
                f"are {', '.join(sorted(targets))}."
            )


def chosen_cells(config: dict) -> list[tuple[AdvSet, str]]:
    """Cells with ROC and example plots: per data task and (real) attack at its largest eps,
    the task's deployed target attacked from each source, closest first."""
    n = config["evaluation"]["roc_cells"]
    sets = [s for s in adversarial_sets(config) if not s.is_control]
    out = []
    for task, attack in sorted({(s.data_task, s.attack) for s in sets}):
        target = deployed_target(config, task)
        group = [s for s in sets if s.data_task == task and s.attack == attack]
        top = max(float(s.eps) for s in group)
        group = [s for s in group if float(s.eps) == top]
        group.sort(key=lambda s: closeness(config, s.source, target, task))
        out += [(s, target) for s in group]
    return out[:n] if n else []


def plot_files(config: dict) -> list[str]:
    files = [P.HEATMAP.format(data_task=t, attack=a) for t, a in task_attacks(config)]
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


# ----------------------------------------------------------------------------------------------
# Code versions: a change to library code reruns the jobs whose results it can change
# ----------------------------------------------------------------------------------------------

PACKAGE = "cxrtransfer"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _imported_modules(source: str, current: str | None) -> set[str]:
    """cxrtransfer modules a piece of source imports (absolute or relative, anywhere in it,
    including imports inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level and current is not None:  # relative, inside the package
                base = node.module
            elif node.module and node.module.split(".")[0] == PACKAGE:
                base = node.module.partition(".")[2] or None
            else:
                continue
            if base:
                found.add(base.split(".")[0])
            else:  # from . import x, y  /  from cxrtransfer import x
                found.add("__init__")
                found.update(
                    a.name for a in node.names if (_PACKAGE_DIR / f"{a.name}.py").is_file()
                )
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def library_modules(script: str | Path) -> list[str]:
    """The package modules a rule script uses, transitively (always with ``__init__``)."""
    todo = _imported_modules(Path(script).read_text(), None)
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        path = _PACKAGE_DIR / f"{m}.py"
        if path.is_file():
            todo |= _imported_modules(path.read_text(), m) - seen
    if seen:
        seen.add("__init__")
    return sorted(m for m in seen if (_PACKAGE_DIR / f"{m}.py").is_file())


def code_version(script: str | Path) -> str:
    """A hash of the source of every library module a rule script uses. Passed as a param, it
    makes Snakemake rerun exactly the jobs whose code changed (Snakemake itself tracks only the
    rule's script, not what the script imports)."""
    h = hashlib.sha256()
    for m in library_modules(script):
        h.update(m.encode() + b"\0" + (_PACKAGE_DIR / f"{m}.py").read_bytes() + b"\0")
    return h.hexdigest()[:16]
