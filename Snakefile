# Adversarial transferability between chest X-ray classifiers (NIH ChestX-ray14).
# Default target: the whole study on the built-in synthetic dataset, see README.md.


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/attack.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        plan.final_outputs(config),
