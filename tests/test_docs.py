"""The documentation quotes no typed results of the demo, and says what the bootstrap resamples.

Every number that README.md, docs/*.md, results/README.md or the report captions (report/*.rst)
would quote from a run of the demo goes stale with the next change of the code or config (the
README once quoted AUROCs 0.89 / 0.99 of an earlier run), so it must come from the run
(results/tables/summary.md, transfer.csv, metrics.json, the report), not be typed.
``demo_claims`` finds such claims: a metric (AUROC, fooling rate, transfer rate, ...) and a
number of its kind (a decimal or a percentage) in one sentence, list item or table row, or a
Markdown table whose header names a metric and whose rows hold such numbers. Not claims: a
number that is a config value (after a `key` or key:), a confidence level (95% ...
bootstrap/confidence/interval), chance (0.5), a figure that carries the test or benchmark that
measured it (a number after tests/....py, benchmarks/....py or `make bench` in its sentence),
and the phrases in ``NOT_DEMO`` with the reason. Fast: no TensorFlow.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [ROOT / "README.md", ROOT / "results" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
    + list((ROOT / "report").glob("*.rst"))
)

METRIC = re.compile(
    r"(?<![\w-])(?:AUROCs?|AUCs?|(?:fooling|transfer|flip|attack success|success) rates?|"
    r"accurac(?:y|ies)|sensitivit(?:y|ies)|specificit(?:y|ies))(?![\w-])",
    re.I,
)
# a decimal (0.89, .5, 1.00) or a percentage (46%, 4.4 %); not part of 8/255, v1.2 or a name
NUMBER = re.compile(r"(?<![\w.\-/])(?:\d*\.\d+|\d+(?:\.\d+)?\s?%)(?![\w/]|\.\d)")
# the test or benchmark that measured a figure (a demo run is not such a command: `make demo`)
COMMAND = re.compile(r"tests/\w+\.py|benchmarks/\w+\.py|`make (?:bench|test)\b")
CONFIDENCE_LEVEL = re.compile(
    r"\s*(?:[\w-]+\s+){0,2}(?:bootstrap|confidence|CIs?\b|intervals?|percentile|band)", re.I
)
CONFIG_KEY = re.compile(r"(?:`[\w.]+`|\b[A-Za-z]\w*[_.]\w+)\s*[:=]?\s*\(?\s*$")
CHANCE = re.compile(r"chance\s*(?:level\s*)?\(?\s*$", re.I)
# phrases with a metric and a number that are not results of the demo, and why
NOT_DEMO = {
    "clean AUC 0.50": "the seed study's collapsed classifier (what this workflow fixes), chance",
}
ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "vs.", "cf.", "approx.")


def _units(text: str):
    """Sentences, list items and table rows of a Markdown / reST text, with fenced code and
    Jinja expressions left out; Markdown tables also as (header, row) pairs."""
    text = re.sub(r"```.*?```", "\n\n", text, flags=re.S)
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", "X", text, flags=re.S)
    for para in re.split(r"\n\s*\n", text):
        lines = [line for line in para.splitlines() if line.strip()]
        if lines and all(line.lstrip().startswith("|") for line in lines):
            header = lines[0]
            for row in lines[1:]:
                if not re.fullmatch(r"[\s|:-]+", row):
                    yield row, header
            continue
        items, cur = [], []
        for line in lines:
            if re.match(r"\s*(?:[-*+]|\d+\.)\s", line) and cur:
                items.append(cur)
                cur = []
            cur.append(line.strip())
        if cur:
            items.append(cur)
        for item in items:
            flat = " ".join(item)
            for i, abbr in enumerate(ABBREVIATIONS):
                flat = flat.replace(abbr, f"\0{i}\0")
            for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z*`(\[\"'_])", flat):
                for i, abbr in enumerate(ABBREVIATIONS):
                    sentence = sentence.replace(f"\0{i}\0", abbr)
                yield sentence, None


def _result_numbers(unit: str, start: int = 0) -> list[tuple[int, str]]:
    """(position, number) of the numbers of ``unit`` after ``start`` that read as results
    (see the module doc)."""
    found = []
    for m in NUMBER.finditer(unit, start):
        before, after = unit[: m.start()], unit[m.end() :]
        if m.group().rstrip().endswith("%") and CONFIDENCE_LEVEL.match(after):
            continue
        if CONFIG_KEY.search(before) or CHANCE.search(before):
            continue
        found.append((m.start(), m.group()))
    return found


def demo_claims(text: str) -> list[str]:
    """The sentences / rows of ``text`` that type a result number (module doc)."""
    claims = []
    for unit, header in _units(text):
        clean = unit
        for phrase in NOT_DEMO:
            clean = clean.replace(phrase, "")
        numbers = []
        for m in METRIC.finditer(clean):
            numbers += _result_numbers(clean, m.end())  # "AUROC 0.89", "AUROC of 0.9"
            before = clean[: m.start()]
            near = re.search(r"(\S+)\s+(?:\S+\s+){0,2}$", before)  # "46% accuracy"
            if near:
                numbers += _result_numbers(clean[: m.start()], near.start())
        if header is not None and METRIC.search(header):
            numbers += _result_numbers(clean)  # a table of results: its rows' numbers
        cmd = COMMAND.search(clean)  # what comes after a test / benchmark it measured
        if [n for pos, n in numbers if cmd is None or pos < cmd.start()]:
            claims.append(unit.strip())
    return claims


# ----------------------------------------------------------------------------------------------
# The scanner itself
# ----------------------------------------------------------------------------------------------

TYPED = [
    # README.md before issue 24 (item 6): AUROCs of an earlier demo run
    "In the demo (and in `make demo-robust`, which trains the same models) every model trained "
    "on half of the training patients: the targets (ResNet50 from scratch) reached test AUROC "
    "0.89 (Pneumothorax) and 0.99 (Cardiomegaly), the surrogates 0.88-0.99.",
    "In that run the fine-tuned target gained no robustness (white-box AUROC 0.000 at eps 2 and "
    "8, like its base; clean AUROC 0.892 -> 0.898): 3 epochs of 2-step PGD on half of each "
    "batch are too little for it, and the report shows it as measured (the robustness test in "
    "`tests/test_adversarial_training.py` uses a smaller model that does gain).",
    "JPEG 75 held against the non-adaptive attack at eps 2 (adversarial AUROC 0.310) and not "
    "against BPDA (0.035), which the summary flags as an overstated defence.",
    "- The synthetic findings are drawn to be learnable; the default demo's Cardiomegaly signal "
    "is easy enough that its models reach AUROC 1.00, so its clean numbers say little.",
    "The white-box attack fooled 100% of the images, e.g. a fooling rate of 1.000.",
    "the demo reaches 97% accuracy on Cardiomegaly",
    "| relation | transfer rate | adv. AUROC |\n| --- | ---: | ---: |\n| white-box | 1.000 | 0.000 |",
]
NOT_TYPED = [
    # config values, definitions, confidence levels, measured facts with their command
    "the training rule **fails** if validation AUROC < `min_val_auc` or the model predicts one "
    "class for everything",
    "The gate refuses a model whose validation AUROC is below `min_val_auc: 0.6` by default.",
    "clean and adversarial AUROC, each with its 95% patient-level bootstrap interval",
    "Confidence intervals are 95% percentile intervals of a patient-level bootstrap.",
    "dashed: the target's clean AUROC; dotted: chance (0.5).",
    "| classifier collapsed to the majority class (clean AUC 0.50) | class weights |",
    "`tests/test_adversarial_training.py` trains a tiny MobileNet: white-box PGD at the training "
    "eps 8/255 leaves the undefended one 0% accuracy and the fine-tuned one about 46%.",
    "| hot path | ratio | target |\n| --- | --- | --- |\n| PGD vs eager loop | 3.3x | >= 3x |",
    "| plot_auroc | 8 | 14.8 | 1% | 1.85 |",
    "each model's test AUROC is `test.auc` in `results/models/{model}/metrics.json`",
    "```yaml\nevaluation: {n_bootstrap: 500}\naccuracy: 0.95\n```",
    "a stored L2 attack keeps at least 90% of the float attack's success on the source.",
]


@pytest.mark.parametrize("text", TYPED)
def test_the_scanner_flags_typed_demo_results(text):
    assert demo_claims(text), text


@pytest.mark.parametrize("text", NOT_TYPED)
def test_the_scanner_leaves_config_values_and_measured_figures(text):
    assert demo_claims(text) == [], text


# ----------------------------------------------------------------------------------------------
# The documentation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_typed_demo_results_in_the_docs(path):
    claims = demo_claims(path.read_text())
    assert not claims, (
        f"{path.relative_to(ROOT)} types result numbers of a run; point to the generated files "
        "(results/tables/summary.md, transfer.csv, results/models/{model}/metrics.json) instead, "
        "or name the test/benchmark command that measures the figure:\n- " + "\n- ".join(claims)
    )


def _rendered_workflow_page() -> str:
    """report/workflow.rst as `snakemake --report` renders it for config/config.yaml (the
    validated config with the schema's defaults, the same Jinja settings)."""
    import yaml
    from jinja2 import Environment
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate(config, str(ROOT / "config" / "config.schema.yaml"))

    class Snakemake:
        pass

    Snakemake.config = config
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    text = (ROOT / "report" / "workflow.rst").read_text()
    return env.from_string(text).render(snakemake=Snakemake, categories={}, files={})


def _sentences_about(text: str, word: str) -> list[str]:
    return [u for u, _ in _units(text) if word in u.lower()]


def test_the_report_says_the_bootstrap_resamples_patients():
    """cxrtransfer.metrics.compute_cell resamples patients (cluster="patient", the only unit
    the evaluation uses): the report's pages must not say images."""
    page = _rendered_workflow_page()
    about = _sentences_about(page, "bootstrap")
    assert about, "report/workflow.rst no longer describes the bootstrap"
    text = " ".join(about)
    assert "patients" in text
    assert not re.search(r"\bover images\b|\bresampl\w* (?:the )?images\b|image-level", text)
    assert "95% confidence intervals" in " ".join(page.split())  # evaluation.confidence 0.95
    for path in sorted((ROOT / "report").glob("*.rst")) + [ROOT / "README.md"]:
        for s in _sentences_about(path.read_text(), "bootstrap"):
            if "image-level bootstrap" in s:  # the README's comparison with the wrong unit
                continue
            assert not re.search(r"\bover images\b|\bresampl\w* (?:the )?images\b", s), (path, s)


def test_the_evaluation_resamples_patients():
    """What the docs say is what the code does: the evaluation's bootstrap unit is the
    patient (compute_cell's default, never overridden by the evaluation)."""
    import inspect

    from cxrtransfer import evaluation, metrics

    assert inspect.signature(metrics.compute_cell).parameters["cluster"].default == "patient"
    assert "cluster=" not in inspect.getsource(evaluation)
