# Two commands on a fresh clone: `make demo` and `make test`.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
# (pipefail: a pip that fails inside a pipe still fails the step)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, pinned, and a CPU build: a wheel in pip's local find-links if it has one, else
# PyTorch's CPU index (TORCH_INDEX); from PyPI a plain torch is a CUDA build of several GB.
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test venv bench gpu-check clean

# The tests install their example plugins for themselves (tests/conftest.py), never into this
# environment: a user's `edgert plugins` and bundles must not show them.
# Each step says what it does first (a first install downloads about 1 GB and takes minutes);
# pip's own progress bars show on the two large downloads.
$(VENV)/.installed: pyproject.toml
	@echo "[1/4] virtual environment $(VENV) (edgert lives there: $(VENV)/bin/edgert)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@echo "[2/4] $(TORCH), CPU build (local wheel, else $(TORCH_INDEX))"
	@$(PY) -m pip install -q --no-index --no-deps $(TORCH) 2>/dev/null || \
	  $(PY) -m pip install --progress-bar on --no-deps $(TORCH) --index-url $(TORCH_INDEX)
	@$(PY) -m pip install -q $(TORCH)
	@echo "[3/4] edgert from this clone, with its export, dev and serve extras"
	@# setuptools' boxed "editable installation" warning (a folder named like the package may be
	@# imported instead: edgert/ is, from the clone's root, and `python -m edgert` there says so)
	@PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --progress-bar on -e '.[export,dev,serve]' \
	  | sed "/^Requirement already satisfied/d"
	@test -x $(VENV)/bin/edgert
	@$(PY) -m pip uninstall -q -y edgert-example-plugin edgert-repeat-head 2>/dev/null || true
	@echo "[4/4] done: run $(VENV)/bin/edgert, or 'source $(VENV)/bin/activate' first"
	@touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/demo.py
	$(PY) examples/demo_llm.py

# One worker per core (pytest-xdist); a file's tests stay on one worker, so its module fixtures
# (an exported bundle, the serving tests' Ray cluster) are made once. -rs: every skip is listed
# at the end with its reason, so an unintended one shows.
test: $(VENV)/.installed
	$(PY) -m pytest -q -rs --durations=15 -n auto --dist loadfile

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_tsn.py

# On a machine with an NVIDIA GPU and a CUDA torch: every GPU test and the kernel benchmarks,
# one report (build/gpu-check/report.{json,md}); see benchmarks/gpu_check.py.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py

clean:
	rm -rf build .pytest_cache
