# Each target creates .venv when missing and installs the project with the pinned torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
LITERT_VENV ?= .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-all test-deploy litert-venv bench-data bench lint clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,deploy,split]'
	@touch $(STAMP)

# The main job on the embedded default: a small CNN trained on digits (64x64), compressed to a quarter of its latency.
demo: $(STAMP)
	$(VENV)/bin/slimkit compress examples/digits_cnn.py:digits_cnn --data digits --budget latency=0.2 --set train.epochs=3 --set finetune.epochs=2 --out runs/demo --overwrite

# ruff with the small bug-finding rule set in pyproject.toml ([tool.ruff.lint]).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples

test: $(STAMP)
	$(PY) -m pytest -q -n 2 $(PYTEST_ARGS)

test-all: $(STAMP) $(LITERT_STAMP)
	$(PY) -m pytest -q -n 2 --runslow $(PYTEST_ARGS)

# Benchmarks use Fashion-MNIST from Debian's dataset-fashion-mnist package.
bench-data:
	@test -d /usr/share/datasets/fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)

bench: $(STAMP) bench-data
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) benchmarks/profile_bench.py

clean:
	rm -rf $(VENV) $(LITERT_VENV) runs build *.egg-info

# LiteRT's converter (litert-torch 0.10) pins xdsl 0.28 -> typing-extensions < 4.13 (pydantic <= 2.11), which
# conflicts with executorch's dependencies: it gets its own venv layered on .venv (torch and slimkit come from
# .venv; only litert-torch and what it pins live here). slimkit finds it as .venv-litert beside .venv.
$(LITERT_STAMP): $(STAMP)
	@test -x $(LITERT_VENV)/bin/python || $(PY) -m venv $(LITERT_VENV)
	$(PY) -c "import sysconfig; print(\"import site; site.addsitedir('\" + sysconfig.get_path('purelib') + \"')\")" \
		> "$$($(LITERT_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/zz_slimkit_base.pth"
	$(LITERT_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt 'litert-torch>=0.10,<0.11'
	@touch $(LITERT_STAMP)

litert-venv: $(LITERT_STAMP)

# Every deploy-runtime test, the slow LiteRT ones included (make test runs the fast ones).
test-deploy: $(STAMP) $(LITERT_STAMP)
	$(PY) -m pytest -q --runslow $(PYTEST_ARGS) tests/test_deploy_runtimes.py tests/test_deploy_cli.py
