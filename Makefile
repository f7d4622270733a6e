# Two entry points for a fresh machine (see README):
#   make serve   install the service (ONNX Runtime on CPU, no torch) and serve ./model_repository
#   make test    install everything the test suite needs and run it
# Both are idempotent: an install is redone only when pyproject.toml (or this file) changes,
# keyed by a stamp file inside the virtual environment.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Debian packages some tests drive for real, as command=package; each of those tests skips with
# a reason where its command is absent (kubectl: its built-in kustomize renders deploy/k8s).
APT_TOOLS ?= promtool=prometheus chromium=chromium kubectl=kubernetes-client

PYTEST_ARGS ?=

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
DEPS_HASH := $(shell cat pyproject.toml Makefile | (sha256sum 2>/dev/null || shasum -a 256) | cut -c1-16)
SERVE_STAMP := $(VENV)/.focus-serve-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.focus-test-$(DEPS_HASH)

.PHONY: help serve test install-serve install-test system-deps lint typecheck clean demo-models \
	container-deps container-test

help:
	@echo "make serve  - install the service into $(VENV) and serve ./model_repository on :8000"
	@echo "make test   - install the service, training and test tools into $(VENV) and run pytest"
	@echo "make container-test - build the CPU image and the compose stack with podman and test them"
	@echo "make lint   - ruff check"
	@echo "make typecheck - mypy over models/, service/ and export/ (part of make test)"
	@echo "make clean  - remove $(VENV)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Service only: no torch. `pip install -e .` gives ONNX Runtime on CPU.
$(SERVE_STAMP): | $(BIN)/python
	$(PIP) install -e .
	rm -f $(VENV)/.focus-serve-*
	touch $@

# torch first, pinned: an unpinned torch (asked for by the train extra) would pull a multi-GB
# CUDA build; with torch==$(TORCH_VERSION) already present, `torch>=...` installs nothing more.
$(TEST_STAMP): | $(BIN)/python
	$(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -e '.[train,dev]'
	rm -f $(VENV)/.focus-test-* $(VENV)/.focus-serve-*
	touch $@ $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)
install-test: $(TEST_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/focus serve

# Debian packages: installed only when missing and when we are root; any failure is a warning,
# and the tests that need the tool skip with the reason.
system-deps:
	@missing=""; \
	for pair in $(APT_TOOLS); do \
		command -v "$${pair%%=*}" >/dev/null 2>&1 || missing="$$missing $${pair#*=}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "WARNING: not root or no apt-get; missing Debian packages:$$missing (their tests will skip)"; \
		exit 0; \
	fi; \
	echo "Installing Debian packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	log="$$(mktemp)"; \
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; } \
		>"$$log" 2>&1; then \
		tail -n 20 "$$log"; \
		echo "WARNING: apt-get install$$missing failed; the tests that need it will skip"; \
	fi; \
	rm -f "$$log"

# mypy first (seconds with its cache in .mypy_cache; files and rules in [tool.mypy]), then pytest.
# pytest exits 5 when it collected no test; that is not a failure of the suite.
test: $(TEST_STAMP) system-deps typecheck
	@rc=0; $(BIN)/python -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# Rebuild model_repository/: one tiny model per task, trained on synthetic data.
demo-models: $(TEST_STAMP)
	$(BIN)/python scripts/make_demo_models.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

typecheck: $(TEST_STAMP)
	$(BIN)/python -m mypy

clean:
	rm -rf $(VENV)

# ------------------------------------------------------------------------------ containers
# `make container-test`: build the Dockerfile's cpu target on a local Debian base with podman,
# run it and the compose stack, and test them (tests/container, marker `container`; see
# deploy/local/README.md). Debian packages it needs, installed when missing and we are root;
# without them the tests skip and say why.
CONTAINER_APT ?= podman runc netavark aardvark-dns iptables debootstrap
CONTAINER_PYTEST_ARGS ?=

container-deps:
	@missing=""; \
	for pkg in $(CONTAINER_APT); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'ok installed' \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "WARNING: not root or no apt-get; missing Debian packages:$$missing"; \
		exit 0; \
	fi; \
	echo "Installing Debian packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	log="$$(mktemp)"; \
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; } \
		>"$$log" 2>&1; then \
		tail -n 20 "$$log"; \
		echo "WARNING: apt-get install$$missing failed; the container tests will skip"; \
	fi; \
	rm -f "$$log"

container-test: $(TEST_STAMP) container-deps
	@rc=0; $(BIN)/python -m pytest -q -rs -m container tests/container $(CONTAINER_PYTEST_ARGS) \
		|| rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc
