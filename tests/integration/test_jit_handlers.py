"""The JIT worker and expiry Lambda handlers with real parts: the Graph emulator, SQS, EventBridge Scheduler and
the Identity Store on moto, SQLite state. The clock of grants is fake; the handlers are invoked as Lambda would."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from idsync.adapters.identitystore import IdentityStoreTarget
from idsync.adapters.scheduler import fire_time
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.adapters.sqs_queue import SqsHintQueue
from idsync.config import Settings, parse_settings
from idsync.handlers import jit_expiry, jit_worker, pim_poller
from idsync.model import OwnedGroup
from idsync.ports import Hint
from idsync.services.jit import JitService
from idsync.services.token_bucket import Wait
from idsync.wiring import build_jit_service, build_jit_worker, build_pim_poller
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LambdaContext, MemoryBucketStore
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, Tenant
from tests.fakes import FakeClock

GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"


@dataclass
class World:
    emulator: GraphEmulator
    settings: Settings
    clock: FakeClock
    service: JitService
    state: SqliteStateStore
    sqs: Any
    queue_url: str
    identity_store_id: str
    group_target: str

    def hint_batch(self, body: str | None = None) -> dict[str, Any]:
        """Send a hint (or any body) and receive it as Lambda's event source mapping hands it over."""
        if body is None:
            SqsHintQueue(self.queue_url, client=self.sqs).send([Hint(GROUP, "notification", "2030-01-01T12:00:00Z")])
        else:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MessageSystemAttributeNames=["All"])["Messages"]
        return {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": m["Attributes"],
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:idsync-jit",
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }

    def is_member(self, user_id: str) -> bool:
        user = self.state.owned_user(user_id)
        if user is None:
            return False
        client = boto3.client("identitystore")
        try:
            client.get_group_membership_id(
                IdentityStoreId=self.identity_store_id, GroupId=self.group_target, MemberId={"UserId": user.target_id}
            )
        except client.exceptions.ResourceNotFoundException:
            return False
        return True

    def counts(self) -> dict[str, str]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        return self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]


@pytest.fixture
def world(identity_store_id: str, tmp_path: Path) -> Iterator[World]:
    tenant = Tenant()
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    tenant.add_group("AWS PIM Production Admin", id=GROUP)
    tenant.add_user(
        id=ADA,
        userPrincipalName="ada@contoso.example",
        displayName="Ada Lovelace",
        givenName="Ada",
        surname="Lovelace",
        mail="ada@contoso.example",
    )
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="idsync-jit")["QueueUrl"]
    boto3.client("scheduler").create_schedule_group(Name="idsync-expiry")
    identity = IdentityStoreTarget(identity_store_id, boto3.client("identitystore"))
    group_target = identity.create_group("AWS PIM Production Admin", None)
    state = SqliteStateStore(tmp_path / "state.db")
    state.record_group(OwnedGroup(GROUP, group_target, "AWS PIM Production Admin", None, ""))
    clock = FakeClock()
    with GraphEmulator(tenant) as emulator:
        emulator.app.pim.clock = clock
        emulator.app.pim.auto_expire = False  # Entra drops the member some time after the end
        settings = parse_settings(
            {
                "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET, "max_retries": 2},
                "identity_store": {"region": "us-east-1"},  # the store id is discovered (sso-admin)
                "pim": {
                    "groups": [GROUP],
                    "queue_url": queue_url,
                    "scheduler_group": "idsync-expiry",
                    "scheduler_role_arn": "arn:aws:iam::123456789012:role/idsync-scheduler",
                    "expiry_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:idsync-jit-expiry",
                },
            }
        )
        service = build_jit_service(settings, clock=clock, state=state, bucket_store=MemoryBucketStore())
        jit_worker.use(build_jit_worker(settings, service=service))
        jit_expiry.use(service)
        pim_poller.use(build_pim_poller(settings, service=service))
        yield World(emulator, settings, clock, service, state, sqs, queue_url, identity_store_id, group_target)
        jit_worker.use(None)
        jit_expiry.use(None)
        pim_poller.use(None)
    state.close()


def metrics(output: str) -> dict[str, list[float]]:
    """Every value of each metric in the embedded-metric-format lines Powertools printed."""
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            blob = json.loads(line)
            for directive in blob["_aws"]["CloudWatchMetrics"]:
                for metric in directive["Metrics"]:
                    value = blob[metric["Name"]]
                    found.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return found


def test_the_worker_applies_an_activation_from_an_sqs_batch(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    # Given Ada activated for an hour, 1.5 s ago on the grant clock
    world.emulator.app.pim.activate(GROUP, ADA, 60)
    world.clock.advance(1.5)

    # When the worker gets the hint
    answer = jit_worker.lambda_handler(world.hint_batch(), LambdaContext("idsync-jit-worker"))  # type: ignore[arg-type]

    # Then the batch succeeded and Ada is a member in IAM Identity Center
    assert answer == {"batchItemFailures": []}
    assert world.is_member(ADA)
    # and her expiry is scheduled for the end of the grant, in idsync's schedule group
    scheduler = boto3.client("scheduler")
    [entry] = scheduler.list_schedules(GroupName="idsync-expiry")["Schedules"]
    schedule = scheduler.get_schedule(Name=entry["Name"], GroupName="idsync-expiry")
    assert json.loads(schedule["Target"]["Input"]) == {"group_id": GROUP, "user_id": ADA}
    end = world.clock.now() - timedelta(seconds=1.5) + timedelta(minutes=60)
    assert schedule["ScheduleExpression"] == f"at({fire_time(end):%Y-%m-%dT%H:%M:%S})"
    assert end <= fire_time(end) < end + timedelta(minutes=1)
    # and the metrics say one activation, applied 1.5 s after it started
    emitted = metrics(capsys.readouterr().out)
    assert emitted["ActivationsApplied"] == [1.0]
    assert emitted["ActivationLatency"] == [pytest.approx(1.5)]


def test_with_no_token_the_message_stays_hidden_on_the_queue(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    while not isinstance(world.service.bucket.try_take(), Wait):
        pass
    world.emulator.app.pim.activate(GROUP, ADA, 60)
    event = world.hint_batch()

    answer = jit_worker.lambda_handler(event, LambdaContext("idsync-jit-worker"))  # type: ignore[arg-type]

    # Then the message is a batch item failure: SQS keeps it, hidden until the next token is due
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert world.counts() == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "1"}
    assert not world.is_member(ADA)
    assert metrics(capsys.readouterr().out)["Requeued"] == [1.0]


def test_a_message_that_is_not_a_hint_fails_alone(world: World) -> None:
    event = world.hint_batch('{"group": "nope"}')

    answer = jit_worker.lambda_handler(event, LambdaContext("idsync-jit-worker"))  # type: ignore[arg-type]

    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}


def test_the_expiry_function_removes_the_membership_at_the_end(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.emulator.app.pim.activate(GROUP, ADA, 60)
    jit_worker.lambda_handler(world.hint_batch(), LambdaContext("idsync-jit-worker"))  # type: ignore[arg-type]
    assert world.is_member(ADA)
    capsys.readouterr()

    # When the schedule fires after the end (Graph still lists Ada: Entra has not caught up yet)
    world.clock.advance(61 * 60)
    summary = jit_expiry.lambda_handler({"group_id": GROUP, "user_id": ADA}, LambdaContext("idsync-jit-expiry"))  # type: ignore[arg-type]

    # Then her membership is gone, and counted
    assert summary["removals"] == [ADA]
    assert not world.is_member(ADA)
    assert metrics(capsys.readouterr().out)["ExpiriesApplied"] == [1.0]
    # and an ended marker, kept while Graph still lists her, is stored in the state table
    marker = world.state.grant(GROUP, ADA)
    assert marker is not None
    assert marker.phase == "ended"


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"user_id": ADA}, "field group_id must be a non-empty string"),
        ({"group_id": GROUP, "user_id": 7}, "field user_id must be a non-empty string"),
        ([], "expiry event must be a JSON object"),
    ],
)
def test_a_malformed_expiry_event_says_which_field(world: World, event: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        jit_expiry.lambda_handler(event, LambdaContext("idsync-jit-expiry"))  # type: ignore[arg-type]


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """What the function's logger writes (the JSON lines CloudWatch would get)."""
    buffer = io.StringIO()
    handler = jit_worker.logger.registered_handler
    previous = handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    handler.setStream(previous)  # type: ignore[attr-defined]


def test_a_hint_that_cannot_be_processed_fails_alone_and_is_logged(
    world: World, capsys: pytest.CaptureFixture[str], logs: io.StringIO
) -> None:
    # Given Graph answers 503 to every read of the group
    world.emulator.inject(503, count=10, path_prefix=f"/v1.0/groups/{GROUP}", retry_after="0")
    event = world.hint_batch()

    answer = jit_worker.lambda_handler(event, LambdaContext("idsync-jit-worker"))  # type: ignore[arg-type]

    # Then SQS keeps the message for another delivery, and the failure is logged and counted
    assert answer == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    errors = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith('{"level":"ERROR"')]
    assert [e["message"] for e in errors] == ["hint not processed; SQS delivers it again"]
    assert "HTTP 503" in errors[0]["exception"]
    assert metrics(capsys.readouterr().out)["HintsFailed"] == [1.0]


def test_the_poller_applies_an_activation_no_notification_announced(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given Ada activated 40 s ago on the grant clock, and no hint on the queue (the webhook is down)
    world.emulator.app.pim.activate(GROUP, ADA, 60)
    world.clock.advance(40)
    before = len(world.emulator.log)

    # When the poller's schedule invokes it
    summary = pim_poller.lambda_handler({}, LambdaContext("idsync-pim-poller"))  # type: ignore[arg-type]

    # Then Ada is a member, with her expiry scheduled, and the poll read the group with Graph's required filter
    assert summary["looked"] == [GROUP]
    assert world.is_member(ADA)
    assert len(boto3.client("scheduler").list_schedules(GroupName="idsync-expiry")["Schedules"]) == 1
    reads = [line for line in world.emulator.log[before:] if "assignmentScheduleInstances" in line]
    assert reads
    assert all(f"$filter=groupId eq '{GROUP}'" in line for line in reads)
    emitted = metrics(capsys.readouterr().out)
    assert emitted["PimGroupsPolled"] == [1.0]
    assert emitted["ActivationsApplied"] == [1.0]
    assert emitted["ActivationLatency"] == [pytest.approx(40)]
    # And a second poll finds nothing to do: one read, no look
    assert pim_poller.lambda_handler({}, LambdaContext("idsync-pim-poller"))["looked"] == []  # type: ignore[arg-type]
