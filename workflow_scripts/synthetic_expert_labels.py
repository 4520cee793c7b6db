"""Rule synthetic_expert_labels: expert labels of the synthetic download (Google's format)."""

from cxrtransfer.synthetic import write_expert_labels
from cxrtransfer.utils import run_main


def main(sm):
    write_expert_labels(sm.input.download, sm.output[0], **dict(sm.params.settings))


run_main(main, snakemake)  # noqa: F821
