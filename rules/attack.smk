# One job per adversarial set: the source model is loaded once and attacks every test shard
# (one cache per shard). Finished shards of a killed job are kept, stamped, and reused by its
# rerun (cxrtransfer.attacks.job.attack_set). With noise controls on, the same job also writes
# each shard's control (the perturbations shuffled per image), scored by the loaded model.
rule attack:
    input:
        unpack(inputs_of("attack", "source", "data_task", "attack", "eps")),
    output:
        **with_control(
            caches=directory(P.ATTACK_DIR), control=directory(P.ATTACK_CONTROL_DIR)
        ),
    log:
        P.log("attack", P.ADV_SET),
    benchmark:
        P.benchmark("attack", P.ADV_SET)
    wildcard_constraints:
        attack=alternatives(ATTACKS),
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
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


# A universal perturbation (method uap): one per source and eps, crafted on the source's
# training or validation images (never test); rule attack adds it to any task's test images.
rule uap:
    input:
        unpack(inputs_of("uap", "source", "attack", "eps")),
    output:
        P.UAP,
    log:
        P.log("uap", "{source}/{attack}/eps{eps}"),
    benchmark:
        P.benchmark("uap", "{source}/{attack}/eps{eps}")
    wildcard_constraints:
        attack=alternatives(plan.universal_attacks(config)),
    conda:
        "../envs/tensorflow.yaml"
    threads: TF_THREADS
    resources:
        **gpu_resources("attack_runtime"),
    params:
        attack=lambda w: plan.canon(config["attacks"][w.attack]),
        eps=lambda w: plan.eps_value(config, w.attack, w.eps),
        image_size=config["data"]["image_size"],
        batch_size=config["attack_batch_size"],
        code=code("uap"),
    script:
        script_path("uap")
