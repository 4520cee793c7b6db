"""Rule ensemble: several trained models as one source checkpoint (averaged logits), with its
own validation threshold and the union of its members' training patients."""

from pathlib import Path

from cxrtransfer.config.job import run_main
from cxrtransfer.models.ensemble import build_ensemble_checkpoint


def main(sm):
    settings = dict(sm.params.settings)
    build_ensemble_checkpoint(
        name=sm.wildcards.ensemble,
        members=list(settings["members"]),
        model_paths=list(sm.input.models),
        metrics_paths=list(sm.input.metrics),
        patients_paths=list(sm.input.patients),
        val_shards=list(sm.input.val),
        test_shards=list(sm.input.test),
        out_dir=Path(sm.output.model).parent,
        settings=settings,
    )


run_main(main, snakemake, tensorflow=True)  # noqa: F821
