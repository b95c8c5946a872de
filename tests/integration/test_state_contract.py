"""One contract for ``ports.StateStore``, run against the SQLite file and the DynamoDB table (moto)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.dynamodb.models import DynamoDBBackend

from idsync.adapters import dynamodb_state
from idsync.adapters.dynamodb_state import (
    LOOKUPS_DRAIN,
    LOOKUPS_ITEM,
    TABLE_SCHEMA,
    DynamoDbStateStore,
    table_definition,
)
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.errors import StateError
from idsync.model import (
    AttributeChange,
    LogEntry,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Ownership,
    Status,
)
from idsync.ports import StateStore
from tests.fakes import FakeState

REGION = "eu-west-1"
TABLE = "idsync-state"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
PLUS_2H = timezone(timedelta(hours=2))

OpenStore = Callable[..., StateStore]


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def dynamodb(aws_credentials: None) -> Iterator[Any]:
    """A moto DynamoDB holding the state table exactly as ``TABLE_SCHEMA`` states it, TTL on."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(**table_definition(TABLE))
        client.update_time_to_live(
            TableName=TABLE,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]},
        )
        yield client


@pytest.fixture(params=["sqlite", "dynamodb"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a new store object on the same file or table each call (a restart after a crash)."""
    if request.param == "sqlite":
        opened: list[SqliteStateStore] = []

        def open_sqlite(**options: Any) -> StateStore:
            opened.append(SqliteStateStore(tmp_path / "nested" / "dir" / "state.db", **options))
            return opened[-1]

        yield open_sqlite
        for store in opened:
            store.close()
    else:
        request.getfixturevalue("dynamodb")

        def open_dynamodb(**options: Any) -> StateStore:
            return DynamoDbStateStore(TABLE, client=boto3.client("dynamodb", region_name=REGION), **options)

        yield open_dynamodb


@pytest.fixture
def store(open_store: OpenStore) -> StateStore:
    return open_store()


def user(source_id: str, **overrides: Any) -> OwnedUser:
    values: dict[str, Any] = {
        "source_id": source_id,
        "target_id": f"t-{source_id}",
        "user_name": f"{source_id}@example.com",
        "doc": {"DisplayName": f"User {source_id}", "Name": {"GivenName": "A", "FamilyName": source_id}},
        "manager_source_id": None,
        "fingerprint": f"fp-{source_id}",
    }
    return OwnedUser(**(values | overrides))


def log(cycle_id: str, change_id: str, minutes_ago: float, status: Status = Status.SUCCESS, **extra: Any) -> LogEntry:
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return LogEntry(
        cycle_id=cycle_id,
        change_id=change_id,
        time=moment.isoformat().replace("+00:00", "Z"),
        kind="user",
        action="create",
        status=status,
        source_id=f"src-{change_id}",
        name=f"{change_id}@example.com",
        **extra,
    )


# ---------------------------------------------------------------------------- ownership


def test_empty_store_owns_nothing(store: StateStore) -> None:
    assert store.load_ownership() == Ownership()


def test_users_round_trip_exactly(store: StateStore) -> None:
    # Given users with unicode, nesting, empty strings, numbers, booleans, a manager and none
    rich = user(
        "u1",
        user_name="zoë.ångström@example.com",
        doc={
            "DisplayName": "Zoë Ångström 日本語 🚀",
            "Name": {"GivenName": "Zoë", "FamilyName": "Ångström", "Formatted": ""},
            "Emails": [{"Value": "zoe@example.com", "Type": "work", "Primary": True}],
            "Extensions": {"aws:identitystore:enterprise": {"Department": "R&D", "Manager": {"Value": "t-u2"}}},
            "Nested": [[1, 2.5, None], {"deep": {"deeper": ["x"]}}],
        },
        manager_source_id="u2",
    )
    plain = user("u2", manager_source_id=None, fingerprint="")

    # When they are recorded
    store.record_user(rich)
    store.record_user(plain)

    # Then they come back equal, field by field
    owned = store.load_ownership()
    assert owned.users == {"u1": rich, "u2": plain}
    assert owned.users["u2"].manager_source_id is None


def test_recording_again_replaces(store: StateStore) -> None:
    store.record_user(user("u1"))
    store.record_user(user("u1", target_id="t-new", doc={"DisplayName": "Renamed"}, manager_source_id="m"))
    store.record_group(OwnedGroup("g1", "tg-1", "Admins", "first", "fp1"))
    store.record_group(OwnedGroup("g1", "tg-1", "Admins", None, "fp2"))
    store.record_membership(OwnedMembership("g1", "u1", "m-1"))
    store.record_membership(OwnedMembership("g1", "u1", "m-2"))

    owned = store.load_ownership()

    assert owned.users == {"u1": user("u1", target_id="t-new", doc={"DisplayName": "Renamed"}, manager_source_id="m")}
    assert owned.groups == {"g1": OwnedGroup("g1", "tg-1", "Admins", None, "fp2")}
    assert owned.memberships == {("g1", "u1"): OwnedMembership("g1", "u1", "m-2")}


def test_groups_and_memberships_round_trip(store: StateStore) -> None:
    groups = [
        OwnedGroup("g1", "tg-1", "Ops — Bereitschaft", "on call: ÄÖÜ", "fp1"),
        OwnedGroup("g2", "tg-2", "No description", None, "fp2"),
        OwnedGroup("g3", "tg-3", "Empty description", "", ""),
    ]
    memberships = [
        OwnedMembership("g1", "u1", "m-11"),
        OwnedMembership("g1", "u2", "m-12"),
        OwnedMembership("g2", "u1", "m-21"),
    ]
    for group in groups:
        store.record_group(group)
    for membership in memberships:
        store.record_membership(membership)

    owned = store.load_ownership()

    assert owned.groups == {group.source_id: group for group in groups}
    assert owned.memberships == {(m.group_source_id, m.user_source_id): m for m in memberships}
    assert owned.group_target("g2") == "tg-2"


def test_forget_removes_only_the_named_object(store: StateStore) -> None:
    store.record_user(user("u1"))
    store.record_user(user("u2"))
    store.record_group(OwnedGroup("g1", "tg-1", "One"))
    store.record_group(OwnedGroup("g2", "tg-2", "Two"))
    store.record_membership(OwnedMembership("g1", "u1", "m-11"))
    store.record_membership(OwnedMembership("g1", "u2", "m-12"))

    store.forget_user("u1")
    store.forget_group("g2")
    store.forget_membership("g1", "u2")
    # forgetting what is not recorded is no error
    store.forget_user("missing")
    store.forget_group("missing")
    store.forget_membership("g1", "missing")

    owned = store.load_ownership()
    assert set(owned.users) == {"u2"}
    assert set(owned.groups) == {"g1"}
    assert set(owned.memberships) == {("g1", "u1")}


def test_a_new_store_after_a_crash_sees_every_write(open_store: OpenStore) -> None:
    # Given a store that records everything and is never closed (the process dies)
    first = open_store()
    first.record_user(user("u1", manager_source_id="u2"))
    first.record_user(user("u2"))
    first.record_group(OwnedGroup("g1", "tg-1", "One", "d", "fp"))
    first.record_membership(OwnedMembership("g1", "u1", "m-11"))
    first.forget_user("u2")
    first.put_item("delta/users", {"link": "https://graph.example/delta?$deltatoken=abc"})
    first.append_logs([log("c1", "x1", 1)])

    # When a new store object opens the same file or table
    second = open_store()

    # Then it holds exactly what the first one wrote
    assert second.load_ownership() == first.load_ownership()
    assert set(second.load_ownership().users) == {"u1"}
    assert second.get_item("delta/users") == {"link": "https://graph.example/delta?$deltatoken=abc"}
    assert [doc["changeId"] for doc in second.query_logs()] == ["x1"]


def test_a_batch_of_ownership_writes_applies_in_order_the_last_write_of_a_key_winning(
    open_store: OpenStore,
) -> None:
    from idsync.ports import Forget

    store = open_store()
    store.record_user(user("gone"))
    store.record_membership(OwnedMembership("g0", "gone", "m-old"))
    # Given a batch larger than one BatchWriteItem, that records, replaces and forgets, a key twice over
    writes: list[Any] = [user(f"u{i}") for i in range(40)]
    writes += [OwnedGroup("g1", "t-g1", "Team 1", None, "fp"), OwnedMembership("g1", "u1", "m-1")]
    writes += [user("u2", user_name="renamed@example.com"), Forget("user", ("u3",)), user("u3", target_id="t-again")]
    writes += [Forget("user", ("gone",)), Forget("membership", ("g0", "gone")), Forget("membership", ("g1", "u1"))]
    writes += [OwnedMembership("g1", "u1", "m-2")]
    store.write_ownership(writes)
    # Then a store opened afresh sees each key as its last write left it
    owned = open_store().load_ownership()
    assert set(owned.users) == {f"u{i}" for i in range(40)}
    assert owned.users["u2"].user_name == "renamed@example.com"
    assert owned.users["u3"].target_id == "t-again"
    assert owned.groups["g1"].display_name == "Team 1"
    assert dict(owned.memberships) == {("g1", "u1"): OwnedMembership("g1", "u1", "m-2")}
    store.write_ownership([])


def test_a_batch_with_a_doc_that_is_not_json_is_refused_with_its_name(store: StateStore) -> None:
    with pytest.raises(ValueError, match=r"bad@example\.com"):
        store.write_ownership([user("ok"), user("bad", user_name="bad@example.com", doc={"X": object()})])


def test_unprocessed_batch_items_are_retried_until_stored(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given DynamoDB leaving part of each of the first two batches unprocessed (throttled)
    store = DynamoDbStateStore(TABLE, client=dynamodb)
    answer = dynamodb.batch_write_item
    left = {"times": 2}

    def partly(**request: Any) -> dict[str, Any]:
        items = request["RequestItems"][TABLE]
        if left["times"] and len(items) > 1:
            left["times"] -= 1
            answer(RequestItems={TABLE: items[:1]})
            return {"UnprocessedItems": {TABLE: items[1:]}}
        return dict(answer(**request))

    monkeypatch.setattr(dynamodb, "batch_write_item", partly)
    monkeypatch.setattr("idsync.adapters.dynamodb_state.time.sleep", lambda _s: None)
    store.write_ownership([user(f"u{i}") for i in range(30)])
    # Then every write is stored in the end
    assert set(store.load_ownership().users) == {f"u{i}" for i in range(30)}
    assert left["times"] == 0


def test_a_doc_that_is_not_json_is_refused_with_its_name(store: StateStore) -> None:
    with pytest.raises(ValueError, match=r"user bad@example.com \[u9\]: attribute doc: must hold only JSON"):
        store.record_user(user("u9", user_name="bad@example.com", doc={"Tags": {"a", "b"}}))
    assert store.load_ownership().users == {}


@pytest.mark.parametrize("open_store", ["sqlite", pytest.param("dynamodb", marks=pytest.mark.slow)], indirect=True)
def test_load_ownership_at_scale(store: StateStore) -> None:
    # Given 5,000 users (several 1 MB DynamoDB pages) and 10,000 memberships
    doc = {"DisplayName": "x" * 200, "Name": {"GivenName": "G", "FamilyName": "F"}}
    for n in range(5_000):
        store.record_user(user(f"u{n:05d}", doc=doc))
    for n in range(10_000):
        store.record_membership(OwnedMembership(f"g{n % 100:03d}", f"u{n // 2:05d}", f"m{n}"))

    owned = store.load_ownership()

    assert len(owned.users) == 5_000
    assert owned.users["u04999"] == user("u04999", doc=doc)
    assert len(owned.memberships) == 10_000
    assert owned.memberships[("g099", "u04999")] == OwnedMembership("g099", "u04999", "m9999")


# ---------------------------------------------------------------------------- named documents


def test_items_put_get_replace_delete(open_store: OpenStore) -> None:
    store = open_store()
    assert store.get_item("checkpoint") is None

    document = {
        "cycle": "c1",
        "done": ["u1", "u2"],
        "cursor": {"page": 3, "token": "ä€"},
        "empty": "",
        "n": 1.5,
    }
    store.put_item("checkpoint", document)
    assert store.get_item("checkpoint") == document
    assert open_store().get_item("checkpoint") == document

    store.put_item("checkpoint", {"cycle": "c2"})
    assert store.get_item("checkpoint") == {"cycle": "c2"}

    store.delete_item("checkpoint")
    store.delete_item("never-written")
    assert store.get_item("checkpoint") is None


def test_an_item_that_is_not_json_is_refused_with_its_name(store: StateStore) -> None:
    with pytest.raises(ValueError, match=r"item run/c1: attribute value: must hold only JSON values"):
        store.put_item("run/c1", {"started": object()})


# ---------------------------------------------------------------------------- provisioning log


def test_logs_newest_first_filtered_by_cycle_status_and_limit(store: StateStore) -> None:
    # Given two cycles with successes, failures and a skip, appended out of order
    change = AttributeChange("DisplayName", "Old", {"nested": ["new", None]})
    entries = [
        log("c1", "a", 50),
        log("c1", "b", 40, Status.FAILURE, error="ConflictException: userName taken"),
        log("c1", "c", 30, modified=(change,), target_id="t-c", duration_ms=12.3456),
        log("c2", "d", 20, Status.FAILURE, error="ThrottlingException"),
        log("c2", "e", 10, Status.SKIPPED),
        log("c2", "f", 5),
    ]
    store.append_logs(entries[3:])
    store.append_logs(entries[:3])
    store.append_logs([])

    def changes(docs: list[dict[str, Any]]) -> list[str]:
        return [doc["changeId"] for doc in docs]

    # Then every query answers newest first, as the entries' own documents
    assert store.query_logs() == [entry.as_dict() for entry in reversed(entries)]
    assert changes(store.query_logs(cycle_id="c1")) == ["c", "b", "a"]
    assert changes(store.query_logs(status="failure")) == ["d", "b"]
    assert changes(store.query_logs(status=Status.SKIPPED)) == ["e"]
    assert changes(store.query_logs(status="success")) == ["f", "c", "a"]
    assert changes(store.query_logs(cycle_id="c2", status="failure")) == ["d"]
    assert changes(store.query_logs(cycle_id="c1", status="success")) == ["c", "a"]
    assert changes(store.query_logs(cycle_id="c3")) == []
    assert changes(store.query_logs(limit=2)) == ["f", "e"]
    assert changes(store.query_logs(status="success", limit=2)) == ["f", "c"]
    assert changes(store.query_logs(cycle_id="c1", limit=1)) == ["c"]


def test_logs_order_by_instant_whatever_the_offset(store: StateStore) -> None:
    # Given three instants one second apart, written in UTC, at +02:00 and without an offset
    base = datetime.now(UTC) - timedelta(hours=1)
    entry = log("c1", "template", 0)
    store.append_logs(
        [
            replace(entry, change_id="utc", time=base.isoformat()),
            replace(entry, change_id="plus2h", time=(base + timedelta(seconds=1)).astimezone(PLUS_2H).isoformat()),
            replace(entry, change_id="naive", time=(base + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.%f")),
        ]
    )

    # Then they come back in the order of the instants, not of the text
    assert [doc["changeId"] for doc in store.query_logs()] == ["naive", "plus2h", "utc"]


def test_expired_logs_are_left_out(open_store: OpenStore) -> None:
    # Given entries 40 days, 20 days and 1 minute old, kept for 30 days
    store = open_store()
    store.append_logs([log("c1", "old", 40 * 24 * 60), log("c1", "mid", 20 * 24 * 60), log("c1", "new", 1)])
    store.append_logs([log("c1", "old-failure", 40 * 24 * 60, Status.FAILURE)])

    assert [doc["changeId"] for doc in store.query_logs()] == ["new", "mid"]
    assert [doc["changeId"] for doc in store.query_logs(cycle_id="c1")] == ["new", "mid"]
    assert store.query_logs(status="failure") == []
    assert store.query_logs(cycle_id="c1", status="failure") == []
    # a store kept for 10 days sees only the newest
    assert [doc["changeId"] for doc in open_store(log_retention_days=10).query_logs()] == ["new"]


def test_a_log_time_that_is_not_iso_is_refused_with_its_name(store: StateStore) -> None:
    bad = replace(log("c7", "x7", 0), time="yesterday")
    with pytest.raises(ValueError, match=r"log entry x7 of cycle c7: attribute time \('yesterday'\): must be an ISO"):
        store.append_logs([bad])


def test_a_limit_below_one_is_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="limit 0: must be at least 1"):
        store.query_logs(limit=0)


# ---------------------------------------------------------------------------- leases


def test_lease_free_held_renewed_expired_released(store: StateStore) -> None:
    # a free lease is taken
    assert store.acquire_lease("sync", "a", T0, 60) is True
    # held by a, unexpired: b is refused
    assert store.acquire_lease("sync", "b", T0 + timedelta(seconds=30), 60) is False
    # a renews at +50 s, so the lease now runs to +110 s
    assert store.acquire_lease("sync", "a", T0 + timedelta(seconds=50), 60) is True
    assert store.acquire_lease("sync", "b", T0 + timedelta(seconds=100), 60) is False
    # expired: b takes it over, and a is refused now
    assert store.acquire_lease("sync", "b", T0 + timedelta(seconds=111), 60) is True
    assert store.acquire_lease("sync", "a", T0 + timedelta(seconds=112), 60) is False
    # leases are independent by name
    assert store.acquire_lease("subscriptions", "a", T0 + timedelta(seconds=112), 60) is True
    # release by the wrong owner does nothing
    store.release_lease("sync", "a")
    assert store.acquire_lease("sync", "a", T0 + timedelta(seconds=113), 60) is False
    # release by the holder frees it at once
    store.release_lease("sync", "b")
    assert store.acquire_lease("sync", "a", T0 + timedelta(seconds=114), 60) is True
    # releasing a lease that is not held is no error
    store.release_lease("never-taken", "a")


def test_lease_taken_over_only_after_expiry_and_a_renewal_is_fenced(store: StateStore) -> None:
    assert store.acquire_lease("pim:g", "a", T0, 60) is True
    # at exactly its expiry the lease is still a's (DynamoDB takes over once expires < now)
    assert store.acquire_lease("pim:g", "b", T0 + timedelta(seconds=60), 60) is False
    # a renews a lease that expired while nobody took it over
    assert store.renew_lease("pim:g", "a", T0 + timedelta(seconds=70), 60) is True
    # b takes over after expiry, writes, releases: a's renewal now fails although the lease is free
    assert store.acquire_lease("pim:g", "b", T0 + timedelta(seconds=131), 60) is True
    assert store.renew_lease("pim:g", "a", T0 + timedelta(seconds=132), 60) is False
    store.release_lease("pim:g", "b")
    assert store.renew_lease("pim:g", "a", T0 + timedelta(seconds=133), 60) is False
    # a lease never taken cannot be renewed
    assert store.renew_lease("never-taken", "a", T0, 60) is False


@pytest.fixture
def atomic_moto_put(monkeypatch: pytest.MonkeyPatch) -> None:
    # DynamoDB checks a condition and writes atomically; moto does not, so give it that guarantee
    lock = threading.Lock()
    original = DynamoDBBackend.put_item

    def put_item(self: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(self, *args, **kwargs)

    monkeypatch.setattr(DynamoDBBackend, "put_item", put_item)


@pytest.mark.usefixtures("atomic_moto_put")
def test_threads_racing_for_a_lease_one_wins(open_store: OpenStore) -> None:
    # Given eight workers, each with its own store object, released at the same instant
    workers = 8
    stores = [open_store() for _ in range(workers)]
    barrier = threading.Barrier(workers)
    results: dict[int, bool] = {}

    def race(n: int) -> None:
        barrier.wait()
        results[n] = stores[n].acquire_lease("sync", f"worker-{n}", T0, 300)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly one holds the lease
    assert sorted(results.values()) == [False] * (workers - 1) + [True]
    winner = next(n for n, won in results.items() if won)
    assert stores[0].acquire_lease("sync", f"worker-{winner}", T0 + timedelta(seconds=1), 300) is True


# ---------------------------------------------------------------------------- adapter specifics


def _race_in_process(path: str, owner: str, barrier: Any, results: Any) -> None:
    store = SqliteStateStore(path)
    barrier.wait()
    results.put((owner, store.acquire_lease("sync", owner, T0, 300)))
    store.close()


def test_sqlite_processes_racing_for_a_lease_one_wins(tmp_path: Path) -> None:
    # Given four processes on the same file, released at the same instant
    path = str(tmp_path / "state.db")
    SqliteStateStore(path).close()
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [context.Process(target=_race_in_process, args=(path, f"proc-{n}", barrier, results)) for n in range(4)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)

    # Then exactly one process won, and the file names it as the holder
    assert sorted(outcomes.values()) == [False, False, False, True]
    winner = next(owner for owner, won in outcomes.items() if won)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT owner FROM leases WHERE name = 'sync'").fetchall() == [(winner,)]


def test_sqlite_deletes_expired_log_rows(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, log_retention_days=30)
    store.append_logs([log("c1", "old", 40 * 24 * 60)])
    store.append_logs([log("c1", "new", 1)])
    store.close()

    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT doc ->> '$.changeId' FROM logs").fetchall() == [("new",)]


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStateStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")

    with pytest.raises(StateError, match=r"schema version 99 is newer"):
        SqliteStateStore(path)


def test_sqlite_unusable_path_is_a_state_error(tmp_path: Path) -> None:
    (tmp_path / "occupied").mkdir()
    with pytest.raises(StateError, match=r"state file .*occupied: cannot open"):
        SqliteStateStore(tmp_path / "occupied")


def test_dynamodb_log_items_carry_ttl_and_index_keys(dynamodb: Any) -> None:
    # Given a failure logged with a 30-day retention
    store = DynamoDbStateStore(TABLE, client=dynamodb, log_retention_days=30)
    entry = log("c1", "x1", 0, Status.FAILURE)
    store.append_logs([entry])

    # Then the table holds the entry and its status copy, both expiring 30 days after the entry
    items = {item["gsi1pk"]["S"]: item for item in dynamodb.scan(TableName=TABLE)["Items"]}
    assert set(items) == {"LOG", "LOGSTATUS#failure"}
    expected_ttl = int((datetime.fromisoformat(entry.time) + timedelta(days=30)).timestamp())
    for item in items.values():
        assert item["pk"]["S"] == "LOG#c1"
        assert int(item[TABLE_SCHEMA["ttl_attribute"]]["N"]) == expected_ttl
        assert item["gsi1sk"]["S"] == items["LOG"]["sk"]["S"]
        assert item["gsi1sk"]["S"].endswith("#x1")
    assert items["LOGSTATUS#failure"]["sk"]["S"] == "STATUS#failure#" + items["LOG"]["sk"]["S"]


def test_dynamodb_missing_table_is_a_state_error(dynamodb: Any) -> None:
    store = DynamoDbStateStore("no-such-table", client=dynamodb)

    with pytest.raises(StateError, match=r"DynamoDB table no-such-table: put_item failed"):
        store.record_group(OwnedGroup("g1", "tg-1", "One"))
    with pytest.raises(StateError, match=r"DynamoDB table no-such-table: query failed"):
        store.load_ownership()


# ---------------------------------------------------------------------------- the console's views


def test_operator_actions_and_the_console_filters_on_every_store(store: StateStore) -> None:
    from idsync.console.views import LogFilter, query_logs, record_operator_action

    store.append_logs([log("c1", "a", 30), log("c1", "b", 20, Status.FAILURE), log("c2", "c", 10)])
    now = datetime.now(UTC)
    record_operator_action(store, "arn:aws:iam::123456789012:user/ops", "quarantine clear", "quarantine", now)
    audit = query_logs(store, LogFilter(action="quarantine clear"))
    assert [(r["kind"], r["sourceIdentity"], r["name"], r["status"]) for r in audit] == [
        ("operator", "arn:aws:iam::123456789012:user/ops", "quarantine", "success")
    ]
    assert [r["changeId"] for r in query_logs(store, LogFilter(obj="B@EXAMPLE.COM"))] == ["b"]
    assert [r["changeId"] for r in query_logs(store, LogFilter(obj="src-c"))] == ["c"]
    window = LogFilter(since=now - timedelta(minutes=25), until=now - timedelta(minutes=5), limit=5)
    assert [r["changeId"] for r in query_logs(store, window)] == ["c", "b"]
    assert [r["changeId"] for r in query_logs(store, LogFilter(status="failure", action="create"))] == ["b"]


def test_active_grants_on_every_store(store: StateStore) -> None:
    from idsync.console.views import active_grants
    from idsync.model import OwnedGroup
    from idsync.ports import AccessGrant

    now = datetime.now(UTC).replace(microsecond=0)
    store.record_user(user("u1"))
    store.record_group(OwnedGroup("g1", "tg1", "PIM Admins"))
    grants = store  # the same adapters implement GrantStore
    grants.record_grant(AccessGrant("g1", "u1", ("i1",), now + timedelta(hours=1), False, now.isoformat()))  # type: ignore[attr-defined]
    grants.record_grant(AccessGrant("g1", "u2", ("i2",), None, True, now.isoformat()))  # type: ignore[attr-defined]
    grants.record_grant(AccessGrant("g1", "u3", ("i3",), now - timedelta(minutes=1), False, now.isoformat()))  # type: ignore[attr-defined]
    found = active_grants(store, ["g1", "g-unknown"], now)
    assert [(g["group"], g["user"], g["end"], g["standing"]) for g in found] == [
        ("PIM Admins", user("u1").user_name, (now + timedelta(hours=1)).isoformat(), False),
        ("PIM Admins", "u2", None, True),
    ]


def test_owned_account_assignments_survive_a_restart_and_an_emptied_group_leaves_the_index(
    open_store: OpenStore,
) -> None:
    from idsync.access import Assignment, How
    from idsync.services.access import GROUPS_KEY, OwnedAssignments, load_owned, save_owned

    ps = "arn:aws:sso:::permissionSet/ssoins-0000000000000000/ps-aaaaaaaaaaaaaaaa"
    owned = OwnedAssignments()
    created = Assignment("g1", "p1", ps, "111111111111")
    pending = Assignment("g1", "p1", ps, "222222222222")
    adopted = Assignment("g2", "p2", ps, "111111111111")
    owned.set(created, How.CREATED)
    owned.set(pending, How.PENDING)
    owned.set(adopted, How.ADOPTED)
    save_owned(open_store(), owned)
    again = open_store()
    assert load_owned(again).flat() == {created: How.CREATED, pending: How.PENDING, adopted: How.ADOPTED}
    reloaded = load_owned(again)
    reloaded.drop(adopted)
    save_owned(again, reloaded)
    third = open_store()
    assert (third.get_item(GROUPS_KEY) or {})["groups"] == ["g1"]
    assert set(load_owned(third).flat()) == {created, pending}


# ---------------------------------------------------------------------------- ownership by key (delta cycles)


class _Reads:
    """A DynamoDB client that keeps every Query's parameters."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.queries: list[dict[str, Any]] = []

    def query(self, **params: Any) -> dict[str, Any]:
        self.queries.append(params)
        return dict(self.client.query(**params))

    def get_paginator(self, name: str) -> Any:
        paginator = self.client.get_paginator(name)
        if name != "query":
            return paginator
        reads = self

        class Recording:
            def paginate(self, **params: Any) -> Any:
                reads.queries.append(params)
                return paginator.paginate(**params)

        return Recording()

    def family_reads(self) -> list[str]:
        """The user and membership families read whole (a Query of the family, not of an index)."""
        return [
            q["ExpressionAttributeValues"][":pk"]["S"]
            for q in self.queries
            if "IndexName" not in q
            and q.get("KeyConditionExpression") == "pk = :pk"
            and q["ExpressionAttributeValues"][":pk"]["S"] in ("USER", "MEMBERSHIP")
        ]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-indexed", "fake"])
def keyed_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """The adapters and the in-memory fake the unit tests use: the by-key reads must agree on all of them.
    ``dynamodb-indexed``: the table's lookup entries complete, so the lookups read ``gsi1``."""
    if request.param == "sqlite":
        sqlite_store = SqliteStateStore(tmp_path / "state.db")
        yield sqlite_store
        sqlite_store.close()
    elif request.param.startswith("dynamodb"):
        request.getfixturevalue("dynamodb")
        client = _Reads(boto3.client("dynamodb", region_name=REGION))
        indexed = DynamoDbStateStore(TABLE, client=client)
        if request.param == "dynamodb-indexed":
            indexed.put_item(LOOKUPS_ITEM, {"since": T0.isoformat(), "ready": True})
        yield indexed
    else:
        yield FakeState()


def _tenant(store: StateStore, users: int) -> Ownership:
    writes: list[Any] = [user(f"u{i}", user_name=f"user{i}@example.com") for i in range(users)]
    writes += [OwnedGroup(f"g{i}", f"tg-{i}", f"Group {i}") for i in range(3)]
    writes += [OwnedMembership(f"g{i % 3}", f"u{i}", f"m-{i}") for i in range(users)]
    writes += [OwnedMembership("g2", f"u{i}", f"m2-{i}") for i in range(0, users, 7)]
    store.write_ownership(writes)
    return store.load_ownership()


def test_ownership_read_by_key_is_the_full_ownership_filtered(keyed_store: StateStore) -> None:
    # Given 520 users (more than one BatchGetItem and one IN list), 3 groups and their memberships
    everything = _tenant(keyed_store, 520)
    wanted = {f"u{i}" for i in range(0, 520, 3)} | {"u-missing"}

    # When a delta cycle reads the records of some users and of group g1
    part = keyed_store.load_ownership_of(wanted, {"g1"})

    # Then it gets exactly their records, every group, and the memberships of those users or of g1
    assert part.users == {k: v for k, v in everything.users.items() if k in wanted}
    assert part.groups == everything.groups
    assert part.memberships == {k: v for k, v in everything.memberships.items() if k[1] in wanted or k[0] == "g1"}
    assert keyed_store.load_ownership_of((), ()) == Ownership(groups=everything.groups)


def _legacy(client: Any, store: DynamoDbStateStore, writes: list[Any]) -> None:
    """``writes`` as the version before the lookup entries wrote them: the same items, without ``gsi1``; the
    records already there are left as they are."""
    store.write_ownership(writes)
    for write in writes:
        if isinstance(write, OwnedUser):
            key = {"pk": {"S": "USER"}, "sk": {"S": write.source_id}}
        else:
            key = {"pk": {"S": "MEMBERSHIP"}, "sk": {"S": f"{write.group_source_id}#{write.user_source_id}"}}
        item = client.get_item(TableName=TABLE, Key=key)["Item"]
        client.put_item(TableName=TABLE, Item={k: v for k, v in item.items() if not k.startswith("gsi1")})


def _legacy_log(client: Any, moment: datetime) -> None:
    """A provisioning log entry as the version before wrote it: without the ``entries`` stamp."""
    order = f"{moment.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%S.%fZ')}#c-old"
    client.put_item(
        TableName=TABLE,
        Item={
            "pk": {"S": "LOG#old-cycle"},
            "sk": {"S": order},
            "gsi1pk": {"S": "LOG"},
            "gsi1sk": {"S": order},
            "status": {"S": "success"},
            "doc": {"S": "{}"},
        },
    )


def _indexed(client: Any) -> dict[str, str]:
    """Source key -> gsi1 entry, of every user and membership item."""
    found = {}
    for family in ("USER", "MEMBERSHIP"):
        for item in client.query(
            TableName=TABLE, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": family}}
        )["Items"]:
            found[item["sk"]["S"]] = item.get("gsi1pk", {}).get("S", "")
    return found


def test_on_dynamodb_a_user_s_memberships_and_a_name_s_holders_come_from_the_index_not_the_families(
    dynamodb: Any,
) -> None:
    # Given 520 users in 3 groups, the lookup entries complete
    client = _Reads(boto3.client("dynamodb", region_name=REGION))
    store = DynamoDbStateStore(TABLE, client=client)
    everything = _tenant(store, 520)
    store.put_item(LOOKUPS_ITEM, {"since": T0.isoformat(), "ready": True})
    wanted = {f"u{i}" for i in range(0, 520, 13)} | {"u-missing"}
    client.queries.clear()

    # When a delta cycle reads those users' records and memberships, and the holders of two names
    part = store.load_ownership_of(wanted, ())
    holders = store.owned_users_named(["USER13@example.com", "nobody@example.com"])

    # Then the answers are those of the full ownership, and neither family was read whole: one index Query a
    # user, one a name
    assert part.memberships == {k: v for k, v in everything.memberships.items() if k[1] in wanted}
    assert holders == {"user13@example.com": ["u13"]}
    assert client.family_reads() == []
    lookups = [
        q for q in client.queries if q.get("IndexName") == "gsi1" and q["KeyConditionExpression"] == "gsi1pk = :pk"
    ]
    assert len(lookups) == len(wanted) + 2


def test_on_dynamodb_the_memberships_of_more_users_than_index_queries_are_worth_are_read_from_the_family(
    dynamodb: Any,
) -> None:
    # Given 1,100 users, the lookup entries complete
    client = _Reads(boto3.client("dynamodb", region_name=REGION))
    store = DynamoDbStateStore(TABLE, client=client)
    everything = _tenant(store, 1100)
    store.put_item(LOOKUPS_ITEM, {"since": T0.isoformat(), "ready": True})
    client.queries.clear()

    # When a delta cycle reads the memberships of 1,001 of them (a large group's members)
    wanted = {f"u{i}" for i in range(1001)}
    part = store.load_ownership_of(wanted, ())

    # Then one read of the membership family answers, not 1,001 index Queries
    assert part.memberships == {k: v for k, v in everything.memberships.items() if k[1] in wanted}
    assert client.family_reads() == ["MEMBERSHIP"]
    assert not [q for q in client.queries if q.get("KeyConditionExpression") == "gsi1pk = :pk"]


def test_on_dynamodb_users_are_found_by_target_id_through_the_index_and_never_wrongly(dynamodb: Any) -> None:
    # Given 40 users, one of them since re-created in IAM Identity Center under a new id
    client = _Reads(boto3.client("dynamodb", region_name=REGION))
    store = DynamoDbStateStore(TABLE, client=client)
    everything = _tenant(store, 40)
    store.record_user(replace(everything.users["u3"], target_id="t-u3-again"))
    client.queries.clear()

    # When the owners of some target ids are asked for, the old id of u3 among them
    found = store.owned_users_by_target({"t-u1", "t-u3", "t-u3-again", "t-nobody"})

    # Then they come from the index, one Query an id, and the record read by key decides: the old id has no owner
    assert set(found) == {"t-u1", "t-u3-again"}
    assert found["t-u3-again"].source_id == "u3"
    assert client.family_reads() == []
    assert [q["IndexName"] for q in client.queries] == ["gsi2"] * 4


class _AsAwsAnswersAMissingIndex:
    """moto answers a Query of an index the table lacks ResourceNotFoundException ("Invalid index"); DynamoDB
    answers ValidationException ("The table does not have the specified index: <name>"), and, for an index it is
    still building, "Cannot read from backfilling global secondary index: <name>" (``building``), which moto
    never says. This client answers as DynamoDB does."""

    def __init__(self, client: Any, building: bool = False) -> None:
        self.client = client
        self.building = building

    def get_paginator(self, name: str) -> Any:
        paginator = self.client.get_paginator(name)
        outer = self

        class AsAws:
            def paginate(self, **params: Any) -> Any:
                try:
                    yield from paginator.paginate(**params)
                except ClientError as error:
                    if "Invalid index" not in str(error):
                        raise
                    message = f"The table does not have the specified index: {params['IndexName']}"
                    if outer.building:
                        message = f"Cannot read from backfilling global secondary index: {params['IndexName']}"
                    raise ClientError({"Error": {"Code": "ValidationException", "Message": message}}, "Query") from None

        return AsAws()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.mark.parametrize("building", [False, True], ids=["absent", "being-built"])
def test_on_a_dynamodb_table_without_the_target_index_users_are_found_by_reading_them(
    aws_credentials: None, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, building: bool
) -> None:
    # Given a table adopted from an earlier version: no gsi2
    with mock_aws():
        raw = boto3.client("dynamodb", region_name=REGION)
        definition = table_definition(TABLE)
        definition["GlobalSecondaryIndexes"] = [
            i for i in definition["GlobalSecondaryIndexes"] if i["IndexName"] == "gsi1"
        ]
        definition["AttributeDefinitions"] = [
            a for a in definition["AttributeDefinitions"] if a["AttributeName"] != "targetId"
        ]
        raw.create_table(**definition)
        client = _Reads(_AsAwsAnswersAMissingIndex(raw, building))
        store = DynamoDbStateStore(TABLE, client=client)
        _tenant(store, 10)
        client.queries.clear()

        # When the owners of target ids are asked for page after page (the drift check's users listing), a
        # user is recorded meanwhile, and, once the index could be there, asked again
        pages = [store.owned_users_by_target({f"t-u{i}", f"t-u{i + 1}"}) for i in range(0, 10, 2)]
        store.record_user(user("u-new"))
        missed = store.owned_users_by_target({"t-u-new"})
        tried = [q.get("IndexName") for q in client.queries].count("gsi2")
        monkeypatch.setattr(dynamodb_state, "_monotonic", lambda: time.monotonic() + 901)  # both waits are over

        later = store.owned_users_by_target({"t-u-new"})

    # Then they were answered from one read of the users' ids (the index tried once), which misses a user
    # recorded since as the index would; the index is tried again once its wait is over
    assert [set(page) for page in pages] == [{f"t-u{i}", f"t-u{i + 1}"} for i in range(0, 10, 2)]
    assert missed == {}
    assert set(later) == {"t-u-new"}
    assert tried == 2  # the first page's two ids, sent at once
    assert [q.get("IndexName") for q in client.queries].count("gsi2") == tried + 1
    assert client.family_reads() == ["USER", "USER"]
    assert caplog.text.count("index by IAM Identity Center id cannot be read") == 2


def test_on_dynamodb_records_from_before_the_lookup_entries_get_them_after_the_drain(dynamodb: Any) -> None:
    # Given records written by the version before (no lookup entries): 30 users, 40 memberships
    client = _Reads(boto3.client("dynamodb", region_name=REGION))
    store = DynamoDbStateStore(TABLE, client=client)
    writes: list[Any] = [user(f"u{i}", user_name=f"User{i}@Example.com") for i in range(30)]
    writes += [OwnedMembership(f"g{i % 2}", f"u{i % 30}", f"m-{i}") for i in range(40)]
    _legacy(client, store, writes)
    assert set(_indexed(client).values()) == {""}

    # When the sync's upkeep runs: first sight, still within the drain, then after it
    assert store.upgrade_lookups(T0, lambda: False) is False
    assert store.upgrade_lookups(T0 + LOOKUPS_DRAIN - timedelta(seconds=1), lambda: False) is False
    assert set(_indexed(client).values()) == {""}  # nothing written while the version before may still run
    assert store.upgrade_lookups(T0 + LOOKUPS_DRAIN, lambda: False) is True

    # Then every record carries its entry, the lookups use the index and find the old records, and a new
    # store object sees the index complete
    entries = _indexed(client)
    assert entries["u7"] == "USERNAME#user7@example.com"
    assert entries["g1#u9"] == "MEMBEROF#u9"
    assert "" not in entries.values()
    fresh_client = _Reads(boto3.client("dynamodb", region_name=REGION))
    fresh = DynamoDbStateStore(TABLE, client=fresh_client)
    assert fresh.owned_users_named(["user7@EXAMPLE.com"]) == {"user7@example.com": ["u7"]}
    assert set(fresh.load_ownership_of(["u9"], ()).memberships) == {("g1", "u9")}  # m-9 and m-39 (same pair)
    assert fresh_client.family_reads() == []
    assert fresh.upgrade_lookups(T0 + LOOKUPS_DRAIN, lambda: False) is True


class _RacingUpdates:
    """A DynamoDB client on which another writer acts right before the backfill's first UpdateItem."""

    def __init__(self, client: Any, before: Callable[[], None]) -> None:
        self.client = client
        self.before: Callable[[], None] | None = before
        self.updates = 0

    def update_item(self, **params: Any) -> dict[str, Any]:
        if self.before is not None:
            before, self.before = self.before, None
            before()
        self.updates += 1
        return dict(self.client.update_item(**params))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_the_backfill_leaves_a_record_another_writer_renamed_or_forgot_as_that_writer_left_it(
    dynamodb: Any,
) -> None:
    # Given two old users and an old membership, and a writer that, while the backfill reads, renames the
    # first user and forgets the membership
    raw = boto3.client("dynamodb", region_name=REGION)
    writer = DynamoDbStateStore(TABLE, client=raw)
    _legacy(raw, writer, [user("u1", user_name="Old@example.com"), user("u2"), OwnedMembership("g1", "u2", "m-1")])

    def other_writer() -> None:
        writer.record_user(user("u1", user_name="New@example.com"))
        writer.forget_membership("g1", "u2")

    client = _RacingUpdates(raw, other_writer)
    store = DynamoDbStateStore(TABLE, client=client)
    store.upgrade_lookups(T0, lambda: False)

    # When the backfill runs
    assert store.upgrade_lookups(T0 + LOOKUPS_DRAIN, lambda: False) is True

    # Then the renamed user keeps the entry of her new name, the forgotten membership is not written back,
    # and the untouched user got hers
    entries = _indexed(raw)
    assert entries == {"u1": "USERNAME#new@example.com", "u2": "USERNAME#u2@example.com"}
    assert store.owned_users_named(["old@example.com", "NEW@example.com"]) == {"new@example.com": ["u1"]}


def test_a_full_read_before_the_backfill_is_done_does_not_send_it_over_once_done(dynamodb: Any) -> None:
    # Given old records, the backfill's drain under way
    raw = boto3.client("dynamodb", region_name=REGION)
    store = DynamoDbStateStore(TABLE, client=raw)
    _legacy(raw, store, [user("u1"), OwnedMembership("g1", "u1", "m-1")])
    now = datetime.now(UTC)
    store.upgrade_lookups(now - LOOKUPS_DRAIN, lambda: False)

    # When a full read (the daily full reconcile's) meets the records the backfill is there to add entries to,
    # then the backfill completes, and the next cycle's upkeep runs
    store.load_ownership()
    assert store.upgrade_lookups(now, lambda: False) is True
    again = store.upgrade_lookups(now + timedelta(minutes=10), lambda: False)

    # Then the entries stay complete: nothing is started over
    assert again is True
    assert (store.get_item(LOOKUPS_ITEM) or {}).get("ready") is True


def test_the_backfill_stops_when_asked_and_goes_on_where_it_stopped(dynamodb: Any) -> None:
    # Given 1,200 old users (three backfill pages) and 10 old memberships
    raw = boto3.client("dynamodb", region_name=REGION)
    writes: list[Any] = [user(f"u{i:04}") for i in range(1200)]
    writes += [OwnedMembership("g1", f"u{i:04}", f"m-{i}") for i in range(10)]
    _legacy(raw, DynamoDbStateStore(TABLE, client=raw), writes)
    first = _RacingUpdates(raw, lambda: None)
    store = DynamoDbStateStore(TABLE, client=first)
    store.upgrade_lookups(T0, lambda: False)

    # When a run is stopped after its first page, and a new invocation (a new store object) goes on
    pages = iter([False, True])
    assert store.upgrade_lookups(T0 + LOOKUPS_DRAIN, lambda: next(pages)) is False
    second = _RacingUpdates(raw, lambda: None)
    assert DynamoDbStateStore(TABLE, client=second).upgrade_lookups(T0 + LOOKUPS_DRAIN, lambda: False) is True

    # Then the first did one page, the second the rest, no record was updated twice, and all carry their entry
    assert first.updates == 500
    assert second.updates == 1210 - 500
    assert "" not in _indexed(raw).values()


def _ready_then_a_membership_without_its_entry() -> tuple[Any, DynamoDbStateStore]:
    """u1 in g1, the backfill run to completion just now; then u1 in g2 recorded without its entry."""
    raw = boto3.client("dynamodb", region_name=REGION)
    store = DynamoDbStateStore(TABLE, client=raw)
    store.write_ownership([user("u1"), OwnedMembership("g1", "u1", "m-1")])
    now = datetime.now(UTC)
    store.upgrade_lookups(now - LOOKUPS_DRAIN, lambda: False)
    assert store.upgrade_lookups(now, lambda: False) is True
    _legacy(raw, store, [OwnedMembership("g2", "u1", "m-2")])
    assert _indexed(raw) == {"u1": "USERNAME#u1@example.com", "g1#u1": "MEMBEROF#u1", "g2#u1": ""}
    return raw, store


def test_a_record_without_its_entry_met_after_completion_sends_the_lookups_to_the_table_and_the_backfill_over(
    dynamodb: Any,
) -> None:
    # Given complete lookup entries, then a membership written without one
    raw, store = _ready_then_a_membership_without_its_entry()
    marker = store.get_item(LOOKUPS_ITEM)

    # When a full read (the full reconcile's) meets it
    store.load_ownership()

    # Then the read wrote nothing, this store's lookups read the table (and find it), and the upkeep starts the
    # backfill over, which adds its entry after a drain
    assert store.get_item(LOOKUPS_ITEM) == marker
    assert set(store.load_ownership_of(["u1"], ()).memberships) == {("g1", "u1"), ("g2", "u1")}
    later = datetime.now(UTC)
    assert store.upgrade_lookups(later, lambda: False) is False
    assert store.upgrade_lookups(later + LOOKUPS_DRAIN, lambda: False) is True
    assert _indexed(raw)["g2#u1"] == "MEMBEROF#u1"


def test_a_writer_without_entries_logging_after_completion_is_noticed_before_the_index_is_read(
    dynamodb: Any,
) -> None:
    # Given complete lookup entries, then an earlier version (a rollback) recording a membership and logging it
    raw, _ = _ready_then_a_membership_without_its_entry()
    _legacy_log(raw, datetime.now(UTC))

    # When this version runs again (a new container) and a delta cycle reads the user's memberships
    client = _Reads(raw)
    again = DynamoDbStateStore(TABLE, client=client)
    found = set(again.load_ownership_of(["u1"], ()).memberships)

    # Then the unstamped log entry sent the read to the table, which found the membership the index lacks, and
    # the upkeep starts the backfill over
    assert found == {("g1", "u1"), ("g2", "u1")}
    assert client.family_reads() == ["MEMBERSHIP"]
    assert again.upgrade_lookups(datetime.now(UTC), lambda: False) is False
    assert "ready" not in (again.get_item(LOOKUPS_ITEM) or {})


def test_this_version_s_own_log_entries_keep_the_index_trusted_and_the_check_moves_on(dynamodb: Any) -> None:
    # Given complete lookup entries, and this version logging changes
    raw = boto3.client("dynamodb", region_name=REGION)
    store = DynamoDbStateStore(TABLE, client=raw)
    store.write_ownership([user("u1"), OwnedMembership("g1", "u1", "m-1")])
    now = datetime.now(UTC)
    store.upgrade_lookups(now - LOOKUPS_DRAIN, lambda: False)
    assert store.upgrade_lookups(now, lambda: False) is True
    store.append_logs([LogEntry("c1", "x", now.isoformat(), "membership", "create", Status.SUCCESS, "g1#u1", "g1/u1")])

    # When a new store reads, and the upkeep runs after the cycle
    client = _Reads(raw)
    again = DynamoDbStateStore(TABLE, client=client)
    found = set(again.load_ownership_of(["u1"], ()).memberships)
    assert again.upgrade_lookups(now, lambda: False) is True

    # Then the index was read, and the next check begins a little before now
    assert found == {("g1", "u1")}
    assert client.family_reads() == []
    assert again.get_item(LOOKUPS_ITEM)["checked"] == (now - timedelta(minutes=5)).isoformat()


def test_holders_of_a_user_name_are_found_without_regard_to_case(keyed_store: StateStore) -> None:
    # Given users holding names that differ from the asked ones only in case (ß casefolds to ss)
    keyed_store.record_user(user("u1", user_name="Straße@Example.com"))
    keyed_store.record_user(user("u2", user_name="STRASSE@example.com"))
    keyed_store.record_user(user("u3", user_name="other@example.com"))

    # When the holders of two names are asked for, one of them held by nobody
    holders = keyed_store.owned_users_named(["strasse@EXAMPLE.com", "nobody@example.com"])

    # Then both holders of the first come back under its casefolded form, and the second is absent
    assert {name: sorted(ids) for name, ids in holders.items()} == {"strasse@example.com": ["u1", "u2"]}
    assert keyed_store.owned_users_named([]) == {}


def test_owned_users_are_found_by_their_target_id(keyed_store: StateStore) -> None:
    # Given 520 users (more than one BatchGetItem and one IN list)
    everything = _tenant(keyed_store, 520)
    wanted = {f"t-u{i}" for i in range(0, 520, 3)} | {"t-nobody"}

    # When the owners of some target ids are asked for, one of them held by nobody
    found = keyed_store.owned_users_by_target(wanted)

    # Then each held target id comes back with its full record, and the unheld one is absent
    assert found == {o.target_id: o for o in everything.users.values() if o.target_id in wanted}
    assert len(found) == 174
    assert keyed_store.owned_users_by_target([]) == {}


def test_owned_users_are_read_by_key_and_every_target_id_without_a_record(keyed_store: StateStore) -> None:
    # Given 520 users (more than one BatchGetItem and one IN list)
    everything = _tenant(keyed_store, 520)
    wanted = {f"u{i}" for i in range(0, 520, 7)} | {"nobody"}

    # When some users are asked for by source id, one of them owned by nobody, and then every target id
    found = keyed_store.owned_users(wanted)
    targets = keyed_store.owned_user_targets()

    # Then each owned one comes back whole, the other is absent, and every target id names its source id
    assert found == {sid: o for sid, o in everything.users.items() if sid in wanted}
    assert len(found) == 75
    assert keyed_store.owned_users([]) == {}
    assert targets == {o.target_id: sid for sid, o in everything.users.items()}


def test_ownership_counts_leave_the_excluded_groups_memberships_out(keyed_store: StateStore) -> None:
    # Given 40 users in 3 groups, g2 holding a seventh of them twice over
    everything = _tenant(keyed_store, 40)

    # When ownership is counted, with g2 excluded in another case
    counted = keyed_store.count_ownership(["G2"])

    # Then users and groups are all counted, and only the memberships outside g2
    outside = sum(1 for group_id, _ in everything.memberships if group_id != "g2")
    assert counted == (40, 3, outside)
    assert keyed_store.count_ownership() == (40, 3, len(everything.memberships))
    assert keyed_store.count_users_and_groups() == (40, 3)


class _Unprocessing:
    """A DynamoDB client whose BatchGetItem answers the first request with every key unprocessed (throttled)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.refused = 0

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        if not self.refused:
            self.refused += 1
            table, request = next(iter(params["RequestItems"].items()))
            return {"Responses": {table: []}, "UnprocessedKeys": {table: request}}
        return dict(self.client.batch_get_item(**params))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_dynamodb_retries_the_keys_a_batch_get_left_unprocessed(dynamodb: Any) -> None:
    # Given a table holding two users, and BatchGetItem throttling its first request as a whole
    client = _Unprocessing(boto3.client("dynamodb", region_name=REGION))
    store = DynamoDbStateStore(TABLE, client=client)
    store.record_user(user("u1"))
    store.record_user(user("u2"))

    # When the users are read by key
    part = store.load_ownership_of(["u1", "u2"], ())

    # Then the unprocessed keys were asked again and both users came back
    assert client.refused == 1
    assert set(part.users) == {"u1", "u2"}


def test_a_sqlite_file_from_before_the_by_key_indexes_gets_them_when_opened(tmp_path: Path) -> None:
    # Given a state file holding users and memberships, written before the by-key indexes existed
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    store.write_ownership([user("u1", user_name="Ann@Example.com"), OwnedMembership("g1", "u1", "m-1")])
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX owned_users_by_name")
        conn.execute("DROP INDEX owned_memberships_by_user")
        conn.execute("PRAGMA user_version = 1")

    # When this version opens it
    store = SqliteStateStore(path)

    # Then the indexes are built (and the file marked as this schema, which older versions refuse), the
    # by-key reads find the records through them, and writes go on
    with sqlite3.connect(path) as conn:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + _BY_USER, ("u1",)))
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    assert {"owned_users_by_name", "owned_memberships_by_user"} <= indexes
    assert version == 2
    assert "owned_memberships_by_user" in plan
    assert store.owned_users_named(["ann@example.com"]) == {"ann@example.com": ["u1"]}
    assert set(store.load_ownership_of(["u1"], ()).memberships) == {("g1", "u1")}
    store.record_user(user("u2", user_name="Bo@example.com"))
    assert store.owned_users_named(["BO@example.com"]) == {"bo@example.com": ["u2"]}
    store.close()


_BY_USER = "SELECT group_source_id FROM owned_memberships WHERE user_source_id = ?"


def test_a_plain_sqlite_client_can_write_users_and_check_a_file_idsync_wrote(tmp_path: Path) -> None:
    # Given a state file idsync wrote, holding two users
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    store.write_ownership([user("u1", user_name="Ann@Example.com"), user("u2", user_name="Bo@example.com")])
    store.close()

    # When a client that registered no function (as the sqlite3 shell) inserts, updates and deletes users
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO owned_users (source_id, target_id, user_name, doc, fingerprint)"
            " VALUES ('u3', 't-u3', 'Straße@Example.com', '{}', 'fp-u3')"
        )
        conn.execute(
            "UPDATE owned_users SET user_name = 'Cy@example.com', user_name_folded = NULL WHERE source_id = 'u1'"
        )
        conn.execute("DELETE FROM owned_users WHERE source_id = 'u2'")
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()

    # Then the file checks ok, and idsync, opening it again, finds the hand-written names under their casefold
    assert check == "ok"
    store = SqliteStateStore(path)
    holders = store.owned_users_named(["STRASSE@example.com", "cy@EXAMPLE.com", "ann@example.com", "bo@example.com"])
    assert holders == {"strasse@example.com": ["u3"], "cy@example.com": ["u1"]}
    store.close()


_V1_OWNED_USERS = """CREATE TABLE owned_users (
    source_id TEXT PRIMARY KEY,
    target_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    doc TEXT NOT NULL,
    manager_source_id TEXT,
    fingerprint TEXT NOT NULL
)"""


def test_a_version_1_file_with_users_gets_their_folded_names_when_opened(tmp_path: Path) -> None:
    # Given a version-1 file: owned_users without the folded column, holding users, no by-key indexes
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute(_V1_OWNED_USERS)
        conn.executemany(
            "INSERT INTO owned_users VALUES (?, ?, ?, '{}', NULL, ?)",
            [("u1", "t-u1", "Straße@Example.com", "fp-u1"), ("u2", "t-u2", "Other@example.com", "fp-u2")],
        )
        conn.execute("PRAGMA user_version = 1")

    # When this version opens it
    store = SqliteStateStore(path)

    # Then every row carries str.casefold of its userName under the index, and ß is found as SS
    with sqlite3.connect(path) as conn:
        folded = dict(conn.execute("SELECT source_id, user_name_folded FROM owned_users"))
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + _BY_NAME, ("x",)))
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        (check,) = conn.execute("PRAGMA integrity_check").fetchone()
    assert folded == {"u1": "strasse@example.com", "u2": "other@example.com"}
    assert "owned_users_by_name" in plan
    assert (version, check) == (2, "ok")
    assert store.owned_users_named(["STRASSE@EXAMPLE.COM"]) == {"strasse@example.com": ["u1"]}
    assert store.load_ownership().users["u1"].user_name == "Straße@Example.com"
    store.close()


_BY_NAME = "SELECT source_id FROM owned_users WHERE user_name_folded = ?"
