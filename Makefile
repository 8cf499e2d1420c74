# Two commands for a newcomer: `make run` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run run-prod test lint format bench messages clean install install-dev lock audit

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Every line of the locks carries its hashes: pip installs exactly the files that were locked.
# phonenumberslite replaced phonenumbers (both install the `phonenumbers` module): a venv made
# before drops the old one first, or the two would share and then delete each other's files.
$(VENV)/.installed: requirements.lock | $(BIN)/python
	@if $(BIN)/pip show --quiet phonenumbers 2>/dev/null; then $(BIN)/pip uninstall --quiet --yes phonenumbers; fi
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock | $(BIN)/python
	@if $(BIN)/pip show --quiet phonenumbers 2>/dev/null; then $(BIN)/pip uninstall --quiet --yes phonenumbers; fi
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py bootstrap_demo
	HOST=$(HOST) PORT=$(PORT) BIN=$(BIN) bash scripts/run-dev.sh

# The production topology on this machine: PostgreSQL + Redis, DEBUG=false, real secrets
# (README "Deploying"). WEB_PORTS, WEB_WORKERS, CELERY_WORKERS tune it.
run-prod: install
	BIN=$(BIN) bash scripts/run-prod.sh

test: install-dev
	$(BIN)/python manage.py compilemessages --ignore=.venv -v0
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

messages: install-dev
	$(BIN)/python manage.py makemessages -l zh_Hans --ignore=.venv --ignore=var --no-obsolete
	$(BIN)/python manage.py compilemessages --ignore=.venv

bench: install-dev
	$(BIN)/python bench/run.py

# Recompile every lock from pyproject.toml, with hashes (README, "Dependencies").
# LOCK_ARGS="--upgrade-package NAME" moves one pin, LOCK_ARGS=--upgrade all of them.
lock: install-dev
	BIN=$(BIN) LOCK_ARGS="$(LOCK_ARGS)" bash scripts/lock.sh

# Known vulnerabilities in the locked packages (PyPI's advisory data); CI runs it.
audit: install-dev
	BIN=$(BIN) bash scripts/audit.sh

clean:
	rm -rf $(VENV) var
