# rnn-sweep: `make sweep` (the default claim grid, then its report) and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TSTAMP  := $(VENV)/.installed-test
RESULTS ?= results
ARGS    ?=

.PHONY: help install sweep speed smoke report tune test test-fast lint format bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# torch goes in first and pinned, so pip takes the CPU build on disk instead of a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

# tests also need the dev tools and the optional Ray launcher (tests/test_launchers.py runs every launcher)
$(TSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(TSTAMP)

install: $(STAMP)  ## create .venv and install the project (CPU torch)

sweep: $(STAMP)  ## the claim protocol (speed phase, lr search, both budgets, 5 seeds) and its report
	$(BIN)/python -m sweep experiment=claim results_dir=$(RESULTS) $(ARGS)
	$(BIN)/python -m analysis $(RESULTS)/claim

speed: $(STAMP)  ## the claim grid's speed phase alone (one job at a time, interleaved rounds): results/claim/speed.parquet
	$(BIN)/python -m sweep experiment=speed results_dir=$(RESULTS) $(ARGS)

smoke: $(STAMP)  ## a tiny grid through the whole pipeline (< 1 min)
	$(BIN)/python -m sweep experiment=smoke results_dir=$(RESULTS) $(ARGS)
	$(BIN)/python -m analysis $(RESULTS)/smoke

report: $(STAMP)  ## (re)write the report of a results folder: make report DIR=results/claim
	$(BIN)/python -m analysis $(or $(DIR),$(RESULTS)/claim)

tune: $(STAMP)  ## the claim grid with the learning rate tuned per cell (Optuna)
	$(BIN)/python -m sweep experiment=tune results_dir=$(RESULTS) $(ARGS)
	$(BIN)/python -m analysis $(RESULTS)/tune

test: $(TSTAMP)  ## every test, slow ones included (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: $(TSTAMP)  ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(TSTAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TSTAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## benchmarks: runner vs bare loop, sweep efficiency, timing stability
	$(BIN)/python -m bench $(ARGS)

clean:  ## remove results and caches (keeps .venv)
	rm -rf $(RESULTS) .pytest_cache .ruff_cache bench/out
