# Quick start: `make run` serves on 127.0.0.1:8000; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench bench-scale soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/meterapi serve

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

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
