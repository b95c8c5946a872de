"""The scheduled sync function as Lambda runs it: settings from the environment, state in DynamoDB."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from idsync.adapters.dynamodb_state import TABLE_SCHEMA, table_definition
from idsync.handlers import sync as sync_handler
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter

TABLE = "idsync-state"


@dataclass
class FakeContext:
    remaining_ms: int = 900_000
    function_name: str = "idsync-sync"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:idsync-sync"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_env(emulator: GraphEmulator, aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(**table_definition(TABLE))
    client.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]}
    )
    settings = {
        "graph": {**emulator.graph_config(), "max_retries": 2},
        "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
        "identity_store": {"region": "us-east-1"},
    }
    monkeypatch.setenv("IDSYNC_SETTINGS", json.dumps(settings))
    monkeypatch.setenv("IDSYNC__STATE__BACKEND", "dynamodb")
    monkeypatch.setenv("IDSYNC__STATE__TABLE_NAME", TABLE)
    monkeypatch.setenv("IDSYNC__STATE__REGION", "us-east-1")
    monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "idsync")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "idsync")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setattr(sync_handler, "_engine", None)


def invoke(**context: Any) -> dict[str, Any]:
    result: dict[str, Any] = sync_handler.lambda_handler({}, FakeContext(**context))
    return result


def test_scheduled_cycles_on_dynamodb_state(
    lambda_env: None, tenant: Tenant, identity_center: IdentityCenter, capsys: pytest.CaptureFixture[str]
) -> None:
    # When the schedule fires twice
    first = invoke()
    second = invoke()
    # Then the first provisions the tenant, the second (a delta cycle) writes nothing
    assert first["mode"] == "full"
    assert first["complete"] is True
    assert first["refusals"] == len(tenant.expected_refusals)
    assert len(identity_center.users()) == first["counts"]["user"]["create"]
    assert second["mode"] == "delta"
    assert second["writes"] == 0
    # and every Identity Store call drew from the budget shared through the state table, in batches
    bucket = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=TABLE, Key={"pk": {"S": "BUCKET#identity-center"}, "sk": {"S": "BUCKET"}}, ConsistentRead=True
    )["Item"]
    assert sync_handler._engine is not None
    counted = sync_handler._engine.counters.aws
    calls = counted.total - counted.calls.get("ListInstances", 0)  # the discovery's sso-admin call is not metered
    assert calls / 5 <= int(bucket["version"]["N"]) < calls
    # and the metrics went out in CloudWatch's embedded format
    out = capsys.readouterr().out
    assert '"UserCreate"' in out
    assert '"Quarantined"' in out
    # with the delta cycle's drift check: its List calls and what it found
    drift = sync_handler._engine.cycle.drift
    assert drift is not None
    emitted = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"DriftCheckCalls"' in line]
    assert [(m["DriftCheckCalls"], m["DriftFound"]) for m in emitted] == [([drift.last.calls], [0])]
    assert drift.last.calls > 0


def test_a_short_time_budget_spreads_the_initial_sync_over_invocations(
    lambda_env: None, identity_center: IdentityCenter
) -> None:
    # A context that reports less than the safety margin left stops after its first request (reading Entra),
    # on DynamoDB state, with nothing planned nor written
    stopped = invoke(remaining_ms=59_000)
    assert stopped["complete"] is False
    assert stopped["writes"] == 0
    assert identity_center.users() == {}
    # and the next invocation carries that full read on, then provisions everyone
    finished = invoke()
    assert finished["complete"] is True
    assert finished["mode"] == "full"
    assert len(identity_center.users()) == finished["counts"]["user"]["create"]
