# trustgc: `make serve` runs the service, `make test` runs the tests. `make help` lists all.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL_DIR := model_store/fashion_mnist
PYTEST_ARGS ?=
DATA_ARGS ?=
TEST_DATA_SETS := mnist notmnist

.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

system-deps:  ## install the Debian packages the tests and targets use (apt-get; sudo if not root)
	@scripts/install_system_deps.sh

setup: system-deps $(STAMP)  ## system packages, then .venv with trustgc and its dev tools

data: $(STAMP)  ## fetch MNIST, notMNIST, CIFAR-10 into the data root (TRUSTGC_DATA), sha256-checked
	$(PY) -m training.fetch_data $(DATA_ARGS)

data-check: $(STAMP)  ## verify the data sets the tests read (sha256); names `make data` if one is missing
	@$(PY) -m training.fetch_data --check --sets $(TEST_DATA_SETS)

test: setup data-check  ## run the default test suite (no slow tests)
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: TEST_DATA_SETS += cifar10
test-slow: setup data-check  ## run the slow tests too
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

serve: $(STAMP) model_store/fashion_mnist.mar  ## serve on 127.0.0.1 (Ctrl-C stops); MODEL=DIR[=NAME] serves that artifact
	$(VENV)/bin/trustgc serve $(if $(MODEL),--model $(MODEL))

start: $(STAMP) model_store/fashion_mnist.mar  ## start TorchServe in the background (MODEL=DIR[=NAME] too)
	$(VENV)/bin/trustgc start $(if $(MODEL),--model $(MODEL))

stop: $(STAMP)  ## stop the background TorchServe
	$(VENV)/bin/trustgc stop

# What the archive packs, and the code that packs it: the .mar is rebuilt whenever one of them
# is newer, so the served alpha (calibration.json) never lags behind the artifact.
MAR_INPUTS := $(addprefix $(MODEL_DIR)/,model.json weights.safetensors calibration.json) \
	$(wildcard $(MODEL_DIR)/model.onnx $(MODEL_DIR)/onnx.json $(MODEL_DIR)/background/*) \
	deploy/torchserve/model-config.yaml serving/archive.py serving/torchserve_entry.py

model_store/fashion_mnist.mar: $(MAR_INPUTS) | $(STAMP)
	$(VENV)/bin/trustgc archive --model $(MODEL_DIR)

archive: model_store/fashion_mnist.mar  ## rebuild model_store/fashion_mnist.mar if its inputs changed (make -B archive: always)

protos: $(STAMP)  ## regenerate the gRPC/protobuf stubs in serving/grpc_stubs
	PYTHON=$(PY) scripts/gen_protos.sh

schema: $(STAMP)  ## write the response JSON Schema to docs/response.schema.json
	$(PY) -m serving.schema_export docs/response.schema.json

calibrate: $(STAMP)  ## refit the shipped model's p-value references, then rebuild the archive
	$(VENV)/bin/trustgc calibrate --model $(MODEL_DIR)
	$(MAKE) model_store/fashion_mnist.mar

deploy-check: setup  ## validate Prometheus rules/config, Alertmanager and compose offline
	promtool check config deploy/prometheus/prometheus.yml
	cd deploy/prometheus && promtool test rules tests/*.test.yml
	amtool check-config deploy/alertmanager/alertmanager.yml
	@if command -v docker-compose >/dev/null; then \
		echo "docker-compose config -q"; GRAFANA_ADMIN_PASSWORD=check docker-compose config -q; \
	elif command -v check-jsonschema >/dev/null; then \
		check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml; \
	else \
		echo "deploy-check: no docker-compose (make setup installs it) and no check-jsonschema" \
			"(pip install check-jsonschema) to validate docker-compose.yml" >&2; exit 1; \
	fi

train-default: $(STAMP)  ## retrain the shipped Fashion-MNIST model (hours on 2 CPU cores)
	$(VENV)/bin/trustgc train --config fashion_mnist --out $(MODEL_DIR)

evaluate: $(STAMP)  ## test metrics of the shipped model
	$(VENV)/bin/trustgc evaluate --model $(MODEL_DIR)

.PHONY: help system-deps setup data data-check test test-slow lint serve start stop archive protos schema calibrate deploy-check train-default evaluate
