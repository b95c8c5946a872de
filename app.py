#!/usr/bin/env python3
"""The idsync CDK app.

    cdk deploy -c config=path/to/idsync.yaml      (default: config/example.yaml)
    cdk synth -c asset_path=dir                   (a prebuilt Lambda asset instead of bundling)

The configuration is validated with the runtime's own Settings model; a missing or wrong value
stops the synth with a message naming the field.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aws_cdk import App

from idsync.errors import ConfigError
from stacks.deployment import load_deployment_config
from stacks.idsync_stack import build
from stacks.packaging import bundled_code, prebuilt_code

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = "config/example.yaml"
DEPENDENCY_CACHE = ROOT / "build" / "lambda-deps"


def main() -> None:
    """Synthesize the stack into the cloud assembly (cdk.out, or CDK_OUTDIR)."""
    app = App()
    try:
        config = load_deployment_config(app.node.try_get_context("config") or DEFAULT_CONFIG)
    except ConfigError as error:
        sys.exit(f"idsync: {error}")
    asset_path = app.node.try_get_context("asset_path")
    code = (
        prebuilt_code(Path(asset_path))
        if asset_path
        else bundled_code(ROOT / "lambdas", DEPENDENCY_CACHE, config.stack.architecture)
    )
    build(app, config, code, account=os.environ.get("CDK_DEFAULT_ACCOUNT"))
    app.synth()


if __name__ == "__main__":
    main()
