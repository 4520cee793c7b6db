# Ingest: the built-in synthetic download (or the user's Kaggle download, read only), the
# per-task manifests split by patient, and the HDF5 shards. No rule writes into the user's
# download: fetching it is the explicit command `python -m cxrtransfer.fetch DEST`.


def synthetic_inputs(wildcards):
    """The real metadata table the synthetic download draws (data.synthetic.metadata), as an
    input: a changed table regenerates the download."""
    from cxrtransfer.synthetic import SyntheticSpec

    try:  # contradictory keys fail here, before any job runs
        SyntheticSpec.from_config(dict(config["data"]["synthetic"]))
    except cxrtransfer.WorkflowError as e:
        raise SnakemakeWorkflowError(str(e))
    meta = config["data"]["synthetic"].get("metadata")
    if not meta:
        return {}
    if not Path(meta).is_file():
        raise SnakemakeWorkflowError(
            f"data.synthetic.metadata '{meta}' does not exist. Run `make real-metadata` "
            "(downloads the torchxrayvision 1.5.7 wheel from PyPI and extracts "
            "Data_Entry_2017_v2020.csv.gz to resources/nih-metadata/), or point the key at a "
            "Data_Entry_2017.csv you have."
        )
    return {"metadata": meta}


rule synthetic_download:
    input:
        unpack(synthetic_inputs),
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
        spec=plan.canon(config["data"]["synthetic"]),
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
        label=lambda w: config["tasks"][w.task]["label"],
        val_fraction=config["split"]["val_fraction"],
        seed=config["split"]["seed"],
        max_rejected_fraction=config["data"]["max_rejected_fraction"],
        code=code("manifest"),
    script:
        script_path("manifest")


rule shard:
    input:
        manifest=P.MANIFEST,
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
        label=lambda w: config["tasks"][w.task]["label"],
        code=code("shard"),
    script:
        script_path("shard")


rule shard_summary:
    input:
        manifest_rejected=P.MANIFEST_REJECTED,
        shards=lambda w: [
            s for split in cxrtransfer.SPLITS for s in shards(w.task, split)
        ],
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
