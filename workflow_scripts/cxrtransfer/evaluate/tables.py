"""Tables from evaluated cells: the long table, source x target matrices, a plain-words summary.

No optional dependencies: the Markdown and LaTeX writers are small and local (pandas'
``to_markdown`` needs tabulate and ``Styler.to_latex`` needs jinja2, which are not runtime
requirements).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.files import atomic_path
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.relations import ENSEMBLE_RELATIONS, RELATIONS, SINGLE_MODEL_RELATIONS
from cxrtransfer.metrics.measures import cell_columns

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
    ``fooling_rate_above_noise`` = fooling_rate - noise_fooling_rate (what the attack does
    beyond random noise of the same size). Control rows keep their own metrics."""
    keys = ["source", "target", "data_task", "eps"]
    is_control = df["attack"].astype(str).str.endswith(CONTROL_SUFFIX)
    control = df[is_control].assign(
        attack=lambda d: d["attack"].astype(str).str.removesuffix(CONTROL_SUFFIX)
    )[[*keys, "attack", "fooling_rate", "adv_auroc"]]
    control = control.rename(
        columns={"fooling_rate": "noise_fooling_rate", "adv_auroc": "noise_adv_auroc"}
    )
    out = df.merge(control, on=[*keys, "attack"], how="left")
    out["fooling_rate_above_noise"] = out["fooling_rate"] - out["noise_fooling_rate"]
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


def _fmt(x, digits: int = 3) -> str:
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return NA if math.isnan(xf) else f"{xf:.{digits}f}"


def _md_escape(s) -> str:
    return str(s).replace("|", "\\|")


def matrix_markdown(m: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of a matrix (row label column first, numbers right-aligned)."""
    corner = f"{m.index.name or ''} \\ {m.columns.name or ''}".strip()
    header = [corner] + [_md_escape(c) for c in m.columns]
    rows = [
        [_md_escape(i)] + [_fmt(v, digits) for v in r]
        for i, r in zip(m.index, m.to_numpy(), strict=True)
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * m.shape[1]) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(s) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(s))


def matrix_latex(m: pd.DataFrame, digits: int = 3) -> str:
    """A LaTeX ``tabular`` of a matrix (no packages needed)."""
    corner = f"{tex_escape(m.index.name or '')} $\\backslash$ {tex_escape(m.columns.name or '')}"
    lines = [
        "\\begin{tabular}{l" + "r" * m.shape[1] + "}",
        "\\hline",
        " & ".join([corner] + [tex_escape(c) for c in m.columns]) + " \\\\",
        "\\hline",
    ]
    for i, r in zip(m.index, m.to_numpy(), strict=True):
        lines.append(" & ".join([tex_escape(i)] + [_fmt(v, digits) for v in r]) + " \\\\")
    lines += ["\\hline", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


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


# ----------------------------------------------------------------------------------------------
# Plain-words summary
# ----------------------------------------------------------------------------------------------


def _mean(x: pd.Series) -> float:
    x = pd.to_numeric(x, errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


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
    if data_source == "synthetic":
        lines += [
            "**Data: the built-in synthetic dataset.** These are demonstration numbers that show "
            "the workflow runs end to end; they are NOT clinical results and say nothing about "
            "real chest X-ray classifiers.",
            "",
        ]
    elif data_source == "kaggle":
        lines += [
            "**Data: the NIH ChestX-ray14 images (Kaggle copy).** The numbers below come from "
            "this data and these models only.",
            "",
        ]
    else:
        lines += [f"**Data: {data_source}.** The numbers below come from this data only.", ""]
    names = sorted(set(df["source"]) | set(df["target"]))
    if models:
        desc = [
            f"{n} ({models[n].get('arch', '?')}, task {models[n].get('task', '?')})"
            for n in names
            if n in models
        ]
        lines += ["Models: " + ", ".join(desc) + ".", ""]
    lines += [
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
        "attacks.",
        "",
    ]
    if "noise_fooling_rate" not in df.columns:
        df = df.assign(noise_fooling_rate=np.nan, fooling_rate_above_noise=np.nan)
    every = df[~df["attack"].astype(str).str.endswith(CONTROL_SUFFIX)]
    special = hardened_models(models)
    is_special = every["source"].isin(special) | every["target"].isin(special)
    real = every[~is_special]
    if is_special.any():
        lines += [
            f"The tables per attack below leave out the cells of the defended and the "
            f"adversarially trained models ({', '.join(sorted(special))}): they have a section "
            "of their own at the end, so the means per relation describe undefended models "
            "only.",
            "",
        ]
    for (task, attack, eps), g in real.groupby(["data_task", "attack", "eps"], sort=True):
        lines.append(f"## Data task {task}, attack {attack}, eps {float(eps):g}")
        lines.append("")
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
            s = {
                k: _mean(r[k])
                for k in (
                    "transfer_rate",
                    "fooling_rate",
                    "flip_rate",
                    "noise_fooling_rate",
                    "fooling_rate_above_noise",
                    "adv_auroc",
                    "clean_auroc",
                )
            }
            stats[rel] = s
            lines.append(
                f"| {rel} | {len(r)} | {_fmt(s['transfer_rate'])} | {_fmt(s['fooling_rate'])} | "
                f"{_fmt(s['flip_rate'])} | {_fmt(s['noise_fooling_rate'])} | {_fmt(s['fooling_rate_above_noise'])} | "
                f"{_fmt(s['adv_auroc'])} | {_fmt(s['clean_auroc'])} |"
            )
        lines.append("")
        lines.append(_ordering_sentence(stats))
        lines.append("")
    lines += ensemble_lines(real)
    lines += best_attack_lines(real)
    lines += defence_lines(every, models)
    lines += robust_lines(every, models)
    if expert:
        lines += expert_lines(real, expert)
    return "\n".join(lines).rstrip() + "\n"


def expert_lines(real: pd.DataFrame, expert: dict) -> list[str]:
    """Section "Expert labels": per data task, how many test images have an expert label and,
    per attack, eps and relation, the mean adversarial AUROC and fooling rate on those images
    with the NLP label and with the expert label as truth (same images, same thresholds)."""
    lines = [
        "## Expert labels",
        "",
        "On the test images that have a radiologist-adjudicated label (data.expert_labels), "
        "the same cells scored with the NLP label (the NIH label of the image) and with the "
        "expert label as truth; thresholds stay the models' validation thresholds. Means over "
        "the (source, target) cells of each relation.",
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
        lines += [
            "| attack | eps | relation | cells | adv. AUROC (NLP) | adv. AUROC (expert) "
            "| fooling rate (NLP) | fooling rate (expert) |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for (attack, eps), ge in g.groupby(["attack", "eps"], sort=True):
            for rel in RELATIONS:
                r = ge[ge["relation"] == rel]
                if r.empty:
                    continue
                vals = [
                    _fmt(_mean(r[k]))
                    for k in (
                        "expert_nlp_adv_auroc",
                        "expert_adv_auroc",
                        "expert_nlp_fooling_rate",
                        "expert_fooling_rate",
                    )
                ]
                lines.append(
                    f"| {attack} | {float(eps):g} | {rel} | {len(r)} | " + " | ".join(vals) + " |"
                )
        notes = sorted({x for x in g.get("expert_note", pd.Series(dtype=str)).dropna() if x})
        if notes:
            lines += ["", "Notes: " + "; ".join(notes[:3]) + "."]
        lines.append("")
    return lines


def hardened_models(models: dict) -> set[str]:
    """Names of the defended (``defence``) and adversarially trained (``adversarial``) models
    among the recorded facts of the study's models."""
    return {n for n, f in models.items() if f.get("defence") or f.get("adversarial")}


def _cell(
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


def _clean_auroc(real: pd.DataFrame, target: str) -> float:
    """A target's clean AUROC on its task's test set (the same in every cell of the target
    on that data task: the first one's)."""
    r = real[(real["target"] == target) & (real["relation"] != "cross-task")]
    r = r if len(r) else real[real["target"] == target]
    return float(r["clean_auroc"].iloc[0]) if len(r) else float("nan")


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
            plain = _cell(g, base, base, attack, eps)
            non_adaptive = _cell(g, base, d, attack, eps)
            adaptive = _cell(real, d, d, attack, eps)
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
        "| defended target | defence | attack | eps | clean AUROC undefended / defended | "
        "undefended, white-box | defended, non-adaptive | defended, adaptive |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- |",
    ]

    def cell(c):
        if c is None:
            return NA
        return f"{_fmt(c['adv_auroc'])} ({_fmt(c['fooling_rate'])})"

    verdicts = []
    for d, defence, base, attack, eps, plain, non_adaptive, adaptive in rows:
        clean = f"{_fmt(_clean_auroc(real, base))} / {_fmt(_clean_auroc(real, d))}"
        out.append(
            f"| {d} | {defence} | {attack} | {eps:g} | {clean} | {cell(plain)} | "
            f"{cell(non_adaptive)} | {cell(adaptive)} |"
        )
        if adaptive is not None:
            gap = float(non_adaptive["adv_auroc"]) - float(adaptive["adv_auroc"])
            if math.isfinite(gap) and gap > 0.05:
                verdicts.append(
                    f"{d}, {attack} eps {eps:g}: the adaptive attack lowers the defended "
                    f"AUROC by {gap:.3f} more than the non-adaptive one, so the non-adaptive "
                    "number overstates the defence."
                )
    out.append("")
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
            own = _cell(g, m, m, attack, eps)
            if own is None:
                continue
            ref = _cell(real, base, base, attack, eps) if base else None
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
        "| model | trained at eps | fine-tuned from | clean AUROC (from -> trained) | attack | eps "
        "| white-box adv. AUROC, from | white-box adv. AUROC, trained |",
        "| --- | ---: | --- | --- | --- | ---: | --- | --- |",
    ]
    for m, f, base, attack, eps, own, ref in rows:
        clean = f"{_fmt(_clean_auroc(real, base)) if base else NA} -> {_fmt(_clean_auroc(real, m))}"
        ref_txt = NA if ref is None else f"{_fmt(ref['adv_auroc'])} ({_fmt(ref['fooling_rate'])})"
        out.append(
            f"| {m} | {float(f.get('adversarial_eps', float('nan'))):g} | {base or '-'} | {clean} "
            f"| {attack} | {eps:g} | {ref_txt} | {_fmt(own['adv_auroc'])} "
            f"({_fmt(own['fooling_rate'])}) |"
        )
    out.append("")
    return out


def _with_ci(row, key: str) -> str:
    if row is None:
        return "not run"
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    ci = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else ""
    return f"{_fmt(row[key])}{ci}"


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
        "| data task | attack | eps | target | source (relation) | fooling rate | adv. AUROC |",
        "| --- | --- | ---: | --- | --- | --- | --- |",
    ]
    keys = ["data_task", "attack", "eps", "source", "target"]
    for _, row in ens.sort_values(keys).iterrows():
        head = f"| {row['data_task']} | {row['attack']} | {float(row['eps']):g} | {row['target']} "
        lines.append(
            f"{head}| **{row['source']}** ({row['relation']}) | "
            f"{_with_ci(row, 'fooling_rate')} | {_with_ci(row, 'adv_auroc')} |"
        )
        for part in str(row["member_relations"]).split("; "):
            member, _, rel = part.partition(": ")
            cell = _cell(real, member, row["target"], row["attack"], row["eps"], row["data_task"])
            lines.append(
                f"{head}| member {member} ({rel}) | {_with_ci(cell, 'fooling_rate')} | "
                f"{_with_ci(cell, 'adv_auroc')} |"
            )
    return lines + [""]


def best_attack_lines(real: pd.DataFrame) -> list[str]:
    """Which attack transferred best to each target relation: per (data task, relation,
    eps) with more than one attack, the attack with the highest mean fooling rate over its
    cells (ties: every tied attack), with the runner-up for comparison."""
    rows = []
    for (task, rel, eps), g in real.groupby(["data_task", "relation", "eps"], sort=True):
        means = {a: _mean(r["fooling_rate"]) for a, r in g.groupby("attack", sort=True)}
        means = {a: v for a, v in means.items() if not math.isnan(v)}
        if len(means) < 2:
            continue
        ranked = sorted(means.items(), key=lambda kv: -kv[1])
        top = [a for a, v in ranked if v == ranked[0][1]]
        rest = [(a, v) for a, v in ranked if a not in top]
        runner = f"{rest[0][0]} ({_fmt(rest[0][1])})" if rest else "-"
        best = f"{', '.join(top)} ({_fmt(ranked[0][1])})"
        rows.append((task, rel, float(eps), best, runner))
    if not rows:
        return []
    order = {r: i for i, r in enumerate(RELATIONS)}
    rows.sort(key=lambda r: (r[0], order.get(r[1], len(order)), r[2]))
    return [
        "## Which attack transferred best",
        "",
        "Per data task, target relation and eps with more than one attack: the attack with the "
        "highest mean fooling rate over the relation's cells, and the runner-up.",
        "",
        "| data task | relation | eps | best attack (mean fooling rate) | runner-up |",
        "| --- | --- | ---: | --- | --- |",
        *[f"| {t} | {r} | {e:g} | {b} | {n} |" for t, r, e, b, n in rows],
        "",
    ]


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
                f"{_fmt(auc['white-box'])} vs {_fmt(others[strongest])} for {strongest})."
            )
        else:
            parts.append(
                f"Unexpectedly, the white-box attack is NOT the strongest: {strongest} sources "
                f"reach a lower mean adversarial AUROC ({_fmt(others[strongest])}) than white-box "
                f"({_fmt(auc['white-box'])})."
            )
    transfer = [r for r in present if r != "white-box"]
    inversions = [
        (a, b) for i, a in enumerate(transfer) for b in transfer[i + 1 :] if auc[a] > auc[b]
    ]
    if inversions:
        txt = "; ".join(
            f"{b} ({_fmt(auc[b])}) is stronger than {a} ({_fmt(auc[a])})" for a, b in inversions
        )
        parts.append(f"The expected ordering {' > '.join(transfer)} does not hold: {txt}.")
    elif len(transfer) >= 2:
        lead = "The transfer relations" if wb_ok else "Apart from that, the transfer relations"
        parts.append(f"{lead} follow the expected ordering ({' > '.join(transfer)}).")
    if wb_ok and not inversions and len(present) >= 2:
        parts.append("Overall the expected ordering holds.")
    return " ".join(parts)
