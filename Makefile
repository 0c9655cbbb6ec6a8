# `make repro`, `make demo` and `make test` each build .venv on first use, then do their job.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the venv first so they run inside it.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro demo test bench clean-venv

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

repro: $(INSTALLED)
	$(BIN)/dvc repro

# The whole pipeline offline on generated data, in a scratch copy (demo/); see scripts/demo.py.
demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Notebook-style loop vs this pipeline; pass options with BENCH_ARGS="--image-size 320 --epochs 2".
bench: $(INSTALLED)
	$(BIN)/python bench/train_speed.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
