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

from idsync.adapters.dynamodb_state import DynamoDbStateStore, table_definition
from idsync.adapters.scheduler import EventBridgeExpiryScheduler
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.errors import LeaseLost
from idsync.ports import StateStore
from idsync.services.jit import GroupLease
from sandbox.moto_ext import fire_due_schedules
from tests.fakes import FakeClock, FakeScheduler, FakeState

GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"
END = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)  # a whole minute: the fake and the real fire at the same instant
SCHEDULE_GROUP = "idsync-expiry"


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
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """Opens one more handle on the same store (two writers)."""
    if request.param == "fake":
        shared = FakeState()
        yield lambda: shared
    elif request.param == "sqlite":
        opened: list[SqliteStateStore] = []

        def open_sqlite() -> StateStore:
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


def test_a_writer_whose_lease_was_taken_over_cannot_write(stores: Callable[[], StateStore]) -> None:
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


def test_a_conditional_write_that_loses_the_race_holds_nothing(stores: Callable[[], StateStore]) -> None:
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
