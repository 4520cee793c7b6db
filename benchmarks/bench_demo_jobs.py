"""Job-seconds of the default demo (config/config.yaml) for two versions of the workflow, run
side by side: each revision is checked out into its own git worktree and the two demos run AT
THE SAME TIME (`snakemake --cores CORES` each), so background load on a shared machine hits both
alike; or, with --sequential, one after the other, each alone on a quiet machine (a job's wall
time then does not depend on what the other demo runs at that moment). Reports, per version, the sum of the Snakemake ``benchmark:`` files (wall seconds of
every job, the figure the workflow's cluster cost is made of) per rule, the makespan, and
whether the final tables are byte-identical.

    .venv/bin/python benchmarks/bench_demo_jobs.py --before REV --after REV --json out.json

Each job of a worktree imports that worktree's library (PYTHONPATH), not the installed one.
Takes about as long as two demos on the machine's cores (~40 min on 2 busy cores).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from summarise_benchmarks import benchmark_patterns, read_benchmarks, summarise

ROOT = common.ROOT
TABLES = ("tables/transfer.csv", "tables/summary.md")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", required=True, help="git revision of the old workflow")
    p.add_argument("--after", default="HEAD", help="git revision of the new workflow")
    p.add_argument("--cores", type=int, default=2, help="--cores of each demo run")
    p.add_argument(
        "--configfile",
        help="run this study (path relative to the checkout, e.g. config/test.yaml) instead "
        "of the default demo",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the demos one after the other (before first) instead of at the same time",
    )
    p.add_argument("--workdir", help="keep the worktrees here (default: a temp directory)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    return p.parse_args(argv)


def worktree(rev: str, dest: Path) -> str:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(dest), rev],
        check=True,
        capture_output=True,
    )
    return subprocess.run(
        ["git", "-C", str(dest), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def start_demo(tree: Path, cores: int, configfile: str | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "workflow_scripts"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    snakemake = Path(sys.executable).with_name("snakemake")
    log = open(tree / "demo.log", "w")  # noqa: SIM115 - closed by the caller via the process
    study = ["--configfile", configfile] if configfile else []
    return subprocess.Popen(
        [str(snakemake), "--cores", str(cores), *study],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_demo_")
        work = Path(tmp.name)
    result = {"settings": vars(args), "machine": common.machine_info(), "versions": {}}
    trees = {}
    try:
        for name, rev in (("before", args.before), ("after", args.after)):
            trees[name] = work / name
            result["versions"][name] = {"rev": worktree(rev, trees[name])}
        waves = [[n] for n in trees] if args.sequential else [list(trees)]
        for wave in waves:
            t0 = time.perf_counter()
            for name in wave:
                result["versions"][name]["load_at_start"] = os.getloadavg()
            running = {name: start_demo(trees[name], args.cores, args.configfile) for name in wave}
            print(f"running {' and '.join(wave)} in {work} ...", flush=True)
            while running:  # each demo's own makespan: poll all, whichever ends first
                for name, proc in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[name]
                    result["versions"][name]["makespan_s"] = time.perf_counter() - t0
                    if rc != 0:
                        print(
                            f"the {name} demo failed; see {trees[name] / 'demo.log'}",
                            file=sys.stderr,
                        )
                        return 1
                time.sleep(5)
        for name, tree in trees.items():
            summary = summarise(
                read_benchmarks(tree / "results" / "benchmarks", benchmark_patterns(tree / "rules"))
            )
            v = result["versions"][name]
            v["job_seconds"] = float(summary["total_s"].sum())
            v["cpu_seconds"] = float(summary["cpu_s"].sum())
            v["jobs"] = int(summary["jobs"].sum())
            v["per_rule"] = summary.to_dict(orient="records")
        b, a = result["versions"]["before"], result["versions"]["after"]
        result["job_seconds_ratio"] = a["job_seconds"] / b["job_seconds"]
        result["tables_identical"] = {
            t: filecmp.cmp(trees["before"] / "results" / t, trees["after"] / "results" / t, False)
            for t in TABLES
        }
        print(
            f"job-seconds: before {b['job_seconds']:.0f} s ({b['jobs']} jobs), after "
            f"{a['job_seconds']:.0f} s ({a['jobs']} jobs): ratio {result['job_seconds_ratio']:.3f}"
            f"; tables identical: {result['tables_identical']}",
            flush=True,
        )
        if args.json:
            common.write_json(args.json, result)
    finally:
        if tmp:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                )
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
