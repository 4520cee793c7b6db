"""Rules predict_clean / predict_adv: a target model's per-example predictions for one shard."""

from cxrtransfer.predictions import predict_adv_shard, predict_clean_shard
from cxrtransfer.utils import run_main


def main(sm):
    common = {
        "model_path": sm.input.model,
        "metrics_path": sm.input.metrics,
        "out_csv": sm.output[0],
        "image_size": sm.params.image_size,
        "batch_size": sm.params.batch_size,
    }
    if "attack" in sm.input.keys():
        predict_adv_shard(attack_path=sm.input.attack, **common)
    else:
        predict_clean_shard(shard_path=sm.input.shard, **common)


run_main(main, snakemake)  # noqa: F821
