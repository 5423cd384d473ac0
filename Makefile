# Two commands on a fresh clone: `make demo` and `make test`.
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
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-index --no-deps $(TORCH) 2>/dev/null || \
	  $(PY) -m pip install -q --no-deps $(TORCH) --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[export,dev,serve]'
	$(PY) -m pip uninstall -q -y edgert-example-plugin edgert-repeat-head 2>/dev/null || true
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) examples/demo.py
	$(PY) examples/demo_llm.py

# One worker per core (pytest-xdist); a file's tests stay on one worker, so its module fixtures
# (an exported bundle, the serving tests' Ray cluster) are made once.
test: $(VENV)/.installed
	$(PY) -m pytest -q --durations=15 -n auto --dist loadfile

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_tsn.py

# On a machine with an NVIDIA GPU and a CUDA torch: every GPU test and the kernel benchmarks,
# one report (build/gpu-check/report.{json,md}); see benchmarks/gpu_check.py.
gpu-check:
	$(if $(wildcard $(PY)),$(PY),python3) benchmarks/gpu_check.py

clean:
	rm -rf build .pytest_cache
