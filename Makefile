# The two commands: `make run` (demo flow, no services) and `make test` (everything).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.compiled
# setup.py compiles flows' per-record modules with Cython (interpreted where that fails)
COMPILED_SRC := setup.py $(wildcard flows/*.py)
WORKERS ?= 1

.PHONY: help run test install stack-up stack-down stack-status lint format bench-nab bench-throughput clean

## List the targets with what each does.
help:
	@awk '/^## /{d=substr($$0,4); next} /^[a-zA-Z][a-zA-Z_-]*:/{if(d){split($$1,t,":"); printf "  %-18s %s\n", t[1], d}; d=""; next} {d=""}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 or 3.12 is required)"; exit 1; }
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# rebuild the compiled modules whenever their source changed (stale ones are not used)
$(BUILT): $(STAMP) $(COMPILED_SRC)
	$(BIN)/python setup.py -q build_ext --inplace >/dev/null || \
	  echo "note: compiled modules not built (no C compiler?): the flow runs interpreted"
	@touch $(BUILT)

## Create .venv, install the package with its dev extra, compile the flow modules.
install: $(STAMP) $(BUILT)

## Run the detector flow. With no AD_* configuration it runs the built-in demo and exits.
run: $(STAMP) $(BUILT)
	$(BIN)/python -m bytewax.run flows.detector -w $(WORKERS)

## Lint, install, start the local stack, run the tests, stop what this run started (even on failure).
test: lint $(BUILT)
	bash stack/prereqs.sh
	@started=$$(PYTHON=$(BIN)/python bash stack/stack.sh status >/dev/null 2>&1 && echo no || echo yes); \
	PYTHON=$(BIN)/python bash stack/stack.sh up || exit 1; \
	rc=0; $(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	if [ "$$started" = yes ] && [ -z "$$AD_KEEP_STACK" ]; then PYTHON=$(BIN)/python bash stack/stack.sh down; fi; \
	exit $$rc

## Start the local services the tests use (Kafka, Redis, emulators).
stack-up: $(STAMP)
	bash stack/prereqs.sh
	PYTHON=$(BIN)/python bash stack/stack.sh up

## Stop the local services.
stack-down:
	PYTHON=$(BIN)/python bash stack/stack.sh down

## Show which local services are running.
stack-status:
	PYTHON=$(BIN)/python bash stack/stack.sh status

## Check lint rules, formatting and types (ruff check, ruff format --check, mypy).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Apply ruff's fixes and formatting.
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Score the NAB benchmark data set.
bench-nab: $(STAMP)
	$(BIN)/python -m benchmarks.nab --data ../shared/data/nab-dev --out out/nab

## Measure end-to-end throughput against the local Kafka.
bench-throughput: $(STAMP) $(BUILT) stack-up
	$(BIN)/python -m benchmarks.throughput

## Remove build outputs, compiled modules and run folders.
clean:
	rm -rf .stack/run out build flows/*.c flows/*.so $(BUILT)
