# Ingest: the built-in synthetic download (or the user's Kaggle download, read only), the
# per-task manifests split by patient, and the HDF5 shards. No rule writes into the user's
# download: fetching it is the explicit command `python -m cxrtransfer.data.fetch DEST`.


import cxrtransfer.data.synthetic  # noqa: E402

try:  # contradictory data.synthetic keys or a missing metadata table fail before any job runs
    SYNTHETIC_INPUTS = cxrtransfer.data.synthetic.metadata_inputs(config["data"])
except cxrtransfer.WorkflowError as e:
    raise SnakemakeWorkflowError(f"Invalid configuration: {e}")


rule synthetic_download:
    input:
        # the real metadata table it draws, if any: a changed table regenerates the download
        **SYNTHETIC_INPUTS,
    output:
        directory(P.SYNTHETIC_DOWNLOAD),
    log:
        P.log("synthetic_download"),
    benchmark:
        P.benchmark("synthetic_download")
    conda:
        "../envs/data.yaml"
    resources:
        **cpu_resources(),
    params:
        # without the expert-label settings: those only change synthetic_expert_labels
        spec=plan.canon(
            {
                k: v
                for k, v in config["data"]["synthetic"].items()
                if k != "expert_labels"
            }
        ),
        code=code("synthetic_download"),
    script:
        script_path("synthetic_download")


checkpoint manifest:
    input:
        unpack(download_inputs),
    output:
        manifest=P.MANIFEST,
        rejected=P.MANIFEST_REJECTED,
        summary=P.MANIFEST_SUMMARY,
    log:
        log=P.log("manifest", "{task}"),
        # survives a failed job (Snakemake deletes the outputs of a failed job, not its logs)
        rejected=f"{P.LOGS}/manifest/{{task}}.rejected.csv",
    benchmark:
        P.benchmark("manifest", "{task}")
    conda:
        "../envs/data.yaml"
    resources:
        **cpu_resources(),
    params:
        source=config["data"]["source"],
        data_dir=data_dir(),
        label=lambda w: task_label_param(w.task),
        val_fraction=config["split"]["val_fraction"],
        seed=config["split"]["seed"],
        max_rejected_fraction=config["data"]["max_rejected_fraction"],
        code=code("manifest"),
    script:
        script_path("manifest")


rule shard:
    input:
        unpack(inputs_of("shard", "task")),
    output:
        P.SHARD,
    log:
        log=P.log("shard", "{task}/{split}/{shard}"),
        rejected=f"{P.LOGS}/shard/{{task}}/{{split}}/{{shard}}.rejected.csv",
    benchmark:
        P.benchmark("shard", "{task}/{split}/{shard}")
    conda:
        "../envs/data.yaml"
    threads: RES["shard_threads"]
    resources:
        **cpu_resources(),
    params:
        image_size=config["data"]["image_size"],
        shard_size=config["data"]["shard_size"],
        max_rejected_fraction=config["data"]["max_rejected_fraction"],
        source=config["data"]["source"],
        label=lambda w: task_label_param(w.task),
        code=code("shard"),
    script:
        script_path("shard")


rule shard_summary:
    input:
        unpack(inputs_of("shard_summary", "task")),
    output:
        summary=P.SHARD_SUMMARY,
        rejected=P.SHARD_REJECTED,
    log:
        P.log("shard_summary", "{task}"),
    benchmark:
        P.benchmark("shard_summary", "{task}")
    conda:
        "../envs/data.yaml"
    params:
        code=code("shard_summary"),
    script:
        script_path("shard_summary")


# Expert labels (data.expert_labels): the generator's file for synthetic data, then per task
# the checked labels of its finding. Only tasks whose finding has an expert column get one;
# an evaluation reads its task's file, so switching expert labels on reruns only those.
rule synthetic_expert_labels:
    input:
        download=P.SYNTHETIC_DOWNLOAD,
    output:
        P.SYNTHETIC_EXPERT_LABELS,
    log:
        P.log("synthetic_expert_labels"),
    benchmark:
        P.benchmark("synthetic_expert_labels")
    conda:
        "../envs/data.yaml"
    params:
        settings=plan.canon(
            cxrtransfer.data.synthetic.expert_label_settings(
                config["data"]["synthetic"].get("expert_labels")
            )
        ),
        code=code("synthetic_expert_labels"),
    script:
        script_path("synthetic_expert_labels")


rule expert_labels:
    input:
        unpack(expert_label_inputs),
    output:
        P.EXPERT_LABELS,
    log:
        P.log("expert_labels", "{task}"),
    benchmark:
        P.benchmark("expert_labels", "{task}")
    conda:
        "../envs/data.yaml"
    params:
        column=lambda w: EXPERT_COLUMNS[w.task],
        code=code("expert_labels"),
    script:
        script_path("expert_labels")


# Boxes (data.bboxes): the box file checked once against the download's metadata and PNG sizes;
# only the example plots read it, so switching boxes on or off reruns only those.
rule boxes:
    input:
        unpack(box_inputs),
    output:
        P.BOXES,
    log:
        P.log("boxes"),
    benchmark:
        P.benchmark("boxes")
    conda:
        "../envs/data.yaml"
    resources:
        **cpu_resources(),
    params:
        bboxes=BOX_FILE,
        download_dir=data_dir(),
        code=code("boxes"),
    script:
        script_path("boxes")
