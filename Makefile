# ComputeMesh — the two commands are `make demo` and `make test` (see README.md).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Rewritten after every successful install; older than pyproject.toml means "reinstall".
STAMP := $(VENV)/.computemesh-installed

BIND ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

# `make test` runs against the machine's own services (ports and cluster overridable
# for trying the start-up path; webapp/settings_test.py has the default addresses).
PG_HOST := 127.0.0.1
PG_PORT ?= 5432
PG_DB := computemesh
PG_CLUSTER ?= main
PG_URL := postgres://postgres@$(PG_HOST):$(PG_PORT)/$(PG_DB)
REDIS_HOST := 127.0.0.1
REDIS_PORT ?= 6379
CHROMIUM := /usr/bin/chromium
BWRAP := /usr/bin/bwrap

.PHONY: help install demo demo-sandbox test lint checks services chromium bubblewrap nftables haproxy migrate serve bench chaos soak clean distclean

help:
	@echo "make demo     install, migrate, seed and serve the demo at http://$(BIND):$(PORT)/"
	@echo "make test     install, start PostgreSQL/Redis if needed, lint, checks, whole test suite"
	@echo "make lint     ruff, the import rules (.importlinter), mypy and a parse of docker-compose.yml"
	@echo "make migrate  apply migrations to DATABASE_URL (embedded SQLite when unset)"
	@echo "make serve    production-like ASGI server (daphne; DEBUG off, needs SECRET_KEY)"
	@echo "make bench    bench/offer_search.py against PostgreSQL"
	@echo "make slow     the ten-minute DDP and DiLoCo jobs across two agents, the slow benches' smoke runs"
	@echo "make chaos    the long chaos run (tests/chaos; figures in test-results/chaos.json)"
	@echo "make soak     an hour of 2-node jobs under agent kills (CHAOS_SOAK_S; counts in test-results/soak.json)"
	@echo "make clean    remove caches, build output, var/ and the demo database"
	@echo "make distclean  clean, and remove $(VENV)"

# --- install: a venv with python3.11, reinstalled only when a pyproject.toml changes -----
install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml
	@if ! $(PY) -c 'import sys' >/dev/null 2>&1; then \
	  command -v $(PYTHON) >/dev/null || { \
	    echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'" >&2; \
	    exit 1; }; \
	  echo "==> creating $(VENV) with $$($(PYTHON) --version)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	fi
	@echo "==> installing ComputeMesh, its dev tools and the computemesh client into $(VENV)"
	@$(PIP) install -qq --progress-bar off -e ".[dev]" -e ./client
	@touch $@

# --- demo: embedded defaults (SQLite, embedded Redis, dev chain, 2 CPU agents), supervised --
demo: install demo-sandbox
	@echo "==> migrating the demo database"
	@DEBUG=1 $(PY) manage.py migrate --noinput -v 0
	@echo "==> seeding demo data"
	@DEBUG=1 $(PY) manage.py seed_demo
	@echo
	@echo "  ComputeMesh demo: http://$(BIND):$(PORT)/   (API docs: /api/docs/, admin: /admin/)"
	@echo "  Log in as (password demo-pass-123 for all; demo only):"
	@echo "    alice   consumer, healthcare start-up"
	@echo "    erin    consumer, energy start-up"
	@echo "    carol   provider"
	@echo "    admin   staff (Django admin)"
	@echo "  Ctrl-C stops the server."
	@echo
	@exec $(PY) -m webapp.devserver --host $(BIND) --port $(PORT)

# --- test: the whole suite on PostgreSQL and Redis ------------------------------------
test: install contracts services chromium bubblewrap nftables haproxy lint checks
	@echo "==> pytest"
	@$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	@echo "==> ruff check"
	@$(VENV)/bin/ruff check .
	@echo "==> lint-imports (the layers and walls in .importlinter)"
	@$(VENV)/bin/lint-imports --no-cache
	@echo "==> mypy (services, selectors, Celery tasks: [tool.mypy] in pyproject.toml)"
	@$(VENV)/bin/mypy
	@echo "==> the import diagram in docs/architecture.md matches the code"
	@$(PY) docs/import_diagram.py --check
	@$(PY) -c 'import yaml; yaml.safe_load(open("docker-compose.yml"))' \
	  || { echo "error: docker-compose.yml is not valid YAML" >&2; exit 1; }

# Migrations match the models; production settings pass Django's deployment checks.
checks: install services
	@echo "==> makemigrations --check"
	@DJANGO_SETTINGS_MODULE=webapp.settings_test $(PY) manage.py makemigrations --check --dry-run
	@echo "==> check --deploy (production-like environment)"
	@env DJANGO_SETTINGS_MODULE=webapp.settings DEBUG=0 \
	  SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	  ALLOWED_HOSTS=example.com DATABASE_URL=$(PG_URL) \
	  CHAIN_RPC_URL=https://rpc.example.com CHAIN_OPERATOR_KEY=0x$$(openssl rand -hex 32) \
	  CHAIN_TREASURY_ADDRESS=0x$$(openssl rand -hex 20) CHAIN_ADMIN_ADDRESS=0x$$(openssl rand -hex 20) \
	  CHAIN_PAUSER_ADDRESS=0x$$(openssl rand -hex 20) \
	  $(PY) manage.py check --deploy --fail-level WARNING

# Start the machine's PostgreSQL and Redis when they are down, wait until they answer,
# and create the database that the check above and `make migrate` use.
services:
	@if ! pg_isready -q -h $(PG_HOST) -p $(PG_PORT); then \
	  echo "==> starting PostgreSQL"; \
	  command -v pg_ctlcluster >/dev/null || { \
	    echo "error: PostgreSQL is not running on $(PG_HOST):$(PG_PORT) and pg_ctlcluster is missing; start it yourself" >&2; \
	    exit 1; }; \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | sort -V | tail -n1) $(PG_CLUSTER) start || true; \
	  for i in $$(seq 60); do pg_isready -q -h $(PG_HOST) -p $(PG_PORT) && break; sleep 0.5; done; \
	  pg_isready -q -h $(PG_HOST) -p $(PG_PORT) || { \
	    echo "error: PostgreSQL did not come up on $(PG_HOST):$(PG_PORT)" >&2; exit 1; }; \
	fi
	@psql -h $(PG_HOST) -p $(PG_PORT) -U postgres -d postgres -tAc \
	    "SELECT 1 FROM pg_database WHERE datname = '$(PG_DB)'" | grep -q 1 \
	  || createdb -h $(PG_HOST) -p $(PG_PORT) -U postgres $(PG_DB)
	@if ! redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping 2>/dev/null | grep -q PONG; then \
	  echo "==> starting Redis"; \
	  command -v redis-server >/dev/null || { \
	    echo "error: Redis is not running on $(REDIS_HOST):$(REDIS_PORT) and redis-server is missing; start it yourself" >&2; \
	    exit 1; }; \
	  mkdir -p /var/lib/redis /var/log/redis; \
	  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $(REDIS_PORT) --save "" \
	    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log; \
	  for i in $$(seq 60); do redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping 2>/dev/null | grep -q PONG && break; sleep 0.5; done; \
	  redis-cli -h $(REDIS_HOST) -p $(REDIS_PORT) ping 2>/dev/null | grep -q PONG || { \
	    echo "error: Redis did not come up on $(REDIS_HOST):$(REDIS_PORT)" >&2; exit 1; }; \
	fi

# A Debian package some tests need, installed when its binary is missing:
# $(call apt_install,PACKAGE,BINARY,WHAT FOR) (no comma in WHAT FOR).
define apt_install
	@if [ ! -x $(2) ]; then \
	  echo "==> installing Debian's $(1) $(3)"; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  log=$$(mktemp); \
	  { $$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
	    && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(1); } >"$$log" 2>&1 \
	    || { cat "$$log" >&2; echo "error: could not install $(1)" >&2; exit 1; }; \
	  rm -f "$$log"; \
	fi
endef

# The browser tests drive Debian's Chromium (Playwright cannot download its own here).
chromium:
	$(call apt_install,chromium,$(CHROMIUM),for the browser tests)

# The provider sandbox (workers/agent/sandbox.py, tests/test_sandbox.py) is Debian's bubblewrap.
bubblewrap:
	$(call apt_install,bubblewrap,$(BWRAP),for the provider sandbox)

# A multi-node sandbox's peers firewall (workers/agent/peer_firewall.py,
# tests/test_sandbox_network.py) is an nftables table per assignment.
NFT := /usr/sbin/nft
nftables:
	$(call apt_install,nftables,$(NFT),for the sandbox's peers firewall)

# The demo's agents run consumers' own code in the sandbox: bubblewrap, and nftables for a
# job on both agents (its peers firewall). Best effort: where neither root nor sudo can
# install them, the demo still runs and a quote says why a bundle finds no node.
demo-sandbox:
	-@$(MAKE) --no-print-directory bubblewrap nftables

# The web tier's balancer (deploy/haproxy.cfg): tests/test_web_scale_out.py and
# bench/agent_scale.py run it in front of two daphne processes.
HAPROXY := /usr/sbin/haproxy
haproxy:
	$(call apt_install,haproxy,$(HAPROXY),for the web tier's tests)

# --- contracts: solc-js, OpenZeppelin and the hardhat dev node, pinned by package-lock.json --
# (the compiled artifacts are committed; tests/contracts checks that they match the sources)
CONTRACTS_STAMP := contracts/node_modules/.computemesh-installed
.PHONY: contracts

contracts: $(CONTRACTS_STAMP)

$(CONTRACTS_STAMP): contracts/package.json contracts/package-lock.json
	@command -v npm >/dev/null || { \
	  echo "error: npm not found; install Node.js 20 and npm (Debian: apt-get install nodejs npm)" >&2; \
	  exit 1; }
	@echo "==> installing the contract toolchain (npm ci in contracts/)"
	@log=$$(mktemp); \
	  npm ci --prefix contracts --no-audit --no-fund >"$$log" 2>&1 \
	    || { cat "$$log" >&2; rm -f "$$log"; echo "error: npm ci in contracts/ failed" >&2; exit 1; }; \
	  rm -f "$$log"
	@touch $@

# --- operations --------------------------------------------------------------------
# Uses the environment as it is: set DATABASE_URL and SECRET_KEY, or DEBUG=1 for the
# embedded SQLite database.
migrate: install
	@$(PY) manage.py migrate --noinput

# Production-like: DEBUG off, static files collected and served by WhiteNoise, daphne
# behind a TLS-terminating proxy (SECURE_SSL_REDIRECT is on by default without DEBUG).
serve: install
	@$(PY) manage.py collectstatic --noinput -v 0
	@exec $(VENV)/bin/daphne -b $(BIND) -p $(PORT) webapp.asgi:application

bench: install services
	@$(PY) bench/offer_search.py

# Ten-minute jobs (DDP and DiLoCo) across two real agents at the default stall timeout, marked
# slow and skipped unless COMPUTEMESH_SLOW=1; durations in test-results/slow-runs.json. Also the
# smoke runs of the benchmarks too slow for `make test` (tests/test_bench_smoke.py).
.PHONY: slow
slow: install services
	@COMPUTEMESH_SLOW=1 $(VENV)/bin/pytest -m slow tests/test_long_runs.py tests/test_bench_smoke.py $(PYTEST_ARGS)

# The chaos suite's long form: more jobs, nodes and agent kills than the short form that
# `make test` runs. Its figures go to test-results/chaos.json (docs/BENCHMARKS.md, "Chaos").
CHAOS_JOBS ?= 6
CHAOS_NODES ?= 4
CHAOS_AGENT_KILLS ?= 3
CHAOS_EPOCHS ?= 20
CHAOS_TIMEOUT_S ?= 1500
chaos: install contracts services
	@CHAOS_JOBS=$(CHAOS_JOBS) CHAOS_NODES=$(CHAOS_NODES) CHAOS_AGENT_KILLS=$(CHAOS_AGENT_KILLS) \
	  CHAOS_EPOCHS=$(CHAOS_EPOCHS) CHAOS_TIMEOUT_S=$(CHAOS_TIMEOUT_S) \
	  $(VENV)/bin/pytest -m chaos tests/chaos/test_chaos.py $(PYTEST_ARGS)

# The soak: 2-node paid jobs one after another for CHAOS_SOAK_S seconds under agent kills
# (tests/chaos/test_soak.py); its counts go to test-results/soak.json. `make soak
# CHAOS_SOAK_S=300` is the 5-minute form.
CHAOS_SOAK_S ?= 3600
CHAOS_SOAK_KILL_EVERY_S ?= 60
soak: install contracts services
	@CHAOS_SOAK_S=$(CHAOS_SOAK_S) CHAOS_SOAK_KILL_EVERY_S=$(CHAOS_SOAK_KILL_EVERY_S) \
	  $(VENV)/bin/pytest -m chaos tests/chaos/test_soak.py $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info test-results bench/results var
	rm -f computemesh.sqlite3 computemesh.sqlite3-*
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
