"""Rules plot_heatmap / plot_auroc / plot_cell: figures from the tables and prediction files."""

import numpy as np
import pandas as pd
from cxrtransfer.attack_cache import read_attack, set_caches
from cxrtransfer.plots import (
    aligned_cell,
    plot_auroc_vs_eps,
    plot_examples,
    plot_roc,
    plot_transfer_heatmap,
    select_examples,
)
from cxrtransfer.predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions
from cxrtransfer.shards import read_shard
from cxrtransfer.train import json_threshold
from cxrtransfer.utils import run_main


def concat(parts):
    return {
        "images": np.concatenate([p["images"] for p in parts]),
        "image_index": np.concatenate([p["image_index"] for p in parts]),
    }


def plot_cell(sm):
    w = sm.wildcards
    clean = read_predictions(sm.input.clean, CLEAN_COLUMNS, list(sm.input.shards))
    adv = read_predictions(sm.input.adv, ADV_COLUMNS, list(sm.input.shards))
    title = f"{w.target} on {w.attack} eps {w.eps} from {w.source} ({w.data_task} test set)"
    plot_roc(clean, adv, title, sm.output.roc)
    t = json_threshold(sm.input.target_metrics)
    cell = aligned_cell(
        clean,
        adv,
        concat([read_shard(p) for p in sm.input.shards]),
        concat([read_attack(p) for p in set_caches(sm.input.attacks)]),
    )
    pick = select_examples(
        cell["label"],
        cell["clean_prob"],
        cell["adv_prob"],
        cell["l2"],
        sm.params.per_class,
        threshold=t,
    )
    plot_examples(
        cell["clean_u8"][pick],
        cell["adv_u8"][pick],
        cell["label"][pick],
        cell["clean_prob"][pick],
        cell["adv_prob"][pick],
        cell["image_index"][pick],
        title,
        sm.output.examples,
        threshold=t,
    )


def main(sm):
    w, kind = sm.wildcards, sm.params.kind
    if kind == "heatmap":
        plot_transfer_heatmap(pd.read_csv(sm.input.table), w.data_task, w.attack, sm.output[0])
    elif kind == "auroc":
        df = pd.read_csv(sm.input.table)
        plot_auroc_vs_eps(df, w.data_task, w.attack, w.target, sm.output[0])
    else:
        plot_cell(sm)


run_main(main, snakemake)  # noqa: F821
