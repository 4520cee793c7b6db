rule train:
    input:
        train=lambda w: shards(model_task(w.model), "train"),
        val=lambda w: shards(model_task(w.model), "val"),
        test=lambda w: shards(model_task(w.model), "test"),
    output:
        model=P.MODEL,
        metrics=P.MODEL_METRICS,
        history=P.MODEL_HISTORY,
        patients=P.MODEL_PATIENTS,
    log:
        P.log("train", "{model}"),
    benchmark:
        P.benchmark("train", "{model}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("train_runtime"),
    params:
        settings=lambda w: plan.canon(model_settings(config, w.model)),
        code=code("train"),
    script:
        script_path("train")
