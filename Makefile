# The two commands a newcomer needs, each installing what it needs into .venv by itself:
#   make pipeline   run the whole pipeline (Prefect flow over the DVC stages)
#   make test       lint and run the test suite
# Offline, or to use a local copy of IMDB: make pipeline DATA_SOURCE=path/to/imdb
# (defaults to ../shared/data/imdb when that folder exists, else the hub id stanfordnlp/imdb).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DATA_SOURCE ?= $(or $(firstword $(wildcard ../shared/data/imdb)),stanfordnlp/imdb)
ARCHS ?= rnn,lstm,gru

.PHONY: install test pipeline lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests flows benchmarks

test: lint
	$(BIN)/pytest

pipeline: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python flows/pipeline.py --archs $(ARCHS) \
		--data-source $(DATA_SOURCE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
