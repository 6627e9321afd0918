# Audiences: `make run` starts everything embedded; `make test` passes every test
# against real Postgres and Redis. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/audiences/v1/*.proto)
# pytest-xdist workers for `make test` (each gets its own Redis database index).
TEST_WORKERS ?= 2

.PHONY: help run demo test lint typecheck fmt protos check-protos migrate install

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(MAKE) --no-print-directory $(CHECKOV_STAMP)
	touch $(STAMP)

# checkov (Kubernetes policy scan of deploy/k8s, tests/deploy) lives in its own venv:
# its dependency pins clash with the project's (it would downgrade packaging).
CHECKOV_VENV := .venv-checkov
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $(CHECKOV_STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

protos: $(STAMP) ## regenerate gen/ from protos/ (never edit gen/ by hand)
	$(PY) scripts/gen_protos.py gen

check-protos: $(STAMP) ## fail if gen/ is stale
	$(PY) scripts/gen_protos.py --check gen

migrate: $(STAMP) ## apply migrations to DATABASE_URL (embedded SQLite by default)
	$(VENV)/bin/audiences migrate

run: protos ## start all five services embedded (SQLite + in-process Redis)
	$(VENV)/bin/audiences migrate
	$(PY) -m services.dev_runner

demo: $(STAMP) ## with `make run` up: load a simulated shop (PROFILES=2000) into the demo workspace
	$(VENV)/bin/audiences demo load --profiles $(or $(PROFILES),2000)

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy over services/ (settings in pyproject.toml)
	$(VENV)/bin/mypy

fmt: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: $(STAMP) ## ensure Postgres+Redis, lint, type-check, check protos, run every test
	scripts/ensure_services.sh
	$(MAKE) --no-print-directory lint typecheck check-protos
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)
