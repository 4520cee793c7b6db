"""Rule defend: a trained model behind an input transform (config defences), saved as one
checkpoint with its own validation threshold."""

from pathlib import Path

from cxrtransfer.config.job import run_main
from cxrtransfer.models.defended import build_defended_checkpoint


def main(sm):
    build_defended_checkpoint(
        name=sm.wildcards.defended,
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        patients_path=sm.input.patients,
        val_shards=list(sm.input.val),
        test_shards=list(sm.input.test),
        out_dir=Path(sm.output.model).parent,
        settings=dict(sm.params.settings),
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
