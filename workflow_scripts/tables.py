"""Rule tables: transfer.csv (long form), source x target matrices, comparisons.csv (the
compare jobs' paired comparisons), checklist.csv (the evaluation checklist), summary.md and its
web page for the report."""

from pathlib import Path

import pandas as pd
from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import atomic_path, write_csv
from cxrtransfer.core.products import read_cells, read_model_metrics
from cxrtransfer.evaluate.checklist import checklist_rows, no_base_rows
from cxrtransfer.evaluate.checklist_io import read_runs
from cxrtransfer.evaluate.comparison_table import read_all_comparisons
from cxrtransfer.evaluate.summary import summary_markdown
from cxrtransfer.evaluate.summary_page import summary_html
from cxrtransfer.evaluate.tables import add_noise_controls, long_table, matrices, write_matrix


def main(sm):
    cells = [c for path in sm.input.sets for c in read_cells(path)]
    df = add_noise_controls(long_table(cells))
    write_csv(sm.output.transfer, df)
    comparisons = read_all_comparisons(sm.input.comparisons)
    write_csv(sm.output.comparisons, comparisons)
    out_dir = Path(sm.output.matrices)
    out_dir.mkdir(parents=True, exist_ok=True)
    for value in ("transfer_rate", "adv_auroc"):
        for (task, attack, eps), m in matrices(df, value).items():
            write_matrix(m, out_dir / f"{task}_{attack}_eps{eps:g}_{value}")
    checklist = _checklist(sm, df)
    write_csv(sm.output.checklist, checklist)
    expert = sm.params.get("expert")  # only with expert labels
    text = summary_markdown(
        df,
        dict(sm.params.models),
        sm.params.data_source,
        dict(expert) if expert else None,
        comparisons=comparisons,
        deployed=dict(sm.params.deployed),
        checklist=checklist,
    )
    with atomic_path(sm.output.summary) as tmp:
        tmp.write_text(text)
    with atomic_path(sm.output.summary_html) as tmp:  # the same, for the report's first page
        tmp.write_text(summary_html(text))


def _checklist(sm, df):
    """The checklist's rows: its checks of the cells and extra runs, and a row per
    adversarially trained model with no base to compare with."""
    rules = dict(sm.params.checklist)
    shas = {
        Path(m).parent.name: read_model_metrics(m)["checkpoint_sha256"]
        for m in sm.input.checklist_metrics
    }
    rows = checklist_rows(
        df,
        read_runs(list(sm.input.checklist), shas),
        dict(rules["defended"]),
        rules["tolerance"],
        rules["unbounded_max_auroc"],
        norms=dict(rules["norms"]),
    )
    return pd.concat([rows, no_base_rows(list(rules["no_base"]))], ignore_index=True)


run_main(main, snakemake)  # noqa: F821
