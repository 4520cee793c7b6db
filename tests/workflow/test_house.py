"""The tree is the pipeline: layers without cycles (import-linter), small modules and functions,
imports at the top, a front-door README and the rule -> modules table in the docs."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cxrtransfer.plan import code

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "workflow_scripts" / "cxrtransfer"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Imports that may stay inside a function (with a `# heavy:` comment saying why): packages whose
# import costs seconds, kept out of the Snakefile's parse and of jobs that do not use them.
HEAVY = ("tensorflow", "keras", "matplotlib", "scipy", "sklearn", "h5py", "PIL", "skimage")


def _modules():
    return sorted(LIBRARY.rglob("*.py"))


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_the_layers_hold_and_there_are_no_cycles():
    """import-linter's contracts of pyproject.toml (layers by stage, acyclic siblings, plots
    away from attack, training and planning code)."""
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(LIBRARY)): n
        for p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


def test_no_function_over_80_lines():
    long = {}
    for p in [*_modules(), *(ROOT / "workflow_scripts").glob("*.py")]:
        for f in _functions(ast.parse(p.read_text())):
            n = f.end_lineno - f.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{p.relative_to(ROOT)}:{f.name}"] = n
    assert not long, long


def _heavy_at_top(module: str, seen: frozenset = frozenset()) -> bool:
    """Whether importing a package module imports a heavy package: at its top level, itself or
    through the package modules it imports there."""
    tree = ast.parse(code.module_file(module).read_text())
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        for n in names:
            if n.split(".")[0] in HEAVY:
                return True
            if code.module_file(n) is not None and n not in seen and n != module:
                if _heavy_at_top(n, seen | {module}):
                    return True
    return False


def _says_why(lines: list[str], k: int) -> bool:
    """Whether the block of imports and comments that ends at line index ``k`` holds a
    ``# heavy:`` comment (consecutive imports share the comment above the first one)."""
    while k >= 0 and re.match(r"\s*(#|from |import |$)", lines[k]):
        if lines[k].strip().startswith("# heavy:"):
            return True
        k -= 1
    return False


def test_imports_inside_functions_are_heavy_and_say_why():
    bad = []
    for p in _modules():
        lines = p.read_text().splitlines()
        for f in _functions(ast.parse(p.read_text())):
            for node in ast.walk(f):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                heavy = all(
                    n.split(".")[0] in HEAVY
                    or (code.module_file(n) is not None and _heavy_at_top(n))
                    for n in names
                )
                said = "# heavy:" in lines[node.lineno - 1] or _says_why(lines, node.lineno - 2)
                if not (heavy and said):
                    bad.append(f"{p.relative_to(LIBRARY)}:{node.lineno} {', '.join(names)}")
    assert not bad, bad


# What rules/common.smk and rules/data.smk import at parse time.
def _snakefile_imports() -> list[str]:
    """The library modules the Snakefile and the rule files import when they are parsed."""

    def is_module(name: str) -> bool:
        path = ROOT / "workflow_scripts" / name.replace(".", "/")
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    found = set()
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for line in path.read_text().splitlines():
            m = re.match(
                r"\s*from (cxrtransfer[\w.]*) import ([\w, ]+)|\s*import (cxrtransfer[\w.]*)", line
            )
            if not m:
                continue
            if m.group(3):
                found.add(m.group(3))
                continue
            for name in m.group(2).split(","):
                sub = f"{m.group(1)}.{name.split(' as ')[0].strip()}"
                found.add(sub if is_module(sub) else m.group(1))
    return sorted(found - {"cxrtransfer"})


SNAKEFILE_IMPORTS = _snakefile_imports()


def test_the_parse_time_imports_are_found():
    assert {"cxrtransfer.plan.study", "cxrtransfer.data.synthetic"} <= set(SNAKEFILE_IMPORTS)
    assert len(SNAKEFILE_IMPORTS) >= 8, SNAKEFILE_IMPORTS


@pytest.mark.parametrize("module", SNAKEFILE_IMPORTS)
def test_what_the_snakefile_imports_loads_no_heavy_package(module):
    """The Snakefile imports the plan, the data modules it checks the config with and the model
    settings at parse time, in every job too."""
    probe = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'workflow_scripts')!r}); import {module}; "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", (module, r.stdout)


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_docs_hold_the_current_rule_to_modules_table():
    """docs/CODE.md shows the output of `python -m cxrtransfer.plan.code` (make code-versions)."""
    text = (ROOT / "docs" / "CODE.md").read_text()
    block = re.search(r"<!-- code-versions:start -->\n(.*?)<!-- code-versions:end -->", text, re.S)
    assert block, "docs/CODE.md has no code-versions block"
    assert block.group(1) == code.table_markdown(), (
        "docs/CODE.md is stale: paste the output of `make code-versions` between its markers"
    )


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "workflow_scripts").glob("*.py")))
def test_a_rule_script_loads_tensorflow_only_once_its_job_runs(script):
    """A rule script's own imports load no TensorFlow: config.job.run_main must first send the
    process's output (TensorFlow's C++ start-up notices) to the rule's log, not the console."""
    tree = ast.parse((ROOT / "workflow_scripts" / f"{script}.py").read_text())
    modules = [
        n.module
        for n in tree.body
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cxrtransfer")
    ]
    probe = (
        f"import sys, importlib; sys.path.insert(0, {str(ROOT / 'workflow_scripts')!r}); "
        f"[importlib.import_module(m) for m in {modules!r}]; "
        "print([m for m in ('tensorflow', 'keras') if m in sys.modules])"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", (script, r.stdout)


def test_the_tests_follow_the_packages():
    """One test folder per library package (plus workflow/: end to end, cluster, docs, house);
    no test file outside them."""
    tests = ROOT / "tests"
    packages = {p.parent.name for p in LIBRARY.glob("*/__init__.py")}
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert folders == packages | {"workflow"}, (folders, packages)
    assert not list(tests.glob("test_*.py"))


def test_no_helper_is_copied_between_test_files():
    """A module-level function of the same code in two test files belongs in conftest.py."""
    seen: dict[str, str] = {}
    copies = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("test_"):
                key = ast.dump(ast.Module(body=node.body, type_ignores=[]))
                where = f"{path.relative_to(ROOT)}:{node.name}"
                if key in seen and len(node.body) > 1:
                    copies.append((seen[key], where))
                seen.setdefault(key, where)
    assert not copies, copies
