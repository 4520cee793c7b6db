"""The files of the checklist's extra white-box runs (``results/checklist/<target>.csv``, made by
``evaluate.checklist_runs``): their columns and variants, declared once, and their reader.
Light (pandas only), so that the tables job that reads them loads no model code."""

from __future__ import annotations

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig

# One row per run: the grid's white-box cell it checks (target = source, attack, eps), the
# variant, its budget and steps, and the adversarial AUROC with its patient-bootstrap CI.
RUN_COLUMNS = (
    "target",
    "data_task",
    "attack",
    "eps",
    "variant",
    "variant_eps",
    "variant_steps",
    "adv_auroc",
    "adv_auroc_ci_low",
    "adv_auroc_ci_high",
    "n_images",
)
# single_step: the attack as one step of size eps (FGSM); unbounded: at a budget that bounds
# nothing; more_steps: with checklist.steps_factor times its steps
VARIANTS = ("single_step", "unbounded", "more_steps")


def read_runs(paths: list, checkpoints: dict[str, str]) -> pd.DataFrame:
    """The checklist jobs' rows, checked: every column, the config their job ran with
    (``runconfig``) and, per target, the checkpoint the run attacked (``checkpoints``:
    {target: sha256 of its model.keras as its metrics.json records}); an empty frame when the
    study has no checklist runs."""
    frames = []
    for path in paths:
        fix = "Rerun its checklist job (snakemake --forcerun checklist_runs)."
        try:
            df = pd.read_csv(path, dtype={"checkpoint_sha256": str})
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise WorkflowError(f"Cannot read checklist runs '{path}' ({e}). {fix}") from None
        missing = [c for c in (*RUN_COLUMNS, "checkpoint_sha256") if c not in df.columns]
        if missing or df.empty:
            raise WorkflowError(
                f"Checklist runs '{path}' lack column(s) {', '.join(missing) or '(no rows)'}. {fix}"
            )
        record = {f: df[f].iloc[0] for f in runconfig.FIELDS if f in df.columns}
        runconfig.check_record(record, path)
        for target, sha in df.groupby("target")["checkpoint_sha256"].first().items():
            if checkpoints.get(target) != sha:
                raise WorkflowError(
                    f"Checklist runs '{path}' attacked another checkpoint of '{target}' than "
                    f"its metrics.json records: they are stale. {fix}"
                )
        frames.append(df[list(RUN_COLUMNS)])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS)
