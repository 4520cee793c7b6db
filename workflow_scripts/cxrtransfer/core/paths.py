"""Every path template of the results tree, written once.

The rules use these as their outputs (Snakemake wildcards in braces) and the plan and the
verify command format them. Paths are relative to the working directory of the run.
"""

import re
from pathlib import Path

RESULTS = "results"
# the top directories of the tree (verify lists products under them)
SYNTHETIC = f"{RESULTS}/synthetic"
MODELS = f"{RESULTS}/models"
ATTACKS = f"{RESULTS}/attacks"
TABLES = f"{RESULTS}/tables"
PLOTS = f"{RESULTS}/plots"
REPORT = f"{RESULTS}/report"

SYNTHETIC_DOWNLOAD = f"{SYNTHETIC}/nih-chest-xrays"
# the generator's expert labels (data.expert_labels: synthetic), beside its download
SYNTHETIC_EXPERT_LABELS = f"{SYNTHETIC}/google2019_nih-chest-xray-labels.csv.gz"
# per task: data.expert_labels checked against the download's metadata, its finding as 0/1
EXPERT_LABELS = f"{RESULTS}/expert_labels/{{task}}.csv"
# data.bboxes checked against the download (metadata, PNG sizes): what the example plots read
BOXES = f"{RESULTS}/boxes/boxes.csv"
MANIFEST = f"{RESULTS}/manifests/{{task}}.csv"
MANIFEST_REJECTED = f"{RESULTS}/manifests/{{task}}.rejected.csv"
MANIFEST_SUMMARY = f"{RESULTS}/manifests/{{task}}.summary.csv"
SHARD = f"{RESULTS}/shards/{{task}}/{{split}}/{{shard}}.h5"
SHARD_SUMMARY = f"{RESULTS}/shards/{{task}}/summary.csv"
SHARD_REJECTED = f"{RESULTS}/shards/{{task}}/rejected.csv"
MODEL_DIR = f"{MODELS}/{{model}}"
MODEL = f"{MODEL_DIR}/model.keras"
MODEL_METRICS = f"{MODEL_DIR}/metrics.json"
MODEL_HISTORY = f"{MODEL_DIR}/history.csv"
MODEL_PATIENTS = f"{MODEL_DIR}/train_patients.txt"
ADV_SET = "{source}/{data_task}/{attack}/eps{eps}"
# One directory per adversarial set (one attack job writes all of it), one cache per test shard;
# finished shards of an unfinished job wait in ATTACK_WORK (see attack_job.attack_set).
ATTACK_DIR = f"{ATTACKS}/{ADV_SET}"
ATTACK = f"{ATTACK_DIR}/{{shard}}.h5"
ATTACK_WORK = f"{ATTACKS}/.work/{ADV_SET}"
# A universal perturbation (attack method uap): one per (source, attack, eps), crafted on the
# source's training or validation images, applied to any data task's test set by rule attack.
UAP = f"{RESULTS}/uap/{{source}}/{{attack}}/eps{{eps}}.h5"
# One prediction file per (target, clean test set) and per (target, adversarial set): the rows
# of all test shards in shard order (one job predicts a whole set, see rules/evaluate.smk).
PRED_CLEAN = f"{RESULTS}/predictions/{{target}}/clean/{{data_task}}.csv"
PRED_ADV = f"{RESULTS}/predictions/{{target}}/adv/{ADV_SET}.csv"
SET_METRICS = f"{RESULTS}/metrics/sets/{ADV_SET}.json"
# per deployed target: paired comparisons of its adversarial sets (evaluate.compare)
COMPARISONS = f"{RESULTS}/metrics/comparisons/{{target}}.csv"
CHECKLIST_RUNS = f"{RESULTS}/checklist/{{target}}.csv"  # the checklist's extra white-box runs
TRANSFER_TABLE = f"{TABLES}/transfer.csv"
CHECKLIST_TABLE = f"{TABLES}/checklist.csv"
COMPARISONS_TABLE = f"{TABLES}/comparisons.csv"
SUMMARY = f"{TABLES}/summary.md"
SUMMARY_HTML = f"{TABLES}/summary.html"  # the same, rendered for the report
MATRICES = f"{TABLES}/matrices"
HEADLINE = f"{PLOTS}/headline.png"
HEATMAP = f"{PLOTS}/heatmap/{{data_task}}_{{attack}}.png"
AUROC_PLOT = f"{PLOTS}/auroc_vs_eps/{{data_task}}_{{attack}}_{{target}}.png"
ROC_PLOT = f"{PLOTS}/roc/{ADV_SET}/{{target}}.png"
EXAMPLES_PLOT = f"{PLOTS}/examples/{ADV_SET}/{{target}}.png"


def pdf(template: str) -> str:
    """The PDF (vector) version of a figure's PNG template, beside it."""
    return template.removesuffix(".png") + ".pdf"


HEADLINE_PDF = pdf(HEADLINE)
HEATMAP_PDF = pdf(HEATMAP)
AUROC_PLOT_PDF = pdf(AUROC_PLOT)
ROC_PLOT_PDF = pdf(ROC_PLOT)
EXAMPLES_PLOT_PDF = pdf(EXAMPLES_PLOT)
# per example image with a box of the data task's finding: perturbation energy inside the box
EXAMPLES_BOXES = f"{PLOTS}/examples/{ADV_SET}/{{target}}_boxes.csv"
STUDY_CONFIG = f"{REPORT}/config.yaml"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

# Noise controls: an attack's perturbations, spatially shuffled per image, stored, predicted and
# evaluated as the adversarial set of a pseudo-attack named f"{attack}{CONTROL_SUFFIX}".
CONTROL_SUFFIX = "__shuffled"


def control(template: str) -> str:
    """The noise control's version of a template of an attack's products."""
    return template.replace("{attack}", "{attack}" + CONTROL_SUFFIX)


ATTACK_CONTROL = control(ATTACK)
ATTACK_CONTROL_DIR = control(ATTACK_DIR)
PRED_ADV_CONTROL = control(PRED_ADV)
SET_METRICS_CONTROL = control(SET_METRICS)


def log(rule: str, pattern: str = "") -> str:
    """Log file of a rule (``pattern``: the job's wildcards as a path, e.g. ``{model}``)."""
    return f"{LOGS}/{rule}/{pattern}.log" if pattern else f"{LOGS}/{rule}.log"


def benchmark(rule: str, pattern: str = "") -> str:
    return f"{BENCHMARKS}/{rule}/{pattern}.tsv" if pattern else f"{BENCHMARKS}/{rule}.tsv"


_WILDCARD_RE = {"eps": r"[0-9.]+", "shard": r"\d{3,}", "attack": r"[^/.]+"}


def relative(template: str) -> str:
    """A template relative to the results directory (``results/x/{y}`` -> ``x/{y}``)."""
    return template.removeprefix(RESULTS + "/")


def under(results: str | Path, template: str, **fields: str) -> Path:
    """A template's path under ``results`` (which may be another tree than ./results)."""
    return Path(results) / relative(template).format(**fields)


def fields(template: str) -> tuple[str, ...]:
    """The wildcards of a template, in order of first appearance."""
    return tuple(dict.fromkeys(re.findall(r"\{(\w+)\}", template)))


def pattern(template: str):
    """A regex matching paths of ``template`` relative to the results directory; its groups
    are the wildcards (names: no ``/`` or ``.``; eps: a number; shard: 3+ digits)."""
    rel = relative(template)
    out, pos, seen = "", 0, set()
    for m in re.finditer(r"\{(\w+)\}", rel):
        out += re.escape(rel[pos : m.start()])
        name = m.group(1)
        body = _WILDCARD_RE.get(name, r"[^/.]+")
        out += f"(?P={name})" if name in seen else f"(?P<{name}>{body})"
        seen.add(name)
        pos = m.end()
    return re.compile(out + re.escape(rel[pos:]) + "$")


def eps_label(eps: float) -> str:
    """Path label of an eps value: 8 -> '8', 2.55 -> '2.55', 0.5 -> '0.5'."""
    return f"{float(eps):g}"


def eps_text(eps: float, norm: str = "linf") -> str:
    """An eps as a reader reads it: L-inf budgets in 1/255 units as '8/255', L2 budgets (the
    perturbation's L2 norm in [0, 1] pixel units) as '0.5 (L2)'."""
    return f"{eps_label(eps)}/255" if norm == "linf" else f"{eps_label(eps)} (L2)"
