# The two commands of the README: `make demo` (train on the bundled data) and `make test`;
# `make dist` builds the wheel and sdist of a release into dist/ (CONTRIBUTING.md, "Releasing").
# Each target creates .venv on first use. TORCH picks the torch build to install first (CPU wheel here).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test bench dist clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/modgap train

# Lint, format check and type check first (ruff and mypy come with the test extra), then the suite.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check modgap
	$(VENV)/bin/ruff format --check modgap
	$(VENV)/bin/mypy modgap
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/mfeat_quality.py
	$(PY) benchmarks/step_time.py

# The sdist, then the wheel built from it (so a file the sdist misses is missing from the wheel too);
# the build backend runs in its own isolated environment (it fetches setuptools, never torch). An old
# modgap.egg-info would carry the files of its SOURCES.txt into the sdist, and build/ stale files.
dist: $(VENV)/.installed
	rm -rf dist build modgap.egg-info
	$(PY) -m build --outdir dist

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
