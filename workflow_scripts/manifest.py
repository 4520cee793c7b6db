"""Checkpoint manifest: verify the download, split by patient, write the task's manifest."""

from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import write_csv
from cxrtransfer.core.logs import LOG
from cxrtransfer.data.ingest import build_manifest, check_rejected_fraction


def main(sm):
    p = sm.params
    manifest, rejected, summary = build_manifest(p.data_dir, p.label, p.val_fraction, p.seed)
    LOG.info("task %s (%s):\n%s", sm.wildcards.task, p.label, summary.to_string(index=False))
    # the rejected list goes to the log directory first: it survives a failed job
    write_csv(sm.log.rejected, rejected)
    if len(rejected):
        LOG.warning(
            "%d images rejected before decoding (list: %s):\n%s",
            len(rejected),
            sm.log.rejected,
            rejected["reason"].value_counts().to_string(),
        )
    check_rejected_fraction(
        len(rejected),
        len(manifest) + len(rejected),
        p.max_rejected_fraction,
        f"manifest of task {sm.wildcards.task} (rejected images listed in {sm.log.rejected})",
    )
    write_csv(sm.output.rejected, rejected)
    write_csv(sm.output.summary, summary)
    write_csv(sm.output.manifest, manifest)


run_main(main, snakemake)  # noqa: F821
