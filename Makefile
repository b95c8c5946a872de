# idsync: two commands for users (`make demo`, `make test`), a few more for developers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo-venv demo test lint typecheck unit bench synth clean

# Two installs into the same .venv: the demo's (runtime, command, emulators; no CDK libraries) and,
# for tests, synth and benchmarks, everything (the demo's plus the CDK libraries and the tools).
DEMO_STAMP := $(VENV)/.demo-installed

demo-venv: $(DEMO_STAMP)

$(DEMO_STAMP): requirements-sandbox.txt lambdas/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-sandbox.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(DEMO_STAMP)

venv: $(STAMP)

$(STAMP): $(DEMO_STAMP) requirements.txt requirements-dev.txt
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

demo: demo-venv
	$(BIN)/python -m sandbox.demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: lint typecheck unit synth

# The CDK app synthesized with the example configuration into cdk.out/, offline (no AWS credentials;
# the Lambda dependencies are fetched once into build/lambda-deps/ and reused). Fails on a wrong
# configuration value or on any unacknowledged cdk-nag finding.
synth: venv
	rm -rf cdk.out
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_OUTDIR=cdk.out $(BIN)/python app.py

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) cdk.out build .pytest_cache .mypy_cache .ruff_cache
