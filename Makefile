# Two commands do everything on a machine with only python3: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -c "import torch, torchvision, timm, ray, optuna, webdataset; print('environment ok: torch', torch.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project (only when missing or out of date)

demo: $(STAMP)  ## a whole study on the generated demo set, then its one test measurement (2 CPU cores: ~9 minutes)
	$(BIN)/python harness/tune.py --space tune_spaces/demo.yaml
	$(BIN)/python -m harness.final runs/demo

test: $(STAMP)  ## lint (ruff), then the test suite (shared-Ray tests, then the isolated autoscaling test)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -m "not isolated" -n 2 --dist loadfile
	CMD_HARNESS_ISOLATED=1 $(BIN)/python -m pytest tests -m isolated

test-fast: $(STAMP)  ## lint and unit tests only, no Ray trials
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -m "not slow and not isolated"

bench: $(STAMP)  ## the benchmarks in bench/ (ratios against in-run baselines)
	$(BIN)/python bench/loader.py --quick
	$(BIN)/python bench/train_step.py --quick
	$(BIN)/python bench/goodput.py --quick

clean:  ## remove generated data and runs (not the venv)
	rm -rf data runs
