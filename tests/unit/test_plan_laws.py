"""The planner's laws, stated as properties: convergence, idempotence, ownership, deletion guard."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idsync.model import (
    Action,
    DeletionGuard,
    DesiredView,
    Group,
    GuardThreshold,
    Kind,
    Operation,
    Ownership,
    PlanPolicy,
    Refusal,
    User,
    freeze_doc,
)
from idsync.plan import _guard, with_manager
from idsync.services.cycle import CycleOptions, CycleService, Scoping
from tests.fakes import FakeClock, FakeIdentityStore, FakeSource, FakeState


class SimpleUserMapper:
    managed_attributes = frozenset({"DisplayName", "Title", "Extensions"})
    create_only_attributes: frozenset[str] = frozenset()

    def map(self, obj: dict[str, Any]) -> User | Refusal:
        doc = freeze_doc({"DisplayName": obj["displayName"], "Title": obj.get("jobTitle")})
        manager = (obj.get("manager") or {}).get("id")
        return User(obj["id"], obj["userPrincipalName"], doc, manager, obj.get("accountEnabled", True))


class SimpleGroupMapper:
    def map(self, obj: dict[str, Any]) -> Group | Refusal:
        return Group(obj["id"], obj["displayName"], obj.get("description"))


class Everything:
    fingerprint = "everything"

    class _Yes:
        in_scope = True
        reason = "no filters"

    def user(self, obj: dict[str, Any]) -> Any:
        return self._Yes()

    def group(self, obj: dict[str, Any]) -> Any:
        return self._Yes()


class Runner:
    """Runs cycles the way the scheduled function does, returning each cycle's report."""

    def __init__(self, service: CycleService) -> None:
        self.service = service

    def run(self, **options: Any) -> Any:
        outcome = self.service.run(CycleOptions(**options))
        assert outcome.report is not None, outcome.skipped
        return outcome.report


def make_service(directory: FakeSource, store: FakeIdentityStore, state: FakeState, **policy: Any) -> Runner:
    service = CycleService(
        directory,
        store,
        state,
        SimpleUserMapper(),
        SimpleGroupMapper(),
        Everything(),
        Scoping("all", False),
        PlanPolicy(**policy),
        FakeClock(),
    )
    return Runner(service)


NAMES = [f"user{i}" for i in range(12)]
GROUPS = [f"group{i}" for i in range(5)]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[FakeSource, FakeIdentityStore, set[str]]:
    """An Entra tenant and an Identity Store that may already hold some same-named and foreign objects."""
    chosen = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=10))
    users = []
    for index, name in enumerate(chosen):
        users.append(
            {
                "id": f"e-{name}",
                "userPrincipalName": f"{name}@example.com",
                "displayName": draw(st.sampled_from(["Ann", "Bo", "Cy"])) + f" {index}",
                "jobTitle": draw(st.sampled_from([None, "Engineer", "Manager"])),
                "accountEnabled": draw(st.booleans()),
                "manager": {"id": f"e-{draw(st.sampled_from(chosen))}"} if draw(st.booleans()) else None,
            }
        )
    group_names = draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=4))
    groups = [{"id": f"eg-{g}", "displayName": g} for g in group_names]
    members = {g["id"]: [u["id"] for u in users if draw(st.booleans())] for g in groups}
    store = FakeIdentityStore()
    foreign: set[str] = set()
    for name in draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=4)):
        # same-named users get adopted; the others are foreign and must stay untouched
        store.create_user(f"{name}@example.com", {"DisplayName": "pre-existing", "Title": "Old"})
        if name not in chosen:
            foreign.add(f"{name}@example.com")
    for g in draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=3)):
        store.create_group(g, "made by hand")
    store.writes.clear()
    return FakeSource(users, groups, members), store, foreign


def expected_view(directory: FakeSource, store: FakeIdentityStore) -> None:
    active = {u["id"]: u for u in directory.users if u["accountEnabled"]}
    ids = {u["id"]: store.find_user(u["userPrincipalName"]) for u in active.values()}
    for user in active.values():
        held = store.user_by_name(user["userPrincipalName"])
        manager = (user.get("manager") or {}).get("id")
        want = with_manager(
            {"DisplayName": user["displayName"], "Title": user["jobTitle"]},
            ids.get(manager) if manager in active else None,
        )
        assert freeze_doc(held["doc"]) == want, user["userPrincipalName"]
    for group in directory.groups:
        want_members = {active[u]["userPrincipalName"] for u in directory.members.get(group["id"], []) if u in active}
        assert store.members_of(group["displayName"]) == want_members


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_convergence_idempotence_and_ownership(
    world: tuple[FakeSource, FakeIdentityStore, set[str]],
) -> None:
    directory, store, foreign = world
    foreign_before = {uid: dict(u) for uid, u in store.users.items() if u["UserName"] in foreign}
    state = FakeState()
    service = make_service(directory, store, state, allow_deletions=True)

    # When one cycle runs
    report = service.run()

    # Then Identity Center holds exactly the mapped Entra view (convergence)
    assert report.failures == ()
    expected_view(directory, store)
    # and disabled users are not there
    for user in directory.users:
        if not user["accountEnabled"] and user["userPrincipalName"] not in foreign:
            assert store.find_user(user["userPrincipalName"]) is None or user["id"] not in state.users
    # and objects idsync neither created nor adopted are untouched (ownership)
    for uid, before in foreign_before.items():
        assert store.users[uid] == before
    # and a second cycle writes nothing (idempotence)
    store.writes.clear()
    again = service.run()
    assert store.writes == []
    assert again.writes == 0


@settings(max_examples=40, deadline=None)
@given(worlds(), st.data())
def test_convergence_after_entra_changes(
    world: tuple[FakeSource, FakeIdentityStore, set[str]], data: st.DataObject
) -> None:
    directory, store, _ = world
    state = FakeState()
    service = make_service(directory, store, state, allow_deletions=True)
    service.run()
    # Given Entra changes: some users leave, some titles change, some memberships move
    keep = data.draw(st.lists(st.sampled_from(directory.users), unique_by=lambda u: u["id"])) if directory.users else []
    directory.users = [dict(u, jobTitle="Changed") if i % 2 else u for i, u in enumerate(keep)]
    kept_ids = {u["id"] for u in directory.users}
    directory.members = {g: [u for u in m if u in kept_ids][::2] for g, m in directory.members.items()}
    if directory.groups and data.draw(st.booleans()):
        directory.groups = directory.groups[1:]
    # When the next cycle runs
    report = service.run()
    # Then Identity Center converges again, and users who left are gone
    assert report.failures == ()
    expected_view(directory, store)
    managed_names = {o.user_name for o in state.users.values()}
    assert managed_names == {u["userPrincipalName"] for u in directory.users if u["accountEnabled"]}
    store.writes.clear()
    assert service.run().writes == 0


def _tenant(count: int) -> FakeSource:
    users = [
        {
            "id": f"e{i}",
            "userPrincipalName": f"u{i}@example.com",
            "displayName": f"U {i}",
            "accountEnabled": True,
        }
        for i in range(count)
    ]
    return FakeSource(users, [{"id": "g1", "displayName": "Admins"}], {"g1": [u["id"] for u in users]})


def test_deletion_guard_holds_back_every_deletion_and_says_why() -> None:
    # Given 100 provisioned users
    directory = _tenant(100)
    store, state = FakeIdentityStore(), FakeState()
    service = make_service(directory, store, state, max_deletions=500, max_deletion_percent=20.0)
    service.run()
    # When Entra suddenly returns only 70 of them (30% would be deleted)
    directory.users = directory.users[:70]
    directory.members = {"g1": [u["id"] for u in directory.users]}
    store.writes.clear()
    report = service.run()
    # Then nothing is deleted, the guard is reported, and the deletions are logged as held back
    assert report.guard is not None
    assert "30 of 101" in report.guard.message
    assert len(store.users) == 100
    assert len(store.members_of("Admins")) == 100
    assert store.writes == []
    held = [e for e in state.logs if e.error == "held back by the deletion guard"]
    assert len(held) == 30 + 30  # 30 users and their 30 memberships
    assert not report.ok


def test_deletion_guard_by_count_and_override() -> None:
    directory = _tenant(30)
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state, max_deletions=5, max_deletion_percent=100.0).run()
    directory.users = directory.users[:20]
    directory.members = {"g1": [u["id"] for u in directory.users]}
    # 10 deletions > 5: held back
    assert make_service(directory, store, state, max_deletions=5, max_deletion_percent=100.0).run().guard is not None
    assert len(store.users) == 30
    # an operator's one-off override applies them
    report = make_service(
        directory, store, state, max_deletions=5, max_deletion_percent=100.0, allow_deletions=True
    ).run()
    assert report.guard is None
    assert len(store.users) == 20
    assert report.counts["user"]["delete"] == 10


def test_below_the_guard_deletions_apply() -> None:
    directory = _tenant(100)
    store, state = FakeIdentityStore(), FakeState()
    make_service(directory, store, state).run()
    directory.users = directory.users[:90]
    directory.members = {"g1": [u["id"] for u in directory.users]}
    report = make_service(directory, store, state).run()
    assert report.guard is None
    assert len(store.users) == 90
    assert len(store.members_of("Admins")) == 90


# --------------------------------------------------------------------------- the deletion guard's three thresholds


def _teams(users: int, groups: int) -> FakeSource:
    """``users`` users spread round-robin over ``groups`` groups (one membership each)."""
    people = _tenant(users).users
    teams = [{"id": f"g{j}", "displayName": f"Team {j}"} for j in range(groups)]
    members = {f"g{j}": [p["id"] for k, p in enumerate(people) if k % groups == j] for j in range(groups)}
    return FakeSource(people, teams, members)


def _leave(directory: FakeSource, count: int) -> None:
    """``count`` users leave their group in Entra (they stay, as do their groups)."""
    leaving = {u["id"] for u in directory.users[:count]}
    directory.members = {g: [u for u in m if u not in leaving] for g, m in directory.members.items()}


def _provisioned(directory: FakeSource, **policy: Any) -> tuple[FakeIdentityStore, FakeState, Runner]:
    store, state = FakeIdentityStore(), FakeState()
    runner = make_service(directory, store, state, **policy)
    runner.run()
    store.writes.clear()
    return store, state, runner


def test_membership_removals_exactly_at_their_percentage_apply_and_one_more_is_held_back() -> None:
    # Given 40 managed memberships, a limit of 10% of them (4) and a floor below it
    policy = {"max_membership_removal_percent": 10.0, "membership_removal_floor": 2, "empty_group_min_memberships": 0}
    directory = _teams(40, 4)
    store, _, runner = _provisioned(directory, **policy)
    # When 4 members leave their groups: exactly at the limit, they are removed
    _leave(directory, 4)
    assert runner.run().guard is None
    assert store.writes == ["DeleteGroupMembership"] * 4
    # When 5 more leave (5 of 36: 13.9%), none is removed, and the guard says which threshold tripped
    store.writes.clear()
    _leave(directory, 9)
    report = runner.run()
    assert report.guard is not None
    assert report.guard.tripped == (GuardThreshold.MEMBERSHIP_REMOVALS,)
    assert "5 membership removals (13.9% of the managed ones) are above the limit of 10% of them, at least 2" in (
        report.guard.message
    )
    assert store.writes == []
    assert sum(len(store.members_of(f"Team {j}")) for j in range(4)) == 36


def test_membership_removals_up_to_the_floor_apply_whatever_their_share() -> None:
    # Given 40 managed memberships, 10% of them (4) below a floor of 6
    policy = {"max_membership_removal_percent": 10.0, "membership_removal_floor": 6, "empty_group_min_memberships": 0}
    directory = _teams(40, 4)
    store, _, runner = _provisioned(directory, **policy)
    # When 6 members leave (15%): at the floor, they are removed
    _leave(directory, 6)
    assert runner.run().guard is None
    assert store.writes == ["DeleteGroupMembership"] * 6
    # When 7 more leave (7 of 34: above both the floor and 10%), none is removed
    store.writes.clear()
    _leave(directory, 13)
    report = runner.run()
    assert report.guard is not None
    assert report.guard.tripped == (GuardThreshold.MEMBERSHIP_REMOVALS,)
    assert report.guard.counted_removals == 7
    assert store.writes == []


def test_a_group_entra_still_lists_read_empty_trips_the_guard_at_its_minimum_size_and_is_named() -> None:
    # Given two groups of 10 and 9 members, removals far below the membership threshold
    people = _tenant(19).users
    groups = [{"id": "g1", "displayName": "Admins"}, {"id": "g2", "displayName": "Operators"}]
    members = {"g1": [p["id"] for p in people[:10]], "g2": [p["id"] for p in people[10:]]}
    directory = FakeSource(people, groups, members)
    store, _, runner = _provisioned(directory, membership_removal_floor=500, empty_group_min_memberships=10)
    # When Entra reads the 9-member group empty (below the minimum): its members are removed
    directory.members = {"g1": members["g1"], "g2": []}
    assert runner.run().guard is None
    assert store.members_of("Operators") == set()
    # When Entra reads the 10-member group empty while every user stays
    store.writes.clear()
    directory.members = {"g1": [], "g2": []}
    report = runner.run()
    # Then no membership is removed, and the guard names the group and the threshold
    assert report.guard is not None
    assert report.guard.tripped == (GuardThreshold.EMPTIED_GROUPS,)
    assert report.guard.emptied_groups == ("Admins",)
    assert report.guard.as_dict()["emptiedGroups"] == ["Admins"]
    assert "which is what an empty read of a group looks like: Admins;" in report.guard.message
    assert store.writes == []
    assert len(store.members_of("Admins")) == 10
    # and a group that keeps one member in Entra is not emptied: its 9 leavers are removed
    directory.members = {"g1": members["g1"][:1], "g2": []}
    assert runner.run().guard is None
    assert store.members_of("Admins") == {"u0@example.com"}


def test_an_empty_group_minimum_of_0_turns_the_emptied_group_rule_off() -> None:
    people = _tenant(12).users
    directory = FakeSource(people, [{"id": "g1", "displayName": "Admins"}], {"g1": [p["id"] for p in people]})
    store, _, runner = _provisioned(directory, empty_group_min_memberships=0)
    directory.members = {"g1": []}
    assert runner.run().guard is None
    assert store.members_of("Admins") == set()


def test_memberships_of_deleted_users_and_groups_count_under_those_deletions() -> None:
    # Given a group of 12 and 12 users in two more groups each, a membership floor of 5 and an empty-group minimum of 10
    people = _tenant(24).users
    groups = [{"id": "g1", "displayName": "Admins"}, {"id": "g2", "displayName": "A"}, {"id": "g3", "displayName": "B"}]
    members = {"g1": [p["id"] for p in people[:12]], "g2": [p["id"] for p in people[12:]]}
    members["g3"] = list(members["g2"])
    directory = FakeSource(people, groups, members)
    policy = {"max_deletions": 5, "max_deletion_percent": 100.0, "membership_removal_floor": 5}
    store, _, runner = _provisioned(directory, **policy)
    # When the group of 12 leaves Entra and 4 users leave the company (8 memberships), all within 5 deletions
    directory.groups = groups[1:]
    directory.users = people[:20]
    directory.members = {"g2": [p["id"] for p in people[12:20]], "g3": [p["id"] for p in people[12:20]]}
    report = runner.run()
    # Then the 20 memberships go with their group and users: none counts as a membership removal
    assert report.guard is None
    assert store.find_group("Admins") is None
    assert len(store.users) == 20
    assert store.writes.count("DeleteGroupMembership") == 12 + 8


class _Counted(Mapping[Any, Any]):
    """As many managed objects as a tenant at scale holds, by count only (the guard only counts them)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        return iter(())

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)


GROUPS_AT_SCALE = 10_000


@cache
def _listed_at_scale() -> DesiredView:
    """Entra's answer at scale as far as the guard reads it: every group listed, each with a member who stays."""
    groups = {f"g{j}": Group(f"g{j}", f"Team {j}") for j in range(GROUPS_AT_SCALE)}
    return DesiredView({}, groups, frozenset((f"g{j}", "e0") for j in range(GROUPS_AT_SCALE)))


@cache
def _leaving(count: int) -> list[Operation]:
    """``count`` members leaving groups Entra still lists, spread evenly over the groups."""
    return [
        Operation(Kind.MEMBERSHIP, Action.DELETE, f"g{k % GROUPS_AT_SCALE}", "leaves", member_source_id=f"e{k + 1}")
        for k in range(count)
    ]


def _guard_at(policy: PlanPolicy, *, memberships: int, removals: int, users_deleted: int = 0) -> DeletionGuard | None:
    """The guard on a plan at scale: 100,000 managed users, 10,000 groups and ``memberships`` memberships;
    ``removals`` members leave groups they stay listed in, and ``users_deleted`` users leave with five
    memberships each."""
    owned = Ownership(_Counted(100_000), _Counted(GROUPS_AT_SCALE), _Counted(memberships))
    leavers = [f"e{99_999 - k}" for k in range(users_deleted)]
    with_user = [
        Operation(Kind.MEMBERSHIP, Action.DELETE, f"g{(k * 5 + n) % GROUPS_AT_SCALE}", "gone", member_source_id=sid)
        for k, sid in enumerate(leavers)
        for n in range(5)
    ]
    user_deletes = [Operation(Kind.USER, Action.DELETE, sid, "gone") for sid in leavers]
    stays = _leaving(60_001)[:removals]
    return _guard(user_deletes, [], stays + with_user, _listed_at_scale(), {"e0"}, owned, policy)


def test_a_day_of_churn_at_100k_users_and_500k_memberships_does_not_trip_the_default_guard() -> None:
    # 1% of the memberships change (5,000 removals) and 400 users leave with their 2,000 memberships
    assert _guard_at(PlanPolicy(), memberships=500_000, removals=5_000, users_deleted=400) is None
    # three times that churn still applies, as do the 750 removals at 30k users (150k memberships)
    assert _guard_at(PlanPolicy(), memberships=500_000, removals=15_000, users_deleted=499) is None
    assert _guard_at(PlanPolicy(), memberships=150_000, removals=750) is None
    # while a tenth of the memberships gone at once trips it, and so do 500 user deletions and one more
    assert _guard_at(PlanPolicy(), memberships=500_000, removals=50_000) is not None
    assert _guard_at(PlanPolicy(), memberships=500_000, removals=0, users_deleted=501) is not None


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 1_000_000), st.integers(0, 2_000), st.integers(1, 60))
def test_membership_removals_trip_exactly_above_the_larger_of_the_floor_and_the_percentage(
    memberships: int, floor: int, tenths: int
) -> None:
    # a percentage in tenths, so that the exact limit is an integer computation
    policy = PlanPolicy(membership_removal_floor=floor, max_membership_removal_percent=tenths / 10)
    limit = max(floor, tenths * memberships // 1000)
    at = _guard_at(policy, memberships=memberships, removals=limit)
    above = _guard_at(policy, memberships=memberships, removals=limit + 1)
    assert at is None
    assert above is not None
    assert above.tripped == (GuardThreshold.MEMBERSHIP_REMOVALS,)
    assert above.counted_removals == limit + 1


def test_the_guard_asks_for_the_managed_totals_only_when_a_threshold_needs_a_share() -> None:
    owned = Ownership({}, {}, {})
    asked: list[int] = []

    def totals() -> tuple[int, int]:
        asked.append(1)
        return 100_000, 500_000

    policy = PlanPolicy(empty_group_min_memberships=0)
    removals = _leaving(600)
    # nothing deleted, removals within the floor: the totals are never asked for
    assert _guard([], [], removals[:500], _listed_at_scale(), set(), owned, policy, totals) is None
    assert asked == []
    # past the floor, the share is needed: asked once, and 600 of 500,000 stays under the percentage
    assert _guard([], [], removals, _listed_at_scale(), set(), owned, policy, totals) is None
    assert asked == [1]
    # tripped: the verdict names the totals it compared with
    many = [Operation(Kind.USER, Action.DELETE, f"x{n}", "gone") for n in range(501)]
    verdict = _guard(many, [], [], _listed_at_scale(), set(), owned, policy, totals)
    assert verdict is not None
    assert (verdict.managed, verdict.managed_memberships) == (100_000, 500_000)
    assert asked == [1, 1]
