"""End to end: real Snakemake runs of config/test.yaml, reruns, lint and the report."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import reversed_mappings, workflow_copy
from sklearn.metrics import roc_auc_score

pytestmark = pytest.mark.e2e
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(root, workdir, *args, configfile="config.yaml", check=True, timeout=1800):
    cmd = [
        *SNAKEMAKE,
        "--snakefile",
        str(root / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / configfile),
        "--cores",
        "2",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{r.stdout[-5000:]}\n{r.stderr[-10000:]}")
    return r


def planned(root, workdir, configfile="config.yaml") -> dict:
    """Jobs a dry run would schedule, as {rule: count}."""
    r = snakemake(root, workdir, "-n", configfile=configfile)
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", out, re.S)
    assert m, out[-3000:]
    jobs = {}
    for line in m.group(1).splitlines():
        rule, n = line.split()
        jobs[rule] = int(n)
    return jobs


@pytest.fixture(scope="module")
def run(root, tmp_path_factory):
    """One full run of the tiny test configuration."""
    wd = tmp_path_factory.mktemp("e2e")
    shutil.copy(root / "config" / "test.yaml", wd / "config.yaml")
    r = snakemake(root, wd)
    (wd / "console.txt").write_text(r.stdout + r.stderr)
    return wd


def _config(wd, name="config.yaml"):
    return yaml.safe_load((wd / name).read_text())


def _write(wd, cfg, name):
    (wd / name).write_text(yaml.safe_dump(cfg))  # sorted keys: another order than the run
    return name


def test_second_dry_run_has_nothing_to_do(root, run):
    assert planned(root, run) == {}


def test_reordered_config_reruns_nothing(root, run):
    """Params are canonical where order carries no meaning: the config with its keys sorted,
    and with every mapping in reverse order (models, tasks, attacks: what a YAML tool that
    sorts or reorders keys writes back), plans nothing."""
    assert planned(root, run, _write(run, _config(run), "sorted.yaml")) == {}
    (run / "reversed.yaml").write_text(
        yaml.safe_dump(reversed_mappings(_config(run)), sort_keys=False)
    )
    assert planned(root, run, "reversed.yaml") == {}


def test_console_and_logs_show_no_tensorflow_start_up_notices(run):
    """TensorFlow's two start-up notices are in no job log and not on the console; each job
    that uses TensorFlow says in its log which TensorFlow it loaded."""
    console = (run / "console.txt").read_text()
    assert "Finished jobid" in console or "steps (100%) done" in console
    logs = sorted((run / "results" / "logs").rglob("*.log"))
    for noise in ("absl::InitializeLog", "oneDNN custom operations"):
        assert noise not in console
        assert not [p for p in logs if noise in p.read_text()]
    for rule in ("train", "attack", "predict"):
        tf_logs = sorted((run / "results" / "logs" / rule).rglob("*.log"))
        assert tf_logs and all("loaded; oneDNN" in p.read_text() for p in tf_logs), rule


WHITE_BOX_RUN_CHECKS = ("iterative >= single-step", "unbounded reaches 0", "converged")


def test_the_checklist_checks_every_white_box_attack_and_names_its_flags(run):
    """Each model's white-box PGD gets the checks of its extra runs, computed (not "not
    checked"); the unbounded attack drives every model's AUROC to about 0; every cell is
    checked against its noise control; the summary names each flag of the table."""
    r = run / "results"
    rows = pd.read_csv(r / "tables" / "checklist.csv", keep_default_na=False)
    cells = pd.read_csv(r / "tables" / "transfer.csv")
    models = sorted(_config(run)["models"])
    for target in models:
        mine = rows[(rows["target"] == target) & rows["check"].isin(WHITE_BOX_RUN_CHECKS)]
        assert sorted(mine["check"]) == sorted(WHITE_BOX_RUN_CHECKS), target
        assert set(mine["status"]) <= {"pass", "flag"}, mine
        runs = pd.read_csv(r / "checklist" / f"{target}.csv")
        assert set(runs["variant"]) == {"single_step", "unbounded", "more_steps"}
    unbounded = rows[rows["check"] == "unbounded reaches 0"]
    assert (unbounded["status"] == "pass").all(), unbounded
    real = cells[~cells["attack"].str.endswith("__shuffled")]
    assert (rows["check"] == "beats noise control").sum() == len(real)
    summary = (r / "tables" / "summary.md").read_text()
    assert "## Evaluation checklist" in summary
    flags = rows[rows["status"] == "flag"]
    bullets = [ln for ln in summary.splitlines() if ln.startswith("- **") and "(" in ln]
    assert len([b for b in bullets if any(c in b for c in set(rows["check"]))]) == len(flags)
    assert flags.empty == ("No flags." in summary)


def test_job_logs_have_no_warnings_and_say_what_they_did(run):
    """No Python warning and no TensorFlow C++ warning or error line in any job log, no
    `Shell command: None` on the console; each log starts with what its job does and ends with
    what it wrote."""
    console = (run / "console.txt").read_text()
    assert "Shell command" not in console
    bad = re.compile(r"^(.*\w+Warning: .*|[WE]\d{4} .*)$", re.MULTILINE)
    logs = sorted((run / "results" / "logs").rglob("*.log"))
    assert logs
    for p in logs:
        text = p.read_text()
        assert not bad.findall(text), (p, bad.findall(text))
        lines = text.splitlines()
        assert " INFO rule " in lines[0], (p, lines[0])
        assert " wrote " in lines[-1], (p, lines[-1])


def test_lint_is_clean(root, run):
    r = snakemake(root, run, "--lint", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_outputs_exist(run):
    r = run / "results"
    for p in [
        "tables/transfer.csv",
        "tables/summary.md",
        "report/config.yaml",
        "shards/pneumothorax/summary.csv",
        "shards/pneumothorax/rejected.csv",
        "models/pneumothorax_small/model.keras",
        "models/pneumothorax_small/metrics.json",
        "models/pneumothorax_small/history.csv",
        "plots/heatmap/pneumothorax_pgd.png",
    ]:
        assert (r / p).is_file(), p
    assert list((r / "tables" / "matrices").glob("*_transfer_rate.tex"))
    assert list((r / "plots" / "examples").rglob("*.png"))
    assert list((r / "plots" / "roc").rglob("*.png"))
    # every rule logs and benchmarks
    assert list((r / "benchmarks" / "attack").rglob("*.tsv"))
    assert list((r / "logs" / "train").glob("*.log"))
    # the synthetic download has RGBA images, which were converted, not rejected
    rej = pd.read_csv(r / "shards" / "pneumothorax" / "rejected.csv")
    assert len(rej) == 0
    # the generated box file, checked; every example plot has its table of the perturbation
    # energy inside the boxes of its images (header only when none of them has a box)
    from cxrtransfer.data.boxes import ENERGY_COLUMNS

    assert (r / "boxes" / "boxes.csv").is_file()
    plots, rows = list((r / "plots" / "examples").rglob("*.png")), 0
    for png in plots:
        energy = pd.read_csv(png.with_name(f"{png.stem}_boxes.csv"))
        assert list(energy.columns) == ENERGY_COLUMNS
        e = energy[["energy_inside", "area_share", "ratio"]].astype(float)  # also with no rows
        assert e["energy_inside"].between(0, 1).all()
        assert np.allclose(e["ratio"], e["energy_inside"] / e["area_share"])
        rows += len(e)
    assert rows  # config/test.yaml boxes every finding: the positive examples have boxes


def test_attack_caches_hold_the_eps_bound(run):
    files = sorted((run / "results" / "attacks").rglob("*.h5"))
    assert files
    for f in files:
        with h5py.File(f) as h:
            eps = h.attrs["eps"]
            shard = h.attrs["clean_shard"]
            adv = h["images"][...]
            assert adv.dtype == np.uint8
            for k in (
                "attack",
                "norm",
                "eps",
                "step",
                "steps",
                "targeted",
                "random_start",
                "restarts",
                "source_checkpoint_sha256",
                "eps_unit",
            ):
                assert k in h.attrs, k
            if f.parent.parent.name.endswith("__shuffled"):
                assert h.attrs["control"] == "shuffled"
            else:
                assert "n_quantisation_unfooled" in h.attrs
            names = h["image_index"][...]
        with h5py.File(run / shard) as s:
            clean = s["images"][...]
            assert (s["image_index"][...] == names).all()
        assert np.abs(adv.astype(int) - clean.astype(int)).max() <= int(eps)


def test_transfer_table_is_reproducible_from_prediction_files(run):
    """Independent recomputation (plain numpy + sklearn) of transfer.csv's point estimates."""
    df = pd.read_csv(run / "results" / "tables" / "transfer.csv")
    assert len(df) > 0
    thr, thr_task = {}, {}
    for m in (run / "results" / "models").iterdir():
        metrics = json.loads((m / "metrics.json").read_text())
        thr[m.name], thr_task[m.name] = metrics["threshold"], metrics["task"]
    for _, row in df.iterrows():
        base = run / "results" / "predictions" / row["target"]
        eps = f"{row['eps']:g}"
        clean = pd.read_csv(base / "clean" / f"{row['data_task']}.csv", dtype={"image_index": str})
        adv_set = base / "adv" / row["source"] / row["data_task"] / row["attack"] / f"eps{eps}.csv"
        adv = pd.read_csv(adv_set, dtype={"image_index": str})
        clean = clean.set_index("image_index").sort_index()
        adv = adv.set_index("image_index").loc[clean.index]
        y = clean["label"].to_numpy()
        t, ts = thr[row["target"]], thr[row["source"]]
        cp, ap = clean["prob"].to_numpy() >= t, adv["prob"].to_numpy() >= t
        sp = adv["source_adv_prob"].to_numpy() >= ts
        sc = adv["source_clean_prob"].to_numpy() >= ts
        assert row["clean_auroc"] == pytest.approx(roc_auc_score(y, clean["prob"]), abs=1e-9)
        assert row["adv_auroc"] == pytest.approx(roc_auc_score(y, adv["prob"]), abs=1e-9)
        assert row["adv_accuracy"] == pytest.approx(np.mean(ap == y), abs=1e-12)
        correct = cp == y
        assert row["n_clean_correct"] == correct.sum()
        assert row["attack_success_rate"] == pytest.approx(
            np.mean(ap[correct] != y[correct]), abs=1e-12
        )
        assert row["fooling_rate"] == pytest.approx(np.mean(ap != y), abs=1e-12)
        same_task = thr_task[row["source"]] == row["data_task"]
        # the attack caused the source's error (same task) or flipped its decision (cross-task)
        caused = ((sc == y) & (sp != y)) if same_task else (sc != sp)
        base_set = correct & caused
        assert row["n_source_caused"] == caused.sum()
        assert row["n_transfer_base"] == base_set.sum()
        if base_set.any():
            assert row["transfer_rate"] == pytest.approx(
                np.mean(ap[base_set] != y[base_set]), abs=1e-12
            )
        assert row["mean_linf"] == pytest.approx(adv["linf"].mean(), abs=1e-6)
        assert row["clean_auroc_ci_low"] <= row["clean_auroc"] <= row["clean_auroc_ci_high"]


def test_relations_are_measured_and_controls_shown(run):
    """Target and surrogate trained on disjoint patient halves; cross-task models share the No
    Finding patients; every attack row has its noise control beside it."""
    df = pd.read_csv(run / "results" / "tables" / "transfer.csv")
    real = df[~df["attack"].str.endswith("__shuffled")]
    cell = real[
        (real["source"] == "pneumothorax_small_s2") & (real["target"] == "pneumothorax_small")
    ].iloc[0]
    assert cell["patient_overlap"] == 0 and cell["relation"] == "surrogate"
    assert cell["same_arch"] and not cell["same_seed"]
    cross = real[real["source"] != real["target"]]
    cross = cross[cross["data_task"] == "cardiomegaly"].iloc[0]
    assert cross["relation"] == "cross-task" and 0 < cross["patient_overlap"] < 1
    assert real["noise_fooling_rate"].notna().all()
    assert np.allclose(
        real["fooling_rate_above_noise"], real["fooling_rate"] - real["noise_fooling_rate"]
    )
    summary = (run / "results" / "tables" / "summary.md").read_text()
    assert "above noise" in summary and "__shuffled" not in summary


def test_the_summary_answers_first_and_every_number_is_in_the_tables(run):
    """summary.md opens with the answer per deployed target; each number it prints (3 decimals)
    is a value of a row of transfer.csv, comparisons.csv, checklist.csv or the checklist's runs
    (their CIs)."""
    tables = run / "results" / "tables"
    summary = (tables / "summary.md").read_text()
    assert summary.index("## The answer, per deployed target") < summary.index("## Data task")
    for target in ("pneumothorax_small", "cardiomegaly_small"):
        assert f"**{target}** (deployed for data task" in summary
    comparisons = pd.read_csv(tables / "comparisons.csv")
    assert set(comparisons["target"]) == {"pneumothorax_small", "cardiomegaly_small"}
    known = set()
    frames = [pd.read_csv(tables / "transfer.csv"), comparisons]
    frames += [pd.read_csv(tables / "checklist.csv")]
    frames += [pd.read_csv(p) for p in (run / "results" / "checklist").glob("*.csv")]
    for frame in frames:
        for col in frame.columns:
            known |= {f"{x:.3f}" for x in pd.to_numeric(frame[col], errors="coerce").dropna()}
    numbers = re.findall(r"-?\d+\.\d{3}", summary)
    assert numbers and not [x for x in numbers if x not in known]


def test_white_box_pgd_breaks_every_source(run):
    """Acceptance: white-box PGD at the largest eps drives each source's AUROC below 0.10."""
    df = pd.read_csv(run / "results" / "tables" / "transfer.csv")
    df = df[~df["attack"].str.endswith("__shuffled")]
    wb = df[(df["relation"] == "white-box") & (df["eps"] == df["eps"].max())]
    assert set(wb["source"]) == set(_config(run)["models"])
    assert (wb["clean_auroc"] > 0.6).all(), wb[["source", "clean_auroc"]]
    assert (wb["adv_auroc"] < 0.10).all(), wb[["source", "adv_auroc"]]


# The tiny configuration, written out: 2 tasks with one shard per split; models
# pneumothorax_small (target, half_a) and pneumothorax_small_s2 (surrogate, half_b) on
# pneumothorax, cardiomegaly_small on cardiomegaly; one attack (pgd) at one eps; sets: every
# model on its own task + pneumothorax_small on cardiomegaly = 4 (2 pneumothorax sets with 2
# targets, 2 cardiomegaly sets with 1 target). Each set's noise control is written by its attack
# job, predicted by its predict_adv jobs and evaluated by its evaluate job.
FULL_RUN = {
    "synthetic_download": 1,
    "manifest": 2,
    "shard": 6,
    "shard_summary": 2,
    "train": 3,
    "attack": 4,
    "predict_clean": 3,
    "predict_adv": 6,  # 2 sets x 2 targets + 2 sets x 1 target
    "evaluate": 4,
    "compare": 2,  # one per deployed target (pneumothorax_small, cardiomegaly_small)
    "tables": 1,
    "plot_headline": 1,
    "plot_heatmap": 2,
    "plot_auroc": 3,
    "plot_cell": 1,
    "study_config": 1,
    "checklist_runs": 3,  # every model is attacked white-box: the checklist's extra runs
    "all": 1,
}
AFTER_TABLES = {"tables": 1, "plot_headline": 1, "plot_heatmap": 2, "plot_auroc": 3}
ATTACKS_ON = {"attack": 4, "predict_adv": 6, "evaluate": 4, "compare": 2}


def _set(cfg, path, value):
    *keys, last = path
    for k in keys:
        cfg = cfg.setdefault(k, {})
    cfg[last] = value


RERUN_TABLE = [
    # the plotted cells: 2 more ROC/example plots, nothing recomputed
    ("roc_cells", ["evaluation", "roc_cells"], 3, {"plot_cell": 2, "study_config": 1, "all": 1}),
    ("study_name", ["study_name"], "other", {"study_config": 1, "all": 1}),
    (
        # one surrogate's learning rate: that model, its attack (and control), its clean
        # predictions, its predictions as a target of the 2 pneumothorax sets and the
        # target's predictions on its set; only the 2 pneumothorax sets are re-evaluated
        "one model's learning rate",
        ["models", "pneumothorax_small_s2", "training"],
        {"learning_rate": 0.001},
        {
            "train": 1,
            "attack": 1,
            "predict_clean": 1,
            "predict_adv": 3,
            "evaluate": 2,
            "compare": 1,  # the pneumothorax target's comparisons read the surrogate's set
            "checklist_runs": 1,  # the surrogate's own
            **AFTER_TABLES,
            "study_config": 1,
            "all": 1,
        },
    ),
    (
        # a second cardiomegaly model: trained, attacks its task, is a target of all 3
        # cardiomegaly sets; the other target predicts its new set; only cardiomegaly sets
        "new cardiomegaly model",
        ["models", "cardiomegaly_small_s2"],
        {"task": "cardiomegaly", "arch": "MobileNetV3Small", "seed": 2, "train_subset": "half_b"},
        {
            "train": 1,
            "attack": 1,
            "predict_clean": 1,
            "predict_adv": 4,
            "evaluate": 3,
            "compare": 1,  # the deployed cardiomegaly target gets a set to compare
            "checklist_runs": 1,  # the new model's white-box attack
            "tables": 1,
            "plot_headline": 1,
            "plot_heatmap": 2,
            "plot_auroc": 4,
            "study_config": 1,
            "all": 1,
        },
    ),
    (
        # a new attack for every grid entry: 4 sets (and their controls); its plots; the plotted cell
        # becomes the first (data task, attack) in order, cardiomegaly/fgsm
        "new attack",
        ["attacks", "fgsm"],
        {"method": "fgsm"},
        {
            **ATTACKS_ON,
            "checklist_runs": 3,  # each model's white-box fgsm gets its unbounded run
            "tables": 1,
            "plot_headline": 1,
            "plot_heatmap": 4,
            "plot_auroc": 6,
            "plot_cell": 1,
            "study_config": 1,
            "all": 1,
        },
    ),
    # a new eps: its sets only; plotted cells stay at the largest eps
    ("new eps", ["eps"], [8, 2], {**ATTACKS_ON, **AFTER_TABLES, "study_config": 1, "all": 1}),
    (
        "image size",
        ["data", "image_size"],
        40,
        {k: v for k, v in FULL_RUN.items() if k not in ("synthetic_download", "manifest")},
    ),
    # upstream of the manifest checkpoint: planned after the manifests ran (see below)
    (
        "split seed",
        ["split", "seed"],
        5,
        {k: v for k, v in FULL_RUN.items() if k not in ("synthetic_download", "manifest")},
    ),
    (
        "synthetic signal",
        ["data", "synthetic", "signal"],
        1.9,
        # the regenerated download also holds the box file (data.bboxes: auto) rule boxes checks
        {
            **{k: v for k, v in FULL_RUN.items() if k not in ("synthetic_download", "manifest")},
            "boxes": 1,
        },
    ),
    (
        "bootstrap resamples",
        ["evaluation", "n_bootstrap"],
        40,
        # the checklist's runs carry their AUROC's bootstrap CI
        {
            "evaluate": 4,
            "compare": 2,
            "checklist_runs": 3,
            **AFTER_TABLES,
            "study_config": 1,
            "all": 1,
        },
    ),
    (
        "plot setting",
        ["evaluation", "examples_per_class"],
        2,
        {"plot_cell": 1, "study_config": 1, "all": 1},
    ),
    ("cluster resources", ["resources", "gpu_mem_mb"], 9000, {"study_config": 1, "all": 1}),
    # the example plots without the radiologist boxes (the box rule's table is no input then)
    ("boxes off", ["data", "bboxes"], "none", {"plot_cell": 1, "study_config": 1, "all": 1}),
]


@pytest.mark.parametrize(
    ("what", "path", "value", "expected"), RERUN_TABLE, ids=[r[0] for r in RERUN_TABLE]
)
def test_a_config_edit_reruns_exactly_what_it_changes(
    root, run, tmp_path, what, path, value, expected
):
    cfg = _config(run)
    _set(cfg, path, value)
    wd = run
    if path[0] in ("split", "data") and path[:2] != ["data", "image_size"]:
        # A dry run cannot list the jobs after the manifest checkpoint before it ran: run the
        # ingest on a copy of the finished run, then plan the rest.
        wd = tmp_path / "copy"
        shutil.copytree(run, wd, symlinks=True)
        name = _write(wd, cfg, "edit.yaml")
        manifests = [f"results/manifests/{t}.csv" for t in cfg["tasks"]]
        snakemake(root, wd, *manifests, configfile=name)
    assert planned(root, wd, _write(wd, cfg, "edit.yaml")) == expected, what


# An edit of library code reruns what it can change and nothing else (plan.code: a rule's code
# version is its script's import closure; the layers of pyproject.toml keep the closures apart).
LIBRARY_EDITS = [
    # attack code: the attacks and everything after them, no training
    (
        "attacks/iterative.py",
        {**ATTACKS_ON, "checklist_runs": 3, **AFTER_TABLES, "plot_cell": 1, "all": 1},
    ),
    # a metric of the evaluation: the evaluations and everything after them
    ("evaluate/cells.py", {"evaluate": 4, "compare": 2, **AFTER_TABLES, "plot_cell": 1, "all": 1}),
    # plotting code: the plots only (the report is built from them by `--report`)
    (
        "evaluate/plots.py",
        {"plot_headline": 1, "plot_heatmap": 2, "plot_auroc": 3, "plot_cell": 1, "all": 1},
    ),
]


@pytest.mark.parametrize(("module", "expected"), LIBRARY_EDITS, ids=[m for m, _ in LIBRARY_EDITS])
def test_a_library_edit_reruns_what_it_can_change(root, run, tmp_path, module, expected):
    """A copy of the workflow with one library module edited, planned on the same results."""
    wf = workflow_copy(root, tmp_path / "wf")
    lib = wf / "workflow_scripts" / "cxrtransfer" / module
    lib.write_text(lib.read_text() + "\n# an edit\n")
    jobs = planned(wf, run)
    assert jobs == expected
    if module.startswith("attacks/"):
        assert "train" not in jobs


def test_damaged_file_is_rebuilt_after_verify(root, run, tmp_path):
    """A truncated attack cache: verify reports it; --remove deletes it and everything made
    from it, and the next run rebuilds exactly those."""
    r = run / "results"
    backup = tmp_path / "results"
    shutil.copytree(r, backup, symlinks=True)
    try:
        cache = r / "attacks" / "pneumothorax_small" / "pneumothorax" / "pgd" / "eps8" / "000.h5"
        cache.write_bytes(cache.read_bytes()[:-100])
        verify = [sys.executable, "-m", "cxrtransfer.verify", "--results", str(r)]
        env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts")}
        rep = subprocess.run(verify, capture_output=True, text=True, env=env)
        assert rep.returncode == 1 and "000.h5" in rep.stdout + rep.stderr
        subprocess.run([*verify, "--remove"], capture_output=True, text=True, env=env)
        assert not cache.exists()
        # the attack job (cache and control), both targets' predictions of the set and its
        # control, their evaluation, and (verify removes every table, plot and the report
        # config) the final products
        assert planned(root, run) == {
            "attack": 1,
            "predict_adv": 2,
            "evaluate": 1,
            "compare": 1,  # the pneumothorax target's comparisons read the set's predictions
            **AFTER_TABLES,
            "plot_cell": 1,
            "study_config": 1,
            "all": 1,
        }
    finally:
        shutil.rmtree(r)
        shutil.copytree(backup, r, symlinks=True)


def _report_results(html: str) -> dict:
    """The results a Snakemake report embeds ({path: {caption, ...}})."""
    m = re.search(r"var results = (\{.*?\});\s*\n", html, re.S)
    assert m, "the report embeds no results"
    return json.loads(m.group(1))


def test_report_builds(root, run):
    """Every plot of the run, the summary and the long table are in the report, each with its
    caption; the workflow description says what the bootstrap resamples."""
    r = snakemake(root, run, "--report", str(run / "report.html"))
    assert "Could not detect mimetype" not in r.stdout + r.stderr
    html = (run / "report.html").read_text(errors="replace")
    results = _report_results(html)
    plots = {str(p.relative_to(run)) for p in (run / "results" / "plots").rglob("*.png")}
    assert plots and plots <= set(results), sorted(plots - set(results))
    assert {"results/tables/summary.md", "results/tables/transfer.csv"} <= set(results)
    assert all(v["caption"].strip() for v in results.values())
    assert "draws test patients" in html


def test_bad_config_stops_before_any_job(root, tmp_path):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["eps"] = [4, 300]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(root, tmp_path, "-n", configfile="bad.yaml", check=False)
    assert r.returncode != 0 and "300" in r.stderr + r.stdout
    assert not (tmp_path / "results").exists()


def test_wrong_kaggle_dir_and_missing_credentials_are_explained(root, tmp_path):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["data"]["source"] = "kaggle"
    cfg["data"]["kaggle_dir"] = str(tmp_path / "nowhere")
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(cfg))
    r = snakemake(root, tmp_path, "-n", configfile="k.yaml", check=False)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "is not a directory" in out and "cxrtransfer.data.fetch" in out
    env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts"), "HOME": str(tmp_path)}
    env.pop("KAGGLE_USERNAME", None)
    fetch = [sys.executable, "-m", "cxrtransfer.data.fetch", str(tmp_path / "dl")]
    r = subprocess.run(fetch, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "not installed" in r.stderr or "credentials" in r.stderr


def _tree_hashes(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def download(run, tmp_path_factory):
    """A copy of the run's synthetic download, used as a user's Kaggle download."""
    d = tmp_path_factory.mktemp("user") / "nih-chest-xrays"
    shutil.copytree(run / "results" / "synthetic" / "nih-chest-xrays", d)
    return d


def _kaggle_config(root, wd, download):
    cfg = yaml.safe_load((root / "config" / "test.yaml").read_text())
    cfg["data"]["source"] = "kaggle"
    cfg["data"]["kaggle_dir"] = str(download)
    return _write(wd, cfg, "kaggle.yaml")


def test_no_run_touches_the_users_download(root, download, tmp_path):
    """Every file of the download hashed before and after: a plain run, --forceall, and a run
    after a code change of the ingest."""
    before = _tree_hashes(download)
    wd = tmp_path / "wd"
    wd.mkdir()
    name = _kaggle_config(root, wd, download)
    target = "results/shards/pneumothorax/summary.csv"
    snakemake(root, wd, target, configfile=name)
    snakemake(root, wd, target, "--forceall", configfile=name)
    wf = workflow_copy(root, tmp_path / "wf")
    ingest = wf / "workflow_scripts" / "cxrtransfer" / "data" / "ingest.py"
    ingest.write_text(ingest.read_text() + "\n# a code change\n")
    assert planned(wf, wd, name).get("manifest") == 2  # the code change reruns the ingest
    snakemake(wf, wd, target, configfile=name)
    assert _tree_hashes(download) == before


def test_switching_the_data_source_reruns_ingest(root, run, download, tmp_path):
    """On a tree built from the synthetic source: a Kaggle download reruns the manifests (and
    what follows); one without test_list.txt is a clear error, not the old manifests."""
    name = _kaggle_config(root, run, download)
    jobs = planned(root, run, name)
    assert jobs.get("manifest") == 2 and "synthetic_download" not in jobs
    broken = tmp_path / "broken"
    shutil.copytree(download, broken, ignore=shutil.ignore_patterns("images_*"))
    (broken / "test_list.txt").unlink()
    name = _kaggle_config(root, run, broken)
    r = snakemake(root, run, "-n", configfile=name, check=False)
    assert r.returncode != 0 and "missing test_list.txt" in r.stdout + r.stderr


def test_rejected_images_are_listed_when_the_manifest_fails(root, download, tmp_path):
    """Too many unreadable images fail the manifest job; the list of them survives it."""
    user = tmp_path / "user"
    shutil.copytree(download, user)
    pngs = sorted(user.rglob("*.png"))
    for p in pngs[: len(pngs) // 5]:
        p.write_bytes(b"")  # zero-byte files
    wd = tmp_path / "wd"
    wd.mkdir()
    name = _kaggle_config(root, wd, user)
    r = snakemake(root, wd, "results/manifests/pneumothorax.csv", configfile=name, check=False)
    assert r.returncode != 0
    assert not (wd / "results" / "manifests" / "pneumothorax.csv").exists()
    listed = pd.read_csv(wd / "results" / "logs" / "manifest" / "pneumothorax.rejected.csv")
    assert len(listed) > 0 and set(listed["reason"]) == {"zero-byte file"}
    log = (wd / "results" / "logs" / "manifest" / "pneumothorax.log").read_text()
    assert "rejected images listed in" in log and "Traceback" not in log


# ----------------------------------------------------------------------------------------------
# One extension of the finished run with every optional part at once (one Snakemake run instead
# of one per part: each run starts TensorFlow for every job and rebuilds the tables and plots).
# ----------------------------------------------------------------------------------------------

ENSEMBLE = ["pneumothorax_small_s2", "pneumothorax_small"]
MULTI = "chest_small"  # a multi-label model of the findings of both binary tasks


def _extend(cfg: dict) -> dict:
    """The run's config plus: an ensemble source and a Pneumothorax model's universal
    perturbation applied to Cardiomegaly images; a JPEG-defended target with the adaptive
    attack on it; synthetic expert labels; a multi-label model, a target of both tasks and,
    through the run's `sources: all, data_task: own`, a source on both (its two views)."""
    cfg["attacks"]["uap"] = {"method": "uap", "split": "val", "step_fraction": 0.25}
    for g in cfg["grid"]:
        g["attacks"] = ["pgd"]  # the existing sets, unchanged
    cfg["defences"] = {
        "pneu_jpeg": {"model": "pneumothorax_small", "defence": {"jpeg_quality": 50}}
    }
    cfg["data"]["expert_labels"] = "synthetic"
    cfg["data"]["synthetic"]["expert_labels"] = {"fraction": 0.6, "disagreement": 0.1}
    cfg["tasks"]["chest"] = {"labels": ["Pneumothorax", "Cardiomegaly"]}
    cfg["models"][MULTI] = {
        "task": "chest",
        "arch": "MobileNetV3Small",
        "seed": 3,
        "train_subset": "half_b",
    }
    cfg["grid"] += [
        {"sources": [ENSEMBLE], "data_task": "own", "attacks": ["pgd"]},
        {"sources": ["pneumothorax_small"], "data_task": "cardiomegaly", "attacks": ["uap"]},
        {"sources": ["pneu_jpeg"], "data_task": "own", "attacks": ["pgd"]},
    ]
    return cfg


# Pneumothorax targets after the extension: the run's 2, pneu_jpeg, chest_small@pneumothorax;
# Cardiomegaly targets: the run's 1, chest_small@cardiomegaly.
EXTENSION_JOBS = {
    "synthetic_expert_labels": 1,
    "expert_labels": 1,  # pneumothorax only (Cardiomegaly has no expert column)
    "shard": 4,  # the multi-label task's (2 train shards: it has every image)
    "shard_summary": 1,
    "train": 1,  # the multi-label model
    "finding_view": 2,  # its views of both binary tasks
    "ensemble": 1,
    "defend": 1,
    "uap": 1,
    # the ensemble's, the defended model's and both views' sets; the UAP applied
    "attack": 5,
    "predict_clean": 3,  # the new targets: pneu_jpeg and both views
    # Pneumothorax: the run's 2 sets on the 2 new targets + the 3 new sets on all 4 targets;
    # Cardiomegaly: the run's 2 sets on the view + the 2 new sets on both targets
    "predict_adv": 2 * 2 + 3 * 4 + 2 * 1 + 2 * 2,
    "evaluate": 5 + 4,  # every set: each has a new target (and Pneumothorax expert labels)
    "compare": 2,  # both deployed targets' tasks get new sets to compare
    "checklist_runs": 3,  # pneu_jpeg and both views are attacked white-box
    "tables": 1,
    "plot_headline": 1,
    "plot_heatmap": 3,  # the run's 2 (read the new table) + cardiomegaly/uap
    "plot_auroc": 4 + 2 + 2,  # per (data task, attack, target)
    "study_config": 1,
    "all": 1,
}


def test_an_extended_study_adds_only_its_own_jobs(root, run, tmp_path):
    """On a copy of the finished run, the optional parts add exactly their own jobs, run end to
    end and show up in the tables with what they are: an ensemble source, a universal
    perturbation, a defended target and the adaptive attack on it, expert labels, and a
    multi-label model's views as targets and as a source."""
    wd = tmp_path / "copy"
    shutil.copytree(run, wd, symlinks=True)
    name = _write(wd, _extend(_config(wd)), "extended.yaml")
    # the new task's manifest first (a checkpoint: the jobs after it are planned once it ran)
    snakemake(root, wd, "results/manifests/chest.csv", configfile=name)
    assert planned(root, wd, name) == EXTENSION_JOBS
    snakemake(root, wd, configfile=name)
    r = wd / "results"
    df = pd.read_csv(r / "tables" / "transfer.csv")
    real = df[~df["attack"].str.endswith("__shuffled")]
    summary = (r / "tables" / "summary.md").read_text()
    _check_ensemble_and_uap(r, real, summary)
    _check_defended(r, real, summary)
    _check_expert_labels(r, df, real, summary)
    _check_multilabel(r, real)
    # verify knows every new product, and a second plan has nothing to do
    env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts")}
    v = subprocess.run(
        [sys.executable, "-m", "cxrtransfer.verify", "--results", "results"],
        cwd=wd,
        env=env,
        capture_output=True,
        text=True,
    )
    assert v.returncode == 0, v.stdout + v.stderr
    assert planned(root, wd, name) == {}


def _check_ensemble_and_uap(r, real, summary):
    joined = "+".join(ENSEMBLE)
    m = json.loads((r / "models" / joined / "metrics.json").read_text())
    assert m["members"] == ENSEMBLE and 0 < m["threshold"] < 1 and m["val"]["auc"] > 0.6
    uap = r / "uap" / "pneumothorax_small" / "uap" / "eps8.h5"
    with h5py.File(uap) as f:
        assert f.attrs["split"] == "val" and 7 <= np.abs(f["delta"][()]).max() <= 8
        assert len(json.loads(f.attrs["step_losses"])) == f.attrs["steps"] == 16
    e = real[real["source"] == joined].set_index("target")
    # the ensemble's set is evaluated on every Pneumothorax target; its relation comes from its
    # members' (on a member: "ensemble incl. the target"), never a single-model label
    assert set(ENSEMBLE) <= set(e.index)
    assert (e.loc[ENSEMBLE, "relation"] == "ensemble incl. the target").all()
    assert e["relation"].str.startswith("ensemble").all(), e["relation"]
    assert "## Ensembles beside their members" in summary
    assert "pneumothorax_small: white-box" in e.loc["pneumothorax_small", "member_relations"]
    assert "pneumothorax_small_s2: surrogate" in e.loc["pneumothorax_small", "member_relations"]
    u = real[(real["attack"] == "uap") & (real["target"] == "cardiomegaly_small")].iloc[0]
    assert u["relation"] == "cross-task"
    assert 0 <= u["flip_rate"] <= 1 and u["mean_linf"] <= 8 / 255 + 1e-6
    # every L-inf row reached its label's budget (to one grey level)
    assert (real["achieved_linf"] >= np.floor(real["eps"]) - 1).all(), real["achieved_linf"]
    assert "flip rate" in summary


def _check_defended(r, real, summary):
    m = json.loads((r / "models" / "pneu_jpeg" / "metrics.json").read_text())
    base = json.loads((r / "models" / "pneumothorax_small" / "metrics.json").read_text())
    assert m["base_model"] == "pneumothorax_small" and m["defence"] == {"jpeg_quality": 50}
    assert m["network_weights_sha256"] == base["weights_sha256"]
    assert m["base_checkpoint_sha256"] == base["checkpoint_sha256"]
    assert 0 < m["threshold"] < 1
    cells = real[real["attack"] == "pgd"].set_index(["source", "target"])
    assert cells.loc[("pneumothorax_small", "pneu_jpeg"), "relation"] == (
        "same network, other defence"
    )
    assert cells.loc[("pneu_jpeg", "pneu_jpeg"), "relation"] == "white-box"
    assert cells.loc[("pneu_jpeg", "pneumothorax_small"), "relation"] == (
        "same network, other defence"
    )
    rows = re.sub(" {2,}", " ", summary).splitlines()  # the padding of tabulate's columns
    row = [ln for ln in rows if ln.startswith("| pneu_jpeg | jpeg_quality=50 |")]
    assert len(row) == 1 and "n/a" not in row[0], summary
    checks = pd.read_csv(r / "tables" / "checklist.csv", keep_default_na=False)
    adaptive = checks[
        (checks["check"] == "adaptive >= non-adaptive") & (checks["target"] == "pneu_jpeg")
    ]
    assert len(adaptive) == 1 and adaptive["status"].iloc[0] in ("pass", "flag"), adaptive


def _check_expert_labels(r, df, real, summary):
    labels = pd.read_csv(r / "expert_labels" / "pneumothorax.csv", dtype={"image_index": str})
    pneu = real[real["data_task"] == "pneumothorax"]
    card = real[real["data_task"] == "cardiomegaly"]
    for col in (
        "n_expert",
        "expert_adv_auroc",
        "expert_adv_auroc_ci_low",
        "expert_fooling_rate",
        "expert_nlp_adv_auroc",
        "expert_nlp_fooling_rate",
        "expert_note",
    ):
        assert col in df.columns, col
    test = pd.read_csv(r / "manifests" / "pneumothorax.csv", dtype={"image_index": str})
    n_test = int(test["image_index"][test["split"] == "test"].isin(labels["image_index"]).sum())
    assert 0 < n_test and (pneu["n_expert"] == n_test).all()
    assert (pneu["expert_n_images"] == n_test).all() and pneu["expert_adv_auroc"].notna().all()
    assert card["n_expert"].isna().all()  # not evaluated against expert labels
    assert "## Expert labels" in summary
    assert (
        f"{n_test} of {int(pneu['n_images'].iloc[0])} test images have an expert label" in summary
    )
    assert "Data task cardiomegaly: its finding has no expert-label column" in summary


def _check_multilabel(r, real):
    m = json.loads((r / "models" / MULTI / "metrics.json").read_text())
    assert m["output"] == "sigmoid" and m["output_columns"] == ["Pneumothorax", "Cardiomegaly"]
    assert set(m["val"]["auc_per_label"]) == set(m["output_columns"]) and m["threshold"] is None
    binary = json.loads((r / "models" / "pneumothorax_small" / "metrics.json").read_text())
    assert binary["output_columns"] == ["negative", "Pneumothorax"]
    for task, column in (("pneumothorax", 0), ("cardiomegaly", 1)):
        view = f"{MULTI}@{task}"
        v = json.loads((r / "models" / view / "metrics.json").read_text())
        assert v["multi_label_model"] == MULTI and v["output_column"] == column
        assert 0 < v["threshold"] < 1
        cells = real[(real["target"] == view) & (real["data_task"] == task)]
        assert len(cells) and cells["adv_auroc"].notna().all()  # a target of its task's sets
    # a source: white-box on its own view, a transfer source for the binary models; the
    # multi-label model trained on half_b, so it shares no patient with the half_a target
    own = real[real["source"] == f"{MULTI}@pneumothorax"].set_index("target")
    assert own.loc[f"{MULTI}@pneumothorax", "relation"] == "white-box"
    assert own.loc["pneumothorax_small", "patient_overlap"] == 0
    assert own.loc["pneumothorax_small", "relation"] == "surrogate"
