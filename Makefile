# Two entry points that work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The pinned CPU build is installed first when torch is missing, so the `torch>=2.2` range in
# pyproject is already satisfied and pip never pulls the multi-GB CUDA wheels.
TORCH_PIN ?= torch==2.13.0
# Test processes (pytest-xdist); each test runs one torch thread (tests/conftest.py), so 2 fills 2 cores.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-all lint clean

$(VENV)/.stamp: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp

demo: venv
	$(VENV)/bin/nsrep demo

# `make test` leaves out the cases marked slow (the deep networks' share of the fold matrix); CI runs it.
test: venv
	$(PY) -m pytest -m "not slow" -n $(TEST_WORKERS)

test-all: venv
	$(PY) -m pytest -n $(TEST_WORKERS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
