"""The fakes the PIM tests rest on behave like the services they stand for, in the ways that matter to PIM:
the same cases run against the in-memory fake and against moto (EventBridge Scheduler, with the emulator's
firing; DynamoDB) and SQLite. A fired one-time schedule is deleted; a conditional write can lose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from idsync.adapters.dynamodb_state import DynamoDbStateStore, table_definition
from idsync.adapters.scheduler import EventBridgeExpiryScheduler
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.errors import LeaseLost, StateError
from idsync.model import LogEntry, OwnedGroup, OwnedMembership, OwnedUser, Status
from idsync.ports import AccessGrant, GrantStore, GroupRecords, StateStore
from idsync.services.jit import GroupLease
from sandbox.moto_ext import fire_due_schedules
from tests.fakes import FakeClock, FakeScheduler, FakeState, JitState

GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"
BOB = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
END = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)  # a whole minute: the fake and the real fire at the same instant
SCHEDULE_GROUP = "idsync-expiry"


class Store(StateStore, GrantStore):
    """What the adapters and the fake all are: the state store and the grant store in one."""


class Schedules:
    """One expiry scheduler and a way to let time pass over it (EventBridge fires what is due)."""

    def __init__(self, scheduler: Any, fire: Callable[[datetime], list[tuple[str, str]]]) -> None:
        self.scheduler = scheduler
        self.fire = fire


@pytest.fixture(params=["fake", "moto"])
def schedules(request: pytest.FixtureRequest) -> Schedules:
    if request.param == "fake":
        fake = FakeScheduler()
        return Schedules(fake, lambda now: [fake.fire(s) for s in fake.due(now)])
    request.getfixturevalue("aws")
    client = boto3.client("scheduler")
    client.create_schedule_group(Name=SCHEDULE_GROUP)
    real = EventBridgeExpiryScheduler(
        SCHEDULE_GROUP,
        "arn:aws:lambda:us-east-1:123456789012:function:x",
        "arn:aws:iam::123456789012:role/s",
        client=client,
    )

    def fire(now: datetime) -> list[tuple[str, str]]:
        return [(e["group_id"], e["user_id"]) for e in fire_due_schedules(client, SCHEDULE_GROUP, now)]

    return Schedules(real, fire)


def test_a_one_time_schedule_fires_once_at_its_time_and_is_then_gone(schedules: Schedules) -> None:
    schedules.scheduler.set(GROUP, ADA, END)
    assert schedules.fire(END - timedelta(minutes=1)) == []
    assert schedules.fire(END) == [(GROUP, ADA)]
    # deleted once fired: nothing fires again, and clearing it is no error
    assert schedules.fire(END + timedelta(hours=1)) == []
    schedules.scheduler.clear(GROUP, ADA, END)


def test_setting_a_fired_schedule_again_arms_it_again(schedules: Schedules) -> None:
    schedules.scheduler.set(GROUP, ADA, END)
    assert schedules.fire(END) == [(GROUP, ADA)]
    later = END + timedelta(minutes=5)
    schedules.scheduler.set(GROUP, ADA, later)
    assert schedules.fire(later) == [(GROUP, ADA)]


def test_set_twice_fires_once_and_a_moved_schedule_fires_only_at_its_new_time(schedules: Schedules) -> None:
    schedules.scheduler.set(GROUP, ADA, END)
    schedules.scheduler.set(GROUP, ADA, END)
    assert schedules.fire(END) == [(GROUP, ADA)]
    schedules.scheduler.set(GROUP, ADA, END + timedelta(hours=1))
    schedules.scheduler.set(GROUP, ADA, END + timedelta(hours=2), END + timedelta(hours=1))
    assert schedules.fire(END + timedelta(hours=1, minutes=30)) == []
    assert schedules.fire(END + timedelta(hours=2)) == [(GROUP, ADA)]


# --------------------------------------------------------------------------- the group lease


@pytest.fixture(params=["fake", "sqlite", "dynamodb"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens one more handle on the same store (two writers)."""
    if request.param == "fake":
        shared = JitState()
        yield lambda: shared
    elif request.param == "sqlite":
        opened: list[SqliteStateStore] = []

        def open_sqlite() -> Store:
            opened.append(SqliteStateStore(tmp_path / "state.db"))
            return opened[-1]

        yield open_sqlite
        for store in opened:
            store.close()
    else:
        request.getfixturevalue("aws")
        client = boto3.client("dynamodb")
        client.create_table(**table_definition("idsync-state"))
        yield lambda: DynamoDbStateStore("idsync-state", client=client)


def test_a_writer_whose_lease_was_taken_over_cannot_write(stores: Callable[[], Store]) -> None:
    clock = FakeClock(END)
    first = GroupLease(stores(), GROUP, clock, 60)
    second = GroupLease(stores(), GROUP.upper(), clock, 60)  # the same group, however Graph spelled it
    assert first.acquire()
    first.keep()
    assert not second.acquire()
    # the first writer stalls past its lease; the second takes over
    clock.advance(61)
    assert second.acquire()
    with pytest.raises(LeaseLost):
        first.keep()
    # the stale writer's release leaves the new holder's lease alone
    first.release()
    assert not GroupLease(stores(), GROUP, clock, 60).acquire()
    second.release()
    assert GroupLease(stores(), GROUP, clock, 60).acquire()


def test_a_conditional_write_that_loses_the_race_holds_nothing(stores: Callable[[], Store]) -> None:
    clock = FakeClock(END)
    store = stores()
    loser = GroupLease(store, GROUP, clock, 60)
    if isinstance(store, FakeState):
        store.lose_lease_races = 1  # the fake's stand-in for another writer's write landing first
    else:
        assert GroupLease(stores(), GROUP, clock, 60).acquire()  # another writer's write lands first
    assert not loser.acquire()
    with pytest.raises(LeaseLost):
        loser.keep()


# --------------------------------------------------------------------------- writes fenced by the lease


def _grant(user: str, note: str) -> AccessGrant:
    return AccessGrant(GROUP, user, ("i1",), END, False, note)


def test_a_fenced_write_lands_while_its_writer_holds_the_lease_and_never_after(stores: Callable[[], Store]) -> None:
    clock = FakeClock(END)
    first = GroupLease(stores(), GROUP, clock, 60)
    assert first.acquire()
    writes = stores().fenced(first.name, first.owner)
    writes.record_grant(_grant(ADA, "first"))
    writes.record_membership(OwnedMembership(GROUP, ADA, "m-1"))
    writes.put_item("intent", {"kind": "user"})
    clock.advance(61)  # lapsed, but nobody took it over: nobody else can have read or written meanwhile
    writes.forget_grant(GROUP, "nobody")
    second = GroupLease(stores(), GROUP, clock, 60)
    assert second.acquire()
    store = stores()
    for write in (
        lambda: writes.record_grant(_grant(ADA, "stale")),
        lambda: writes.forget_grant(GROUP, ADA),
        lambda: writes.record_membership(OwnedMembership(GROUP, BOB, "m-2")),
        lambda: writes.forget_membership(GROUP, ADA),
        lambda: writes.record_user(OwnedUser(BOB, "u-2", "bob", {}, None, "")),
        lambda: writes.put_item("intent", {"kind": "stale"}),
        lambda: writes.delete_item("intent"),
    ):
        with pytest.raises(LeaseLost):
            write()
    # a refused write changed nothing: the transaction's check and its write stand or fall together
    assert store.grant(GROUP, ADA) == _grant(ADA, "first")
    assert store.owned_memberships(GROUP) == {ADA: OwnedMembership(GROUP, ADA, "m-1")}
    assert store.owned_user(BOB) is None
    assert store.get_item("intent") == {"kind": "user"}
    # the new holder's own writes land; once it released the lease, the stale writer's still do not
    stores().fenced(second.name, second.owner).record_grant(_grant(ADA, "second"))
    second.release()
    with pytest.raises(LeaseLost):
        writes.record_grant(_grant(ADA, "stale"))
    assert store.grant(GROUP, ADA) == _grant(ADA, "second")


def test_a_fenced_view_reads_what_the_store_holds(stores: Callable[[], Store]) -> None:
    clock = FakeClock(END)
    lease = GroupLease(stores(), GROUP, clock, 60)
    assert lease.acquire()
    stores().record_grant(_grant(ADA, "unfenced"))
    view = stores().fenced(lease.name, lease.owner)
    assert view.grants(GROUP) == {ADA: _grant(ADA, "unfenced")}
    assert view.owned_user(ADA) is None


def _cancelled(stubber: Stubber, *reasons: str) -> None:
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        service_message=f"Transaction cancelled, please refer cancellation reasons for specific reasons [{reasons}]",
        http_status_code=400,
        response_meta={},
        modeled_fields={"CancellationReasons": [{"Code": reason} for reason in reasons]},
    )


@pytest.mark.parametrize(
    ("answers", "raised"),
    [
        ((("ConditionalCheckFailed", "None"),), LeaseLost),  # the lease is another writer's: nothing written
        ((("None", "TransactionConflict"), ("TransactionConflict", "None"), "ok"), None),  # a race: sent again
        ((("None", "TransactionConflict"),) * 4, StateError),  # ... a few times, then the run stops
        ((("None", "ThrottlingError"),), StateError),
        ((("None", "ValidationError"),), StateError),
    ],
)
def test_a_cancelled_fenced_transaction_is_read_by_its_reasons(answers: tuple[Any, ...], raised: Any) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    store = DynamoDbStateStore("idsync-state", client=client).fenced("pim:g", "me")
    with Stubber(client) as stubber:
        for answer in answers:
            if answer == "ok":
                stubber.add_response("transact_write_items", {})
            else:
                _cancelled(stubber, *answer)
        if raised is None:
            store.record_grant(_grant(ADA, "x"))
        else:
            with pytest.raises(raised) as caught:
                store.record_grant(_grant(ADA, "x"))
            assert type(caught.value) is raised  # a throttled or conflicting write is no lost lease
        stubber.assert_no_pending_responses()


def _in_transaction(stubber: Stubber, operation: str) -> None:
    stubber.add_client_error(
        operation,
        service_error_code="TransactionConflictException",
        service_message="Transaction is ongoing for the item",
        http_status_code=400,
    )


@pytest.mark.parametrize(("conflicts", "held"), [(1, True), (3, True), (4, False)])
def test_a_lease_write_that_meets_a_holders_transaction_is_tried_again_then_read_as_held(
    conflicts: int, held: bool
) -> None:
    """DynamoDB refuses a single write to an item a transaction is applying, and the holder's fenced transactions
    name the lease item: taking the lease then means another writer holds it (False, look again later), never a
    failed run; renewing it is tried again, then fails as any state error does; a release leaves it to expire."""
    client = boto3.client("dynamodb", region_name="us-east-1")
    store = DynamoDbStateStore("idsync-state", client=client)
    now = datetime(2030, 1, 1, tzinfo=UTC)
    with Stubber(client) as stubber:
        for _ in range(min(conflicts, 4)):
            _in_transaction(stubber, "put_item")
        if held:
            stubber.add_response("put_item", {})
        assert store.acquire_lease("pim:g", "me", now, 60) is held
        stubber.assert_no_pending_responses()
    with Stubber(client) as stubber:
        for _ in range(min(conflicts, 4)):
            _in_transaction(stubber, "put_item")
        if held:
            stubber.add_response("put_item", {})
            assert store.renew_lease("pim:g", "me", now, 60) is True
        else:
            with pytest.raises(StateError):
                store.renew_lease("pim:g", "me", now, 60)
        stubber.assert_no_pending_responses()
    with Stubber(client) as stubber:
        for _ in range(min(conflicts, 4)):
            _in_transaction(stubber, "delete_item")
        if held:
            stubber.add_response("delete_item", {})
        store.release_lease("pim:g", "me")
        stubber.assert_no_pending_responses()


def test_the_group_and_the_users_of_a_run_are_read_together(stores: Callable[[], Store]) -> None:
    store = stores()
    group = OwnedGroup(GROUP, "tg", "AWS PIM Production Admin", None, "f")
    users = [OwnedUser(f"u{n:03d}", f"t{n:03d}", f"user{n:03d}", {"n": n}, None, "f") for n in range(150)]
    store.record_group(group)
    for owned in users:
        store.record_user(owned)
    wanted = [u.source_id for u in users] + ["not-owned", users[0].source_id]  # past BatchGetItem's 100 keys
    found_group, found = store.owned_for(GROUP, wanted)
    assert found_group == group
    assert found == {u.source_id: u for u in users}
    assert store.owned_for("another-group", [ADA]) == (None, {})


def _entries(count: int, status: Status = Status.SUCCESS) -> list[LogEntry]:
    moment = datetime.now(UTC).replace(microsecond=0)
    return [
        LogEntry("jit-1", f"jit-1-{n:06d}", moment.isoformat(), "membership", "create", status, ADA, "x")
        for n in range(count)
    ]


@pytest.mark.parametrize(("count", "status"), [(0, Status.SUCCESS), (2, Status.FAILURE), (60, Status.FAILURE)])
def test_the_last_write_of_a_run_stores_its_logs_and_releases_its_lease(
    stores: Callable[[], Store], count: int, status: Status
) -> None:
    clock = FakeClock(END)
    lease = GroupLease(stores(), GROUP, clock, 60)
    assert lease.acquire()
    stores().append_logs_and_release(_entries(count, status), lease.name, lease.owner)
    assert len(stores().query_logs("jit-1", limit=1000)) == count  # 60 failures: 120 items, past one transaction
    assert GroupLease(stores(), GROUP, clock, 60).acquire(), "released"


def test_the_last_write_of_a_run_whose_lease_was_taken_over_stores_its_logs_and_leaves_the_lease(
    stores: Callable[[], Store],
) -> None:
    clock = FakeClock(END)
    stale = GroupLease(stores(), GROUP, clock, 60)
    assert stale.acquire()
    clock.advance(61)
    holder = GroupLease(stores(), GROUP, clock, 60)
    assert holder.acquire()
    stores().append_logs_and_release(_entries(2), stale.name, stale.owner)
    assert len(stores().query_logs("jit-1")) == 2  # what the stale writer did is on record all the same
    assert not GroupLease(stores(), GROUP, clock, 60).acquire(), "the new holder keeps its lease"


def test_a_runs_reads_come_back_together_as_each_read_alone_answers(stores: Callable[[], Store]) -> None:
    store = stores()
    group = OwnedGroup(GROUP, "tg", "AWS PIM Production Admin", None, "f")
    ada = OwnedUser(ADA, "ta", "ada", {}, None, "f")
    store.record_group(group)
    store.record_user(ada)
    store.record_membership(OwnedMembership(GROUP, ADA, "m-1"))
    store.record_membership(OwnedMembership("another-group", BOB, "m-2"))
    store.record_grant(_grant(ADA, "a"))
    store.record_grant(AccessGrant("another-group", BOB, ("i9",), END, False, "b"))
    read = stores().read_group(GROUP, [ADA, BOB])
    assert read == GroupRecords({ADA: _grant(ADA, "a")}, {ADA: OwnedMembership(GROUP, ADA, "m-1")}, group, {ADA: ada})
    assert stores().read_group("nothing", []) == GroupRecords({}, {}, None, {})
