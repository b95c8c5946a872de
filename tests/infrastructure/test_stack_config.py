"""The deployment configuration: one YAML file, validated with the runtime model; bad values are named."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack_helpers import ROOT, Synthesized, render, synthesize

from idsync.config import load_settings, parse_settings
from idsync.errors import ConfigError
from stacks.deployment import DeploymentConfig, load_deployment_config, parse_deployment_config

EXAMPLE = ROOT / "config" / "example.yaml"


@pytest.fixture
def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return data


def error_for(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_deployment_config(data, "idsync.yaml")
    return str(caught.value)


def test_example_configuration_is_valid(example_config: DeploymentConfig) -> None:
    assert example_config.identity_store_id == "d-1234567890"
    assert example_config.region == "eu-west-1"
    assert example_config.stack.sync_interval_minutes == 10
    assert example_config.stack.notification_email == "identity-team@example.com"


def test_cli_reads_the_same_file(example_config: DeploymentConfig) -> None:
    # The CLI skips the stack section and validates the rest with the same model
    assert load_settings(EXAMPLE, environ={}) == example_config.settings


def test_settings_variable_round_trips_through_the_runtime_model(example_config: DeploymentConfig) -> None:
    # Given the settings as the functions receive them
    received = parse_settings(json.loads(example_config.settings_json()))
    # Then they equal the file's settings (stack-managed pointers come as overrides instead)
    assert received == example_config.settings
    assert "client_secret" not in example_config.settings_json()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("graph", "tenant_id"), None, "graph.tenant_id"),
        (("identity_store", "identity_store_id"), None, "identity_store.identity_store_id: required for a deployment"),
        (("identity_store", "identity_store_id"), "store-1", "identity_store.identity_store_id"),
        (("scope", "service_principal_id"), None, "scope"),
        (("sync", "max_deletion_percent"), 120, "sync.max_deletion_percent"),
        (("sync", "restorable_deletion_grace_days"), -1, "sync.restorable_deletion_grace_days"),
        (("sync", "restorable_deletion_grace_days"), "a month", "sync.restorable_deletion_grace_days"),
        (("pim", "bucket_capacity"), 0, "pim.bucket_capacity"),
        (("graph", "client_secret"), "s3cret", "graph.client_secret: must not be in the file"),
        (("pim", "client_state"), "shared", "pim.client_state: must not be in the file"),
        (("graph", "certificate_path"), "cert.pem", "graph.certificate_path"),
        (("identity_store", "endpoint_url"), "http://127.0.0.1:5000", "identity_store.endpoint_url"),
        (("stack", "sync_interval_minutes"), 0, "stack.sync_interval_minutes"),
        (("stack", "notification_email"), "not-an-address", "stack.notification_email"),
        (("stack", "log_retention_days"), 8, "stack.log_retention_days: Value error, must be one of 1, 3, 5"),
        (("stack", "architecture"), "sparc", "stack.architecture"),
        (("stack", "region"), "Europe", "stack.region"),
        (("stack", "jit_max_receive_count"), 3, "stack.jit_max_receive_count"),
        (("stack", "alarms", "jit_latency_seconds"), -1, "stack.alarms.jit_latency_seconds"),
        (("stack", "typo"), 1, "stack.typo: Extra inputs are not permitted"),
        (("typo",), 1, "typo: Extra inputs are not permitted"),
    ],
)
def test_a_missing_or_wrong_value_is_named(
    example: dict[str, Any], path: tuple[str, ...], value: Any, named: str
) -> None:
    # Given the example with one value removed or broken
    data = copy.deepcopy(example)
    node = data
    for part in path[:-1]:
        node = node[part]
    if value is None:
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    # Then the error names the field (and the file)
    message = error_for(data)
    assert message.startswith("invalid configuration in idsync.yaml:")
    assert named in message


@pytest.mark.parametrize("count", [10, 39])
def test_a_receive_count_below_the_worker_s_resend_threshold_is_refused_at_synth(
    example: dict[str, Any], count: int
) -> None:
    # Given a dead-letter redrive that would fire before the worker sends a waiting hint afresh (at 40)
    example["stack"]["jit_max_receive_count"] = count
    # Then the configuration is refused, naming the setting and the rule
    message = error_for(example)
    assert "stack.jit_max_receive_count" in message
    assert "must be at least 40, the receive count at which the JIT worker sends a waiting hint afresh" in message


def test_the_resend_threshold_itself_is_accepted(example: dict[str, Any]) -> None:
    example["stack"]["jit_max_receive_count"] = 40
    assert parse_deployment_config(example, "idsync.yaml").stack.jit_max_receive_count == 40


@pytest.mark.parametrize(("field", "value"), [("poll_interval_minutes", 0), ("max_group_subscriptions", 101)])
def test_pim_poll_and_subscription_settings_out_of_range_are_named(
    example: dict[str, Any], field: str, value: int
) -> None:
    example["pim"][field] = value
    assert f"pim.{field}" in error_for(example)


def test_every_problem_is_reported_at_once(example: dict[str, Any]) -> None:
    example["graph"].pop("client_id")
    example["stack"]["api_burst_limit"] = 0
    example["identity_store"].pop("identity_store_id")
    message = error_for(example)
    assert "graph.client_id" in message
    assert "stack.api_burst_limit" in message
    assert "identity_store.identity_store_id" in message


def test_stack_section_must_be_a_mapping(example: dict[str, Any]) -> None:
    example["stack"] = ["idsync"]
    assert "stack: must be a mapping" in error_for(example)


def test_settings_too_large_for_a_lambda_environment_are_refused(example: dict[str, Any]) -> None:
    example["pim"]["groups"] = [f"00000000-0000-4000-8000-{n:012d}" for n in range(80)]
    assert "bytes as IDSYNC_SETTINGS" in error_for(example)


def test_file_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_deployment_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("graph: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_deployment_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_deployment_config(scalar)


def test_cdk_app_stops_with_the_field_named(example: dict[str, Any], tmp_path: Path) -> None:
    # Given a configuration file without the identity store id
    example["identity_store"].pop("identity_store_id")
    config = tmp_path / "idsync.yaml"
    config.write_text(yaml.safe_dump(example))
    # When the CDK app runs as `cdk synth -c config=...` runs it
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps({"config": str(config)}), "CDK_OUTDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    # Then it fails, naming the file and the field, and writes no template
    assert result.returncode == 1
    assert f"idsync: invalid configuration in {config}:" in result.stderr
    assert "identity_store.identity_store_id: required for a deployment" in result.stderr
    assert not list(tmp_path.glob("*.template.json"))


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["pim"]["poll_interval_minutes"] = 5
    data["stack"] = {
        "stack_name": "idsync-test",
        "region": "us-west-2",
        "identity_store_account_id": "111122223333",
        "sync_interval_minutes": 1,
        "api_rate_limit": 7,
        "api_burst_limit": 9,
        "api_max_items": 50,
        "jit_max_receive_count": 80,
        "architecture": "x86_64",
        "log_retention_days": 14,
        "alarms": {"lambda_errors": 3, "dlq_messages": 2, "jit_latency_seconds": 5, "throttles": 11},
    }
    config = parse_deployment_config(data, "custom.yaml")
    return synthesize(config, Path(tmp_path_factory.mktemp("custom")))


def test_stack_settings_reach_the_resources(custom: Synthesized) -> None:
    # Given non-default stack settings, Then each lands on its resource
    assert custom.stack.stack_name == "idsync-test"
    assert custom.stack.region == "us-west-2"
    rates = sorted(
        r["Properties"]["ScheduleExpression"]
        for r in custom.resources("AWS::Events::Rule").values()
        if r["Properties"]["ScheduleExpression"] != "rate(1 day)"
    )
    assert rates == ["rate(1 minute)", "rate(5 minutes)"]  # the sync cycle, and the PIM poller's setting
    for _, properties in custom.functions().values():
        assert properties["Architectures"] == ["x86_64"]
    retention = {g["Properties"]["RetentionInDays"] for g in custom.resources("AWS::Logs::LogGroup").values()}
    assert retention == {14}
    _, stage = custom.only("AWS::ApiGateway::Stage")
    assert stage["Properties"]["MethodSettings"][0]["ThrottlingRateLimit"] == 7
    assert stage["Properties"]["MethodSettings"][0]["ThrottlingBurstLimit"] == 9
    _, model = custom.only("AWS::ApiGateway::Model")
    assert model["Properties"]["Schema"]["properties"]["value"]["maxItems"] == 50
    queue = custom.resources("AWS::SQS::Queue")[custom.logical_id("AWS::SQS::Queue", "JitQueue")]
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 80
    # No e-mail address configured: no subscription
    assert custom.resources("AWS::SNS::Subscription") == {}


def test_alarm_thresholds_come_from_the_configuration(custom: Synthesized) -> None:
    alarms = [a["Properties"] for a in custom.resources("AWS::CloudWatch::Alarm").values()]
    thresholds = {a.get("MetricName", "throttles"): a["Threshold"] for a in alarms}
    assert thresholds == {
        "Errors": 3,
        "ApproximateNumberOfMessagesVisible": 2,
        "Quarantined": 1,
        "ActivationLatency": 5,
        "throttles": 11,
    }


def test_identity_store_arn_names_the_configured_account(custom: Synthesized) -> None:
    policies = json.dumps([render(p["Properties"]) for p in custom.resources("AWS::IAM::Policy").values()])
    assert "arn:${AWS::Partition}:identitystore::111122223333:identitystore/d-1234567890" in policies
    assert ":identitystore::${AWS::AccountId}" not in policies


def test_an_access_section_needs_the_instance_arn_to_deploy(example: dict[str, Any]) -> None:
    data = copy.deepcopy(example)
    data["access"] = [{"group": "AWS Readers", "permission_set": "ViewOnlyAccess", "accounts": ["111111111111"]}]
    with pytest.raises(ConfigError, match=r"identity_store.instance_arn: required for a deployment with an access"):
        parse_deployment_config(data)
    data["identity_store"]["instance_arn"] = "arn:aws:sso:::instance/ssoins-1234567890abcdef"
    config = parse_deployment_config(data)
    assert json.loads(config.settings_json())["access"][0]["permission_set"] == "ViewOnlyAccess"
