"""Rules plot_heatmap / plot_auroc / plot_cell: figures from the tables and prediction files."""

import numpy as np
import pandas as pd
from cxrtransfer.attack_cache import read_attack, set_caches
from cxrtransfer.boxes import energy_table, finding_boxes, read_prepared, scale_box
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
from cxrtransfer.utils import LOG, run_main, write_csv


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
    clean_u8, adv_u8 = cell["clean_u8"][pick], cell["adv_u8"][pick]
    names = cell["image_index"][pick]
    finding = sm.params.get("box_finding")  # only with boxes (data.bboxes)
    boxes = finding_boxes(read_prepared(sm.input.boxes), finding) if finding else {}
    size = clean_u8.shape[-1]
    energy = energy_table(names, clean_u8, adv_u8, cell["label"][pick], finding, boxes, size)
    write_csv(sm.output.boxes, energy)
    if finding:
        LOG.info(
            "%d of %d example image(s) have a %s box; energy inside: %s",
            len(energy),
            len(names),
            finding,
            energy["energy_inside"].round(3).tolist(),
        )
    else:
        LOG.info("no boxes configured (data.bboxes): %s has a header only", sm.output.boxes)
    by_name = energy.set_index("image_index")["energy_inside"].to_dict()
    plot_examples(
        clean_u8,
        adv_u8,
        cell["label"][pick],
        cell["clean_prob"][pick],
        cell["adv_prob"][pick],
        names,
        title,
        sm.output.examples,
        threshold=t,
        boxes=[scale_box(boxes[n][:4], boxes[n][4:], size) if n in boxes else None for n in names],
        box_finding=finding,
        energy=[by_name.get(n) for n in names],
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
