# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test figures docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU wheel of torch first (a bare `torch` would pull a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,scan,numba,torch,dist,docs]" numba-cuda
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toymodel demo

test: $(STAMP)
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q

figures: $(STAMP)
	$(VENV)/bin/toymodel figures --out figures/out --gallery docs/img

docs: $(STAMP)
	$(PY) -m mkdocs build --strict -f docs/mkdocs.yml

bench: $(STAMP)
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_bridge.py
	$(PY) benchmarks/bench_distributed.py

clean:
	rm -rf $(VENV) build site figures/out
