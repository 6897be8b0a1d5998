# Public entry points: run, test, e2e, bench, lint, secrets. `.ci/run` calls them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test-redis-tls test-redis-cluster run test e2e bench soak bench-deps lint audit secrets venv system-deps clean fuzz security audit-deps tls-venv scan

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
test: venv system-deps tls-venv
	scripts/system-deps.sh promtool iptables ip unshare
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

## test-redis-tls: the redis-facing tests again with every test stack's redis on TLS only
##                 (PLAB_TEST_REDIS_TLS=1; SECURITY.md, "Redis over TLS")
REDIS_TLS_TESTS ?= tests/test_kv_routes.py tests/test_auth.py tests/test_tokens.py \
	tests/test_audit.py tests/test_acl.py tests/test_backup.py tests/test_durability.py
test-redis-tls: venv system-deps
	PLAB_TEST_REDIS_TLS=1 $(PY) -m pytest -n 2 $(REDIS_TLS_TESTS) $(PYTEST_ARGS)

## test-redis-cluster: the in-process KV route suites again with both planes over a real
##                     three-master Redis Cluster (PLAB_TEST_REDIS=cluster, tests/cluster_kit.py,
##                     docs/RELIABILITY.md "Redis Cluster"). Of issue 12's list these run on the
##                     in-process layer; test_properties, test_audit, test_users and test_tokens
##                     run over process stacks (single redis) and are not in it: the CAS and
##                     transaction state machines and the audit verification run over a cluster
##                     in tests/test_cluster.py (part of `make test`).
REDIS_CLUSTER_TESTS ?= tests/test_kv_routes.py tests/test_txn.py tests/test_bulk.py \
	tests/test_watch.py
test-redis-cluster: venv system-deps
	PLAB_TEST_REDIS=cluster $(PY) -m pytest -n 2 $(REDIS_CLUSTER_TESTS) $(PYTEST_ARGS)

## fuzz: the bad-input proofs alone: schemathesis (OpenAPI), hypothesis properties, hostile corpus
fuzz: venv system-deps
	$(PY) -m pytest tests/test_openapi.py tests/test_properties.py tests/test_hostile.py $(PYTEST_ARGS)

## security: bandit on productionlab/ (each suppression is a `# nosec BXXX` with its reason)
security: venv
	$(VENV)/bin/bandit -r productionlab -q --severity-level low --confidence-level low

## audit-deps: pip-audit on the pinned requirements; exit 2 (UNVERIFIED) when its
##             vulnerability service cannot be reached - never a silent pass
audit-deps: venv
	$(PY) scripts/audit_deps.py requirements.txt requirements-dev.txt requirements-tls.txt

## scan: vulnerability scan of the images' SBOMs (var/e2e/sbom/, written by `make e2e`) and
##       the pinned runtime requirements; exit 2 (UNVERIFIED) when a scanner or its
##       database is missing or unreachable - never a silent pass
SBOM_DIR ?= var/e2e/sbom
scan: venv
	$(PY) scripts/scan.py --sbom-dir $(SBOM_DIR) requirements.txt

## tls-venv: sslyze in its own virtualenv (it pins an older cryptography than the service)
TLS_VENV ?= .venv-tls
tls-venv: $(TLS_VENV)/.installed

$(TLS_VENV)/.installed: requirements-tls.txt
	$(PYTHON) -m venv $(TLS_VENV)
	$(TLS_VENV)/bin/pip install -q -r requirements-tls.txt
	touch $@

## bench: naive baseline, empty-Flask ceiling (issue 16) vs hardened stack (and Webdis if installed) under wrk -> docs/BENCHMARKS.md
##        BENCH_SMOKE=1: a ~35 s smoke that writes its report to a temp dir
BENCH_SMOKE ?=
bench: venv system-deps bench-deps
	scripts/system-deps.sh wrk
	$(PY) bench/run.py $(if $(BENCH_SMOKE),--smoke)

## soak: 10 minutes at a fixed rate through the edge; memory and errors -> docs/BENCHMARKS.md
soak: venv system-deps bench-deps
	scripts/system-deps.sh wrk
	$(PY) bench/run.py --soak

bench-deps: $(VENV)/.bench-installed

$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q -r bench/requirements.txt
	touch $@

## lint: ruff lint and format check
lint: venv
	$(VENV)/bin/ruff check productionlab tests bench e2e scripts
	$(VENV)/bin/ruff format --check productionlab tests bench e2e scripts

## secrets: compose secrets, a TLS certificate and redis.conf under secrets/ (docs/COMPOSE.md)
secrets: venv
	$(PY) -m productionlab.deploy secrets --dir secrets

## e2e: build the images and drive a real `docker compose up` through the edge (as root;
## starts its own dockerd when none answers; see docs/COMPOSE.md); writes a CycloneDX
## SBOM per image (OS and Python packages) to var/e2e/sbom/
e2e: venv
	scripts/system-deps.sh docker docker-compose debootstrap
	$(PY) -m pytest e2e -v -s -p no:cacheprovider $(E2E_ARGS)

clean:
	rm -rf $(VENV) $(TLS_VENV) .pytest_cache .ruff_cache
