"""Rule noise_control: an attack cache's perturbations spatially shuffled per image."""

from cxrtransfer.attack_job import control_shard
from cxrtransfer.utils import run_main


def main(sm):
    control_shard(
        attack_path=sm.input.attack,
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        out_path=sm.output[0],
        image_size=sm.params.image_size,
        batch_size=sm.params.batch_size,
    )


run_main(main, snakemake)  # noqa: F821
