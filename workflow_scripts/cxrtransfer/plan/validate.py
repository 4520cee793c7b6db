"""A study's config, checked before anything is planned: its base resolved, the schema's verdict
(unknown keys with the closest valid ones), the schema's defaults filled in, the cross-checks
of ``plan.checks`` and, for the Kaggle data, the download's layout.

The Snakefile runs ``study`` on the config Snakemake read; the same checks run without
Snakemake on config files (Snakemake's own reader of ``--configfile`` does not say where a YAML
syntax error is; this one names the file and line):

    python -m cxrtransfer.plan.validate my-study.yaml [more.yaml ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snakemake.utils import validate as fill_defaults

from cxrtransfer import WorkflowError
from cxrtransfer.config import load
from cxrtransfer.config.schema import SCHEMA_PATH, schema
from cxrtransfer.data.ingest import check_download
from cxrtransfer.plan import checks


def study(config: dict, basedir: str | Path = ".") -> dict:
    """The study ``config`` describes, resolved, validated and with its defaults; a
    WorkflowError names the key (or file) at fault."""
    resolved = load.resolve(dict(config))
    load.check_schema(resolved, schema())
    fill_defaults(resolved, str(SCHEMA_PATH))
    checks.check_config(resolved, basedir)
    if resolved["data"]["source"] == "kaggle":
        check_download(resolved["data"]["kaggle_dir"])
    return resolved


def from_files(paths: list[str | Path]) -> dict:
    """The study of config files given as Snakemake's --configfile gives them (later files
    merged over earlier ones)."""
    config: dict = {}
    for path in paths:
        config = load.merge_files(config, load.read_yaml(path))
    return study(config)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configfiles", nargs="+", help="config files, in --configfile order")
    args = parser.parse_args(argv)
    try:
        cfg = from_files(args.configfiles)
    except WorkflowError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    print(f"OK: {' + '.join(args.configfiles)} is a valid study ('{cfg['study_name']}').")
    return 0


if __name__ == "__main__":
    sys.exit(main())
