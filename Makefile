# The README's commands. Each target sets up (or reuses) the project's virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PGDET_VENV := $(abspath $(VENV))

.PHONY: setup demo test bench
setup:
	@bash scripts/bootstrap.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/bench_reward.py
	$(PY) benchmarks/bench_iteration.py --configs demo
