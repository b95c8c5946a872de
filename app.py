#!/usr/bin/env python3
"""The idsync CDK app.

    cdk deploy -c config=path/to/idsync.yaml      (required: there is no default configuration)
    cdk synth -c config=config/example.yaml -c asset_path=dir   (a prebuilt Lambda asset instead of bundling)

The configuration is validated with the runtime's own Settings model; a missing or wrong value
stops the synth with a message naming the field. Without ``-c config=`` nothing is synthesized, so
a deploy can never pick up the example's placeholders.
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
from stacks.support import feature_flags

ROOT = Path(__file__).resolve().parent
DEPENDENCY_CACHE = ROOT / "build" / "lambda-deps"


def main() -> None:
    """Synthesize the stack into the cloud assembly (cdk.out, or CDK_OUTDIR)."""
    app = App(context=feature_flags())
    path = app.node.try_get_context("config")
    if not path:
        sys.exit(
            "idsync: no configuration given: run `cdk deploy -c config=path/to/idsync.yaml` "
            "(config/example.yaml shows every field; its ids are placeholders)"
        )
    try:
        config = load_deployment_config(path)
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
