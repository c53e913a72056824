# spendstream — `make demo` runs the main job, `make test` the tests; both set up what is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test lint pytest drills stack-up stack-down stack-status clean-stack bench soak

setup: system-deps $(STAMP)

system-deps:
	@bash infra/setup-system.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/spendstream demo

test: setup lint pytest

lint: $(STAMP)
	$(BIN)/ruff check spendstream tests bench
	$(BIN)/ruff format --check spendstream tests bench
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The reliability drills alone (they also run in `make test`).
drills: $(STAMP)
	$(BIN)/pytest -m drill $(PYTEST_ARGS)

stack-up: setup
	$(BIN)/spendstream stack up

stack-down: $(STAMP)
	$(BIN)/spendstream stack down

stack-status: $(STAMP)
	$(BIN)/spendstream stack status

# Stops the stack and deletes its data dirs (keeps the Kafka jar cache).
clean-stack: stack-down
	rm -rf .stack/kafka .stack/postgres .stack/redis .stack/prometheus

# Every benchmark in bench/, one after another, against the local stack.
bench: setup
	$(BIN)/python bench/run_all.py

# 30 minutes at a steady rate: worker RSS and lag every 10 s -> bench/soak/soak.csv + soak.png.
# Not part of `make test` or CI. SOAK_ARGS="--minutes 5 --rate 500" for a shorter run.
soak: setup
	$(BIN)/pip install -q -e '.[soak]'
	$(BIN)/python bench/soak.py $(SOAK_ARGS)
