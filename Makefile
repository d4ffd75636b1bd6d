# One way to run everything; CI calls `make test` too.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint typecheck unit fuzz bench screenshots clean

# make run [HOST=0.0.0.0] [PORT=9000]; only the command line sets them, not the environment.
HOST = 127.0.0.1
PORT = 8080

run: $(VENV)/.installed
	$(BIN)/keyguard serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed lint typecheck unit

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

unit: $(VENV)/.dev-installed
	$(BIN)/pytest

# A longer fuzz run from a random seed, printed so that a failure can be replayed:
# make fuzz KEYGUARD_TEST_FUZZ_SEED=<seed> [KEYGUARD_TEST_FUZZ_EXAMPLES=<examples per operation>]
fuzz: $(VENV)/.dev-installed
	@seed=$${KEYGUARD_TEST_FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	examples=$${KEYGUARD_TEST_FUZZ_EXAMPLES:-200}; \
	echo "fuzz seed $$seed, $$examples examples per operation;" \
		"replay: make fuzz KEYGUARD_TEST_FUZZ_SEED=$$seed KEYGUARD_TEST_FUZZ_EXAMPLES=$$examples"; \
	KEYGUARD_TEST_FUZZ_SEED=$$seed KEYGUARD_TEST_FUZZ_EXAMPLES=$$examples \
		$(BIN)/pytest tests/test_fuzz.py

# The README's console screenshots (docs/console/*.png), from a running console in Chromium.
screenshots: $(VENV)/.dev-installed
	$(BIN)/python -m tests.screenshots

bench: $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

$(VENV)/.bench-installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.installed $(VENV)/.dev-installed $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
