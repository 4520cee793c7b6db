"""Rule synthetic_expert_labels: expert labels of the synthetic download (Google's format)."""

from cxrtransfer.config.job import run_main
from cxrtransfer.data.synthetic import write_expert_labels


def main(sm):
    write_expert_labels(sm.input.download, sm.output[0], **dict(sm.params.settings))


run_main(main, snakemake)  # noqa: F821
