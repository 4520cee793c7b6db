def clean_predictions(target):
    task = model_task(target)
    return [
        f"results/predictions/{target}/clean/{task}/{i}.csv"
        for i in shard_ids(task, "test")
    ]


def adv_predictions(w, target):
    return [
        f"results/predictions/{target}/adv/{w.source}/{w.data_task}/{w.attack}/eps{w.eps}/{i}.csv"
        for i in shard_ids(w.data_task, "test")
    ]


def set_targets(w):
    return plan.targets_for(config, w.data_task)


def set_files():
    return [
        f"results/metrics/sets/{s.source}/{s.data_task}/{s.attack}/eps{s.eps}.json"
        for s in ADV_SETS
    ]


rule predict_clean:
    input:
        model="results/models/{target}/model.keras",
        shard="results/shards/{data_task}/test/{shard}.h5",
    output:
        "results/predictions/{target}/clean/{data_task}/{shard}.csv",
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
    resources:
        **gpu_resources("predict_runtime"),
    log:
        "results/logs/predict/{target}/clean/{data_task}/{shard}.log",
    benchmark:
        "results/benchmarks/predict/{target}/clean/{data_task}/{shard}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    script:
        "../workflow_scripts/predict.py"


rule predict_adv:
    input:
        model="results/models/{target}/model.keras",
        attack="results/attacks/{source}/{data_task}/{attack}/eps{eps}/{shard}.h5",
    output:
        "results/predictions/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.csv",
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
    resources:
        **gpu_resources("predict_runtime"),
    log:
        "results/logs/predict/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.log",
    benchmark:
        "results/benchmarks/predict/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    script:
        "../workflow_scripts/predict.py"


rule evaluate:
    input:
        clean=lambda w: [p for t in set_targets(w) for p in clean_predictions(t)],
        adv=lambda w: [p for t in set_targets(w) for p in adv_predictions(w, t)],
        source_metrics="results/models/{source}/metrics.json",
        target_metrics=lambda w: [
            f"results/models/{t}/metrics.json" for t in set_targets(w)
        ],
    output:
        "results/metrics/sets/{source}/{data_task}/{attack}/eps{eps}.json",
    params:
        targets=set_targets,
        evaluation=config["evaluation"],
        config_models={"models": config["models"]},
    log:
        "results/logs/evaluate/{source}/{data_task}/{attack}/eps{eps}.log",
    benchmark:
        "results/benchmarks/evaluate/{source}/{data_task}/{attack}/eps{eps}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/evaluate_set.py"




# Summary tables, plots and the report.
GRID_KEYS = sorted({(s.data_task, s.attack, s.eps) for s in ADV_SETS})
TASK_ATTACKS = sorted({(s.data_task, s.attack) for s in ADV_SETS})


def matrix_files():
    return [
        f"results/tables/matrices/{t}_{a}_eps{e}_{v}.{ext}"
        for t, a, e in GRID_KEYS
        for v in ("transfer_rate", "adv_auroc")
        for ext in ("csv", "md", "tex")
    ]


def chosen_cells():
    """Cells with ROC and example plots: per data task and attack, at the largest eps, the
    task's first model (the deployed target) attacked from each relation (white-box first)."""
    order = ["white-box", "surrogate", "cross-architecture", "cross-task"]
    n = config["evaluation"]["roc_cells"]
    out = []
    for task, attack in TASK_ATTACKS:
        target = plan.targets_for(config, task)[0]
        sets = [s for s in ADV_SETS if s.data_task == task and s.attack == attack]
        top = max(float(s.eps) for s in sets)
        sets = [s for s in sets if float(s.eps) == top]
        sets.sort(key=lambda s: order.index(plan.relation(config, s.source, target, task)))
        out += [(s.source, task, attack, s.eps, target) for s in sets]
    return out[:n] if n else []


def plot_files():
    files = [f"results/plots/heatmap/{t}_{a}.png" for t, a in TASK_ATTACKS]
    files += [
        f"results/plots/auroc_vs_eps/{t}_{a}_{m}.png"
        for t, a in TASK_ATTACKS
        for m in plan.targets_for(config, t)
    ]
    for s, t, a, e, m in chosen_cells():
        files += [
            f"results/plots/roc/{s}/{t}/{a}/eps{e}/{m}.png",
            f"results/plots/examples/{s}/{t}/{a}/eps{e}/{m}.png",
        ]
    return files


rule tables:
    input:
        sets=set_files(),
    output:
        transfer=report(
            "results/tables/transfer.csv",
            caption="../report/transfer.rst",
            category="Tables",
        ),
        summary=report(
            "results/tables/summary.md",
            caption="../report/summary.rst",
            category="Tables",
        ),
        matrices=[
            report(f, caption="../report/matrix.rst", category="Matrices")
            for f in matrix_files()
        ],
    params:
        matrix_dir="results/tables/matrices",
        models=config["models"],
        data_source=config["data"]["source"],
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/make_tables.py"


rule plot_heatmap:
    input:
        table="results/tables/transfer.csv",
    output:
        report(
            "results/plots/heatmap/{data_task}_{attack}.png",
            caption="../report/heatmap.rst",
            category="Transfer heatmaps",
        ),
    params:
        kind="heatmap",
    log:
        "results/logs/plots/heatmap_{data_task}_{attack}.log",
    benchmark:
        "results/benchmarks/plots/heatmap_{data_task}_{attack}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/make_plots.py"


rule plot_auroc:
    input:
        table="results/tables/transfer.csv",
    output:
        report(
            "results/plots/auroc_vs_eps/{data_task}_{attack}_{target}.png",
            caption="../report/auroc.rst",
            category="AUROC against eps",
        ),
    params:
        kind="auroc",
    log:
        "results/logs/plots/auroc_{data_task}_{attack}_{target}.log",
    benchmark:
        "results/benchmarks/plots/auroc_{data_task}_{attack}_{target}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/make_plots.py"


rule plot_cell:
    input:
        clean=lambda w: clean_predictions(w.target),
        adv=lambda w: adv_predictions(w, w.target),
        target_metrics="results/models/{target}/metrics.json",
        shards=lambda w: shards(w.data_task, "test"),
        attacks=lambda w: [
            f"results/attacks/{w.source}/{w.data_task}/{w.attack}/eps{w.eps}/{i}.h5"
            for i in shard_ids(w.data_task, "test")
        ],
    output:
        roc=report(
            "results/plots/roc/{source}/{data_task}/{attack}/eps{eps}/{target}.png",
            caption="../report/roc.rst",
            category="ROC curves",
        ),
        examples=report(
            "results/plots/examples/{source}/{data_task}/{attack}/eps{eps}/{target}.png",
            caption="../report/examples.rst",
            category="Examples",
        ),
    params:
        kind="cell",
        per_class=config["evaluation"]["examples_per_class"],
    log:
        "results/logs/plots/cell/{source}/{data_task}/{attack}/eps{eps}/{target}.log",
    benchmark:
        "results/benchmarks/plots/cell/{source}/{data_task}/{attack}/eps{eps}/{target}.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/make_plots.py"


rule study_config:
    output:
        report(
            "results/report/config.yaml",
            caption="../report/config.rst",
            category="Configuration",
        ),
    params:
        config=config,
    log:
        "results/logs/study_config.log",
    benchmark:
        "results/benchmarks/study_config.tsv"
    conda:
        "../envs/report.yaml"
    script:
        "../workflow_scripts/write_config.py"


def evaluation_outputs():
    return [
        "results/tables/transfer.csv",
        "results/tables/summary.md",
        "results/report/config.yaml",
        *plot_files(),
    ]
