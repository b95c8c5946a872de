"""In-memory fakes of the ports: fast, honest stand-ins for unit tests (fakes over mocks)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from idsync.errors import (
    DeltaExpired,
    DirectoryError,
    LeaseLost,
    SchedulerError,
    StateError,
    TargetConflict,
    TargetError,
    TargetNotFound,
    TargetThrottled,
    TargetTransient,
)
from idsync.mirror import MemberChange
from idsync.model import (
    AttributeChange,
    LogEntry,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Ownership,
    TargetGroup,
    TargetUser,
    UserDoc,
    freeze_doc,
)
from idsync.ports import (
    AccessGrant,
    AssignmentInstance,
    AssignmentStatus,
    BucketState,
    Check,
    DirectoryChanges,
    Forget,
    FullRead,
    GroupRecords,
    OwnershipWrite,
)


def _atomic(method: Callable[..., Any]) -> Callable[..., Any]:
    """One call at a time, as the service answers each request atomically; the fake's latency (if any) is
    spent before taking the lock, so calls from several threads overlap the way real requests do."""

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._arrive()
        with self._lock:
            return method(self, *args, **kwargs)

    return call


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@dataclass
class FakeIdentityStore:
    """Holds users, groups and memberships like the Identity Store; counts writes; can fail on demand."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    memberships: dict[str, tuple[str, str]] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)
    fail_on: dict[str, str] = field(default_factory=dict)  # userName/displayName -> error message
    crash_after_writes: int | None = None
    throttled_writes: int = 0  # the next n writes are throttled (after the client's retries), as AWS would
    lost_create_answers: int = 0  # the next n CreateUser calls land, but their answer is an AWS-side fault
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    latency: float = 0.0  # seconds each call takes (spent outside the lock: concurrent calls overlap)
    in_flight: int = 0
    max_in_flight: int = 0  # the most calls that were in flight at once
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _arrive(self) -> None:
        if not self.latency:
            return
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.latency)
        with self._lock:
            self.in_flight -= 1

    page_size: int = 100  # the API's MaxResults
    list_calls: dict[str, int] = field(default_factory=dict)  # reads by operation (List and Describe calls)
    crash_at_list: int | None = None  # the process dies before this List call (counted from 0)
    refused_tokens: int = 0  # the next n List calls with a NextToken are refused, as an expired token is

    def _next(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):06d}"

    def _write(self, what: str, name: str = "") -> None:
        if name in self.fail_on:
            raise TargetError(self.fail_on[name])
        if self.throttled_writes > 0:
            self.throttled_writes -= 1
            raise TargetThrottled(f"{what} {name}: ThrottlingException: Rate exceeded")
        if self.crash_after_writes is not None and len(self.writes) >= self.crash_after_writes:
            raise RuntimeError("simulated crash")
        self.writes.append(what)

    # reads
    def list_users(self) -> Iterator[TargetUser]:
        for uid, u in list(self.users.items()):
            doc = dict(u["doc"])
            manager = (doc.get("Extensions") or {}).get("aws:identitystore:enterprise", {}).get("manager")
            yield TargetUser(uid, u["UserName"], freeze_doc(doc), manager["value"] if manager else None)

    def list_groups(self) -> Iterator[TargetGroup]:
        for gid, g in list(self.groups.items()):
            yield TargetGroup(gid, g["DisplayName"], g.get("Description"))

    def list_memberships(self, group_id: str) -> Iterator[tuple[str, str]]:
        for mid, (gid, uid) in list(self.memberships.items()):
            if gid == group_id:
                yield mid, uid

    def _list_call(self, operation: str, token: str | None) -> None:
        if self.crash_at_list is not None and sum(self.list_calls.values()) >= self.crash_at_list:
            raise Crash(f"the process dies before {operation}")
        self.list_calls[operation] = self.list_calls.get(operation, 0) + 1
        if token is not None and self.refused_tokens > 0:
            self.refused_tokens -= 1
            raise TargetError(f"{operation}: ValidationException: the NextToken is not valid (expired)")

    def list_users_page(self, token: str | None) -> tuple[list[TargetUser], str | None]:
        self._list_call("ListUsers", token)
        return _paged(list(self.list_users()), token, self.page_size)

    def list_groups_page(self, token: str | None) -> tuple[list[TargetGroup], str | None]:
        self._list_call("ListGroups", token)
        return _paged(list(self.list_groups()), token, self.page_size)

    def list_memberships_page(self, group_id: str, token: str | None) -> tuple[list[tuple[str, str]], str | None]:
        self._list_call("ListGroupMemberships", token)
        return _paged(list(self.list_memberships(group_id)), token, self.page_size)

    def describe_user(self, user_id: str) -> TargetUser | None:
        self._list_call("DescribeUser", None)
        return next((u for u in self.list_users() if u.target_id == user_id), None)

    def describe_group(self, group_id: str) -> TargetGroup | None:
        self._list_call("DescribeGroup", None)
        return next((g for g in self.list_groups() if g.target_id == group_id), None)

    @_atomic
    def find_user(self, user_name: str) -> str | None:
        return next((i for i, u in self.users.items() if u["UserName"].casefold() == user_name.casefold()), None)

    @_atomic
    def find_group(self, display_name: str) -> str | None:
        return next((i for i, g in self.groups.items() if g["DisplayName"] == display_name), None)

    @_atomic
    def find_membership(self, group_id: str, user_id: str) -> str | None:
        return next((m for m, pair in self.memberships.items() if pair == (group_id, user_id)), None)

    # writes
    @_atomic
    def create_user(self, user_name: str, doc: UserDoc) -> str:
        if self.find_user(user_name):
            raise TargetConflict(f"userName {user_name} exists")
        self._write("CreateUser", user_name)
        uid = self._next("u")
        self.users[uid] = {"UserName": user_name, "doc": freeze_doc(doc)}
        if self.lost_create_answers > 0:
            self.lost_create_answers -= 1
            raise TargetTransient(f"CreateUser {user_name}: InternalServerException (HTTP 500)")
        return uid

    @_atomic
    def update_user(self, user_id: str, changes: Sequence[AttributeChange]) -> None:
        if user_id not in self.users:
            raise TargetNotFound(user_id)
        for change in changes:
            if change.attribute == "UserName" and self.find_user(str(change.new)) not in (None, user_id):
                raise TargetConflict(f"userName {change.new} exists")
        self._write("UpdateUser", self.users[user_id]["UserName"])
        doc = dict(self.users[user_id]["doc"])
        for change in changes:
            if change.attribute == "UserName":
                self.users[user_id]["UserName"] = change.new
            elif change.new is None:
                doc.pop(change.attribute, None)
            else:
                doc[change.attribute] = change.new
        self.users[user_id]["doc"] = freeze_doc(doc)

    @_atomic
    def delete_user(self, user_id: str) -> None:
        self._write("DeleteUser")
        self.users.pop(user_id, None)
        for mid in [m for m, (_, uid) in self.memberships.items() if uid == user_id]:
            del self.memberships[mid]

    @_atomic
    def create_group(self, display_name: str, description: str | None) -> str:
        if self.find_group(display_name):
            raise TargetConflict(f"displayName {display_name} exists")
        self._write("CreateGroup", display_name)
        gid = self._next("g")
        self.groups[gid] = {"DisplayName": display_name, "Description": description}
        return gid

    @_atomic
    def update_group(self, group_id: str, changes: Sequence[AttributeChange]) -> None:
        if group_id not in self.groups:
            raise TargetNotFound(group_id)
        for change in changes:
            # AWS refuses a displayName another group holds (UNIQUENESS_CONSTRAINT_VIOLATION)
            if change.attribute == "DisplayName" and self.find_group(str(change.new)) not in (None, group_id):
                raise TargetConflict(f"displayName {change.new} exists")
        self._write("UpdateGroup")
        for change in changes:
            self.groups[group_id][change.attribute] = change.new

    @_atomic
    def delete_group(self, group_id: str) -> None:
        self._write("DeleteGroup")
        self.groups.pop(group_id, None)
        for mid in [m for m, (gid, _) in self.memberships.items() if gid == group_id]:
            del self.memberships[mid]

    @_atomic
    def create_membership(self, group_id: str, user_id: str) -> str:
        if self.find_membership(group_id, user_id):
            raise TargetConflict("membership exists")
        if group_id not in self.groups or user_id not in self.users:
            raise TargetNotFound(f"{group_id}/{user_id}")
        self._write("CreateGroupMembership")
        mid = self._next("m")
        self.memberships[mid] = (group_id, user_id)
        return mid

    @_atomic
    def delete_membership(self, membership_id: str) -> None:
        self._write("DeleteGroupMembership")
        self.memberships.pop(membership_id, None)

    def check(self) -> list[Check]:
        return [Check("identity store", True, "in memory")]

    # views for assertions
    def user_by_name(self, user_name: str) -> dict[str, Any]:
        uid = self.find_user(user_name)
        assert uid is not None, f"no user {user_name}"
        return self.users[uid]

    def members_of(self, display_name: str) -> set[str]:
        gid = self.find_group(display_name)
        assert gid is not None, f"no group {display_name}"
        return {self.users[uid]["UserName"] for _, (g, uid) in self.memberships.items() if g == gid}

    def manager_of(self, user_name: str) -> str | None:
        ext = (self.user_by_name(user_name)["doc"].get("Extensions") or {}).get("aws:identitystore:enterprise", {})
        manager = ext.get("manager")
        return self.users[manager["value"]]["UserName"] if manager else None


@dataclass
class FakeState:
    users: dict[str, OwnedUser] = field(default_factory=dict)
    groups: dict[str, OwnedGroup] = field(default_factory=dict)
    memberships: dict[tuple[str, str], OwnedMembership] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    leases: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    crash_after_records: int | None = None  # simulate dying right after an AWS write, before recording it
    records: int = 0
    lose_lease_races: int = 0  # the next N acquisitions lose the conditional write to another writer
    renewals: int = 0  # renew_lease calls (each one conditional write)
    batches: list[int] = field(default_factory=list)  # the size of each write_ownership batch
    reads: list[tuple[str, frozenset[str], frozenset[str]]] = field(default_factory=list)  # ownership reads, keys
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _recording(self) -> None:
        if self.crash_after_records is not None and self.records >= self.crash_after_records:
            raise RuntimeError("simulated crash before recording")
        self.records += 1

    def load_ownership(self) -> Ownership:
        self.reads.append(("load_ownership", frozenset(), frozenset()))
        return Ownership(dict(self.users), dict(self.groups), dict(self.memberships))

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        wanted_users, wanted_groups = set(users), set(groups)
        self.reads.append(("load_ownership_of", frozenset(wanted_users), frozenset(wanted_groups)))
        return Ownership(
            {k: v for k, v in self.users.items() if k in wanted_users},
            dict(self.groups),
            {k: v for k, v in self.memberships.items() if k[1] in wanted_users or k[0] in wanted_groups},
        )

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        wanted = {name.casefold() for name in names}
        holders: dict[str, list[str]] = {}
        for source_id, owned in self.users.items():
            if owned.user_name.casefold() in wanted:
                holders.setdefault(owned.user_name.casefold(), []).append(source_id)
        return holders

    def owned_users_by_target(self, target_ids: Collection[str]) -> dict[str, OwnedUser]:
        wanted = set(target_ids)
        self.reads.append(("owned_users_by_target", frozenset(wanted), frozenset()))
        return {owned.target_id: owned for owned in self.users.values() if owned.target_id in wanted}

    def owned_users(self, source_ids: Collection[str]) -> dict[str, OwnedUser]:
        wanted = set(source_ids)
        self.reads.append(("owned_users", frozenset(wanted), frozenset()))
        return {k: v for k, v in self.users.items() if k in wanted}

    def owned_user_targets(self) -> dict[str, str]:
        self.reads.append(("owned_user_targets", frozenset(), frozenset()))
        return {owned.target_id: source_id for source_id, owned in self.users.items()}

    def count_users_and_groups(self) -> tuple[int, int]:
        self.reads.append(("count_users_and_groups", frozenset(), frozenset()))
        return len(self.users), len(self.groups)

    def count_ownership(self, excluded_groups: Collection[str] = ()) -> tuple[int, int, int]:
        self.reads.append(("count_ownership", frozenset(), frozenset(excluded_groups)))
        aside = {group_id.lower() for group_id in excluded_groups}
        kept = sum(1 for group_id, _ in self.memberships if group_id.lower() not in aside)
        return len(self.users), len(self.groups), kept

    def record_user(self, owned: OwnedUser) -> None:
        self._recording()
        self.users[owned.source_id] = owned

    def forget_user(self, source_id: str) -> None:
        self.users.pop(source_id, None)

    def record_group(self, owned: OwnedGroup) -> None:
        self._recording()
        self.groups[owned.source_id] = owned

    def forget_group(self, source_id: str) -> None:
        self.groups.pop(source_id, None)

    def record_membership(self, owned: OwnedMembership) -> None:
        self._recording()
        self.memberships[(owned.group_source_id, owned.user_source_id)] = owned

    def forget_membership(self, group_source_id: str, user_source_id: str) -> None:
        self.memberships.pop((group_source_id, user_source_id), None)

    def write_ownership(self, writes: Sequence[OwnershipWrite]) -> None:
        """In order, one by one: a crash (``crash_after_records``) leaves a prefix applied, as BatchWriteItem may."""
        with self._lock:
            self.batches.append(len(writes))
            for write in writes:
                if isinstance(write, OwnedUser):
                    self.record_user(write)
                elif isinstance(write, OwnedGroup):
                    self.record_group(write)
                elif isinstance(write, OwnedMembership):
                    self.record_membership(write)
                elif isinstance(write, Forget) and write.kind == "user":
                    self.forget_user(*write.key)
                elif isinstance(write, Forget) and write.kind == "group":
                    self.forget_group(*write.key)
                else:
                    self.forget_membership(*write.key)

    def get_item(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.items.get(key)

    def put_item(self, key: str, value: Mapping[str, Any]) -> None:
        with self._lock:
            self.items[key] = dict(value)

    def delete_item(self, key: str) -> None:
        self.items.pop(key, None)

    def append_logs(self, entries: Sequence[LogEntry]) -> None:
        self.logs.extend(entries)

    def query_logs(
        self, cycle_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        rows = [
            e.as_dict()
            for e in reversed(self.logs)
            if (cycle_id is None or e.cycle_id == cycle_id) and (status is None or e.status.value == status)
        ]
        return rows[:limit]

    def acquire_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        if self.lose_lease_races > 0:
            self.lose_lease_races -= 1
            return False  # another writer's conditional write landed first
        held = self.leases.get(name)
        if held and held[0] != owner and held[1] >= now:
            return False  # DynamoDB's condition takes an expired lease over only once ``expires < now``
        self.leases[name] = (owner, now + timedelta(seconds=ttl_seconds))
        return True

    def renew_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        self.renewals += 1
        if self.leases.get(name, ("", None))[0] != owner:
            return False
        self.leases[name] = (owner, now + timedelta(seconds=ttl_seconds))
        return True

    def release_lease(self, name: str, owner: str) -> None:
        if self.leases.get(name, ("", None))[0] == owner:
            del self.leases[name]


def _member_type(member_id: str, groups: set[str]) -> str:
    """A member's type as Graph reports it: "group" for a nested group (one of ``groups``), else "user"."""
    return "group" if member_id in groups else "user"


@dataclass
class FakeSource:
    """Entra as a ChangeSource: every read is a full read (delta semantics are tested on the emulator)."""

    users: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    members: dict[str, list[str]] = field(default_factory=dict)
    assigned_users: set[str] = field(default_factory=set)
    assigned_groups: set[str] = field(default_factory=set)
    reads: int = 0

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        self.reads += 1
        groups = {str(g["id"]) for g in self.groups}
        changes = [
            MemberChange(group_id, member_id, _member_type(member_id, groups), True)
            for group_id, member_ids in self.members.items()
            for member_id in member_ids
        ]
        return DirectoryChanges(
            [dict(u) for u in self.users],
            {},
            [dict(g) for g in self.groups],
            {},
            changes,
            {"users": f"users-{self.reads}", "groups": f"groups-{self.reads}"},
            full=True,
        )

    def read_assignments(self) -> tuple[set[str], set[str]]:
        return set(self.assigned_users), set(self.assigned_groups)

    def read_full(self, progress: FullRead | None, should_stop: Callable[[], bool]) -> FullRead:
        """A full read in one go (``PagedSource`` pages it)."""
        return FullRead.of(self.read_changes(None))


@dataclass
class FakeDeltaSource(FakeSource):
    """Entra with Graph's delta semantics: a link returns only what changed since it was issued.

    ``outage``: the next full read answers an empty directory (a Graph incident), while the link it
    hands out is as good as any: a delta from it later reports nothing changed, as Graph would.
    ``soft_deleted``: user and group ids that delta reports removed with reason "changed".
    """

    outage: bool = False
    soft_deleted: set[str] = field(default_factory=set)
    deleted_at: dict[str, str] = field(default_factory=dict)  # soft-deleted id -> Graph's deletedDateTime
    purged: dict[str, int] = field(default_factory=dict)  # soft-deleted ids deleted for good -> reads by then
    snapshots: dict[str, tuple[dict[str, Any], dict[str, Any], set[tuple[str, str]]]] = field(default_factory=dict)
    asked: list[Mapping[str, str] | None] = field(default_factory=list)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, Any], set[tuple[str, str]]]:
        users = {u["id"]: dict(u) for u in self.users}
        groups = {g["id"]: dict(g) for g in self.groups}
        members = {(g, u) for g, ids in self.members.items() for u in ids}
        return users, groups, members

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        self.reads += 1
        self.asked.append(dict(links) if links else None)
        link = f"delta-{self.reads}"
        now = self._snapshot()
        self.snapshots[link] = now
        out = {"users": link, "groups": link}
        if not links:
            if self.outage:
                self.outage = False
                return DirectoryChanges([], {}, [], {}, [], out, full=True)
            changes = [MemberChange(g, u, _member_type(u, set(now[1])), True) for g, u in sorted(now[2])]
            # Graph's deleted users (idsync reads no deleted groups), read alongside a full delta round
            were_users = {i for users, _, _ in self.snapshots.values() for i in users}
            deleted = {i: self.deleted_at.get(i, "") for i in sorted(self.soft_deleted & were_users)}
            return DirectoryChanges(
                list(now[0].values()), {}, list(now[1].values()), {}, changes, out, full=True, deleted_items=deleted
            )
        before = self.snapshots[links["users"]]

        def removed(old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
            return {i: ("changed" if i in self.soft_deleted else "deleted") for i in old if i not in new}

        since = int(links["users"].rsplit("-", 1)[1])
        purged = {i: "deleted" for i, at in self.purged.items() if at >= since and i not in now[0]}
        users = [u for i, u in now[0].items() if before[0].get(i) != u]
        groups_ever = set(now[1]) | set(before[1])
        members = [MemberChange(g, u, _member_type(u, groups_ever), True) for g, u in sorted(now[2] - before[2])]
        members += [MemberChange(g, u, _member_type(u, groups_ever), False) for g, u in sorted(before[2] - now[2])]
        # as Graph's groups delta does, a group whose members changed comes back too (with members@delta)
        regrouped = {c.group_id for c in members}
        groups = [g for i, g in now[1].items() if before[1].get(i) != g or i in regrouped]
        return DirectoryChanges(
            users, removed(before[0], now[0]) | purged, groups, removed(before[1], now[1]), members, out, full=False
        )

    def purge(self, object_id: str) -> None:
        """Delete a soft-deleted object for good: the next delta reports it removed with reason "deleted"."""
        self.soft_deleted.discard(object_id)
        self.purged[object_id] = self.reads


class PagedSource(FakeDeltaSource):
    """Entra whose full read comes in pages, as Graph serves a delta round: ``page_size`` objects a page, from
    a snapshot taken when the round begins (changes made meanwhile come with the next delta). Its links stay
    valid across invocations until ``expire_links()``, after which they answer as Graph's 410 does
    (DeltaExpired). ``requests`` counts every page."""

    def __init__(self, *args: Any, page_size: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.page_size = page_size
        self.requests = 0
        self.crash_at_request: int | None = None  # the process dies before this request (counted from 0)
        self._rounds: dict[str, DirectoryChanges] = {}
        self._expired: set[str] = set()

    def expire_links(self) -> None:
        self._expired |= set(self._rounds)
        self._rounds.clear()

    def _round(self, link: str) -> DirectoryChanges:
        name = link.split(":", maxsplit=1)[0]
        if name in self._expired or name not in self._rounds:
            raise DeltaExpired(f"GET {link}: HTTP 410 resyncRequired: the sync state generation is not found")
        return self._rounds[name]

    def read_full(self, progress: FullRead | None, should_stop: Callable[[], bool]) -> FullRead:
        read = progress if progress is not None else FullRead()
        made = 0
        for resource, part in (("users", read.users), ("groups", read.groups)):
            while not part.done:
                if made and should_stop():
                    return read
                if self.crash_at_request is not None and self.requests >= self.crash_at_request:
                    raise Crash("the process dies before a delta page")
                if part.next_link is None:
                    # a round begins: Graph computes it once, so pages (and replays) agree
                    whole = self.read_changes(None)
                    name = f"round{len(self._rounds) + len(self._expired)}-{resource}"
                    self._rounds[name] = whole
                    offset = 0
                else:
                    whole = self._round(part.next_link)
                    name, offset = part.next_link.split(":")[0], int(part.next_link.split(":")[1])
                self.requests += 1
                made += 1
                part.pages += 1
                objects = whole.users if resource == "users" else whole.groups
                for obj in objects[offset : offset + self.page_size]:
                    part.objects[str(obj["id"])] = dict(obj)
                    if resource == "groups":
                        part.member_changes += [c for c in whole.member_changes if c.group_id == obj["id"]]
                following = offset + self.page_size
                if following < len(objects):
                    part.next_link = f"{name}:{following}"
                else:
                    part.next_link, part.delta_link = None, whole.links[resource]
                    if resource == "users":
                        read.deleted_items = None
                        self._deleted = dict(whole.deleted_items)
        if read.deleted_items is None:
            if made and should_stop():
                return read
            if self.crash_at_request is not None and self.requests >= self.crash_at_request:
                raise Crash("the process dies before reading the deleted items")
            self.requests += 1
            read.deleted_items = dict(getattr(self, "_deleted", {}))
        return read


# --------------------------------------------------------------------------- PIM for Groups


class FakePimGraph:
    """Entra as the JIT path reads it (``ports.PimDirectory``): direct members, assignment instances, users.

    ``grant`` lists the user with the instance (PIM's activation); ``end`` drops the instance and, unless
    ``unlist`` is False (Graph's member list lagging behind), the member nothing else holds. ``down``: every
    read answers HTTP 503 (Graph unreachable).
    """

    def __init__(self, default_group: str = "") -> None:
        self.default_group = default_group
        self.listed: dict[str, set[str]] = {}
        self.current: list[AssignmentInstance] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.reads = 0
        self.down = False

    def answer(self, counted: bool = True) -> None:
        """One read. Raises DirectoryError while ``down``."""
        if self.down:
            raise DirectoryError("Graph answered HTTP 503 Service Unavailable")
        self.reads += counted

    def add_user(self, user_id: str, name: str, **extra: Any) -> None:
        first, last = name.split(" ")
        self.users[user_id] = {
            "id": user_id,
            "userPrincipalName": f"{first.lower()}@contoso.example",
            "displayName": name,
            "givenName": first,
            "surname": last,
            "mail": f"{first.lower()}@contoso.example",
            "accountEnabled": True,
            **extra,
        }

    def grant(
        self,
        instance_id: str,
        user_id: str,
        start: datetime,
        minutes: float | None,
        group: str | None = None,
        assignment_type: str = "activated",
        access_id: str = "member",
        listed: bool = True,
    ) -> AssignmentInstance:
        """PIM activates: an instance, and (for member access) the user listed among the members."""
        group = group or self.default_group
        end = start + timedelta(minutes=minutes) if minutes is not None else None
        instance = AssignmentInstance(instance_id, user_id, group, access_id, assignment_type, "direct", start, end)
        self.current.append(instance)
        if listed and access_id == "member":
            self.listed.setdefault(group, set()).add(user_id)
        return instance

    def end(self, instance_id: str, unlist: bool = True) -> None:
        """The instance is gone (deactivated or expired); ``unlist``: Graph already dropped the member."""
        instance = next(i for i in self.current if i.id == instance_id)
        self.current.remove(instance)
        holds = any(
            i.principal_id == instance.principal_id and i.group_id == instance.group_id and i.access_id == "member"
            for i in self.current
        )
        if unlist and not holds:
            self.unlist(instance.group_id, instance.principal_id)

    def unlist(self, group_id: str, user_id: str) -> None:
        """Graph's member list catches up: the user is no longer listed."""
        self.listed.get(group_id, set()).discard(user_id)

    def extend(self, instance_id: str, minutes: float) -> None:
        index = next(n for n, i in enumerate(self.current) if i.id == instance_id)
        old = self.current[index]
        assert old.end is not None
        self.current[index] = AssignmentInstance(
            old.id, old.principal_id, old.group_id, old.access_id, old.assignment_type, old.member_type,
            old.start, old.end + timedelta(minutes=minutes),
        )  # fmt: skip

    # ports.PimDirectory
    def members(self, group_id: str) -> set[str]:
        self.answer()
        return set(self.listed.get(group_id, set()))

    def instances(self, group_id: str, user_id: str | None = None) -> list[AssignmentInstance]:
        self.answer()
        return [i for i in self.current if i.group_id == group_id and user_id in (None, i.principal_id)]

    def user(self, user_id: str) -> dict[str, Any] | None:
        self.answer(counted=False)
        return self.users.get(user_id)


@dataclass
class JitState(FakeState):
    """FakeState plus ``ports.GrantStore``."""

    granted: dict[tuple[str, str], AccessGrant] = field(default_factory=dict)
    grant_writes: int = 0
    in_flight: Callable[[str], None] | None = None  # see FencedJitState
    fenced_refusals: int = 0  # fenced writes refused because the lease was another writer's

    def owned_user(self, source_id: str) -> OwnedUser | None:
        return self.users.get(source_id)

    def owned_group(self, source_id: str) -> OwnedGroup | None:
        return self.groups.get(source_id)

    def owned_for(self, group_id: str, user_ids: Sequence[str]) -> tuple[OwnedGroup | None, dict[str, OwnedUser]]:
        with self._lock:
            return self.groups.get(group_id), {u: self.users[u] for u in user_ids if u in self.users}

    def owned_memberships(self, group_source_id: str) -> dict[str, OwnedMembership]:
        return {u: m for (g, u), m in self.memberships.items() if g == group_source_id}

    def read_group(self, group_id: str, user_ids: Sequence[str]) -> GroupRecords:
        """One after the other, through the methods (a test that replaces one sees the call)."""
        grants, memberships = self.grants(group_id), self.owned_memberships(group_id)
        return GroupRecords(grants, memberships, *self.owned_for(group_id, user_ids))

    def grants(self, group_id: str) -> dict[str, AccessGrant]:
        return {u: grant for (g, u), grant in self.granted.items() if g == group_id}

    def grant(self, group_id: str, user_id: str) -> AccessGrant | None:
        return self.granted.get((group_id, user_id))

    def record_grant(self, grant: AccessGrant) -> None:
        self.grant_writes += 1
        self.granted[(grant.group_id, grant.user_id)] = grant

    def forget_grant(self, group_id: str, user_id: str) -> None:
        self.grant_writes += 1
        self.granted.pop((group_id, user_id), None)

    def append_logs_and_release(self, entries: Sequence[LogEntry], name: str, owner: str) -> None:
        self.append_logs(entries)
        self.release_lease(name, owner)

    def fenced(self, lease: str, owner: str) -> FencedJitState:
        return FencedJitState(self, lease, owner)


class FencedJitState:
    """``JitState.fenced``: the store as one lease holder sees it. Each write checks the lease's owner and writes
    under the store's lock, as DynamoDB applies a transaction's ConditionCheck and Put together: a check that
    fails writes nothing (LeaseLost). ``JitState.in_flight``, when set, runs once as a write leaves (before it
    reaches the store): a writer stalls there."""

    WRITES = frozenset(
        {
            "record_user",
            "forget_user",
            "record_group",
            "forget_group",
            "record_membership",
            "forget_membership",
            "write_ownership",
            "put_item",
            "delete_item",
            "record_grant",
            "forget_grant",
        }
    )

    def __init__(self, base: JitState, lease: str, owner: str) -> None:
        self._base, self._lease, self._owner = base, lease, owner
        self.applied: list[str] = []  # the writes this view applied, in order

    def __getattr__(self, name: str) -> Any:
        if name not in self.WRITES:
            return getattr(self._base, name)

        def write(*args: Any, **kwargs: Any) -> Any:
            base = self._base
            hook, base.in_flight = base.in_flight, None
            if hook is not None:
                hook(name)
            with base._lock:
                held = base.leases.get(self._lease)
                if held is None or held[0] != self._owner:
                    base.fenced_refusals += 1
                    raise LeaseLost(f"lease {self._lease} was taken over by another writer: {name} not applied")
                self.applied.append(name)
                return getattr(base, name)(*args, **kwargs)

        return write


class FakeScheduler:
    """One-time expiry schedules by (group, user, end), as EventBridge Scheduler keeps them: ``fire`` deletes
    the schedule that fired (ActionAfterCompletion DELETE); ``fail_next`` refuses the next calls."""

    def __init__(self) -> None:
        self.schedules: set[tuple[str, str, datetime]] = set()
        self.calls: list[str] = []
        self.fail_next = 0

    def _call(self, what: str) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise SchedulerError(f"cannot {what} expiry schedule: ThrottlingException")
        self.calls.append(what)

    def set(self, group_id: str, user_id: str, end: datetime, previous: datetime | None = None) -> None:
        self._call("set")
        self.schedules.add((group_id, user_id, end))
        if previous is not None and previous != end:
            self.schedules.discard((group_id, user_id, previous))

    def clear(self, group_id: str, user_id: str, end: datetime) -> None:
        self._call("clear")
        self.schedules.discard((group_id, user_id, end))

    def due(self, now: datetime) -> list[tuple[str, str, datetime]]:
        """Schedules whose time has come, oldest first."""
        return sorted((s for s in self.schedules if s[2] <= now), key=lambda s: (s[2], s[0], s[1]))

    def fire(self, schedule: tuple[str, str, datetime]) -> tuple[str, str]:
        """The schedule fires: it is deleted, and its input (group id, user id) is what the expiry receives."""
        self.schedules.discard(schedule)
        return schedule[0], schedule[1]

    def of(self, user_id: str) -> list[datetime]:
        return sorted(end for _, u, end in self.schedules if u == user_id)


class Crash(BaseException):
    """The process dies here: nothing after it runs (not even ``finally`` blocks that write state)."""


@dataclass
class FakeAccountAccess:
    """IAM Identity Center account assignments and an organization, as ``ports.AccountAccess``.

    Fails the way AWS does: requests answer IN_PROGRESS and settle after ``polls_in_progress`` status
    reads (SUCCEEDED, or FAILED with the reason ``failures`` gives for the account); a request over
    ``limit`` in progress is throttled; an unknown permission set is refused (TargetNotFound) and an
    unknown account accepted; deleting an absent assignment is TargetNotFound; a create of one that
    exists succeeds and changes nothing. ``crash_after_writes`` makes the process die right after
    that many create/delete calls reached AWS. ``made_by`` records who made each assignment.
    """

    permission_sets_by_name: dict[str, str] = field(default_factory=dict)
    parents: dict[str, set[str]] = field(default_factory=dict)  # OU or root -> child OUs and accounts
    held: set[tuple[str, str, str]] = field(default_factory=set)  # (principal, ps arn, account)
    made_by: dict[tuple[str, str, str], str] = field(default_factory=dict)  # "idsync" | "hand"
    deleted_by_idsync: list[tuple[str, str, str]] = field(default_factory=list)
    polls_in_progress: int = 1
    limit: int = 15
    failures: dict[str, str] = field(default_factory=dict)
    requests: dict[str, list[Any]] = field(default_factory=dict)  # id -> [action, key, polls left, status, reason]
    peak: int = 0
    writes: int = 0
    calls: int = 0
    crash_after_writes: int | None = None
    unreachable: bool = False  # every read answers an HTTP 500
    watched_state: dict[str, Any] | None = None  # the state items copied at the crash (what survives it)
    state_at_crash: dict[str, Any] | None = None
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def permission_sets(self) -> dict[str, str]:
        self.calls += 1
        if self.unreachable:
            raise TargetError("ListPermissionSets: InternalServerException: HTTP 500")
        return dict(self.permission_sets_by_name)

    def accounts_under(self, parent_id: str) -> set[str]:
        self.calls += 1
        if parent_id not in self.parents:
            raise TargetNotFound(f"ListAccountsForParent {parent_id}: ParentNotFoundException")
        found: set[str] = set()
        for child in self.parents[parent_id]:
            found |= self.accounts_under(child) if child in self.parents else {child}
        return found

    def accounts(self) -> set[str]:
        self.calls += 1
        return {c for children in self.parents.values() for c in children if c not in self.parents}

    def assignments(self, principal_id: str) -> set[tuple[str, str]]:
        self.calls += 1
        if self.unreachable:
            raise TargetError("ListAccountAssignmentsForPrincipal: InternalServerException: HTTP 500")
        return {(ps, account) for p, ps, account in self.held if p == principal_id}

    def _in_progress(self) -> int:
        return sum(1 for r in self.requests.values() if r[3] == "IN_PROGRESS")

    def _start(self, action: str, principal_id: str, ps: str, account: str) -> AssignmentStatus:
        self.calls += 1
        if ps not in self.permission_sets_by_name.values():
            raise TargetNotFound(f"CreateAccountAssignment: ResourceNotFoundException: no permission set {ps}")
        key = (principal_id, ps, account)
        if action == "delete" and key not in self.held:
            raise TargetNotFound(f"DeleteAccountAssignment {key}: ResourceNotFoundException")
        self.peak = max(self.peak, self._in_progress() + 1)
        if self._in_progress() >= self.limit:
            raise TargetError("CreateAccountAssignment: ThrottlingException: too many requests in progress")
        request_id = f"req-{next(self._ids)}"
        self.requests[request_id] = [action, key, self.polls_in_progress, "IN_PROGRESS", None]
        self.writes += 1
        if self.crash_after_writes is not None and self.writes >= self.crash_after_writes:
            # AWS finishes what it accepted while the process is dead
            for pending, request in self.requests.items():
                if request[3] == "IN_PROGRESS":
                    self._settle(pending)
            self.crash_after_writes = None
            if self.watched_state is not None:
                self.state_at_crash = copy.deepcopy(self.watched_state)
            raise Crash
        return AssignmentStatus(request_id, "IN_PROGRESS")

    def _settle(self, request_id: str) -> None:
        request = self.requests[request_id]
        action, key = request[0], request[1]
        if key[2] in self.failures:
            request[3], request[4] = "FAILED", self.failures[key[2]]
            return
        request[3] = "SUCCEEDED"
        if action == "create" and key not in self.held:
            self.held.add(key)
            self.made_by[key] = "idsync"
        elif action == "delete" and key in self.held:
            self.held.discard(key)
            self.deleted_by_idsync.append(key)

    def _status(self, request_id: str, action: str) -> AssignmentStatus:
        self.calls += 1
        request = self.requests.get(request_id)
        if request is None or request[0] != action:
            raise TargetNotFound(f"request {request_id}: ResourceNotFoundException")
        if request[3] == "IN_PROGRESS":
            if request[2] <= 0:
                self._settle(request_id)
            else:
                request[2] -= 1
        return AssignmentStatus(request_id, request[3], request[4])

    def create(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        return self._start("create", principal_id, permission_set_arn, account_id)

    def delete(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        return self._start("delete", principal_id, permission_set_arn, account_id)

    def creation_status(self, request_id: str) -> AssignmentStatus:
        return self._status(request_id, "create")

    def deletion_status(self, request_id: str) -> AssignmentStatus:
        return self._status(request_id, "delete")

    def by_hand(self, principal_id: str, ps: str, account: str, add: bool = True) -> None:
        """An administrator's change in the console (not through idsync)."""
        key = (principal_id, ps, account)
        if add and key not in self.held:
            self.held.add(key)
            self.made_by[key] = "hand"
        elif not add:
            self.held.discard(key)


class FakeBucketStore:
    """``ports.BucketStore`` in memory, failing the way DynamoDB fails.

    A compare-and-set against a version another writer moved on is refused. ``interlopers`` makes the next
    that many writes lose to another writer who writes between our read and our write (its write bumps the
    version and changes nothing else). ``down`` makes every read and write a StateError (table unreachable).
    ``written`` keeps every state written (the interlopers' too), in order.
    """

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self.written: list[BucketState] = []
        self.refused = 0
        self.interlopers = 0
        self.down = False
        self._lock = threading.Lock()

    def load(self, name: str) -> BucketState | None:
        with self._lock:
            self._reachable(name)
            return self.buckets.get(name)

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        with self._lock:
            self._reachable(name)
            current = self.buckets.get(name)
            if self.interlopers > 0 and current is not None:
                self.interlopers -= 1
                self.buckets[name] = dataclasses.replace(current, version=current.version + 1)
                self.written.append(self.buckets[name])
            if self.buckets.get(name) != expected:
                self.refused += 1
                return False
            self.buckets[name] = new
            self.written.append(new)
            return True

    def _reachable(self, name: str) -> None:
        if self.down:
            raise StateError(f"token bucket {name}: cannot reach table fake-state (down)")


def _paged(items: list[Any], token: str | None, size: int) -> tuple[list[Any], str | None]:
    """One page of ``items`` as the Identity Store serves it: an opaque token for the rest."""
    start = int(token) if token else 0
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)
