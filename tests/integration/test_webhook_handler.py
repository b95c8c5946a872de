"""The webhook Lambda end to end (API Gateway REST proxy events in, moto SQS and Secrets Manager behind),
and its SQS and Secrets Manager adapters."""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from idsync.adapters.secrets import SecretsManagerSource
from idsync.adapters.sqs_queue import SqsHintQueue
from idsync.errors import QueueError, SecretError
from idsync.handlers import webhook
from idsync.ports import Hint
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, sample_tenant

CORPUS = Path(__file__).parents[1] / "fixtures" / "graph_notifications"
TENANT = "5f8c2a1e-3b4d-4c6e-9f0a-1b2c3d4e5f60"
GROUP_A = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
GROUP_B = "9b2c4d6e-1f3a-4b5c-8d7e-6f5a4b3c2d1e"
OTHER_GROUP = "3c5e7a9b-2d4f-4e6a-8b0c-1d3f5a7c9e2b"
SUBSCRIPTION = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
CLIENT_STATE = "pim-client-state-7Qx2"
REQUEST_ID = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


@dataclass
class LambdaContext:
    function_name: str = "idsync-webhook"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:idsync-webhook"
    aws_request_id: str = "5b1f0c8e-0000-4000-8000-000000000001"


@dataclass
class Aws:
    sqs: Any
    queue_url: str


def api_event(
    path: str,
    body: bytes | str | None,
    content_type: str | None = "application/json; charset=utf-8",
    query: dict[str, str] | None = None,
    base64_encoded: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST API proxy-integration event, as the service sends it to Lambda."""
    headers = {"Host": "abc123.execute-api.us-east-1.amazonaws.com", "User-Agent": "Microsoft-Graph/1.0"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if isinstance(body, bytes):
        text: str | None = base64.b64encode(body).decode() if base64_encoded else body.decode("utf-8", "replace")
    else:
        text = body
    return {
        "resource": path,
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "a1b2c3",
            "resourcePath": path,
            "httpMethod": "POST",
            "requestId": REQUEST_ID,
            "extendedRequestId": "LgJ0lHnmIAMFZ8g=",
            "path": f"/prod{path}",
            "stage": "prod",
            "protocol": "HTTP/1.1",
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "requestTimeEpoch": 1893499200000,
            "identity": {"sourceIp": "20.190.128.1", "userAgent": "Microsoft-Graph/1.0"},
        },
        "body": text,
        "isBase64Encoded": base64_encoded,
    }


def notification(**fields: Any) -> dict[str, Any]:
    body = json.loads((CORPUS / "valid" / "change-group-members.json").read_text(encoding="utf-8"))
    item = copy.deepcopy(body["value"][0])
    item.update(fields)
    return item


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return webhook.lambda_handler(event, LambdaContext())  # type: ignore[arg-type]


def queued(aws: Aws) -> list[dict[str, Any]]:
    """Every message on the queue (received, so each once)."""
    out: list[dict[str, Any]] = []
    while True:
        answer = aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10)
        messages = answer.get("Messages", [])
        if not messages:
            return out
        out += [json.loads(m["Body"]) for m in messages]


def emitted_metrics(output: str) -> dict[str, float]:
    """Sum of each metric in the CloudWatch embedded-metric-format lines printed by Powertools."""
    totals: dict[str, float] = {}
    for line in output.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + (
                    sum(value) if isinstance(value, list) else value
                )
    return totals


def log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What the function's logger writes (the JSON lines CloudWatch would get)."""
    buffer = io.StringIO()
    handler = webhook.logger.registered_handler
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    handler.setStream(previous)  # type: ignore[attr-defined]


@pytest.fixture
def deployed(aws: None, aws_region: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    """The webhook configured the way the stack does it, against moto SQS and Secrets Manager."""
    sqs = boto3.client("sqs", region_name=aws_region)
    queue_url = sqs.create_queue(QueueName="idsync-jit")["QueueUrl"]
    secret_arn = boto3.client("secretsmanager", region_name=aws_region).create_secret(
        Name="idsync/pim-client-state", SecretString=CLIENT_STATE
    )["ARN"]
    settings = {"graph": {"tenant_id": TENANT, "client_id": "app"}, "pim": {"groups": [GROUP_A, GROUP_B]}}
    monkeypatch.setenv("IDSYNC_SETTINGS", json.dumps(settings))
    monkeypatch.setenv("IDSYNC__PIM__QUEUE_URL", queue_url)
    monkeypatch.setenv("IDSYNC__PIM__CLIENT_STATE_ARN", secret_arn)
    webhook.service.cache_clear()
    yield Aws(sqs, queue_url)
    webhook.service.cache_clear()


@pytest.mark.parametrize("path", ["/graph/notifications", "/graph/lifecycle"])
def test_the_validation_handshake_through_api_gateway(deployed: Aws, path: str) -> None:
    # Given Graph's validation POST: API Gateway has URL-decoded the query string ('+' and %3a)
    token = f"Validation: Testing client application reachability for subscription Request-Id: {SUBSCRIPTION}"
    event = api_event(path, "", content_type="text/plain; charset=utf-8", query={"validationToken": token})

    # When the function answers
    response = invoke(event)

    # Then 200, text/plain, the decoded token as the body, and nothing queued
    assert response["statusCode"] == 200
    assert response["multiValueHeaders"]["Content-Type"] == ["text/plain"]
    assert response["body"] == token
    assert queued(deployed) == []


def test_the_queue_holds_exactly_the_accepted_hints(
    deployed: Aws, capsys: pytest.CaptureFixture[str], logs: io.StringIO
) -> None:
    # Given one request with two good items, a forged one and one for a group that is not a PIM group
    before = datetime.now(UTC)
    body = {
        "value": [
            notification(),
            notification(clientState="forged", resource=f"Groups/{GROUP_B}"),
            notification(resource=f"groups/{GROUP_B}/members"),
            notification(resource=f"Groups/{OTHER_GROUP}"),
        ]
    }

    # When Graph posts it
    response = invoke(api_event("/graph/notifications", json.dumps(body)))

    # Then 202 with an empty body, and the queue holds one message per group of the accepted items
    assert (response["statusCode"], response["body"]) == (202, "")
    messages = queued(deployed)
    assert sorted(m["group_id"] for m in messages) == sorted([GROUP_A, GROUP_B])
    assert {m["reason"] for m in messages} == {"notification"}
    for message in messages:
        assert before - timedelta(seconds=1) <= datetime.fromisoformat(message["received_at"]) <= datetime.now(UTC)
    # And one metric per outcome, and structured logs carrying the API request id
    assert emitted_metrics(capsys.readouterr().out) == {
        "NotificationsAccepted": 2,
        "NotificationsDropped": 1,
        "NotificationsOtherGroups": 1,
    }
    drops = [line for line in log_lines(logs.getvalue()) if line["message"] == "notification dropped"]
    assert [d["reason"] for d in drops] == ["clientState mismatch"]
    assert {d["correlation_id"] for d in drops} == {REQUEST_ID}
    assert {d["function_name"] for d in drops} == {"idsync-webhook"}
    assert CLIENT_STATE not in logs.getvalue()
    assert "forged" not in logs.getvalue()


def test_a_base64_encoded_body_is_read_the_same(deployed: Aws) -> None:
    raw = json.dumps({"value": [notification()]}).encode()

    response = invoke(api_event("/graph/notifications", raw, base64_encoded=True))

    assert response["statusCode"] == 202
    assert [m["group_id"] for m in queued(deployed)] == [GROUP_A]


def test_every_malformed_request_is_refused_and_nothing_is_queued(
    deployed: Aws, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the whole malformed corpus
    cases = json.loads((CORPUS / "malformed" / "cases.json").read_text(encoding="utf-8"))
    wrong: list[str] = []

    # When each is posted through API Gateway (bodies that are not UTF-8 base64-encoded, as for binary types)
    for case in cases:
        raw = (CORPUS / "malformed" / case["file"]).read_bytes()
        try:
            raw.decode("utf-8")
            event = api_event("/graph/notifications", raw, case["content_type"])
        except UnicodeDecodeError:
            event = api_event("/graph/notifications", raw, case["content_type"], base64_encoded=True)
        response = invoke(event)
        error = json.loads(response["body"])["error"]
        if response["statusCode"] != case["status"] or error["code"] != case["code"]:
            wrong.append(f"{case['file']}: {response['statusCode']} {error}")

    # Then each got its status and code, and not one message reached the queue
    assert wrong == []
    assert queued(deployed) == []
    assert emitted_metrics(capsys.readouterr().out) == {"RequestsRejected": len(cases)}


def test_reauthorization_required_renews_the_subscription_in_graph(
    deployed: Aws, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with GraphEmulator(sample_tenant()) as emu:
        # Given a subscription close to its end, and the webhook pointed at Graph (the emulator)
        soon = datetime.now(UTC) + timedelta(minutes=30)
        emu.app.pim.subscriptions[SUBSCRIPTION] = {
            "id": SUBSCRIPTION,
            "resource": f"/groups/{GROUP_A}/members",
            "group": GROUP_A,
            "changeType": "updated,deleted",
            "clientState": CLIENT_STATE,
            "notificationUrl": "https://example.invalid/graph/notifications",
            "lifecycleNotificationUrl": None,
            "expiration": soon,
            "since": emu.tenant.seq,
        }
        settings = {"graph": {**emu.graph_config(), "max_retries": 1}, "pim": {"groups": [GROUP_A, GROUP_B]}}
        monkeypatch.setenv("IDSYNC_SETTINGS", json.dumps(settings))
        monkeypatch.setenv("IDSYNC_CLIENT_SECRET", CLIENT_SECRET)
        webhook.service.cache_clear()
        body = json.loads((CORPUS / "valid" / "lifecycle-reauthorizationRequired.json").read_text(encoding="utf-8"))
        body["value"][0]["tenantId"] = emu.tenant.tenant_id

        # When Graph asks for reauthorization
        response = invoke(api_event("/graph/lifecycle", json.dumps(body)))

        # Then the webhook answers 202, queues nothing, and the subscription now runs for about 29 days
        assert response["statusCode"] == 202
        assert queued(deployed) == []
        renewed = emu.app.pim.subscriptions[SUBSCRIPTION]["expiration"]
        assert renewed - datetime.now(UTC) > timedelta(days=28)
        assert emitted_metrics(capsys.readouterr().out)["LifecycleReauthorizationRequired"] == 1


def test_a_queue_outage_answers_503_so_graph_delivers_again(deployed: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the queue is gone
    deployed.sqs.delete_queue(QueueUrl=deployed.queue_url)

    # When a good notification arrives
    response = invoke(api_event("/graph/notifications", json.dumps({"value": [notification()]})))

    # Then 503 (Graph retries), and the failure is counted
    assert response["statusCode"] == 503
    assert json.loads(response["body"])["error"]["code"] == "serviceUnavailable"
    assert emitted_metrics(capsys.readouterr().out) == {"RequestsFailed": 1}


def test_a_missing_configuration_answers_503_and_says_what_is_missing(
    deployed: Aws, monkeypatch: pytest.MonkeyPatch, logs: io.StringIO
) -> None:
    # Given a function deployed without its queue URL
    monkeypatch.delenv("IDSYNC__PIM__QUEUE_URL")
    webhook.service.cache_clear()

    # When a notification arrives
    response = invoke(api_event("/graph/notifications", json.dumps({"value": [notification()]})))

    # Then 503 for Graph, and the log names the missing setting
    assert response["statusCode"] == 503
    errors = [line for line in log_lines(logs.getvalue()) if line["level"] == "ERROR"]
    assert [e["error"] for e in errors] == [
        "pim.queue_url is required by the webhook (the SQS queue feeding the JIT worker)"
    ]


def test_a_request_of_1000_items_is_one_message_per_group_on_the_queue(deployed: Aws) -> None:
    # Given Graph's largest request: 1,000 member changes of two PIM groups
    body = {"value": [notification(resource=f"groups/{(GROUP_A, GROUP_B)[n % 2]}/members") for n in range(1000)]}

    # When posted
    response = invoke(api_event("/graph/notifications", json.dumps(body)))

    # Then the queue holds one message per group (a look re-reads the whole group)
    assert response["statusCode"] == 202
    groups = [m["group_id"] for m in queued(deployed)]
    assert sorted(groups) == sorted([GROUP_A, GROUP_B])


# --------------------------------------------------------------------------- the adapters on their own


def hints(count: int) -> list[Hint]:
    return [
        Hint(group_id=GROUP_A, reason="notification", received_at=f"2030-01-01T12:00:{n:02d}+00:00")
        for n in range(count)
    ]


def test_a_transient_sqs_failure_of_one_entry_is_sent_again() -> None:
    # Given SQS fails one entry on its side, then accepts it on the resend
    client = boto3.client("sqs")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/idsync-jit"
    with Stubber(client) as stub:
        stub.add_response(
            "send_message_batch",
            {
                "Successful": [{"Id": "0", "MessageId": "m0", "MD5OfMessageBody": "x"}],
                "Failed": [{"Id": "1", "SenderFault": False, "Code": "InternalError"}],
            },
        )
        stub.add_response(
            "send_message_batch",
            {"Successful": [{"Id": "1", "MessageId": "m1", "MD5OfMessageBody": "x"}], "Failed": []},
            expected_params={"QueueUrl": url, "Entries": [{"Id": "1", "MessageBody": hints(2)[1].to_json()}]},
        )

        # When two hints are sent
        SqsHintQueue(url, client=client).send(hints(2))

        # Then both went out: the second call carried only the failed entry
        stub.assert_no_pending_responses()


def test_a_message_sqs_refuses_is_a_queue_error() -> None:
    client = boto3.client("sqs")
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/idsync-jit"
    with Stubber(client) as stub:
        stub.add_response(
            "send_message_batch",
            {"Successful": [], "Failed": [{"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents"}]},
        )

        with pytest.raises(QueueError, match="SQS refused 1 hint"):
            SqsHintQueue(url, client=client).send(hints(1))


def test_secrets_manager_values_are_cached_and_a_missing_secret_is_named(deployed: Aws, aws_region: str) -> None:
    # Given the clientState secret in Secrets Manager
    client = boto3.client("secretsmanager", region_name=aws_region)
    source = SecretsManagerSource(client=client)
    name = "idsync/pim-client-state"

    # When it is read, rotated, and read again within the cache age
    first = source.get(name)
    client.put_secret_value(SecretId=name, SecretString="rotated")
    second = source.get(name)

    # Then the cached value is served, and a fresh source sees the rotation
    assert (first, second) == (CLIENT_STATE, CLIENT_STATE)
    assert SecretsManagerSource(client=client).get(name) == "rotated"
    with pytest.raises(SecretError, match="secret idsync/absent could not be read"):
        source.get("idsync/absent")
