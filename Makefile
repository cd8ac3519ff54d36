# Two commands on a fresh machine: `make demo` and `make test`, in either order. Both build .venv
# themselves: `demo` installs the package with the `scan` and `numba` extras (the demo, then the
# README's toy commands: theory, simulate, scan, plot-scan), `test` adds the test, torch, Dask and
# docs extras. Each
# level has its own stamp, so `make test` after `make demo` installs the rest.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.venv-created
DEMO_STAMP := $(VENV)/.installed-demo
FULL_STAMP := $(VENV)/.installed-full

.PHONY: demo test figures docs bench clean

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $(VENV_STAMP)

$(DEMO_STAMP): pyproject.toml $(VENV_STAMP)
	$(PY) -m pip install -q -e ".[scan,numba]"
	touch $(DEMO_STAMP)

$(FULL_STAMP): pyproject.toml $(VENV_STAMP)
	# the CPU wheel of torch first (a bare `torch` from PyPI is the multi-GB CUDA build; elsewhere
	# install it from the CPU index, see the README)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,scan,numba,torch,dist,docs]" numba-cuda
	touch $(FULL_STAMP) $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/toymodel demo

test: $(FULL_STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q

figures: $(FULL_STAMP)
	$(VENV)/bin/toymodel figures --out figures/out --gallery docs/img

docs: $(FULL_STAMP)
	$(PY) -m mkdocs build --strict

bench: $(FULL_STAMP)
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_bridge.py
	$(PY) benchmarks/bench_distributed.py

clean:
	rm -rf $(VENV) build site figures/out
