rule attack:
    input:
        model="results/models/{source}/model.keras",
        metrics="results/models/{source}/metrics.json",
        shard="results/shards/{data_task}/test/{shard}.h5",
    output:
        "results/attacks/{source}/{data_task}/{attack}/eps{eps}/{shard}.h5",
    log:
        "results/logs/attack/{source}/{data_task}/{attack}/eps{eps}/{shard}.log",
    benchmark:
        "results/benchmarks/attack/{source}/{data_task}/{attack}/eps{eps}/{shard}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("attack_runtime"),
    params:
        attack=lambda w: plan.canon(config["attacks"][w.attack]),
        eps=lambda w: plan.eps_value(config, w.eps),
        image_size=config["data"]["image_size"],
        batch_size=config["attack_batch_size"],
    script:
        "../workflow_scripts/run_attack.py"
