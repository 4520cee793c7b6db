rule predict_clean:
    input:
        model="results/models/{target}/model.keras",
        shard="results/shards/{data_task}/test/{shard}.h5",
    output:
        "results/predictions/{target}/clean/{data_task}/{shard}.csv",
    log:
        "results/logs/predict/{target}/clean/{data_task}/{shard}.log",
    benchmark:
        "results/benchmarks/predict/{target}/clean/{data_task}/{shard}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("predict_runtime"),
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
    script:
        "../workflow_scripts/predict.py"


rule predict_adv:
    input:
        model="results/models/{target}/model.keras",
        attack="results/attacks/{source}/{data_task}/{attack}/eps{eps}/{shard}.h5",
    output:
        "results/predictions/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.csv",
    log:
        "results/logs/predict/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.log",
    benchmark:
        "results/benchmarks/predict/{target}/adv/{source}/{data_task}/{attack}/eps{eps}/{shard}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("predict_runtime"),
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
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
    log:
        "results/logs/evaluate/{source}/{data_task}/{attack}/eps{eps}.log",
    benchmark:
        "results/benchmarks/evaluate/{source}/{data_task}/{attack}/eps{eps}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        targets=set_targets,
        evaluation=plan.canon(config["evaluation"]),
        config_models=plan.canon({"models": config["models"]}),
    script:
        "../workflow_scripts/evaluate_set.py"


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
        # one directory, not one output per matrix: a job whose output list grows with the
        # grid would lack metadata for the new files, and Snakemake then skips its params check
        matrices=report(
            directory("results/tables/matrices"),
            patterns=["{name}.csv"],
            caption="../report/matrix.rst",
            category="Matrices",
        ),
    log:
        "results/logs/tables.log",
    benchmark:
        "results/benchmarks/tables.tsv"
    conda:
        "../envs/report.yaml"
    params:
        # the grid itself: Snakemake does not rerun a job whose outputs exist when only the
        # set of its inputs grows (e.g. a new eps), but it does when a param changes
        adversarial_sets=sorted(
            f"{s.source}/{s.data_task}/{s.attack}/eps{s.eps}" for s in ADV_SETS
        ),
        models=plan.canon(config["models"]),
        data_source=config["data"]["source"],
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
    log:
        "results/logs/plots/heatmap_{data_task}_{attack}.log",
    benchmark:
        "results/benchmarks/plots/heatmap_{data_task}_{attack}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        kind="heatmap",
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
    log:
        "results/logs/plots/auroc_{data_task}_{attack}_{target}.log",
    benchmark:
        "results/benchmarks/plots/auroc_{data_task}_{attack}_{target}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        kind="auroc",
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
    log:
        "results/logs/plots/cell/{source}/{data_task}/{attack}/eps{eps}/{target}.log",
    benchmark:
        "results/benchmarks/plots/cell/{source}/{data_task}/{attack}/eps{eps}/{target}.tsv"
    conda:
        "../envs/report.yaml"
    params:
        kind="cell",
        per_class=config["evaluation"]["examples_per_class"],
    script:
        "../workflow_scripts/make_plots.py"


rule study_config:
    output:
        report(
            "results/report/config.yaml",
            caption="../report/config.rst",
            category="Configuration",
        ),
    log:
        "results/logs/study_config.log",
    benchmark:
        "results/benchmarks/study_config.tsv"
    conda:
        "../envs/report.yaml"
    params:
        config=plan.canon(config),
    script:
        "../workflow_scripts/write_config.py"
