"""The conda environments (envs/*.yaml) hold exactly what their rules' code imports, pinned to
constraints.txt (the versions the tests run with). Conda is not installed on the development
machines: the environments are checked here, not built (docs/RUNNING.md)."""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from cxrtransfer.plan import code

ROOT = Path(__file__).resolve().parents[2]
# import name -> conda / PyPI package name
PACKAGE = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "h5py": "h5py",
    "numpy": "numpy",
    "pandas": "pandas",
    "scipy": "scipy",
    "matplotlib": "matplotlib",
    "seaborn": "seaborn",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "jsonschema": "jsonschema",
    "markdown": "markdown",
    "tabulate": "tabulate",
    "jinja2": "jinja2",
}
# pandas methods whose optional dependency a call imports (pandas imports it on the call)
OPTIONAL = {"to_markdown": "tabulate", "to_latex": "jinja2"}
# an environment's package -> its name in constraints.txt (the tests run the CPU build)
CONSTRAINT_NAME = {"tensorflow": "tensorflow-cpu"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_roots(path: Path) -> set[str]:
    """Third-party top-level packages a file imports anywhere (in functions too: a job that
    calls the function needs the package), with the optional dependencies of the pandas
    methods it calls (``OPTIONAL``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            out |= {OPTIONAL[node.func.attr]} if node.func.attr in OPTIONAL else set()
    return {r for r in out if r not in sys.stdlib_module_names} - {"cxrtransfer", "__future__"}


def _rules() -> dict[str, tuple[str | None, str | None]]:
    """rule -> (conda environment, script) from rules/*.smk."""
    rules = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            if m:
                env = re.search(r'"\.\./envs/(\w+)\.yaml"', block)
                script = re.search(r'script_path\("(\w+)"\)', block)
                rules[m.group(1)] = (env and env.group(1), script and script.group(1))
    return rules


def _needs(script: str) -> set[str]:
    path = ROOT / "workflow_scripts" / f"{script}.py"
    roots = _imported_roots(path)
    for module in code.library_modules(path):
        roots |= _imported_roots(code.module_file(module))
    unknown = roots - set(PACKAGE)
    assert not unknown, f"{script}: add {unknown} to PACKAGE"
    return {PACKAGE[r] for r in roots}


def _env_packages(name: str) -> dict[str, str]:
    """package -> pinned version of envs/{name}.yaml (conda `name =v`, pip `name==v`)."""
    deps = yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())["dependencies"]
    out = {}
    for dep in deps:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            m = re.fullmatch(r"([\w.-]+)(?:\[[\w,-]+\])?\s*=?=\s*([\w.]+)", spec)
            assert m or spec == "pip", f"envs/{name}.yaml: unpinned {spec!r}"
            if m:
                out[_norm(m.group(1))] = m.group(2)
    return out


def _constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = [re.fullmatch(r"([\w.-]+)==([\w.]+)", line.strip()) for line in lines]
    return {_norm(m.group(1)): m.group(2) for m in pins if m}


RULES = _rules()
ENVS = sorted({env for env, _ in RULES.values() if env})


def test_every_rule_with_a_script_names_its_environment():
    assert len(RULES) >= 15
    missing = [r for r, (env, script) in RULES.items() if script and not env]
    assert not missing, missing


@pytest.mark.parametrize("env", ENVS)
def test_an_environment_holds_exactly_what_its_rules_import(env):
    needed = set()
    for _, script in (v for v in RULES.values() if v[0] == env and v[1]):
        needed |= _needs(script)
    held = set(_env_packages(env)) - {"python"}
    assert held == needed, (
        f"envs/{env}.yaml: missing {sorted(needed - held)}, unused {sorted(held - needed)}"
    )


@pytest.mark.parametrize("env", ENVS)
def test_an_environment_is_pinned_to_the_tested_versions(env):
    constraints = _constraints()
    for package, version in _env_packages(env).items():
        if package == "python":
            assert version == f"{sys.version_info.major}.{sys.version_info.minor}", version
            continue
        name = _norm(CONSTRAINT_NAME.get(package, package))
        assert constraints.get(name) == version, (env, package, version, constraints.get(name))
