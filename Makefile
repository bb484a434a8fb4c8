# Everything a fresh clone needs: `make run` (set up, then the default pipeline) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0   # installed first: any other spec pulls multi-GB CUDA wheels on CPU machines
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2   # pytest-xdist workers, one test file each at a time (more on bigger machines)

# The venv's bin first: DVC stages run `python`, and `mlflow models serve` execs uvicorn from PATH.
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_EXTRA_LOGGERS := tasks,flows,models,config,runtime,cli,dataprep,training,evaluation,registry,serving
export PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW := ignore
export DO_NOT_TRACK := 1

.PHONY: setup run flow deploy prefect-server test test-fast serve serve-stream ui-mlflow clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .   # the `genpipe` command
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned stack

run: setup  ## run the default pipeline (dvc repro) on the embedded corpus
	python -m cli.preflight
	dvc repro

flow: setup  ## run the same pipeline as a Prefect flow
	python -m flows.pipeline

deploy: setup  ## apply the Prefect deployments and run them (needs PREFECT_API_URL; see README)
	python -m flows.deploy

prefect-server: setup  ## the Prefect server and UI on http://127.0.0.1:4200
	prefect server start

test: setup  ## the whole suite: unit, stage and end-to-end tests, TEST_WORKERS files at a time
	python -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast: setup  ## unit and stage tests only
	python -m pytest tests/unit tests/stages

serve: setup  ## serve the champion over HTTP on port 5001
	mlflow models serve -m "models:/$$(python -c 'from config.params import load_params; print(load_params().register.model_name)')@champion" --env-manager local --port 5001

serve-stream: setup  ## stream the champion's text as server-sent events on port 5003 (POST /stream)
	MLFLOW_TRACKING_URI="$$(python -c 'from config.params import load_params; print(load_params().register.tracking_uri)')" \
	python -m serving.stream --model "models:/$$(python -c 'from config.params import load_params; print(load_params().register.model_name)')@champion" --port 5003

ui-mlflow: setup  ## open the MLflow UI on port 5000
	mlflow ui --backend-store-uri "$$(python -c 'from config.params import load_params; print(load_params().register.tracking_uri)')" --port 5000

clean:  ## remove pipeline outputs (not the venv, the registry or checkpoints)
	rm -rf data/raw data/clean data/processed artifacts metrics plots dvc.lock
