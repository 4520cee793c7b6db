"""Rules plot_heatmap / plot_auroc / plot_cell: figures from the tables and prediction files."""

import numpy as np
import pandas as pd
from cxrtransfer.config.job import run_main
from cxrtransfer.core.files import write_csv
from cxrtransfer.core.logs import LOG
from cxrtransfer.core.paths import eps_text
from cxrtransfer.core.products import json_threshold
from cxrtransfer.data.adversarial_cache import read_attack, set_caches
from cxrtransfer.data.boxes import finding_boxes, read_prepared, scale_box
from cxrtransfer.data.shards import read_shard
from cxrtransfer.evaluate.examples import aligned_cell, cell_examples, plot_examples
from cxrtransfer.evaluate.headline import plot_headline
from cxrtransfer.evaluate.plots import plot_auroc_vs_eps, plot_roc, plot_transfer_heatmap
from cxrtransfer.evaluate.predictions import ADV_COLUMNS, CLEAN_COLUMNS, read_predictions


def concat(parts):
    return {
        "images": np.concatenate([p["images"] for p in parts]),
        "image_index": np.concatenate([p["image_index"] for p in parts]),
    }


def plot_cell(sm):
    w = sm.wildcards
    clean = read_predictions(sm.input.clean, CLEAN_COLUMNS, list(sm.input.shards))
    adv = read_predictions(sm.input.adv, ADV_COLUMNS, list(sm.input.shards))
    eps = eps_text(float(w.eps), sm.params.norm)
    title = (
        f"Target {w.target}, {w.data_task} test set\n{w.attack} at ε = {eps} crafted on {w.source}"
    )
    plot_roc(clean, adv, title, sm.output.roc, sm.output.roc_pdf)
    t = json_threshold(sm.input.target_metrics)
    cell = aligned_cell(
        clean,
        adv,
        concat([read_shard(p) for p in sm.input.shards]),
        concat([read_attack(p) for p in set_caches(sm.input.attacks)]),
    )
    finding = sm.params.get("box_finding")  # only with boxes (data.bboxes)
    boxes = finding_boxes(read_prepared(sm.input.boxes), finding) if finding else {}
    # the energy table covers every boxed image of the set; the plot draws boxed ones first
    pick, energy = cell_examples(cell, sm.params.per_class, t, finding, boxes)
    write_csv(sm.output.boxes, energy)
    clean_u8, adv_u8 = cell["clean_u8"][pick], cell["adv_u8"][pick]
    names = cell["image_index"][pick]
    size = clean_u8.shape[-1]
    if finding:
        e = energy["energy_inside"]
        LOG.info(
            "%d of %d image(s) of the set have a %s box, all in the table (energy inside: %s); "
            "%d of them among the %d example image(s) drawn",
            len(energy),
            len(cell["image_index"]),
            finding,
            f"median {e.median():.3f}, {e.min():.3f}-{e.max():.3f}" if len(e) else "none",
            int(energy["in_example_plot"].sum()),
            len(names),
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
        out_pdf=sm.output.examples_pdf,
        threshold=t,
        boxes=[scale_box(boxes[n][:4], boxes[n][4:], size) if n in boxes else None for n in names],
        box_finding=finding,
        energy=[by_name.get(n) for n in names],
        set_boxed=(len(energy), len(cell["image_index"])) if finding else None,
    )


def main(sm):
    w, kind, out = sm.wildcards, sm.params.kind, sm.output
    if kind == "headline":
        df = pd.read_csv(sm.input.table)
        plot_headline(df, dict(sm.params.deployed), dict(sm.params.norms), out.png, out.pdf)
    elif kind == "heatmap":
        df = pd.read_csv(sm.input.table)
        plot_transfer_heatmap(df, w.data_task, w.attack, out.png, out.pdf, norm=sm.params.norm)
    elif kind == "auroc":
        df = pd.read_csv(sm.input.table)
        plot_auroc_vs_eps(df, w.data_task, w.attack, w.target, out.png, out.pdf, sm.params.norm)
    else:
        plot_cell(sm)


run_main(main, snakemake)  # noqa: F821
