# avakit: `make demo` runs the whole loop on synthetic data; `make test` runs the test suite,
# `make test-fast` all of it but the tests marked slow; `make lint` ruff check + format check,
# `make format` applies them; `make bench` the benchmarks (stops at a FAIL).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: the pair that installs here and runs on CPU
# (torch 2.13.0 with any registry torchvision fails to load torchvision's C ops).
TORCH := torch==2.14.1 torchvision==0.29.1
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test test-fast lint format bench bench-table clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) $(TORCH)
	$(PIP) -e '.[dev,export,clip]' $(TORCH)
	$(BIN)/python -c "import torch, torchvision, webdataset, avakit"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/avakit demo --out demo --config configs/demo.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed
	@for b in benchmarks/bench_*.py; do echo "== $$b"; \
		$(BIN)/python $$b || { echo "make bench: $$b FAILED (see benchmarks/results/)"; exit 1; }; done
	@echo "make bench-table puts the new figures into README.md's speed table"

bench-table: $(VENV)/.installed
	$(BIN)/python benchmarks/readme_table.py --write

clean:
	rm -rf demo outputs .pytest_cache
