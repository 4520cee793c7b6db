"""Rule finding_view: one output of a multi-label model as a 2-class checkpoint ({model}@{task})
with its own validation threshold on the binary task's images."""

from pathlib import Path

from cxrtransfer.config.job import run_main
from cxrtransfer.models.views import build_view_checkpoint


def main(sm):
    build_view_checkpoint(
        name=sm.wildcards.view,
        model_path=sm.input.model,
        metrics_path=sm.input.metrics,
        patients_path=sm.input.patients,
        val_shards=list(sm.input.val),
        test_shards=list(sm.input.test),
        out_dir=Path(sm.output.model).parent,
        settings=dict(sm.params.settings),
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
