"""The files of a published workflow hold together: the Snakemake workflow catalog's settings
(.snakemake-workflow-catalog.yml, with config/README.md beside it), LICENSE, CITATION.cff and
the GitHub Actions workflow (.github/workflows/main.yml), whose commands are Makefile targets
that exist. The GitHub workflow itself has never run (no GitHub here): these tests check its
shape and its commands, not a run."""

import re
import shlex
import tomllib
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / ".snakemake-workflow-catalog.yml"
CITATION = ROOT / "CITATION.cff"
GITHUB_WORKFLOW = ROOT / ".github" / "workflows" / "main.yml"
# the software deployment methods the catalog knows (--sdm conda / apptainer / both)
DEPLOYMENT = {"conda", "apptainer", "apptainer+conda", "singularity", "singularity+conda"}
# what a CFF 1.2.0 file must hold (the format's required keys) and what this one also gives
CFF_REQUIRED = {"cff-version", "message", "title", "authors"}
CFF_GIVEN = {"version", "date-released", "license", "abstract"}
# a rule line of the Makefile: its targets and prerequisites (not a variable assignment)
MAKE_RULE = re.compile(r"^([^\s#:=][^:=]*?)\s*&?:(?!=)\s*(.*)$")


def _yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.relative_to(ROOT)} is not a YAML mapping"
    return data


def make_rules(text: str) -> dict[str, set[str]]:
    """{target: its prerequisites} of a Makefile's rules (order-only ones after | included)."""
    rules: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = MAKE_RULE.match(line)
        if m:
            for target in m.group(1).split():
                rules.setdefault(target, set()).update(m.group(2).replace("|", " ").split())
    return rules


MAKEFILE_RULES = make_rules((ROOT / "Makefile").read_text())


def test_the_makefile_parser_reads_targets_and_prerequisites():
    rules = make_rules("X := 1\nall: venv\n\techo a: b\na b &: | venv\n.PHONY: all\n# c: d\n")
    assert rules == {"all": {"venv"}, "a": {"venv"}, "b": {"venv"}, ".PHONY": {"all"}}
    assert {"test", "lint", "venv", "docs-tables"} <= MAKEFILE_RULES.keys()


def test_the_catalog_settings_have_the_keys_the_catalog_reads():
    usage = _yaml(CATALOG)["usage"]
    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= DEPLOYMENT, set(deployment) - DEPLOYMENT
    assert all(isinstance(v, bool) for v in deployment.values()), deployment
    assert any(deployment.values()), "the catalog shows a run command per method set to true"
    assert isinstance(usage["report"], bool)
    if usage["report"]:  # snakemake --report needs the workflow's report: statement
        assert re.search(r"^report:", (ROOT / "Snakefile").read_text(), re.M)
    flags = usage.get("mandatory-flags")
    if flags is not None:
        assert isinstance(flags["desc"], str) and flags["desc"].strip()
        assert isinstance(flags["flags"], str | list)
    # the catalog shows config/README.md as the workflow's configuration
    assert (ROOT / "config" / "README.md").is_file()


def test_the_citation_file_is_cff_1_2_0_with_the_package_version():
    cff = _yaml(CITATION)
    missing = (CFF_REQUIRED | CFF_GIVEN) - cff.keys()
    assert not missing, missing
    assert cff["cff-version"] == "1.2.0"
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert cff["version"] == project["version"], "CITATION.cff and pyproject.toml disagree"
    assert isinstance(date.fromisoformat(str(cff["date-released"])), date)
    assert cff["license"] == "MIT"
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The cxrtransfer authors" in license_text


def _run_commands(workflow: dict) -> list[list[str]]:
    """The shell commands of the workflow's ``run:`` steps, in order, split into words."""
    commands = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                if line.strip() and not line.strip().startswith("#"):
                    commands.append(shlex.split(line))
    return commands


def test_the_github_workflow_runs_on_push_and_pull_requests_with_python_3_12():
    workflow = _yaml(GITHUB_WORKFLOW)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    setup = [s for s in steps if str(s.get("uses", "")).startswith("actions/setup-python@")]
    assert setup and str(setup[0]["with"]["python-version"]) == "3.12"
    first_run = next(i for i, s in enumerate(steps) if "run" in s)
    assert steps.index(setup[0]) < first_run
    assert "NOT RUN" in GITHUB_WORKFLOW.read_text().split("\nname:")[0], (
        "the header says that the workflow has never run on GitHub"
    )


def test_the_github_workflow_calls_existing_make_targets_in_a_working_order():
    commands = _run_commands(_yaml(GITHUB_WORKFLOW))
    made: set[str] = set()
    for words in commands:
        if words[0] == "make":
            targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
            unknown = [t for t in targets if t not in MAKEFILE_RULES]
            assert targets and not unknown, f"not a Makefile target: {words}"
            made.update(targets)
            made.update(p for t in targets for p in MAKEFILE_RULES[t])
        elif words[0].startswith(".venv/bin/"):
            # the virtualenv the Makefile builds (BIN := .venv/bin), by an earlier make target
            assert "venv" in made, f"{words} runs before any make target has built .venv"
            if "--configfile" in words:
                config = words[words.index("--configfile") + 1]
                assert (ROOT / config).is_file(), config
        else:
            raise AssertionError(f"an unexpected command (neither make nor .venv/bin): {words}")
    ran = [" ".join(w) for w in commands]
    assert {"make lint", "make test", ".venv/bin/snakemake -n"} <= set(ran), ran
    assert ".venv/bin/snakemake -n --configfile config/test.yaml" in ran
    # the same suite as the local CI entry point
    assert "make test" in (ROOT / ".ci" / "run").read_text().splitlines()
