# Predictions: one job per (target, clean test set) and per (target, adversarial set) over all
# the set's shards (the model is loaded once per job, not once per shard); the noise control of
# a set is predicted in the same job. Adding a target or an eps adds only its own jobs.
rule predict_clean:
    input:
        unpack(inputs_of("predict_clean", "target", "data_task")),
    output:
        P.PRED_CLEAN,
    log:
        P.log("predict", "{target}/clean/{data_task}"),
    benchmark:
        P.benchmark("predict", "{target}/clean/{data_task}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("predict_runtime"),
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
        code=code("predict"),
    script:
        script_path("predict")


rule predict_adv:
    input:
        unpack(
            inputs_of("predict_adv", "target", "source", "data_task", "attack", "eps")
        ),
    output:
        **with_control(adv=P.PRED_ADV, control=P.PRED_ADV_CONTROL),
    log:
        P.log("predict", f"{{target}}/adv/{P.ADV_SET}"),
    benchmark:
        P.benchmark("predict", f"{{target}}/adv/{P.ADV_SET}")
    wildcard_constraints:
        attack=alternatives(ATTACKS),
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("predict_runtime"),
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["predict_batch_size"],
        code=code("predict"),
    script:
        script_path("predict")


# One job per adversarial set and its noise control: every target's cells of both.
rule evaluate:
    input:
        unpack(inputs_of("evaluate", "source", "data_task", "attack", "eps")),
    output:
        **with_control(metrics=P.SET_METRICS, control=P.SET_METRICS_CONTROL),
    log:
        P.log("evaluate", P.ADV_SET),
    benchmark:
        P.benchmark("evaluate", P.ADV_SET)
    wildcard_constraints:
        attack=alternatives(ATTACKS),
    conda:
        "../envs/report.yaml"
    resources:
        **cpu_resources(),
    params:
        targets=lambda w: sorted(plan.targets_for(config, w.data_task)),
        models=lambda w: model_facts(evaluated_models(w)),
        n_bootstrap=config["evaluation"]["n_bootstrap"],
        confidence=config["evaluation"]["confidence"],
        seed=config["evaluation"]["seed"],
        code=code("evaluate"),
    script:
        script_path("evaluate")


import mimetypes

CHECKLIST_TARGETS = plan_checklist.targets(config)

# The report embeds each of its files with its MIME type, which Snakemake guesses from the name.
# Python's own table (3.11) lacks YAML (results/report/config.yaml) and Markdown (summary.md;
# only a system /etc/mime.types knows it): Snakemake then warns and assumes text/plain.
mimetypes.add_type("application/yaml", ".yaml")
mimetypes.add_type("text/markdown", ".md")


rule tables:
    input:
        sets=[P.SET_METRICS.format(**s.__dict__) for s in ADV_SETS],
        comparisons=plan_comparisons.comparison_files(config),
        checklist=[P.CHECKLIST_RUNS.format(target=t) for t in CHECKLIST_TARGETS],
        checklist_metrics=[P.MODEL_METRICS.format(model=t) for t in CHECKLIST_TARGETS],
    output:
        transfer=report(
            P.TRANSFER_TABLE,
            caption="../report/transfer.rst",
            category="Tables",
        ),
        summary=report(
            P.SUMMARY,
            caption="../report/summary.rst",
            category="Tables",
        ),
        summary_html=report(
            P.SUMMARY_HTML,
            caption="../report/summary.rst",
            category="1. The answer",
            labels={"document": "summary"},
        ),
        comparisons=report(
            P.COMPARISONS_TABLE,
            caption="../report/comparisons.rst",
            category="Tables",
        ),
        checklist=report(
            P.CHECKLIST_TABLE,
            caption="../report/checklist.rst",
            category="Tables",
        ),
        # one directory, not one output per matrix: a job whose output list grows with the
        # grid would lack metadata for the new files, and Snakemake then skips its params check
        matrices=report(
            directory(P.MATRICES),
            patterns=["{name}.csv"],
            caption="../report/matrix.rst",
            category="Matrices",
        ),
    log:
        P.log("tables"),
    benchmark:
        P.benchmark("tables")
    conda:
        "../envs/report.yaml"
    params:
        **({"expert": EXPERT_COLUMNS} if EXPERT_COLUMNS else {}),
        # the grid itself: Snakemake does not rerun a job whose outputs exist when only the
        # set of its inputs grows (e.g. a new eps), but it does when a param changes
        adversarial_sets=sorted(s.path for s in ADV_SETS),
        models=model_facts([*MODELS, *ENSEMBLES, *DEFENDED, *VIEWS]),
        data_source=config["data"]["source"],
        # {deployed target: its data task}: whose comparisons the summary's answer reads
        deployed=plan_comparisons.deployed_targets(config),
        # the checklist's rules: tolerances, each defended target's base, unchecked models
        checklist={
            "tolerance": config["checklist"]["tolerance"],
            "unbounded_max_auroc": config["checklist"]["unbounded_max_auroc"],
            "defended": {d: plan.base_model(config, d) for d in DEFENDED},
            "no_base": plan_checklist.no_base_models(config),
            "norms": {a: plan.attack_norm(config, a) for a in ATTACKS},
        },
        # only with expert labels: {task: expert column or None} (null: the params of before)
        code=code("tables"),
    script:
        script_path("tables")


# One job per deployed target: paired comparisons of its adversarial sets on its test images
# (the same patients resampled for both sets of a pair), from the prediction files; the
# summary states an ordering only where the paired CI of the difference excludes 0.
rule compare:
    input:
        unpack(lambda w: plan_comparisons.compare_inputs(config, w.target)),
    output:
        P.COMPARISONS,
    log:
        P.log("compare", "{target}"),
    benchmark:
        P.benchmark("compare", "{target}")
    wildcard_constraints:
        target=alternatives(plan_comparisons.deployed_targets(config)),
    conda:
        "../envs/report.yaml"
    resources:
        **cpu_resources(),
    params:
        settings=lambda w: plan_comparisons.compare_settings(config, w.target),
        n_bootstrap=config["evaluation"]["n_bootstrap"],
        confidence=config["evaluation"]["confidence"],
        seed=config["evaluation"]["seed"],
        code=code("compare"),
    script:
        script_path("compare")


# The report's labels of a cell's figures: a reader filters them by data task, attack and eps.
CELL_LABELS = {
    "data task": "{data_task}",
    "attack": "{attack}",
    "eps": "{eps}",
    "source": "{source}",
    "target": "{target}",
}


# The answer in one picture: every attack on each deployed target beside its noise control.
rule plot_headline:
    input:
        table=P.TRANSFER_TABLE,
    output:
        png=report(
            P.HEADLINE,
            caption="../report/headline.rst",
            category="1. The answer",
            labels={"figure": "headline", "format": "PNG"},
        ),
        pdf=report(
            P.HEADLINE_PDF,
            caption="../report/headline.rst",
            category="1. The answer",
            labels={"figure": "headline", "format": "PDF"},
        ),
    log:
        P.log("plots", "headline"),
    benchmark:
        P.benchmark("plots", "headline")
    conda:
        "../envs/report.yaml"
    params:
        kind="headline",
        # {deployed target: its data task}, as the summary's answer reads them
        deployed=plan_comparisons.deployed_targets(config),
        # the checklist's rules: tolerances, each defended target's base, unchecked models
        checklist={
            "tolerance": config["checklist"]["tolerance"],
            "unbounded_max_auroc": config["checklist"]["unbounded_max_auroc"],
            "defended": {d: plan.base_model(config, d) for d in DEFENDED},
            "no_base": plan_checklist.no_base_models(config),
            "norms": {a: plan.attack_norm(config, a) for a in ATTACKS},
        },
        norms={a: plan.attack_norm(config, a) for a in sorted(config["attacks"])},
        code=code("plots"),
    script:
        script_path("plots")


rule plot_heatmap:
    input:
        table=P.TRANSFER_TABLE,
    output:
        png=report(
            P.HEATMAP,
            caption="../report/heatmap.rst",
            category="Transfer heatmaps",
            subcategory="data task {data_task}",
            labels={"data task": "{data_task}", "attack": "{attack}", "format": "PNG"},
        ),
        pdf=report(
            P.HEATMAP_PDF,
            caption="../report/heatmap.rst",
            category="Transfer heatmaps",
            subcategory="data task {data_task}",
            labels={"data task": "{data_task}", "attack": "{attack}", "format": "PDF"},
        ),
    log:
        P.log("plots", "heatmap/{data_task}_{attack}"),
    benchmark:
        P.benchmark("plots", "heatmap/{data_task}_{attack}")
    conda:
        "../envs/report.yaml"
    params:
        kind="heatmap",
        norm=lambda w: plan.attack_norm(config, w.attack),
        code=code("plots"),
    script:
        script_path("plots")


rule plot_auroc:
    input:
        table=P.TRANSFER_TABLE,
    output:
        png=report(
            P.AUROC_PLOT,
            caption="../report/auroc.rst",
            category="AUROC against eps",
            subcategory="data task {data_task}",
            labels={
                "data task": "{data_task}",
                "attack": "{attack}",
                "target": "{target}",
                "format": "PNG",
            },
        ),
        pdf=report(
            P.AUROC_PLOT_PDF,
            caption="../report/auroc.rst",
            category="AUROC against eps",
            subcategory="data task {data_task}",
            labels={
                "data task": "{data_task}",
                "attack": "{attack}",
                "target": "{target}",
                "format": "PDF",
            },
        ),
    log:
        P.log("plots", "auroc/{data_task}_{attack}_{target}"),
    benchmark:
        P.benchmark("plots", "auroc/{data_task}_{attack}_{target}")
    conda:
        "../envs/report.yaml"
    params:
        kind="auroc",
        norm=lambda w: plan.attack_norm(config, w.attack),
        code=code("plots"),
    script:
        script_path("plots")


rule plot_cell:
    input:
        # only with boxes (data.bboxes): the checked box table
        unpack(example_box_inputs),
        clean=lambda w: clean_predictions(w.target, w.data_task),
        adv=lambda w: adv_predictions(w, w.target),
        target_metrics=P.MODEL_METRICS.format(model="{target}"),
        shards=lambda w: shards(w.data_task, "test"),
        attacks=attack_dir,
    output:
        roc=report(
            P.ROC_PLOT,
            caption="../report/roc.rst",
            category="ROC curves",
            subcategory="data task {data_task}",
            labels=CELL_LABELS | {"format": "PNG"},
        ),
        roc_pdf=report(
            P.ROC_PLOT_PDF,
            caption="../report/roc.rst",
            category="ROC curves",
            subcategory="data task {data_task}",
            labels=CELL_LABELS | {"format": "PDF"},
        ),
        examples=report(
            P.EXAMPLES_PLOT,
            caption="../report/examples.rst",
            category="Examples",
            subcategory="data task {data_task}",
            labels=CELL_LABELS | {"format": "PNG"},
        ),
        examples_pdf=report(
            P.EXAMPLES_PLOT_PDF,
            caption="../report/examples.rst",
            category="Examples",
            subcategory="data task {data_task}",
            labels=CELL_LABELS | {"format": "PDF"},
        ),
        boxes=report(
            P.EXAMPLES_BOXES,
            caption="../report/boxes.rst",
            category="Examples",
            subcategory="data task {data_task}",
            labels=CELL_LABELS | {"format": "CSV"},
        ),
    log:
        P.log("plots", f"cell/{P.ADV_SET}/{{target}}"),
    benchmark:
        P.benchmark("plots", f"cell/{P.ADV_SET}/{{target}}")
    conda:
        "../envs/report.yaml"
    resources:
        **cpu_resources(),
    params:
        # only with boxes: the data task's finding, whose boxes the plot draws
        **(
            {"box_finding": lambda w: config["tasks"][w.data_task]["label"]}
            if BOX_FILE
            else {}
        ),
        kind="cell",
        norm=lambda w: plan.attack_norm(config, w.attack),
        per_class=config["evaluation"]["examples_per_class"],
        code=code("plots"),
    script:
        script_path("plots")


rule study_config:
    output:
        report(
            P.STUDY_CONFIG,
            caption="../report/config.rst",
            category="Configuration",
        ),
    log:
        P.log("study_config"),
    benchmark:
        P.benchmark("study_config")
    conda:
        "../envs/report.yaml"
    params:
        config=plan.canon(config),
        code=code("study_config"),
    script:
        script_path("study_config")
