# `make demo` and `make test` are all a fresh machine needs: the first use creates .venv and installs
# exact versions from constraints.txt (torch first, so that its local CPU build is the one taken).
# `make demo` installs the core with the extras the demo uses (its digits, the report's figures,
# TensorBoard logs); `make test` everything the tests need (the dev extra, and the bench extra: the tests
# and benchmarks/balancing.py compare against TorchJD).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := $(VENV)/.torch
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo test typecheck bench clean

$(TORCH):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	touch $(TORCH)

$(DEMO_STAMP): pyproject.toml constraints.txt $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[demo,report,tensorboard]"
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml constraints.txt $(TORCH)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,bench]"
	touch $(STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/hydranet demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache
