"""Tests of the evaluation checklist (cxrtransfer.evaluate.checklist) on planted studies: a
clean study passes every check; each planted violation flags exactly its own row with its own
flag; a missing cell, control or run is "not checked" with a reason; the summary's section names
every flag with its numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from cxrtransfer import WorkflowError
from cxrtransfer.core.paths import CONTROL_SUFFIX
from cxrtransfer.evaluate import checklist as cl
from cxrtransfer.evaluate.comparison_table import ABOVE_NOISE_CI
from cxrtransfer.evaluate.tables import add_noise_controls, long_table

TOL = 0.02
TOP = 0.1  # the unbounded attack's largest allowed AUROC
T, S, D = "t_r50", "s_r50", "t_r50_jpeg"  # a target, a surrogate, T behind a defence
DEFENDED = {D: T}
# The clean study's adversarial AUROC per (source, target, eps) of pgd: white-box strongest,
# lower at the larger eps, the defended target's adaptive attack stronger than the non-adaptive.
CLEAN = {
    (T, T, 2): 0.2,
    (T, T, 8): 0.05,
    (S, S, 2): 0.25,
    (S, S, 8): 0.06,
    (D, D, 2): 0.5,
    (D, D, 8): 0.3,
    (S, T, 2): 0.6,
    (S, T, 8): 0.4,
    (T, S, 2): 0.65,
    (T, S, 8): 0.45,
    (T, D, 2): 0.7,
    (T, D, 8): 0.5,
    (S, D, 2): 0.8,
    (S, D, 8): 0.7,
}
# The extra runs' AUROC per (target, variant), all at pgd eps 8.
CLEAN_RUNS = {
    (m, v): a
    for m, wb in ((T, 0.05), (S, 0.06), (D, 0.3))
    for v, a in (("single_step", wb + 0.2), ("unbounded", 0.0), ("more_steps", wb))
}


def cells_of(source, target, eps, auroc, attack="pgd", above_low=0.1, control=True) -> list:
    """The cell dicts (as the evaluate job writes them) of one set and its noise control."""
    cell = {
        "data_task": "pneu",
        "attack": attack,
        "eps": float(eps),
        "source": source,
        "target": target,
        "relation": "white-box" if source == target else "surrogate",
        "adv_auroc": auroc,
        "adv_auroc_ci_low": max(auroc - 0.05, 0.0),
        "adv_auroc_ci_high": min(auroc + 0.05, 1.0),
        "fooling_rate": 0.5,
        ABOVE_NOISE_CI[0]: above_low,
        ABOVE_NOISE_CI[1]: above_low + 0.2,
    }
    noise = {
        **cell,
        "attack": attack + CONTROL_SUFFIX,
        "adv_auroc": 0.85,
        "fooling_rate": 0.2,
        ABOVE_NOISE_CI[0]: math.nan,
        ABOVE_NOISE_CI[1]: math.nan,
    }
    return [cell, noise] if control else [cell]


def study(aurocs=None, extra=(), drop=(), **above_low) -> pd.DataFrame:
    """The planted study's cell table (long_table + add_noise_controls): CLEAN updated by
    ``aurocs``, without the cells of ``drop``, plus the cell dicts of ``extra``;
    ``above_low``: {"S_T_8": lower end of the fooling rate above noise's CI}."""
    values = {**CLEAN, **(aurocs or {})}
    dicts = [
        d
        for (s, t, e), a in values.items()
        if (s, t, e) not in drop
        for d in cells_of(s, t, e, a, above_low=above_low.get(f"{s}_{t}_{e}", 0.1))
    ]
    return add_noise_controls(long_table([*dicts, *extra]))


def runs(values=None, drop=()) -> pd.DataFrame:
    """The planted extra runs (CLEAN_RUNS updated by ``values``, without ``drop``)."""
    rows = [
        {
            "target": m,
            "data_task": "pneu",
            "attack": "pgd",
            "eps": 8.0,
            "variant": v,
            "variant_eps": 255.0 if v == "unbounded" else 8.0,
            "variant_steps": {"single_step": 1, "unbounded": 6, "more_steps": 12}[v],
            "adv_auroc": a,
            "adv_auroc_ci_low": max(a - 0.05, 0.0),
            "adv_auroc_ci_high": min(a + 0.05, 1.0),
            "n_images": 40,
        }
        for (m, v), a in {**CLEAN_RUNS, **(values or {})}.items()
        if (m, v) not in drop
    ]
    return pd.DataFrame(rows, columns=list(cl.RUN_COLUMNS))


def rows_of(cells, run_table=None, **kw) -> pd.DataFrame:
    run_table = runs() if run_table is None else run_table
    return cl.checklist_rows(cells, run_table, DEFENDED, TOL, TOP, **kw)


def only_flag(rows, check, source, target, eps, flag) -> None:
    """Exactly one row is flagged, this one with this flag, and every other row passes."""
    flagged = rows[rows["status"] == "flag"]
    assert len(flagged) == 1, flagged[["check", "source", "target", "eps", "compared"]]
    r = flagged.iloc[0]
    assert (r["check"], r["source"], r["target"], r["eps"]) == (check, source, target, eps)
    assert r["flag"] == flag
    assert set(rows.drop(index=flagged.index)["status"]) == {"pass"}


def test_the_run_and_check_names_are_declared_once():
    assert set(cl.VARIANTS) == {"single_step", "unbounded", "more_steps"}
    assert len(cl.RUN_COLUMNS) == 11 and "variant_steps" in cl.RUN_COLUMNS
    assert cl.CHECK_COLUMNS[0] == "check" and "reason" in cl.CHECK_COLUMNS


def test_a_clean_study_passes_every_check():
    rows = rows_of(study())
    assert list(rows.columns) == list(cl.CHECK_COLUMNS)
    assert set(rows["status"]) == {"pass"}, rows[rows["status"] != "pass"]
    assert (rows["flag"] == "").all() and (rows["reason"] == "").all()
    per_check = rows["check"].value_counts()
    assert per_check["iterative >= single-step"] == 3 and per_check["converged"] == 3
    assert per_check["unbounded reaches 0"] == 3
    # transfer cells minus the non-adaptive T -> D, at two eps
    assert per_check["white-box >= transfer"] == 2 * 3
    assert per_check["non-increasing in eps"] == len(CLEAN) // 2
    assert per_check["beats noise control"] == len(CLEAN)
    assert per_check["adaptive >= non-adaptive"] == 2
    assert not rows["attack"].str.endswith(CONTROL_SUFFIX).any()


def test_an_iterative_attack_weaker_than_one_step_is_flagged():
    rows = rows_of(study(), runs({(T, "single_step"): 0.05 - TOL - 0.01}))
    only_flag(rows, "iterative >= single-step", T, T, 8.0, cl.MASKING)
    r = rows[rows["status"] == "flag"].iloc[0]
    assert r["value"] == CLEAN[(T, T, 8)] and r["reference"] == pytest.approx(0.02)


def test_a_white_box_attack_weaker_than_transfer_is_flagged():
    rows = rows_of(study({(S, T, 8): 0.05 - TOL - 0.01}))
    only_flag(rows, "white-box >= transfer", S, T, 8.0, cl.MASKING)
    r = rows[rows["status"] == "flag"].iloc[0]
    assert r["value"] == CLEAN[(T, T, 8)] and r["reference"] == pytest.approx(0.02)


def test_a_within_tolerance_difference_passes():
    rows = rows_of(study({(S, T, 8): 0.05 - TOL + 0.005}))
    assert set(rows["status"]) == {"pass"}


def test_auroc_rising_with_eps_is_flagged():
    rows = rows_of(study({(S, T, 8): CLEAN[(S, T, 2)] + TOL + 0.01}))
    only_flag(rows, "non-increasing in eps", S, T, 8.0, cl.MASKING)


def test_an_unbounded_attack_that_does_not_reach_0_is_flagged():
    rows = rows_of(study(), runs({(S, "unbounded"): TOP + 0.05}))
    only_flag(rows, "unbounded reaches 0", S, S, 8.0, cl.MASKING)
    assert rows[rows["status"] == "flag"].iloc[0]["reference"] == TOP


def test_more_steps_much_stronger_is_not_converged():
    rows = rows_of(study(), runs({(D, "more_steps"): 0.3 - TOL - 0.01}))
    only_flag(rows, "converged", D, D, 8.0, cl.NOT_CONVERGED)


@pytest.mark.parametrize(
    ("source", "target", "flag"),
    [(S, T, cl.NO_TRANSFER), (T, T, cl.MASKING)],
)
def test_an_attack_within_its_noise_control_is_flagged(source, target, flag):
    rows = rows_of(study(**{f"{source}_{target}_2": 0.0}))
    only_flag(rows, "beats noise control", source, target, 2.0, flag)
    assert rows[rows["status"] == "flag"].iloc[0]["value"] == 0.0


def test_an_adaptive_attack_weaker_than_the_non_adaptive_one_is_flagged():
    weaker = {(D, D, 2): 0.68, (D, D, 8): CLEAN[(T, D, 8)] + TOL + 0.03}
    run_values = {(D, "single_step"): 0.8, (D, "more_steps"): weaker[(D, D, 8)]}
    rows = rows_of(study(weaker), runs(run_values))
    only_flag(rows, "adaptive >= non-adaptive", D, D, 8.0, cl.MASKING)
    r = rows[rows["status"] == "flag"].iloc[0]
    assert (r["value"], r["reference"]) == (weaker[(D, D, 8)], CLEAN[(T, D, 8)])


def test_a_transfer_cell_falls_back_to_the_strongest_white_box_cell_or_is_not_checked():
    extra = [*cells_of(S, T, 8, 0.5, attack="ti_mi"), *cells_of(S, T, 4, 0.5, attack="mi")]
    rows = rows_of(study(extra=extra))
    b = rows[rows["check"] == "white-box >= transfer"].set_index("attack")
    assert b.loc["ti_mi", "status"] == "pass"
    assert b.loc["ti_mi", "value"] == CLEAN[(T, T, 8)]  # pgd, the only white-box cell at eps 8
    assert (
        "pgd" in b.loc["ti_mi", "compared"] and "no ti_mi white-box" in b.loc["ti_mi", "compared"]
    )
    assert b.loc["mi", "status"] == "not checked" and "eps 4" in b.loc["mi", "reason"]
    # a norm that no white-box cell at eps 8 shares: not checked
    rows = rows_of(study(extra=extra), norms={"pgd": "linf", "ti_mi": "l2"})
    b = rows[rows["check"] == "white-box >= transfer"].set_index("attack")
    assert b.loc["ti_mi", "status"] == "not checked"


def test_a_cell_without_noise_control_or_paired_ci_is_not_checked():
    extra = [
        *cells_of(S, T, 8, 0.4, attack="ti_mi", control=False),
        *cells_of(S, T, 8, 0.4, attack="mi", above_low=math.nan),
    ]
    rows = rows_of(study(extra=extra))
    f = rows[rows["check"] == "beats noise control"].set_index("attack")
    assert (
        f.loc["ti_mi", "status"] == "not checked" and "no noise control" in f.loc["ti_mi", "reason"]
    )
    assert f.loc["mi", "status"] == "not checked" and "paired CI" in f.loc["mi", "reason"]
    assert (f.loc["pgd", "status"] == "pass").all()


def test_a_defended_target_without_its_non_adaptive_cell_is_not_checked():
    rows = rows_of(study(drop=[(T, D, 2)]))
    g = rows[rows["check"] == "adaptive >= non-adaptive"].set_index("eps")
    assert g.loc[2.0, "status"] == "not checked" and T in g.loc[2.0, "reason"]
    assert "non-adaptive" in g.loc[2.0, "reason"] and g.loc[8.0, "status"] == "pass"
    nothing = cl.checklist_rows(study(), runs(), {"u_r50_jpeg": T}, TOL, TOP)
    g = nothing[nothing["check"] == "adaptive >= non-adaptive"]
    assert len(g) == 1 and g.iloc[0]["status"] == "not checked"


def test_a_white_box_attack_without_runs_is_not_checked():
    rows = rows_of(study(), runs(drop=[(S, v) for v in cl.VARIANTS]))
    missing = rows[rows["status"] == "not checked"]
    assert set(missing["check"]) == {"iterative >= single-step", "unbounded reaches 0", "converged"}
    assert set(missing["target"]) == {S} and len(missing) == 3
    assert (missing["eps"] == 8.0).all() and (missing["reason"] != "").all()


def test_a_model_with_no_base_is_a_not_checked_row():
    rows = cl.no_base_rows(["b_model", "a_model"])
    assert list(rows.columns) == list(cl.CHECK_COLUMNS)
    assert list(rows["target"]) == ["a_model", "b_model"]
    assert set(rows["check"]) == {"robust vs base"} and set(rows["status"]) == {"not checked"}
    assert "robust_base or init_from" in rows.iloc[0]["reason"]
    assert cl.no_base_rows([]).empty


def test_bad_runs_are_refused():
    with pytest.raises(WorkflowError, match="variant_steps"):
        rows_of(study(), runs().drop(columns="variant_steps"))
    with pytest.raises(WorkflowError, match="restarts"):
        rows_of(study(), runs().assign(variant="restarts"))


def test_the_summary_names_every_flag_with_its_numbers():
    cells = study({(S, T, 8): 0.7}, **{f"{T}_{S}_2": -0.1})
    table = runs({(T, "single_step"): 0.01, (S, "unbounded"): 0.4, (D, "more_steps"): 0.1})
    rows = pd.concat([rows_of(cells, table), cl.no_base_rows(["r_model"])], ignore_index=True)
    flags = rows[rows["status"] == "flag"]
    assert set(flags["check"]) >= {
        "iterative >= single-step",
        "non-increasing in eps",
        "unbounded reaches 0",
        "converged",
        "beats noise control",
    }
    lines = cl.checklist_lines(rows)
    text = "\n".join(lines)
    assert lines[0] == "## Evaluation checklist (Carlini et al. 2019)"
    assert f"{TOL:g} AUROC" in text and f"at most {TOP:g}" in text
    bullets = [line for line in lines if line.startswith("- ")]
    assert len(bullets) == len(flags)
    for r, line in zip(flags.to_dict("records"), bullets, strict=True):
        assert r["flag"] in line and r["check"] in line and r["compared"] in line
        assert f"{r['source']} -> {r['target']}" in line and f"eps {r['eps']:g}" in line
    for check in set(rows["check"]):
        n = rows["check"].eq(check)
        counts = [str(int((rows.loc[n, "status"] == s).sum())) for s in cl.STATUSES]
        row = next(line for line in lines if line.startswith(f"| {check} "))
        assert [c.strip() for c in row.strip("|").split("|")[1:]] == counts
    assert "No flags." not in text


def test_the_summary_of_a_clean_study_says_no_flags():
    lines = cl.checklist_lines(rows_of(study()))
    assert "No flags." in lines and not any(line.startswith("- ") for line in lines)
