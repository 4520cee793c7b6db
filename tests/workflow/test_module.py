"""End to end: the workflow used as a Snakemake module from another directory.

The user's directory holds only a Snakefile that declares this workflow as a module (the form
`snakedeploy deploy-workflow` writes, with a local path) and a config that names a base study
and sets what differs; the run's config, results and Snakemake state stay in that directory."""

import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.e2e

USER_SNAKEFILE = """\
configfile: "config/config.yaml"


module cxrtransfer:
    snakefile:
        "{snakefile}"
    config:
        config


use rule * from cxrtransfer
"""

# The tiny test study cut to its Pneumothorax task: a config that sets only what differs from
# the base it names (null removes an entry of the base).
USER_CONFIG = textwrap.dedent(
    """\
    base: test
    study_name: as-a-module
    tasks: {cardiomegaly: null}
    models: {cardiomegaly_small: null}
    grid: [{sources: all, data_task: own}]
    """
)


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_workflow_runs_as_a_module_in_the_users_directory(root, tmp_path):
    user = tmp_path / "my-study"
    (user / "workflow").mkdir(parents=True)
    (user / "config").mkdir()
    (user / "workflow" / "Snakefile").write_text(
        USER_SNAKEFILE.format(snakefile=root / "Snakefile")
    )
    (user / "config" / "config.yaml").write_text(USER_CONFIG)
    before = _tree(root / "results")
    # as a user runs it: in their directory, no --snakefile, no PYTHONPATH
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2"]
    r = subprocess.run(cmd, cwd=user, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]

    transfer = pd.read_csv(user / "results" / "tables" / "transfer.csv")
    assert set(transfer["target"]) == {"pneumothorax_small", "pneumothorax_small_s2"}
    assert {"white-box", "surrogate"} <= set(transfer["relation"])
    assert (user / "results" / "tables" / "summary.md").is_file()
    assert (user / "results" / "plots" / "headline.png").is_file()
    # the study the run planned: the base's settings with the user's edits
    study = yaml.safe_load((user / "results" / "report" / "config.yaml").read_text())
    assert study["study_name"] == "as-a-module" and study["base"] == "test"
    assert set(study["tasks"]) == {"pneumothorax"}
    assert (
        study["training"]["epochs"]
        == yaml.safe_load((root / "config" / "test.yaml").read_text())["training"]["epochs"]
    )
    # nothing was written beside the workflow
    assert _tree(root / "results") == before
    assert (user / ".snakemake").is_dir()
