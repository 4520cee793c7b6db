"""Rule study_config: the effective (validated, defaults filled in) configuration of the run."""

import yaml
from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import atomic_path


def main(sm):
    with atomic_path(sm.output[0]) as tmp:
        tmp.write_text(yaml.safe_dump(dict(sm.params.config), sort_keys=False))


run_main(main, snakemake)  # noqa: F821
