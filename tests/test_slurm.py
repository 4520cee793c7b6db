"""The workflow on a real single-node SLURM cluster started on this machine.

tests/slurm/start_cluster.sh installs Debian's slurm-wlm and munge if they are missing and
starts munged, slurmctld and slurmd (root only); the module fixture stops them again.
Snakemake runs with the user-facing profile profiles/slurm plus the overrides of
tests/slurm/profile (partition `cpu`, no account, short limits, squeue status checks).

Every job is proven to have gone through SLURM by evidence that does not depend on
squeue or sacct: the SLURM job id Snakemake reports for a job is the $SLURM_JOB_ID the job's
own shell saw (trivial workflow), the SLURM output file of that id exists and holds the
job's Snakemake log, and slurmctld's own log records the allocation (with its partition)
and the completion of that job id.

Run only these: `pytest -m slurm`; everything else: `pytest -m "not slurm"`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SLURM_TESTS = ROOT / "tests" / "slurm"
STATE_DIR = Path(os.environ.get("SLURM_TEST_DIR", "/tmp/cxrtransfer-slurm"))
PROFILE_ARGS = [
    "--workflow-profile",
    "none",
    "--profile",
    str(ROOT / "profiles" / "slurm"),
    "--profile",
    str(SLURM_TESTS / "profile"),
]
# Rules that may run on the submit host instead of through SLURM: Snakemake runs a rule
# without shell/script/run (the target rule) locally by itself.
LOCAL_RULES = {"all"}
# Wall-clock limits for the snakemake runs (each is wrapped in `timeout -k 10 LIMIT`).
TRIVIAL_LIMIT = 300
WORKFLOW_LIMIT = 2400

SUBMITTED_RE = re.compile(
    r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", re.M
)
FINISHED_RE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\S+)\)$", re.M)
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


def parse_jobs(text: str) -> dict[int, dict]:
    """Snakemake job id -> {rule, local, resources, slurm_ids: [...], finished} from a log."""
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
        job["slurm_ids"].append(int(slurm_id))
        job["logs"].append(Path(slurm_log))
    for jobid, rule in FINISHED_RE.findall(text):
        job = jobs.setdefault(int(jobid), {"slurm_ids": [], "logs": [], "finished": False})
        job["finished"] = True
        job.setdefault("rule", rule)
    return jobs


def ctld_log() -> str:
    return (STATE_DIR / "log" / "slurmctld.log").read_text(errors="replace")


def ctld_allocations(text: str) -> dict[int, str]:
    """SLURM job id -> partition it was started in, from slurmctld's log (the main
    scheduler logs 'sched: Allocate JobId=..', the backfill scheduler '_start_job')."""
    started = {
        int(j): p
        for j, p in re.findall(r"sched: Allocate JobId=(\d+) NodeList=\S+ .*?Partition=(\S+)", text)
    }
    started.update(
        (int(j), p)
        for j, p in re.findall(
            r"sched/backfill: _start_job: Started JobId=(\d+) in (\S+) on ", text
        )
    )
    return started


def ctld_completed_ok(text: str) -> set[int]:
    """SLURM job ids whose batch script exited 0, from slurmctld's log."""
    return {int(j) for j in re.findall(r"_job_complete: JobId=(\d+) WEXITSTATUS 0\b", text)}


def scontrol_job(job_id: int, env: dict) -> dict[str, str]:
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

    # SLURM's own record: the GPU request and the attempt-scaled time limit reached sbatch
    b_rec = scontrol_job(b_ids[0], slurm_env)
    assert b_rec["JobState"] == "COMPLETED" and b_rec["Partition"] == "gpu", b_rec
    assert "gpu:1" in b_rec.get("TresPerJob", "") + b_rec.get("TresPerNode", ""), b_rec
    assert scontrol_job(a_ids[0], slurm_env)["TimeLimit"] == "00:02:00"
    assert scontrol_job(a_ids[1], slurm_env)["TimeLimit"] == "00:03:00"
    assert scontrol_job(a_ids[0], slurm_env)["JobState"] == "FAILED"


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


def workflow_args(workdir: Path, overlay: Path) -> list:
    return [
        "--snakefile",
        ROOT / "Snakefile",
        "--directory",
        workdir,
        "--configfile",
        ROOT / "config" / "test.yaml",
        overlay,
    ]


def test_workflow_on_slurm_matches_local_run(slurm_env, tmp_path):
    if not (ROOT / "Snakefile").is_file() or not (ROOT / "config" / "test.yaml").is_file():
        pytest.fail("Snakefile or config/test.yaml missing")
    overlay = tmp_path / "cluster-overlay.yaml"
    overlay.write_text(CLUSTER_OVERLAY)
    slurm_dir, local_dir = tmp_path / "slurm", tmp_path / "local"
    slurm_dir.mkdir()
    local_dir.mkdir()

    # Both runs start in the project root, as a user's would (the SLURM run with the
    # documented --workflow-profile none); --directory puts each run's results/ elsewhere.
    # They run at the same time, so the local run computes while the SLURM run waits for polls.
    local_env = {k: v for k, v in slurm_env.items() if k != "SLURM_CONF"}
    local = SnakemakeRun(
        ["--cores", "2", *workflow_args(local_dir, overlay)],
        cwd=ROOT,
        env=local_env,
        log=tmp_path / "snakemake-local.out",
        limit=WORKFLOW_LIMIT,
    )
    try:
        slurm_text = run_snakemake(
            [*PROFILE_ARGS, *workflow_args(slurm_dir, overlay)],
            cwd=ROOT,
            env=slurm_env,
            log=tmp_path / "snakemake-slurm.out",
            limit=WORKFLOW_LIMIT,
        )
        local_text = local.wait()
    finally:
        local.kill()

    slurm_files, local_files = result_files(slurm_dir), result_files(local_dir)
    assert slurm_files, "the SLURM run produced no results/"
    assert slurm_files == local_files, (
        f"only in SLURM run: {sorted(slurm_files - local_files)[:20]}\n"
        f"only in local run: {sorted(local_files - slurm_files)[:20]}"
    )

    slurm_jobs, local_jobs = parse_jobs(slurm_text), parse_jobs(local_text)
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
