rule train:
    input:
        unpack(inputs_of("train", "model")),
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
        code=train_code,
    script:
        script_path("train")


# An ensemble source (a list of models in a grid entry's sources): the members' averaged
# logits saved as one checkpoint with its own threshold, so it is attacked like any model.
rule ensemble:
    input:
        unpack(inputs_of("ensemble", "ensemble")),
    output:
        model=P.MODEL.format(model="{ensemble}"),
        metrics=P.MODEL_METRICS.format(model="{ensemble}"),
        history=P.MODEL_HISTORY.format(model="{ensemble}"),
        patients=P.MODEL_PATIENTS.format(model="{ensemble}"),
    log:
        P.log("ensemble", "{ensemble}"),
    benchmark:
        P.benchmark("ensemble", "{ensemble}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("predict_runtime"),
    params:
        settings=lambda w: plan.canon(ensemble_settings(w.ensemble)),
        code=code("ensemble"),
    script:
        script_path("ensemble")


# A defended model (config defences): a trained model behind an input transform, saved as one
# checkpoint with its own validation threshold, so it is predicted and attacked like any model.
rule defend:
    input:
        unpack(inputs_of("defend", "defended")),
    output:
        model=P.MODEL.format(model="{defended}"),
        metrics=P.MODEL_METRICS.format(model="{defended}"),
        history=P.MODEL_HISTORY.format(model="{defended}"),
        patients=P.MODEL_PATIENTS.format(model="{defended}"),
    log:
        P.log("defend", "{defended}"),
    benchmark:
        P.benchmark("defend", "{defended}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("predict_runtime"),
    params:
        settings=lambda w: plan.canon(defended_settings(w.defended)),
        code=code("defend"),
    script:
        script_path("defend")


# A finding view {model}@{task} of a multi-label model: its output for the binary task's
# finding as a 2-class checkpoint with its own validation threshold on that task's images, so
# it is a target of the task's sets and attacked (loss on that output) like any model.
rule finding_view:
    input:
        unpack(inputs_of("finding_view", "view")),
    output:
        model=P.MODEL.format(model="{view}"),
        metrics=P.MODEL_METRICS.format(model="{view}"),
        history=P.MODEL_HISTORY.format(model="{view}"),
        patients=P.MODEL_PATIENTS.format(model="{view}"),
    log:
        P.log("finding_view", "{view}"),
    benchmark:
        P.benchmark("finding_view", "{view}")
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("predict_runtime"),
    params:
        settings=lambda w: plan.canon(view_settings(w.view)),
        code=code("finding_view"),
    script:
        script_path("finding_view")
