# RM Studio. `make demo` runs the app with demo data; `make test` runs every test. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501
# Every runtime and test dependency at the exact version (and hash) CI tested; torch apart (requirements/torch-cpu.txt).
LOCK := requirements/lock.txt
TORCH_LOCK := requirements/torch-cpu.txt
# `make lock` resolves as of this date, so running it again reproduces the lock; move the date to take newer releases.
LOCK_DATE ?= 2026-12-07T00:00:00Z
# Where the CPU torch wheel comes from when locking: a local wheel folder if there is one, else PyTorch's CPU index.
TORCH_WHEELS ?= $(if $(wildcard /opt/wheels/torch-*),--find-links /opt/wheels,--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
UV_VERSION ?= 0.13.10
UV ?= $(VENV)/bin/uv

.PHONY: install demo test test-fast lint lock system-deps clean

# Exactly the lock: hashes checked, no dependency resolution at install time, then `pip check`.
# A virtual environment that already has a torch (a GPU machine's CUDA build) keeps it.
$(STAMP): $(LOCK) $(TORCH_LOCK) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-deps -r $(TORCH_LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

## Re-resolve requirements/lock.txt from pyproject.toml's ranges (runtime + test extras), as of LOCK_DATE.
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(UV) --version 2>/dev/null | grep -q " $(UV_VERSION)" || $(PY) -m pip install -q "uv==$(UV_VERSION)"
	$(UV) pip compile pyproject.toml --extra test --python-version 3.11 --generate-hashes \
	  --no-emit-package torch --constraint $(TORCH_LOCK) $(TORCH_WHEELS) \
	  --exclude-newer $(LOCK_DATE) --custom-compile-command "make lock" -o $(LOCK)

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
test: install system-deps lint
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(PY) -m pytest tests/unit -x -q

clean:
	rm -rf $(VENV) rmstudio-data .pytest_cache test-artifacts
