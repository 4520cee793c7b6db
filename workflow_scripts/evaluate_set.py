"""Rule evaluate: metrics with bootstrap CIs for every target of one adversarial set."""

import json

from cxrtransfer.jobs import evaluate_adv_set, nan_to_none
from cxrtransfer.utils import atomic_path, run_main


def main(sm):
    w, p = sm.wildcards, sm.params
    targets = list(p.targets)
    n_clean = len(sm.input.clean) // len(targets)
    n_adv = len(sm.input.adv) // len(targets)
    clean = {t: sm.input.clean[i * n_clean : (i + 1) * n_clean] for i, t in enumerate(targets)}
    adv = {t: sm.input.adv[i * n_adv : (i + 1) * n_adv] for i, t in enumerate(targets)}
    metrics = dict(
        zip([w.source, *targets], [sm.input.source_metrics, *sm.input.target_metrics], strict=True)
    )
    cells = evaluate_adv_set(
        p.config_models,
        w.source,
        w.data_task,
        w.attack,
        w.eps,
        targets,
        clean,
        adv,
        metrics,
        dict(p.evaluation),
    )
    with atomic_path(sm.output[0]) as tmp:
        tmp.write_text(json.dumps(nan_to_none(cells), indent=1))


run_main(main, snakemake)  # noqa: F821
