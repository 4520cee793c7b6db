# Quick start:  make demo   (set up .venv, run the default study on the built-in dataset)
#               make test   (set up .venv with test tools, run the whole test suite)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
REAL_METADATA := resources/nih-metadata/Data_Entry_2017_v2020.csv.gz
EXPERT_LABELS := resources/nih-metadata/google2019_nih-chest-xray-labels.csv.gz
BBOXES := resources/nih-metadata/BBox_List_2017.csv.gz
export PATH := $(abspath $(BIN)):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo demo-robust test venv report lint fmt bench clean-results verify fetch-kaggle real-metadata code-versions docs-tables

$(BIN)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html
	@echo "Report: results/report.html"

# The default demo plus a JPEG-defended target and its adaptive attack (opt-in: longer).
demo-robust: venv
	$(BIN)/snakemake --cores $(CORES) --configfile config/robust_demo.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/robust_demo.yaml \
		--report results/report.html
	@echo "Report: results/report.html"

report: venv
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

# Two pytest workers, one test file each at a time (pytest-xdist), the longest files first in
# the order tests/conftest.py gives them (--no-loadscope-reorder keeps it; xdist would otherwise
# start the files with the most tests first and the SLURM test, two tests, last: the suite
# then ends with one worker idle for its quarter hour). tests/data/test_real_metadata.py reads the
# real NIH metadata table: fetched once (about 1 MB kept, from a 29 MB wheel), see below.
test: venv $(REAL_METADATA) $(EXPERT_LABELS) $(BBOXES)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

lint: venv
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/ruff check workflow_scripts tests benchmarks tools
	$(BIN)/ruff format --check workflow_scripts tests benchmarks tools
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/snakefmt Snakefile rules/
	$(BIN)/ruff format workflow_scripts tests benchmarks tools

# Every benchmark in one run; the generated page is docs/BENCHMARKS.md (docs/PERFORMANCE.md is
# written by hand and links to it; run_all.py refuses to overwrite it).
bench: venv
	$(BIN)/python benchmarks/run_all.py --out docs/BENCHMARKS.md

# The table rule script -> library modules in its code version (docs/CODE.md holds its output).
code-versions: venv
	$(BIN)/python -m cxrtransfer.plan.code

# the generated tables of docs/CODE.md (rule -> modules) and docs/ATTACKS.md (attack settings)
docs-tables: venv
	$(BIN)/python tools/docs_tables.py

verify: venv
	$(BIN)/python -m cxrtransfer.verify --results results $(if $(REMOVE),--remove,)

fetch-kaggle: venv
	@test -n "$(DEST)" || { echo "usage: make fetch-kaggle DEST=resources/nih-chest-xrays/data"; exit 2; }
	$(BIN)/python -m cxrtransfer.data.fetch $(DEST)

# The real NIH ChestX-ray14 metadata (112,120 rows, no images) from the torchxrayvision 1.5.7
# wheel on PyPI (pip download, no install, no torch): config/real_metadata.yaml draws it.
# Needs network access to PyPI; offline it fails saying where to put the file instead.
# Beside it, the same wheel's Google expert labels (data.expert_labels) and NIH boxes
# (data.bboxes).
real-metadata: $(REAL_METADATA) $(EXPERT_LABELS) $(BBOXES)

$(REAL_METADATA) $(EXPERT_LABELS) $(BBOXES) &: | venv
	$(BIN)/python -m cxrtransfer.data.nih_wheel $(REAL_METADATA)

clean-results:
	rm -rf results/*/ results/report.html
