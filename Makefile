# fastloss: the two commands a newcomer needs are `make bench` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: bench test install docs lint mutate clean

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

# Mutation testing of fastloss/wrappers/ and fastloss/presets.py with the fast tests (about an hour on 2 cores).
mutate: $(STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(or $(MUTATE_CHILDREN),2)
	$(VENV)/bin/mutmut results --all true > mutants/results.txt; tail -n 3 mutants/results.txt
	@echo "per-mutant results: mutants/results.txt; inspect one with: $(VENV)/bin/mutmut show NAME"

# The manual (docs/, mkdocs) into site/; --strict fails on a broken link or anchor, as the tests do.
docs: $(STAMP)
	$(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(PY) -m ruff check fastloss benchmarks tests examples

clean:
	rm -rf $(VENV) results .pytest_cache mutants site
