"""The JIT adapters against their real counterparts: EventBridge Scheduler and SQS on moto, the grant store
on SQLite and DynamoDB (moto), and Graph's PIM reads on the emulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from idsync.adapters.dynamodb_state import DynamoDbStateStore, table_definition
from idsync.adapters.graph import GraphClient
from idsync.adapters.graph_pim import GraphPim, parse_instance
from idsync.adapters.scheduler import EventBridgeExpiryScheduler, fire_time, parse_at, schedule_name
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.adapters.sqs_requeue import SqsHintRetry
from idsync.config import GraphSettings
from idsync.errors import DirectoryError
from idsync.model import OwnedGroup, OwnedMembership, OwnedUser
from idsync.ports import AccessGrant, GrantStore, Hint
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, Tenant

GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"
BOB = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
END = datetime(2030, 1, 1, 13, 0, 30, 250_000, tzinfo=UTC)
TARGET = "arn:aws:lambda:us-east-1:123456789012:function:idsync-jit-expiry"
ROLE = "arn:aws:iam::123456789012:role/idsync-scheduler"


# --------------------------------------------------------------------------- EventBridge Scheduler


@pytest.fixture
def scheduler(aws: None) -> Any:
    client = boto3.client("scheduler")
    client.create_schedule_group(Name="idsync-expiry")
    return client


def schedules(client: Any) -> dict[str, dict[str, Any]]:
    names = [s["Name"] for s in client.list_schedules(GroupName="idsync-expiry")["Schedules"]]
    return {name: client.get_schedule(Name=name, GroupName="idsync-expiry") for name in names}


def test_an_expiry_is_a_one_time_schedule_that_deletes_itself(scheduler: Any) -> None:
    expiries = EventBridgeExpiryScheduler("idsync-expiry", TARGET, ROLE, client=scheduler)

    expiries.set(GROUP, ADA, END)

    # Then one schedule, at the next whole minute after the end (never before it), invoking the expiry function
    [(name, schedule)] = schedules(scheduler).items()
    assert name == schedule_name(GROUP, ADA, END)
    assert len(name) <= 64
    assert schedule["ScheduleExpression"] == "at(2030-01-01T13:01:00)"
    assert schedule["ScheduleExpressionTimezone"] == "UTC"
    assert schedule["ActionAfterCompletion"] == "DELETE"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert schedule["Target"]["Arn"] == TARGET
    assert schedule["Target"]["RoleArn"] == ROLE
    assert json.loads(schedule["Target"]["Input"]) == {"group_id": GROUP, "user_id": ADA}
    assert parse_at(schedule["ScheduleExpression"]) == fire_time(END) > END


def test_an_expiry_schedule_retries_and_then_goes_to_the_dead_letter_queue(scheduler: Any) -> None:
    # Given the scheduler wired with the expiry dead-letter queue
    dlq = boto3.client("sqs").create_queue(QueueName="idsync-expiry-dlq")["QueueUrl"]
    dlq_arn = boto3.client("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    expiries = EventBridgeExpiryScheduler("idsync-expiry", TARGET, ROLE, client=scheduler, dead_letter_arn=dlq_arn)

    # When an expiry is set
    expiries.set(GROUP, ADA, END)

    # Then its target retries a delivery it cannot make, then hands it to the dead-letter queue
    [schedule] = schedules(scheduler).values()
    assert schedule["Target"]["RetryPolicy"] == {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600}
    assert schedule["Target"]["DeadLetterConfig"] == {"Arn": dlq_arn}


def test_setting_the_same_expiry_twice_keeps_one_schedule(scheduler: Any) -> None:
    expiries = EventBridgeExpiryScheduler("idsync-expiry", TARGET, ROLE, client=scheduler)

    expiries.set(GROUP, ADA, END)
    expiries.set(GROUP, ADA, END + timedelta(seconds=5))  # the same minute

    assert list(schedules(scheduler)) == [schedule_name(GROUP, ADA, END)]


def test_a_moved_expiry_replaces_the_old_schedule(scheduler: Any) -> None:
    expiries = EventBridgeExpiryScheduler("idsync-expiry", TARGET, ROLE, client=scheduler)
    expiries.set(GROUP, ADA, END)
    expiries.set(GROUP, BOB, END)

    expiries.set(GROUP, ADA, END + timedelta(minutes=30), previous=END)

    found = {
        json.loads(s["Target"]["Input"])["user_id"]: s["ScheduleExpression"] for s in schedules(scheduler).values()
    }
    assert found == {ADA: "at(2030-01-01T13:31:00)", BOB: "at(2030-01-01T13:01:00)"}


def test_clearing_an_expiry_already_fired_is_not_an_error(scheduler: Any) -> None:
    expiries = EventBridgeExpiryScheduler("idsync-expiry", TARGET, ROLE, client=scheduler)
    expiries.set(GROUP, ADA, END)

    expiries.clear(GROUP, ADA, END)
    expiries.clear(GROUP, ADA, END)

    assert schedules(scheduler) == {}


def test_names_are_deterministic_and_distinct_per_grant_and_minute() -> None:
    assert schedule_name(GROUP, ADA, END) == schedule_name(GROUP.upper(), ADA, END)
    assert schedule_name(GROUP, ADA, END) != schedule_name(GROUP, BOB, END)
    assert schedule_name(GROUP, ADA, END) != schedule_name(GROUP, ADA, END + timedelta(minutes=1))
    assert fire_time(datetime(2030, 1, 1, 13, 0, tzinfo=UTC)) == datetime(2030, 1, 1, 13, 0, tzinfo=UTC)
    assert parse_at("rate(5 minutes)") is None


# --------------------------------------------------------------------------- SQS


@pytest.fixture
def queue(aws: None) -> tuple[Any, str]:
    sqs = boto3.client("sqs")
    return sqs, sqs.create_queue(QueueName="idsync-jit")["QueueUrl"]


def counts(sqs: Any, url: str) -> dict[str, int]:
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return {name.removeprefix("ApproximateNumberOfMessages") or "Visible": int(attributes[name]) for name in names}


def test_a_delayed_hint_stays_hidden_until_its_time(queue: tuple[Any, str]) -> None:
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=Hint(GROUP, "notification", END.isoformat()).to_json())
    [message] = sqs.receive_message(QueueUrl=url)["Messages"]
    retry = SqsHintRetry(url, client=sqs)

    # When it is hidden for 30 s, it is not visible
    retry.delay(message["ReceiptHandle"], 30)
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []
    assert counts(sqs, url) == {"Visible": 0, "NotVisible": 1, "Delayed": 0}

    # and when its time is brought to now, it comes back (the same message, never a copy)
    retry.delay(message["ReceiptHandle"], 0)
    [again] = sqs.receive_message(QueueUrl=url)["Messages"]
    assert again["MessageId"] == message["MessageId"]


def test_a_resent_hint_is_a_new_delayed_message(queue: tuple[Any, str]) -> None:
    sqs, url = queue
    hint = Hint(GROUP, "notification", END.isoformat())

    SqsHintRetry(url, client=sqs).resend(hint, 2)

    assert counts(sqs, url) == {"Visible": 0, "NotVisible": 0, "Delayed": 1}


# --------------------------------------------------------------------------- the grant store


@pytest.fixture(params=["sqlite", "dynamodb"])
def grant_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "sqlite":
        store = SqliteStateStore(tmp_path / "state.db")
        yield store
        store.close()
    else:
        request.getfixturevalue("aws")
        client = boto3.client("dynamodb")
        client.create_table(**table_definition("idsync-state"))
        yield DynamoDbStateStore("idsync-state", client=client)


def test_grants_are_stored_per_group_and_user(grant_store: Any) -> None:
    assert isinstance(grant_store, GrantStore)
    ada = AccessGrant(GROUP, ADA, ("i1", "i2"), END, False, "2030-01-01T12:00:00+00:00")
    bob = AccessGrant(GROUP, BOB, ("i3",), None, True, "2030-01-01T12:00:00+00:00")
    other = AccessGrant("9b2c4d6e-1f3a-4b5c-8d7e-6f5a4b3c2d1e", ADA, ("i4",), END, False, "x")
    for grant in (ada, bob, other):
        grant_store.record_grant(grant)

    assert grant_store.grants(GROUP) == {ADA: ada, BOB: bob}
    assert grant_store.grant(GROUP, ADA) == ada
    grant_store.forget_grant(GROUP, ADA)
    assert grant_store.grant(GROUP, ADA) is None
    assert grant_store.grants(GROUP) == {BOB: bob}


def test_owned_objects_are_read_one_at_a_time(grant_store: Any) -> None:
    user = OwnedUser(ADA, "u-1", "ada@contoso.example", {"DisplayName": "Ada"}, "m-1", "fp")
    group = OwnedGroup(GROUP, "g-1", "AWS PIM Production Admin", None, "fp")
    grant_store.record_user(user)
    grant_store.record_group(group)
    grant_store.record_membership(OwnedMembership(GROUP, ADA, "mem-1"))
    grant_store.record_membership(OwnedMembership(GROUP, BOB, "mem-2"))
    # a group whose id starts like the first one must not leak into its memberships
    grant_store.record_membership(OwnedMembership(GROUP + "0", ADA, "mem-3"))

    assert grant_store.owned_user(ADA) == user
    assert grant_store.owned_user(BOB) is None
    assert grant_store.owned_group(GROUP) == group
    assert grant_store.owned_memberships(GROUP) == {
        ADA: OwnedMembership(GROUP, ADA, "mem-1"),
        BOB: OwnedMembership(GROUP, BOB, "mem-2"),
    }


def test_a_malformed_stored_grant_names_its_attribute(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    store.record_grant(AccessGrant(GROUP, ADA, (), None, False, "x"))
    with store._connection() as conn:
        conn.execute("UPDATE grants SET doc = ?", (json.dumps({"group_id": GROUP, "user_id": ADA, "end": "soon"}),))

    with pytest.raises(ValueError, match=f"grant {GROUP}/{ADA}: attribute 'instance_ids' is missing"):
        store.grants(GROUP)
    store.close()


# --------------------------------------------------------------------------- Graph


@pytest.fixture
def emulator() -> Iterator[GraphEmulator]:
    tenant = Tenant()
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    tenant.add_group("AWS PIM Production Admin", id=GROUP)
    tenant.add_user(id=ADA, userPrincipalName="ada@contoso.example", displayName="Ada Lovelace", givenName="Ada")
    tenant.add_user(id=BOB, userPrincipalName="bob@contoso.example", displayName="Bob Dylan", manager=ADA)
    with GraphEmulator(tenant) as emu:
        yield emu


@pytest.fixture
def pim(emulator: GraphEmulator) -> GraphPim:
    client = GraphClient(GraphSettings(**emulator.graph_config(), client_secret=CLIENT_SECRET), CLIENT_SECRET)
    return GraphPim(client, frozenset({"displayName", "givenName", "userPrincipalName"}), expand_manager=True)


def test_members_and_instances_are_read_as_graph_serves_them(emulator: GraphEmulator, pim: GraphPim) -> None:
    # Given Ada activated and Bob holds an active (permanent) assignment
    emulator.app.pim.activate(GROUP, ADA, 60)
    emulator.app.pim.assign(GROUP, BOB)

    assert pim.members(GROUP) == {ADA, BOB}
    found = {i.principal_id: i for i in pim.instances(GROUP)}
    assert found[ADA].assignment_type == "activated"
    assert found[ADA].access_id == "member"
    assert found[ADA].end is not None
    assert found[ADA].start is not None
    assert found[ADA].end - found[ADA].start == timedelta(minutes=60)
    assert found[BOB].assignment_type == "assigned"
    assert found[BOB].end is None
    # and the principal filter narrows to one user, as the expiry asks
    assert [i.principal_id for i in pim.instances(GROUP, BOB)] == [BOB]
    assert "$filter=groupId eq '" + GROUP + "' and principalId eq '" + BOB + "'" in " ".join(emulator.log)


def test_a_user_is_read_with_the_mapped_properties_and_the_manager_id(pim: GraphPim) -> None:
    assert pim.user(BOB) == {
        "id": BOB,
        "displayName": "Bob Dylan",
        "givenName": None,
        "userPrincipalName": "bob@contoso.example",
        "manager": {"id": ADA},
    }
    assert pim.user("00000000-0000-4000-8000-000000000000") is None


def test_an_instance_with_a_bad_date_names_the_attribute() -> None:
    with pytest.raises(DirectoryError, match=r"instance 'i1': attribute endDateTime .* is not an ISO 8601"):
        parse_instance(
            {"id": "i1", "principalId": ADA, "groupId": GROUP, "accessId": "member", "endDateTime": "tomorrow"}
        )
    with pytest.raises(DirectoryError, match="attribute principalId is missing"):
        parse_instance({"id": "i1", "groupId": GROUP, "accessId": "member"})
