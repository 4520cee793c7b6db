"""Rule shard: decode one shard of a task's split into HDF5."""

import pandas as pd
from cxrtransfer.config.job import run_main
from cxrtransfer.data.shards import shard_rows, write_shard


def main(sm):
    p, w = sm.params, sm.wildcards
    manifest = pd.read_csv(sm.input.manifest, dtype={"image_index": str})
    rows = shard_rows(manifest, w.split, int(w.shard), p.shard_size)
    attrs = {
        "task": w.task,
        "label": p.label if isinstance(p.label, str) else "|".join(p.label),
        "split": w.split,
        "shard": int(w.shard),
        "source": p.source,
        "manifest": str(sm.input.manifest),
    }
    if not isinstance(p.label, str):  # a multi-label task: its findings, in output order
        attrs["label_names"] = list(p.label)
    write_shard(
        rows,
        sm.output[0],
        p.image_size,
        attrs,
        sm.threads,
        p.max_rejected_fraction,
        rejected_log=sm.log.rejected,
    )


run_main(main, snakemake)  # noqa: F821
