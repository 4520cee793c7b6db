"""Rule evaluate: metrics with patient-level bootstrap CIs for every target of one adversarial
set and, with noise controls, of its control (and the set's paired CI above it)."""

import json

from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import atomic_path
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.sets import evaluate_adv_set, nan_to_none
from cxrtransfer.evaluate.sets import named_inputs as named


def main(sm):
    w, p = sm.wildcards, sm.params
    # the set's cells get the paired CI above its control, whose predictions the job reads too
    outputs = [(w.attack, "adv", sm.output.metrics, named(sm.input, "control") or None)]
    if "control" in sm.output.keys():
        outputs.append((w.attack + CONTROL_SUFFIX, "control", sm.output.control, None))
    for attack, prefix, out, control_files in outputs:
        cells = evaluate_adv_set(
            source=w.source,
            data_task=w.data_task,
            attack=attack,
            eps_label=w.eps,
            models=dict(p.models),
            test_shards=list(sm.input.test_shards),
            clean_files=named(sm.input, "clean"),
            adv_files=named(sm.input, prefix),
            metrics_files=named(sm.input, "metrics"),
            patients_files=named(sm.input, "patients"),
            evaluation={"n_bootstrap": p.n_bootstrap, "confidence": p.confidence, "seed": p.seed},
            # the data task's expert labels, when the study has them for its finding
            expert_file=sm.input.get("expert_labels"),
            control_files=control_files,
        )
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(nan_to_none(cells), indent=1))


run_main(main, snakemake)  # noqa: F821
