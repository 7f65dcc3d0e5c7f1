# fastloss: the two commands a newcomer needs are `make bench` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: bench test install lint clean

# Install into .venv when it is missing or pyproject.toml changed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check fastloss benchmarks tests examples

clean:
	rm -rf $(VENV) results .pytest_cache
