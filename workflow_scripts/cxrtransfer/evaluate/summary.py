"""The plain-words summary (summary.md): the answer per deployed target first
(``evaluate.answer``), then per (data task, attack, eps) the range of each rate over the cells
of each relation, then the sections of ``summary_sections``.

Every number is a value of one row of transfer.csv or comparisons.csv; orderings are claimed
only from paired comparisons (``evaluate.answer``). The metrics are defined in
docs/METRICS.md; the short glossary at the top of the summary (``GLOSSARY``) is the summary's
own text for its readers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.answer import answer_lines, attack_comparison_lines
from cxrtransfer.evaluate.checklist import checklist_lines
from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE, ABOVE_NOISE_CI
from cxrtransfer.evaluate.relations import RELATIONS
from cxrtransfer.evaluate.summary_sections import (
    defence_lines,
    ensemble_lines,
    expert_lines,
    hardened_models,
    robust_lines,
    value_range,
)
from cxrtransfer.evaluate.tables import ID_COLUMNS, NA, markdown_table

# What the summary says it is about, by data source (any other source: DATA_OTHER).
DATA_LINES = {
    "synthetic": "**Data: the built-in synthetic dataset.** These are demonstration numbers that show "
    "the workflow runs end to end; they are NOT clinical results and say nothing about "
    "real chest X-ray classifiers.",
    "kaggle": "**Data: the NIH ChestX-ray14 images (Kaggle copy).** The numbers below come from "
    "this data and these models only.",
}
DATA_OTHER = "**Data: {}.** The numbers below come from this data only."
GLOSSARY = (
    "Transfer rate: among images whose source error the attack caused (the source was "
    "right on the clean image and wrong on the adversarial one; for cross-task sources: "
    "the source's decision flipped) and that the target classified correctly when clean, "
    "the fraction that also fool the target (white-box is close to 1 by construction). "
    "Fooling rate: fraction of all images the target gets wrong on the adversarial version. "
    "Flip rate: fraction of images whose decision the perturbation changes (the 'fooling "
    "rate' of the universal-perturbation literature). "
    "Noise: the fooling rate of the same perturbations spatially shuffled per image (same "
    "size, no adversarial structure); above noise = fooling rate - noise, with its paired "
    "CI (the same patients resampled for both); above / indist. / at or below noise counts "
    "a relation's cells by that CI. Lower adversarial AUROC = stronger attack. Relations "
    "are measured (architecture, training patients shared), see the README. The tables per "
    "attack show the lowest to the highest value over the (source, target) cells of each "
    "relation (never a mean); "
    "eps is in 1/255 units for L-inf attacks and an L2 norm in [0, 1] pixel units for L2 "
    "attacks."
)
# The columns of each relation table (their range over the relation's cells), in order.
RELATION_COLUMNS = (
    "transfer_rate",
    "fooling_rate",
    "flip_rate",
    "noise_fooling_rate",
    "fooling_rate_above_noise",
    "adv_auroc",
    "clean_auroc",
)


def summary_markdown(
    df: pd.DataFrame,
    models: dict,
    data_source: str,
    expert: dict | None = None,
    comparisons: pd.DataFrame | None = None,
    deployed: dict | None = None,
    checklist: pd.DataFrame | None = None,
) -> str:
    """The Markdown summary: the answer per deployed target (``deployed``: {target: data
    task}; with ``comparisons``, the paired comparisons of comparisons.csv, for orderings),
    the data and models, then per (data task, attack, eps) the range of each rate per relation
    (white-box, surrogate, cross-architecture, cross-task, ...) and the later sections.
    ``data_source`` ("synthetic" or "kaggle") is stated; for synthetic data the text says the
    numbers are a demonstration, not clinical results. ``expert`` ({task: expert column or
    None}, when the study has expert labels) adds the section comparing NLP and expert labels
    (``expert_lines``). ``checklist``: the evaluation checklist's rows (``evaluate.checklist``),
    its counts and every flag named (``checklist_lines``).
    """
    need = [*ID_COLUMNS, "transfer_rate", "fooling_rate", "adv_auroc", "clean_auroc"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise WorkflowError(f"Table lacks column(s) {', '.join(missing)} for the summary.")
    if "noise_fooling_rate" not in df.columns:
        df = df.assign(noise_fooling_rate=np.nan, fooling_rate_above_noise=np.nan)
    every = df[~df["attack"].astype(str).str.endswith(CONTROL_SUFFIX)]
    special = hardened_models(models)
    is_special = every["source"].isin(special) | every["target"].isin(special)
    real = every[~is_special]
    lines = ["# Adversarial transferability: summary", ""]
    lines += [DATA_LINES.get(data_source, DATA_OTHER.format(data_source)), ""]
    lines += answer_lines(real, comparisons, models, data_source, deployed)
    lines += _model_lines(df, models)
    lines += [GLOSSARY, ""]
    if is_special.any():
        lines += _hardened_note(special)
    for (task, attack, eps), g in real.groupby(["data_task", "attack", "eps"], sort=True):
        lines += _relation_table(task, attack, eps, g)
    lines += ensemble_lines(real)
    lines += attack_comparison_lines(comparisons)
    lines += defence_lines(every, models)
    lines += robust_lines(every, models)
    if expert:
        lines += expert_lines(real, expert)
    if checklist is not None:
        lines += checklist_lines(checklist)
    return "\n".join(lines).rstrip() + "\n"


def _model_lines(df: pd.DataFrame, models: dict) -> list[str]:
    """ "Models: name (arch, task task), ..." of the models in the table (none without facts)."""
    names = sorted(set(df["source"]) | set(df["target"]))
    if not models:
        return []
    desc = [
        f"{n} ({models[n].get('arch', '?')}, task {models[n].get('task', '?')})"
        for n in names
        if n in models
    ]
    return ["Models: " + ", ".join(desc) + ".", ""]


def _hardened_note(special: set) -> list[str]:
    """Why the defended and adversarially trained models are not in the tables per attack."""
    return [
        f"The tables per attack below leave out the cells of the defended and the "
        f"adversarially trained models ({', '.join(sorted(special))}): they have a section "
        "of their own at the end, so the tables per relation describe undefended models "
        "only.",
        "",
    ]


def noise_counts(r: pd.DataFrame) -> str:
    """How many of a relation's cells are above, indistinguishable from and at or below their
    noise control (by the paired CI of ``fooling_rate_above_noise``)."""
    if not set(ABOVE_NOISE_CI) <= set(r.columns):
        return NA
    lo = pd.to_numeric(r[ABOVE_NOISE_CI[0]], errors="coerce")
    hi = pd.to_numeric(r[ABOVE_NOISE_CI[1]], errors="coerce")
    d = pd.to_numeric(r[ABOVE_NOISE], errors="coerce")
    known = lo.notna() & hi.notna()
    if not known.any():
        return NA
    above = int((lo > 0).sum())
    below = int((known & ((hi < 0) | (d <= 0))).sum())
    return f"{above} / {int(known.sum()) - above - below} / {below}"


def _relation_table(task, attack, eps, g: pd.DataFrame) -> list[str]:
    """Section of one (data task, attack, eps): per relation the range of each rate over its
    cells and how many cells are above their noise control."""
    header = [
        "relation",
        "cells",
        "transfer rate",
        "fooling rate",
        "flip rate",
        "noise",
        "above noise",
        "above / indist. / at or below noise",
        "adv. AUROC",
        "clean AUROC",
    ]
    rows = []
    for rel in RELATIONS:
        r = g[g["relation"] == rel]
        if r.empty:
            continue
        vals = [value_range(r[k]) for k in RELATION_COLUMNS]
        vals.insert(RELATION_COLUMNS.index(ABOVE_NOISE) + 1, noise_counts(r))
        rows.append([rel, str(len(r)), *vals])
    title = f"## Data task {task}, attack {attack}, eps {float(eps):g}"
    return [title, "", *markdown_table(header, rows, "l" + "r" * 9), ""]
