rule attack:
    input:
        model=P.MODEL.format(model="{source}"),
        metrics=P.MODEL_METRICS.format(model="{source}"),
        shard=P.SHARD.format(task="{data_task}", split="test", shard="{shard}"),
    output:
        P.ATTACK,
    log:
        P.log("attack", f"{P.ADV_SET}/{{shard}}"),
    benchmark:
        P.benchmark("attack", f"{P.ADV_SET}/{{shard}}")
    wildcard_constraints:
        attack=alternatives(ATTACKS),
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("attack_runtime"),
    params:
        attack=lambda w: plan.canon(config["attacks"][w.attack]),
        eps=lambda w: plan.eps_value(config, w.attack, w.eps),
        image_size=config["data"]["image_size"],
        batch_size=config["attack_batch_size"],
        code=code("attack"),
    script:
        script_path("attack")


rule noise_control:
    input:
        attack=P.ATTACK,
        model=P.MODEL.format(model="{source}"),
        metrics=P.MODEL_METRICS.format(model="{source}"),
    output:
        P.ATTACK_CONTROL,
    log:
        P.log("noise_control", f"{P.ADV_SET}/{{shard}}"),
    benchmark:
        P.benchmark("noise_control", f"{P.ADV_SET}/{{shard}}")
    wildcard_constraints:
        attack=alternatives(ATTACKS),
    conda:
        "../envs/tensorflow.yaml"
    resources:
        **gpu_resources("attack_runtime"),
    params:
        image_size=config["data"]["image_size"],
        batch_size=config["attack_batch_size"],
        code=code("noise_control"),
    script:
        script_path("noise_control")
