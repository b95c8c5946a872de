"""A full reconcile stopped while listing IAM Identity Center resumes from its stored listing only while
nothing else wrote since: on-demand provisioning (under the sync lease) forgets the listing, and a listing
made with another size of ownership (another writer, a crash after a write) is listed again."""

from __future__ import annotations

from idsync.model import PlanPolicy
from idsync.services.blobs import load_blob, save_blob
from idsync.services.cycle import CHECKPOINT_TARGET, CycleOptions, CycleService, Scoping
from tests.fakes import FakeClock, FakeDeltaSource, FakeIdentityStore, FakeState
from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper


def _world() -> tuple[FakeDeltaSource, FakeIdentityStore, FakeState, FakeClock, CycleService]:
    users = [
        {"id": f"e{i}", "userPrincipalName": f"u{i}@example.com", "displayName": f"U{i}", "accountEnabled": True}
        for i in range(30)
    ]
    source = FakeDeltaSource(users, [{"id": "g1", "displayName": "Admins"}], {"g1": ["e1"]})
    store, state, clock = FakeIdentityStore(page_size=5), FakeState(), FakeClock()
    service = CycleService(
        source,
        store,
        state,
        SimpleUserMapper(),
        SimpleGroupMapper(),
        Everything(),
        Scoping("all", False),
        PlanPolicy(max_deletions=100, max_deletion_percent=90.0),
        clock,
    )
    assert service.run(CycleOptions()).report.complete
    source.users.append(
        {"id": "e77", "userPrincipalName": "new@example.com", "displayName": "N", "accountEnabled": True}
    )
    source.members["g1"].append("e77")
    out = service.run(CycleOptions(force_full=True, should_stop=lambda: sum(store.list_calls.values()) >= 9))
    assert out.report is not None
    assert not out.report.complete
    assert load_blob(state, CHECKPOINT_TARGET) is not None
    clock.advance(60)
    return source, store, state, clock, service


def _assert_consistent(store: FakeIdentityStore, state: FakeState) -> None:
    owned = state.load_ownership()
    named = [uid for uid, u in store.users.items() if u["UserName"] == "new@example.com"]
    assert named == [owned.users["e77"].target_id]
    group = owned.groups["g1"].target_id
    in_aws = sorted(u for g, u in store.memberships.values() if g == group)
    assert in_aws == sorted(owned.users[u].target_id for g, u in owned.memberships if g == "g1")
    assert in_aws == sorted(owned.users[u].target_id for u in ("e1", "e77"))


def test_on_demand_provisioning_forgets_a_stored_listing_and_the_resumed_cycle_lists_again() -> None:
    _, store, state, clock, service = _world()
    assert service.provision("user", "e77").skipped is None
    assert load_blob(state, CHECKPOINT_TARGET) is None
    clock.advance(60)
    out = service.run(CycleOptions())
    assert out.report is not None
    assert out.report.complete
    assert out.report.failures == ()
    _assert_consistent(store, state)


def test_a_listing_made_with_another_size_of_ownership_is_not_planned_from() -> None:
    _, store, state, _, service = _world()
    blob = load_blob(state, CHECKPOINT_TARGET)
    assert blob is not None
    assert service.provision("user", "e77").skipped is None
    # as if the listing had outlived the other writer (stored by a run that raced it)
    save_blob(state, CHECKPOINT_TARGET, blob)
    out = service.run(CycleOptions())
    assert out.report is not None
    assert out.report.complete
    assert out.report.failures == ()
    _assert_consistent(store, state)
