# Two commands on a fresh machine:
#   make run    set up .venv with what training needs (pip install -e .) and train the default CNN
#               on the embedded digits data, with EnergyMonitor on
#   make test   set up .venv with the dev tools too (pip install -e ".[dev]") and run the linters and
#               the test suite (the documentation's strict build and its examples included)
# Also: make test-fast (the tests not marked slow), make docs (the site, into build/site).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# One stamp per install: `make run` then `make test` still installs the dev extra; the dev install
# includes the package itself, so it stamps the run install too.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: setup setup-dev run test test-fast lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e .
	touch $(RUN_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(DEV_STAMP) $(RUN_STAMP)

setup: $(RUN_STAMP)

setup-dev: $(DEV_STAMP)

run: setup
	$(BIN)/lightning-green train

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Two workers: much of the suite waits (Ray starting, subprocesses importing torch); the
# documentation's examples share one pool of outcomes, so one worker runs them (--dist loadgroup).
PYTEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadgroup --durations=15

test-fast: setup-dev
	$(BIN)/python -m pytest -q -m "not slow"

docs: setup-dev
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) lightning_green_runs lightning_green_logs .pytest_cache build/site
