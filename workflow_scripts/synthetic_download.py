"""Rule synthetic_download: write the built-in Kaggle-layout dataset."""

from cxrtransfer.synthetic import SyntheticSpec, generate
from cxrtransfer.utils import run_main


def main(sm):
    generate(sm.output[0], SyntheticSpec.from_config(dict(sm.params.spec)))


run_main(main, snakemake)  # noqa: F821
