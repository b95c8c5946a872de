"""Infrastructure fixtures: the stack synthesized once per session from config/example.yaml.

The Lambda asset is the plain ``lambdas/`` directory (no bundling, no network): the template is
the same whatever the asset holds, and `make synth` covers the real bundle.
"""

from __future__ import annotations

import os

# jsii starts its Node process on the first aws_cdk import; the machine's Node 20 is past its
# end of life for jsii, which says so on every start.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from pathlib import Path

import pytest
from stack_helpers import ROOT, Synthesized, synthesize

from stacks.deployment import DeploymentConfig, load_deployment_config

EXAMPLE = ROOT / "config" / "example.yaml"


@pytest.fixture(scope="session")
def example_config() -> DeploymentConfig:
    return load_deployment_config(EXAMPLE)


@pytest.fixture(scope="session")
def synthesized(example_config: DeploymentConfig, tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(example_config, Path(tmp_path_factory.mktemp("cdk.out")))
