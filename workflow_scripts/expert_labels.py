"""Rule expert_labels: one task's expert labels, checked against the download's metadata."""

from cxrtransfer.config.job import run_main
from cxrtransfer.data.expert_labels import prepare


def main(sm):
    prepare(sm.input.expert, sm.input.metadata, sm.output[0], sm.params.column)


run_main(main, snakemake)  # noqa: F821
