# One entry point for a fresh machine: `make demo` and `make test` create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip takes these two from the machine's disk; CPU-only torch 2.13 breaks torchvision here.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install test lint demo clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check vggfeat tests benchmarks datasets

test: lint
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m vggfeat.demo --out demo_out

clean:
	rm -rf $(VENV) build *.egg-info
