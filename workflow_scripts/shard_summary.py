"""Rule shard_summary: class counts per split and every rejected image with its reason."""

import pandas as pd
from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import write_csv
from cxrtransfer.data.datasets import open_shard


def main(sm):
    rows, rejected = [], [pd.read_csv(sm.input.manifest_rejected, dtype=str).assign(stage="ingest")]
    for path in sm.input.shards:
        with open_shard(path) as f:
            labels = f["labels"][...]
            a = dict(f.attrs)
            row = {
                "split": a["split"],
                "shard": path,
                "images": len(labels),
                "positives": int((labels == 1).sum()),  # multi-label: any of its findings
                "negatives": int((labels == 0).sum()),
                "rejected": int(a["n_rejected"]),
            }
            if "targets" in f:  # a multi-label task: positives per finding
                targets = f["targets"][...]
                for k, name in enumerate(a["label_names"]):
                    name = name.decode() if isinstance(name, bytes) else str(name)
                    row[f"positives_{name}"] = int(targets[:, k].sum())
            rows.append(row)
            names = f["rejected_image_index"][...].astype(str)
            reasons = f["rejected_reason"][...].astype(str)
        if len(names):
            rejected.append(
                pd.DataFrame(
                    {
                        "image_index": names,
                        "split": a["split"],
                        "path": path,
                        "reason": reasons,
                        "stage": "decode",
                    }
                )
            )
    df = pd.DataFrame(rows)
    counts = ["images", "positives", "negatives", "rejected"]
    counts += [c for c in df.columns if c.startswith("positives_")]
    summary = df.groupby("split", sort=False)[counts].sum()
    summary["shards"] = df.groupby("split", sort=False).size()
    write_csv(sm.output.summary, summary.reset_index())
    rej = pd.concat(rejected, ignore_index=True)
    write_csv(
        sm.output.rejected,
        rej[[c for c in ["image_index", "split", "stage", "reason", "path"] if c in rej]],
    )


run_main(main, snakemake)  # noqa: F821
