"""How a rule's job runs: its log file, its thread budget, its config checked against the run's
plan (runconfig) and a WorkflowError turned into a clear message without a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.config import runconfig
from cxrtransfer.core.logs import LOG, setup_logging


def run_main(func, snakemake) -> None:
    """Run a rule's main function with everything it prints in the rule's log file.

    Output of the process itself (TensorFlow's start-up notices are written by C++ to file
    descriptor 2) goes to the log too, so the console shows Snakemake's progress only. A
    WorkflowError becomes a clear message (in the log and on the console) and exit code 1,
    without a traceback."""
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
    setup_logging(None)
    try:
        # the config this job got must be the one its run planned (runconfig), on any executor
        record = runconfig.check_job(dict(snakemake.config))
        LOG.info(
            "rule %s: config sha256 %s (as planned)", snakemake.rule, record[runconfig.RAN_WITH]
        )
        func(snakemake)
    except WorkflowError as e:
        LOG.error("%s", e)
        print(f"ERROR: {e}", file=console, flush=True)
        sys.exit(1)
