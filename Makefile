# Each target creates .venv when missing and installs the project with the pinned torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-all bench-data bench lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# The main job on the embedded default: a small CNN trained on digits (64x64), compressed to a quarter of its latency.
demo: $(STAMP)
	$(VENV)/bin/slimkit compress examples/digits_cnn.py:digits_cnn --data digits --budget latency=0.2 --set train.epochs=3 --set finetune.epochs=2 --out runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --runslow $(PYTEST_ARGS)

# Benchmarks use Fashion-MNIST from Debian's dataset-fashion-mnist package.
bench-data:
	@test -d /usr/share/datasets/fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

bench: $(STAMP) bench-data
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) benchmarks/profile_bench.py

clean:
	rm -rf $(VENV) runs build *.egg-info
