"""Rule train: fine-tune one model (resumes from its last epoch if interrupted with the same
settings and data; writes model.keras, metrics.json, history.csv, train_patients.txt)."""

from pathlib import Path

from cxrtransfer.data import subset_patients
from cxrtransfer.train import train_model
from cxrtransfer.utils import run_main


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
    train_model(
        settings,
        list(sm.input.train),
        list(sm.input.val),
        list(sm.input.test),
        Path(sm.output.model).parent,
        patients,
        init,
    )


run_main(main, snakemake)  # noqa: F821
