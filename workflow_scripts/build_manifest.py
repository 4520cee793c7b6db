"""Checkpoint manifest: verify the download, split by patient, write the task's manifest."""

from cxrtransfer.ingest import build_manifest, check_rejected_fraction
from cxrtransfer.utils import LOG, run_main, write_csv


def main(sm):
    p = sm.params
    manifest, rejected, summary = build_manifest(p.data_dir, p.label, p.val_fraction, p.seed)
    LOG.info("task %s (%s):\n%s", sm.wildcards.task, p.label, summary.to_string(index=False))
    if len(rejected):
        LOG.warning(
            "%d images rejected before decoding:\n%s",
            len(rejected),
            rejected["reason"].value_counts().to_string(),
        )
    write_csv(sm.output.rejected, rejected)
    check_rejected_fraction(
        len(rejected),
        len(manifest) + len(rejected),
        p.max_rejected_fraction,
        f"manifest of task {sm.wildcards.task} (rejections in {sm.output.rejected})",
    )
    write_csv(sm.output.summary, summary)
    write_csv(sm.output.manifest, manifest)


run_main(main, snakemake)  # noqa: F821
