# RM Studio. `make demo` runs the app with demo data; `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel keeps installs small; a GPU machine can pre-install its own torch (any >= 2.4) in the venv.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: install demo test test-fast system-deps postgres bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## Seed the demo data into the default SQLite database, then run the app and the training worker together.
demo: install
	$(VENV)/bin/rmstudio seed-demo
	$(VENV)/bin/rmstudio serve --port $(PORT)

## Chromium for the browser tests (Debian package) and a running PostgreSQL for the PostgreSQL path.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium install failed: browser tests will skip"; fi
	@if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; fi

## The whole suite: unit, integration (real SQLite files, PostgreSQL, several processes), app (AppTest), e2e (Chromium).
test: install system-deps
	$(PY) -m pytest tests

test-fast: install
	$(PY) -m pytest tests/unit -x -q

clean:
	rm -rf $(VENV) rmstudio-data .pytest_cache test-artifacts
