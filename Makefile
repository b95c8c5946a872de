# idsync: two commands for users (`make demo`, `make test`), a few more for developers.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo-venv demo test lint typecheck unit bench synth cfn-lint lock clean

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

# `make demo LATENCY_MS=50 AWS_RATE=20`: every IAM Identity Center call takes about 50 ms, above 20 a second throttled
demo: demo-venv
	$(BIN)/python -m sandbox.demo $(if $(LATENCY_MS),--latency-ms $(LATENCY_MS)) $(if $(AWS_RATE),--aws-rate $(AWS_RATE))

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q

test: lint typecheck unit synth cfn-lint

# The CDK app synthesized with the example configuration (given explicitly, as `cdk deploy -c config=`
# must be) into cdk.out/, offline (no AWS credentials;
# the Lambda dependencies are fetched once into build/lambda-deps/ and reused). Fails on a wrong
# configuration value or on any unacknowledged cdk-nag finding.
synth: venv
	rm -rf cdk.out
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20 CDK_OUTDIR=cdk.out \
	  CDK_CONTEXT_JSON='{"config": "config/example.yaml"}' $(BIN)/python app.py

# CloudFormation's own rules on the synthesized template: no error and no warning (cdk-nag already ran
# during synth). W3005: CDK makes each function depend on its role's policy as well as on the role.
CFN_LINT_IGNORE := W3005
cfn-lint: synth
	$(BIN)/cfn-lint --format parseable --ignore-checks $(CFN_LINT_IGNORE) -- cdk.out/*.template.json

# The Lambda dependency closure, every distribution hashed, for any architecture on Lambda's Python.
lock: venv
	$(BIN)/uv pip compile lambdas/requirements.txt --universal --python-version 3.14 --generate-hashes \
	  --no-header --output-file lambdas/requirements.lock

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) cdk.out build .pytest_cache .mypy_cache .ruff_cache
