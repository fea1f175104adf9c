# rnn-sweep: `make sweep` (the default claim grid, then its report) and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TSTAMP  := $(VENV)/.installed-test
RESULTS ?= results
ARGS    ?=

# Which torch build: auto = cpu on a machine without an NVIDIA driver (no nvidia-smi), else cuda.
#   cpu  = PyTorch's CPU wheel index as an extra index (a 190 MB wheel on Linux instead of several GB of CUDA
#          libraries). Where that index cannot be reached, pip takes torch from its find-links or from PyPI (whose
#          Linux build is the CUDA one): the README says what this gives on which machine.
#   cuda = PyPI's default build (CUDA on Linux; on macOS and Windows PyPI's build is the CPU one anyway).
TORCH           ?= auto
TORCH_VERSION   ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_BUILD := $(if $(filter auto,$(TORCH)),$(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu),$(TORCH))
ifeq ($(filter cpu cuda,$(TORCH_BUILD)),)
$(error TORCH=$(TORCH): must be auto, cpu or cuda)
endif
# --retries 1: an unreachable CPU index (offline, a firewall) costs about a second, not a minute per package.
TORCH_PIP_cpu  := --extra-index-url $(TORCH_CPU_INDEX) --retries 1
TORCH_PIP_cuda :=
# Editable installs put the checkout on sys.path (setuptools' compat mode): Hydra finds the project's plugins by
# listing the hydra_plugins folders on sys.path, which the default editable mode's import hook hides from it.
EDITABLE := --config-settings editable_mode=compat -e

# Every Python the README names; test-pythons runs the fast tests on each in .venv-<version>.
PYTHONS ?= 3.10 3.11 3.12 3.13
pyexe = $(or $(lastword $(sort $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python))),$(shell command -v python$(1)))

.PHONY: help install sweep speed smoke report readme-table tune test test-fast test-ray test-pythons check-pins lint format bench \
        clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: TORCH=auto|cpu|cuda (now: $(TORCH_BUILD)), PYTHONS='$(PYTHONS)', RESULTS, ARGS, DIR"

# $(call venv-install,DIR,PYTHON,EXTRAS): torch first and pinned (so pip keeps the chosen build), then the project;
# its resolved versions are frozen to DIR/sweep-pins.txt and EXTRAS are installed under them as constraints, so a
# test or dev extra can never change a version the sweep runs with (pip stops with the conflict instead).
define venv-install
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet $(TORCH_PIP_$(TORCH_BUILD)) torch==$(TORCH_VERSION)
	$(1)/bin/pip install --quiet $(EDITABLE) .
	$(1)/bin/pip freeze --exclude rnn-sweep > $(1)/sweep-pins.txt
	$(if $(3),$(1)/bin/pip install --quiet -c $(1)/sweep-pins.txt $(EDITABLE) '.[$(3)]')
endef

# the sweep's own venv: the project and nothing else
$(STAMP): pyproject.toml setup.py
	$(call venv-install,$(VENV),$(PY),)
	touch $(STAMP)

# the dev tools and the exporters the tests read back go into the sweep's venv under its pins;
# tests/test_install.py checks that the versions still match
TEST_EXTRAS := dev,tensorboard,mlflow
$(TSTAMP): $(STAMP)
	$(BIN)/pip install --quiet -c $(VENV)/sweep-pins.txt $(EDITABLE) '.[$(TEST_EXTRAS)]'
	touch $(TSTAMP)

# The Ray launcher gets a venv of its own: hydra-ray-launcher caps cloudpickle < 3, which holds joblib at 1.5.x,
# while the sweep's venv resolves joblib 1.6. This venv is what `pip install 'rnn-sweep[ray]'` gives a Ray user.
.venv-ray/.installed: pyproject.toml setup.py
	test -x .venv-ray/bin/python || $(PY) -m venv .venv-ray
	.venv-ray/bin/pip install --quiet --upgrade pip
	.venv-ray/bin/pip install --quiet $(TORCH_PIP_$(TORCH_BUILD)) torch==$(TORCH_VERSION)
	.venv-ray/bin/pip install --quiet $(EDITABLE) '.[dev,ray]'
	touch $@

# one venv per Python for test-pythons (the project, then the test extras under the project's pins)
.venv-%/.installed-test: pyproject.toml setup.py
	@test -n "$(call pyexe,$*)" || { echo "no python$* found (pyenv: ~/.pyenv/versions/$*.*; or on PATH)"; exit 2; }
	$(call venv-install,.venv-$*,$(call pyexe,$*),$(TEST_EXTRAS))
	touch $@

install: $(STAMP)  ## create .venv and install the project (torch build: TORCH=auto|cpu|cuda)

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

readme-table: $(STAMP)  ## README's results block from a report's results_table.md (with its commit): make readme-table DIR=results/claim
	$(BIN)/python -m analysis.readme $(or $(DIR),$(RESULTS)/claim) README.md

tune: $(STAMP)  ## the claim grid with the learning rate tuned per cell (Optuna)
	$(BIN)/python -m sweep experiment=tune results_dir=$(RESULTS) $(ARGS)
	$(BIN)/python -m analysis $(RESULTS)/tune

test: $(TSTAMP) .venv-ray/.installed  ## every test, slow ones included (what CI runs), then the Ray launcher's in .venv-ray
	$(BIN)/python -m pytest -q
	.venv-ray/bin/python -m pytest -q -p no:cacheprovider tests/test_launchers.py -k ray

test-fast: $(TSTAMP)  ## the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

test-ray: .venv-ray/.installed  ## the launcher tests in the Ray launcher's venv
	.venv-ray/bin/python -m pytest -q -p no:cacheprovider tests/test_launchers.py

# each Python in its own venv; every one is tried, and the target fails if any failed
test-pythons: $(foreach v,$(PYTHONS),.venv-$(v)/.installed-test)  ## the fast tests on every Python in PYTHONS
	@failed=""; for v in $(PYTHONS); do \
	  echo "== Python $$v"; \
	  .venv-$$v/bin/python -m pytest -q -p no:cacheprovider -m "not slow" || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "fast tests failed on Python$$failed"; exit 1; fi

check-pins: $(TSTAMP)  ## fail if the dev tools changed a version the sweep's install resolved
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_install.py -k sweep_pins

lint: $(TSTAMP)  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TSTAMP)  ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)  ## benchmarks: runner vs bare loop, sweep efficiency, timing stability
	$(BIN)/python -m bench $(ARGS)

clean:  ## remove results and caches (keeps the venvs)
	rm -rf $(RESULTS) .pytest_cache .ruff_cache bench/out
