# One job per (adversarial set, test shard): a killed attack redoes only its own shard. With
# noise controls on, the same job also writes the shard's control (the perturbations shuffled
# per image), scored by the source model it has already loaded.
rule attack:
    input:
        model=P.MODEL.format(model="{source}"),
        metrics=P.MODEL_METRICS.format(model="{source}"),
        shard=P.SHARD.format(task="{data_task}", split="test", shard="{shard}"),
    output:
        **with_control(cache=P.ATTACK, control=P.ATTACK_CONTROL),
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
