"""How a rule's job runs: its log file, its thread budget, its config checked against the run's
plan (runconfig), a WorkflowError turned into a clear message without a traceback, and a log
that starts with what the job does on which wildcards and ends with what it wrote."""

from __future__ import annotations

import ast
import importlib
import os
import sys
import tempfile
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.logs import LOG, setup_logging

# What TensorFlow 2.21's C++ writes to file descriptor 2 when it loads, before its logging is set
# up (so TF_CPP_MIN_LOG_LEVEL cannot silence it): absl's notice, and oneDNN's that it is on. Only
# TF_ENABLE_ONEDNN_OPTS=0 stops them, and that makes a ResNet50 gradient step 7.7x slower here
# (benchmarks/bench_onednn.py, docs/PERFORMANCE.md), so import_tensorflow drops these two lines
# and logs one line of its own instead.
TF_IMPORT_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on.",
)


def run_main(func, snakemake, tensorflow: bool = False) -> None:
    """Run a rule's main function with everything it prints in the rule's log file.

    Output of the process itself (TensorFlow's start-up notices are written by C++ to file
    descriptor 2) goes to the log too, so the console shows Snakemake's progress only. A
    WorkflowError becomes a clear message (in the log and on the console) and exit code 1,
    without a traceback. The log's first line says what the job does (its script's docstring:
    ``script_summary``), its last line what it wrote (only when it succeeded).
    ``tensorflow``: the job uses TensorFlow; it is imported first (``import_tensorflow``)."""
    log = snakemake.log[0] if len(snakemake.log) else None
    # TensorFlow's op pool uses as many threads as the job was given (read when TensorFlow
    # creates its context, so before any op runs), not every core of the machine.
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(max(1, int(snakemake.threads)))
    console = sys.stderr
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        console = os.fdopen(os.dup(2), "w")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        # what the job prints stays in order with its log lines (a file is block-buffered)
        sys.stdout.reconfigure(line_buffering=True)
    setup_logging(None)
    summary = script_summary(func.__code__.co_filename)
    LOG.info("%s", started_line(snakemake.rule, summary, snakemake.wildcards))
    try:
        # the config this job got must be the one its run planned (runconfig), on any executor
        record = runconfig.check_job(dict(snakemake.config))
        LOG.info(
            "rule %s: config sha256 %s (as planned)", snakemake.rule, record[runconfig.RAN_WITH]
        )
        if tensorflow:
            import_tensorflow()
        func(snakemake)
    except WorkflowError as e:
        LOG.error("%s", e)
        print(f"ERROR: {e}", file=console, flush=True)
        sys.exit(1)
    outputs = [str(o) for o in snakemake.output]
    missing = [o for o in outputs if not os.path.exists(o)]
    if missing:  # Snakemake fails the job (missing output): no "wrote" line
        LOG.error("rule %s: finished without writing %s", snakemake.rule, ", ".join(missing))
    else:
        LOG.info("%s", wrote_line(snakemake.rule, outputs))


def import_tensorflow():
    """Import TensorFlow with what it writes to file descriptor 2 while it loads passed on to
    fd 2, except ``TF_IMPORT_NOTICES``, which become one log line (with the oneDNN setting).
    Later imports of TensorFlow or Keras in the process reuse the loaded module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            # by name: only the jobs that ask for it (tensorflow=True) load it, so the
            # environments of the others (envs/*.yaml, tests/workflow/test_envs.py) lack it
            tf = importlib.import_module("tensorflow")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode(errors="replace").splitlines()
    kept = [line for line in lines if not any(n in line for n in TF_IMPORT_NOTICES)]
    if kept:
        os.write(2, ("\n".join(kept) + "\n").encode())
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "on (TensorFlow's default)")
    LOG.info("TensorFlow %s loaded; oneDNN optimisations: %s", tf.__version__, onednn)
    return tf


def script_summary(script) -> str:
    """What a rule's script does: the first paragraph of its docstring without its "Rule
    <name>:" prefix ("" if it has no docstring). Snakemake runs the script with its preamble
    in front, so the docstring is the script's first string statement, not ``__doc__``."""
    try:
        tree = ast.parse(Path(script).read_text())
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            if isinstance(node.value.value, str):
                first = " ".join(node.value.value.strip().split("\n\n")[0].split())
                head, sep, rest = first.partition(": ")
                return (rest if sep else head).rstrip(".")
    return ""


def started_line(rule: str, summary: str, wildcards) -> str:
    """The log's first line: "rule R: <what it does> on <wildcard=value, ...>"."""
    on = ", ".join(f"{k}={v}" for k, v in wildcards.items())
    return f"rule {rule}: {summary or 'started'}" + (f" on {on}" if on else "")


def wrote_line(rule: str, outputs: list[str]) -> str:
    """The log's last line: "rule R: wrote N files and M directories: <outputs>" (a count of
    none left out)."""
    n_dirs = sum(os.path.isdir(o) for o in outputs)
    counts = [
        f"{n} {one if n == 1 else many}"
        for n, one, many in [
            (len(outputs) - n_dirs, "file", "files"),
            (n_dirs, "directory", "directories"),
        ]
        if n
    ]
    return f"rule {rule}: wrote {' and '.join(counts) or 'nothing'}: {', '.join(outputs)}"
