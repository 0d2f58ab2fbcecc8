# make demo | make test | make bench. Each one creates .venv on first use.
# TORCH_SPEC picks the torch build: the default is what a CPU machine needs;
# on a GPU box use e.g. TORCH_SPEC="torch --index-url <the CUDA wheel index>".
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.installed

.PHONY: demo test test-fast bench venv clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# The whole pipeline on the CPU from raw text: corpus -> tokenizer -> data -> benchmark -> train -> eval.
demo: $(STAMP)
	$(VENV)/bin/jobs demo-corpus
	$(VENV)/bin/jobs pipeline --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

# Everything but the Docker image build and llama.cpp (a minute or two instead of several).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not docker and not llamacpp"

bench: $(STAMP)
	$(PY) benchmarks/bench_model.py
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_cli.py
	$(PY) benchmarks/bench_start.py
	$(PY) benchmarks/bench_recipe.py

clean-demo:
	rm -rf data tokenizer runs
