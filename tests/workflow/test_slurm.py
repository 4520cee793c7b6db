"""The workflow on a real single-node SLURM cluster started on this machine.

tests/workflow/slurm/start_cluster.sh installs Debian's slurm-wlm and munge if they are missing and
starts munged, slurmctld and slurmd (root only); the module fixture stops them again.
Snakemake runs with the user-facing profile profiles/slurm plus the overrides of
tests/workflow/slurm/profile (partition `cpu`, no account, short limits, squeue status checks).

Every job is proven to have gone through SLURM by evidence that does not depend on
squeue or sacct: the SLURM job id Snakemake reports for a job is the $SLURM_JOB_ID the job's
own shell saw (trivial workflow), the SLURM output file of that id exists and holds the
job's Snakemake log, and slurmctld's own log records the allocation (with its partition)
and the completion of that job id. The fan-out rules go through SLURM job arrays (the
`slurm-array-jobs` of profiles/slurm); a job that ran as an array task has the id
`<array job id>_<task>`, which is also how slurmctld's log names it.

A training job given a 1-minute limit is killed by SLURM (TIMEOUT, in SLURM's job
completion record and `scontrol show job`), resubmitted by Snakemake with a 2-minute limit
and resumes from its last finished epoch. The test cluster has no accounting database, so
`sacct` cannot be asked; slurm.conf writes SLURM's per-job completion record
(jobcomp/filetxt) instead.

Run only these: `pytest -m slurm`; everything else: `pytest -m "not slurm"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import yaml
from conftest import workflow_copy

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SLURM_TESTS = Path(__file__).resolve().parent / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/cxrtransfer-slurm"))
PROFILE_ARGS = [
    "--workflow-profile",
    "none",
    "--profile",
    str(ROOT / "profiles" / "slurm"),
    "--profile",
    str(SLURM_TESTS / "profile"),
]


def snakefile_localrules() -> set[str]:
    """The rules the Snakefile's ``localrules:`` block names (light rules run by Snakemake on
    the submit host)."""
    m = re.search(r"^localrules:\n((?:    \w+,?\n)+)", (ROOT / "Snakefile").read_text(), re.M)
    return set(re.findall(r"\w+", m.group(1))) if m else set()


# Rules that may run on the submit host instead of through SLURM: Snakemake runs a rule
# without shell/script/run (the target rule) locally by itself, and the Snakefile's
# localrules.
LOCAL_RULES = {"all"} | snakefile_localrules()
# Wall-clock limits for the snakemake runs (each is wrapped in `timeout -k 10 LIMIT`).
TRIVIAL_LIMIT = 300
WORKFLOW_LIMIT = 2400
TIMEOUT_LIMIT = 900

SUBMITTED_RE = re.compile(
    r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", re.M
)
SUBMITTED_ARRAY_RE = re.compile(
    r"^Submitted array job with Snakemake IDs ([\d,]+) and SLURM job ID (\d+)\. "
    r"The individual task IDs are (\d+)-(\d+)\.$",
    re.M,
)
FINISHED_RE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+)\)$", re.M)
# slurmctld names an array task "JobId=<array job id>_<task>(<its own job id>)"
CTLD_JOB = r"JobId=(\d+(?:_\d+)?)(?:\(\d+\))?"
JOB_BLOCK_RE = re.compile(
    r"^(localrule|rule|localcheckpoint|checkpoint) (\S+):\n((?:    .*\n)*?)    jobid: (\d+)\n"
    r"((?:    .*\n)*)",
    re.M,
)


def snakemake_exe() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    if exe.is_file():
        return str(exe)
    found = shutil.which("snakemake")
    if not found:
        pytest.fail("snakemake not found next to the running Python nor on PATH")
    return found


def tail(text: str, n: int = 80) -> str:
    return "\n".join(text.splitlines()[-n:])


# ----------------------------------------------------------------------------------------
# cluster fixture
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm_env():
    """Start the test cluster; yield the environment for snakemake/SLURM client calls."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (apt-get install, munged, slurmd)")
    env = dict(os.environ)
    env["SLURM_CONF"] = str(STATE_DIR / "slurm.conf")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The jobs import cxrtransfer from this checkout, not from wherever the virtualenv's
    # editable install points (another worktree of the project, say).
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "workflow_scripts"), env.get("PYTHONPATH", "")) if p
    )
    try:
        # Generous: on a fresh machine this includes `apt-get install slurm-wlm munge`.
        proc = subprocess.run(
            ["bash", str(SLURM_TESTS / "start_cluster.sh"), str(STATE_DIR)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"start_cluster.sh failed (exit {proc.returncode}):\n"
                f"{tail(proc.stdout, 20)}\n{tail(proc.stderr, 120)}"
            )
        yield env
    finally:
        subprocess.run(
            ["bash", str(SLURM_TESTS / "stop_cluster.sh"), str(STATE_DIR)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
        )


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


class SnakemakeRun:
    """snakemake started in the background under `timeout -k 10 limit` (it ignores SIGTERM
    while it polls SLURM), its output going to `log`."""

    def __init__(self, args, *, cwd: Path, env: dict, log: Path, limit: int):
        self.cmd = ["timeout", "-k", "10", str(limit), snakemake_exe(), *map(str, args)]
        self.log = log
        self._fh = open(log, "w")
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
        )

    def wait(self) -> str:
        """Wait for the run; return its output, fail the test with its tail if it failed."""
        rc = self.proc.wait()
        self._fh.close()
        text = self.log.read_text(errors="replace")
        if rc != 0:
            what = "timed out" if rc in (124, 137) else f"failed (exit {rc})"
            pytest.fail(
                f"snakemake {what}: {' '.join(self.cmd)}\nfull log: {self.log}\n{tail(text)}"
            )
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._fh.close()


class LogWatcher(threading.Thread):
    """Keeps every version of a log file that each attempt of a job rewrites from the start:
    {first line (timestamped, so one per attempt): the longest text seen}."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.versions, self.done = path, {}, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                text = self.path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                key = text.splitlines()[0]
                if len(text) > len(self.versions.get(key, "")):
                    self.versions[key] = text

    def stop(self) -> list[str]:
        self.done.set()
        self.join()
        return list(self.versions.values())


def run_snakemake(args, *, cwd: Path, env: dict, log: Path, limit: int) -> str:
    return SnakemakeRun(args, cwd=cwd, env=env, log=log, limit=limit).wait()


def strip_embedded_logs(text: str) -> str:
    """Snakemake's log without the job logs it quotes for failed jobs ("Logfile X:" and a
    block between two lines of '='): a quoted SLURM log holds the job's inner Snakemake run,
    whose own "localrule NAME: ... jobid: 0" blocks must not count as jobs of this run."""
    out, lines, i = [], text.splitlines(keepends=True), 0
    while i < len(lines):
        if (
            lines[i].startswith("Logfile ")
            and i + 1 < len(lines)
            and re.fullmatch(r"={20,}\n?", lines[i + 1])
        ):
            i += 2
            while i < len(lines) and not re.fullmatch(r"={20,}\n?", lines[i]):
                i += 1
            i += 1
            continue
        out.append(lines[i])
        i += 1
    return "".join(out)


def parse_jobs(text: str, slurm_logdir: Path | None = None) -> dict[int, dict]:
    """Snakemake job id -> {rule, local, resources, slurm_ids: [...], logs: [...], arrays,
    finished} from a log. SLURM ids are strings: "1234", or "1234_2" for task 2 of array
    job 1234, whose output file the plugin writes as <slurm_logdir>/rule_<rule>/1234_2.log
    (one file per task, without the wildcards folder of single jobs)."""
    jobs: dict[int, dict] = {}
    text = strip_embedded_logs(text)
    for m in JOB_BLOCK_RE.finditer(text):
        kind, rule, body_before, jobid, body_after = m.groups()
        body = body_before + body_after
        res = re.search(r"^    resources: (.*)$", body, re.M)
        jobs.setdefault(int(jobid), {"slurm_ids": [], "logs": [], "finished": False}).update(
            rule=rule,
            local=kind.startswith("local"),
            resources=res.group(1) if res else "",
        )
    for jobid, slurm_id, slurm_log in SUBMITTED_RE.findall(text):
        job = jobs.setdefault(int(jobid), {"slurm_ids": [], "logs": [], "finished": False})
        job["slurm_ids"].append(slurm_id)
        job["logs"].append(Path(slurm_log))
    for ids, array_id, first, last in SUBMITTED_ARRAY_RE.findall(text):
        members = [int(j) for j in ids.split(",")]
        assert len(members) == int(last) - int(first) + 1, (ids, first, last)
        for task, jobid in enumerate(members, start=int(first)):
            job = jobs.setdefault(jobid, {"slurm_ids": [], "logs": [], "finished": False})
            job["slurm_ids"].append(f"{array_id}_{task}")
            job["arrays"] = job.get("arrays", 0) + 1
            assert slurm_logdir is not None, "array jobs in the log: pass slurm_logdir"
            job["logs"].append(slurm_logdir / f"rule_{job['rule']}" / f"{array_id}_{task}.log")
    for jobid, rule in FINISHED_RE.findall(text):
        job = jobs.setdefault(int(jobid), {"slurm_ids": [], "logs": [], "finished": False})
        job["finished"] = True
        job.setdefault("rule", rule)
    return jobs


def ctld_log() -> str:
    return (STATE_DIR / "log" / "slurmctld.log").read_text(errors="replace")


def ctld_allocations(text: str) -> dict[str, str]:
    """SLURM job id -> partition it was started in, from slurmctld's log (the main
    scheduler logs 'sched: Allocate JobId=..', the backfill scheduler '_start_job')."""
    started = dict(re.findall(rf"sched: Allocate {CTLD_JOB} NodeList=\S+ .*?Partition=(\S+)", text))
    started.update(
        re.findall(rf"sched/backfill: _start_job: Started {CTLD_JOB} in (\S+) on ", text)
    )
    return started


def ctld_completed_ok(text: str) -> set[str]:
    """SLURM job ids whose batch script exited 0, from slurmctld's log."""
    return set(re.findall(rf"_job_complete: {CTLD_JOB} WEXITSTATUS 0\b", text))


def jobcomp_states() -> dict[str, dict[str, str]]:
    """SLURM job id -> SLURM's completion record of the job (JobState, TimeLimit in
    minutes, ...), from the jobcomp/filetxt file slurm.conf configures."""
    path = STATE_DIR / "log" / "jobcomp.txt"
    records = {}
    for line in path.read_text(errors="replace").splitlines():
        rec = dict(re.findall(r"(\S+?)=(\S*)", line))
        if "JobId" in rec:
            records[rec["JobId"]] = rec
    return records


def scontrol_job(job_id: str, env: dict) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", str(job_id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def assert_all_jobs_went_through_slurm(jobs: dict[int, dict]) -> dict[int, dict]:
    """Every finished non-local job has a SLURM job id; local ones are only LOCAL_RULES.
    Returns the SLURM jobs."""
    assert jobs, "no jobs found in snakemake's log"
    unfinished = {j: v.get("rule") for j, v in jobs.items() if not v["finished"]}
    assert not unfinished, f"jobs that never finished: {unfinished}"
    local = {v["rule"] for v in jobs.values() if v["local"]}
    assert local <= LOCAL_RULES, (
        f"rules run on the submit host instead of SLURM: {local - LOCAL_RULES}"
    )
    remote = {j: v for j, v in jobs.items() if not v["local"]}
    assert remote, "no job went through SLURM"
    no_id = {j: v["rule"] for j, v in remote.items() if not v["slurm_ids"]}
    assert not no_id, f"jobs without a SLURM job id: {no_id}"
    return remote


def assert_slurm_evidence(remote: dict[int, dict], ctld: str) -> None:
    """The last SLURM job of every Snakemake job left its output file and was allocated
    and completed with exit 0 according to slurmctld's own log."""
    allocated = ctld_allocations(ctld)
    completed = ctld_completed_ok(ctld)
    for job in remote.values():
        sid, slog = job["slurm_ids"][-1], job["logs"][-1]
        assert slog.name == f"{sid}.log", slog
        assert slog.is_file(), f"SLURM output file of job {sid} ({job['rule']}) missing: {slog}"
        assert re.search(
            rf"^(local)?(rule|checkpoint) {re.escape(job['rule'])}:", slog.read_text(), re.M
        ), f"{slog} does not hold the Snakemake log of rule {job['rule']}"
        assert sid in allocated, f"slurmctld never allocated SLURM job {sid} ({job['rule']})"
        assert sid in completed, f"slurmctld has no successful completion of job {sid}"


def result_files(workdir: Path) -> set[str]:
    """Files under results/, with the run-specific names of TensorBoard event files
    (host, pid, time; one per training attempt) reduced to a pattern."""
    return {
        re.sub(r"events\.out\.tfevents\..*$", "events.out.tfevents.*", str(p.relative_to(workdir)))
        for p in (workdir / "results").rglob("*")
        if p.is_file() or p.is_symlink()
    }


# ----------------------------------------------------------------------------------------
# (b) the cluster itself, on a trivial workflow
# ----------------------------------------------------------------------------------------

TRIVIAL_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "out/b.txt",


    # Fails on its first attempt, so the profile's `retries` must resubmit it; the
    # runtime grows with the attempt, as a rule killed by its time limit would do.
    rule a:
        output:
            "out/a.txt",
        resources:
            runtime=lambda wildcards, attempt: 1 + attempt,
        shell:
            "test {resources.runtime} -ge 3 || exit 3; "
            "echo job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION > {output}"


    rule b:
        input:
            "out/a.txt",
        output:
            "out/b.txt",
        resources:
            gpu=1,
            cpus_per_gpu=1,
            slurm_partition="gpu",
            runtime=5,
        shell:
            "cat {input} > {output}; "
            "echo job=$SLURM_JOB_ID partition=$SLURM_JOB_PARTITION "
            "gpus=${{SLURM_GPUS_ON_NODE:-none}} >> {output}"
    """
)


def test_trivial_workflow_runs_through_slurm(slurm_env, tmp_path):
    (tmp_path / "Snakefile").write_text(TRIVIAL_SNAKEFILE)
    text = run_snakemake(
        PROFILE_ARGS,
        cwd=tmp_path,
        env=slurm_env,
        log=tmp_path / "snakemake.out",
        limit=TRIVIAL_LIMIT,
    )
    jobs = parse_jobs(text)
    remote = assert_all_jobs_went_through_slurm(jobs)
    by_rule = {v["rule"]: v for v in remote.values()}
    assert set(by_rule) == {"a", "b"}, by_rule
    # The profile's slurm-array-jobs names rules this workflow does not have: no harm, and
    # a rule not in that list is never submitted as an array.
    assert not any(v.get("arrays") for v in remote.values())

    # rule a failed on attempt 1 and was resubmitted as a new SLURM job (retries: 2)
    a_ids, b_ids = by_rule["a"]["slurm_ids"], by_rule["b"]["slurm_ids"]
    assert len(a_ids) == 2 and len(set(a_ids)) == 2, a_ids
    assert len(b_ids) == 1, b_ids
    assert re.search(rf"SLURM-job '{a_ids[0]}' failed", text), "attempt 1 of rule a did not fail"

    # Both jobs' shells ran inside the SLURM jobs Snakemake reported, in the right partitions
    lines = (tmp_path / "out" / "b.txt").read_text().splitlines()
    assert lines[0] == f"job={a_ids[-1]} partition=cpu", lines
    assert lines[1] == f"job={b_ids[0]} partition=gpu gpus=1", lines
    for slog in by_rule["a"]["logs"] + by_rule["b"]["logs"]:
        assert slog.is_file(), slog
        assert slog.is_relative_to(tmp_path / ".snakemake" / "slurm_logs"), slog

    ctld = ctld_log()
    assert_slurm_evidence(remote, ctld)
    allocated = ctld_allocations(ctld)
    assert allocated[a_ids[-1]] == "cpu"
    assert allocated[b_ids[0]] == "gpu"
    assert re.search(rf"_job_complete: JobId={a_ids[0]} WEXITSTATUS [1-9]", ctld)
    assert jobcomp_states()[a_ids[0]]["JobState"] == "FAILED"

    # SLURM's own record: the GPU request and the attempt-scaled time limit reached sbatch
    b_rec = scontrol_job(b_ids[0], slurm_env)
    assert b_rec["JobState"] == "COMPLETED" and b_rec["Partition"] == "gpu", b_rec
    assert "gpu:1" in b_rec.get("TresPerJob", "") + b_rec.get("TresPerNode", ""), b_rec
    assert scontrol_job(a_ids[0], slurm_env)["TimeLimit"] == "00:02:00"
    assert scontrol_job(a_ids[1], slurm_env)["TimeLimit"] == "00:03:00"
    assert scontrol_job(a_ids[0], slurm_env)["JobState"] == "FAILED"


def test_too_few_jobs_for_the_arrays_is_refused_before_any_submission(slurm_env, tmp_path):
    """With job arrays on, a --jobs below the run's job count would make the plugin drop array
    jobs and wait forever (plugin issue #473): the workflow refuses at its start instead."""
    wd = tmp_path / "few-jobs"
    wd.mkdir()
    cluster_config(wd / "cluster.yaml")
    cmd = [snakemake_exe(), "--snakefile", str(ROOT / "Snakefile"), *PROFILE_ARGS]
    cmd += ["--configfile", "cluster.yaml", "--jobs", "2"]
    r = subprocess.run(cmd, cwd=wd, env=slurm_env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0, tail(out)
    assert "allows fewer at once (--jobs (jobs:) 2)" in out and "issue #473" in out, tail(out)
    assert not SUBMITTED_RE.search(out) and "Submitted" not in out, tail(out)
    assert not (wd / "results").exists()


# ----------------------------------------------------------------------------------------
# (c) the real workflow: SLURM run == local run
# ----------------------------------------------------------------------------------------

# Sizes the GPU rules' requests for the 2-CPU test node (config/test.yaml may ask for
# more than it has) and sends them to partition `gpu`. Merged over config/test.yaml in
# both runs; it changes no result.
CLUSTER_OVERLAY = textwrap.dedent(
    """
    noise_control: false   # the cluster path is the point here; controls are tested locally
    resources:
      gpu: 1
      gpu_partition: gpu
      cpus_per_gpu: 1
      gpu_mem_mb: 2000
      cpu_mem_mb: 1000
      train_runtime: 20
      attack_runtime: 10
      predict_runtime: 10
      shard_threads: 1
    """
)


def cluster_config(path: Path) -> Path:
    """config/test.yaml with CLUSTER_OVERLAY, cut to its Pneumothorax task (its target and
    surrogate, their white-box and transfer sets): every kind of job the cluster runs (shards,
    training, attacks, predictions, evaluations as job arrays and plain jobs, the local rules)
    at half the work of the whole tiny study, which tests/workflow/test_workflow.py runs locally; the
    cluster runs are two of the longest parts of the test suite."""
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    overlay = yaml.safe_load(CLUSTER_OVERLAY)
    cfg["noise_control"] = overlay["noise_control"]
    cfg["resources"] = {**cfg.get("resources", {}), **overlay["resources"]}
    cfg["tasks"] = {"pneumothorax": cfg["tasks"]["pneumothorax"]}
    cfg["models"] = {n: m for n, m in cfg["models"].items() if m["task"] == "pneumothorax"}
    cfg["grid"] = [g for g in cfg["grid"] if g["data_task"] in ("own", "pneumothorax")]
    assert len(cfg["models"]) == 2 and cfg["grid"], cfg
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# For the TIMEOUT run after the SLURM run, in the same directory (its shards are reused):
# one more model whose 28 epochs take longer than its 1-minute limit (first epoch after
# ~25-45 s, then ~2-5 s an epoch: 1.5-3 min in all), so SLURM kills its first job 60-90 s
# after the start (slurmctld checks limits every 30 s) with several epochs finished; the
# retry (2 min; on a loaded machine a third attempt with 3 min) resumes and finishes it.
# Small batches make an epoch long compared with the checkpoint writes at its end (a kill
# during them is survived too, see docs/CLUSTER.md, "Retries and time limits").
TIMEOUT_MODEL = "pneumothorax_timeout"
TIMEOUT_OVERLAY = textwrap.dedent(
    f"""
    resources:
      train_runtime: 1
      cpus_per_gpu: 2      # TensorFlow's threads, as many as before the rules declared them
    models:
      {TIMEOUT_MODEL}:
        task: pneumothorax
        arch: MobileNetV3Small
        seed: 3
        train_subset: half_a
        training: {{epochs: 28, patience: 28, batch_size: 8}}
    """
)


def workflow_args(workdir: Path, *configfiles: Path) -> list:
    return ["--snakefile", ROOT / "Snakefile", "--directory", workdir, "--configfile", *configfiles]


def array_rules() -> set[str]:
    """The rules profiles/slurm submits as job arrays."""
    text = (ROOT / "profiles" / "slurm" / "config.v8+.yaml").read_text()
    m = re.search(r"^slurm-array-jobs:\s*[\"']?([^\"'#\n]*)", text, re.M)
    assert m, "profiles/slurm sets no slurm-array-jobs"
    return {r.strip() for r in m.group(1).split(",") if r.strip()}


def epoch_lines(log: str) -> list[int]:
    return [int(k) for k in re.findall(r" epoch (\d+)/\d+: loss ", log)]


def test_workflow_on_slurm_matches_local_run(slurm_env, tmp_path):
    if not (ROOT / "Snakefile").is_file() or not (ROOT / "config" / "test.yaml").is_file():
        pytest.fail("Snakefile or config/test.yaml missing")
    # The SLURM run starts in a copy of the workflow (its config/config.yaml, the default
    # study, included) exactly as profiles/slurm documents: `snakemake --workflow-profile none
    # --profile profiles/slurm --configfile FILE`, no --snakefile, no --directory. Its jobs
    # must compute with FILE alone (before, each job merged config/config.yaml into it).
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    workflow_copy(ROOT, slurm_dir)
    overlay = cluster_config(slurm_dir / "cluster.yaml")
    local_dir.mkdir()
    slurm_env = {**slurm_env, "PYTHONPATH": str(slurm_dir / "workflow_scripts")}
    documented = [
        "--workflow-profile",
        "none",
        "--profile",
        "profiles/slurm",
        "--profile",
        str(SLURM_TESTS / "profile"),
        "--configfile",
        "cluster.yaml",
    ]

    # The local run starts in the project root with --directory elsewhere. The two run at the
    # same time, so the local run computes while the SLURM run waits for polls.
    local_env = {k: v for k, v in slurm_env.items() if k != "SLURM_CONF"}
    local = SnakemakeRun(
        ["--cores", "2", *workflow_args(local_dir, overlay)],
        cwd=ROOT,
        env=local_env,
        log=tmp_path / "snakemake-local.out",
        limit=WORKFLOW_LIMIT,
    )
    timeout_run = None
    try:
        slurm_text = run_snakemake(
            documented,
            cwd=slurm_dir,
            env=slurm_env,
            log=tmp_path / "snakemake-slurm.out",
            limit=WORKFLOW_LIMIT,
        )
        slurm_files = result_files(slurm_dir)
        # (d) the TIMEOUT run, while the local run may still be busy
        timeout_overlay = tmp_path / "timeout-overlay.yaml"
        timeout_overlay.write_text(TIMEOUT_OVERLAY)
        train_log = LogWatcher(slurm_dir / "results" / "logs" / "train" / f"{TIMEOUT_MODEL}.log")
        train_log.start()
        timeout_run = SnakemakeRun(
            [
                f"results/models/{TIMEOUT_MODEL}/model.keras",
                # one retry more than the profile's 2: on a heavily loaded machine even
                # the 2-minute attempt can run out of time (it then resumes once more)
                "--retries",
                "3",
                *documented,
                str(timeout_overlay),
            ],
            cwd=slurm_dir,
            env=slurm_env,
            log=tmp_path / "snakemake-timeout.out",
            limit=TIMEOUT_LIMIT,
        )
        local_text = local.wait()
        timeout_text = timeout_run.wait()
    finally:
        local.kill()
        if timeout_run is not None:
            timeout_run.kill()
            train_log.stop()

    local_files = result_files(local_dir)
    # every job computed with the run's config alone and said so in its log
    assert "is extended by additional config" not in slurm_text
    job_logs = list((slurm_dir / "results" / "logs").rglob("*.log"))
    assert job_logs and all("(as planned)" in p.read_text() for p in job_logs), [
        str(p) for p in job_logs if "(as planned)" not in p.read_text()
    ][:5]
    assert slurm_files, "the SLURM run produced no results/"
    assert slurm_files == local_files, (
        f"only in SLURM run: {sorted(slurm_files - local_files)[:20]}\n"
        f"only in local run: {sorted(local_files - slurm_files)[:20]}"
    )

    slurm_logdir = slurm_dir / ".snakemake" / "slurm_logs"
    slurm_jobs, local_jobs = parse_jobs(slurm_text, slurm_logdir), parse_jobs(local_text)
    assert sorted(v["rule"] for v in slurm_jobs.values()) == sorted(
        v["rule"] for v in local_jobs.values()
    ), "the two runs ran different jobs"
    assert not re.search(r"^Job \d+ has been submitted with SLURM", local_text, re.M)

    remote = assert_all_jobs_went_through_slurm(slurm_jobs)
    ctld = ctld_log()
    assert_slurm_evidence(remote, ctld)
    # GPU rules (those requesting gpu=) ran in the partition of resources.gpu_partition
    allocated = ctld_allocations(ctld)
    gpu_jobs = {j: v for j, v in remote.items() if re.search(r"\bgpu=1\b", v["resources"])}
    assert gpu_jobs, "no job requested a GPU"
    wrong = {
        v["rule"]: allocated.get(v["slurm_ids"][-1])
        for v in gpu_jobs.values()
        if allocated.get(v["slurm_ids"][-1]) != "gpu"
    }
    assert not wrong, f"GPU jobs outside partition gpu: {wrong}"
    cpu_jobs = [v for v in remote.values() if v not in gpu_jobs.values()]
    assert all(allocated[v["slurm_ids"][-1]] == "cpu" for v in cpu_jobs)

    # Job arrays: the fan-out rules went to SLURM as arrays, so there were fewer sbatch
    # calls than SLURM jobs; no other rule was submitted as an array. (A rule of the list
    # with a single ready job is submitted as a plain job, as the plugin does.)
    arrays = SUBMITTED_ARRAY_RE.findall(strip_embedded_logs(slurm_text))
    singles = SUBMITTED_RE.findall(strip_embedded_logs(slurm_text))
    array_tasks = sum(len(ids.split(",")) for ids, *_ in arrays)
    sbatch_calls, slurm_jobs_run = len(arrays) + len(singles), array_tasks + len(singles)
    assert arrays, "no array job was submitted"
    assert sbatch_calls < slurm_jobs_run, (len(arrays), array_tasks, len(singles))
    arrayed = {v["rule"] for v in remote.values() if v.get("arrays")}
    assert arrayed and arrayed <= array_rules(), arrayed
    assert all("_" in sid for v in remote.values() if v.get("arrays") for sid in v["slurm_ids"])

    # (d) TIMEOUT: the training job was killed by its 1-minute limit, resubmitted with
    # 2 minutes (and, on a loaded machine, again with 3 or 4) and resumed training. SLURM's
    # own records say TIMEOUT (slurmctld's log does not always say "Time limit exhausted":
    # a job can also end TIMEOUT through its step being killed at the limit).
    timeout_jobs = parse_jobs(timeout_text, slurm_logdir)
    t_remote = assert_all_jobs_went_through_slurm(timeout_jobs)
    assert [v["rule"] for v in t_remote.values()] == ["train"], t_remote
    (train,) = t_remote.values()
    ids = train["slurm_ids"]
    assert 2 <= len(ids) <= 4, ids
    ctld = ctld_log()
    assert_slurm_evidence(t_remote, ctld)
    comp = jobcomp_states()
    for attempt, sid in enumerate(ids, start=1):
        rec = scontrol_job(sid, slurm_env)
        state = "COMPLETED" if sid == ids[-1] else "TIMEOUT"
        assert rec["JobState"] == comp[sid]["JobState"] == state, (sid, rec, comp.get(sid))
        assert rec["TimeLimit"] == f"00:0{attempt}:00", (sid, rec["TimeLimit"])
        if state == "TIMEOUT":
            assert f"SLURM-job '{sid}' failed, SLURM status is: 'TIMEOUT'" in timeout_text
    # Each attempt rewrites the training log, so the test kept every attempt's version.
    # A resumed attempt starts with the epoch after the last one the killed attempt finished
    # (or that epoch again, if the kill fell between its log line and its checkpoint), never
    # with epoch 1. (If a later attempt was killed only after it had finished training and
    # cleaned up its state, the next one starts over: SLURM's limit hit its final writes.)
    attempts = train_log.stop()
    resumed = [a for a in attempts if "resuming the interrupted run in" in a]
    assert resumed, "\n---\n".join(tail(a, 15) for a in attempts)
    for text in resumed:
        epochs = epoch_lines(text.split("resuming the interrupted run in", 1)[1])
        assert epochs and epochs[0] > 1, tail(text, 30)
    # no epoch lost or counted twice across the kill
    metrics = json.loads(
        (slurm_dir / "results" / "models" / TIMEOUT_MODEL / "metrics.json").read_text()
    )
    assert metrics["epochs_run"] == 28, metrics
