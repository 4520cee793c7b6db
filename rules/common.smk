import math
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "workflow_scripts"))
# Snakefiles share one namespace with Snakemake itself: import modules, not clashing names.
import cxrtransfer  # noqa: E402
from cxrtransfer import plan  # noqa: E402
from cxrtransfer.train import model_settings  # noqa: E402

# config/config.yaml is the default run; a --configfile replaces it instead of being merged
# into it (a merge would mix the default models into another study's).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "../config/config.schema.yaml")
try:
    plan.check_config(config, workflow.basedir)
except cxrtransfer.WorkflowError as e:
    raise SnakemakeWorkflowError(f"Invalid configuration: {e}")

RES = config["resources"]
SPLITS = ["train", "val", "test"]
EPS_LABELS = [plan.eps_label(e) for e in config["eps"]]
ADV_SETS = plan.adversarial_sets(config)
TASKS = list(config["tasks"])
MODELS = list(config["models"])


wildcard_constraints:
    task="|".join(TASKS),
    data_task="|".join(TASKS),
    split="train|val|test",
    shard=r"\d\d\d+",
    model="|".join(MODELS),
    source="|".join(MODELS),
    target="|".join(MODELS),
    attack="|".join(config["attacks"]),
    eps=r"[0-9.]+",


def data_dir():
    if config["data"]["source"] == "synthetic":
        return "results/synthetic/nih-chest-xrays"
    return config["data"]["kaggle_dir"]


def download_inputs(wildcards):
    """The download the manifests are built from (the synthetic rule's output or the real one)."""
    if config["data"]["source"] == "synthetic":
        return {"download": data_dir()}
    d = Path(data_dir())
    if not (d / "Data_Entry_2017.csv").is_file():
        raise SnakemakeWorkflowError(
            f"data.kaggle_dir '{d}' holds no Data_Entry_2017.csv. Point it at the extracted "
            "Kaggle download (nih-chest-xrays/data) or fetch it with "
            "`snakemake fetch_kaggle --cores 1` (needs Kaggle credentials)."
        )
    return {
        "csv": d / "Data_Entry_2017.csv",
        "train_val": d / "train_val_list.txt",
        "test": d / "test_list.txt",
    }


_SPLIT_COUNTS = {}


def shard_ids(task, split):
    """Shard numbers of a task's split; known once the task's manifest checkpoint ran.

    The manifest is read once per file version (input functions call this for every job,
    thousands of times on the full grid)."""
    manifest = checkpoints.manifest.get(task=task).output.manifest
    key = (manifest, Path(manifest).stat().st_mtime_ns)
    if key not in _SPLIT_COUNTS:
        _SPLIT_COUNTS[key] = pd.read_csv(manifest, usecols=["split"])[
            "split"
        ].value_counts()
    n = int(_SPLIT_COUNTS[key].get(split, 0))
    return [
        f"{i:03d}" for i in range(max(1, math.ceil(n / config["data"]["shard_size"])))
    ]


def shards(task, split):
    return [f"results/shards/{task}/{split}/{s}.h5" for s in shard_ids(task, split)]


def model_task(name):
    return config["models"][name]["task"]


def gpu_resources(runtime_key):
    res = {
        "gpu": RES["gpu"],
        "cpus_per_gpu": RES["cpus_per_gpu"],
        "mem_mb": RES["gpu_mem_mb"],
        "runtime": RES[runtime_key],
    }
    if RES["gpu_partition"]:
        res["slurm_partition"] = RES["gpu_partition"]
    return res


def adv_shards(s):
    return [
        f"results/attacks/{s.source}/{s.data_task}/{s.attack}/eps{s.eps}/{i}.h5"
        for i in shard_ids(s.data_task, "test")
    ]


def all_outputs():
    return [
        *[f"results/shards/{t}/summary.csv" for t in TASKS],
        *[f"results/models/{m}/model.keras" for m in MODELS],
        *evaluation_outputs(),
    ]


# Evaluation, tables and plots.
def clean_predictions(target):
    task = model_task(target)
    return [
        f"results/predictions/{target}/clean/{task}/{i}.csv"
        for i in shard_ids(task, "test")
    ]


def adv_predictions(w, target):
    return [
        f"results/predictions/{target}/adv/{w.source}/{w.data_task}/{w.attack}/eps{w.eps}/{i}.csv"
        for i in shard_ids(w.data_task, "test")
    ]


def set_targets(w):
    return plan.targets_for(config, w.data_task)


def set_files():
    return [
        f"results/metrics/sets/{s.source}/{s.data_task}/{s.attack}/eps{s.eps}.json"
        for s in ADV_SETS
    ]


GRID_KEYS = sorted({(s.data_task, s.attack, s.eps) for s in ADV_SETS})
TASK_ATTACKS = sorted({(s.data_task, s.attack) for s in ADV_SETS})


def chosen_cells():
    """Cells with ROC and example plots: per data task and attack, at the largest eps, the
    task's first model (the deployed target) attacked from each relation (white-box first).
    """
    order = ["white-box", "surrogate", "cross-architecture", "cross-task"]
    n = config["evaluation"]["roc_cells"]
    out = []
    for task, attack in TASK_ATTACKS:
        target = plan.targets_for(config, task)[0]
        sets = [s for s in ADV_SETS if s.data_task == task and s.attack == attack]
        top = max(float(s.eps) for s in sets)
        sets = [s for s in sets if float(s.eps) == top]
        sets.sort(
            key=lambda s: order.index(plan.relation(config, s.source, target, task))
        )
        out += [(s.source, task, attack, s.eps, target) for s in sets]
    return out[:n] if n else []


def plot_files():
    files = [f"results/plots/heatmap/{t}_{a}.png" for t, a in TASK_ATTACKS]
    files += [
        f"results/plots/auroc_vs_eps/{t}_{a}_{m}.png"
        for t, a in TASK_ATTACKS
        for m in plan.targets_for(config, t)
    ]
    for s, t, a, e, m in chosen_cells():
        files += [
            f"results/plots/roc/{s}/{t}/{a}/eps{e}/{m}.png",
            f"results/plots/examples/{s}/{t}/{a}/eps{e}/{m}.png",
        ]
    return files


def evaluation_outputs():
    return [
        "results/tables/transfer.csv",
        "results/tables/summary.md",
        "results/report/config.yaml",
        *plot_files(),
    ]
