"""The concurrent applier: the pool keeps every ordering the plan needs, whatever order AWS answers in, and ends
where the one-at-a-time applier ends; batched records and multi-create intents survive a crash."""

from __future__ import annotations

import gc
import itertools
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idsync.errors import TargetThrottled
from idsync.model import Action, AttributeChange, Kind, Operation, OwnedUser, Status, UserDoc
from idsync.services import sync
from idsync.services.cycle import CycleService
from idsync.services.sync import (
    BACK_TO_BACK,
    INTENT_KEY,
    PROBE_OPS,
    Applier,
    PoolSizer,
    _Schedule,
    intent_entries,
    resolve_intent,
    resources,
)
from tests.fakes import FakeIdentityStore, FakeSource, FakeState
from tests.unit.test_cycle import World, tenant

ENTERPRISE = "aws:identitystore:enterprise"


class PooledWorld(World):
    """The unit tests' world, its cycle applying ``concurrency`` writes at once with batched records."""

    def __init__(
        self, source: FakeSource | None = None, concurrency: int = 4, record_every: int = 25, probe: int = 0
    ) -> None:
        super().__init__(source)
        self.concurrency = concurrency
        self.record_every = record_every
        self.probe = probe  # 0: the whole pool from the first write, whatever the fake's latency

    def service(self) -> CycleService:
        service = super().service()
        service.concurrency = self.concurrency
        service.record_every = self.record_every
        service.probe = self.probe
        return service


# --------------------------------------------------------------------------- adversarial completion order


class Gate:
    """Holds every write at the door until the test lets one through, in an order the test draws."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.arrived: list[int] = []
        self.allowed: set[int] = set()
        self.tickets = 0
        self.open = False  # let everything through (setup and the sequential twin)

    def enter(self) -> None:
        with self.cond:
            if self.open:
                return
            ticket = self.tickets
            self.tickets += 1
            self.arrived.append(ticket)
            self.cond.notify_all()
            if not self.cond.wait_for(lambda: ticket in self.allowed, timeout=30):
                raise RuntimeError("the gate was never opened for this call")
            self.allowed.discard(ticket)

    def release_one(self, pick: Callable[[int], int]) -> bool:
        """Let one waiting call through (``pick(n)`` chooses among the n waiting); False when none waits."""
        with self.cond:
            if not self.arrived:
                return False
            ticket = self.arrived.pop(pick(len(self.arrived)))
            self.allowed.add(ticket)
            self.cond.notify_all()
            return True


class GatedStore(FakeIdentityStore):
    """The fake Identity Store behind a gate, checking the plan's orderings as each write goes through."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate
        self.violations: list[str] = []
        self.calls: list[tuple[str, str]] = []  # deletes, in the order they went through the gate

    def _check_manager(self, who: str, value: Any) -> None:
        manager = value.get("value") if isinstance(value, dict) else None
        if manager is not None and manager not in self.users:
            self.violations.append(f"{who} references manager {manager} before it exists")

    def _conflict(self, call: Callable[[], Any], what: str) -> Any:
        from idsync.errors import TargetConflict

        try:
            return call()
        except TargetConflict:
            self.violations.append(f"{what}: its name was still held")
            raise

    def create_user(self, user_name: str, doc: UserDoc) -> str:
        self.gate.enter()
        self._check_manager(user_name, ((doc.get("Extensions") or {}).get(ENTERPRISE) or {}).get("manager"))
        return self._conflict(lambda: super(GatedStore, self).create_user(user_name, doc), f"CreateUser {user_name}")

    def update_user(self, user_id: str, changes: Sequence[AttributeChange]) -> None:
        self.gate.enter()
        for change in changes:
            if change.attribute == "Extensions" and isinstance(change.new, dict):
                self._check_manager(user_id, (change.new.get(ENTERPRISE) or {}).get("manager"))
        self._conflict(lambda: super(GatedStore, self).update_user(user_id, changes), f"UpdateUser {user_id}")

    def delete_user(self, user_id: str) -> None:
        self.gate.enter()
        super().delete_user(user_id)

    def create_group(self, display_name: str, description: str | None) -> str:
        self.gate.enter()
        call = lambda: super(GatedStore, self).create_group(display_name, description)  # noqa: E731
        return self._conflict(call, f"CreateGroup {display_name}")

    def update_group(self, group_id: str, changes: Sequence[AttributeChange]) -> None:
        self.gate.enter()
        self._conflict(lambda: super(GatedStore, self).update_group(group_id, changes), f"UpdateGroup {group_id}")

    def delete_group(self, group_id: str) -> None:
        self.gate.enter()
        self.calls.append(("DeleteGroup", group_id))
        super().delete_group(group_id)

    def create_membership(self, group_id: str, user_id: str) -> str:
        self.gate.enter()
        if group_id not in self.groups or user_id not in self.users:
            self.violations.append(f"CreateGroupMembership {group_id} <- {user_id} before both exist")
        return super().create_membership(group_id, user_id)

    def delete_membership(self, membership_id: str) -> None:
        self.gate.enter()
        self.calls.append(("DeleteGroupMembership", membership_id))
        super().delete_membership(membership_id)


def _change_entra(source: FakeSource, rng: random.Random) -> None:
    """A burst of Entra changes that makes a plan with every ordering in it: user and group renames (swaps
    and chains included), new users reporting to new managers, leavers (disabled or gone), membership moves,
    and a deleted group."""
    people = source.users
    upns = [p["userPrincipalName"] for p in people]
    shuffled = upns[:]
    rng.shuffle(shuffled)
    for person, upn in zip(people, shuffled, strict=True):
        if rng.random() < 0.4:
            person["userPrincipalName"] = upn  # a permutation of names: swaps and chains
    for i in range(rng.randint(0, 4)):
        manager = f"n{i - 1}" if i and rng.random() < 0.7 else rng.choice(people)["id"]
        people.append(
            {"id": f"n{i}", "userPrincipalName": f"new{i}@example.com", "displayName": f"New {i}",
             "jobTitle": "New", "accountEnabled": True, "manager": {"id": manager}}
        )  # fmt: skip
        source.members[rng.choice(sorted(source.members))].append(f"n{i}")
    for person in rng.sample(people[1:12], rng.randint(0, 3)):
        if rng.random() < 0.5:
            person["accountEnabled"] = False
        else:
            people.remove(person)
            for members in source.members.values():
                if person["id"] in members:
                    members.remove(person["id"])
    for members in source.members.values():
        for member in list(members):
            if rng.random() < 0.2:
                members.remove(member)
                source.members[rng.choice(sorted(source.members))].append(member)
    if rng.random() < 0.5:
        gone = source.groups.pop(rng.randrange(len(source.groups)))
        source.members.pop(gone["id"], None)
    else:
        # the planner orders renames among themselves, not a rename after the delete that frees its name
        names = [g["displayName"] for g in source.groups]
        rng.shuffle(names)
        for group, name in zip(source.groups, names, strict=True):
            group["displayName"] = name
    for group_id in source.members:
        source.members[group_id] = list(dict.fromkeys(source.members[group_id]))


def _snapshot(store: FakeIdentityStore) -> tuple[Any, ...]:
    """What AWS holds, by name (a manager reference to a user gone is kept as such)."""
    names = {uid: u["UserName"] for uid, u in store.users.items()}
    groups = {g["DisplayName"]: store.members_of(g["DisplayName"]) for g in store.groups.values()}
    managers = {}
    for user in store.users.values():
        reference = ((user["doc"].get("Extensions") or {}).get(ENTERPRISE) or {}).get("manager")
        managers[user["UserName"]] = names.get(reference["value"], "<gone>") if reference else None
    docs = {u["UserName"]: {k: v for k, v in u["doc"].items() if k != "Extensions"} for u in store.users.values()}
    return set(names.values()), groups, managers, docs


def _twin_worlds(seed: int, gate: Gate, concurrency: int) -> tuple[World, PooledWorld]:
    """Two worlds provisioned alike, then given the same Entra changes: one sequential, one pooled (gated)."""
    sequential = World(tenant(users=12, groups=4), max_deletions=1000, max_deletion_percent=100.0)
    pooled = PooledWorld(tenant(users=12, groups=4), concurrency=concurrency)
    pooled.policy = dict(sequential.policy)
    pooled.store = GatedStore(gate)
    gate.open = True
    for world in (sequential, pooled):
        world.run()
        _change_entra(world.source, random.Random(seed))
    gate.open = False
    return sequential, pooled


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), order_seed=st.integers(0, 2**32), concurrency=st.integers(2, 6))
def test_any_completion_order_keeps_the_plans_orderings_and_ends_as_the_sequential_applier(
    seed: int, order_seed: int, concurrency: int
) -> None:
    # the order in which AWS answers the calls in flight: drawn from a seed, as arrivals depend on the threads
    order = random.Random(order_seed)
    gate = Gate()
    sequential, pooled = _twin_worlds(seed, gate, concurrency)
    assert isinstance(pooled.store, GatedStore)
    expected = sequential.run()
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def cycle() -> None:
        try:
            outcomes.append(pooled.run())
        except BaseException as error:  # surfaced below
            errors.append(error)

    runner = threading.Thread(target=cycle)
    runner.start()
    while runner.is_alive():
        time.sleep(0.001)  # let every worker the pool started reach the gate
        gate.release_one(order.randrange)
    runner.join()
    assert errors == []
    outcome = outcomes[0]
    # Then no write went out of the plan's order (names, memberships, managers)
    assert pooled.store.violations == []
    # and no group was deleted before the removals the plan makes from it
    for op in outcome.plan.operations:
        if op.kind is Kind.GROUP and op.action is Action.DELETE:
            removals = {
                r.membership_id
                for r in outcome.plan.operations
                if r.kind is Kind.MEMBERSHIP and r.action is Action.DELETE and r.source_id == op.source_id
            }
            deleted_at = pooled.store.calls.index(("DeleteGroup", op.target_id))
            assert {m for c, m in pooled.store.calls[:deleted_at] if c == "DeleteGroupMembership"} >= removals
    # and the pooled cycle did what the sequential one did, to the same end state
    assert outcome.report.failures == expected.report.failures == ()
    assert outcome.report.complete
    assert expected.report.complete
    assert outcome.report.counts == expected.report.counts
    assert _snapshot(pooled.store) == _snapshot(sequential.store)
    assert {o.user_name for o in pooled.state.users.values()} == {o.user_name for o in sequential.state.users.values()}
    assert set(pooled.state.memberships) == set(sequential.state.memberships)
    assert pooled.state.get_item(INTENT_KEY) is None


# --------------------------------------------------------------------------- the schedule itself


def _user(sid: str, name: str, action: Action = Action.CREATE, **extra: Any) -> Operation:
    return Operation(Kind.USER, action, sid, name, **extra)


def test_the_schedule_orders_only_what_conflicts() -> None:
    from idsync.model import User

    manager = User("m", "boss@example.com", {}, None)
    report = User("r", "report@example.com", {}, "m")
    ops = [
        _user("a", "a@example.com", Action.UPDATE, target_id="ta",
              changes=(AttributeChange("UserName", "a@example.com", "b@example.com"),)),
        _user("m", "boss@example.com", user=manager),
        _user("r", "report@example.com", user=report),
        _user("c", "B@example.com"),  # takes the name a's rename takes: waits for it (case blind)
        Operation(Kind.MEMBERSHIP, Action.CREATE, "g", "G <- r", member_source_id="r"),
        Operation(Kind.MEMBERSHIP, Action.DELETE, "h", "H <- x", member_source_id="x", membership_id="mx"),
        Operation(Kind.GROUP, Action.DELETE, "h", "H", target_id="th"),
    ]  # fmt: skip
    schedule = _Schedule(ops)
    assert sorted(schedule.ready) == [0, 1, 5]  # independent: start together
    schedule.pop(), schedule.pop(), schedule.pop()
    schedule.finish(1)  # the manager exists: its report may go
    assert sorted(schedule.ready) == [2]
    schedule.finish(0)  # the rename freed and took its names: the create of the taken name waits no more
    assert sorted(schedule.ready) == [2, 3]
    schedule.pop(), schedule.pop()
    schedule.finish(2)
    assert sorted(schedule.ready) == [4]  # the membership once its user exists
    schedule.finish(5)
    assert sorted(schedule.ready) == [4, 6]  # the group delete once its memberships are removed
    assert ("u:m", False) in resources(ops[2])
    assert resources(ops[4]) == [("g:g", False), ("u:r", False)]


# --------------------------------------------------------------------------- the pool overlaps


def test_a_large_plan_overlaps_calls_and_ends_as_the_sequential_applier() -> None:
    # Given a tenant of 60 users in 6 groups, and an Identity Store whose calls take a few milliseconds
    sequential = World(tenant(users=60, groups=6))
    pooled = PooledWorld(tenant(users=60, groups=6), concurrency=6)
    pooled.store.latency = 0.002
    # When each provisions it
    first = sequential.run()
    outcome = pooled.run()
    # Then the pool had several calls in flight at once, recorded in batches, and both end alike
    assert pooled.store.max_in_flight > 1
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert outcome.report.counts == first.report.counts
    assert pooled.snapshot() == sequential.snapshot()
    assert set(pooled.state.users) == set(sequential.state.users)
    assert set(pooled.state.memberships) == set(sequential.state.memberships)
    assert max(pooled.state.batches) > 1
    assert len(pooled.state.batches) < len(pooled.state.users) + len(pooled.state.memberships)
    assert len(pooled.store.writes) == len(sequential.store.writes)
    # and the next cycle has nothing left to do
    pooled.store.writes.clear()
    assert pooled.run().report.writes == 0


def test_throttling_stops_dispatching_lets_in_flight_writes_finish_and_the_next_runs_carry_on() -> None:
    # Given AWS throttling 10 writes (past the client's retries) while the pool runs 4 at a time
    world = PooledWorld(concurrency=4)
    world.store.throttled_writes = 10
    runs = 0
    while True:
        runs += 1
        report = world.run().report
        # Then no run reports a failure; each stopped one is resumed
        assert report.failures == ()
        if report.complete:
            break
        assert world.state.get_item("transient-stops") is None  # throttling never counts against an object
        assert runs < 20
    assert runs > 1
    expected = World()
    expected.run()
    assert world.snapshot() == expected.snapshot()


# --------------------------------------------------------------------------- crash safety of the batched path


@pytest.mark.parametrize("k", range(0, 27, 2))
def test_a_crash_after_any_write_with_records_still_buffered_is_finished_by_the_next_run(k: int) -> None:
    # Given a pooled first sync that dies after k writes, its last records still in the buffer
    world = PooledWorld(concurrency=4, record_every=25)
    world.store.crash_after_writes = k
    with pytest.raises(RuntimeError):
        world.run()
    # Then every user AWS holds is either recorded or named by the intent item
    owned = {o.target_id for o in world.state.users.values()}
    named = {str(e["name"]) for e in intent_entries(world.state.get_item(INTENT_KEY) or {})}
    assert {u["UserName"] for t, u in world.store.users.items() if t not in owned} <= named
    # When the next run goes
    world.store.crash_after_writes = None
    outcome = world.run()
    # Then it finishes the job with no orphan, no duplicate and no failure (replays are harmless)
    assert outcome.report.complete
    assert outcome.report.failures == ()
    expected = World()
    expected.run()
    assert world.snapshot() == expected.snapshot()
    assert len(world.store.users) == len(world.state.users) == 12
    world.store.writes.clear()
    assert world.run(force_full=True).report.writes == 0


def test_a_crash_after_the_calls_before_their_batched_records_replays_harmlessly() -> None:
    # Given a provisioned tenant, then renames, moves and a leaver in Entra
    world = PooledWorld(concurrency=4, record_every=1000)
    world.run()
    world.source.users[3]["userPrincipalName"] = "renamed3@example.com"
    world.source.users[4]["jobTitle"] = "Lead"
    world.source.members["g0"].remove("e3")
    world.source.members["g1"].append("e3")
    world.source.users.pop(11)
    for members in world.source.members.values():
        if "e11" in members:
            members.remove("e11")
    # When the cycle makes every call but dies before its buffered records are written
    world.state.crash_after_records = world.state.records
    with pytest.raises(RuntimeError):
        world.run()
    assert world.store.find_user("renamed3@example.com") is not None  # the calls went out
    assert "e11" in world.state.users  # the records did not
    # Then the next cycle replays the updates, the membership add (ConflictException, looked up) and the deletes
    # of objects already gone, and ends where an uninterrupted cycle ends
    world.state.crash_after_records = None
    outcome = world.run()
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert "e11" not in world.state.users
    assert world.store.find_user("renamed3@example.com") == world.state.users["e3"].target_id
    assert "renamed3@example.com" in world.store.members_of("Team 1")
    world.store.writes.clear()
    assert world.run(force_full=True).report.writes == 0


def test_every_create_of_the_window_is_intended_before_any_of_them_is_sent() -> None:
    # Given a pooled first sync whose Identity Store reports the intent item at each CreateUser
    world = PooledWorld(concurrency=4)
    seen: list[set[str]] = []
    original = world.store.create_user

    def create_user(user_name: str, doc: UserDoc) -> str:
        item = world.state.get_item(INTENT_KEY) or {}
        seen.append({str(e["name"]) for e in intent_entries(item)})
        assert user_name in seen[-1], f"{user_name} sent before it was intended"
        return original(user_name, doc)

    world.store.create_user = create_user  # type: ignore[method-assign]
    assert world.run().report.complete
    # Then the intents were written a window at a time (not one put per create), and none is left
    assert max(len(names) for names in seen) > 1
    assert world.state.get_item(INTENT_KEY) is None


def test_resolve_intent_settles_every_entry_and_the_older_single_shape() -> None:
    store = FakeIdentityStore()
    state = FakeState()
    landed = store.create_user("a@example.com", {"DisplayName": "A"})
    group = store.create_group("Team A", None)
    state.put_item(
        INTENT_KEY,
        {"intents": [
            {"kind": "user", "source_id": "ea", "name": "a@example.com", "doc": {"DisplayName": "A"}},
            {"kind": "user", "source_id": "eb", "name": "b@example.com", "doc": {}},  # never sent
            {"kind": "group", "source_id": "ga", "name": "Team A", "description": None},
        ]},
    )  # fmt: skip
    assert resolve_intent(state, store)
    assert state.users["ea"].target_id == landed
    assert "eb" not in state.users
    assert state.groups["ga"].target_id == group
    assert state.get_item(INTENT_KEY) is None
    # the shape one create at a time wrote
    other = store.create_user("c@example.com", {})
    state.put_item(INTENT_KEY, {"kind": "user", "source_id": "ec", "name": "c@example.com", "doc": {}})
    assert resolve_intent(state, store)
    assert state.users["ec"] == OwnedUser("ec", other, "c@example.com", {})


def test_a_failed_write_costs_no_other_and_an_auth_error_stops_after_the_in_flight_writes() -> None:
    from idsync.errors import TargetAuthError

    # Given a pooled sync where one user's create is refused by AWS
    world = PooledWorld(concurrency=4)
    world.store.fail_on["u4@example.com"] = "ValidationException: Title"
    outcome = world.run()
    # Then only that user (and its memberships) failed; everyone else is provisioned
    assert [(f.kind, f.name) for f in outcome.report.failures] == [("user", "u4@example.com")]
    assert len(world.store.users) == len(world.state.users) == 11
    # When AWS then rejects the credentials on one write of the next cycle
    world.store.fail_on.clear()
    original = world.store.create_membership

    def create_membership(group_id: str, user_id: str) -> str:
        raise TargetAuthError("CreateGroupMembership: AccessDeniedException")

    world.store.create_membership = create_membership  # type: ignore[method-assign]
    with pytest.raises(TargetAuthError):
        world.run()
    # Then the writes that went through before it are recorded (u4 exists and is owned)
    assert world.store.find_user("u4@example.com") == world.state.users["e4"].target_id
    world.store.create_membership = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the pool's width from what it observes


class ThreadNotingStore(FakeIdentityStore):
    """The fake Identity Store noting which thread sent each create, and what, in the order they came."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.sent: list[tuple[str, ...]] = []

    def create_user(self, user_name: str, doc: UserDoc) -> str:
        self.threads.append(threading.get_ident())
        self.sent.append(("user", user_name))
        return super().create_user(user_name, doc)

    def create_group(self, display_name: str, description: str | None) -> str:
        self.threads.append(threading.get_ident())
        self.sent.append(("group", display_name))
        return super().create_group(display_name, description)

    def create_membership(self, group_id: str, user_id: str) -> str:
        self.threads.append(threading.get_ident())
        self.sent.append(("membership", self.groups[group_id]["DisplayName"], self.users[user_id]["UserName"]))
        return super().create_membership(group_id, user_id)


def _sized_twins(latency: float) -> tuple[World, PooledWorld, ThreadNotingStore]:
    sequential = World(tenant(users=40, groups=4))
    sequential.store = ThreadNotingStore()
    sized = PooledWorld(tenant(users=40, groups=4), concurrency=6, probe=PROBE_OPS)
    store = ThreadNotingStore()
    store.latency = latency
    sized.store = store
    return sequential, sized, store


def _ends_as_one_at_a_time(sequential: World, other: World, outcome: Any, expected: Any) -> None:
    """``other`` sent its writes in the one-at-a-time applier's order and ends where that applier ends."""
    assert isinstance(sequential.store, ThreadNotingStore)
    assert isinstance(other.store, ThreadNotingStore)
    assert other.store.sent == sequential.store.sent
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert outcome.report.counts == expected.report.counts
    assert other.snapshot() == sequential.snapshot()
    assert set(other.state.memberships) == set(sequential.state.memberships)
    assert other.state.get_item(INTENT_KEY) is None


def test_calls_answering_at_once_keep_the_applier_on_its_own_thread_and_end_as_the_sequential_applier() -> None:
    # Given an Identity Store that answers at once, and an applier allowed 6 writes at once
    sequential, sized, store = _sized_twins(latency=0.0)
    # When each provisions the tenant
    expected = sequential.run()
    outcome = sized.run()
    # Then every write went out from the cycle's own thread: a pool would only have added its hand-offs
    assert len(store.threads) > PROBE_OPS
    assert set(store.threads) == {threading.get_ident()}
    # in exactly the one-at-a-time applier's order, though sent in runs back to back, and it ends where the
    # one-at-a-time applier ends
    _ends_as_one_at_a_time(sequential, sized, outcome, expected)


class ThrottlingAtStore(ThreadNotingStore):
    """Answers the write numbered ``throttle_at`` (counted from 0, once) with throttling past the retries."""

    def __init__(self, throttle_at: int) -> None:
        super().__init__()
        self.throttle_at: int | None = throttle_at

    def _write(self, what: str, name: str = "") -> None:
        if self.throttle_at is not None and len(self.writes) == self.throttle_at:
            self.throttle_at = None
            raise TargetThrottled(f"{what} {name}: ThrottlingException: Rate exceeded")
        super()._write(what, name)


# the probe sends writes 0 and 1 alone; runs of 32 follow (2-33, 34-65): the first, a middle, the last of a run
@pytest.mark.parametrize("throttle_at", [2, 9, 33, 50])
def test_a_throttled_write_inside_a_back_to_back_run_ends_the_run_before_its_next_call(throttle_at: int) -> None:
    # Given an applier alone against a store that answers at once (probe of 2: then runs of ready writes),
    # whose write number ``throttle_at`` is throttled past the client's retries
    sequential = World(tenant(users=40, groups=4))
    alone = PooledWorld(tenant(users=40, groups=4), concurrency=6, probe=2)
    store = ThrottlingAtStore(throttle_at)
    alone.store = store
    expected = sequential.run()
    # When the cycle runs
    outcome = alone.run()
    # Then no call followed the throttled one: the run stopped, nothing after it was sent
    assert len(store.threads) == throttle_at + 1
    assert len(store.writes) == throttle_at
    assert not outcome.report.complete
    # and every write that landed is recorded as idsync's, and logged as a success in the order it was sent;
    # the throttled one is logged as skipped, last
    owned = len(alone.state.users) + len(alone.state.groups) + len(alone.state.memberships)
    assert owned == throttle_at
    first = [(e.kind, e.action, e.status) for e in alone.state.logs if e.cycle_id == outcome.report.cycle_id]
    assert [status for _, _, status in first] == [Status.SUCCESS] * throttle_at + [Status.SKIPPED]
    assert all(action == "create" for _, action, _ in first)
    # and the next cycle carries on to where the one-at-a-time applier ends
    again = alone.run()
    assert again.report.complete
    assert again.report.failures == ()
    assert alone.snapshot() == sequential.snapshot()
    assert set(alone.state.memberships) == set(sequential.state.memberships)
    assert alone.state.get_item(INTENT_KEY) is None
    assert expected.report.complete


def chain(users: int = 40, groups: int = 2) -> FakeSource:
    """A tenant where every user reports to the one before: each user's create waits on the previous one's."""
    return tenant(users, groups, boss=lambda i: i - 1)


class SettleNotingStore(ThreadNotingStore):
    """Notes each write as it lands and (through the applier, patched by the test) each write settled."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def _write(self, what: str, name: str = "") -> None:
        self.events.append(what)
        super()._write(what, name)


def _noting_settles(monkeypatch: pytest.MonkeyPatch, store: SettleNotingStore) -> None:
    complete = Applier._complete

    def noted(self: Applier, *args: Any) -> bool:
        store.events.append("settle")
        return complete(self, *args)

    monkeypatch.setattr(Applier, "_complete", noted)


WRITES = ("CreateUser", "CreateGroup", "CreateGroupMembership")


def _longest_run(events: list[str], calls: tuple[str, ...] = WRITES) -> int:
    """The most ``calls`` that went out one after the other, nothing settled between them."""
    longest = current = 0
    for event in events:
        current = current + 1 if event in calls else 0
        longest = max(longest, current)
    return longest


def test_a_report_created_right_after_its_manager_goes_out_in_the_same_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a chain of 40 users, each managed by the one before (each create waits on the one before it), and
    # an applier alone against a store that answers at once (probe of 2, then runs; records due by neither
    # their count nor their time within the test)
    monkeypatch.setattr(sync, "RECORD_FLUSH_SECONDS", 3600.0)
    sequential = World(chain())
    sequential.store = ThreadNotingStore()
    alone = PooledWorld(chain(), concurrency=6, probe=2, record_every=4 * BACK_TO_BACK)
    store = SettleNotingStore()
    alone.store = store
    expected = sequential.run()
    _noting_settles(monkeypatch, store)
    # When each provisions the tenant
    outcome = alone.run()
    # Then a write that went through let the next one (its report) go out in the same run: after the probe,
    # BACK_TO_BACK user creates went out before the first of them was settled
    assert store.events[:4] == ["CreateUser", "settle", "CreateUser", "settle"]
    assert _longest_run(store.events, ("CreateUser",)) == BACK_TO_BACK
    assert len(store.events) - store.events.count("settle") == store.events.count("settle") == len(store.sent)
    # in exactly the one-at-a-time applier's order, and it ends where that applier ends: every manager set
    _ends_as_one_at_a_time(sequential, alone, outcome, expected)
    managers = {
        u["UserName"]: u["doc"].get("Extensions", {}).get(ENTERPRISE, {}).get("manager", {}).get("value")
        for u in store.users.values()
    }
    ids = {u["UserName"]: uid for uid, u in store.users.items()}
    assert managers["u0@example.com"] is None
    assert all(managers[f"u{i}@example.com"] == ids[f"u{i - 1}@example.com"] for i in range(1, 40))


@pytest.mark.parametrize(("record_every", "flush_seconds"), [(100, 0.0), (1, 3600.0)], ids=["by-time", "by-count"])
def test_no_call_goes_out_while_the_buffered_records_are_due(
    monkeypatch: pytest.MonkeyPatch, record_every: int, flush_seconds: float
) -> None:
    # Given records due at once after every write (their second already past, or one record a batch), and an
    # applier alone against a store that answers at once
    monkeypatch.setattr(sync, "RECORD_FLUSH_SECONDS", flush_seconds)
    sequential = World(tenant(users=40, groups=4))
    sequential.store = ThreadNotingStore()
    alone = PooledWorld(tenant(users=40, groups=4), concurrency=6, probe=2, record_every=record_every)
    store = SettleNotingStore()
    alone.store = store
    sequential.run()
    _noting_settles(monkeypatch, store)
    written: list[int] = []
    write_ownership = alone.state.write_ownership

    def noted(writes: Sequence[Any]) -> None:
        written.append(len(writes))
        store.events.append("flush")
        write_ownership(writes)

    alone.state.write_ownership = noted  # type: ignore[method-assign]
    # When the tenant is provisioned
    outcome = alone.run()
    # Then every call was settled and its record written before the next call went out: no run formed
    assert _longest_run(store.events) == 1
    calls = [i for i, event in enumerate(store.events) if event not in ("settle", "flush")]
    assert all("flush" in store.events[a:b] for a, b in itertools.pairwise(calls))
    assert sum(written) >= len(store.sent)
    # and it ends where the one-at-a-time applier ends
    assert isinstance(sequential.store, ThreadNotingStore)
    assert store.sent == sequential.store.sent
    assert outcome.report.complete
    assert alone.snapshot() == sequential.snapshot()


class CausedThrottlingStore(ThrottlingAtStore):
    """Throttles as the adapter does: the error raised from the client's own (its traceback through this call)."""

    def _write(self, what: str, name: str = "") -> None:
        try:
            super()._write(what, name)
        except TargetThrottled as error:
            try:
                raise RuntimeError("botocore: An error occurred (ThrottlingException)")
            except RuntimeError as cause:
                raise TargetThrottled(str(error)) from cause


@pytest.mark.parametrize(
    "trouble", ["none", "throttled", "throttled-from-the-client", "refused", "deleted-by-hand-in-the-pool"]
)
def test_an_applier_is_freed_when_its_cycle_returns_without_waiting_for_a_full_collection(
    monkeypatch: pytest.MonkeyPatch, trouble: str
) -> None:
    # Given the cyclic garbage collector off, a note of every applier a cycle builds, and a store that answers
    # every write, or throttles one inside a run (the cycle stops there), or refuses one user (an error raised
    # and logged, the cycle goes on)
    appliers: list[weakref.ref[Applier]] = []
    init = Applier.__init__

    def noted(self: Applier, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        appliers.append(weakref.ref(self))

    monkeypatch.setattr(Applier, "__init__", noted)
    world = PooledWorld(tenant(users=40, groups=4), concurrency=6, probe=2)
    if trouble == "throttled":
        world.store = ThrottlingAtStore(9)
    elif trouble == "throttled-from-the-client":
        world.store = CausedThrottlingStore(9)
    elif trouble == "refused":
        world.store.fail_on["u5@example.com"] = "CreateUser user u5@example.com: ValidationException: refused"
    elif trouble == "deleted-by-hand-in-the-pool":
        # the pool from the first write; a user deleted by hand, then updated: its update hands off to the
        # serial tail from a pool thread, which creates it again
        world = PooledWorld(tenant(users=40, groups=4), concurrency=4, probe=0)
        world.run()
        world.store.delete_user(world.store.find_user("u4@example.com") or "")
        for i in (4, 7, 11, 13):
            world.source.users[i]["jobTitle"] = "Lead"
        appliers.clear()
    gc.collect()
    gc.disable()
    try:
        # When a cycle applies the tenant (back-to-back runs included) and returns
        outcome = world.run()
        assert outcome.report.complete is not trouble.startswith("throttled")
        assert len(outcome.report.failures) == (trouble == "refused")
        # Then its applier and all it held (views, ownership maps, logs) are gone: nothing kept it in a cycle
        assert appliers
        assert [ref for ref in appliers if ref() is not None] == []
    finally:
        gc.enable()


def test_calls_that_wait_grow_the_pool_after_the_probe_and_end_as_the_sequential_applier() -> None:
    # Given an Identity Store whose calls wait a few milliseconds (the network), far longer than the fake computes
    sequential, sized, store = _sized_twins(latency=0.003)
    # When each provisions the tenant
    expected = sequential.run()
    outcome = sized.run()
    # Then the first writes went one at a time from the cycle's thread, then several at once from the pool's
    me = threading.get_ident()
    assert set(store.threads[:PROBE_OPS]) == {me}
    assert me not in store.threads[PROBE_OPS:]
    assert store.max_in_flight > 1
    # and it ends where the one-at-a-time applier ends
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert outcome.report.counts == expected.report.counts
    assert sized.snapshot() == sequential.snapshot()
    assert set(sized.state.memberships) == set(sequential.state.memberships)
    assert sized.state.get_item(INTENT_KEY) is None


def test_the_sizer_grows_once_most_of_a_probe_waited_longer_than_it_computed_and_never_shrinks() -> None:
    sizer = PoolSizer(6, probe=4)
    assert sizer.width == 1
    for _ in range(4):
        sizer.observe(cpu=0.002, waited=0.0005)  # calls answer faster than the applier computes
    assert sizer.width == 1
    for _ in range(3):
        sizer.observe(cpu=0.002, waited=0.050)
    assert sizer.width == 1  # the probe is not over yet
    sizer.observe(cpu=0.002, waited=0.0)
    assert sizer.width == 6  # 3 of 4 waited longer than they computed
    sizer.observe(cpu=1.0, waited=0.0)
    assert sizer.width == 6
    # half of a probe waiting does not grow the pool, nor does one operation stalled however long
    half = PoolSizer(6, probe=4)
    for waited in (0.0, 0.010, 0.0, 0.010):
        half.observe(cpu=0.002, waited=waited)
    assert half.width == 1
    stalled = PoolSizer(6, probe=4)
    for waited in (0.0, 5.0, 0.0, 0.0):
        stalled.observe(cpu=0.002, waited=waited)
    assert stalled.width == 1
    # probe 0: the whole pool at once; limit 1: one at a time, whatever the calls do
    assert PoolSizer(6, probe=0).width == 6
    one = PoolSizer(1, probe=2)
    one.observe(cpu=0.001, waited=1.0), one.observe(cpu=0.001, waited=1.0)
    assert one.width == 1
    # between probes, operations go unmeasured: a later probe still grows the pool
    later = PoolSizer(6, probe=2, every=3)
    assert later.due()
    later.observe(cpu=0.002, waited=0.0), later.observe(cpu=0.002, waited=0.0)
    assert [later.due() for _ in range(4)] == [False, False, False, True]
    later.observe(cpu=0.002, waited=0.010), later.observe(cpu=0.002, waited=0.010)
    assert later.width == 6
    with pytest.raises(ValueError, match="probe"):
        PoolSizer(6, probe=-1)
    with pytest.raises(ValueError, match="every"):
        PoolSizer(6, every=0)
    with pytest.raises(ValueError, match="limit"):
        PoolSizer(0)
