"""PIM access when writes fail, writers overlap, idsync is paused or Graph lags: access never outlives its grant
(beyond one run) and is never cut while a grant holds it. Each case drives the whole system (PimWorld)."""

from __future__ import annotations

from datetime import timedelta

from idsync.errors import StateError
from tests.pim_world import ADA, BOB, GROUP, PimWorld


def test_a_membership_whose_record_was_lost_is_removed_when_its_grant_ends() -> None:
    world = PimWorld()
    world.cycle()
    world.graph.grant("i1", BOB, world.clock.now(), 5)
    world.graph.grant("i2", ADA, world.clock.now(), 60)
    record = world.state.record_membership
    calls: list[object] = []

    def throttled(membership: object) -> None:
        calls.append(membership)
        if len(calls) == 1:
            raise StateError("ProvisionedThroughputExceededException")
        record(membership)  # type: ignore[arg-type]

    world.state.record_membership = throttled  # type: ignore[method-assign]
    outcome = world.look()
    world.state.record_membership = record  # type: ignore[method-assign]
    assert [user for user, _ in outcome.failed] == [BOB]
    assert world.is_member(ADA), "one user's failed write never costs the others"
    assert world.is_member(BOB)
    assert BOB not in world.state.owned_memberships(GROUP)

    world.clock.current += timedelta(minutes=6)
    world.graph.end("i1", unlist=True)
    world.look()
    assert not world.is_member(BOB)
    assert world.phase(BOB) is None
    assert world.is_member(ADA)
