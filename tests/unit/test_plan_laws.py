"""The planner's laws, stated as properties: convergence, idempotence, ownership, deletion guard."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idsync.model import Group, PlanPolicy, Refusal, User, freeze_doc
from idsync.plan import with_manager
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
