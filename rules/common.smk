import re
import sys
from pathlib import Path

import pandas as pd
from snakemake.exceptions import WorkflowError as SnakemakeWorkflowError
from snakemake.utils import min_version

min_version("9.0")

# The workflow's own folder (rules/..), also when it is used as a module of another workflow
# (workflow.basedir is then the user's folder; results and configs stay in the working
# directory). A remote module (github(...)) has no local folder: the library must then be
# installed (pip install) and is imported from there.
_RULES_DIR = workflow.current_basedir
WORKFLOW_DIR = Path(str(_RULES_DIR)).parent if Path(str(_RULES_DIR)).is_dir() else None
if WORKFLOW_DIR is not None:
    sys.path.insert(0, str(WORKFLOW_DIR / "workflow_scripts"))
try:
    import cxrtransfer
except ImportError:
    raise SnakemakeWorkflowError(
        "The workflow's library (cxrtransfer) cannot be imported: use the workflow from a "
        "local clone (module snakefile: the clone's Snakefile) or pip install it from the "
        "clone (pip install -e CLONE) in the environment snakemake runs in."
    )
# Snakefiles share one namespace with Snakemake itself: import modules, not clashing names.
from cxrtransfer.core import paths as P  # noqa: E402
from cxrtransfer.plan import study as plan  # noqa: E402
from cxrtransfer.plan import checks as plan_checks  # noqa: E402
from cxrtransfer.plan import code as plan_code  # noqa: E402
from cxrtransfer.plan import checklist as plan_checklist  # noqa: E402
from cxrtransfer.plan import comparisons as plan_comparisons  # noqa: E402
from cxrtransfer.plan import inputs as plan_inputs  # noqa: E402
from cxrtransfer.plan import validate as plan_validate  # noqa: E402
from cxrtransfer.config import load as config_load  # noqa: E402
from cxrtransfer.config import runconfig  # noqa: E402
import cxrtransfer.data.boxes  # noqa: E402
from cxrtransfer.data.ingest import download_files  # noqa: E402
from cxrtransfer.models.settings import model_settings  # noqa: E402


def _invalid(e):
    return SnakemakeWorkflowError(f"Invalid configuration: {e}")


# config/config.yaml (in the working directory) is the default study, read only when the run
# names no config file: `--configfile FILE` runs FILE's study alone (or on the base study it
# names, cxrtransfer.config.load), never merged with the default. Jobs on a cluster get the
# run's --configfile again (not the flags that would replace a `configfile:` directive), so
# they read exactly the files the run planned with. A module gets its config from the user's
# workflow (module ...: config: config).
DEFAULT_CONFIG = "config/config.yaml"
if not workflow.overwrite_configfiles and Path(DEFAULT_CONFIG).is_file():
    try:  # Snakemake's reader does not say where a YAML error is; this one does
        config_load.read_yaml(DEFAULT_CONFIG)
    except cxrtransfer.WorkflowError as e:
        raise _invalid(e)
if not workflow.overwrite_configfiles:
    workflow.configfile(DEFAULT_CONFIG)

try:  # the base study resolved, the schema's verdict, its defaults, the cross-checks
    _study = plan_validate.study(config, WORKFLOW_DIR or ".")
except cxrtransfer.WorkflowError as e:
    raise _invalid(e)
config.clear()
config.update(_study)

# The planning process publishes its config's hash; a job (on any executor) refuses to compute
# with another config (cxrtransfer.config.runconfig; checked again in each job's script).
if workflow.is_main_process:
    runconfig.publish_plan(config)
else:
    try:
        runconfig.check_job(config)
    except cxrtransfer.WorkflowError as e:
        raise SnakemakeWorkflowError(str(e))


onstart:
    # Refused before anything is submitted: see plan_checks.check_array_submission.
    _plugin = workflow.executor_plugin
    _timespan = workflow.scheduling_settings.max_jobs_per_timespan
    try:
        plan_checks.check_array_submission(
            len(workflow.dag),
            _plugin.name if _plugin is not None else "",
            getattr(workflow.executor_settings, "array_jobs", None),
            workflow.resource_settings.nodes,
            _timespan.max_jobs if _timespan is not None else None,
        )
    except cxrtransfer.WorkflowError as e:
        raise SnakemakeWorkflowError(str(e))


RES = config["resources"]
ADV_SETS = plan.adversarial_sets(config)
TASKS = list(config["tasks"])
MODELS = list(config["models"])
ENSEMBLES = plan.ensembles(config)
DEFENDED = plan.defended(config)
VIEWS = plan.views(config)  # {multi-label model}@{binary task}
ATTACKS = list(config["attacks"])


def alternatives(names):
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    task=alternatives(TASKS),
    data_task=alternatives(TASKS),
    split=alternatives(cxrtransfer.SPLITS),
    shard=r"\d\d\d+",
    model=alternatives(MODELS),
    source=alternatives([*MODELS, *ENSEMBLES, *DEFENDED, *VIEWS]),
    ensemble=alternatives(ENSEMBLES),
    defended=alternatives(DEFENDED),
    view=alternatives(VIEWS),
    target=alternatives([*MODELS, *DEFENDED, *VIEWS]),
    attack=alternatives([*ATTACKS, *[f"{a}{P.CONTROL_SUFFIX}" for a in ATTACKS]]),
    eps=r"[0-9.]+",


def script_path(name):
    """The rule's script and, as a param, the version of the library code it runs."""
    return f"../workflow_scripts/{name}.py"


def code(name):
    return plan_code.code_version(workflow.source_path(script_path(name)))


def data_dir():
    if config["data"]["source"] == "synthetic":
        return P.SYNTHETIC_DOWNLOAD
    return config["data"]["kaggle_dir"]


def download_inputs(wildcards):
    """The download the manifests are built from: the synthetic rule's output, or the files of
    the user's download (read only; no rule writes there)."""
    if config["data"]["source"] == "synthetic":
        return {"download": data_dir()}
    try:
        return download_files(data_dir())
    except cxrtransfer.WorkflowError as e:
        raise SnakemakeWorkflowError(str(e))


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
    return plan.shard_labels(n, config["data"]["shard_size"])


# What the inputs of the jobs depend on (cxrtransfer.plan.inputs; verify uses the same inputs)
FACTS = plan_inputs.ConfigFacts(config, shard_ids)


def inputs_of(rule, *wildcards):
    """A rule's named inputs (cxrtransfer.plan.inputs), from the job's ``wildcards``."""
    make = getattr(plan_inputs, rule)
    return lambda w: make(FACTS, *(getattr(w, name) for name in wildcards))


def shards(task, split):
    return plan_inputs.shards(FACTS, task, split)


def model_task(name):
    return config["models"][name]["task"]


def task_label_param(task):
    """A binary task's finding (text, as before); a multi-label task's findings (a list)."""
    labels = plan.task_labels(config, task)
    return labels if plan.is_multilabel_task(config, task) else labels[0]


# Cores of one TensorFlow job (train, attack, predict): the CPUs it gets per GPU on a cluster.
# Declared as the rules' threads so a local run never starts two such jobs on the same cores
# (TensorFlow would use every core in each); utils.run_main caps TensorFlow's thread pool to it.
TF_THREADS = RES["cpus_per_gpu"] * max(1, RES["gpu"])


def gpu_resources(runtime_key):
    """Cluster resources of a GPU job; time and memory limits grow with each retry."""
    res = {
        "gpu": RES["gpu"],
        "cpus_per_gpu": RES["cpus_per_gpu"],
        "mem_mb": lambda wc, attempt: RES["gpu_mem_mb"] * attempt,
        "runtime": lambda wc, attempt: RES[runtime_key] * attempt,
    }
    if RES["gpu_partition"]:
        res["slurm_partition"] = RES["gpu_partition"]
    return res


def cpu_resources():
    """Cluster resources of a CPU job; time and memory limits grow with each retry."""
    return {
        "mem_mb": lambda wc, attempt: RES["cpu_mem_mb"] * attempt,
        "runtime": lambda wc, attempt: RES["cpu_runtime"] * attempt,
    }


NOISE_CONTROL = bool(config["noise_control"])


def with_control(**named):
    """A rule's named outputs (or inputs), without the ``control`` one when the study has no
    noise controls."""
    return {k: v for k, v in named.items() if k != "control" or NOISE_CONTROL}


def _set_keys(w, attack):
    return dict(source=w.source, data_task=w.data_task, attack=attack, eps=w.eps)


def adv_predictions(w, target):
    return P.PRED_ADV.format(target=target, **_set_keys(w, w.attack))


def clean_predictions(target, data_task):
    return P.PRED_CLEAN.format(target=target, data_task=data_task)


def attack_dir(w, template=P.ATTACK_DIR):
    """An adversarial set's directory of caches (or, with P.ATTACK_CONTROL_DIR, its control's)."""
    return template.format(**_set_keys(w, w.attack))


EXPERT_FILE = plan.expert_labels_file(config)
# {task: expert column or None} when the study has expert labels, else {}
EXPERT_COLUMNS = plan.expert_columns(config)


def expert_label_inputs(w):
    """The expert-label file and the download's metadata it is checked against."""
    if config["data"]["source"] == "synthetic":
        metadata = data_dir()  # the synthetic download (a directory)
    else:
        metadata = str(download_files(data_dir())["csv"])
    return {"expert": EXPERT_FILE, "metadata": metadata}


try:  # data.bboxes: the box file (None: no boxes); a path that does not exist fails here
    BOX_FILE = cxrtransfer.data.boxes.resolve(config["data"], data_dir())
except cxrtransfer.WorkflowError as e:
    raise SnakemakeWorkflowError(f"Invalid configuration: {e}")


def box_inputs(w):
    """The box file and the download's metadata it is checked against. The synthetic
    download's own box file is inside its directory (the rule's output), so the directory is
    the input then."""
    if config["data"]["source"] == "synthetic":
        inputs = {"metadata": data_dir()}
    else:
        inputs = {"metadata": str(download_files(data_dir())["csv"])}
    in_download = Path(BOX_FILE or "").parent == Path(data_dir())
    if not (in_download and config["data"]["source"] == "synthetic"):
        inputs["boxes"] = BOX_FILE
    return inputs


def example_box_inputs(w):
    """The checked boxes, for the example plots, when the study has boxes."""
    return {"boxes": P.BOXES} if BOX_FILE else {}


def evaluated_models(w):
    """The source, its members if it is an ensemble, and the targets of one set."""
    return plan_inputs.evaluated_models(FACTS, w.source, w.data_task)


def ensemble_settings(name):
    """What an ensemble job reads: its members, their shared task and image size."""
    facts = plan.source_facts(config, name)
    return {
        "members": facts["members"],
        "task": facts["task"],
        "arch": facts["arch"],
        "image_size": int(config["data"]["image_size"]),
    }


def defended_settings(name):
    """What a defend job reads: the model inside, its transform and the noise seed."""
    d = config["defences"][name]
    facts = plan.source_facts(config, name)
    return {
        "model": d["model"],
        "defence": dict(d["defence"]),
        "seed": int(d.get("seed", 0)),
        "task": facts["task"],
        "arch": facts["arch"],
        "image_size": int(config["data"]["image_size"]),
    }


def view_settings(name):
    """What a finding_view job reads: the multi-label model, the binary task, its finding and
    the model's output column of it (and all its columns, checked against its metrics.json).
    """
    model, task = plan.view_parts(name)
    facts = plan.source_facts(config, name)
    return {
        "model": model,
        "task": task,
        "label": plan.task_labels(config, task)[0],
        "column": plan.view_column(config, name),
        "output_columns": plan.task_labels(config, model_task(model)),
        "arch": facts["arch"],
        "image_size": int(config["data"]["image_size"]),
    }


def model_facts(names):
    """What the evaluation reads of each source's and target's settings (relations.factors)."""
    return {m: plan.source_facts(config, m) for m in sorted(names)}


def train_code(w):
    """The code version of a model's training: the train script's; an adversarially trained
    model's also covers cxrtransfer.attacks.adversarial_training and the attack code it runs
    (the script imports it by name for such models only, so an edit of attack code retrains
    them and no other model).
    """
    if not model_settings(config, w.model).get("adversarial"):
        return code("train")
    adversarial = plan_code.module_code_version(
        "cxrtransfer.attacks.adversarial_training"
    )
    return f"{code('train')}-{adversarial}"
