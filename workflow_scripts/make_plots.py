"""Rules plot_heatmap / plot_auroc / plot_cell: figures from the tables and prediction files."""

import numpy as np
import pandas as pd
from cxrtransfer.jobs import read_attack, read_predictions
from cxrtransfer.plots import (
    plot_auroc_vs_eps,
    plot_examples,
    plot_roc,
    plot_transfer_heatmap,
    select_examples,
)
from cxrtransfer.shards import read_shard
from cxrtransfer.train import json_threshold
from cxrtransfer.utils import run_main


def main(sm):
    w, kind = sm.wildcards, sm.params.kind
    if kind == "heatmap":
        df = pd.read_csv(sm.input.table)
        plot_transfer_heatmap(df, w.data_task, w.attack, sm.output[0])
    elif kind == "auroc":
        df = pd.read_csv(sm.input.table)
        plot_auroc_vs_eps(df, w.data_task, w.attack, w.target, sm.output[0])
    else:
        clean = read_predictions(sm.input.clean)
        adv = read_predictions(sm.input.adv)
        title = f"{w.target} on {w.attack} eps {w.eps}/255 from {w.source} ({w.data_task} test set)"
        plot_roc(clean, adv, title, sm.output.roc)
        t = json_threshold(sm.input.target_metrics)
        shards = [read_shard(p) for p in sm.input.shards]
        attacks = [read_attack(p) for p in sm.input.attacks]
        clean_u8 = np.concatenate([s["images"] for s in shards])
        adv_u8 = np.concatenate([a["images"] for a in attacks])
        names = np.concatenate([a["image_index"] for a in attacks])
        c = clean.set_index("image_index").loc[names]
        a = adv.set_index("image_index").loc[names]
        pick = select_examples(
            a["label"].to_numpy(),
            c["prob"].to_numpy(),
            a["prob"].to_numpy(),
            a["l2"].to_numpy(),
            sm.params.per_class,
            threshold=t,
        )
        plot_examples(
            clean_u8[pick],
            adv_u8[pick],
            a["label"].to_numpy()[pick],
            c["prob"].to_numpy()[pick],
            a["prob"].to_numpy()[pick],
            names[pick],
            title,
            sm.output.examples,
            threshold=t,
        )


run_main(main, snakemake)  # noqa: F821
