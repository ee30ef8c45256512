# Quick start: `make run` serves on 127.0.0.1:8000 (`make run PORT=18010 HOST=0.0.0.0` elsewhere);
# `make test` runs the whole suite.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-scale soak clean wheel-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/meterapi serve --host $(HOST) --port $(PORT)

# -rs: every skipped test says why.
test: $(STAMP)
	$(BIN)/pytest -rs $(PYTEST_ARGS)

# The built wheel, installed into a fresh venv (not editable): migrate, serve, one paid call.
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) .ci/wheel-check

# Benchmarks need PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth); wrk is used if installed.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python -m bench --scale $(BENCH_ARGS)

soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
