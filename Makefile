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

# The zoo environment (make test-zoo): timm and torchvision's own models through nsrep.convert. Its own venv, so
# the main one stays the CPU torch build and needs neither; these torch/torchvision builds come from local wheels.
ZOO_VENV ?= .venv-zoo
ZOO_PY   := $(ZOO_VENV)/bin/python
ZOO_PINS ?= torch==2.14.1 torchvision==0.29.1 timm==1.0.31

.PHONY: venv demo test test-all test-zoo lint clean

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

$(ZOO_VENV)/.stamp: pyproject.toml
	test -x $(ZOO_PY) || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_PY) -m pip install -q $(ZOO_PINS)
	$(ZOO_PY) -m pip install -q -e ".[dev,zoo]"
	touch $@

# The converter on the real libraries: the torchvision cases of tests/test_convert.py, tests/zoo/ (features_only,
# timm's own tools, detectors), then the zoo matrix, which rewrites docs/zoo.md and fails on any unexpected row.
test-zoo: $(ZOO_VENV)/.stamp
	$(ZOO_PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) tests/zoo tests/test_convert.py -k "zoo or torchvision"
	$(ZOO_PY) tests/zoo/matrix.py --jobs $(TEST_WORKERS) --out docs/zoo.md

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(ZOO_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .hypothesis
