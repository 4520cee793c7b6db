"""The answer first: per deployed target, a short paragraph in plain words (the opening of
summary.md). Every number it prints is a value of one row of transfer.csv or of comparisons.csv
(formatted by ``tables.fmt``); an ordering is stated only where the paired patient-bootstrap CI
of the difference excludes 0 (``metrics.paired.excludes_zero``), otherwise the two are called
indistinguishable at this sample size. Definitions: docs/METRICS.md.
"""

from __future__ import annotations

import math

import pandas as pd

from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE, ABOVE_NOISE_CI
from cxrtransfer.evaluate.relations import ENSEMBLE_RELATIONS, RELATIONS
from cxrtransfer.evaluate.summary_sections import find_cell, with_ci
from cxrtransfer.evaluate.tables import fmt, markdown_table
from cxrtransfer.metrics.paired import excludes_zero

INDISTINGUISHABLE = "indistinguishable at this sample size"
# The relations a reader expects to see, by family (a family is present when any of its
# relations has a cell of the deployed target).
FAMILIES = {
    "white-box": ("white-box",),
    "surrogate": tuple(r for r in RELATIONS if r.endswith("surrogate")),
    "cross-architecture": tuple(r for r in RELATIONS if r.endswith("cross-architecture")),
    "cross-task": ("cross-task",),
}
TRANSFER_RELATIONS = tuple(r for r in RELATIONS if r not in ("white-box",))


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def noise_verdict(row) -> str:
    """Whether a cell's fooling rate is distinguishable from its noise control, with the paired
    CI of the difference (``fooling_rate_above_noise``)."""
    d = row.get(ABOVE_NOISE)
    if not _finite(d):
        return "no noise control to compare with"
    lo, hi = (row.get(c) for c in ABOVE_NOISE_CI)
    ci = f" [{fmt(lo)}, {fmt(hi)}]" if _finite(lo) and _finite(hi) else " (no paired CI)"
    diff = f"fooling rate above noise {fmt(d)}{ci}"
    if not (_finite(lo) and _finite(hi)):
        verdict = "at or below its noise control" if float(d) <= 0 else "not tested against noise"
        return f"{diff}: {verdict}"
    if float(lo) > 0:
        return f"{diff}: distinguishable from noise"
    if float(hi) < 0:
        return f"{diff}: below its noise control"
    if float(d) <= 0:
        return f"{diff}: at or below its noise control"
    return f"{diff}: {INDISTINGUISHABLE} from its noise control"


def find_comparison(comp: pd.DataFrame | None, target, eps, one: tuple, other: tuple):
    """The comparisons row of two sets ((source, attack) each) on ``target`` at ``eps``, in
    either order, or None."""
    if comp is None or comp.empty:
        return None
    at = comp[(comp["target"] == target) & (comp["eps"].astype(float) == float(eps))]
    for (sa, aa), (sb, ab) in ((one, other), (other, one)):
        r = at[
            (at["source_a"] == sa)
            & (at["attack_a"] == aa)
            & (at["source_b"] == sb)
            & (at["attack_b"] == ab)
        ]
        if len(r):
            return r.iloc[0]
    return None


def comparison_text(row, rate: str = "fooling_rate") -> str:
    """ "A minus B: d [lo, hi]: A <verb> more / B ... / indistinguishable" of a comparisons row."""
    a = f"{row['source_a']} ({row['attack_a']})"
    b = f"{row['source_b']} ({row['attack_b']})"
    d = row[f"{rate}_difference"]
    lo, hi = row[f"{rate}_difference_ci_low"], row[f"{rate}_difference_ci_high"]
    head = f"{rate.replace('_', ' ')} of {a} minus {b}: {fmt(d)} [{fmt(lo)}, {fmt(hi)}]"
    if not excludes_zero(lo, hi):
        return f"{head}, {INDISTINGUISHABLE}"
    more, less = (a, b) if float(d) > 0 else (b, a)
    return f"{head}, so {more} fools the target more than {less}"


def _label(row) -> str:
    return f"{row['source']} ({row['attack']})"


def _strongest(cells: pd.DataFrame):
    """The cell with the highest fooling rate (None when no rate is defined)."""
    fr = pd.to_numeric(cells["fooling_rate"], errors="coerce")
    if fr.notna().sum() == 0:
        return None
    return cells.loc[fr.idxmax()]


def clean_sentence(rows: pd.DataFrame) -> str:
    r = rows.iloc[0]
    return (
        f"Clean AUROC {with_ci(r, 'clean_auroc')} on {int(r['n_images'])} test images of "
        f"{int(r['n_patients'])} patients."
    )


def white_box_sentence(rows: pd.DataFrame) -> str:
    """The white-box cells at the largest eps: adversarial AUROC and fooling rate."""
    wb = rows[rows["relation"] == "white-box"]
    if wb.empty:
        return "No white-box cell (the deployed target is not attacked as its own source)."
    top = wb["eps"].astype(float).max()
    parts = [
        f"{r['attack']}: adversarial AUROC {with_ci(r, 'adv_auroc')}, fooling rate "
        f"{with_ci(r, 'fooling_rate')}"
        for _, r in wb[wb["eps"].astype(float) == top].sort_values("attack").iterrows()
    ]
    return f"White-box at eps {top:g}: " + "; ".join(parts) + "."


def relation_sentence(rel: str, cells: pd.DataFrame, comp, target) -> str:
    """One relation at its largest eps: its strongest cell with rates, CIs and noise verdict,
    the other cells' noise verdicts (shown, never averaged) and the strongest against the
    runner-up where the two are a matched pair."""
    top = cells["eps"].astype(float).max()
    at = cells[cells["eps"].astype(float) == top].sort_values(["source", "attack"])
    best = _strongest(at)
    if best is None:
        return f"{rel} (eps {top:g}): no defined fooling rate."
    text = (
        f"{rel} (eps {top:g}, {len(at)} cell{'s' if len(at) > 1 else ''}): strongest "
        f"{_label(best)}, transfer rate {with_ci(best, 'transfer_rate')}, fooling rate "
        f"{with_ci(best, 'fooling_rate')} (noise {fmt(best.get('noise_fooling_rate'))}), "
        f"{noise_verdict(best)}."
    )
    others = at.drop(index=best.name)
    if others.empty:
        return text
    shown = "; ".join(f"{_label(r)}: {noise_verdict(r)}" for _, r in others.iterrows())
    text += f" Its other cells: {shown}."
    runner = _strongest(others)
    if runner is not None:
        pair = find_comparison(comp, target, top, _key(best), _key(runner))
        if pair is None:
            text += f" Against {_label(runner)}: no paired comparison, no ordering claimed."
        else:
            text += f" Against the runner-up: {comparison_text(pair)}."
    return text


def _key(row) -> tuple:
    return (row["source"], row["attack"])


def _ordering_group(rows: pd.DataFrame, transfer: pd.DataFrame):
    """The (attack, eps) whose cells span the most relations (white-box included; ties: the
    larger eps, then the stronger transfer cell), and those cells; the relations can only be
    ordered on cells of one attack and eps."""
    cells = pd.concat([rows[rows["relation"] == "white-box"], transfer])
    best, best_key = None, None
    for (attack, eps), g in transfer.groupby(["attack", "eps"], sort=True):
        g = cells[(cells["attack"] == attack) & (cells["eps"] == eps)]
        key = (g["relation"].nunique(), float(eps), float(g["fooling_rate"].max()))
        if best_key is None or key > best_key:
            best, best_key = (attack, eps, g), key
    return best


def ordering_sentence(rows: pd.DataFrame, comp, target) -> str:
    """Relations against each other on matched cells: at the attack and eps whose cells span
    the most relations (``_ordering_group``), each single-model relation's strongest source
    (white-box included), neighbours in the expected order compared by the paired CI of their
    difference."""
    transfer = rows[rows["relation"].isin(TRANSFER_RELATIONS)]
    transfer = transfer[~transfer["relation"].isin(ENSEMBLE_RELATIONS)]
    if not len(transfer):
        return "No transfer cell: nothing to order."
    attack, eps, same = _ordering_group(rows, transfer)
    chosen = [
        (rel, _strongest(same[same["relation"] == rel]))
        for rel in ("white-box", *TRANSFER_RELATIONS)
        if (same["relation"] == rel).any()
    ]
    chosen = [(rel, r) for rel, r in chosen if r is not None]
    where = f"{attack} at eps {float(eps):g}"
    if len(chosen) < 2:
        return f"Only one relation has cells with {where}: too few for an ordering."
    parts = []
    for (rel_a, a), (rel_b, b) in zip(chosen, chosen[1:], strict=False):
        pair = find_comparison(comp, target, eps, _key(a), _key(b))
        if pair is None:
            parts.append(f"{rel_a} against {rel_b}: no paired comparison, no ordering claimed")
        else:
            parts.append(f"{rel_a} against {rel_b}: {comparison_text(pair)}")
    return f"Relations on matched cells ({where}): " + "; ".join(parts) + "."


def ensemble_sentences(rows: pd.DataFrame, comp, target) -> list[str]:
    """Each ensemble cell against its best member (the member with the highest fooling rate
    under the same attack and eps), by their paired comparison."""
    out = []
    ens = rows[rows["relation"].isin(ENSEMBLE_RELATIONS)]
    for _, e in ens.sort_values(["source", "attack", "eps"]).iterrows():
        members = [p.partition(": ")[0] for p in str(e.get("member_relations") or "").split("; ")]
        cells = [find_cell(rows, m, target, e["attack"], e["eps"]) for m in members if m]
        cells = pd.DataFrame([c for c in cells if c is not None])
        best = _strongest(cells) if len(cells) else None
        if best is None:
            out.append(f"Ensemble {_label(e)}: no member cell to compare with.")
            continue
        pair = find_comparison(comp, target, e["eps"], _key(e), _key(best))
        verdict = comparison_text(pair) if pair is not None else "no paired comparison"
        out.append(
            f"Ensemble {e['source']} against its best member {best['source']} "
            f"({e['attack']}, eps {float(e['eps']):g}): {verdict}."
        )
    return out


NO_DIFFERENCE = "no difference shown"


def robust_twins(models: dict) -> list[tuple[str, str]]:
    """(robust surrogate, its standard twin) pairs: a model with adversarial training
    (``adversarial`` in its facts, not a defended model) and its base (``robust_base``, else
    ``init_from``) when the base has the same architecture and is not adversarially trained."""
    out = []
    for m, f in sorted(models.items()):
        if not f.get("adversarial") or f.get("defence"):
            continue
        twin = f.get("robust_base") or f.get("init_from")
        t = models.get(twin) if twin else None
        if t and not t.get("adversarial") and t.get("arch") == f.get("arch"):
            out.append((m, twin))
    return out


def robust_surrogate_sentences(comp, models: dict, target) -> list[str]:
    """Each robust surrogate against its standard twin of the same architecture (Springer et
    al. 2021) on ``target``: every "same attack" comparison of the two (same attack, eps and
    images), as stored (A minus B) with its paired CI; an ordering only where the CI excludes
    0, otherwise "no difference shown". A pair whose sources appear without a comparison of
    the two is said so."""
    out = []
    at = comp[(comp["target"] == target) & (comp["kind"] == "same attack")] if _has(comp) else None
    for robust, twin in robust_twins(models):
        if robust == target or twin == target:
            continue
        head = (
            f"Robust surrogate {robust} (adversarially trained, eps "
            f"{_eps(models[robust])}) against its standard twin {twin} (same architecture)"
        )
        pairs = _pair_rows(at, robust, twin)
        if not pairs:
            sources = set() if at is None else set(at["source_a"]) | set(at["source_b"])
            if {robust, twin} & sources:
                out.append(
                    f"{head}: no paired comparison (not both sources of one attack and eps)."
                )
            continue
        for r in pairs:
            d = r["fooling_rate_difference"]
            lo, hi = r["fooling_rate_difference_ci_low"], r["fooling_rate_difference_ci_high"]
            diff = (
                f"fooling rate of {r['source_a']} minus {r['source_b']}: {fmt(d)} "
                f"[{fmt(lo)}, {fmt(hi)}]"
            )
            if excludes_zero(lo, hi):
                more = (float(d) > 0) == (r["source_a"] == robust)
                verdict = (
                    f"the robust surrogate's examples fool the target "
                    f"{'more' if more else 'less'} than its standard twin's"
                )
            else:
                verdict = NO_DIFFERENCE
            out.append(f"{head}, {r['attack_a']} at eps {float(r['eps']):g}: {diff}, {verdict}.")
    return out


def _has(comp) -> bool:
    return comp is not None and not comp.empty


def _eps(facts: dict) -> str:
    try:
        return f"{float(facts.get('adversarial_eps')):g}"
    except (TypeError, ValueError):
        return "?"


def _pair_rows(at, one, other) -> list:
    """The comparison rows of sources ``one`` and ``other`` (either order), by eps and attack."""
    if at is None:
        return []
    both = at[
        ((at["source_a"] == one) & (at["source_b"] == other))
        | ((at["source_a"] == other) & (at["source_b"] == one))
    ]
    both = both[both["attack_a"] == both["attack_b"]]
    return [r for _, r in both.sort_values(["eps", "attack_a"]).iterrows()]


def missing_sentence(rows: pd.DataFrame) -> str:
    present = set(rows["relation"])
    missing = [f for f, rels in FAMILIES.items() if not present & set(rels)]
    if not missing:
        return ""
    return f"No cells of: {', '.join(missing)} (not in this grid, or not measured so)."


def regime_sentence(rows: pd.DataFrame, models: dict, data_source: str) -> str:
    """What the numbers describe: the data, how the models started, how many test images."""
    names = sorted(set(rows["source"]) | set(rows["target"]))
    # an ensemble's fact joins its members' with "+" (e.g. "none+none"): each member counts
    pretrained = {
        p for n in names if n in models for p in str(models[n].get("pretrained")).split("+")
    }
    start = (
        "trained from scratch"
        if pretrained <= {"None", "none", "False", ""}
        else "initialised from pretrained weights"
    )
    n = int(pd.to_numeric(rows["n_images"], errors="coerce").max())
    if data_source == "synthetic":
        return (
            f"Regime: a demonstration, models {start} on a few hundred drawn synthetic "
            f"images and tested on {n}; not clinical results."
        )
    return f"Regime: {data_source} images, models {start}, {n} test images of the data task."


ANSWER_INTRO = (
    "Per deployed target: do attacks crafted on other models fool it, and by how much more "
    "than noise (the same perturbations shuffled)? Rates with 95% patient-bootstrap CIs in "
    "brackets; an ordering is claimed only where the paired CI of the difference (same "
    "images, same patients resampled) excludes 0. Strongest = the cell with the highest "
    "fooling rate at the relation's largest eps; whether it beats the runner-up is said by "
    "their paired comparison."
)


def target_answer(target: str, task: str, real: pd.DataFrame, comp, models, data_source):
    """The lines of one deployed target: a lead sentence, then one bullet per claim."""
    rows = real[(real["target"] == target) & (real["data_task"] == task)]
    head = f"**{target}** (deployed for data task {task})"
    if rows.empty:
        return [f"{head}: no evaluated cells, so no claim.", ""]
    lines = [f"{head}. {clean_sentence(rows)} {white_box_sentence(rows)}", ""]
    bullets = [
        relation_sentence(rel, rows[rows["relation"] == rel], comp, target)
        for rel in TRANSFER_RELATIONS
        if (rows["relation"] == rel).any()
    ]
    if not bullets:
        bullets.append("No transfer cell: too few cells for any claim about transfer.")
    else:
        bullets.append(ordering_sentence(rows, comp, target))
    bullets += ensemble_sentences(rows, comp, target)
    bullets += robust_surrogate_sentences(comp, models, target)
    bullets += [s for s in (missing_sentence(rows),) if s]
    bullets.append(regime_sentence(rows, models, data_source))
    return lines + [f"- {b}" for b in bullets] + [""]


def answer_lines(real: pd.DataFrame, comp, models: dict, data_source: str, deployed) -> list[str]:
    """The summary's opening section (empty without deployed targets): ``real`` the cells
    without noise controls and hardened models, ``comp`` comparisons.csv (or None),
    ``deployed`` {target: data task}."""
    if not deployed:
        return []
    lines = ["## The answer, per deployed target", "", ANSWER_INTRO, ""]
    for target, task in sorted(deployed.items()):
        lines += target_answer(target, task, real, comp, models, data_source)
    return lines


def attack_comparison_lines(comp: pd.DataFrame | None) -> list[str]:
    """Which attack transferred more, on matched cells only: every comparison of two attacks
    from the same source on the same deployed target, images and eps, with the paired CI of
    the difference of fooling rates (empty without such comparisons)."""
    if comp is None or comp.empty:
        return []
    same = comp[comp["kind"] == "same source"]
    if same.empty:
        return []
    lines = [
        "## Which attack transferred more (matched cells)",
        "",
        "Two attacks from the same source on the same deployed target, images and eps (rows "
        "of comparisons.csv): the fooling rate of the first minus the second, with the paired "
        "patient-bootstrap CI; an ordering only where the CI excludes 0.",
        "",
    ]
    header = [
        "data task",
        "target",
        "source",
        "eps",
        "attacks (A - B)",
        "fooling rate A - B",
        "verdict",
    ]
    rows = []
    keys = ["data_task", "target", "source_a", "eps", "attack_a", "attack_b"]
    for _, r in same.sort_values(keys).iterrows():
        lo, hi = r["fooling_rate_difference_ci_low"], r["fooling_rate_difference_ci_high"]
        if excludes_zero(lo, hi):
            more = r["attack_a"] if float(r["fooling_rate_difference"]) > 0 else r["attack_b"]
            verdict = f"{more} transfers more"
        else:
            verdict = INDISTINGUISHABLE
        rows.append(
            [
                r["data_task"],
                r["target"],
                r["source_a"],
                f"{float(r['eps']):g}",
                f"{r['attack_a']} - {r['attack_b']}",
                f"{fmt(r['fooling_rate_difference'])} [{fmt(lo)}, {fmt(hi)}]",
                verdict,
            ]
        )
    return lines + markdown_table(header, rows, "lllrlll") + [""]
