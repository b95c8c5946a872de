"""A delta cycle plans only what its read touched (idsync.delta), and its plan is the full plan.

Property: over random directories, with nested groups counted transitively or not, and random rounds of
Entra changes (attributes, userName contests, managers, joiners, leavers, soft deletions, memberships,
nested groups, group renames and deletions, app assignments),
with cycles that fail on some objects, stop early or trip the deletion guard, the plan a delta cycle
makes from its narrowed views holds exactly the full plan's operations in the same order, with the
same refusals, held-back deletions and guard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from idsync.delta import Before, Touched, narrow, touched_by
from idsync.mirror import MemberChange, Mirror
from idsync.model import Ownership, PlanPolicy
from idsync.services.cycle import UNSETTLED_KEY, CycleOptions, CycleService, Scoping
from tests.fakes import FakeClock, FakeDeltaSource, FakeIdentityStore, FakeState
from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper

NAMES = ["ann", "bo", "cy", "di", "ed", "fay", "gus", "hal"]
GROUP_NAMES = ["Admins", "Devs", "Ops", "Sales"]


def _user(index: int, name: str, draw: st.DrawFn, ids: list[str]) -> dict[str, Any]:
    return {
        "id": f"e{index}",
        # the same name in another case: IAM Identity Center compares userNames without regard to case
        "userPrincipalName": draw(st.sampled_from([name, name.upper()])) + "@example.com",
        "displayName": f"{name} {index}",
        "jobTitle": draw(st.sampled_from([None, "Engineer", "Manager"])),
        "accountEnabled": draw(st.booleans()) or draw(st.booleans()),
        "manager": {"id": draw(st.sampled_from(ids))} if ids and draw(st.booleans()) else None,
    }


@st.composite
def tenants(draw: st.DrawFn) -> tuple[FakeDeltaSource, str, bool]:
    count = draw(st.integers(2, 9))
    ids = [f"e{i}" for i in range(count)]
    users = [_user(i, draw(st.sampled_from(NAMES)), draw, ids) for i in range(count)]
    groups = [
        {"id": f"g{i}", "displayName": draw(st.sampled_from(GROUP_NAMES))} for i in range(draw(st.integers(0, 4)))
    ]
    members = {g["id"]: [u for u in ids if draw(st.booleans())] for g in groups}
    transitive = draw(st.booleans())
    if transitive:
        # nested groups (cycles too): their users are members of every group above them
        for group in groups:
            members[group["id"]] += [g["id"] for g in groups if g is not group and draw(st.booleans())]
    source = FakeDeltaSource(users, groups, members)
    mode = draw(st.sampled_from(["all", "assigned"]))
    source.assigned_users = {u for u in ids if draw(st.booleans())}
    source.assigned_groups = {g["id"] for g in groups if draw(st.booleans())}
    return source, mode, transitive


def _change(source: FakeDeltaSource, draw: st.DrawFn, serial: int) -> None:
    """One random change in Entra."""
    kind = draw(
        st.sampled_from(
            [
                "title",
                "rename",
                "enable",
                "manager",
                "join",
                "leave",
                "soft-delete",
                "restore",
                "member",
                "nest",
                "group-rename",
                "group-delete",
                "assign",
            ]
        )
    )
    users, ids = source.users, [u["id"] for u in source.users]
    if kind == "join" or not users:
        source.users.append(_user(100 + serial, draw(st.sampled_from(NAMES)), draw, ids))
        return
    user = draw(st.sampled_from(users))
    if kind == "title":
        user["jobTitle"] = draw(st.sampled_from([None, "Engineer", "Director"]))
    elif kind == "rename":
        user["userPrincipalName"] = draw(st.sampled_from(NAMES)) + "@example.com"
    elif kind == "enable":
        user["accountEnabled"] = not user["accountEnabled"]
    elif kind == "manager":
        user["manager"] = {"id": draw(st.sampled_from(ids))} if draw(st.booleans()) else None
    elif kind in ("leave", "soft-delete"):
        source.users.remove(user)
        for members in source.members.values():
            if user["id"] in members:
                members.remove(user["id"])
        if kind == "soft-delete":
            source.soft_deleted.add(user["id"])
            source.deleted.append(user)  # type: ignore[attr-defined]
    elif kind == "restore" and source.deleted:  # type: ignore[attr-defined]
        back = source.deleted.pop()  # type: ignore[attr-defined]
        source.soft_deleted.discard(back["id"])
        source.users.append(back)
    elif kind == "member" and source.groups:
        members = source.members.setdefault(draw(st.sampled_from(source.groups))["id"], [])
        if user["id"] in members:
            members.remove(user["id"])
        else:
            members.append(user["id"])
    elif kind == "nest" and len(source.groups) > 1:
        parent, child = draw(st.permutations(source.groups))[:2]
        members = source.members.setdefault(parent["id"], [])
        if child["id"] in members:
            members.remove(child["id"])
        else:
            members.append(child["id"])
    elif kind == "group-rename" and source.groups:
        draw(st.sampled_from(source.groups))["displayName"] = draw(st.sampled_from(GROUP_NAMES))
    elif kind == "group-delete" and source.groups:
        group = draw(st.sampled_from(source.groups))
        source.groups.remove(group)
        source.members.pop(group["id"], None)
        for members in source.members.values():
            if group["id"] in members:
                members.remove(group["id"])
    elif kind == "assign":
        target = draw(st.sampled_from(ids + [g["id"] for g in source.groups]))
        chosen = source.assigned_groups if target.startswith("g") else source.assigned_users
        chosen.symmetric_difference_update({target})


def _service(
    source: FakeDeltaSource,
    store: FakeIdentityStore,
    state: FakeState,
    clock: FakeClock,
    mode: str,
    narrow: bool,
    transitive: bool = False,
) -> CycleService:
    return CycleService(
        source,
        store,
        state,
        SimpleUserMapper(),
        SimpleGroupMapper(),
        Everything(),
        Scoping(mode, transitive),
        PlanPolicy(max_deletions=3, max_deletion_percent=60.0),
        clock,
        narrow_delta=narrow,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tenants(), st.data())
def test_a_delta_cycles_narrowed_plan_is_the_full_plan(
    tenant: tuple[FakeDeltaSource, str, bool], data: st.DataObject
) -> None:
    source, mode, transitive = tenant
    source.deleted = []  # type: ignore[attr-defined]
    store, state, clock = FakeIdentityStore(), FakeState(), FakeClock()
    narrowed = _service(source, store, state, clock, mode, True, transitive)
    full = _service(source, store, state, clock, mode, False, transitive)
    narrowed.run(CycleOptions())
    compared = 0
    for round_ in range(data.draw(st.integers(1, 4))):
        for serial in range(data.draw(st.integers(1, 4))):
            _change(source, data.draw, round_ * 10 + serial)
        clock.advance(data.draw(st.sampled_from([60, 40 * 86400])))  # past the restorable grace, at times
        # When a delta cycle plans (without writing), narrowed and in full
        mine = narrowed.run(CycleOptions(dry_run=True))
        reference = full.run(CycleOptions(dry_run=True))
        # Then both plans are the same, operation by operation
        assert mine.mode == reference.mode
        assert mine.plan is not None
        assert reference.plan is not None
        if mine.mode == "delta":
            assert narrowed.touched is not None
            compared += 1
        assert list(mine.plan.operations) == list(reference.plan.operations)
        assert set(mine.plan.refusals) == set(reference.plan.refusals)
        assert mine.plan.held_back == reference.plan.held_back
        assert mine.plan.guard == reference.plan.guard
        # and the real cycle that follows may fail on some objects, stop early or hold deletions back
        failing = data.draw(st.lists(st.sampled_from([*NAMES, *GROUP_NAMES]), max_size=2))
        store.fail_on = {f"{n}@example.com" if n in NAMES else n: "ValidationException" for n in failing}
        budget = data.draw(st.sampled_from([None, 0, 1, 3]))
        narrowed.run(CycleOptions(should_stop=_stop_after(budget)))
        store.fail_on = {}
        assert state.get_item(UNSETTLED_KEY) is not None
    event(f"delta plans compared: {compared}")


def _stop_after(checks: int | None) -> Callable[[], bool]:
    """A time budget that runs out after ``checks`` operations (never, when None)."""
    calls = iter(range(10_000))
    return lambda: checks is not None and next(calls) >= checks


def test_a_delta_cycle_maps_only_the_touched_users_and_those_they_depend_on() -> None:
    # Given a mirror of 50 users, e7 reporting to e3, and e9's userName held by e9 in ownership
    from idsync.model import OwnedUser

    mirror = Mirror(
        users={
            f"e{i}": {
                "id": f"e{i}",
                "userPrincipalName": f"u{i}@example.com",
                "displayName": f"U {i}",
                "manager": {"id": "e3"} if i == 7 else None,
            }
            for i in range(50)
        },
        groups={"g1": {"id": "g1", "displayName": "Admins"}},
        members={"g1": {"e1": "user", "e2": "user"}},
    )
    owned = Ownership(users={"e9": OwnedUser("e9", "t9", "U0@EXAMPLE.COM", {})})
    mapped: list[str] = []

    def map_user(obj: Any) -> Any:
        mapped.append(obj["id"])
        return SimpleUserMapper().map(obj)

    # When e3 and e0 changed (e0 now wants the userName e9 holds) and group g1 changed
    views = narrow(mirror, owned, Touched({"e3", "e0"}, {"g1"}), "all", False, map_user)
    # Then only they, e3's report, the holder of e0's wanted userName and g1's members are planned
    assert views.planned == {"e0", "e3", "e7", "e9", "e1", "e2"}
    assert sorted(mapped) == sorted(views.planned)
    assert views.members == {"g1": ["e1", "e2"]}


def test_a_group_named_only_for_a_member_change_touches_that_member_not_the_whole_group() -> None:

    # Given a group of 40 members, and a second group whose displayName changes
    mirror = Mirror(
        users={f"e{i}": {"id": f"e{i}", "userPrincipalName": f"u{i}@example.com"} for i in range(41)},
        groups={"g1": {"id": "g1", "displayName": "Staff"}, "g2": {"id": "g2", "displayName": "Ops"}},
        members={"g1": {f"e{i}": "user" for i in range(40)}, "g2": {"e0": "user"}},
    )
    before = Before.of(mirror, ["g1", "g2"], False)
    # When Graph's delta names g1 with one new member (its own object unchanged) and g2 renamed
    mirror.merge_groups(
        [{"id": "g1", "displayName": "Staff"}, {"id": "g2", "displayName": "Operations"}],
        {},
        [MemberChange("g1", "e40", "user", True)],
    )
    touched = touched_by(before, mirror, [], ["g1", "g2"], [("g1", "e40", "user")], "all", False)
    # Then the new member is touched, g1 is not (its 40 other members stay settled), and the renamed g2 is
    assert touched.users == {"e40"}
    assert touched.groups == {"g2"}


class _LaggingIndex:
    """Ownership read by key as the DynamoDB store reads it: a group's members from the table, a user's
    memberships from an index a moment behind (it still lists one the table has forgotten, and lacks one the
    table has just recorded)."""

    def __init__(self, table: Ownership, index: Ownership) -> None:
        self.table, self.index = table, index

    def load_ownership_of(self, users: Any, groups: Any) -> Ownership:
        from_index = {k: v for k, v in self.index.memberships.items() if k[1] in set(users)}
        from_table = {k: v for k, v in self.table.memberships.items() if k[0] in set(groups)}
        users_ = {k: v for k, v in self.table.users.items() if k in set(users)}
        return Ownership(users=users_, groups=self.table.groups, memberships=from_index | from_table)

    def owned_users_named(self, names: Any) -> dict[str, list[str]]:
        return {}


def test_in_a_touched_group_the_group_s_own_read_decides_over_a_lagging_by_user_index() -> None:
    # Given g1 whose member e1 was just forgotten (the index still lists her) and e2 just recorded (not yet
    # indexed), and g2 untouched, where the index lists e1
    from idsync.model import OwnedGroup, OwnedMembership, OwnedUser

    mirror = Mirror(
        users={
            f"e{i}": {"id": f"e{i}", "userPrincipalName": f"u{i}@example.com", "displayName": f"U {i}"}
            for i in range(1, 4)
        },
        groups={"g1": {"id": "g1", "displayName": "Admins"}, "g2": {"id": "g2", "displayName": "Ops"}},
        members={"g1": {"e1": "user", "e2": "user", "e3": "user"}, "g2": {"e1": "user"}},
    )
    users = {f"e{i}": OwnedUser(f"e{i}", f"t{i}", f"u{i}@example.com", {}) for i in range(1, 4)}
    groups = {g: OwnedGroup(g, f"t-{g}", g) for g in ("g1", "g2")}

    def m(group: str, user: str) -> tuple[tuple[str, str], OwnedMembership]:
        return (group, user), OwnedMembership(group, user, f"m-{group}-{user}")

    table = Ownership(users=users, groups=groups, memberships=dict([m("g1", "e2"), m("g1", "e3"), m("g2", "e1")]))
    index = Ownership(users=users, groups=groups, memberships=dict([m("g1", "e1"), m("g1", "e3"), m("g2", "e1")]))

    # When a delta cycle narrows on g1's member change
    views = narrow(mirror, _LaggingIndex(table, index), Touched(set(), {"g1"}), "all", False, SimpleUserMapper().map)

    # Then g1's memberships are the table's, and the other group's come from the index
    assert set(views.owned.memberships) == {("g1", "e2"), ("g1", "e3"), ("g2", "e1")}


def test_a_touched_group_whose_own_read_is_empty_still_decides_over_the_index() -> None:
    # Given g1 whose last recorded member e1 was just forgotten, the lagging index still listing her
    from idsync.model import OwnedGroup, OwnedMembership, OwnedUser

    mirror = Mirror(
        users={"e1": {"id": "e1", "userPrincipalName": "u1@example.com", "displayName": "U 1"}},
        groups={"g1": {"id": "g1", "displayName": "Admins"}},
        members={"g1": {"e1": "user"}},
    )
    users = {"e1": OwnedUser("e1", "t1", "u1@example.com", {})}
    groups = {"g1": OwnedGroup("g1", "t-g1", "g1")}
    table = Ownership(users=users, groups=groups)
    index = Ownership(users=users, groups=groups, memberships={("g1", "e1"): OwnedMembership("g1", "e1", "m")})

    # When a delta cycle narrows on g1 and her own change
    views = narrow(mirror, _LaggingIndex(table, index), Touched({"e1"}, {"g1"}), "all", False, SimpleUserMapper().map)

    # Then no membership in g1 is believed owned
    assert views.owned.memberships == {}
