"""Rule boxes: the box file (data.bboxes), checked against the download's metadata and PNGs."""

from cxrtransfer.config.job import run_main
from cxrtransfer.data.boxes import prepare


def main(sm):
    prepare(sm.params.bboxes, sm.input.metadata, sm.params.download_dir, sm.output[0])


run_main(main, snakemake)  # noqa: F821
