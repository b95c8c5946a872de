"""A full reconcile at 100,000 users, 10,000 groups and 500,000 memberships with nothing to change: what it
reads, what that costs at IAM Identity Center's 20 calls a second, and across how many invocations of the sync
function it finishes; next to it, the cheapest drift check the Identity Store API allows.

The world: moto in-process (Identity Store gaps filled, lists paged in constant time) and SQLite state, both
seeded directly as a finished sync leaves them; Entra as Graph serves a full delta round (pages of 100 users,
groups with up to 100 members each, then the deleted users). The cycle is the product's own ``CycleService``
over the product's adapters for AWS and state. Time is virtual: every AWS call takes 1/20 s (the collective
limit, which the read reaches with one call at a time at 50 ms a call) and every Graph request
``GRAPH_REQUEST_SECONDS``; each invocation stops at the sync function's time budget (its timeout in the stack
less the handler's safety margin), checkpoints, and the next one carries on.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.identitystore.models import Group as MotoGroup
from moto.identitystore.models import identitystore_backends

from bench.world import REGION, fake_aws
from idsync.adapters.identitystore import IdentityStoreTarget
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.handlers.sync import SAFETY_MARGIN_MS
from idsync.mirror import Mirror
from idsync.model import ENTERPRISE_EXTENSION, Group, PlanPolicy, Refusal, User, freeze_doc
from idsync.ports import CallCounter, DirectoryChanges, FullRead
from idsync.services.blobs import save_blob
from idsync.services.cycle import CYCLE_KEY, MIRROR_KEY, CycleOptions, CycleService, Scoping
from idsync.services.drift import DriftCheck
from sandbox.moto_ext import StoredUser

USERS, GROUPS, MEMBERS_PER_GROUP = 100_000, 10_000, 50  # 500,000 memberships
RATE = 20.0  # IAM Identity Center's collective limit, calls a second
FUNCTION_TIMEOUT_SECONDS = 900  # the sync function's timeout in the stack (stacks/idsync_construct.py)
BUDGET_SECONDS = FUNCTION_TIMEOUT_SECONDS - SAFETY_MARGIN_MS / 1000
GRAPH_REQUEST_SECONDS = 0.3  # a delta page of 100 objects with $select: a few hundred milliseconds
GRAPH_PAGE = 100  # objects in one delta page
GRAPH_MEMBER_CHUNK = 100  # members a group item carries in one delta page (more come as more items)
LIST_PAGE = 100  # the Identity Store's MaxResults
SYNC_INTERVAL_MINUTES = 10  # the stack's default schedule (stack.sync_interval_minutes)
FULL_RECONCILE_HOURS = 24.0  # full_reconcile_hours' default
DRIFT_CHECK_HOURS = 24.0  # drift_check_hours' default
DRIFT_CYCLES = 3  # delta cycles measured with the drift check on, after the full reconcile


class VirtualTime:
    """Seconds spent by the calls, and a Clock reading them (the cycle's leases and records use it)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.start = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.seconds)


class UserMapper:
    managed_attributes = frozenset({"DisplayName", "Name", "Title", "Extensions"})
    create_only_attributes: frozenset[str] = frozenset()

    def map(self, obj: Mapping[str, Any]) -> User | Refusal:
        name = {"GivenName": obj["givenName"], "FamilyName": obj["surname"]}
        doc = freeze_doc({"DisplayName": obj["displayName"], "Name": name, "Title": obj.get("jobTitle")})
        return User(str(obj["id"]), str(obj["userPrincipalName"]), doc, (obj.get("manager") or {}).get("id"), True)


class GroupMapper:
    def map(self, obj: Mapping[str, Any]) -> Group | Refusal:
        return Group(str(obj["id"]), str(obj["displayName"]), obj.get("description"))


class Everything:
    fingerprint = "everything"

    class _Yes:
        in_scope = True
        reason = "no filters"

    def user(self, obj: Mapping[str, Any]) -> Any:  # noqa: ARG002 -- every user is in scope
        return self._Yes()

    def group(self, obj: Mapping[str, Any]) -> Any:  # noqa: ARG002 -- every group is in scope
        return self._Yes()


def directory(
    user_count: int = USERS, group_count: int = GROUPS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]]:
    """The tenant: users (each but the first with a manager), groups of 50 members, every user in 5 groups."""
    users = [
        {
            "id": f"e{i:06d}",
            "userPrincipalName": f"user{i:06d}@contoso.example",
            "displayName": f"User {i}",
            "givenName": "User",
            "surname": f"{i:06d}",
            "jobTitle": ("Engineer", "Analyst", "Manager")[i % 3],
            "accountEnabled": True,
            "manager": {"id": f"e{(i - 1) // 10:06d}"} if i else None,
        }
        for i in range(user_count)
    ]
    groups = [{"id": f"g{j:05d}", "displayName": f"Team {j:05d}", "description": None} for j in range(group_count)]
    members = {
        f"g{j:05d}": [f"e{(j * MEMBERS_PER_GROUP + k) % user_count:06d}" for k in range(MEMBERS_PER_GROUP)]
        for j in range(group_count)
    }
    return users, groups, members


class GraphDeltaRound:
    """Entra as Graph serves a full delta round (``ports.ChangeSource``): users in pages of 100, then groups in
    pages of 100 items, a group's members 100 to an item, then Entra's deleted users; every request takes
    ``GRAPH_REQUEST_SECONDS`` of virtual time. A delta from its links reports nothing changed."""

    def __init__(self, clock: VirtualTime, users: list[dict[str, Any]], groups: list[dict[str, Any]]) -> None:
        self.clock = clock
        self.users = users
        self.groups = groups
        self.members: dict[str, list[str]] = {}
        self.requests = 0

    def _request(self) -> None:
        self.requests += 1
        self.clock.seconds += GRAPH_REQUEST_SECONDS

    def _group_items(self) -> list[tuple[dict[str, Any], list[str]]]:
        items = []
        for group in self.groups:
            ids = self.members.get(group["id"], [])
            for start in range(0, max(len(ids), 1), GRAPH_MEMBER_CHUNK):
                items.append((group, ids[start : start + GRAPH_MEMBER_CHUNK]))
        return items

    def read_full(self, progress: FullRead | None, should_stop: Callable[[], bool]) -> FullRead:
        from idsync.mirror import MemberChange

        read = progress if progress is not None else FullRead()
        made = 0
        users_pages = math.ceil(len(self.users) / GRAPH_PAGE)
        group_items = self._group_items()
        group_pages = math.ceil(len(group_items) / GRAPH_PAGE)
        for resource, part, pages in (("users", read.users, users_pages), ("groups", read.groups, group_pages)):
            while not part.done:
                if made and should_stop():
                    return read
                self._request()
                made += 1
                page = int(part.next_link.rsplit("=", 1)[1]) if part.next_link else 0
                part.pages += 1
                if resource == "users":
                    for user in self.users[page * GRAPH_PAGE : (page + 1) * GRAPH_PAGE]:
                        part.objects[user["id"]] = dict(user)
                else:
                    for group, ids in group_items[page * GRAPH_PAGE : (page + 1) * GRAPH_PAGE]:
                        part.objects[group["id"]] = dict(group)
                        part.member_changes += [MemberChange(group["id"], i, "user", True) for i in ids]
                if page + 1 < pages:
                    part.next_link = f"https://graph.microsoft.com/v1.0/{resource}/delta?$skiptoken={page + 1}"
                else:
                    part.next_link, part.delta_link = None, f"https://graph.microsoft.com/v1.0/{resource}/delta?t=1"
        if read.deleted_items is None:
            if made and should_stop():
                return read
            self._request()
            read.deleted_items = {}
        return read

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        self._request()
        self._request()
        return DirectoryChanges([], {}, [], {}, [], dict(links or {}), False)

    def read_assignments(self) -> tuple[set[str], set[str]]:
        return set(), set()


def seed(
    store_id: str, state: SqliteStateStore, service: CycleService, clock: VirtualTime, source: GraphDeltaRound
) -> Mirror:
    """IAM Identity Center and the state as a finished sync of the directory leaves them."""
    users, groups, members = source.users, source.groups, source.members
    mirror = Mirror()
    mirror.merge_users(users, {})
    mirror.merge_groups(
        groups, {}, [_member(g, u) for g, ids in members.items() for u in ids], full=True, now=clock.now().isoformat()
    )
    desired = service.desired(mirror)
    data = identitystore_backends[DEFAULT_ACCOUNT_ID][REGION]._store(store_id)
    user_targets = {sid: f"{index:08d}-0000-4000-8000-000000000000" for index, sid in enumerate(desired.users)}
    owned_users = []
    for sid, user in desired.users.items():
        target = user_targets[sid]
        extensions = (
            {ENTERPRISE_EXTENSION: {"manager": {"value": user_targets[user.manager_source_id]}}}
            if user.manager_source_id
            else {}
        )
        data.users[target] = StoredUser(target, store_id, {"UserName": user.user_name, **user.doc}, extensions)
        doc = {**user.doc, "Extensions": extensions} if extensions else dict(user.doc)
        owned_users.append(
            (
                sid,
                target,
                user.user_name,
                json.dumps(doc, separators=(",", ":")),
                user.manager_source_id,
                user.fingerprint(),
                user.user_name.casefold(),
            )
        )
    group_targets = {sid: f"{index:08d}-1111-4000-8000-000000000000" for index, sid in enumerate(desired.groups)}
    owned_groups = []
    for sid, group in desired.groups.items():
        target = group_targets[sid]
        data.groups[target] = MotoGroup(target, group.display_name, [], group.description, store_id)
        owned_groups.append((sid, target, group.display_name, group.description, group.fingerprint()))
    owned_memberships = []
    for index, (group_sid, user_sid) in enumerate(desired.memberships):
        membership = f"{index:08d}-2222-4000-8000-000000000000"
        data.group_memberships[membership] = {
            "IdentityStoreId": store_id,
            "MembershipId": membership,
            "GroupId": group_targets[group_sid],
            "MemberId": {"UserId": user_targets[user_sid]},
        }
        owned_memberships.append((group_sid, user_sid, membership))
    connection = state._conn  # seeding in bulk: one transaction, not 610,000
    with connection:
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO owned_users (source_id, target_id, user_name, doc, manager_source_id, fingerprint,"
            " user_name_folded) VALUES (?, ?, ?, ?, ?, ?, ?)",
            owned_users,
        )
        connection.executemany("INSERT INTO owned_groups VALUES (?, ?, ?, ?, ?)", owned_groups)
        connection.executemany("INSERT INTO owned_memberships VALUES (?, ?, ?)", owned_memberships)
        connection.execute("COMMIT")
    save_blob(state, MIRROR_KEY, mirror.to_bytes())
    links = {"users": "https://graph.microsoft.com/v1.0/users/delta?t=0", "groups": "x"}
    last_full = clock.now() - timedelta(hours=FULL_RECONCILE_HOURS + 1)  # a full reconcile is due
    state.put_item(CYCLE_KEY, {"links": links, "fingerprint": service.fingerprint, "last_full": last_full.isoformat()})
    return mirror


def _member(group_id: str, user_id: str) -> Any:
    from idsync.mirror import MemberChange

    return MemberChange(group_id, user_id, "user", True)


def drift_check(user_count: int, members: Mapping[str, list[str]]) -> dict[str, Any]:
    """The cheapest way the API allows to see every user, group and membership IAM Identity Center holds."""
    users = math.ceil(user_count / LIST_PAGE)  # ListUsers: the only way to see users deleted or added by hand
    groups = math.ceil(len(members) / LIST_PAGE)
    # a group's members only through ListGroupMemberships (pages of 100); per user instead
    # (ListGroupMembershipsForMember / IsMemberInGroups) costs at least one call for each of 100,000 users
    memberships = sum(max(1, math.ceil(len(ids) / LIST_PAGE)) for ids in members.values())
    per_member = user_count
    whole = users + groups + memberships
    cycles_per_day = 24 * 60 // SYNC_INTERVAL_MINUTES
    cycles_per_round = cycles_per_day * FULL_RECONCILE_HOURS / 24
    slice_calls = math.ceil(whole / cycles_per_round)
    return {
        "whole_check_calls": {
            "ListUsers": users,
            "ListGroups": groups,
            "ListGroupMemberships": memberships,
            "total": whole,
        },
        "whole_check_seconds_at_limit": round(whole / RATE, 1),
        "memberships_per_user_instead_calls": per_member,
        "spread_over_full_reconcile_hours": {
            "sync_interval_minutes": SYNC_INTERVAL_MINUTES,
            "cycles_per_day": cycles_per_day,
            "calls_per_cycle": slice_calls,
            "seconds_per_cycle_at_limit": round(slice_calls / RATE, 1),
            "share_of_api_budget_per_cycle": round(slice_calls / RATE / (SYNC_INTERVAL_MINUTES * 60), 4),
            "calls_per_day": slice_calls * cycles_per_day,
            "groups_per_cycle": math.ceil(len(members) / cycles_per_round),
        },
    }


def measure_drift_check(
    service: CycleService, target: IdentityStoreTarget, counter: CallCounter, clock: VirtualTime
) -> list[dict[str, Any]]:
    """Delta cycles every ``SYNC_INTERVAL_MINUTES`` with the built drift check on: its List calls each."""
    drift = DriftCheck(
        target,
        service.state,
        clock,
        timedelta(hours=DRIFT_CHECK_HOURS),
        service.policy.managed_attributes,
        service.policy.create_only_attributes,
    )
    service.drift = drift
    cycles = []
    for _ in range(DRIFT_CYCLES):
        clock.seconds += SYNC_INTERVAL_MINUTES * 60
        before = dict(counter.calls)
        outcome = service.run(CycleOptions(lease_seconds=960))
        assert outcome.report is not None, outcome.skipped
        assert outcome.mode == "delta", outcome.mode
        calls = {k: v - before.get(k, 0) for k, v in counter.calls.items() if v - before.get(k, 0)}
        cycles.append(
            {
                "calls": sum(calls.values()),
                "by_operation": dict(sorted(calls.items())),
                "budget": drift.last.budget,
                "drift_found": len(drift.last.drifts),
                "writes": outcome.report.writes,
            }
        )
    return cycles


def _built(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """The built drift check's measured figures, next to the costing (the first slice has no interval yet)."""
    steady = measured[1:] or measured
    calls = max(c["calls"] for c in steady)
    return {
        "drift_check_hours": DRIFT_CHECK_HOURS,
        "measured_cycles": measured,
        "calls_per_cycle": calls,
        "seconds_per_cycle_at_limit": round(calls / RATE, 1),
        "calls_per_day": calls * 24 * 60 // SYNC_INTERVAL_MINUTES,
    }


def run() -> dict[str, Any]:
    return run_at(USERS, GROUPS)


def run_at(user_count: int, group_count: int) -> dict[str, Any]:
    """The figures for a directory of this size (``run`` is the benchmark's: 100,000 and 10,000)."""
    users, groups, members = directory(user_count, group_count)
    clock = VirtualTime()
    with tempfile.TemporaryDirectory(prefix="idsync-bench-full-") as folder, fake_aws():
        store_id = boto3.client("sso-admin", region_name=REGION).list_instances()["Instances"][0]["IdentityStoreId"]
        client = boto3.client("identitystore", region_name=REGION)
        counter = CallCounter()

        def at_the_limit(**_: Any) -> None:
            clock.seconds += 1 / RATE

        client.meta.events.register("before-call.identitystore", at_the_limit, unique_id="bench-limit")
        target = IdentityStoreTarget(store_id, client, counter)
        state = SqliteStateStore(Path(folder) / "state.db")
        source = GraphDeltaRound(clock, users, groups)
        source.members = members

        def service() -> CycleService:
            return CycleService(
                source,
                target,
                state,
                UserMapper(),
                GroupMapper(),
                Everything(),
                Scoping("all", False),
                PlanPolicy(),
                clock,
                full_reconcile=timedelta(hours=FULL_RECONCILE_HOURS),
            )

        seeded = time.perf_counter()
        seed(store_id, state, service(), clock, source)
        seeding = time.perf_counter() - seeded
        invocations, stopped_in, wall = [], [], time.perf_counter()
        writes = 0
        while True:
            began = clock.seconds
            cpu = time.process_time()
            outcome = service().run(
                CycleOptions(should_stop=lambda b=began: clock.seconds - b > BUDGET_SECONDS, lease_seconds=960)
            )
            report = outcome.report
            assert report is not None, outcome.skipped
            writes += report.writes
            invocations.append(
                {
                    "virtual_seconds": round(clock.seconds - began, 1),
                    "cpu_seconds": round(time.process_time() - cpu, 1),
                    "mode": outcome.mode,
                }
            )
            last = state.get_item("run:last") or {}
            stopped_in.append(str(last.get("status")))
            clock.seconds += SYNC_INTERVAL_MINUTES * 60 - (clock.seconds - began)  # the next tick
            if report.complete or len(invocations) >= 10:
                break
        full_reads = dict(counter.calls)
        measured = measure_drift_check(service(), target, counter, clock)
        keys = [k for (k,) in state._conn.execute("SELECT key FROM items")]
        chunks = [k for k in keys if "@" in k]
        blobs = sorted({k.split("@", 1)[0] for k in chunks})
        named = {key: str((state.get_item(key) or {}).get("generation")) for key in blobs}
        orphans = [k for k in chunks if k.split("@", 1)[1].split("#", 1)[0] != named[k.split("@", 1)[0]]]
        left = sorted(k for k in keys if k.startswith(("checkpoint", "full-read")))
    aws_calls = counter.total - sum(c["calls"] for c in measured)
    return {
        "full_reconcile": {
            "users": user_count,
            "groups": group_count,
            "memberships": group_count * MEMBERS_PER_GROUP,
            "full_reads": {**dict(sorted(full_reads.items())), "total": aws_calls},
            "graph_requests": source.requests,
            "graph_seconds": round(source.requests * GRAPH_REQUEST_SECONDS, 1),
            "full_read_seconds_at_limit": round(aws_calls / RATE, 1),
            "invocations": len(invocations),
            "invocation_budget_seconds": BUDGET_SECONDS,
            "per_invocation": invocations,
            "stopped": stopped_in[:-1],
            "complete": bool(report.complete),
            "writes": writes,
            "blobs_left": blobs,
            "orphaned_chunks": len(orphans),
            "checkpoint_items_left": left,
            "wall_seconds": round(time.perf_counter() - wall, 1),
            "seed_seconds": round(seeding, 1),
            "drift_check": {**drift_check(user_count, members), "built": _built(measured)},
            "assumptions": {
                "aws_call_seconds": 1 / RATE,
                "graph_request_seconds": GRAPH_REQUEST_SECONDS,
                "graph_page": GRAPH_PAGE,
                "cpu": "in-process moto and SQLite; CPU time per invocation is reported apart",
            },
        }
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    print(json.dumps(run(), indent=2))
