"""Living with the stack: what survives a destroy (and how a new deployment adopts it), what must not
(no billed leftovers, no fixed names to collide with), a stage that works in a fresh account, a named
API, the first-run placeholder, no deploy without an explicit configuration, cdk init's feature flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aws_cdk
import pytest
import yaml
from stack_helpers import ROOT, Synthesized, render, synthesize
from test_stack_iam import function_statements

from idsync.adapters.secrets import is_placeholder
from idsync.config import PLACEHOLDER_SECRET_KEY
from stacks.deployment import parse_deployment_config

EXAMPLE = ROOT / "config" / "example.yaml"
# What a deleted stack leaves behind on purpose, and the property that would have fixed its name.
RETAINED = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::ApiGateway::Account": None,
}


def variant(tmp_path_factory: pytest.TempPathFactory, **stack: Any) -> Synthesized:
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["stack"] = {**data["stack"], **stack}
    return synthesize(parse_deployment_config(data, "variant.yaml"), Path(tmp_path_factory.mktemp("variant")))


@pytest.fixture(scope="module")
def adopted(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return variant(tmp_path_factory, existing_table_name="idsync-IdsyncStateTable0C8CA0FE-1AB2C3D4E5F6")


@pytest.fixture(scope="module")
def landing_zone(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return variant(tmp_path_factory, api_gateway_cloudwatch_role="existing")


def retained(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in synthesized.json["Resources"].items()
        if resource.get("DeletionPolicy") == "Retain" or resource.get("UpdateReplacePolicy") == "Retain"
    }


def test_only_state_logs_and_the_accounts_api_logging_role_survive_a_destroy(synthesized: Synthesized) -> None:
    kept = retained(synthesized)
    assert {resource["Type"] for resource in kept.values()} == set(RETAINED)
    for logical_id, resource in kept.items():
        assert resource["DeletionPolicy"] == "Retain", logical_id
        name = RETAINED[resource["Type"]]
        # a fixed name would make the next deploy fail with AlreadyExists
        assert name is None or name not in resource["Properties"], f"{logical_id} has a fixed {name}"
    (role,) = [r for r in kept.values() if r["Type"] == "AWS::IAM::Role"]
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "apigateway.amazonaws.com"
    }


def test_the_readme_lists_every_retained_resource_and_how_to_remove_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Retained resources", 1)[1].split("\n## ", 1)[0]
    for resource_type in RETAINED:
        assert f"`{resource_type}`" in section, resource_type
    for command in ("aws dynamodb update-table", "aws dynamodb delete-table", "aws logs delete-log-group"):
        assert command in section


def test_nothing_else_is_left_billed_or_named_to_collide(synthesized: Synthesized) -> None:
    _, key = synthesized.only("AWS::KMS::Key")
    assert key["DeletionPolicy"] == "Delete"
    assert key["Properties"]["PendingWindowInDays"] == 7
    _, group = synthesized.only("AWS::Scheduler::ScheduleGroup")
    assert group["DeletionPolicy"] == "Delete"
    for secret in synthesized.resources("AWS::SecretsManager::Secret").values():
        assert secret["DeletionPolicy"] == "Delete"
        assert "Name" not in secret["Properties"]


def test_a_new_deployment_adopts_the_retained_table(adopted: Synthesized, synthesized: Synthesized) -> None:
    name = "idsync-IdsyncStateTable0C8CA0FE-1AB2C3D4E5F6"
    assert adopted.resources("AWS::DynamoDB::Table") == {}
    arn = f"arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/{name}"
    for key in ("sync", "jit_worker", "jit_expiry", "subscriptions"):
        _, properties = adopted.functions()[key]
        assert properties["Environment"]["Variables"]["IDSYNC__STATE__TABLE_NAME"] == name
        resources = {
            resource
            for statement in function_statements(adopted, key)
            if any(str(action).startswith("dynamodb:") for action in statement["Action"])
            for resource in statement["Resource"]
        }
        assert resources == {arn, f"{arn}/index/*"}, key
    assert adopted.json["Outputs"]["TableName"]["Value"] == name
    # the rest of the stack is the same
    assert set(adopted.json["Resources"]) == set(synthesized.json["Resources"]) - {
        synthesized.logical_id("AWS::DynamoDB::Table", "StateTable")
    }


def test_the_stage_works_in_a_fresh_account(synthesized: Synthesized) -> None:
    # access logging needs the account's API Gateway CloudWatch role: the stack sets one before the stage
    account_id, account = synthesized.only("AWS::ApiGateway::Account")
    role_id = synthesized.logical_id("AWS::IAM::Role", "CloudWatchRole")
    assert render(account["Properties"]["CloudWatchRoleArn"]) == f"${{{role_id}.Arn}}"
    _, stage = synthesized.only("AWS::ApiGateway::Stage")
    assert account_id in stage["DependsOn"]
    assert "AccessLogSetting" in stage["Properties"]


def test_an_account_with_its_own_logging_role_is_left_alone(landing_zone: Synthesized) -> None:
    assert landing_zone.resources("AWS::ApiGateway::Account") == {}
    assert [r for r in landing_zone.resources("AWS::IAM::Role") if "CloudWatchRole" in r] == []
    _, stage = landing_zone.only("AWS::ApiGateway::Stage")
    assert "AccessLogSetting" in stage["Properties"]


def test_the_rest_api_is_named_after_the_stack(synthesized: Synthesized) -> None:
    _, api = synthesized.only("AWS::ApiGateway::RestApi")
    assert api["Properties"]["Name"] == "idsync-graph-webhook"


def test_the_graph_secret_starts_as_a_placeholder_the_functions_recognise(synthesized: Synthesized) -> None:
    secret_id = synthesized.logical_id("AWS::SecretsManager::Secret", "GraphClientSecret")
    generate = synthesized.json["Resources"][secret_id]["Properties"]["GenerateSecretString"]
    template = json.loads(generate["SecretStringTemplate"])
    assert PLACEHOLDER_SECRET_KEY in template
    # what Secrets Manager generates from it: the template plus the random key
    assert is_placeholder(json.dumps({**template, generate["GenerateStringKey"]: "Zk3Qx9Lm2Pv8"}))
    assert not is_placeholder("Qm7~zX2.vN9sandbox-client-secret")


def _run_app(tmp_path: Path, context: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CDK_CONTEXT_JSON"}
    env["CDK_OUTDIR"] = str(tmp_path)
    if context is not None:
        env["CDK_CONTEXT_JSON"] = json.dumps(context)
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def test_the_app_refuses_to_synthesize_without_an_explicit_configuration(tmp_path: Path) -> None:
    result = _run_app(tmp_path, None)
    assert result.returncode == 1
    assert "idsync: no configuration given: run `cdk deploy -c config=path/to/idsync.yaml`" in result.stderr
    assert not list(tmp_path.glob("*.template.json"))


def test_cdk_json_pins_the_feature_flags_cdk_init_writes_for_this_aws_cdk_lib() -> None:
    (bundle,) = (Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz")
    assert bundle.name == f"aws-cdk-lib@{version('aws-cdk-lib')}.jsii.tgz"
    with tarfile.open(bundle) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        recommended = json.load(member)
    assert json.loads((ROOT / "cdk.json").read_text())["context"] == recommended


def test_cfn_lint_finds_nothing_in_the_template(synthesized: Synthesized) -> None:
    # the same check `make test` runs on the bundled synth, here on the template the tests synthesize
    ignore = next(
        line.split(":=", 1)[1].strip()
        for line in (ROOT / "Makefile").read_text().splitlines()
        if line.startswith("CFN_LINT_IGNORE")
    )
    (template,) = synthesized.outdir.glob("*.template.json")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "cfn-lint"),
            "--format",
            "parseable",
            "--ignore-checks",
            ignore,
            "--",
            str(template),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_the_sync_functions_memory_is_the_configured_one(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Given a tenant that sizes the sync function itself
    sized = variant(tmp_path_factory, sync_memory_mb=3008)
    # Then the sync function has that memory, and the other functions keep theirs
    functions = sized.functions()
    assert functions["sync"][1]["MemorySize"] == 3008
    assert {properties["MemorySize"] for key, (_, properties) in functions.items() if key != "sync"} == {512}
