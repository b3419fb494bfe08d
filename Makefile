# Everything runs in the project's virtual environment, created on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-requirements
export PATH := $(BIN):$(PATH)

.PHONY: demo test bench compare report plots check-reproduction weights predict export

# requirements.txt pins every library; the project's own package (plankton_transfer, with its
# console commands) is then installed in editable mode, without build isolation or network.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## demo: fetch ImageNet weights if the network allows (a one-line note when it does not), run the
## whole pipeline on the bundled sample and print the comparison
demo: $(STAMP)
	plankton-fetch-weights --offline-ok
	dvc repro
	@cat metrics/compare/compare.md

## test: the test suite (unit tests and an end-to-end dvc repro in temporary repos), on every core,
## each test module on one worker (its module-scoped repos are built once)
TEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope tests

## bench: the study's training loop against this pipeline, side by side (not part of the tests)
BENCH_ARGS ?= --classes 17 --per-class 100 --epochs 10 --model alexnet
bench: $(STAMP)
	$(BIN)/python -m bench.study_vs_pipeline $(BENCH_ARGS)

## compare: each model's key metrics across `dvc exp show`'s experiments, one narrow table
compare: $(STAMP)
	plankton-experiments --md metrics/experiments.md --csv metrics/experiments.csv

## report: report/report.md (metric diff against BASE, comparison, confusion matrices) and
## report/plots.html (dvc plots diff, one self-contained file that opens offline)
BASE ?= HEAD~1
report: $(STAMP)
	plankton-report --base $(BASE) --out-dir report

## plots: dvc plots show, rendered to dvc_plots/index.html with its scripts inlined (offline)
plots: $(STAMP)
	dvc plots show

## check-reproduction: `dvc repro --force`, then compare with the committed metrics (CI)
check-reproduction: $(STAMP)
	$(BIN)/python -m tools.reproduction

## weights: download every configured model's weights into data/pretrained (needs network)
weights: $(STAMP)
	plankton-fetch-weights

## predict: classify new images with a trained model: an image folder, an EcoTaxa export or IFCB bins;
## writes a results folder: predictions.csv, the EcoTaxa upload (zip) and run.json
PREDICT_ARGS ?= --model efficientnet_lite0 --input data/flowcam-sample --out predictions/flowcam-sample
predict: $(STAMP)
	plankton-predict $(PREDICT_ARGS)

## export: each trained model as ONNX + TorchScript with its JSON and model card, checked against PyTorch
EXPORT_ARGS ?= --out-dir export
export: $(STAMP)
	plankton-export $(EXPORT_ARGS)
