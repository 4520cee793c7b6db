"""Rules predict_clean / predict_adv: a target model's per-example predictions for a whole
test set (all its shards) or a whole adversarial set and its noise control."""

from cxrtransfer.config.job import run_main
from cxrtransfer.data.adversarial_cache import set_caches
from cxrtransfer.evaluate.predict import predict_adv, predict_clean


def main(sm):
    common = {
        "model_path": sm.input.model,
        "metrics_path": sm.input.metrics,
        "image_size": sm.params.image_size,
        "batch_size": sm.params.batch_size,
    }
    if "attacks" in sm.input.keys():
        sets = [(set_caches(sm.input.attacks), sm.output.adv)]
        if "control" in sm.input.keys():
            sets.append((set_caches(sm.input.control), sm.output.control))
        predict_adv(sets=sets, **common)
    else:
        predict_clean(shard_paths=list(sm.input.shards), out_csv=sm.output[0], **common)


run_main(main, snakemake, tensorflow=True)  # noqa: F821
