"""Rule attack: craft one shard of adversarial examples on a source model (uint8 cache) and,
when the study has noise controls, the shard's control cache with the same loaded model."""

from cxrtransfer.attack_job import attack_shard
from cxrtransfer.utils import run_main


def main(sm):
    attack_shard(
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        shard_path=sm.input.shard,
        out_path=sm.output.cache,
        control_path=sm.output.get("control"),
        attack_name=sm.wildcards.attack,
        attack_cfg=dict(sm.params.attack),
        eps=sm.params.eps,
        image_size=sm.params.image_size,
        batch_size=sm.params.batch_size,
        source_model=sm.wildcards.source,
        data_task=sm.wildcards.data_task,
    )


run_main(main, snakemake)  # noqa: F821
