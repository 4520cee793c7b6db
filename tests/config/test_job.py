"""A rule's job (config.job.run_main), run as Snakemake runs a rule's script: a new Python
process on a script whose docstring follows Snakemake's preamble. Its log starts with what the
job does on which wildcards and ends with what it wrote, only when it succeeded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cxrtransfer.config import runconfig
from cxrtransfer.config.job import script_summary, started_line, wrote_line

# A rule script as Snakemake writes it for the job: its preamble line (here a stand-in) in front
# of the script's docstring, then the script, then a fake `snakemake` object and run_main.
SCRIPT = '''import json, sys; from types import SimpleNamespace  # Snakemake's preamble
"""Rule fake: write a table and
its folder.

Not this paragraph."""

from pathlib import Path

from cxrtransfer import WorkflowError
from cxrtransfer.config.job import run_main


def main(sm):
    print("working")
    if sm.params.fail:
        raise WorkflowError("the input is wrong")
    Path(sm.output[0]).write_text("a,b\\n")
    if sm.params.folder:
        Path(sm.output[1]).mkdir()


snakemake = SimpleNamespace(
    log=["logs/fake/pneumothorax.log"],
    output=["out/table.csv", "out/folder"],
    wildcards={"task": "pneumothorax", "split": "train"},
    rule="fake",
    threads=1,
    config={},
    params=SimpleNamespace(**json.loads(sys.argv[1])),
)
run_main(main, snakemake)
'''
STARTED = "rule fake: write a table and its folder on task=pneumothorax, split=train"


def _job(root, tmp_path, **params):
    """Run the fake rule's job; returns (its process, the lines of its log)."""
    script = tmp_path / "fake.py"
    script.write_text(SCRIPT)
    (tmp_path / "out").mkdir(exist_ok=True)
    # buffered stdout, as a job has it (what it prints must still come before the last line)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {"PYTHONPATH": str(root / "workflow_scripts"), runconfig.ENV: runconfig.config_hash({})}
    r = subprocess.run(
        [sys.executable, str(script), json.dumps({"fail": False, "folder": True, **params})],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    return r, (tmp_path / "logs" / "fake" / "pneumothorax.log").read_text().splitlines()


def _message(line: str) -> str:
    """A log line without its date, time and level ("2026-12-07 15:04:45 INFO ...")."""
    return line.split(" ", 3)[-1]


def test_a_job_log_starts_with_what_it_does_and_ends_with_what_it_wrote(root, tmp_path):
    r, log = _job(root, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""  # all in the log
    assert _message(log[0]) == STARTED
    assert _message(log[1]).startswith("rule fake: config sha256 ")
    assert "working" in log
    assert _message(log[-1]) == (
        "rule fake: wrote 1 file and 1 directory: out/table.csv, out/folder"
    )


def test_a_failed_job_has_no_wrote_line(root, tmp_path):
    r, log = _job(root, tmp_path, fail=True)
    assert r.returncode == 1
    assert r.stderr.strip() == "ERROR: the input is wrong"
    assert _message(log[0]) == STARTED
    assert [_message(line) for line in log[-1:]] == ["the input is wrong"]
    assert not any("wrote" in line for line in log)


def test_a_job_that_missed_an_output_says_so_instead(root, tmp_path):
    r, log = _job(root, tmp_path, folder=False)
    assert r.returncode == 0, r.stderr
    assert _message(log[-1]) == "rule fake: finished without writing out/folder"
    assert not any("wrote" in line for line in log)


@pytest.mark.parametrize(
    "script", sorted((Path(__file__).parents[2] / "workflow_scripts").glob("*.py")), ids=str
)
def test_every_rule_script_says_what_its_jobs_do(script):
    """The first line of each job's log comes from its script's docstring: "Rule(s) <name>:
    <what it does>" (a checkpoint: "Checkpoint <name>: ...")."""
    doc = script.read_text().split('"""')[1]
    assert doc.split()[0] in ("Rule", "Rules", "Checkpoint"), script
    summary = script_summary(script)
    assert summary and not summary.startswith(("Rule", "Checkpoint")), summary
    assert "\n" not in summary and not summary.endswith(".")


def test_a_job_without_wildcards_says_only_what_it_does():
    assert started_line("tables", "the tables", {}) == "rule tables: the tables"


def test_the_wrote_line_counts_files_and_directories(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    Path(a).mkdir()
    Path(b).mkdir()
    Path(c).write_text("")
    assert wrote_line("attack", [a, b]) == f"rule attack: wrote 2 directories: {a}, {b}"
    assert wrote_line("x", [c]) == f"rule x: wrote 1 file: {c}"
    assert wrote_line("x", [c, a]) == f"rule x: wrote 1 file and 1 directory: {c}, {a}"


# TensorFlow loaded plainly and through import_tensorflow, each in a new process with fd 2 in
# a file, at the most talkative C++ log level.
_PLAIN_IMPORT = "import tensorflow"
_QUIET_IMPORT = (
    "from cxrtransfer.core.logs import setup_logging; setup_logging(None); "
    "from cxrtransfer.config.job import import_tensorflow; import_tensorflow(); import keras"
)


def _stderr_of(root, code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(root / "workflow_scripts"), "TF_CPP_MIN_LOG_LEVEL": "0"}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr
    # the C++ lines without their "I0000 00:00:<time> <pid> file.cc:N]" prefix
    return [line.split("] ", 1)[-1] for line in r.stderr.splitlines()]


def test_tensorflow_loads_without_its_start_up_notices_and_keeps_its_other_lines(root):
    """The two notices TensorFlow writes before its logging is set up are gone, replaced by one
    log line; whatever else it writes while loading is kept, in order."""
    from cxrtransfer.config.job import TF_IMPORT_NOTICES

    plain = _stderr_of(root, _PLAIN_IMPORT)
    assert any(TF_IMPORT_NOTICES[0] in line for line in plain)  # what there is to drop
    assert any(TF_IMPORT_NOTICES[1] in line for line in plain)
    quiet = _stderr_of(root, _QUIET_IMPORT)
    ours = [line for line in quiet if "TensorFlow " in line and " loaded; oneDNN" in line]
    assert len(ours) == 1
    kept = [line for line in plain if not any(n in line for n in TF_IMPORT_NOTICES)]
    assert [line for line in quiet if line not in ours] == kept
