"""Rules predict_clean / predict_adv: a target model's per-example predictions for one shard."""

from cxrtransfer.jobs import predict_adv_shard, predict_clean_shard
from cxrtransfer.utils import run_main


def main(sm):
    p = sm.params
    if "attack" in sm.input.keys():
        predict_adv_shard(sm.input.model, sm.input.attack, sm.output[0], p.image_size, p.batch_size)
    else:
        predict_clean_shard(
            sm.input.model, sm.input.shard, sm.output[0], p.image_size, p.batch_size
        )


run_main(main, snakemake)  # noqa: F821
