"""What each job reads: the named inputs of the rules whose outputs are products, written once.

The rules' input functions (rules/*.smk) call these with :class:`ConfigFacts` (the run's
config and the manifests' shard counts); ``python -m cxrtransfer.verify`` calls the same
functions with the facts of a results tree (its shards and each model's metrics.json) to know
which product is made from which, so a change of what a rule reads changes both. A
:class:`Facts` answers the few questions the inputs depend on; paths come from
:mod:`cxrtransfer.core.paths`. Pure Python: the Snakefile imports it at parse time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from cxrtransfer import SPLITS
from cxrtransfer.core import paths as P
from cxrtransfer.plan import study as plan

Inputs = dict[str, str | list[str]]


class Facts(Protocol):
    """What the inputs of a job depend on beyond its wildcards."""

    noise_control: bool

    def shard_ids(self, task: str, split: str) -> list[str]:
        """Shard labels of a task's split."""

    def model_task(self, model: str) -> str | None:
        """The task a model of ``models:`` is trained on."""

    def source_task(self, name: str) -> str | None:
        """The task of a source (a model, ensemble, defended model or view)."""

    def base_model(self, name: str) -> str:
        """The model inside a defended model."""

    def init_from(self, model: str) -> str | None:
        """The model a model is fine-tuned from, or None."""

    def robust_base(self, model: str) -> str | None:
        """The model an adversarially trained model must be more robust than
        (``robust_base``; None when unset: then its base, if any, is its init_from)."""

    def targets(self, data_task: str) -> list[str]:
        """The targets of a data task's adversarial sets."""

    def is_universal(self, attack: str) -> bool:
        """Whether ``attack`` is a universal attack (its perturbation is rule uap's)."""

    def uap_split(self, attack: str) -> str | None:
        """The split a universal attack is crafted on."""

    def expert_column(self, data_task: str) -> str | None:
        """The expert-label column of a data task's finding, or None (no expert labels)."""


@dataclass(frozen=True)
class ConfigFacts:
    """The facts of a run: its config, and the shard labels from the manifests (``shard_ids``,
    which in the Snakefile waits for the manifest checkpoint)."""

    config: dict
    shard_ids: Callable[[str, str], list[str]]

    @property
    def noise_control(self) -> bool:
        return bool(self.config["noise_control"])

    def model_task(self, model: str) -> str:
        return self.config["models"][model]["task"]

    def source_task(self, name: str) -> str:
        return plan.source_task(self.config, name)

    def base_model(self, name: str) -> str:
        return plan.base_model(self.config, name)

    def init_from(self, model: str) -> str | None:
        return self.config["models"][model].get("init_from")

    def robust_base(self, model: str) -> str | None:
        return self.config["models"][model].get("robust_base")

    def targets(self, data_task: str) -> list[str]:
        return plan.targets_for(self.config, data_task)

    @cached_property
    def _universal(self) -> list[str]:
        return plan.universal_attacks(self.config)

    @cached_property
    def _expert_columns(self) -> dict:
        return plan.expert_columns(self.config)

    def is_universal(self, attack: str) -> bool:
        return attack in self._universal

    def uap_split(self, attack: str) -> str:
        return plan.uap_split(self.config, attack)

    def expert_column(self, data_task: str) -> str | None:
        return self._expert_columns.get(data_task)


def shards(facts: Facts, task: str, split: str) -> list[str]:
    """The shard files of a task's split."""
    return [P.SHARD.format(task=task, split=split, shard=s) for s in facts.shard_ids(task, split)]


def _set_keys(source: str, data_task: str, attack: str, eps: str) -> dict[str, str]:
    return {"source": source, "data_task": data_task, "attack": attack, "eps": eps}


def _model(model: str, *, patients: bool = False) -> Inputs:
    """A model's checkpoint and metrics (and training patients)."""
    out = {"model": P.MODEL.format(model=model), "metrics": P.MODEL_METRICS.format(model=model)}
    if patients:
        out["patients"] = P.MODEL_PATIENTS.format(model=model)
    return out


def _val_test(facts: Facts, task: str) -> Inputs:
    return {"val": shards(facts, task, "val"), "test": shards(facts, task, "test")}


def shard(facts: Facts, task: str) -> Inputs:
    """Rule shard: the task's manifest."""
    return {"manifest": P.MANIFEST.format(task=task)}


def shard_summary(facts: Facts, task: str) -> Inputs:
    """Rule shard_summary: the manifest's rejected rows and every shard of the task."""
    return {
        "manifest_rejected": P.MANIFEST_REJECTED.format(task=task),
        "shards": [s for split in SPLITS for s in shards(facts, task, split)],
    }


def train(facts: Facts, model: str) -> Inputs:
    """Rule train: a fine-tuned model's start (that model's checkpoint, metrics and training
    patients), an adversarially trained model's ``robust_base`` (its checkpoint, attacked on
    the validation images for the robustness gate; with init_from the base is the start) and
    the three splits of the model's task (test: the test metrics)."""
    init = facts.init_from(model)
    start = {}
    if init:
        start = {
            "init_model": P.MODEL.format(model=init),
            "init_metrics": P.MODEL_METRICS.format(model=init),
            "init_patients": P.MODEL_PATIENTS.format(model=init),
        }
    base = facts.robust_base(model)
    if base and base != init:
        start["robust_base_model"] = P.MODEL.format(model=base)
    task = facts.model_task(model)
    return {**start, **{s: shards(facts, task, s) for s in ("train", "val", "test")}}


def ensemble(facts: Facts, name: str) -> Inputs:
    """Rule ensemble: its members' checkpoints, metrics and patients; its task's val/test."""
    members = plan.ensemble_members(name)
    return {
        "models": [P.MODEL.format(model=m) for m in members],
        "metrics": [P.MODEL_METRICS.format(model=m) for m in members],
        "patients": [P.MODEL_PATIENTS.format(model=m) for m in members],
        **_val_test(facts, facts.source_task(name)),
    }


def defend(facts: Facts, name: str) -> Inputs:
    """Rule defend: the model inside and its task's val/test shards."""
    return {
        **_model(facts.base_model(name), patients=True),
        **_val_test(facts, facts.source_task(name)),
    }


def finding_view(facts: Facts, name: str) -> Inputs:
    """Rule finding_view: the multi-label model and the binary task's val/test shards."""
    model, task = plan.view_parts(name)
    return {**_model(model, patients=True), **_val_test(facts, task)}


def uap(facts: Facts, source: str, attack: str, eps: str) -> Inputs:
    """Rule uap: the source and its task's crafting split."""
    split = facts.uap_split(attack)
    crafting = shards(facts, facts.source_task(source), split) if split else []
    return {**_model(source), "shards": crafting}


def attack(facts: Facts, source: str, data_task: str, attack: str, eps: str) -> Inputs:
    """Rule attack: the source's checkpoint, the data task's test shards and, for a universal
    attack, the source's perturbation."""
    inputs = {**_model(source), "shards": shards(facts, data_task, "test")}
    if facts.is_universal(attack):
        inputs["uap"] = P.UAP.format(source=source, attack=attack, eps=eps)
    return inputs


def checklist_runs(facts: Facts, target: str) -> Inputs:
    """Rule checklist_runs: the target and its own task's test shards."""
    return {**_model(target), "shards": shards(facts, facts.source_task(target), "test")}


def predict_clean(facts: Facts, target: str, data_task: str) -> Inputs:
    """Rule predict_clean: the target and the data task's test shards."""
    return {**_model(target), "shards": shards(facts, data_task, "test")}


def predict_adv(
    facts: Facts, target: str, source: str, data_task: str, attack: str, eps: str
) -> Inputs:
    """Rule predict_adv: a target's model and the caches of one adversarial set and of its
    noise control."""
    keys = _set_keys(source, data_task, attack, eps)
    inputs = {**_model(target), "attacks": P.ATTACK_DIR.format(**keys)}
    if facts.noise_control:
        inputs["control"] = P.ATTACK_CONTROL_DIR.format(**keys)
    return inputs


def evaluated_models(facts: Facts, source: str, data_task: str) -> list[str]:
    """The source, its members if it is an ensemble, and the targets of one set."""
    members = plan.ensemble_members(source) if plan.is_ensemble(source) else []
    return [source, *members, *facts.targets(data_task)]


def evaluate(facts: Facts, source: str, data_task: str, attack: str, eps: str) -> Inputs:
    """Rule evaluate: per target its clean and adversarial predictions (and the control's),
    every model's metrics and training patients, and the task's expert labels if any."""
    keys = _set_keys(source, data_task, attack, eps)
    targets = facts.targets(data_task)
    inputs: Inputs = {"test_shards": shards(facts, data_task, "test")}
    for t in targets:
        inputs[f"clean__{t}"] = P.PRED_CLEAN.format(target=t, data_task=data_task)
        inputs[f"adv__{t}"] = P.PRED_ADV.format(target=t, **keys)
        if facts.noise_control:
            inputs[f"control__{t}"] = P.PRED_ADV_CONTROL.format(target=t, **keys)
    for m in sorted({source, *targets}):
        inputs[f"metrics__{m}"] = P.MODEL_METRICS.format(model=m)
    for m in sorted(set(evaluated_models(facts, source, data_task))):
        inputs[f"patients__{m}"] = P.MODEL_PATIENTS.format(model=m)
    if facts.expert_column(data_task):
        inputs["expert_labels"] = P.EXPERT_LABELS.format(task=data_task)
    return inputs


def files(inputs: Inputs) -> list[str]:
    """Every path of a job's named inputs, in order."""
    return [f for v in inputs.values() for f in ([v] if isinstance(v, str) else v)]
