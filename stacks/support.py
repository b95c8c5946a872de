"""Small helpers the constructs share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_logs as logs
from constructs import Construct

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"


def feature_flags() -> dict[str, Any]:
    """The feature flags in cdk.json (as `cdk init` writes them for this aws-cdk-lib), so that a synth run
    without the CDK CLI (`make synth`, the tests) builds the template `cdk deploy` builds."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text(encoding="utf-8"))["context"]
    return context


def acknowledge(scope: Construct, rule: str, reason: str) -> None:
    """Accept one cdk-nag AwsSolutions finding on ``scope`` (and below), with the reason it is acceptable."""
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{rule}", reason=reason))


def log_group(scope: Construct, construct_id: str, retention_days: int) -> logs.LogGroup:
    """A log group kept ``retention_days`` days (any period CloudWatch accepts; the configuration checks it)."""
    group = logs.LogGroup(scope, construct_id)
    cast(logs.CfnLogGroup, group.node.default_child).retention_in_days = retention_days
    return group
