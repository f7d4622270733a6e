# Two entry points for a fresh machine (see README):
#   make serve   install the service (ONNX Runtime on CPU, no torch) and serve ./model_repository
#   make test    install everything the test suite needs and run it
# Both are idempotent: an install is redone only when pyproject.toml, constraints.txt (or this
# file) changes, keyed by a stamp file inside the virtual environment. Both install against
# constraints.txt, so the service and the tests run on the same versions; `make constraints`
# regenerates it.

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
CONSTRAINTS ?= constraints.txt
LOCK_VENV ?= .venv-lock

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
DEPS_HASH := $(shell cat pyproject.toml Makefile $(wildcard $(CONSTRAINTS)) | (sha256sum 2>/dev/null || shasum -a 256) | cut -c1-16)
SERVE_STAMP := $(VENV)/.focus-serve-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.focus-test-$(DEPS_HASH)

.PHONY: help serve test install-serve install-test system-deps lint typecheck clean demo-models \
	constraints container-deps container-test

help:
	@echo "make serve  - install the service into $(VENV) and serve ./model_repository on :8000"
	@echo "make test   - install the service, training and test tools into $(VENV) and run pytest"
	@echo "make container-test - build the CPU image and the compose stack with podman and test them"
	@echo "make lint   - ruff check"
	@echo "make typecheck - mypy over models/, service/ and export/ (part of make test)"
	@echo "make clean  - remove $(VENV)"
	@echo "make constraints - re-resolve every dependency into $(CONSTRAINTS)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Service only: no torch. `pip install -e .` gives ONNX Runtime on CPU.
$(SERVE_STAMP): | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) -e .
	rm -f $(VENV)/.focus-serve-*
	touch $@

# torch first, pinned: an unpinned torch (asked for by the train extra) would pull a multi-GB
# CUDA build; with torch==$(TORCH_VERSION) already present, `torch>=...` installs nothing more.
$(TEST_STAMP): | $(BIN)/python
	$(PIP) install -c $(CONSTRAINTS) "torch==$(TORCH_VERSION)"
	$(PIP) install -c $(CONSTRAINTS) -e '.[train,dev]'
	rm -f $(VENV)/.focus-test-* $(VENV)/.focus-serve-*
	touch $@ $(SERVE_STAMP)

install-serve: $(SERVE_STAMP)
install-test: $(TEST_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/focus serve

# The tail of system-deps and container-deps: given $$missing (Debian packages, space-separated),
# install them when we are root with apt-get; otherwise, or when that fails, warn and go on.
define apt_install_missing
if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "WARNING: not root or no apt-get; missing Debian packages:$$missing ($(1))"; \
		exit 0; \
	fi; \
	echo "Installing Debian packages:$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	log="$$(mktemp)"; \
	if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; } \
		>"$$log" 2>&1; then \
		tail -n 20 "$$log"; \
		echo "WARNING: apt-get install$$missing failed ($(1))"; \
	fi; \
	rm -f "$$log"
endef

# Debian packages: installed only when missing and when we are root; any failure is a warning,
# and the tests that need the tool skip with the reason.
system-deps:
	@missing=""; \
	for pair in $(APT_TOOLS); do \
		command -v "$${pair%%=*}" >/dev/null 2>&1 || missing="$$missing $${pair#*=}"; \
	done; \
	$(call apt_install_missing,the tests that need it will skip)

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

# constraints.txt: every package `make test` installs (service, train and dev extras; torch as
# TORCH_VERSION), resolved afresh in a throw-away venv and pinned. `make serve` and `make test`
# both install against it. Run after changing a dependency in pyproject.toml.
constraints:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip --disable-pip-version-check install -q "torch==$(TORCH_VERSION)"
	$(LOCK_VENV)/bin/python -m pip --disable-pip-version-check install -q '.[train,dev]'
	{ echo "# Generated by \`make constraints\` (Python $$($(LOCK_VENV)/bin/python -c 'import platform; print(platform.python_version())')); do not edit."; \
	  echo "# \`make serve\` and \`make test\` install against it: one set of versions for both."; \
	  $(LOCK_VENV)/bin/python -m pip --disable-pip-version-check freeze --exclude-editable \
	  | grep -viE '^(focus[-_]serve|pip|setuptools|wheel)[=@ ]' | sed -E 's/^(torch==[^+]*)\+.*/\1/' \
	  | LC_ALL=C sort -f; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	rm -rf $(LOCK_VENV)

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
	$(call apt_install_missing,the container tests will skip)

container-test: $(TEST_STAMP) container-deps
	@rc=0; $(BIN)/python -m pytest -q -rs -m container tests/container $(CONTAINER_PYTEST_ARGS) \
		|| rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc
