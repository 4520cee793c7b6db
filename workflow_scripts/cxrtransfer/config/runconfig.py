"""A job computes with exactly the config its run planned.

The Snakemake process that plans a run (the main process) publishes the hash of its resolved
config (after schema validation and defaults) in the environment variable ``ENV``; every job
inherits it (a local job is a child of that process; a SLURM job is submitted with
``sbatch --export=ALL``). A job re-reads the config itself (on a cluster it parses the
Snakefile again with the ``--configfiles`` and ``--config`` the executor passes on), so it
compares the hash of the config it got with the planned one and refuses to compute with
another; its products record both hashes, and the evaluation refuses an input without that
record or with two hashes that differ.

A product made under an earlier config whose job's params are unchanged is still reused (that
is what precise reruns are): a rule's params carry everything its job reads.
"""

from __future__ import annotations

import hashlib
import json
import os

from cxrtransfer import WorkflowError

ENV = "CXRTRANSFER_PLANNED_CONFIG"
RAN_WITH = "config_sha256"
PLANNED = "planned_config_sha256"
FIELDS = (RAN_WITH, PLANNED)

_JOB: dict = {}


def config_hash(config: dict) -> str:
    """A short stable hash of a resolved config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def publish_plan(config: dict, environ=os.environ) -> str:
    """In the planning process: publish the hash of the config the run plans with."""
    digest = config_hash(config)
    environ[ENV] = digest
    return digest


def check_job(config: dict, environ=os.environ) -> dict:
    """In a job: the record {config_sha256, planned_config_sha256} of the config the job runs
    with, or a WorkflowError if it is not the config the run planned (nothing is computed)."""
    ran = config_hash(config)
    planned = environ.get(ENV)
    if not planned:
        raise WorkflowError(
            f"This job was started without the hash of the config its run planned (environment "
            f"variable {ENV}), so it cannot prove it computes with that config. Start jobs only "
            "through the snakemake run that planned them; on a cluster, the executor must pass "
            "the submitting environment on (profiles/slurm submits with sbatch --export=ALL)."
        )
    if planned != ran:
        raise WorkflowError(
            f"This job's config (sha256 {ran}) is not the config its run planned (sha256 "
            f"{planned}): the executor started it with another configuration (for example "
            "config/config.yaml merged with the --configfile of the run). Nothing was computed. "
            "Rerun with the same --configfile/--config on the command line or in one profile, "
            "with the workflow of this checkout; see docs/CLUSTER.md, 'Which config a job uses'."
        )
    record = {RAN_WITH: ran, PLANNED: planned}
    _JOB.clear()
    _JOB.update(record)
    return dict(record)


def job_record() -> dict:
    """The running job's config record (empty outside a job: library calls from tests)."""
    return dict(_JOB)


def check_record(record: dict, what) -> None:
    """Refuse an input whose recorded config is missing or is not the one its job's run
    planned."""
    ran, planned = record.get(RAN_WITH), record.get(PLANNED)
    if not ran or not planned:
        raise WorkflowError(
            f"'{what}' does not record the config its job ran with ({RAN_WITH}, {PLANNED}): it "
            "was made by an older version of the workflow or outside a planned run. Rerun the "
            "job that makes it (snakemake --forcerun RULE, or `python -m cxrtransfer.verify "
            "--remove` and rerun)."
        )
    if ran != planned:
        raise WorkflowError(
            f"'{what}' was computed with config {ran}, not with the config {planned} its run "
            "planned: it is not the product the plan describes. Remove it (python -m "
            "cxrtransfer.verify --remove) and rerun."
        )
