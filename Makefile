# `make up` starts the whole stack on embedded defaults; `make test` runs the test suite.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: up test lint bench

$(VENV)/.runtime: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

up: $(VENV)/.runtime
	$(VENV)/bin/control-plane up

test: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PYTHON) -m pytest $(PYTEST_ARGS)
