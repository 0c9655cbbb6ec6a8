# `make repro`, `make demo` and `make test` each build .venv on first use, then do their job.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Stage commands call `python`: put the venv first so they run inside it.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro demo test test-fast lint bench bench-predict venv tracking-server tracking-server-stop clean-venv

# The first install downloads several GB (PyTorch with its CUDA libraries; README, "What the
# first install costs"): pip shows its progress rather than sitting silent for minutes.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

repro: $(INSTALLED)
	$(BIN)/dvc repro

# The whole pipeline offline on generated data, in a scratch copy (demo/); see scripts/demo.py.
demo: $(INSTALLED)
	$(BIN)/python scripts/demo.py

# As root with apt-get, installs PostgreSQL for the team tests and Chromium (with the Vega
# scripts, via npm) for the browser tests when they are missing (else they skip, saying why).
test: lint
	bash scripts/ensure-postgresql.sh
	PYTHON=$(BIN)/python bash scripts/ensure-chromium.sh
	$(BIN)/python -m pytest

# Day-to-day: the unit tests only (no dvc repro, no server, no browser, no benchmark script).
test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -m "not e2e and not process"

# Style, formatting and declared-vs-imported dependencies; configured in pyproject.toml.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry .

# Just the environment: a colleague runs `dvc pull` before anything else (README, "Working as a team").
venv: $(INSTALLED)

# The team's MLflow server (mlflow server --app-name basic-auth): PostgreSQL backend, served
# artifacts, on 127.0.0.1:5000 by default, in the background until tracking-server-stop.
# Options as environment variables: TRACKING_PORT, TRACKING_HOST, TRACKING_DIR, TRACKING_ARTIFACTS, ...
# (all of them: scripts/tracking_server.py --help; README, "Working as a team").
tracking-server: $(INSTALLED)
	bash scripts/ensure-postgresql.sh
	$(BIN)/python scripts/tracking_server.py start

tracking-server-stop: $(INSTALLED)
	$(BIN)/python scripts/tracking_server.py stop

# Notebook-style loop vs this pipeline; pass options with BENCH_ARGS="--image-size 320 --epochs 2".
bench: $(INSTALLED)
	$(BIN)/python bench/train_speed.py $(BENCH_ARGS)

# predict's images/s at 320 px: PyTorch fp32 and tuned, onnxruntime; options as BENCH_ARGS="--images 64".
bench-predict: $(INSTALLED)
	$(BIN)/python bench/inference_speed.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
