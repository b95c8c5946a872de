"""The sync function as a deployment lives with it: the Graph secret in Secrets Manager (moto) is a
placeholder on day one, is rotated while the function is warm, and the operator's run requests and
pause are honoured. State in DynamoDB (moto), Graph from the emulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from idsync.adapters.dynamodb_state import TABLE_SCHEMA, table_definition
from idsync.adapters.graph import GraphClient
from idsync.adapters.secrets import GraphSecret
from idsync.config import PLACEHOLDER_SECRET_KEY, GraphSettings
from idsync.errors import NotConfigured
from idsync.handlers import sync as sync_handler
from idsync.services.control import load_not_configured, pause, resume
from idsync.services.escrow import load_quarantine
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter
from tests.e2e.test_sync_handler import FakeContext

TABLE = "idsync-state"
PLACEHOLDER = json.dumps({PLACEHOLDER_SECRET_KEY: "put the Entra client secret here", "random": "Xy7Qk2"})
NEW_SECRET = "rotated-client-secret-8Q~pL1.zR4"


@pytest.fixture
def secrets(aws: None) -> Any:
    return boto3.client("secretsmanager", region_name="us-east-1")


@pytest.fixture
def deployed(
    emulator: GraphEmulator, aws: None, secrets: Any, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str | None], str]:
    """The sync function's environment as the stack sets it; returns the secret's ARN."""

    def deploy(value: str | None) -> str:
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        client.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]}
        )
        created = secrets.create_secret(Name="idsync/graph", **({"SecretString": value} if value else {}))
        settings = {
            "graph": {**emulator.graph_config(), "max_retries": 2},
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            # the shared rate budget at a rate that never holds these deployment-day cycles back
            "identity_store": {"region": "us-east-1", "rate_per_second": 1000},
        }
        for name, setting in {
            "IDSYNC_SETTINGS": json.dumps(settings),
            "IDSYNC__STATE__BACKEND": "dynamodb",
            "IDSYNC__STATE__TABLE_NAME": TABLE,
            "IDSYNC__STATE__REGION": "us-east-1",
            "IDSYNC__GRAPH__CLIENT_SECRET_ARN": created["ARN"],
            "POWERTOOLS_METRICS_NAMESPACE": "idsync",
            "POWERTOOLS_SERVICE_NAME": "idsync",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }.items():
            monkeypatch.setenv(name, setting)
        monkeypatch.delenv("IDSYNC_CLIENT_SECRET", raising=False)
        monkeypatch.setattr(sync_handler, "_engine", None)
        return str(created["ARN"])

    return deploy


def invoke(event: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = sync_handler.lambda_handler(event or {}, FakeContext())
    return result


def rotate_in_entra(tenant: Tenant, emulator: GraphEmulator) -> None:
    """Entra gets the new secret, the old one is deleted, and the tokens issued with it run out."""
    with tenant.lock:
        tenant.clients[CLIENT_ID].secrets = {NEW_SECRET}
    emulator.revoke_access_tokens()


# --------------------------------------------------------------------------- rotation


def test_a_warm_function_uses_a_rotated_secret_at_the_next_sign_in(
    deployed: Callable[[str | None], str],
    secrets: Any,
    tenant: Tenant,
    emulator: GraphEmulator,
    identity_center: IdentityCenter,
) -> None:
    arn = deployed(CLIENT_SECRET)
    assert invoke()["complete"] is True
    warm = sync_handler.engine()

    # When the secret is rotated in Entra and in Secrets Manager while the function stays warm
    rotate_in_entra(tenant, emulator)
    secrets.put_secret_value(SecretId=arn, SecretString=NEW_SECRET)
    user = tenant.add_user(
        userPrincipalName="rotation@contoso.example", displayName="Ro Tation", givenName="Ro", surname="Tation"
    )
    tenant.assign(user)
    result = invoke()

    # Then the same engine signs in with the new secret (the old one is refused, so it read again at once)
    assert sync_handler.engine() is warm
    assert result.get("complete") is True, result
    assert "rotation@contoso.example" in identity_center.users()
    assert load_quarantine(warm.state) is None


def test_a_rotated_secret_is_read_again_after_its_time_to_live_and_msal_is_rebuilt(
    emulator: GraphEmulator, aws: None, secrets: Any, tenant: Tenant
) -> None:
    arn = secrets.create_secret(Name="idsync/graph", SecretString=CLIENT_SECRET)["ARN"]
    settings = GraphSettings(**emulator.graph_config())
    cached = GraphClient(settings, GraphSecret(arn, client=secrets))
    expiring = GraphClient(settings, GraphSecret(arn, client=secrets, max_age=0))
    first = {cached.token(), expiring.token()}
    assert len(first) == 2
    signins = (cached.counter.calls.get("token", 0), expiring.counter.calls.get("token", 0))

    # When the value changes while Entra still accepts both
    with tenant.lock:
        tenant.clients[CLIENT_ID].secrets.add(NEW_SECRET)
    secrets.put_secret_value(SecretId=arn, SecretString=NEW_SECRET)
    cached.token()
    expiring.token()

    # Then within its time to live the cached client keeps msal's token; past it, msal is rebuilt and signs in
    assert cached.counter.calls.get("token", 0) == signins[0]
    assert expiring.counter.calls.get("token", 0) == signins[1] + 1


def test_a_secret_entra_rejects_for_good_is_still_an_authentication_error(
    deployed: Callable[[str | None], str], tenant: Tenant, emulator: GraphEmulator
) -> None:
    deployed("not-the-secret")
    with pytest.raises(Exception, match="invalid_client"):
        invoke()
    assert load_quarantine(sync_handler.engine().state) is not None


# --------------------------------------------------------------------------- first run


@pytest.mark.parametrize("value", [PLACEHOLDER, None], ids=["placeholder", "no-value"])
def test_before_the_secret_is_put_a_tick_is_not_configured_yet_never_quarantine(
    deployed: Callable[[str | None], str],
    secrets: Any,
    identity_center: IdentityCenter,
    value: str | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arn = deployed(value)
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(
        sync_handler.logger, "warning", lambda message, extra: logged.append({"message": message, **extra})
    )

    result = invoke()

    state = sync_handler.engine().state
    assert result["skipped"].startswith("not configured yet: ")
    assert load_quarantine(state) is None
    recorded = load_not_configured(state)
    assert recorded is not None
    assert arn in recorded["reason"]
    out = capsys.readouterr().out
    assert '"NotConfigured":[1.0]' in out
    assert [entry["reason"] for entry in logged if entry.get("message") == "not configured yet"] == [recorded["reason"]]
    assert identity_center.users() == {}

    # When the administrator puts the real secret, the very next run (warm) provisions
    secrets.put_secret_value(SecretId=arn, SecretString=CLIENT_SECRET)
    first = invoke({"full": True})
    assert first["complete"] is True
    assert identity_center.users() != {}
    assert load_not_configured(state) is None


def test_graph_secret_reports_each_unconfigured_form(aws: None, secrets: Any) -> None:
    empty = secrets.create_secret(Name="empty")["ARN"]
    placeholder = secrets.create_secret(Name="placeholder", SecretString=PLACEHOLDER)["ARN"]
    for arn, reason in ((empty, "has no value yet"), (placeholder, "still holds the placeholder")):
        with pytest.raises(NotConfigured, match=reason):
            GraphSecret(arn, client=secrets).current()
    assert GraphSecret(secrets.create_secret(Name="real", SecretString="{not json")["ARN"], client=secrets).current()


# --------------------------------------------------------------------------- run requests and pause


def test_run_requests_force_a_full_cycle_and_override_quarantine_but_not_a_pause(
    deployed: Callable[[str | None], str],
) -> None:
    deployed(CLIENT_SECRET)
    assert invoke({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}})["mode"] == "full"
    assert invoke()["mode"] == "delta"
    assert invoke({"full": True})["mode"] == "full"

    state = sync_handler.engine().state
    last = "2099-01-01T00:00:00+00:00"  # not due for its daily attempt
    state.put_item("quarantine", {"since": "2030-01-01T00:00:00+00:00", "reason": "test", "last_attempt": last})
    assert "in quarantine" in invoke()["skipped"]
    assert invoke({"ignore_quarantine": True})["complete"] is True
    assert load_quarantine(state) is None  # a clean cycle ends quarantine

    pause(state, sync_handler.engine().cycle.clock.now(), "migration", "ops")
    assert invoke({"ignore_quarantine": True, "full": True})["skipped"].startswith("paused since ")
    resume(state)
    assert invoke()["mode"] == "delta"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"full": "yes"}, "full: Input should be a valid boolean"),
        ({"ignoreQuarantine": True}, "ignoreQuarantine: Extra inputs are not permitted"),
        ([], "must be a JSON object"),
    ],
)
def test_a_malformed_run_request_names_the_field(event: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sync_handler.parse_request(event)


# --------------------------------------------------------------------------- the CLI against a deployment


def test_the_cli_pauses_resumes_and_clears_quarantine_in_a_deployments_table(
    deployed: Callable[[str | None], str], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from idsync.cli import main

    deployed(CLIENT_SECRET)
    config = tmp_path / "idsync.yaml"
    config.write_text("graph: {tenant_id: t, client_id: c}\nstack: {stack_name: idsync}\n", encoding="utf-8")
    where = ["--table", TABLE, "--region", "us-east-1"]

    assert main(["--config", str(config), "pause", *where, "--reason", "tenant migration"]) == 0
    assert invoke()["skipped"].startswith("paused since ")
    capsys.readouterr()
    assert main(["--config", str(config), "status", "--json", *where]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["paused"]["reason"] == "tenant migration"
    assert main(["--config", str(config), "resume", *where]) == 0
    assert invoke()["complete"] is True

    state = sync_handler.engine().state
    state.put_item("quarantine", {"since": "2030-01-01T00:00:00+00:00", "reason": "t", "last_attempt": "2099-01-01"})
    assert main(["--config", str(config), "quarantine", "clear", *where]) == 0
    assert load_quarantine(state) is None
    assert invoke()["mode"] == "delta"


def test_the_daily_subscriptions_run_before_the_secret_is_put_reports_not_configured(
    deployed: Callable[[str | None], str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from idsync.handlers import subscriptions as subscriptions_handler

    deployed(PLACEHOLDER)
    monkeypatch.setenv("IDSYNC__PIM__CLIENT_STATE", "client-state-from-the-stack")
    monkeypatch.setenv("IDSYNC__PIM__GROUPS", '["0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"]')
    monkeypatch.setenv("IDSYNC__PIM__NOTIFICATION_URL", "https://example.invalid/graph/notifications")
    monkeypatch.setenv("IDSYNC__PIM__LIFECYCLE_URL", "https://example.invalid/graph/lifecycle")
    subscriptions_handler.service.cache_clear()

    result = subscriptions_handler.lambda_handler({}, FakeContext(function_name="idsync-subscriptions"))

    assert result["skipped"].startswith("not configured yet: ")
    assert '"NotConfigured":[1.0]' in capsys.readouterr().out
    subscriptions_handler.service.cache_clear()
