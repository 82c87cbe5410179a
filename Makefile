# The two commands of the README. Both create .venv and install the pinned stack first.
#   make test                 lint (ruff, the import layers) + fast tests (what CI runs)
#   make repro [PROFILE=cpu]  regenerate every metric and figure with DVC
#   make lab                  JupyterLab on notebooks/, with the project's environment
#   make smoke                the paper profile's code paths at tiny scale on this device
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= cpu
STAMP := $(VENV)/.installed-stamp

.PHONY: setup test repro lint format bench lab deps smoke clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -m "not slow" -q

repro: setup
ifeq ($(PROFILE),cpu)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
else
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc exp run -S profile=$(PROFILE)
endif
	$(BIN)/python scripts/update_docs.py

# Rewrite dvc.yaml's code deps from the import graph (a test fails while they differ).
deps: setup
	$(BIN)/python scripts/sync_dvc_deps.py

# The paper profile's smoke run (docs/gpu.md): on a GPU, before the first real run.
smoke: setup
	$(BIN)/python scripts/gpu_smoke.py --out scratch/gpu_smoke.json

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/bench_pretrain.py

clean-venv:
	rm -rf $(VENV)
