"""The evaluation checklist (Carlini et al. 2019, "On evaluating adversarial robustness";
Athalye et al. 2018): checks of a study's cells and of the checklist's extra white-box runs
(``RUN_COLUMNS``: single-step, unbounded, more steps) that catch an attack too weak to support
a robustness claim (gradient masking, an attack that has not converged).

Lower adversarial AUROC = a stronger attack. Each row (``CHECK_COLUMNS``) compares two numbers
of the same target, ``value`` with ``reference``, by the rule of its check (``CHECKS``); an
AUROC comparison flags a violation only beyond ``tolerance``. A defended target's white-box
cell is its adaptive one (source = target); its non-adaptive cell (source = its undefended
base) is checked by "adaptive >= non-adaptive", not as a transfer cell.

Pure pandas: the tables job computes the rows, the summary names every flag.
"""

from __future__ import annotations

import math

import pandas as pd

from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate.checklist_io import RUN_COLUMNS, VARIANTS
from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE, ABOVE_NOISE_CI
from cxrtransfer.evaluate.tables import fmt, markdown_table

# The checks, in row and summary order, with the rule each applies.
CHECKS = {
    "iterative >= single-step": "white-box AUROC > single-step AUROC + tolerance",
    "white-box >= transfer": "white-box AUROC > transfer AUROC + tolerance",
    "non-increasing in eps": "AUROC at the larger eps > AUROC at the smaller + tolerance",
    "unbounded reaches 0": "unbounded AUROC > the largest allowed",
    "converged": "more-steps AUROC < the grid attack's AUROC - tolerance",
    "beats noise control": "lower end of the paired CI of the fooling rate above noise <= 0",
    "adaptive >= non-adaptive": "adaptive AUROC > non-adaptive AUROC + tolerance",
    "robust vs base": "an adversarially trained model is compared with its base",
}
CHECK_COLUMNS = (
    "check",
    "target",
    "source",
    "data_task",
    "attack",
    "eps",
    "compared",
    "value",
    "reference",
    "tolerance",
    "status",
    "flag",
    "reason",
)
STATUSES = ("pass", "flag", "not checked")
MASKING = "possible gradient masking"
NOT_CONVERGED = "attack not converged"
NO_TRANSFER = "no transfer beyond noise"
NO_BASE = "adversarially trained with no robust_base or init_from to compare against"
# The checks that compare two AUROCs within ``tolerance``.
TOLERANCE_CHECKS = tuple(c for c in CHECKS if c not in ("unbounded reaches 0", "robust vs base"))
_VARIANT_CHECKS = {
    "single_step": "iterative >= single-step",
    "unbounded": "unbounded reaches 0",
    "more_steps": "converged",
}
_NAN = float("nan")


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def _row(check: str, key: dict, compared: str = "", value=_NAN, reference=_NAN, **kw) -> dict:
    """One check row; ``key``: target, source, data_task, attack, eps of the cell checked;
    ``kw``: tolerance, status (default "not checked"), flag, reason."""
    return {
        "check": check,
        "target": key.get("target", ""),
        "source": key.get("source", ""),
        "data_task": key.get("data_task", ""),
        "attack": key.get("attack", ""),
        "eps": float(key.get("eps", _NAN)),
        "compared": compared,
        "value": float(value),
        "reference": float(reference),
        "tolerance": float(kw.get("tolerance", _NAN)),
        "status": kw.get("status", "not checked"),
        "flag": kw.get("flag", ""),
        "reason": kw.get("reason", ""),
    }


def _judged(check, key, compared, value, reference, tolerance, flag, *, lower=False) -> dict:
    """A row comparing ``value`` with ``reference``: flagged when value > reference + tolerance
    (``lower``: when value < reference - tolerance); not checked when either is undefined."""
    value, reference = float(value), float(reference)
    if not (math.isfinite(value) and math.isfinite(reference)):
        reason = "a compared number is undefined (NaN)"
        return _row(check, key, compared, value, reference, tolerance=tolerance, reason=reason)
    bad = value < reference - tolerance if lower else value > reference + tolerance
    status, words = ("flag", flag) if bad else ("pass", "")
    return _row(
        check, key, compared, value, reference, tolerance=tolerance, status=status, flag=words
    )


def _key(cell) -> dict:
    return {k: cell[k] for k in ("target", "source", "data_task", "attack", "eps")}


def _auroc(cell) -> str:
    """A cell's or run's adversarial AUROC with its CI, as text."""
    low, high = cell.get("adv_auroc_ci_low", _NAN), cell.get("adv_auroc_ci_high", _NAN)
    return f"{fmt(cell['adv_auroc'])} [{fmt(low)}, {fmt(high)}]"


def _index(real: pd.DataFrame) -> dict:
    """{(source, target, data_task, attack, eps): cell as a dict} of the real cells."""
    return {
        (c["source"], c["target"], c["data_task"], c["attack"], float(c["eps"])): c
        for c in real.to_dict("records")
    }


# ----------------------------------------------------------------------------------------------
# The checks of the extra runs (single-step, unbounded, more steps)
# ----------------------------------------------------------------------------------------------


def _run_row(run: dict, cell: dict | None, tolerance: float, unbounded_max: float) -> dict:
    """The check of one extra run against the grid's white-box cell it names."""
    key = {**{k: run[k] for k in ("target", "data_task", "attack", "eps")}}
    key["source"] = run["target"]
    variant, attack = run["variant"], run["attack"]
    check = _VARIANT_CHECKS[variant]
    if variant == "unbounded":
        compared = (
            f"{attack} unbounded (eps {float(run['variant_eps']):g}) {_auroc(run)} "
            f"vs at most {unbounded_max:g}"
        )
        return _judged(check, key, compared, run["adv_auroc"], unbounded_max, 0.0, MASKING)
    if cell is None:
        reason = f"the grid has no white-box cell of {attack} at eps {float(run['eps']):g}"
        return _row(check, key, tolerance=tolerance, reason=reason)
    grid = f"{attack} white-box {_auroc(cell)}"
    if variant == "single_step":
        compared = f"{grid} vs single-step (FGSM) {_auroc(run)}"
        return _judged(
            check, key, compared, cell["adv_auroc"], run["adv_auroc"], tolerance, MASKING
        )
    compared = f"{int(run['variant_steps'])} steps {_auroc(run)} vs {grid}"
    return _judged(
        check,
        key,
        compared,
        run["adv_auroc"],
        cell["adv_auroc"],
        tolerance,
        NOT_CONVERGED,
        lower=True,
    )


def _run_rows(runs: pd.DataFrame, real, tolerance: float, unbounded_max: float) -> list[dict]:
    """The checks of every extra run, and a "not checked" row per check of a white-box attack
    (target, data_task, attack; at its largest eps) that has no run of that variant."""
    index = _index(real)
    records = runs.to_dict("records")
    out = []
    for variant in VARIANTS:
        mine = [r for r in records if r["variant"] == variant]
        for run in sorted(mine, key=lambda r: (r["target"], r["data_task"], r["attack"], r["eps"])):
            cell = index.get(
                (run["target"], run["target"], run["data_task"], run["attack"], float(run["eps"]))
            )
            out.append(_run_row(run, cell, tolerance, unbounded_max))
        have = {(r["target"], r["data_task"], r["attack"]) for r in mine}
        wb = real[real["source"] == real["target"]]
        for (t, dt, a), g in wb.groupby(["target", "data_task", "attack"], sort=True):
            if (t, dt, a) not in have:
                key = {
                    "target": t,
                    "source": t,
                    "data_task": dt,
                    "attack": a,
                    "eps": g["eps"].max(),
                }
                reason = (
                    f"no {variant} run of this white-box attack (none for a universal attack; "
                    "FGSM gets only its unbounded run; or the checklist is disabled)"
                )
                tol = 0.0 if variant == "unbounded" else tolerance
                out.append(_row(_VARIANT_CHECKS[variant], key, tolerance=tol, reason=reason))
    return out


# ----------------------------------------------------------------------------------------------
# The checks of the grid's cells
# ----------------------------------------------------------------------------------------------


def _white_box_for(cell: dict, wb: pd.DataFrame, index: dict, norms: dict | None):
    """The white-box cell a transfer cell is compared with, and a note when it is not the same
    attack's: the same target, data task and eps, the same attack, else the strongest (lowest
    AUROC) of a norm-compatible attack (``norms``: {attack: norm}; unknown: any attack)."""
    t, dt, a, eps = cell["target"], cell["data_task"], cell["attack"], float(cell["eps"])
    same = index.get((t, t, dt, a, eps))
    if same is not None:
        return same, ""
    c = wb[(wb["target"] == t) & (wb["data_task"] == dt) & (wb["eps"].astype(float) == eps)]
    c = c[pd.to_numeric(c["adv_auroc"], errors="coerce").notna()]
    norm = (norms or {}).get(a)
    if norm is not None:
        c = c[[(norms or {}).get(x, norm) == norm for x in c["attack"]]]
    if c.empty:
        return None, ""
    best = c.loc[pd.to_numeric(c["adv_auroc"]).idxmin()].to_dict()
    return best, f" (no {a} white-box cell: the strongest at eps {eps:g})"


def _transfer_rows(real, defended: dict, tolerance: float, norms: dict | None) -> list[dict]:
    """``white-box >= transfer``: every transfer cell against its target's white-box cell."""
    index = _index(real)
    wb = real[real["source"] == real["target"]]
    check = "white-box >= transfer"
    out = []
    for cell in real[real["source"] != real["target"]].to_dict("records"):
        if defended.get(cell["target"]) == cell["source"]:
            continue  # the non-adaptive cell: "adaptive >= non-adaptive" checks it
        ref, note = _white_box_for(cell, wb, index, norms)
        key = _key(cell)
        if ref is None:
            reason = (
                f"no white-box cell of {cell['target']} at eps {float(cell['eps']):g} "
                f"({cell['data_task']}) in the grid"
            )
            out.append(_row(check, key, tolerance=tolerance, reason=reason))
            continue
        kind = "adaptive white-box" if cell["target"] in defended else "white-box"
        compared = (
            f"{kind} {ref['attack']}{note} {_auroc(ref)} vs transfer from {cell['source']} "
            f"{_auroc(cell)}"
        )
        out.append(
            _judged(check, key, compared, ref["adv_auroc"], cell["adv_auroc"], tolerance, MASKING)
        )
    return out


def _eps_rows(real: pd.DataFrame, tolerance: float) -> list[dict]:
    """``non-increasing in eps``: each adjacent pair of eps of a (source, target, attack,
    data_task), the larger eps's cell against the smaller's."""
    out = []
    for _, g in real.groupby(["source", "target", "attack", "data_task"], sort=True):
        cells = sorted(g.to_dict("records"), key=lambda c: float(c["eps"]))
        for small, large in zip(cells, cells[1:], strict=False):
            compared = (
                f"eps {float(large['eps']):g} {_auroc(large)} vs eps {float(small['eps']):g} "
                f"{_auroc(small)}"
            )
            out.append(
                _judged(
                    "non-increasing in eps",
                    _key(large),
                    compared,
                    large["adv_auroc"],
                    small["adv_auroc"],
                    tolerance,
                    MASKING,
                )
            )
    return out


def _noise_rows(real: pd.DataFrame) -> list[dict]:
    """``beats noise control``: each cell's paired CI of its fooling rate above its noise
    control's must lie above 0."""
    check = "beats noise control"
    out = []
    for cell in real.to_dict("records"):
        key = _key(cell)
        noise = float(cell.get("noise_fooling_rate", _NAN))
        low = float(cell.get(ABOVE_NOISE_CI[0], _NAN))
        if not math.isfinite(noise):
            reason = "no noise control of this cell in the grid (noise_control off)"
            out.append(_row(check, key, tolerance=0.0, reason=reason))
            continue
        compared = (
            f"fooling rate {fmt(cell['fooling_rate'])} (AUROC {fmt(cell['adv_auroc'])}) vs noise "
            f"control {fmt(noise)} (AUROC {fmt(cell.get('noise_adv_auroc', _NAN))}): above noise "
            f"{fmt(cell.get(ABOVE_NOISE, _NAN))} [{fmt(low)}, "
            f"{fmt(cell.get(ABOVE_NOISE_CI[1], _NAN))}]"
        )
        if not math.isfinite(low):
            reason = "no paired CI of the fooling rate above noise"
            out.append(_row(check, key, compared, tolerance=0.0, reason=reason))
            continue
        bad = low <= 0
        flag = (MASKING if cell["source"] == cell["target"] else NO_TRANSFER) if bad else ""
        status = "flag" if bad else "pass"
        out.append(_row(check, key, compared, low, 0.0, tolerance=0.0, status=status, flag=flag))
    return out


def _adaptive_rows(real: pd.DataFrame, defended: dict, tolerance: float) -> list[dict]:
    """``adaptive >= non-adaptive``: per defended target and (data_task, attack, eps) of either
    cell, the adaptive cell (source = target) against the non-adaptive one (source = base)."""
    check = "adaptive >= non-adaptive"
    index = _index(real)
    out = []
    for d, base in sorted(defended.items()):
        mine = real[(real["target"] == d) & real["source"].isin([d, base])]
        keys = sorted(
            {(c["data_task"], c["attack"], float(c["eps"])) for c in mine.to_dict("records")}
        )
        if not keys:
            reason = f"neither the adaptive ({d} -> {d}) nor the non-adaptive ({base} -> {d}) cell is in the grid"
            out.append(_row(check, {"target": d, "source": d}, tolerance=tolerance, reason=reason))
        for dt, attack, eps in keys:
            adaptive, plain = (
                index.get((d, d, dt, attack, eps)),
                index.get((base, d, dt, attack, eps)),
            )
            key = {"target": d, "source": d, "data_task": dt, "attack": attack, "eps": eps}
            if adaptive is None or plain is None:
                which = (
                    f"adaptive ({d} -> {d})"
                    if adaptive is None
                    else f"non-adaptive ({base} -> {d})"
                )
                out.append(
                    _row(check, key, tolerance=tolerance, reason=f"no {which} cell in the grid")
                )
                continue
            compared = f"adaptive {_auroc(adaptive)} vs non-adaptive from {base} {_auroc(plain)}"
            out.append(
                _judged(
                    check,
                    key,
                    compared,
                    adaptive["adv_auroc"],
                    plain["adv_auroc"],
                    tolerance,
                    MASKING,
                )
            )
    return out


# ----------------------------------------------------------------------------------------------
# The checklist
# ----------------------------------------------------------------------------------------------


def _checked_inputs(cells: pd.DataFrame, runs: pd.DataFrame, tolerance, unbounded_max) -> None:
    need = ("data_task", "attack", "eps", "source", "target", "adv_auroc", "fooling_rate")
    missing = [c for c in need if c not in cells.columns]
    if missing:
        raise WorkflowError(f"The checklist's cell table lacks column(s) {', '.join(missing)}.")
    missing = [c for c in RUN_COLUMNS if c not in runs.columns]
    if missing:
        raise WorkflowError(f"The checklist's runs lack column(s) {', '.join(missing)}.")
    unknown = sorted(set(runs["variant"].astype(str)) - set(VARIANTS))
    if unknown:
        raise WorkflowError(
            f"Checklist runs of unknown variant(s) {', '.join(unknown)} (known: "
            f"{', '.join(VARIANTS)})."
        )
    for name, x in (("tolerance", tolerance), ("unbounded_max_auroc", unbounded_max)):
        if not (math.isfinite(float(x)) and 0 <= float(x) <= 1):
            raise WorkflowError(f"The checklist's {name} = {x} is not an AUROC in [0, 1].")


def checklist_rows(
    cells: pd.DataFrame,
    runs: pd.DataFrame,
    defended: dict[str, str],
    tolerance: float,
    unbounded_max_auroc: float,
    *,
    norms: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The checklist's rows (``CHECK_COLUMNS``, checks in ``CHECKS`` order) over the study's
    cells (``tables.long_table`` + ``tables.add_noise_controls``; noise-control rows are not
    checked themselves) and the checklist's extra runs (``RUN_COLUMNS``). ``defended``:
    {defended target: its undefended base}; ``norms``: {attack: norm}, optional, restricts the
    white-box cell a transfer cell falls back to (when its own attack has none) to the same
    norm."""
    _checked_inputs(cells, runs, tolerance, unbounded_max_auroc)
    tolerance, unbounded_max_auroc = float(tolerance), float(unbounded_max_auroc)
    real = cells[~cells["attack"].astype(str).str.endswith(CONTROL_SUFFIX)].copy()
    real["eps"] = real["eps"].astype(float)
    rows = [
        *_run_rows(runs, real, tolerance, unbounded_max_auroc),
        *_transfer_rows(real, dict(defended), tolerance, norms),
        *_eps_rows(real, tolerance),
        *_noise_rows(real),
        *_adaptive_rows(real, dict(defended), tolerance),
    ]
    df = pd.DataFrame(rows, columns=list(CHECK_COLUMNS))
    order = {c: i for i, c in enumerate(CHECKS)}
    df = df.sort_values("check", key=lambda s: s.map(order), kind="stable")
    return df.reset_index(drop=True)


def no_base_rows(models: list[str]) -> pd.DataFrame:
    """A "not checked" row of ``robust vs base`` per adversarially trained model with no base
    model to compare its robustness with."""
    rows = [
        _row("robust vs base", {"target": m, "source": m}, reason=NO_BASE) for m in sorted(models)
    ]
    return pd.DataFrame(rows, columns=list(CHECK_COLUMNS))


# ----------------------------------------------------------------------------------------------
# The summary's section
# ----------------------------------------------------------------------------------------------


def _first(rows: pd.DataFrame, checks, column: str):
    v = pd.to_numeric(rows.loc[rows["check"].isin(checks), column], errors="coerce").dropna()
    return None if v.empty else float(v.iloc[0])


def _intro(rows: pd.DataFrame) -> str:
    """The sentence that says what the checks are, with the tolerance and the unbounded
    attack's largest allowed AUROC of the rows."""
    tol = _first(rows[rows["status"] != "not checked"], TOLERANCE_CHECKS, "tolerance")
    tol = _first(rows, TOLERANCE_CHECKS, "tolerance") if tol is None else tol
    top = _first(rows[rows["status"] != "not checked"], ["unbounded reaches 0"], "reference")
    within = f" beyond a tolerance of {tol:g} AUROC" if tol is not None else ""
    unbounded = f" (at most {top:g})" if top is not None else ""
    return (
        "Each check compares two adversarial AUROCs of the same target (lower: a stronger "
        "attack) and flags a violation" + within + ": an iterative attack at least as strong "
        "as a single step (FGSM), white-box at least as strong as transfer, AUROC "
        "non-increasing in eps, more steps not much stronger (converged), and on a defended "
        "target the adaptive attack at least as strong as the non-adaptive one; an unbounded "
        "attack must drive AUROC to about 0" + unbounded + ", and every attack must beat its "
        "noise control (the paired CI of its fooling rate above noise above 0)."
    )


def checklist_lines(rows: pd.DataFrame) -> list[str]:
    """The summary's section: what the checks are, the counts per check (pass / flag / not
    checked) and a bullet per flag naming the flag, the check, the cell and its numbers."""
    lines = ["## Evaluation checklist (Carlini et al. 2019)", ""]
    if rows.empty:
        return [*lines, "The checklist has no rows: nothing was checked.", ""]
    lines += [_intro(rows), ""]
    present = [c for c in CHECKS if c in set(rows["check"])]
    present += sorted(set(rows["check"]) - set(present))
    table = []
    for check in present:
        status = rows.loc[rows["check"] == check, "status"]
        table.append([check, *(str(int((status == s).sum())) for s in STATUSES)])
    lines += [*markdown_table(["check", *STATUSES], table, "lrrr"), ""]
    flags = rows[rows["status"] == "flag"]
    if flags.empty:
        return [*lines, "No flags.", ""]
    for r in flags.to_dict("records"):
        eps = float(r["eps"])
        where = f"{r['source']} -> {r['target']}, {r['attack']}" + (
            f", eps {eps:g}" if math.isfinite(eps) else ""
        )
        lines.append(
            f"- **{r['flag']}** ({r['check']}): {where} ({r['data_task']}): {r['compared']}."
        )
    return [*lines, ""]
