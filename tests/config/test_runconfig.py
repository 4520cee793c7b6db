"""A job computes with exactly the config its run planned (cxrtransfer.config.runconfig).

Unit tests of the check and the records, and real Snakemake job processes started the way a
cluster executor starts them (``--mode remote --target-jobs ... --configfiles ...``) in a copy
of the workflow whose directory holds the default config/config.yaml, as a user's checkout
does when they run a cluster profile from it.
"""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import workflow_copy
from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.config.job import script_summary
from cxrtransfer.evaluate.predictions import CLEAN_COLUMNS, read_prediction_file
from cxrtransfer.evaluate.sets import read_model_metrics


def test_the_hash_ignores_key_order_and_sees_every_value():
    a = {"models": {"m1": {"arch": "ResNet50", "seed": 1}, "m2": {"arch": "MobileNetV2"}}}
    b = {"models": {"m2": {"arch": "MobileNetV2"}, "m1": {"seed": 1, "arch": "ResNet50"}}}
    assert runconfig.config_hash(a) == runconfig.config_hash(b)
    c = {"models": {"m2": {"arch": "MobileNetV2"}, "m1": {"seed": 2, "arch": "ResNet50"}}}
    assert runconfig.config_hash(a) != runconfig.config_hash(c)


def test_a_job_refuses_another_config_than_planned():
    env = {}
    planned = runconfig.publish_plan({"eps": [2, 8]}, env)
    assert env[runconfig.ENV] == planned
    record = runconfig.check_job({"eps": [2, 8]}, env)
    assert record == {runconfig.RAN_WITH: planned, runconfig.PLANNED: planned}
    with pytest.raises(WorkflowError, match=rf"not the config its run planned \(sha256 {planned}"):
        runconfig.check_job({"eps": [2, 8], "models": {"demo": {}}}, env)
    with pytest.raises(WorkflowError, match=runconfig.ENV):
        runconfig.check_job({"eps": [2, 8]}, {})


def test_records_without_or_with_another_config_are_refused():
    with pytest.raises(WorkflowError, match="does not record the config"):
        runconfig.check_record({}, "x.json")
    with pytest.raises(WorkflowError, match="not with the config"):
        runconfig.check_record({runconfig.RAN_WITH: "a", runconfig.PLANNED: "b"}, "x.json")
    runconfig.check_record({runconfig.RAN_WITH: "a", runconfig.PLANNED: "a"}, "x.json")


def _predictions(path, ran, planned):
    row = {"image_index": "1_000.png", "patient_id": 1, "label": 1, "prob": 0.7}
    row |= {"checkpoint_sha256": "c" * 64, runconfig.RAN_WITH: ran, runconfig.PLANNED: planned}
    pd.DataFrame([row]).to_csv(path, index=False)
    return path


def test_evaluation_inputs_made_under_another_config_are_refused(tmp_path):
    ok = _predictions(tmp_path / "ok.csv", "0123456789abcdef", "0123456789abcdef")
    assert list(read_prediction_file(ok, CLEAN_COLUMNS)["prob"]) == [0.7]
    bad = _predictions(tmp_path / "bad.csv", "0123456789abcdef", "fedcba9876543210")
    with pytest.raises(WorkflowError, match="bad.csv.*not with the config fedcba9876543210"):
        read_prediction_file(bad, CLEAN_COLUMNS)
    metrics = {"threshold": 0.5, "checkpoint_sha256": "c" * 64}
    (tmp_path / "old.json").write_text(json.dumps(metrics))
    with pytest.raises(WorkflowError, match="old.json.*does not record the config"):
        read_model_metrics(tmp_path / "old.json")
    (tmp_path / "m.json").write_text(json.dumps({**metrics, **runconfig.job_record()}))
    assert read_model_metrics(tmp_path / "m.json")["threshold"] == 0.5


# ---- real Snakemake processes ----------------------------------------------------------------

STUDY_CONFIG = "results/report/config.yaml"


def _snakemake(wf, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=wf,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _job(wf, planned, *configfiles):
    """The study_config job, started as a cluster executor starts a job: a new Snakemake
    process in remote mode given the run's config files, with the run's environment."""
    env = {**os.environ, runconfig.ENV: planned, "PYTHONPATH": str(wf / "workflow_scripts")}
    return _snakemake(
        wf,
        "--target-jobs",
        "study_config:",
        "--allowed-rules",
        "study_config",
        "--cores",
        "1",
        "--force",
        "--nolock",
        "--mode",
        "remote",
        "--configfiles",
        *configfiles,
        env=env,
    )


@pytest.fixture(scope="module")
def planned_run(root, tmp_path_factory):
    """A copy of the workflow (with the default config/config.yaml in its directory) that ran
    the tiny study's study_config job; returns it and the config hash the run planned."""
    wf = workflow_copy(root, tmp_path_factory.mktemp("wf"))
    (wf / "tiny.yaml").write_text((root / "config" / "test.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(wf / "workflow_scripts")}
    r = _snakemake(wf, STUDY_CONFIG, "--cores", "1", "--configfile", "tiny.yaml", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    log = (wf / "results" / "logs" / "study_config.log").read_text()
    (planned,) = [w.split()[-3] for w in log.splitlines() if "(as planned)" in w]
    return wf, planned


def test_a_cluster_job_reads_only_the_runs_config_files(planned_run):
    """Run from the workflow's directory (config/config.yaml present): the job gets exactly the
    run's --configfile, not the default study merged with it."""
    wf, planned = planned_run
    (wf / STUDY_CONFIG).unlink()
    r = _job(wf, planned, "tiny.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    written = yaml.safe_load((wf / STUDY_CONFIG).read_text())
    tiny = yaml.safe_load((wf / "tiny.yaml").read_text())
    assert sorted(written["models"]) == sorted(tiny["models"])
    assert written["study_name"] == tiny["study_name"]
    log = (wf / "results" / "logs" / "study_config.log").read_text()
    assert f"config sha256 {planned} (as planned)" in log
    # the docstring of the script that Snakemake ran with its preamble in front
    first, *_, last = log.splitlines()
    summary = script_summary(wf / "workflow_scripts" / "study_config.py")
    assert first.endswith(f" INFO rule study_config: {summary}"), first
    assert last.endswith(f" INFO rule study_config: wrote 1 file: {STUDY_CONFIG}"), last


def test_a_job_given_a_merged_config_refuses_and_writes_nothing(planned_run):
    """The merge that Snakemake's jobs did before (config/config.yaml extended by the run's
    file): the job refuses with both hashes, before it computes anything."""
    wf, planned = planned_run
    (wf / STUDY_CONFIG).unlink(missing_ok=True)
    r = _job(wf, planned, "config/config.yaml", "tiny.yaml")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert f"is not the config its run planned (sha256 {planned})" in out, out[-3000:]
    assert not (wf / STUDY_CONFIG).exists()
