# Assay — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv browser test test-fast lint up down reset demo bench clean

# torch first, from the CPU wheel on local disk: a range resolved later would pull CUDA.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The browser the console's browser tests drive: Debian's chromium (Playwright's own browser
# download cannot reach its host). Installed only when missing; sudo when not root.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

# Import contracts, lint, format and types (pyproject.toml configures each). The lower
# bounds of pyproject.toml are checked by tests/infra/test_lower_bounds.py.
lint: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv lint browser
	$(PY) -m pytest tests

test-fast: venv
	$(PY) -m pytest tests -m "not slow"

# The whole system on this machine, in the background; `make down` stops all of it. Its
# data (entities, objects, the local admin key) stays in .assay/data for the next `make up`;
# `make reset` stops the stack and deletes that data.
# The console is then at ASSAY_URL/ui/ (sign in with ASSAY_API_KEY from .assay/local.env).
up: venv
	$(PY) -m devstack.localstack up --state .assay
	@. .assay/local.env && echo "console: $$ASSAY_URL/ui/ (sign in with ASSAY_API_KEY from .assay/local.env)"

down:
	@if [ -x $(PY) ]; then $(PY) -m devstack.localstack down --state .assay; else echo "stack not running"; fi

reset:
	@if [ -x $(PY) ]; then $(PY) -m devstack.localstack reset --state .assay; else rm -rf .assay/data .assay/jobs .assay/cache; fi

# Start the stack, upload a model and a dataset, evaluate, print results, stop the stack.
demo: venv
	$(PY) -m devstack.localstack up --state .assay
	set -a; . .assay/local.env; set +a; $(PY) -m devstack.demo; status=$$?; \
	  $(PY) -m devstack.localstack down --state .assay; exit $$status

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .assay
