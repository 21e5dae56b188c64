# fusionline — two commands on a fresh machine:  `make demo`  and  `make test`.
#
# The Python environment (~6 GB, torch CUDA build running on CPU) lives outside the source tree,
# cached by the hash of requirements.lock, so a clean clone on the same machine reuses it.
# `.venv` in the checkout is a symlink to it.

SHELL := /bin/bash
PYTHON ?= python3
CACHE_HOME ?= $(HOME)/.cache/fusionline
LOCK_HASH := $(shell sha256sum requirements.lock | cut -c1-16)
VENV_DIR := $(CACHE_HOME)/venvs/$(LOCK_HASH)
UV := $(CACHE_HOME)/bootstrap/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto chromium ffmpeg orthanc orthanc-dicomweb dicom3tools espeak-ng pocketsphinx-testdata \
	asterisk-core-sounds-en-wav sphinxtrain sphinxbase-utils pocketsphinx
DATA ?= data
PARTS ?= 600
PYTEST_ARGS ?=
BENCH ?=

export HF_HUB_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

.PHONY: help setup system-deps venv demo test test-slow test-all bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps:  ## Debian packages the tests and the demo use (Mosquitto, Orthanc, dicom3tools, sphinxtrain...)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=900 update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends $$missing; \
	fi

$(UV):
	$(PYTHON) -m venv $(CACHE_HOME)/bootstrap
	$(CACHE_HOME)/bootstrap/bin/pip install -q uv

$(VENV_DIR)/.complete: | $(UV)  # the lock hash is in the path: never rebuilt for a newer mtime
	rm -rf $(VENV_DIR)
	$(UV) venv -q -p $(PYTHON) $(VENV_DIR)
	VIRTUAL_ENV=$(VENV_DIR) $(UV) pip sync -q requirements.lock
	touch $@

venv: $(VENV_DIR)/.complete  ## the Python environment (cached by the lock's hash) and the package, editable
	@ln -sfn $(VENV_DIR) $(VENV)
	@VIRTUAL_ENV=$(VENV_DIR) $(UV) pip install -q --no-deps -e .

setup: system-deps venv  ## everything `demo` and `test` need

demo: setup  ## both lines end to end (factory: synthesise, train if needed, replay through Ray; medical: a real Orthanc), then the dashboard
	$(VENV)/bin/fusionline demo factory --data $(DATA) --parts $(PARTS) --no-dashboard
	$(VENV)/bin/fusionline demo medical --data $(DATA)

test: setup  ## the default test run; slow tests excluded (CI runs it, then test-slow)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup  ## only the slow tests: the whole-line and 30 s PLC outages (~3 min)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-all: setup  ## every test, slow ones included
	$(PY) -m pytest -m "" $(PYTEST_ARGS)

bench: setup  ## every benchmark (or BENCH="benchmarks/x.py ..."), then docs/performance.md's measured section regenerated
	$(PY) benchmarks/_report.py $(BENCH)

lock: | $(UV)  ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile -q pyproject.toml --extra test -p $(PYTHON) -o requirements.lock

clean:  ## remove generated data, runs and caches in the checkout (not the cached venv)
	rm -rf $(DATA) runs .pytest_cache $(VENV)
