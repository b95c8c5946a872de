"""The planner's laws at their edges: the deletion guard's exact limits, membership removals, the
incumbent keeping a contested name, and renames in any permutation converging in one cycle."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FakeIdentityStore, FakeSource, FakeState
from tests.unit.test_plan_laws import make_service


def _people(count: int, prefix: str = "u") -> list[dict[str, Any]]:
    return [
        {
            "id": f"e{i:02d}",
            "userPrincipalName": f"{prefix}{i}@example.com",
            "displayName": f"U {i}",
            "accountEnabled": True,
        }
        for i in range(count)
    ]


def _deleted_users(store: FakeIdentityStore) -> int:
    return sum(1 for w in store.writes if w == "DeleteUser")


def test_the_guard_lets_exactly_max_deletions_through_and_holds_one_more() -> None:
    directory = FakeSource(_people(30))
    store, state = FakeIdentityStore(), FakeState()
    policy = {"max_deletions": 5, "max_deletion_percent": 100.0}
    make_service(directory, store, state, **policy).run()
    # exactly max_deletions: applied
    directory.users = directory.users[5:]
    report = make_service(directory, store, state, **policy).run()
    assert report.guard is None
    assert len(store.users) == 25
    # one more than max_deletions: held back, every one of them named
    directory.users = directory.users[6:]
    report = make_service(directory, store, state, **policy).run()
    assert report.guard is not None
    assert len(store.users) == 25


def test_the_guard_lets_exactly_max_percent_through_and_holds_one_more() -> None:
    directory = FakeSource(_people(20))
    store, state = FakeIdentityStore(), FakeState()
    policy = {"max_deletions": 500, "max_deletion_percent": 10.0}
    make_service(directory, store, state, **policy).run()
    directory.users = directory.users[2:]  # 2 of 20: exactly 10%
    assert make_service(directory, store, state, **policy).run().guard is None
    assert len(store.users) == 18
    directory.users = directory.users[2:]  # 2 of 18: 11.1%
    report = make_service(directory, store, state, **policy).run()
    assert report.guard is not None
    assert len(store.users) == 18


def test_a_group_reported_empty_trips_the_guard_on_membership_removals() -> None:
    # Given 20 users, all members of one group
    people = _people(20)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [p["id"] for p in people]})
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    # When Entra reports the group empty while every user stays
    directory.members = {"g1": []}
    store.writes.clear()
    report = make_service(directory, store, state).run()
    # Then no membership is removed, and the guard names all 20
    assert report.guard is not None
    assert report.guard.held_back == 20
    assert "remove 20 of 20 managed memberships" in report.guard.message
    assert store.writes == []
    assert len(store.members_of("Admins")) == 20


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 7), unique=True, max_size=8),
    st.lists(st.integers(0, 7), unique=True, max_size=8),
    st.booleans(),
)
def test_members_idsync_does_not_manage_stay_in_groups_it_owns_or_adopted(
    first: list[int], then: list[int], made_by_hand: bool
) -> None:
    # Given a group (made by hand and adopted, or created by idsync) that also holds a user idsync does not manage
    people = _people(8)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [people[i]["id"] for i in first]})
    store, state = FakeIdentityStore(), FakeState()
    if made_by_hand:
        store.create_group("Admins", None)
    service = make_service(directory, store, state, allow_deletions=True)
    service.run()
    outsider = store.create_user("outsider@example.com", {"DisplayName": "Not from Entra"})
    store.create_membership(store.find_group("Admins") or "", outsider)
    # When Entra's members change and cycles run (full and delta)
    directory.members = {"g1": [people[i]["id"] for i in then]}
    service.run()
    service.run(force_full=True)
    # Then the outsider is still a member, and the others are exactly Entra's
    assert store.members_of("Admins") == {"outsider@example.com"} | {f"u{i}@example.com" for i in then}


def test_a_user_name_differing_only_in_case_is_adopted_not_duplicated() -> None:
    store, state = FakeIdentityStore(), FakeState()
    held = store.create_user("ADA@Example.com", {"DisplayName": "Ada"})
    directory = FakeSource(
        [{"id": "e1", "userPrincipalName": "ada@example.com", "displayName": "Ada", "accountEnabled": True}]
    )
    report = make_service(directory, store, state).run()
    assert report.failures == ()
    assert list(store.users) == [held]
    assert store.users[held]["UserName"] == "ada@example.com"
    assert state.users["e1"].target_id == held


def test_the_managed_group_keeps_its_name_against_a_newcomer_that_sorts_first() -> None:
    # Given a managed group "Admins" (Entra id g9) with ten members
    people = _people(10)
    directory = FakeSource(people, [{"id": "g9", "displayName": "Admins"}], {"g9": [p["id"] for p in people]})
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    # When a second Entra group named "Admins" appears whose id sorts first, and a member leaves the first
    directory.groups.append({"id": "g0", "displayName": "Admins"})
    directory.members = {"g9": [p["id"] for p in people[1:]], "g0": [people[0]["id"]]}
    store.writes.clear()
    report = make_service(directory, store, state).run()
    # Then the managed group still follows Entra (the leaver is removed), the newcomer is refused by name
    assert store.members_of("Admins") == {f"u{i}@example.com" for i in range(1, 10)}
    assert store.writes == ["DeleteGroupMembership"]
    refusal = next(r for r in report.refusals if r.source_id == "g0")
    assert "g9" in refusal.message
    assert "g0" in refusal.message
    assert report.failures == ()


def test_the_managed_user_keeps_its_user_name_against_a_case_variant() -> None:
    directory = FakeSource(
        [{"id": "e9", "userPrincipalName": "ada@example.com", "displayName": "Ada", "accountEnabled": True}]
    )
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    directory.users.append(
        {"id": "e0", "userPrincipalName": "ADA@example.com", "displayName": "Imposter", "accountEnabled": True}
    )
    directory.users[0] = dict(directory.users[0], displayName="Ada Lovelace")
    report = make_service(directory, store, state).run()
    assert store.user_by_name("ada@example.com")["doc"]["DisplayName"] == "Ada Lovelace"
    assert len(store.users) == 1
    assert [r.source_id for r in report.refusals] == ["e0"]
    assert report.failures == ()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(list(range(5))), st.booleans())
def test_any_permutation_of_user_names_converges_in_one_cycle(order: list[int], new_hire: bool) -> None:
    # Given five managed users
    directory = FakeSource(_people(5))
    store, state = FakeIdentityStore(), FakeState()
    service = make_service(directory, store, state)
    service.run()
    ids = {u["id"]: state.users[u["id"]].target_id for u in directory.users}
    # When Entra permutes their userPrincipalNames (and user 0 moves to a new name a new hire takes over)
    directory.users = [dict(u, userPrincipalName=f"u{order[i]}@example.com") for i, u in enumerate(directory.users)]
    if new_hire:
        directory.users[0]["userPrincipalName"] = "moved@example.com"
        directory.users.append(
            {"id": "e99", "userPrincipalName": f"u{order[0]}@example.com", "displayName": "New", "accountEnabled": True}
        )
    report = service.run()
    # Then one cycle converges: every user keeps its id and carries its new name
    assert report.failures == ()
    for user in directory.users:
        assert store.find_user(user["userPrincipalName"]) == ids.get(user["id"], state.users[user["id"]].target_id)
        assert (
            store.users[ids.get(user["id"], state.users[user["id"]].target_id)]["UserName"] == user["userPrincipalName"]
        )
    store.writes.clear()
    assert service.run().writes == 0
    assert service.run(force_full=True).writes == 0


def test_a_managed_user_refused_later_keeps_its_memberships_and_its_object() -> None:
    from idsync.model import Refusal
    from tests.unit.test_plan_laws import SimpleUserMapper

    people = _people(10)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [p["id"] for p in people]})
    store, state = FakeIdentityStore(), FakeState()
    runner = make_service(directory, store, state)
    runner.run()

    # Given Entra data for one managed user that no longer maps (refused this cycle)
    class Refusing(SimpleUserMapper):
        def map(self, obj: dict[str, Any]) -> Any:
            if obj["id"] == "e03":
                return Refusal("user", "e03", "u3@example.com", "name.givenName", "is required")
            return super().map(obj)

    runner.service.user_mapper = Refusing()
    report = runner.run()
    # Then it is refused, but neither deleted nor removed from its group
    assert [r.source_id for r in report.refusals] == ["e03"]
    assert store.find_user("u3@example.com") is not None
    assert "u3@example.com" in store.members_of("Admins")


def test_groups_stay_when_delete_groups_is_off() -> None:
    people = _people(4)
    groups = [{"id": f"g{i}", "displayName": f"Team {i}"} for i in range(6)]
    directory = FakeSource(people, groups, {})
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state, delete_groups=False).run()
    directory.groups = groups[:5]
    report = make_service(directory, store, state, delete_groups=False).run()
    assert report.guard is None
    assert store.find_group("Team 5") is not None
    assert "DeleteGroup" not in store.writes


def test_a_managed_group_refused_a_taken_display_name_keeps_its_name_and_follows_entra() -> None:
    # Given two managed groups, each with five members
    people = _people(10)
    groups = [{"id": "g0", "displayName": "Team 0"}, {"id": "g1", "displayName": "Team 1"}]
    directory = FakeSource(people, groups, {"g0": [p["id"] for p in people[:5]], "g1": [p["id"] for p in people[5:]]})
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    # When Entra renames g1 onto g0's displayName and one member leaves g1, another joins it
    directory.groups[1] = {"id": "g1", "displayName": "Team 0", "description": "copied"}
    directory.members["g1"] = [p["id"] for p in people[6:]] + [people[0]["id"]]
    report = make_service(directory, store, state).run()
    # Then g1 is refused the name but keeps "Team 1" and exactly Entra's members (nothing is cut wholesale)
    assert [r.source_id for r in report.refusals] == ["g1"]
    assert store.members_of("Team 1") == {f"u{i}@example.com" for i in [0, 6, 7, 8, 9]}
    assert store.groups[state.groups["g1"].target_id]["Description"] == "copied"
    assert store.members_of("Team 0") == {f"u{i}@example.com" for i in range(5)}
    assert report.failures == ()


def test_a_managed_user_refused_a_taken_user_name_keeps_its_name_and_loses_memberships_entra_removed() -> None:
    # Given two managed users in one group
    people = _people(2)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": ["e00", "e01"]})
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    # When Entra renames e01 onto e00's userName (case aside) and removes it from the group
    directory.users[1] = dict(people[1], userPrincipalName="U0@example.com", displayName="Moved")
    directory.members["g1"] = ["e00"]
    report = make_service(directory, store, state, max_deletion_percent=100.0).run()
    # Then e01 is refused the name, keeps "u1@example.com", takes its other changes and leaves the group
    assert [r.source_id for r in report.refusals] == ["e01"]
    assert store.members_of("Admins") == {"u0@example.com"}
    assert store.user_by_name("u1@example.com")["doc"]["DisplayName"] == "Moved"
    assert report.failures == ()


def test_a_disabled_user_whose_attributes_no_longer_map_is_deprovisioned() -> None:
    from idsync.model import Refusal
    from tests.unit.test_plan_laws import SimpleUserMapper

    people = _people(10)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [p["id"] for p in people]})
    store, state = FakeIdentityStore(), FakeState()
    runner = make_service(directory, store, state)
    runner.run()

    # Given offboarding disables e03 and clears an attribute the mapping needs, in the same change
    class Refusing(SimpleUserMapper):
        def map(self, obj: dict[str, Any]) -> Any:
            if not obj.get("displayName"):
                return Refusal("user", obj["id"], obj["userPrincipalName"], "displayName", "is required")
            return super().map(obj)

    directory.users[3] = dict(people[3], accountEnabled=False, displayName="")
    runner.service.user_mapper = Refusing()
    report = runner.run()
    # Then it is deprovisioned like any disabled user, not kept as a refusal
    assert store.find_user("u3@example.com") is None
    assert "u3@example.com" not in store.members_of("Admins")
    assert report.refusals == ()


def test_a_managed_user_refused_for_its_data_keeps_its_user_name_against_a_newcomer() -> None:
    from idsync.model import Refusal
    from tests.unit.test_plan_laws import SimpleUserMapper

    people = _people(5)
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [p["id"] for p in people]})
    store, state = FakeIdentityStore(), FakeState()
    runner = make_service(directory, store, state)
    runner.run()
    held = store.find_user("u3@example.com")

    # Given managed e03 refused for an unrelated attribute, and a newcomer whose userName differs only in case
    class Refusing(SimpleUserMapper):
        def map(self, obj: dict[str, Any]) -> Any:
            if not obj.get("displayName"):
                return Refusal("user", obj["id"], obj["userPrincipalName"], "displayName", "is required")
            return super().map(obj)

    runner.service.user_mapper = Refusing()
    directory.users[3] = dict(people[3], displayName="")
    directory.users.append(
        {"id": "e99", "userPrincipalName": "U3@example.com", "displayName": "New", "accountEnabled": True}
    )
    report = runner.run()
    # Then e03 keeps its userName and group; the newcomer is refused, naming e03
    assert store.users[held or ""]["UserName"] == "u3@example.com"
    assert "u3@example.com" in store.members_of("Admins")
    assert sorted(r.source_id for r in report.refusals) == ["e03", "e99"]
    assert "e03" in next(r.message for r in report.refusals if r.source_id == "e99")
    # and once e03's data is fixed, it is simply updated under the same name
    directory.users[3] = dict(people[3], displayName="Fixed")
    runner.run()
    assert store.users[held or ""]["UserName"] == "u3@example.com"
    assert store.users[held or ""]["doc"]["DisplayName"] == "Fixed"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(list(range(4))), st.booleans())
def test_any_permutation_of_group_display_names_converges_in_one_cycle(order: list[int], newcomer: bool) -> None:
    # Given four managed groups
    groups = [{"id": f"g{i}", "displayName": f"Team {i}"} for i in range(4)]
    directory = FakeSource(_people(4), groups, {f"g{i}": [f"e{i:02d}"] for i in range(4)})
    store, state = FakeIdentityStore(), FakeState()
    service = make_service(directory, store, state)
    service.run()
    ids = {g["id"]: state.groups[g["id"]].target_id for g in groups}
    # When Entra permutes their displayNames (and group 0 moves to a new name a new group takes over)
    directory.groups = [dict(g, displayName=f"Team {order[i]}") for i, g in enumerate(groups)]
    if newcomer:
        directory.groups[0]["displayName"] = "Moved"
        directory.groups.append({"id": "g9", "displayName": f"Team {order[0]}"})
    report = service.run()
    # Then one cycle converges: every group keeps its id and its members, and carries its new name
    assert report.failures == ()
    for group in directory.groups:
        target = ids.get(group["id"], state.groups[group["id"]].target_id)
        assert store.find_group(group["displayName"]) == target
    assert all(store.members_of(f"Team {order[i]}") == {f"u{i}@example.com"} for i in range(1, 4))
    assert service.run().writes == 0
    assert service.run(force_full=True).writes == 0
