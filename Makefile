# KEEP — every target has a one-line help; `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= .keep/demo
PYTEST_ARGS ?=
# Installed without its dependencies: it asks for the CUDA `fbgemm-gpu`; pyproject's [trainer] extra
# has the CPU build (fbgemm-gpu-cpu==1.8.0) and its other requirements.
TORCHREC := torchrec==1.8.0

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-slow bench protos lint up down deploy-check load reliability

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | sort

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps '$(TORCHREC)'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with all extras

demo: $(STAMP) ## run the whole pipeline on tiny synthetic data and print a GAUC table
	$(VENV)/bin/keep demo --out $(DEMO_DIR)

test: $(STAMP) ## run the test suite (everything not marked slow)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) ## run the slow tests (experiments, cluster, long fault scenarios)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

RELIABILITY_MARK ?= reliability

reliability: $(STAMP) ## fault, bad-input and security proofs, the slow ones included (tests/reliability)
	$(PY) -m pytest -m "$(RELIABILITY_MARK)" tests/reliability $(PYTEST_ARGS)

LOAD_ARGS ?=

load: $(STAMP) ## Locust load test against a local suite (127.0.0.1); report under results/load/, fails over thresholds
	$(PY) -m pip install -q -e '.[load]'
	$(PY) loadtests/run.py $(LOAD_ARGS)

BENCH_TARGETS ?= metrics train gkc publish delta ranker scale
BENCH_DIR ?= results/bench

bench: $(STAMP) ## benchmarks (GAUC, training, GKC, ranker, data-path scale): one JSON object each, also under results/bench/
	$(PY) -m pip install -q -e '.[bench]'
	mkdir -p $(BENCH_DIR)
	for t in $(BENCH_TARGETS); do $(VENV)/bin/keep bench $$t --out $(BENCH_DIR)/$$t.json || exit 1; done

protos: $(STAMP) ## regenerate the committed gRPC/protobuf code from protos/*.proto
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. protos/*.proto

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check services contract gkc ranker trainer tests loadtests bench
	$(VENV)/bin/mypy

UP_ARGS ?=

up: $(STAMP) ## run the compose topology as local processes (redis, gkc, trainer job, ranker); Ctrl-C stops it
	$(PY) deploy/up.py $(UP_ARGS)

down: $(STAMP) ## stop a running `make up`
	$(PY) deploy/up.py --down $(UP_ARGS)

deploy-check: $(STAMP) ## validate Dockerfiles (hadolint), compose files (docker-compose config) and k8s manifests
	$(PY) -m pytest -q tests/unit/test_deploy_images.py tests/unit/test_deploy_compose.py tests/unit/test_deploy_k8s.py tests/unit/test_deploy_dashboard.py tests/unit/test_deploy_up.py
