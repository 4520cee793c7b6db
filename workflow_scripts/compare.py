"""Rule compare: paired comparisons of one deployed target's adversarial sets (CSV)."""

from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import write_csv
from cxrtransfer.evaluate.compare import compare_target
from cxrtransfer.evaluate.sets import named_inputs


def main(sm):
    s, p = sm.params.settings, sm.params
    table = compare_target(
        target=sm.wildcards.target,
        data_task=s["data_task"],
        sets=list(s["sets"]),
        pairs=list(s["pairs"]),
        clean_file=sm.input.clean,
        adv_files=list(sm.input.adv),
        metrics_files=named_inputs(sm.input, "metrics"),
        source_tasks=dict(s["source_tasks"]),
        evaluation={"n_bootstrap": p.n_bootstrap, "confidence": p.confidence, "seed": p.seed},
    )
    write_csv(sm.output[0], table)


run_main(main, snakemake)  # noqa: F821
