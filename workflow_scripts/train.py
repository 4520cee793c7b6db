"""Rule train: fine-tune one model (resumes from its last epoch if interrupted with the same
settings and data; writes model.keras, metrics.json, history.csv, train_patients.txt)."""

import importlib
from pathlib import Path

from cxrtransfer.config.job import run_main
from cxrtransfer.data.datasets import subset_patients
from cxrtransfer.models.train import train_model


def adversarial_functions(settings: dict) -> dict:
    """For an adversarially trained model, ``make_trainer`` and ``make_val_attack`` of
    ``cxrtransfer.attacks.adversarial_training`` (the training's attack and its robust
    validation's), else nothing. Imported by name, for such models only: a rule's code version
    (plan.code.code_version) covers the modules its script imports statically, so clean training
    does not cover attack code and an edit of it retrains no clean model; the train rule adds
    that module's code version for adversarially trained models (rules/common.smk, train_code).
    """
    if not settings.get("adversarial"):
        return {}
    module = importlib.import_module("cxrtransfer.attacks.adversarial_training")
    return {"make_trainer": module.make_trainer, "make_val_attack": module.make_val_attack}


def main(sm):
    settings = dict(sm.params.settings)
    patients = subset_patients(sm.input.train, settings["train_subset"], settings["split_seed"])
    init = None
    if settings.get("init_from"):  # fine-tuned from another model's finished checkpoint
        init = {
            "checkpoint": sm.input.init_model,
            "metrics": sm.input.init_metrics,
            "patients": sm.input.init_patients,
        }
    # the base an adversarially trained model without init_from must be more robust than
    robust_base = sm.input.get("robust_base_model") if settings.get("robust_base") else None
    train_model(
        settings,
        list(sm.input.train),
        list(sm.input.val),
        list(sm.input.test),
        Path(sm.output.model).parent,
        patients,
        init,
        robust_base=robust_base,
        **adversarial_functions(settings),
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
