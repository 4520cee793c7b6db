"""Rule synthetic_download: write the built-in Kaggle-layout dataset."""

from cxrtransfer.config.job import run_main
from cxrtransfer.data.synthetic import SyntheticSpec, generate


def main(sm):
    generate(sm.output[0], SyntheticSpec.from_config(dict(sm.params.spec)))


run_main(main, snakemake)  # noqa: F821
