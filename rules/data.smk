rule synthetic_download:
    output:
        directory("results/synthetic/nih-chest-xrays"),
    log:
        "results/logs/synthetic_download.log",
    benchmark:
        "results/benchmarks/synthetic_download.tsv"
    conda:
        "../envs/data.yaml"
    params:
        spec=plan.canon(config["data"]["synthetic"]),
    script:
        "../workflow_scripts/make_synthetic.py"


rule fetch_kaggle:
    output:
        csv=f"{config['data']['kaggle_dir']}/Data_Entry_2017.csv",
    log:
        "results/logs/fetch_kaggle.log",
    benchmark:
        "results/benchmarks/fetch_kaggle.tsv"
    conda:
        "../envs/data.yaml"
    params:
        dest=lambda w, output: str(Path(output.csv).parent),
        dataset="nih-chest-xrays/data",
    script:
        "../workflow_scripts/fetch_kaggle.py"


checkpoint manifest:
    input:
        unpack(download_inputs),
    output:
        manifest="results/manifests/{task}.csv",
        rejected="results/manifests/{task}.rejected.csv",
        summary="results/manifests/{task}.summary.csv",
    log:
        "results/logs/manifest/{task}.log",
    benchmark:
        "results/benchmarks/manifest/{task}.tsv"
    conda:
        "../envs/data.yaml"
    params:
        data_dir=data_dir(),
        label=lambda w: config["tasks"][w.task]["label"],
        val_fraction=config["split"]["val_fraction"],
        seed=config["split"]["seed"],
        max_rejected_fraction=config["data"]["max_rejected_fraction"],
    script:
        "../workflow_scripts/build_manifest.py"


rule shard:
    input:
        manifest="results/manifests/{task}.csv",
    output:
        "results/shards/{task}/{split}/{shard}.h5",
    log:
        "results/logs/shard/{task}/{split}/{shard}.log",
    benchmark:
        "results/benchmarks/shard/{task}/{split}/{shard}.tsv"
    conda:
        "../envs/data.yaml"
    threads: RES["shard_threads"]
    resources:
        mem_mb=RES["cpu_mem_mb"],
    params:
        image_size=config["data"]["image_size"],
        shard_size=config["data"]["shard_size"],
        max_rejected_fraction=config["data"]["max_rejected_fraction"],
        source=config["data"]["source"],
        label=lambda w: config["tasks"][w.task]["label"],
    script:
        "../workflow_scripts/build_shard.py"


rule shard_summary:
    input:
        manifest_rejected="results/manifests/{task}.rejected.csv",
        shards=lambda w: [s for split in SPLITS for s in shards(w.task, split)],
    output:
        summary="results/shards/{task}/summary.csv",
        rejected="results/shards/{task}/rejected.csv",
    log:
        "results/logs/shard_summary/{task}.log",
    benchmark:
        "results/benchmarks/shard_summary/{task}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/summarise_shards.py"
