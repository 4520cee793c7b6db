"""Rule uap: craft one source model's universal adversarial perturbation on its training or
validation images (never test) and store it as integer grey levels with its provenance."""

from cxrtransfer.attacks.uap import craft_uap_job
from cxrtransfer.config.job import run_main


def main(sm):
    w, p = sm.wildcards, sm.params
    craft_uap_job(
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        shard_paths=list(sm.input.shards),
        out_path=sm.output[0],
        attack_name=w.attack,
        attack_cfg=dict(p.attack),
        eps=p.eps,
        image_size=p.image_size,
        batch_size=p.batch_size,
        source_model=w.source,
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
