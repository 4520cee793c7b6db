"""Code versions: a change to library code reruns exactly the jobs whose results it can change.

A rule's code version is a hash of the source of every library module its script imports,
transitively (imports inside functions count too), with the packages around them
(``__init__.py``). Snakemake itself tracks only the rule's script; passed as a param, the code
version makes it rerun the jobs whose code changed and no others, so the shape of the imports
decides what reruns: the layers (import-linter contracts in pyproject.toml) keep the plotting
rules away from attack, training and planning code.

    python -m cxrtransfer.plan.code        prints the table rule script -> library modules
"""

from __future__ import annotations

import argparse
import ast
import hashlib
from pathlib import Path

PACKAGE = "cxrtransfer"
LIBRARY = Path(__file__).resolve().parents[1]  # the package directory
SCRIPTS = LIBRARY.parent  # workflow_scripts/: the rule scripts


def module_file(name: str) -> Path | None:
    """The source file of package module ``name`` (dotted, e.g. ``cxrtransfer.data.shards``),
    or None when it is not a module of the package."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = LIBRARY.joinpath(*parts[1:])
    for path in (base.with_suffix(".py") if parts[1:] else None, base / "__init__.py"):
        if path is not None and path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    rel = path.resolve().relative_to(LIBRARY.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(source: str, current: str | None = None) -> set[str]:
    """Package modules a piece of source imports (absolute or relative to module ``current``,
    anywhere in it, including imports inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if current is None:
                    continue
                anchor = current.split(".")
                is_pkg = (
                    module_file(current) is not None and module_file(current).name == "__init__.py"
                )
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if module_file(base) is None:
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}"))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if module_file(a.name):
                    found.add(a.name)
    return found


def _with_packages(name: str) -> set[str]:
    """``name`` and the packages around it (importing a module runs their ``__init__``)."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def library_modules(script: str | Path | None = None, modules: tuple[str, ...] = ()) -> list[str]:
    """The package modules a rule script (or the given modules) uses, transitively, with the
    packages around them; dotted names, sorted."""
    todo = set(modules)
    if script is not None:
        todo |= imported_modules(Path(script).read_text())
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo |= _with_packages(m) - seen
        todo |= imported_modules(module_file(m).read_text(), m) - seen
    return sorted(seen)


def _digest(modules: list[str]) -> str:
    h = hashlib.sha256()
    for m in modules:
        h.update(m.encode() + b"\0" + module_file(m).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_version(script: str | Path) -> str:
    """A hash of the source of every library module a rule script uses (``library_modules``)."""
    return _digest(library_modules(script))


def module_code_version(name: str) -> str:
    """A hash of the source of module ``name`` and everything it uses: for code a script
    imports by name for some jobs only (adversarial training)."""
    return _digest(library_modules(modules=(name,)))


def rule_table(scripts_dir: Path = SCRIPTS) -> dict[str, list[str]]:
    """{rule script name: the library modules in its code version}."""
    return {p.stem: library_modules(p) for p in sorted(Path(scripts_dir).glob("*.py"))}


def table_markdown(scripts_dir: Path = SCRIPTS) -> str:
    """The rule -> library modules table (Markdown), package prefix dropped."""
    # Hand-written, not pandas' to_markdown: tabulate pads every cell to its column's width, so
    # in docs/CODE.md one rule's longer module list would rewrite every row of the table (and
    # the short rows would carry hundreds of spaces); and this module, imported when the
    # Snakefile is parsed, stays free of third-party packages.
    lines = ["| rule script | library modules in its code version |", "|---|---|"]
    for script, modules in rule_table(scripts_dir).items():
        shown = [m.removeprefix(f"{PACKAGE}.") for m in modules if m != PACKAGE]
        shown = [m for m in shown if not any(o.startswith(m + ".") for o in shown)]
        lines.append(f"| `{script}.py` | {', '.join(f'`{m}`' for m in shown)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.parse_args(argv)
    print(table_markdown(), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
