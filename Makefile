# The two commands a newcomer needs, each installing what it needs into .venv by itself:
#   make pipeline   run the whole pipeline (Prefect flow over the DVC stages; its runs in Prefect's UI)
#   make test       lint, format check and the whole test suite (what CI runs)
# Offline, or to use a local copy of IMDB: make pipeline DATA_SOURCE=path/to/imdb
# (defaults to ../shared/data/imdb when that folder exists, else the hub id stanfordnlp/imdb).
# Others: make test-fast (without the `slow` tests), make lock (re-pin requirements.lock).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)
DATA_SOURCE ?= $(or $(firstword $(wildcard ../shared/data/imdb)),stanfordnlp/imdb)
ARCHS ?= rnn,lstm,gru

.PHONY: install test test-fast pipeline prefect-server lint lock clean

# The pinned versions of requirements.lock, then the project itself without resolving again.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests flows benchmarks
	$(BIN)/ruff format --check src tests flows benchmarks

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow"

# Prefect's API for the flow: PREFECT_API_URL when it is set, else a local Prefect server that
# `prefect server start --background` starts once and leaves running, with its UI, for the next
# runs and for scheduled deployments (stop it with `.venv/bin/prefect server stop`).
PREFECT_PORT ?= 4200
PREFECT_API := $(or $(PREFECT_API_URL),http://127.0.0.1:$(PREFECT_PORT)/api)

prefect-server: $(STAMP)
	@if ! PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect server status >/dev/null 2>&1; then \
		if [ -n "$$PREFECT_API_URL" ]; then \
			echo "error: no Prefect server answers at PREFECT_API_URL=$$PREFECT_API_URL" >&2; exit 2; fi; \
		$(BIN)/prefect server start --background --host 127.0.0.1 --port $(PREFECT_PORT) \
			--analytics-off >/dev/null || exit 2; \
		PREFECT_API_URL=$(PREFECT_API) $(BIN)/prefect server status --wait --timeout 120 \
			>/dev/null || exit 2; \
	fi
	@echo "Prefect UI: $(PREFECT_API:/api=)"

pipeline: prefect-server
	PREFECT_API_URL=$(PREFECT_API) PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python flows/pipeline.py \
		--archs $(ARCHS) --data-source $(DATA_SOURCE)

# Resolves pyproject.toml's ranges here; torch's local CPU build label is dropped, so the same
# pin takes the platform's own build elsewhere (the CUDA build from PyPI on Linux).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links --no-header --output-file requirements.lock pyproject.toml
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
