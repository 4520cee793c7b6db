"""Rule attack: craft one adversarial set (every test shard, uint8 caches) on a source model
and, when the study has noise controls, the set's control with the same loaded model."""

from cxrtransfer.attacks.job import attack_set
from cxrtransfer.config.job import run_main
from cxrtransfer.core import paths as P


def main(sm):
    w, p = sm.wildcards, sm.params
    attack_set(
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        shard_paths=list(sm.input.shards),
        out_dir=sm.output.caches,
        control_dir=sm.output.get("control"),
        work_dir=P.ATTACK_WORK.format(**dict(w.items())),
        # everything the caches depend on besides the checkpoint and shard contents
        stamp={k: getattr(p, k) for k in ("attack", "eps", "image_size", "batch_size", "code")},
        attack_name=w.attack,
        attack_cfg=dict(p.attack),
        eps=p.eps,
        image_size=p.image_size,
        batch_size=p.batch_size,
        source_model=w.source,
        data_task=w.data_task,
        uap_path=sm.input.get("uap"),
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
