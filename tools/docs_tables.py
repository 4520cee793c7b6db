"""Refresh the generated tables of the docs between their markers (``make docs-tables``):
docs/CODE.md's rule -> library modules table (cxrtransfer.plan.code) and docs/ATTACKS.md's
attack settings (cxrtransfer.attacks.parameters). The tests fail while a table is stale."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow_scripts"))

from cxrtransfer.attacks import parameters  # noqa: E402
from cxrtransfer.plan import code  # noqa: E402

TABLES = {
    ("docs/CODE.md", "code-versions"): code.table_markdown,
    ("docs/ATTACKS.md", "attack-parameters"): parameters.table_markdown,
}


def refresh(path: Path, marker: str, table: str) -> bool:
    """Replace the block between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    text = path.read_text()
    pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path}: no <!-- {marker}:start/end --> markers")
    new = pattern.sub(lambda m: m.group(1) + table + m.group(2), text)
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    for (name, marker), make in TABLES.items():
        changed = refresh(ROOT / name, marker, make())
        print(f"{name} ({marker}): {'updated' if changed else 'up to date'}")
