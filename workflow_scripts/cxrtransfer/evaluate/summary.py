"""The plain-words summary (summary.md): per (data task, attack, eps) the mean metrics of each
relation and whether the expected ordering holds, then the sections of ``summary_sections``.

The metrics are defined in docs/METRICS.md; the short glossary at the top of the summary
(``GLOSSARY``) is the summary's own text for its readers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.relations import RELATIONS, SINGLE_MODEL_RELATIONS
from cxrtransfer.evaluate.summary_sections import (
    best_attack_lines,
    defence_lines,
    ensemble_lines,
    expert_lines,
    hardened_models,
    mean_finite,
    robust_lines,
)
from cxrtransfer.evaluate.tables import ID_COLUMNS, fmt

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
    "size, no adversarial structure); above noise = fooling rate - noise. Lower adversarial "
    "AUROC = stronger attack. Relations are measured (architecture, training patients "
    "shared), see the README. Means are over the (source, target) cells of each relation; "
    "eps is in 1/255 units for L-inf attacks and an L2 norm in [0, 1] pixel units for L2 "
    "attacks."
)
# The means per relation of each table of the summary, in column order.
RELATION_MEANS = (
    "transfer_rate",
    "fooling_rate",
    "flip_rate",
    "noise_fooling_rate",
    "fooling_rate_above_noise",
    "adv_auroc",
    "clean_auroc",
)


def summary_markdown(
    df: pd.DataFrame, models: dict, data_source: str, expert: dict | None = None
) -> str:
    """A short Markdown summary of headline findings per (data task, attack, eps).

    For each group: mean transfer rate, fooling rate and adversarial AUROC per relation
    (white-box, surrogate, cross-architecture, cross-task), and whether the expected ordering
    holds: white-box strongest (lowest adversarial AUROC, highest fooling rate), then surrogate,
    cross-architecture, cross-task. ``data_source`` ("synthetic" or "kaggle") is stated; for
    synthetic data the text says the numbers are a demonstration, not clinical results.
    ``expert`` ({task: expert column or None}, when the study has expert labels) adds the
    section comparing NLP and expert labels (``expert_lines``).
    """
    need = [*ID_COLUMNS, "transfer_rate", "fooling_rate", "adv_auroc", "clean_auroc"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise WorkflowError(f"Table lacks column(s) {', '.join(missing)} for the summary.")
    lines = ["# Adversarial transferability: summary", ""]
    lines += [DATA_LINES.get(data_source, DATA_OTHER.format(data_source)), ""]
    lines += _model_lines(df, models)
    lines += [GLOSSARY, ""]
    if "noise_fooling_rate" not in df.columns:
        df = df.assign(noise_fooling_rate=np.nan, fooling_rate_above_noise=np.nan)
    every = df[~df["attack"].astype(str).str.endswith(CONTROL_SUFFIX)]
    special = hardened_models(models)
    is_special = every["source"].isin(special) | every["target"].isin(special)
    real = every[~is_special]
    if is_special.any():
        lines += _hardened_note(special)
    for (task, attack, eps), g in real.groupby(["data_task", "attack", "eps"], sort=True):
        lines += _relation_table(task, attack, eps, g)
    lines += ensemble_lines(real)
    lines += best_attack_lines(real)
    lines += defence_lines(every, models)
    lines += robust_lines(every, models)
    if expert:
        lines += expert_lines(real, expert)
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
        "of their own at the end, so the means per relation describe undefended models "
        "only.",
        "",
    ]


def _relation_table(task, attack, eps, g: pd.DataFrame) -> list[str]:
    """Section of one (data task, attack, eps): the means per relation and the ordering."""
    lines = [f"## Data task {task}, attack {attack}, eps {float(eps):g}", ""]
    lines.append(
        "| relation | cells | transfer rate | fooling rate | flip rate | noise | above noise "
        "| adv. AUROC | clean AUROC |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    stats = {}
    for rel in RELATIONS:
        r = g[g["relation"] == rel]
        if r.empty:
            continue
        s = {k: mean_finite(r[k]) for k in RELATION_MEANS}
        stats[rel] = s
        lines.append(
            f"| {rel} | {len(r)} | {fmt(s['transfer_rate'])} | {fmt(s['fooling_rate'])} | "
            f"{fmt(s['flip_rate'])} | {fmt(s['noise_fooling_rate'])} | "
            f"{fmt(s['fooling_rate_above_noise'])} | "
            f"{fmt(s['adv_auroc'])} | {fmt(s['clean_auroc'])} |"
        )
    return lines + ["", _ordering_sentence(stats), ""]


def _ordering_sentence(stats: dict) -> str:
    """Plain words on whether attack strength follows white-box > surrogate > cross-architecture
    > cross-task, judged by mean adversarial AUROC (lower = stronger)."""
    # the expected ordering is of single models; ensembles are compared with their members
    # (ensemble_lines)
    auc = {
        r: s["adv_auroc"]
        for r, s in stats.items()
        if r in SINGLE_MODEL_RELATIONS and not math.isnan(s["adv_auroc"])
    }
    present = [r for r in RELATIONS if r in auc]
    if len(present) < 2:
        return (
            "Fewer than two relations have a defined adversarial AUROC here, so there is no "
            "ordering to check."
        )
    parts = []
    wb_ok = True
    if "white-box" in auc:
        others = {r: v for r, v in auc.items() if r != "white-box"}
        strongest = min(others, key=others.get)
        wb_ok = auc["white-box"] <= others[strongest]
        if wb_ok:
            parts.append(
                f"As expected, the white-box attack is strongest (mean adversarial AUROC "
                f"{fmt(auc['white-box'])} vs {fmt(others[strongest])} for {strongest})."
            )
        else:
            parts.append(
                f"Unexpectedly, the white-box attack is NOT the strongest: {strongest} sources "
                f"reach a lower mean adversarial AUROC ({fmt(others[strongest])}) than white-box "
                f"({fmt(auc['white-box'])})."
            )
    transfer = [r for r in present if r != "white-box"]
    inversions = [
        (a, b) for i, a in enumerate(transfer) for b in transfer[i + 1 :] if auc[a] > auc[b]
    ]
    if inversions:
        txt = "; ".join(
            f"{b} ({fmt(auc[b])}) is stronger than {a} ({fmt(auc[a])})" for a, b in inversions
        )
        parts.append(f"The expected ordering {' > '.join(transfer)} does not hold: {txt}.")
    elif len(transfer) >= 2:
        lead = "The transfer relations" if wb_ok else "Apart from that, the transfer relations"
        parts.append(f"{lead} follow the expected ordering ({' > '.join(transfer)}).")
    if wb_ok and not inversions and len(present) >= 2:
        parts.append("Overall the expected ordering holds.")
    return " ".join(parts)
