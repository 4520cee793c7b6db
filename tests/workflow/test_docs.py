"""The documentation quotes no typed results of the demo, says what the bootstrap resamples,
and holds together: README.md is a front door of at most 200 lines, the manual is in docs/,
every relative link resolves, each metric is defined once (docs/METRICS.md) and the benchmark
figures are a generated page (docs/BENCHMARKS.md) apart from the hand-written
docs/PERFORMANCE.md.

Every number that README.md, CHANGELOG.md, docs/*.md, results/README.md or the report captions
(report/*.rst) would quote from a run of the demo goes stale with the next change of the code
or config (the README once quoted AUROCs 0.89 / 0.99 of an earlier run), so it must come from
the run (results/tables/summary.md, transfer.csv, metrics.json, the report), not be typed.
``demo_claims`` finds such claims: a metric (AUROC, fooling rate, transfer rate, ...) and a
number of its kind (a decimal or a percentage) in one sentence, list item or table row, or a
Markdown table whose header names a metric and whose rows hold such numbers. Not claims: a
number that is a config value (after a `key` or key:), a confidence level (95% ...
bootstrap/confidence/interval), chance (0.5), a figure that carries the test or benchmark that
measured it (a number after tests/....py, benchmarks/....py or `make bench` in its sentence),
and the phrases in ``NOT_DEMO`` with the reason. Fast: no TensorFlow.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# The manual behind the front door (issue 26, item 5); docs/*.md may hold more pages.
DOC_PAGES = (
    "CONFIGURATION.md",
    "MODELS.md",
    "ATTACKS.md",
    "METRICS.md",
    "REAL_DATA.md",
    "RUNNING.md",
    "CLUSTER.md",
    "PERFORMANCE.md",
    "BENCHMARKS.md",
)
README_MAX_LINES = 200
MARKDOWN = sorted([README, ROOT / "CHANGELOG.md"] + list((ROOT / "docs").glob("*.md")))
DOCS = sorted(MARKDOWN + [ROOT / "results" / "README.md"] + list((ROOT / "report").glob("*.rst")))

METRIC = re.compile(
    r"(?<![\w-])(?:AUROCs?|AUCs?|(?:fooling|transfer|flip|attack success|success) rates?|"
    r"accurac(?:y|ies)|sensitivit(?:y|ies)|specificit(?:y|ies))(?![\w-])",
    re.I,
)
# a decimal (0.89, .5, 1.00) or a percentage (46%, 4.4 %); not part of 8/255, v1.2 or a name
NUMBER = re.compile(r"(?<![\w.\-/])(?:\d*\.\d+|\d+(?:\.\d+)?\s?%)(?![\w/]|\.\d)")
# the test or benchmark that measured a figure (a demo run is not such a command: `make demo`)
COMMAND = re.compile(r"tests/(?:\w+/)?\w+\.py|benchmarks/\w+\.py|`make (?:bench|test)\b")
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
    "`tests/attacks/test_adversarial_training.py` uses a smaller model that does gain).",
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
    "`tests/attacks/test_adversarial_training.py` trains a tiny MobileNet: white-box PGD at the training "
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
    """compute_cell (cxrtransfer.metrics.measures) resamples patients (cluster="patient", the
    only unit the evaluation uses): the report's pages and the docs must not say images."""
    page = _rendered_workflow_page()
    about = _sentences_about(page, "bootstrap")
    assert about, "report/workflow.rst no longer describes the bootstrap"
    text = " ".join(about)
    assert "patients" in text
    assert not re.search(r"\bover images\b|\bresampl\w* (?:the )?images\b|image-level", text)
    assert "95% confidence intervals" in " ".join(page.split())  # evaluation.confidence 0.95
    for path in sorted((ROOT / "report").glob("*.rst")) + MARKDOWN:
        for s in _sentences_about(path.read_text(), "bootstrap"):
            if "image-level bootstrap" in s:  # docs/METRICS.md's comparison with the wrong unit
                continue
            assert not re.search(r"\bover images\b|\bresampl\w* (?:the )?images\b", s), (path, s)


def _first_module(names: tuple[str, ...], attr: str | None = None):
    """The first of ``names`` that imports (and has ``attr``): the library is moving into
    packages (issue 26), so the test names the new module first and the old one after it."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if attr is None or hasattr(module, attr):
            return module
    raise AssertionError(f"none of {names} imports" + (f" with {attr}" if attr else ""))


def test_the_evaluation_resamples_patients():
    """What the docs say is what the code does: the evaluation's bootstrap unit is the
    patient (compute_cell's default, never overridden by the evaluation)."""
    import inspect

    metrics = _first_module(
        ("cxrtransfer.metrics.measures", "cxrtransfer.evaluate.cells", "cxrtransfer.metrics"),
        "compute_cell",
    )
    evaluation = _first_module(("cxrtransfer.evaluate.sets", "cxrtransfer.evaluation"))

    assert inspect.signature(metrics.compute_cell).parameters["cluster"].default == "patient"
    assert "cluster=" not in inspect.getsource(evaluation)


# ----------------------------------------------------------------------------------------------
# The front door and the manual behind it
# ----------------------------------------------------------------------------------------------


def _strip_fences(text: str) -> str:
    """Markdown without its fenced code blocks."""
    return re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)


def _without_code(text: str) -> str:
    """Markdown without fenced code blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", _strip_fences(text))


LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def _links(text: str) -> list[str]:
    """The targets of the inline, image and reference links of a Markdown text."""
    text = _without_code(text)
    return LINK.findall(text) + REFERENCE.findall(text)


def _anchors(path: Path) -> set[str]:
    """The heading anchors GitHub gives a Markdown file (lower case, punctuation dropped,
    spaces to hyphens, -1, -2, ... for repeats)."""
    anchors, seen = set(), {}
    text = _strip_fences(path.read_text())
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))  # a link's text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _generated_by_the_run(rel: str) -> bool:
    """Whether ``rel`` (relative to the repository) is a file the default study's run writes:
    it matches a path template of the results tree and names the default config's tasks,
    attacks and models, with the attack in a grid entry of that task."""
    import yaml

    paths = _first_module(("cxrtransfer.core.paths", "cxrtransfer.paths"))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    known = {
        "task": set(config["tasks"]),
        "data_task": set(config["tasks"]),
        "attack": set(config["attacks"]),
        "model": set(config["models"]),
        "source": set(config["models"]),
        "target": set(config["models"]),
    }
    for template in vars(paths).values():
        if not (isinstance(template, str) and template.startswith(f"{paths.RESULTS}/")):
            continue
        pattern = re.sub(
            r"\\\{(\w+)\\\}", lambda m: f"(?P<{m.group(1)}>[^/]+)", re.escape(template)
        )
        m = re.fullmatch(pattern, rel)
        if not m:
            continue
        values = m.groupdict()
        if any(v not in known[k] for k, v in values.items() if k in known):
            continue
        if "attack" in values and "data_task" in values:
            tasks_of = {}
            for entry in config["grid"]:
                task = entry.get("data_task", "own")
                for attack in entry["attacks"]:
                    tasks_of.setdefault(attack, set()).add(task)
            if not tasks_of.get(values["attack"], set()) & {values["data_task"], "own"}:
                continue
        return True
    return False


def test_the_manual_pages_exist_and_the_readme_links_them():
    links = {t.split("#")[0] for t in _links(README.read_text())}
    for page in DOC_PAGES:
        assert (ROOT / "docs" / page).is_file(), f"docs/{page} is missing"
        assert f"docs/{page}" in links, f"README.md does not link docs/{page}"
    assert (ROOT / "CHANGELOG.md").is_file() and "CHANGELOG.md" in links


def test_the_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move the manual's parts to docs/"
    )


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    """Every relative link of README.md, CHANGELOG.md and docs/*.md points to a file of the
    repository (and to a heading of it, for a Markdown file with an anchor), or to a file the
    default run writes under results/ (the headline figure, git-ignored)."""
    bad = []
    for target in _links(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        try:
            rel = dest.relative_to(ROOT).as_posix()
        except ValueError:
            bad.append(f"{target}: outside the repository")
            continue
        if not dest.exists():
            if not _generated_by_the_run(rel):
                bad.append(f"{target}: no such file (nor one the default run writes)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: {rel} has no heading #{anchor}")
    assert not bad, f"{path.relative_to(ROOT)}:\n- " + "\n- ".join(bad)


def test_the_link_checker_itself(tmp_path):
    text = (
        "[a](docs/METRICS.md) ![f](results/plots/heatmap/x.png 'title') `[no](link.md)`\n"
        "```\n[no](fenced.md)\n```\n[ref]: CHANGELOG.md\n[b](#the-stages) [c](https://x.org/)"
    )
    assert _links(text) == [
        "docs/METRICS.md",
        "results/plots/heatmap/x.png",
        "#the-stages",
        "https://x.org/",
        "CHANGELOG.md",
    ]
    page = tmp_path / "p.md"
    page.write_text("# A `code` heading, (with) punctuation\n## Twice\n## Twice\n```\n# no\n```\n")
    assert _anchors(page) == {"a-code-heading-with-punctuation", "twice", "twice-1"}
    assert _generated_by_the_run("results/plots/heatmap/pneumothorax_pgd.png")
    assert not _generated_by_the_run("results/plots/heatmap/pneumothorax_nope.png")
    assert not _generated_by_the_run("results/plots/heatmap/cardiomegaly_ti_mi.png")  # no grid


def _metric_rows(text: str) -> list[str]:
    """The names a Markdown table defines: the backticked names opening its rows."""
    names = []
    for row in re.findall(r"^\|\s*(`[^|]*)\|", _strip_fences(text), re.M):
        names += re.findall(r"`([^`]+)`", row.split("(")[0])
    return names


def test_each_metric_is_defined_once():
    """docs/METRICS.md's table defines every metric; no other page has a table row that
    defines one of them again (they link to docs/METRICS.md instead)."""
    metrics_page = ROOT / "docs" / "METRICS.md"
    defined = set(_metric_rows(metrics_page.read_text()))
    for name in ("transfer_rate", "fooling_rate", "flip_rate", "clean_auroc", "adv_auroc"):
        assert name in defined, f"docs/METRICS.md does not define {name}"
    for path in MARKDOWN + [ROOT / "results" / "README.md"]:
        if path == metrics_page:
            continue
        again = defined & set(_metric_rows(path.read_text()))
        assert not again, f"{path.relative_to(ROOT)} defines {sorted(again)} again"


def _run_all():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("run_all")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_the_benchmark_figures_are_a_generated_page_apart_from_the_notes():
    """`make bench` writes docs/BENCHMARKS.md (a header says it is generated and by which
    command) and refuses the hand-written docs/PERFORMANCE.md, which links to it."""
    run_all = _run_all()
    assert re.search(
        r"^bench:.*\n\t\$\(BIN\)/python benchmarks/run_all\.py --out docs/BENCHMARKS\.md$",
        (ROOT / "Makefile").read_text(),
        re.M,
    )
    assert run_all.MAKE_BENCH == ".venv/bin/python benchmarks/run_all.py --out docs/BENCHMARKS.md"
    header = "\n".join(
        run_all.generated_header(run_all.MAKE_BENCH, False, "DATE", "PERFORMANCE.md")
    )
    assert header.startswith("# Benchmarks (generated)")
    assert "**Generated file**" in header and f"`make bench` (`{run_all.MAKE_BENCH}`)" in header
    assert "[PERFORMANCE.md](PERFORMANCE.md)" in header
    with pytest.raises(SystemExit, match="written by hand"):
        run_all.output_path("docs/PERFORMANCE.md")
    assert run_all.output_path("docs/BENCHMARKS.md") == ROOT / "docs" / "BENCHMARKS.md"

    page = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    head = "\n".join(page.splitlines()[:4])
    assert page.startswith("# Benchmarks (generated)")
    assert "**Generated file**" in head and "benchmarks/run_all.py" in head
    assert "`make bench`" in head and "(PERFORMANCE.md)" in head

    notes = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    assert "(BENCHMARKS.md)" in notes
    assert "Generated file" not in notes and not re.search(r"^Generated by", notes, re.M)
