"""Delta cycles planned from narrowed views write what a full plan would: a create refused with a conflict
never adopts an object idsync manages for another user (the Applier then asks ownership as a whole), a group
deleted by hand is restored with every member, and the deletion guard counts the full membership. A delta
cycle reads ownership by key only: the records of the users it plans, never every record."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from idsync.delta import unsettled
from idsync.model import Action, CurrentView, Kind, Operation, Ownership, PlanPolicy
from idsync.services.cycle import CycleOptions, CycleService, Scoping
from idsync.services.sync import Applier
from tests.fakes import FakeClock, FakeDeltaSource, FakeIdentityStore, FakeState
from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper


def _users(n: int) -> list[dict[str, object]]:
    return [
        {"id": f"e{i}", "userPrincipalName": f"u{i}@example.com", "displayName": f"U{i}", "accountEnabled": True}
        for i in range(n)
    ]


def _service(source: FakeDeltaSource, store: FakeIdentityStore, state: FakeState, clock: FakeClock, narrow: bool):
    return CycleService(
        source,
        store,
        state,
        SimpleUserMapper(),
        SimpleGroupMapper(),
        Everything(),
        Scoping("all", False),
        PlanPolicy(max_deletions=100, max_deletion_percent=90.0),
        clock,
        narrow_delta=narrow,
    )


def _members_in_aws(store: FakeIdentityStore, group_target: str) -> list[str]:
    return sorted(u for g, u in store.memberships.values() if g == group_target)


@pytest.mark.parametrize("narrow", [False, True])
def test_conflicting_create_never_adopts_another_managed_users_account(narrow: bool) -> None:
    source = FakeDeltaSource(_users(3), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e2"]})
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    service = _service(source, store, state, clock, narrow)
    assert service.run(CycleOptions()).report.complete
    taken = state.load_ownership().users["e2"].target_id
    before = dict(store.users[taken]["doc"])
    # renamed by hand in IAM Identity Center to the name a newcomer wants
    store.users[taken]["UserName"] = "new@example.com"
    source.users.append(
        {"id": "e9", "userPrincipalName": "new@example.com", "displayName": "New", "accountEnabled": True}
    )
    clock.advance(60)
    out = service.run(CycleOptions())
    owned = state.load_ownership()
    assert [s for s, o in owned.users.items() if o.target_id == taken] == ["e2"]
    assert "e9" not in owned.users
    assert [f.source_id for f in out.report.failures] == ["e9"]
    assert dict(store.users[taken]["doc"]) == before  # e9's attributes were not written over e2's account


@pytest.mark.parametrize("narrow", [False, True])
def test_group_deleted_by_hand_is_restored_with_every_member(narrow: bool) -> None:
    source = FakeDeltaSource(_users(6), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0", "e1", "e2", "e3"]})
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    service = _service(source, store, state, clock, narrow)
    assert service.run(CycleOptions()).report.complete
    gone = state.load_ownership().groups["g1"].target_id
    del store.groups[gone]
    for key in [k for k, (g, _) in store.memberships.items() if g == gone]:
        del store.memberships[key]
    source.members["g1"].append("e5")  # the new member's add finds the group gone: it is created again
    for _ in range(3):
        clock.advance(60)
        assert service.run(CycleOptions()).report.complete
        owned = state.load_ownership()
        group = owned.groups["g1"].target_id
        in_aws = _members_in_aws(store, group)
        # what is recorded is what AWS holds, after every cycle
        assert in_aws == sorted(owned.users[u].target_id for g, u in owned.memberships if g == "g1")
    assert group != gone
    assert in_aws == sorted(owned.users[s].target_id for s in ["e0", "e1", "e2", "e3", "e5"])


@pytest.mark.parametrize("staying", [["e10", "e11"], []])
def test_emptied_group_threshold_counts_the_members_the_narrowed_views_leave_out(staying: list[str]) -> None:
    source = FakeDeltaSource(_users(200), [{"id": "g1", "displayName": "Admins"}], {"g1": [f"e{i}" for i in range(12)]})
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    narrowed = _service(source, store, state, clock, True)
    assert narrowed.run(CycleOptions()).report.complete
    source.members["g1"] = list(staying)
    clock.advance(60)
    out = narrowed.run(CycleOptions())
    full = _service(source, store, state, clock, False).run(CycleOptions(dry_run=True))
    assert out.mode == "delta"
    assert out.plan is not None
    assert full.plan is not None
    assert out.plan.guard == full.plan.guard
    group = state.load_ownership().groups["g1"].target_id
    if staying:
        # 10 of 12 leave: the group keeps members, so the removals apply
        assert out.plan.guard is None
        assert len(_members_in_aws(store, group)) == 2
    else:
        # everyone leaves: what an outage's empty read looks like, so the removals are held back
        assert out.plan.guard is not None
        assert out.plan.guard.emptied_groups == ("Admins",)
        assert len(_members_in_aws(store, group)) == 12


@pytest.mark.parametrize("narrow", [False, True])
def test_a_user_created_again_whose_memberships_fail_is_planned_again_until_they_are_restored(narrow: bool) -> None:
    source = FakeDeltaSource(_users(4), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e1", "e3"]})
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    service = _service(source, store, state, clock, narrow)
    assert service.run(CycleOptions()).report.complete
    gone = state.load_ownership().users["e3"].target_id
    del store.users[gone]  # deleted by hand in IAM Identity Center, with its membership
    for key in [k for k, (_, u) in store.memberships.items() if u == gone]:
        del store.memberships[key]
    source.users[3]["displayName"] = "U3 renamed"  # the update finds it gone and creates it again
    store.fail_on[""] = "CreateGroupMembership: InternalFailure"
    clock.advance(60)
    out = service.run(CycleOptions())
    owned = state.load_ownership()
    assert owned.users["e3"].target_id != gone
    assert ("g1", "e3") not in owned.memberships
    assert [f.kind for f in out.report.failures] == ["membership"]
    del store.fail_on[""]
    clock.advance(60)
    assert service.run(CycleOptions()).report.complete
    owned = state.load_ownership()
    group = owned.groups["g1"].target_id
    assert _members_in_aws(store, group) == sorted(owned.users[u].target_id for u in ("e1", "e3"))
    assert ("g1", "e3") in owned.memberships


def test_only_a_successful_write_counts_as_succeeded_and_a_skipped_one_stays_unsettled() -> None:
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    applier = Applier(store, state, clock, "c1", Ownership(), CurrentView({}, {}, {}), PlanPolicy())
    add = Operation(Kind.MEMBERSHIP, Action.CREATE, "g1", "Admins <- u1", member_source_id="e1")
    assert applier.apply([add], lambda: False, None)
    assert applier.succeeded == set()  # skipped: the group is not provisioned
    assert applier.unfinished == [add]
    assert unsettled([add], applier.succeeded, (), ()).users == {"e1"}
    assert store.memberships == {}


class KeyedReads(FakeState):
    """Counts full ownership loads, and the users each by-key read asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.full_loads = 0
        self.asked: set[str] = set()

    def load_ownership(self) -> Ownership:
        self.full_loads += 1
        return super().load_ownership()

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        self.asked |= set(users)
        return super().load_ownership_of(users, groups)


def test_a_delta_cycle_reads_the_ownership_of_the_users_it_plans_only() -> None:
    # Given 40 synced users, e1 reporting to e0, in one group
    users = _users(40)
    users[1]["manager"] = {"id": "e0"}
    source = FakeDeltaSource(users, [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0", "e1", "e5"]})
    store, state, clock = FakeIdentityStore(), KeyedReads(), FakeClock()
    service = _service(source, store, state, clock, True)
    assert service.run(CycleOptions()).report.complete
    state.full_loads, state.asked = 0, set()
    # When e0 is renamed in Entra and e7 leaves g1's neighbourhood untouched
    source.users[0]["displayName"] = "Renamed"
    clock.advance(60)
    out = service.run(CycleOptions())
    # Then the update was written, no full ownership load was made, and only e0 and its report were read
    assert out.mode == "delta"
    assert out.report is not None
    assert out.report.complete
    assert [op.source_id for op in out.plan.operations if op.is_write] == ["e0"]
    assert state.full_loads == 0
    assert state.asked == {"e0", "e1"}


def test_a_cycle_with_nothing_to_plan_never_counts_ownership_and_a_later_one_still_sees_another_writer() -> None:
    # Given 12 synced users
    source = FakeDeltaSource(_users(12), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0", "e1"]})
    store, state, clock = FakeIdentityStore(), KeyedReads(), FakeClock()
    service = _service(source, store, state, clock, True)
    assert service.run(CycleOptions()).report.complete
    recorded = dict(state.get_item("unsettled") or {})
    # When a delta cycle runs with nothing changed in Entra
    state.reads.clear()
    state.full_loads = 0
    clock.advance(60)
    quiet = service.run(CycleOptions())
    # Then it counted nothing (a count reads every ownership record on DynamoDB) and kept the recorded sizes
    assert quiet.mode == "delta"
    assert quiet.report.writes == 0
    assert not {"count_ownership", "count_users_and_groups"} & {what for what, _, _ in state.reads}
    assert state.full_loads == 0
    assert {k: v for k, v in (state.get_item("unsettled") or {}).items() if k.endswith("_count")} == {
        k: v for k, v in recorded.items() if k.endswith("_count")
    }
    # When another writer (on-demand provisioning) records a user of its own, quiet cycles pass, and then
    # a user changes in Entra
    from idsync.model import OwnedUser

    state.record_user(OwnedUser("e-other", "t-other", "other@example.com", {}, None, ""))
    for _ in range(2):
        clock.advance(60)
        service.run(CycleOptions())
    assert state.full_loads == 0
    source.users[3]["displayName"] = "Renamed"
    clock.advance(60)
    changed = service.run(CycleOptions())
    # Then that cycle counts, finds ownership grown since the record, and plans from all of it (where the
    # other writer's user, unknown to Entra, is planned too)
    assert changed.mode == "delta"
    assert changed.report.complete
    assert state.full_loads == 1
    assert "e3" in [op.source_id for op in changed.plan.operations if op.is_write]


def test_sizes_carried_forward_stay_the_record_even_when_the_guard_counts_later() -> None:
    from idsync.services.cycle import _Tally

    state = FakeState()
    from idsync.model import OwnedUser

    state.record_user(OwnedUser("e-other", "t-other", "other@example.com", {}, None, ""))  # another writer's
    tally = _Tally(state, ())
    tally.base = (0, 0)  # what the last cycle recorded, carried forward by a cycle with nothing to plan
    assert tally.totals() == (1, 0)  # the guard counts: it sees the other writer's user
    # the record keeps the carried sizes, so the next cycle that plans still finds the other writer
    assert tally.users_and_groups() == (0, 0)
    assert [what for what, _, _ in state.reads] == ["count_ownership"]
    fresh = _Tally(state, ())
    assert fresh.users_and_groups() == (1, 0)  # nothing carried: counted


def test_comparing_with_the_record_counts_users_and_groups_only_and_the_guard_counts_once_more() -> None:
    # Given ownership of one user and one membership, and a tally whose record was carried forward
    from idsync.model import OwnedMembership, OwnedUser
    from idsync.services.cycle import _Tally

    state = FakeState()
    state.record_user(OwnedUser("e1", "t1", "one@example.com", {}, None, ""))
    state.record_membership(OwnedMembership("g1", "e1", "m1"))
    tally = _Tally(state, ())
    tally.carry((0, 0), "2030-01-01T00:00:00+00:00")

    # When the cycle compares the record with a count, then asks again, then the guard asks for its totals
    assert tally.changed_since_record() is True
    assert tally.users_and_groups() == (0, 0)  # the carried record is kept
    assert tally.totals() == (1, 1)
    assert tally.totals() == (1, 1)

    # Then the comparison counted users and groups only (on DynamoDB the memberships are most of the records),
    # the memberships were counted once, for the guard
    assert [what for what, _, _ in state.reads] == ["count_users_and_groups", "count_ownership"]


def test_the_sizes_a_cycle_records_are_its_first_count_not_the_guard_s_later_one() -> None:
    # Given a tally that counted users and groups (nothing carried: the cycle plans from this count)
    from idsync.model import OwnedUser
    from idsync.services.cycle import _Tally

    state = FakeState()
    state.record_user(OwnedUser("e1", "t1", "one@example.com", {}, None, ""))
    tally = _Tally(state, ())
    assert tally.users_and_groups() == (1, 0)

    # When another writer (the JIT path) records a user, and then the guard counts for its totals
    state.record_user(OwnedUser("e2", "t2", "two@example.com", {}, None, ""))
    assert tally.totals() == (2, 0)

    # Then the sizes the cycle records stay its first count, so the next cycle finds the other writer's user
    assert tally.users_and_groups() == (1, 0)


def test_a_quiet_tenant_still_compares_ownership_with_a_count_every_hour() -> None:
    from idsync.model import OwnedUser

    # Given 12 synced users, and another writer's record made while nothing changes in Entra
    source = FakeDeltaSource(_users(12), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0", "e1"]})
    store, state, clock = FakeIdentityStore(), KeyedReads(), FakeClock()
    service = _service(source, store, state, clock, True)
    assert service.run(CycleOptions()).report.complete
    state.record_user(OwnedUser("e-other", "t-other", "other@example.com", {}, None, ""))
    state.full_loads = 0
    # When quiet cycles run every ten minutes for an hour
    for _ in range(5):
        clock.advance(600)
        service.run(CycleOptions())
    assert state.full_loads == 0  # carried: nothing counted, nothing planned
    clock.advance(600)
    out = service.run(CycleOptions())
    # Then the first cycle an hour after the last comparison counts, finds the other writer, and plans it all
    assert out.mode == "delta"
    assert state.full_loads == 1
    assert "e-other" in [op.source_id for op in out.plan.operations if op.is_write]


def test_a_quiet_cycle_compares_ownership_before_it_writes_a_group_its_views_plan() -> None:
    # Given 12 synced users in one group, and a quiet cycle whose sizes are carried
    source = FakeDeltaSource(_users(12), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0", "e1"]})
    store, state, clock = FakeIdentityStore(), KeyedReads(), FakeClock()
    service = _service(source, store, state, clock, True)
    assert service.run(CycleOptions()).report.complete
    # When another writer forgets the group's record (nothing in Entra changed)
    state.forget_group("g1")
    state.reads.clear()
    clock.advance(60)
    out = service.run(CycleOptions())
    # Then the cycle, about to write the group its views plan, counts, finds ownership changed since the
    # record, and plans from all of it: the sizes it records are ownership's own again
    assert out.mode == "delta"
    assert out.report.complete
    assert ("count_users_and_groups", frozenset(), frozenset()) in state.reads
    assert ("load_ownership", frozenset(), frozenset()) in state.reads
    assert "g1" in [op.source_id for op in out.plan.operations if op.is_write]
    assert "g1" in state.groups
    record = state.get_item("unsettled") or {}
    assert (record["users_count"], record["groups_count"]) == (len(state.users), len(state.groups))


@pytest.mark.parametrize("compared", ["2026-11-28T12:00:00+00:00", "20261127", "", "2030-01-01T00:00:00"])
def test_a_compared_time_ahead_of_the_clock_or_damaged_is_not_recent(compared: str) -> None:
    source = FakeDeltaSource(_users(4), [{"id": "g1", "displayName": "Admins"}], {"g1": ["e0"]})
    store, state, clock = FakeIdentityStore(), KeyedReads(), FakeClock()
    service = _service(source, store, state, clock, True)
    assert service.run(CycleOptions()).report.complete
    state.put_item("unsettled", {**(state.get_item("unsettled") or {}), "compared": compared})
    state.reads.clear()
    clock.advance(60)
    assert service.run(CycleOptions()).mode == "delta"
    assert "count_users_and_groups" in {what for what, _, _ in state.reads}
