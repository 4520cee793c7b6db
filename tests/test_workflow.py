"""End to end: real Snakemake runs of config/test.yaml, reruns, lint and the report."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
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
    snakemake(root, wd)
    return wd


def _config(wd, name="config.yaml"):
    return yaml.safe_load((wd / name).read_text())


def _write(wd, cfg, name):
    (wd / name).write_text(yaml.safe_dump(cfg))  # sorted keys: another order than the run
    return name


def test_second_dry_run_has_nothing_to_do(root, run):
    assert planned(root, run) == {}


def test_reordered_config_reruns_nothing(root, run):
    """Params are compared as canonical (sorted) settings: key order in the YAML is irrelevant."""
    assert planned(root, run, _write(run, _config(run), "sorted.yaml")) == {}


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
                "n_quantisation_unfooled",
            ):
                assert k in h.attrs, k
            names = h["image_index"][...]
        with h5py.File(run / shard) as s:
            clean = s["images"][...]
            assert (s["image_index"][...] == names).all()
        assert np.abs(adv.astype(int) - clean.astype(int)).max() <= int(eps)


def test_transfer_table_is_reproducible_from_prediction_files(run):
    """Independent recomputation (plain numpy + sklearn) of transfer.csv's point estimates."""
    df = pd.read_csv(run / "results" / "tables" / "transfer.csv")
    assert len(df) > 0
    thr = {}
    for m in (run / "results" / "models").iterdir():
        thr[m.name] = json.loads((m / "metrics.json").read_text())["threshold"]
    for _, row in df.iterrows():
        base = run / "results" / "predictions" / row["target"]
        eps = f"{row['eps']:g}"
        clean = pd.concat(
            pd.read_csv(p, dtype={"image_index": str})
            for p in sorted((base / "clean" / row["data_task"]).glob("*.csv"))
        )
        adv = pd.concat(
            pd.read_csv(p, dtype={"image_index": str})
            for p in sorted(
                (
                    base / "adv" / row["source"] / row["data_task"] / row["attack"] / f"eps{eps}"
                ).glob("*.csv")
            )
        )
        clean = clean.set_index("image_index").sort_index()
        adv = adv.set_index("image_index").loc[clean.index]
        y = clean["label"].to_numpy()
        t, ts = thr[row["target"]], thr[row["source"]]
        cp, ap = clean["prob"].to_numpy() >= t, adv["prob"].to_numpy() >= t
        sp = adv["source_adv_prob"].to_numpy() >= ts
        assert row["clean_auroc"] == pytest.approx(roc_auc_score(y, clean["prob"]), abs=1e-9)
        assert row["adv_auroc"] == pytest.approx(roc_auc_score(y, adv["prob"]), abs=1e-9)
        assert row["adv_accuracy"] == pytest.approx(np.mean(ap == y), abs=1e-12)
        correct = cp == y
        assert row["n_clean_correct"] == correct.sum()
        assert row["attack_success_rate"] == pytest.approx(
            np.mean(ap[correct] != y[correct]), abs=1e-12
        )
        assert row["fooling_rate"] == pytest.approx(np.mean(ap != y), abs=1e-12)
        base_set = correct & (sp != y)
        assert row["n_transfer_base"] == base_set.sum()
        if base_set.any():
            assert row["transfer_rate"] == pytest.approx(
                np.mean(ap[base_set] != y[base_set]), abs=1e-12
            )
        assert row["mean_linf"] == pytest.approx(adv["linf"].mean(), abs=1e-6)
        assert row["clean_auroc_ci_low"] <= row["clean_auroc"] <= row["clean_auroc_ci_high"]


def test_white_box_pgd_breaks_every_source(run):
    """Acceptance: white-box PGD at the largest eps drives each source's AUROC below 0.10."""
    df = pd.read_csv(run / "results" / "tables" / "transfer.csv")
    wb = df[(df["relation"] == "white-box") & (df["eps"] == df["eps"].max())]
    assert set(wb["source"]) == set(_config(run)["models"])
    assert (wb["clean_auroc"] > 0.6).all(), wb[["source", "clean_auroc"]]
    assert (wb["adv_auroc"] < 0.10).all(), wb[["source", "adv_auroc"]]


def test_changing_image_size_reruns_shards_not_the_generator(root, run):
    cfg = _config(run)
    cfg["data"]["image_size"] = 40
    jobs = planned(root, run, _write(run, cfg, "size.yaml"))
    assert jobs.get("shard", 0) > 0 and jobs.get("train", 0) == len(cfg["models"])
    assert "synthetic_download" not in jobs and "manifest" not in jobs


def test_changing_eps_reruns_only_attack_and_downstream(root, run):
    cfg = _config(run)
    cfg["eps"] = [*cfg["eps"], 2]
    jobs = planned(root, run, _write(run, cfg, "eps.yaml"))
    assert (
        jobs.get("attack", 0) > 0 and jobs.get("predict_adv", 0) > 0 and jobs.get("evaluate", 0) > 0
    )
    assert not set(jobs) & {
        "synthetic_download",
        "manifest",
        "shard",
        "shard_summary",
        "train",
        "predict_clean",
    }


def test_changing_one_models_learning_rate_retrains_only_that_model(root, run):
    cfg = _config(run)
    cfg["models"]["pneumothorax_small_s2"]["training"] = {"learning_rate": 0.001}
    name = _write(run, cfg, "lr.yaml")
    jobs = planned(root, run, name)
    assert jobs.get("train") == 1
    assert not set(jobs) & {"synthetic_download", "manifest", "shard", "shard_summary"}
    # only the retrained model's clean predictions are redone (one job per test shard)
    n_test_shards = len(list((run / "results" / "shards" / "pneumothorax" / "test").glob("*.h5")))
    assert jobs.get("predict_clean") == n_test_shards
    out = snakemake(root, run, "-n", configfile=name).stdout
    trained = re.findall(r"rule train:\n(?:.*\n)*?\s+wildcards: model=(\S+)", out)
    assert trained == ["pneumothorax_small_s2"]


def test_killed_attack_job_is_recomputed_alone(root, run):
    """A killed attack job leaves no output (atomic writes), so nothing downstream of it
    exists either: the rerun redoes that shard's attack and what depends on it, nothing else."""
    r = run / "results"
    part = Path("pneumothorax_small") / "pneumothorax" / "pgd" / "eps8"
    attack = sorted((r / "attacks" / part).glob("*.h5"))[0]
    downstream = [
        *sorted((r / "predictions").glob(f"*/adv/{part.as_posix()}/{attack.stem}.csv")),
        r / "metrics" / "sets" / part.parent / "eps8.json",
        r / "tables" / "transfer.csv",  # the run never got this far
    ]
    saved = {p: p.read_bytes() for p in [attack, *downstream]}
    for p in saved:
        p.unlink()
    try:
        jobs = planned(root, run)
        assert jobs.get("attack") == 1
        assert jobs.get("predict_adv") == len(downstream) - 2 and jobs.get("evaluate") == 1
        assert jobs.get("tables") == 1
        assert not set(jobs) & {"train", "shard", "predict_clean", "manifest"}
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


def test_report_builds(root, run):
    snakemake(root, run, "--report", str(run / "report.html"))
    html = (run / "report.html").read_text(errors="replace")
    assert "synthetic" in html and len(html) > 10_000


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
    assert r.returncode != 0 and "holds no Data_Entry_2017.csv" in out and "fetch_kaggle" in out
    r = snakemake(root, tmp_path, "fetch_kaggle", configfile="k.yaml", check=False)
    log = (tmp_path / "results" / "logs" / "fetch_kaggle.log").read_text()
    assert r.returncode != 0
    assert "kaggle" in log and ("not installed" in log or "credentials" in log)
    assert "Traceback" not in log
