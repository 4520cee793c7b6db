"""The sections of the summary after the tables per relation: ensembles beside their members,
the defended targets, the adversarially trained models and the
expert labels (each a ``*_lines`` function returning Markdown lines, empty when it has nothing
to say), and the cell lookups they share. Metrics: docs/METRICS.md.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrtransfer.evaluate.relations import ENSEMBLE_RELATIONS, RELATIONS
from cxrtransfer.evaluate.tables import NA, fmt, markdown_table


def value_range(x: pd.Series) -> str:
    """The finite values of a column over a relation's cells: one value, or "lowest to highest"
    (two cells of the table, never a mean that could hide cells of opposite direction)."""
    v = pd.to_numeric(x, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return NA
    lo, hi = fmt(v.min()), fmt(v.max())
    return lo if lo == hi else f"{lo} to {hi}"


def find_cell(
    real: pd.DataFrame,
    source: str,
    target: str,
    attack: str,
    eps: float,
    data_task: str | None = None,
):
    r = real[
        (real["source"] == source)
        & (real["target"] == target)
        & (real["attack"] == attack)
        & (real["eps"].astype(float) == float(eps))
    ]
    if data_task is not None:
        r = r[r["data_task"] == data_task]
    return r.iloc[0] if len(r) else None


def target_clean_auroc(real: pd.DataFrame, target: str) -> float:
    """A target's clean AUROC on its task's test set (the same in every cell of the target
    on that data task: the first one's)."""
    r = real[(real["target"] == target) & (real["relation"] != "cross-task")]
    r = r if len(r) else real[real["target"] == target]
    return float(r["clean_auroc"].iloc[0]) if len(r) else float("nan")


def hardened_models(models: dict) -> set[str]:
    """Names of the defended (``defence``) and adversarially trained (``adversarial``) models
    among the recorded facts of the study's models."""
    return {n for n, f in models.items() if f.get("defence") or f.get("adversarial")}


def with_ci(row, key: str) -> str:
    if row is None:
        return "not run"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    ci = f" [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""
    return f"{fmt(row[key])}{ci}"


def _auroc_and_rate(cell) -> str:
    """A cell's adversarial AUROC with its fooling rate in brackets ("n/a": no such cell)."""
    if cell is None:
        return NA
    return f"{fmt(cell['adv_auroc'])} ({fmt(cell['fooling_rate'])})"


def ensemble_lines(real: pd.DataFrame) -> list[str]:
    """Each ensemble cell beside its members' own cells (same data task, attack, eps and
    target): the ensemble's fooling rate and adversarial AUROC with CIs and, per member, its
    relation to the target and the same numbers ("not run" where the grid has no such cell)."""
    if "member_relations" not in real.columns:
        return []
    ens = real[real["relation"].isin(ENSEMBLE_RELATIONS)]
    if ens.empty:
        return []
    lines = [
        "## Ensembles beside their members",
        "",
        "An ensemble's relation to a target is derived from its members' own relations, and its "
        "cells are never averaged with single-model cells. Each ensemble cell is shown with "
        "the cells of its members on the same target, attack and eps (fooling rate and "
        "adversarial AUROC with their CIs).",
        "",
    ]
    header = [
        "data task",
        "attack",
        "eps",
        "target",
        "source (relation)",
        "fooling rate",
        "adv. AUROC",
    ]
    rows = []
    keys = ["data_task", "attack", "eps", "source", "target"]
    for _, row in ens.sort_values(keys).iterrows():
        head = [row["data_task"], row["attack"], f"{float(row['eps']):g}", row["target"]]
        rows.append(
            [
                *head,
                f"**{row['source']}** ({row['relation']})",
                with_ci(row, "fooling_rate"),
                with_ci(row, "adv_auroc"),
            ]
        )
        for part in str(row["member_relations"]).split("; "):
            member, _, rel = part.partition(": ")
            cell = find_cell(
                real, member, row["target"], row["attack"], row["eps"], row["data_task"]
            )
            rows.append(
                [
                    *head,
                    f"member {member} ({rel})",
                    with_ci(cell, "fooling_rate"),
                    with_ci(cell, "adv_auroc"),
                ]
            )
    return lines + markdown_table(header, rows, "llrllll") + [""]


def defence_lines(real: pd.DataFrame, models: dict) -> list[str]:
    """Each defended target against the non-adaptive attack (the examples crafted on its
    undefended model) and the adaptive one (crafted through the defence: BPDA for JPEG and bit
    depth, the true gradient of the median filter, EOT for random noise), side by side with the
    undefended model under its white-box attack, per attack and eps where both sets exist."""
    rows = []
    for d, f in sorted(models.items()):
        base = f.get("defended_model")
        if not f.get("defence") or not base:
            continue
        for (attack, eps), g in real[real["source"] == base].groupby(["attack", "eps"]):
            plain = find_cell(g, base, base, attack, eps)
            non_adaptive = find_cell(g, base, d, attack, eps)
            adaptive = find_cell(real, d, d, attack, eps)
            if non_adaptive is None:
                continue
            rows.append((d, f["defence"], base, attack, float(eps), plain, non_adaptive, adaptive))
    if not rows:
        return []
    out = [
        "## Defended targets: the non-adaptive and the adaptive attack",
        "",
        "Adversarial AUROC (fooling rate) of each defended target under the examples crafted "
        "on its undefended model (non-adaptive: the attacker ignores the defence) and under "
        "the examples crafted through the defence itself (adaptive: BPDA, the identity's "
        "gradient, for JPEG and bit-depth reduction; the median filter's own gradient; EOT "
        "over the noise of a randomised defence). A defence that only looks strong against "
        "the non-adaptive attack masks gradients; the adaptive column is what it is worth. "
        "n/a: that set is not in the grid (add the defended model as a source).",
        "",
    ]
    header = [
        "defended target",
        "defence",
        "attack",
        "eps",
        "clean AUROC undefended / defended",
        "undefended, white-box",
        "defended, non-adaptive",
        "defended, adaptive",
    ]
    table, verdicts = [], []
    for d, defence, base, attack, eps, plain, non_adaptive, adaptive in rows:
        clean = f"{fmt(target_clean_auroc(real, base))} / {fmt(target_clean_auroc(real, d))}"
        table.append(
            [
                d,
                defence,
                attack,
                f"{eps:g}",
                clean,
                _auroc_and_rate(plain),
                _auroc_and_rate(non_adaptive),
                _auroc_and_rate(adaptive),
            ]
        )
        if adaptive is not None:
            gap = float(non_adaptive["adv_auroc"]) - float(adaptive["adv_auroc"])
            if math.isfinite(gap) and gap > 0.05:
                verdicts.append(
                    f"{d}, {attack} eps {eps:g}: the adaptive attack lowers the defended "
                    f"AUROC by {gap:.3f} more than the non-adaptive one, so the non-adaptive "
                    "number overstates the defence."
                )
    out += [*markdown_table(header, table, "lllrllll"), ""]
    if verdicts:
        out += [" ".join(verdicts), ""]
    return out


def robust_lines(real: pd.DataFrame, models: dict) -> list[str]:
    """Each adversarially trained model: its clean AUROC against the model it was fine-tuned
    from (the cost) and both models' white-box adversarial AUROC at every eps (the gain)."""
    rows = []
    for m, f in sorted(models.items()):
        if not f.get("adversarial") or f.get("defence"):
            continue
        base = f.get("init_from")
        for (attack, eps), g in real[real["source"] == m].groupby(["attack", "eps"]):
            own = find_cell(g, m, m, attack, eps)
            if own is None:
                continue
            ref = find_cell(real, base, base, attack, eps) if base else None
            rows.append((m, f, base, attack, float(eps), own, ref))
    if not rows:
        return []
    out = [
        "## Adversarially trained models",
        "",
        "Clean AUROC on the task's test set and white-box adversarial AUROC (fooling rate) of "
        "each adversarially trained model, beside the model it was fine-tuned from "
        "(init_from). Robustness is claimed only at the eps it was trained for and below; "
        "larger eps shows how fast it breaks.",
        "",
    ]
    header = [
        "model",
        "trained at eps",
        "fine-tuned from",
        "clean AUROC (from -> trained)",
        "attack",
        "eps",
        "white-box adv. AUROC, from",
        "white-box adv. AUROC, trained",
    ]
    table = []
    for m, f, base, attack, eps, own, ref in rows:
        clean = f"{fmt(target_clean_auroc(real, base)) if base else NA} -> {fmt(target_clean_auroc(real, m))}"
        table.append(
            [
                m,
                f"{float(f.get('adversarial_eps', float('nan'))):g}",
                base or "-",
                clean,
                attack,
                f"{eps:g}",
                _auroc_and_rate(ref),
                _auroc_and_rate(own),
            ]
        )
    return out + markdown_table(header, table, "lrlllrll") + [""]


def expert_lines(real: pd.DataFrame, expert: dict) -> list[str]:
    """Section "Expert labels": per data task, how many test images have an expert label and,
    per attack, eps and relation, the mean adversarial AUROC and fooling rate on those images
    with the NLP label and with the expert label as truth (same images, same thresholds)."""
    lines = [
        "## Expert labels",
        "",
        "On the test images that have a radiologist-adjudicated label (data.expert_labels), "
        "the same cells scored with the NLP label (the NIH label of the image) and with the "
        "expert label as truth; thresholds stay the models' validation thresholds. Each value "
        "is the lowest to the highest over the (source, target) cells of a relation (never a "
        "mean).",
        "",
    ]
    for task in sorted(expert):
        column = expert[task]
        if not column:
            lines += [
                f"Data task {task}: its finding has no expert-label column (the expert labels "
                "cover Fracture, Pneumothorax, Airspace opacity, Nodule or mass): not evaluated "
                "against expert labels.",
                "",
            ]
            continue
        g = real[real["data_task"] == task]
        if g.empty or "n_expert" not in g.columns:
            lines += [f"Data task {task}: no evaluated cells.", ""]
            continue
        n = pd.to_numeric(g["n_expert"], errors="coerce")
        n_img = pd.to_numeric(g["n_images"], errors="coerce")
        lines += [
            f"Data task {task} (expert column '{column}'): {int(n.max())} of "
            f"{int(n_img.max())} test images have an expert label.",
            "",
        ]
        if not (n > 0).any():
            continue
        header = [
            "attack",
            "eps",
            "relation",
            "cells",
            "adv. AUROC (NLP)",
            "adv. AUROC (expert)",
            "fooling rate (NLP)",
            "fooling rate (expert)",
        ]
        table = []
        for (attack, eps), ge in g.groupby(["attack", "eps"], sort=True):
            for rel in RELATIONS:
                r = ge[ge["relation"] == rel]
                if r.empty:
                    continue
                vals = [
                    value_range(r[k])
                    for k in (
                        "expert_nlp_adv_auroc",
                        "expert_adv_auroc",
                        "expert_nlp_fooling_rate",
                        "expert_fooling_rate",
                    )
                ]
                table.append([attack, f"{float(eps):g}", rel, str(len(r)), *vals])
        lines += markdown_table(header, table, "lrlrrrrr")
        notes = sorted({x for x in g.get("expert_note", pd.Series(dtype=str)).dropna() if x})
        if notes:
            lines += ["", "Notes: " + "; ".join(notes[:3]) + "."]
        lines.append("")
    return lines
