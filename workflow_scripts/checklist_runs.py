"""Rule checklist_runs: the evaluation checklist's extra white-box runs on one target
(single-step, unbounded and more-steps variants of the attacks it is attacked with white-box),
with their adversarial AUROC on its test images."""

from cxrtransfer.config.job import run_main
from cxrtransfer.evaluate.checklist_runs import run_checklist


def main(sm):
    p = sm.params
    run_checklist(
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        shard_paths=list(sm.input.shards),
        out_csv=sm.output[0],
        runs=[dict(r) for r in p.runs],
        target=sm.wildcards.target,
        data_task=p.data_task,
        image_size=p.image_size,
        batch_size=p.batch_size,
        n_bootstrap=p.n_bootstrap,
        confidence=p.confidence,
        seed=p.seed,
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
