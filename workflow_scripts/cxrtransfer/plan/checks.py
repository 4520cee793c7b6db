"""Checks across the config's settings that the JSON schema cannot express (run before the
DAG is built: a bad config fails with one clear message)."""

from __future__ import annotations

from pathlib import Path

from cxrtransfer import LABELS, WorkflowError
from cxrtransfer.attacks.spec import spec_from_config
from cxrtransfer.attacks.uap import is_uap, uap_spec_from_config
from cxrtransfer.core import paths as P
from cxrtransfer.core.paths import eps_label
from cxrtransfer.data.expert_labels import DEFAULT_PATH
from cxrtransfer.data.synthetic import expert_label_settings
from cxrtransfer.plan.adversarial_checks import check_adversarial_training
from cxrtransfer.plan.checklist import check_checklist_config
from cxrtransfer.plan.study import (
    KERAS_APPLICATIONS,
    adversarial_sets,
    base_model,
    binary_tasks,
    canon,
    defended,
    ensemble_name,
    eps_grid,
    is_defended,
    is_multilabel,
    is_multilabel_task,
    is_view,
    model_views,
    targets_for,
    task_labels,
    view_parts,
)


def check_config(config: dict, basedir: str | Path = ".") -> None:
    """Cross-checks the JSON schema cannot express; raise WorkflowError naming the key."""
    _check_linf_units(config)
    _check_tasks(config)
    _check_models(config, basedir)
    check_adversarial_training(config)
    _check_defences(config)
    _check_attacks(config)
    _check_grid(config)
    _check_expert_labels(config, basedir)
    _check_deployed(config)
    check_checklist_config(config)


def _check_expert_labels(config: dict, basedir) -> None:
    data = config["data"]
    value = data.get("expert_labels")
    synthetic = (data.get("synthetic") or {}).get("expert_labels")
    if synthetic is not None:
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
        raise WorkflowError(
            f"data.expert_labels: '{value}' does not exist. `make real-metadata` writes the "
            f"combined Google file to {DEFAULT_PATH} (from the torchxrayvision 1.5.7 wheel); "
            "with synthetic data, `data.expert_labels: synthetic` uses the generator's file."
        )


def _check_tasks(config: dict) -> None:
    """A task has exactly one of ``label`` (binary) and ``labels`` (multi-label: ``all`` or a
    list of known findings without duplicates)."""
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


def linf_unit(key: str, eps) -> None:
    """Refuse an L-inf budget below 1 grey level: eps is written in 1/255 units (8 = 8/255),
    and a value below 1 is almost always a budget written in [0, 1] units (0.031 for 8/255)."""
    if isinstance(eps, int | float) and 0 < eps < 1:
        raise WorkflowError(
            f"{key}: {eps:g} is below one grey level. L-inf budgets are written in 1/255 units "
            f"(8 means 8/255 per pixel), so {eps:g} would let each pixel move by {eps:g}/255 = "
            f"{eps / 255:.5f} of the [0, 1] range, less than the 1/255 step of the 8-bit images "
            f"the attacks are cached as. If you meant {eps:g} in [0, 1] units (as many papers "
            f"write it), write {round(eps * 255)} ({eps:g} x 255 = {eps * 255:.3g})."
        )


def _check_linf_units(config: dict) -> None:
    for i, eps in enumerate(config.get("eps", [])):
        linf_unit(f"eps[{i}]", eps)
    blocks = [("training.adversarial", config.get("training", {}).get("adversarial"))]
    blocks += [
        (f"models.{n}.training.adversarial", (m.get("training") or {}).get("adversarial"))
        for n, m in config.get("models", {}).items()
    ]
    for key, adv in blocks:
        if isinstance(adv, dict):
            linf_unit(f"{key}.eps", adv.get("eps"))


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


def check_array_submission(
    n_jobs: int, executor: str, array_rules: str | None, jobs: int | None, per_timespan
) -> None:
    """Refuse a SLURM run with job arrays whose ``--jobs`` or ``max-jobs-per-timespan`` is below
    the jobs it plans: snakemake-executor-plugin-slurm 2.8.0 waits for all ready jobs of an
    array rule, drops those it is not handed and the run then waits forever without a word
    (plugin issue #473; docs/CLUSTER.md, "Job arrays")."""
    if executor != "slurm" or not (array_rules or "").strip():
        return
    limits = {
        "--jobs (jobs:)": jobs,
        "--max-jobs-per-timespan (max-jobs-per-timespan:)": per_timespan,
    }
    low = {k: v for k, v in limits.items() if v is not None and v < n_jobs}
    if low:
        said = ", ".join(f"{k} {v}" for k, v in low.items())
        raise WorkflowError(
            f"This SLURM run plans {n_jobs} jobs and submits the rules {array_rules} as job "
            f"arrays, but allows fewer at once ({said}). The SLURM plugin would then drop the "
            "array jobs it is not handed and the run would wait forever (plugin issue #473). "
            f"Nothing was submitted. Fix: set jobs and max-jobs-per-timespan to at least "
            f"{n_jobs} plus the shard jobs planned once the manifests exist (e.g. --jobs 5000 "
            "--max-jobs-per-timespan 5000/1s, as profiles/slurm does), or submit without arrays "
            "(--slurm-array-jobs none). See docs/CLUSTER.md, 'Job arrays'."
        )
