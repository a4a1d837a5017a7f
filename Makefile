# Two commands on a machine with Python >= 3.10 only: `make demo` and `make test`. Each makes
# the environment (.venv, the package and its dev extras) when it is missing or pyproject.toml
# changed since, then runs; a second call reuses it. PYTHON picks the interpreter, ARGS adds
# options to the demo's command line, e.g. make demo ARGS="--grid quick --attacks badnets".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
READY := $(VENV)/.installed

.PHONY: demo test test-fast

demo: $(READY)  ## the main job: the demo grid, its tables and the HTML report
	$(BIN)/python run_benchmark.py --report $(ARGS)

test: $(READY)  ## everything CI runs: lint, then the whole suite
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(READY)  ## the fast lane: no grid, Ray or subprocess
	$(BIN)/python -m pytest -m "not slow" -q

$(READY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@
