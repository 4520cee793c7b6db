"""Rule attack: craft one shard of adversarial examples on a source model (uint8 cache)."""

from cxrtransfer.jobs import attack_shard
from cxrtransfer.utils import run_main


def main(sm):
    w, p = sm.wildcards, sm.params
    attack_shard(
        sm.input.model,
        sm.input.metrics,
        sm.input.shard,
        sm.output[0],
        w.attack,
        dict(p.attack),
        p.eps,
        p.image_size,
        p.batch_size,
        w.source,
        w.data_task,
    )


run_main(main, snakemake)  # noqa: F821
