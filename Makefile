# The two commands: `make run` (start the Label Studio ML backend on :9090) and `make test`.
# Both set up everything they need on a fresh machine (virtualenv, pip and apt packages).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LS_VENV := .cache/label-studio-venv
LABEL_STUDIO_VERSION := 1.23.2
HOST ?= 0.0.0.0
PORT ?= 9090
WORKER_PORT ?= 8000
THREADS ?= 8

.PHONY: install official-sam2 run worker test test-fast e2e lint bench apt-deps label-studio-venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# Meta's SAM 2.1 predictor (PyPI `sam2`, an sdist) for the parity tests and bench/official.py only;
# the backend and the worker never import it. Built without its optional CUDA extension.
$(BIN)/.official-sam2: $(BIN)/.installed
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation hydra-core==1.3.8 iopath==0.1.10 sam2==1.1.0
	touch $@

official-sam2: $(BIN)/.official-sam2

run: install
	$(BIN)/gunicorn --bind $(HOST):$(PORT) --workers 1 --threads $(THREADS) --timeout 300 _wsgi:app

worker: install
	$(BIN)/python -m ml_backend.worker --rp_api_host $(HOST) --rp_api_port $(WORKER_PORT)

apt-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package) for the job tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing chromium (Debian package) for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
		&& command -v docker-compose >/dev/null 2>&1 || { \
		echo "installing docker.io, docker-compose and debootstrap (Debian packages) for the image tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			docker.io docker-compose debootstrap >/dev/null; }

$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install -q label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

label-studio-venv: $(LS_VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install official-sam2 apt-deps label-studio-venv lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

e2e: install label-studio-venv
	$(BIN)/python -m pytest -q -m e2e

bench: install
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .cache
