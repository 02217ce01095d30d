# One command to set up and run each job. The virtual environment is created on first use.
VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch is installed before nascli so that pip never pulls the CUDA packages.
# On a CUDA machine: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<your index> ...
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.nascli-installed

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,export]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install nascli with its test tools

lint: setup  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint  ## ruff, then the whole pytest suite (slow end-to-end tests included)
	$(BIN)/pytest -n auto --dist worksteal -x -q --durations=15

demo: setup  ## the spaces; the default TuNAS search on the digits; build and retrain its result
	$(BIN)/nascli spaces
	$(BIN)/nascli search out=runs/demo/search
	$(BIN)/nascli build arch=runs/demo/search out=runs/demo/build
	$(BIN)/nascli retrain arch=runs/demo/search out=runs/demo/retrain

bench: setup  ## benchmarks whose numbers the README quotes
	$(BIN)/python scripts/bench_cost.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_latency.py --threads 1
	$(BIN)/python scripts/bench_search.py
	$(BIN)/python scripts/bench_zen.py
	$(BIN)/python scripts/bench_supernet.py --threads 1

clean:
	rm -rf $(VENV) runs multirun .pytest_cache .ruff_cache
