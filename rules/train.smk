rule train:
    input:
        train=lambda w: shards(model_task(w.model), "train"),
        val=lambda w: shards(model_task(w.model), "val"),
        test=lambda w: shards(model_task(w.model), "test"),
    output:
        model="results/models/{model}/model.keras",
        metrics="results/models/{model}/metrics.json",
        history="results/models/{model}/history.csv",
    log:
        "results/logs/train/{model}.log",
    benchmark:
        "results/benchmarks/train/{model}.tsv"
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("train_runtime"),
    params:
        settings=lambda w: plan.canon(model_settings(config, w.model)),
    script:
        "../workflow_scripts/train_model.py"
