"""Rule train: fine-tune one model (resumes from its last epoch if interrupted)."""

from pathlib import Path

from cxrtransfer.data import subset_patients
from cxrtransfer.train import train_model
from cxrtransfer.utils import run_main


def main(sm):
    s = dict(sm.params.settings)
    patients = subset_patients(sm.input.train, s["train_subset"], s["split_seed"])
    train_model(
        s,
        list(sm.input.train),
        list(sm.input.val),
        list(sm.input.test),
        Path(sm.output.model).parent,
        patients,
    )


run_main(main, snakemake)  # noqa: F821
