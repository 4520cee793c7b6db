"""The columns of the paired comparisons (the fooling rate above noise of a cell, and
comparisons.csv) and the reader of a compare job's table. Light on purpose: the tables and plot
scripts import it without the paired bootstrap. Definitions: docs/METRICS.md#paired-differences.
"""

from __future__ import annotations

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.files import FIX_DAMAGED

# The cell column of the attack's fooling rate minus its noise control's (computed by
# tables.add_noise_controls) and its paired CI (computed by the evaluate job).
ABOVE_NOISE = "fooling_rate_above_noise"
ABOVE_NOISE_CI = (f"{ABOVE_NOISE}_ci_low", f"{ABOVE_NOISE}_ci_high")
# The rates compared between two sets, in column order (each over all test images, except the
# transfer rate: each set's over its own transfer base, both under the same resample).
PAIRED_RATES = ("fooling_rate", "flip_rate", "transfer_rate")
# A comparison's identifiers: the target and its images, then the two sets (A minus B).
PAIR_COLUMNS = (
    "data_task",
    "target",
    "eps",
    "kind",
    "source_a",
    "attack_a",
    "source_b",
    "attack_b",
)
# Provenance and settings of a comparison row (after the rates).
RECORD_COLUMNS = (
    "n_images",
    "n_patients",
    "n_boot",
    "ci_level",
    "seed",
    "bootstrap_cluster",
    "t_target",
    "target_checkpoint_sha256",
    "source_a_checkpoint_sha256",
    "source_b_checkpoint_sha256",
    *runconfig.FIELDS,
)
RATE_PARTS = ("_a", "_b", "_difference", "_difference_ci_low", "_difference_ci_high")
COMPARISON_COLUMNS = (
    *PAIR_COLUMNS,
    *[f"{rate}{part}" for rate in PAIRED_RATES for part in RATE_PARTS],
    *RECORD_COLUMNS,
)


def read_comparisons(path) -> pd.DataFrame:
    """A compare job's table (``COMPARISON_COLUMNS``), checked: its columns and the config its
    job ran with; or a WorkflowError naming it."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise WorkflowError(f"Cannot read the comparisons '{path}' ({e}). {FIX_DAMAGED}") from None
    missing = [c for c in COMPARISON_COLUMNS if c not in table.columns]
    if missing:
        raise WorkflowError(
            f"The comparisons '{path}' lack column(s) {', '.join(missing)}. {FIX_DAMAGED}"
        )
    if len(table):  # rows record the config their job ran with (none without pairs)
        one = {f: table[f].iloc[0] if table[f].nunique() == 1 else None for f in runconfig.FIELDS}
        runconfig.check_record(one, path)
    return table


def read_all_comparisons(paths) -> pd.DataFrame:
    """Every compare job's table, one below the other (comparisons.csv)."""
    tables = [read_comparisons(p) for p in paths]
    if not tables:
        return pd.DataFrame(columns=list(COMPARISON_COLUMNS))
    return pd.concat(tables, ignore_index=True)
