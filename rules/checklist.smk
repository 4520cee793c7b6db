# The evaluation checklist (Carlini et al. 2019): one job per target that the grid attacks
# white-box runs the extra variants of those attacks (single-step, unbounded, more steps) on its
# test images with the target loaded once (cxrtransfer.plan.checklist); the tables job checks
# them, with the grid's cells, into results/tables/checklist.csv and the summary (an FGSM gets only its unbounded run).
rule checklist_runs:
    input:
        unpack(inputs_of("checklist_runs", "target")),
    output:
        P.CHECKLIST_RUNS,
    log:
        P.log("checklist", "{target}"),
    benchmark:
        P.benchmark("checklist", "{target}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("attack_runtime"),
    params:
        runs=lambda w: plan_checklist.runs(config, w.target),
        data_task=lambda w: plan.source_task(config, w.target),
        image_size=config["data"]["image_size"],
        batch_size=config["attack_batch_size"],
        n_bootstrap=config["evaluation"]["n_bootstrap"],
        confidence=config["evaluation"]["confidence"],
        seed=config["evaluation"]["seed"],
        code=code("checklist_runs"),
    script:
        script_path("checklist_runs")
