# Adversarial transferability between chest X-ray classifiers (NIH ChestX-ray14).
# Default target: the whole study on the built-in synthetic dataset, see README.md.


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/attack.smk"
include: "rules/evaluate.smk"
include: "rules/checklist.smk"


# Light rules that Snakemake runs itself on the submit host (no cluster job, no queue wait).
localrules:
    shard_summary,
    tables,
    plot_heatmap,
    plot_auroc,
    study_config,


rule all:
    default_target: True
    input:
        plan.final_outputs(config),
