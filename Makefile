# Public entry points: run, test, e2e, bench, lint, secrets. `.ci/run` calls them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: run test e2e bench lint audit secrets venv system-deps clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

system-deps:
	scripts/system-deps.sh redis-server nginx

## run: the whole local stack in the foreground at https://127.0.0.1:8443 (Ctrl-C stops it)
run: venv system-deps
	$(PY) -m productionlab run

## test: the test suite against real redis, Waitress and nginx
test: venv system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff lint and format check
lint: venv
	$(VENV)/bin/ruff check productionlab tests bench
	$(VENV)/bin/ruff format --check productionlab tests bench

## secrets: compose secrets, a TLS certificate and redis.conf under secrets/ (docs/COMPOSE.md)
secrets: venv
	$(PY) -m productionlab.deploy secrets --dir secrets

## e2e: build the images and drive a real `docker compose up` through the edge (as root;
## starts its own dockerd when none answers; see docs/COMPOSE.md)
e2e: venv
	scripts/system-deps.sh docker docker-compose debootstrap
	$(PY) -m pytest e2e -v -s -p no:cacheprovider $(E2E_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
