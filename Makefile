# `make up` starts the whole stack on embedded defaults; `make test` runs the test suite.
VENV := .venv
PYTHON := $(VENV)/bin/python

.PHONY: up test bench java chromium redis

$(VENV)/.runtime: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime pyproject.toml
	$(PYTHON) -m pip install --quiet -e '.[test,dlt,scale]'
	touch $@

# The generator of the SDK test's client (tests/test_sdk.py), in a virtualenv of its own: it
# pins httpx and typer below the versions Prefect runs with.
$(VENV)/tools/.sdk:
	python3 -m venv $(VENV)/tools
	$(VENV)/tools/bin/pip install --quiet 'openapi-python-client>=0.29.1'
	touch $@

up: $(VENV)/.runtime
	$(VENV)/bin/control-plane up

# The Java example's test compiles it: a JDK and Jackson databind from Debian's packages.
java:
	@if ! command -v javac >/dev/null || [ ! -f /usr/share/java/jackson-databind.jar ]; then \
		apt-get update -qq && apt-get install -y -qq default-jdk-headless libjackson2-databind-java; \
	fi

# Prefect's messaging when its server is scaled out (up --profile scale, bench.throughput
# --scaled): Debian's Redis.
redis:
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }

# The browser test of the Prefect UI's run form: Debian's Chromium.
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

test: $(VENV)/.test $(VENV)/tools/.sdk java chromium redis
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PYTHON) -m pytest -p no:xdist tests/unit
	$(PYTHON) -m pytest -n 2 --ignore=tests/unit $(PYTEST_ARGS)

# The benchmarks of the README's Performance section, one after the other (about 20 min). The
# scaled and embedded stacks go next to the first throughput run with 400 creates from 16
# clients: they show the CPU per create, and any 503 of Prefect's, as 1,000 do, in less than
# half the time.
bench: $(VENV)/.test redis
	$(PYTHON) -m bench.actions
	$(PYTHON) -m bench.throughput
	$(PYTHON) -m bench.throughput --scaled --connectors 400 --sequential 50
	$(PYTHON) -m bench.throughput --embedded --connectors 400 --sequential 50
	$(PYTHON) -m bench.scale --curve 1000,10000,30000
	$(PYTHON) -m bench.trigger
	$(PYTHON) -m bench.data_plane
	$(PYTHON) -m bench.crash
	$(PYTHON) -m bench.alerts
