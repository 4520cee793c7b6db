"""Tables from evaluated cells: the long table and the source x target matrices (the summary:
``evaluate.summary``; the metrics: docs/METRICS.md).

The Markdown tables (these matrices and the summary's) are pandas' ``to_markdown`` (which
needs tabulate), the LaTeX ones ``Styler.to_latex`` (which needs jinja2); both are runtime
requirements of the report environment.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import atomic_path
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.cells import cell_columns
from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE, ABOVE_NOISE_CI

ID_COLUMNS = ("data_task", "attack", "eps", "source", "target", "relation")
NA = "n/a"


# ----------------------------------------------------------------------------------------------
# Long table and relations
# ----------------------------------------------------------------------------------------------


def long_table(cells: list[dict]) -> pd.DataFrame:
    """One row per cell; columns: identifiers (``ID_COLUMNS``), then the ``compute_cell`` keys in
    their fixed order (``metrics.cell_columns()``), then any other keys alphabetically. Rows are
    sorted by data_task, attack, eps, source, target."""
    if not cells:
        raise WorkflowError("No evaluated cells to tabulate (the list of cells is empty).")
    for i, c in enumerate(cells):
        missing = [k for k in ID_COLUMNS if k not in c]
        if missing:
            raise WorkflowError(f"Cell {i} lacks identifier key(s): {', '.join(missing)}.")
    df = pd.DataFrame(list(cells))
    known = list(ID_COLUMNS) + [c for c in cell_columns() if c != "notes"]
    ordered = [c for c in known if c in df.columns]
    rest = sorted(c for c in df.columns if c not in ordered and c != "notes")
    cols = ordered + rest + (["notes"] if "notes" in df.columns else [])
    df = df[cols]
    if "notes" in df.columns:
        df["notes"] = df["notes"].fillna("").astype(str)
    dup = df.duplicated(subset=list(ID_COLUMNS[:5]))
    if dup.any():
        first = df.loc[dup, list(ID_COLUMNS[:5])].iloc[0].to_dict()
        raise WorkflowError(f"{int(dup.sum())} duplicate cell(s), e.g. {first}.")
    return df.sort_values(list(ID_COLUMNS[:5]), kind="stable").reset_index(drop=True)


def add_noise_controls(df: pd.DataFrame) -> pd.DataFrame:
    """Beside each attack's row, the same cell of its noise control (the attack's perturbations
    spatially shuffled per image): ``noise_fooling_rate``, ``noise_adv_auroc`` and
    ``fooling_rate_above_noise`` (defined in docs/METRICS.md; computed here, once), followed by
    its paired CI from the evaluate job (``fooling_rate_above_noise_ci_low`` / ``_ci_high``, NaN
    on control rows). Control rows keep their own metrics."""
    keys = ["source", "target", "data_task", "eps"]
    is_control = df["attack"].astype(str).str.endswith(CONTROL_SUFFIX)
    control = df[is_control].assign(
        attack=lambda d: d["attack"].astype(str).str.removesuffix(CONTROL_SUFFIX)
    )[[*keys, "attack", "fooling_rate", "adv_auroc"]]
    control = control.rename(
        columns={"fooling_rate": "noise_fooling_rate", "adv_auroc": "noise_adv_auroc"}
    )
    paired = [c for c in ABOVE_NOISE_CI if c in df.columns]  # the evaluate job's paired CI
    out = df.drop(columns=paired).merge(control, on=[*keys, "attack"], how="left")
    out[ABOVE_NOISE] = out["fooling_rate"] - out["noise_fooling_rate"]
    for c in paired:
        out[c] = df[c].to_numpy()
    return out


# ----------------------------------------------------------------------------------------------
# Matrices
# ----------------------------------------------------------------------------------------------


def matrices(df: pd.DataFrame, value: str) -> dict[tuple, pd.DataFrame]:
    """Source x target matrices of ``value`` for each (data_task, attack, eps).

    Each matrix has index ``source`` and columns ``target`` (both sorted); a missing combination
    is NaN.
    """
    missing = [c for c in (*ID_COLUMNS[:5], value) if c not in df.columns]
    if missing:
        raise WorkflowError(f"Table lacks column(s) {', '.join(missing)} for the {value} matrices.")
    out = {}
    for key, g in df.groupby(["data_task", "attack", "eps"], sort=True):
        if g.duplicated(subset=["source", "target"]).any():
            raise WorkflowError(f"Duplicate source/target rows for {key}.")
        m = g.pivot(index="source", columns="target", values=value)
        m = m.sort_index(axis=0).sort_index(axis=1).astype(float)
        m.index.name, m.columns.name = "source", "target"
        out[tuple(key)] = m
    return out


def fmt(x, digits: int = 3) -> str:
    """A number with ``digits`` decimals, NaN as "n/a"; anything else as its text."""
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return NA if math.isnan(xf) else f"{xf:.{digits}f}"


def _md_escape(s) -> str:
    return str(s).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list], align: str) -> list[str]:
    """The lines of a Markdown table (pandas' ``to_markdown``) of ``rows`` of cells written as
    text (numbers already formatted, e.g. by ``fmt``: tabulate does not re-parse them), ``|``
    escaped in every cell; column i is right-aligned where ``align[i]`` is "r", else left."""
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"A table of {len(header)} columns, alignment {align!r}: ragged rows.")
    cells = pd.DataFrame(
        [[_md_escape(c) for c in r] for r in rows], columns=[_md_escape(h) for h in header]
    )
    colalign = tuple("right" if a == "r" else "left" for a in align)
    return cells.to_markdown(index=False, disable_numparse=True, colalign=colalign).splitlines()


def matrix_markdown(m: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of a matrix (row label column first, numbers right-aligned)."""
    corner = f"{m.index.name or ''} \\ {m.columns.name or ''}".strip()
    rows = [[i] + [fmt(v, digits) for v in r] for i, r in zip(m.index, m.to_numpy(), strict=True)]
    lines = markdown_table([corner, *m.columns], rows, "l" + "r" * m.shape[1])
    return "\n".join(lines) + "\n"


def matrix_latex(m: pd.DataFrame, digits: int = 3) -> str:
    """A LaTeX ``tabular`` of a matrix (pandas' ``Styler.to_latex``; plain ``\\hline`` rules, so
    no LaTeX package is needed), labels and the corner "source \\ target" escaped."""
    corner = f"{m.index.name or ''} \\ {m.columns.name or ''}".strip()
    styler = (
        m.rename_axis(index=None, columns=corner)
        .style.format(precision=digits, na_rep=NA)
        .format_index(escape="latex", axis=0)
        .format_index(escape="latex", axis=1)
        .format_index_names(escape="latex", axis=1)
        .set_table_styles(
            [{"selector": r, "props": ":hline;"} for r in ("toprule", "midrule", "bottomrule")],
            overwrite=False,
        )
    )
    return styler.to_latex(column_format="l" + "r" * m.shape[1])


def write_matrix(df: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Write ``stem.csv`` (full precision, row labels in the first column, NaN as "n/a"),
    ``stem.md`` and ``stem.tex`` (3 decimals, NaN as "n/a"). Each file is written atomically.
    Returns the three paths."""
    stem = Path(stem)
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex")]
    with atomic_path(paths[0]) as tmp:
        df.to_csv(tmp, na_rep=NA, index_label=df.index.name or "source")
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(matrix_markdown(df))
    with atomic_path(paths[2]) as tmp:
        tmp.write_text(matrix_latex(df))
    return paths
