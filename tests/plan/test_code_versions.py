"""plan.code: a rule's code version is the import closure of its script, so the layers decide
what an edit of library code reruns (the end-to-end dry runs are in test_workflow.py)."""

import shutil

import pytest
from cxrtransfer.plan import code


def _closure(root, script):
    return set(code.library_modules(root / "workflow_scripts" / f"{script}.py"))


def _under(modules, package):
    return {m for m in modules if m == package or m.startswith(package + ".")}


def test_the_closure_holds_the_modules_and_the_packages_around_them(root):
    attack = _closure(root, "attack")
    assert {"cxrtransfer", "cxrtransfer.attacks", "cxrtransfer.attacks.job"} <= attack
    assert all(code.module_file(m) is not None for m in attack)


def test_training_covers_no_attack_code(root):
    assert not _under(_closure(root, "train"), "cxrtransfer.attacks")


def test_plots_and_tables_reach_no_attack_training_or_planning_code(root):
    for script in ("plots", "tables"):
        modules = _closure(root, script)
        for package in ("cxrtransfer.attacks", "cxrtransfer.plan", "cxrtransfer.models.train"):
            assert not _under(modules, package), (script, _under(modules, package))


def test_only_the_box_rule_and_the_plots_cover_the_box_code(root):
    scripts = root / "workflow_scripts"
    uses = {
        s.stem for s in scripts.glob("*.py") if "cxrtransfer.data.boxes" in _closure(root, s.stem)
    }
    assert uses == {"boxes", "plots"}


def test_adversarial_training_adds_the_attack_code(root):
    modules = set(code.library_modules(modules=("cxrtransfer.attacks.adversarial_training",)))
    assert "cxrtransfer.attacks.iterative" in modules
    assert modules - _closure(root, "train")  # what the train rule adds for such models


def test_relative_and_absolute_imports_resolve_alike():
    rel = code.imported_modules("from .shards import read_shard\n", "cxrtransfer.data.ingest")
    absolute = code.imported_modules("from cxrtransfer.data.shards import read_shard\n")
    package = code.imported_modules("from cxrtransfer.data import shards\n")
    assert rel == absolute == {"cxrtransfer.data.shards"}
    assert package == {"cxrtransfer.data", "cxrtransfer.data.shards"}
    assert code.imported_modules("import numpy\nfrom pathlib import Path\n") == set()


@pytest.fixture
def library_copy(root, tmp_path, monkeypatch):
    """A copy of workflow_scripts that plan.code reads instead of the real one."""
    copy = tmp_path / "workflow_scripts"
    shutil.copytree(root / "workflow_scripts", copy, ignore=shutil.ignore_patterns("*.egg-info"))
    monkeypatch.setattr(code, "LIBRARY", copy / "cxrtransfer")
    monkeypatch.setattr(code, "SCRIPTS", copy)
    return copy


def test_an_edit_changes_the_code_version_of_exactly_the_scripts_that_import_it(library_copy):
    before = {s: code.code_version(library_copy / f"{s}.py") for s in code.rule_table()}
    edited = library_copy / "cxrtransfer" / "evaluate" / "plots.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    after = {s: code.code_version(library_copy / f"{s}.py") for s in code.rule_table()}
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"plots"}


def test_the_table_lists_every_rule_script(root):
    table = code.table_markdown()
    scripts = sorted(p.stem for p in (root / "workflow_scripts").glob("*.py"))
    for s in scripts:
        assert f"| `{s}.py` |" in table
    assert "`evaluate.plots`" in table.split("| `plots.py` |")[1].splitlines()[0]
