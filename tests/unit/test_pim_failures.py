"""PIM access when writes fail, writers overlap, idsync is paused or Graph lags: access never outlives its grant
(beyond one run) and is never cut while a grant holds it. Each case drives the whole system (PimWorld)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from idsync.adapters.identitystore import JIT_CALL_SECONDS, jit_client_config
from idsync.errors import DirectoryError, LeaseLost, SchedulerError, StateError
from idsync.services.control import pause
from idsync.services.cycle import CycleOptions
from idsync.services.jit import CLOCK_MARGIN_SECONDS, LEASE_SECONDS, GroupLease
from tests.fakes import FencedJitState
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


def test_a_writer_whose_lease_was_taken_over_and_released_never_writes_again() -> None:
    world = PimWorld()
    world.cycle()
    world.graph.grant("i1", ADA, world.clock.now(), 30)
    world.look()
    world.clock.current += timedelta(minutes=30, seconds=1)
    world.graph.end("i1", unlist=True)
    stale = world.jit.lease(GROUP)
    assert stale.acquire()
    world.clock.current += timedelta(seconds=61)  # the writer stalls past its lease
    world.graph.grant("i2", ADA, world.clock.now(), 60)
    world.look()  # a look takes the lapsed lease over, records the new grant and releases the lease
    assert world.phase(ADA) == "active"
    with pytest.raises(LeaseLost):
        stale.keep()


def test_a_removal_that_outlives_its_lease_never_overwrites_the_new_holders_grant() -> None:
    world = PimWorld()
    world.cycle()
    world.graph.grant("i1", ADA, world.clock.now(), 30)
    world.look()
    world.clock.current += timedelta(minutes=30, seconds=1)
    world.graph.end("i1", unlist=True)
    delete = world.identity.delete_membership

    def slow_delete(membership_id: str) -> None:
        world.clock.current += timedelta(seconds=70)
        world.graph.grant("i2", ADA, world.clock.now(), 60)
        world.look()  # Ada activates again: the look takes the lapsed lease and records her new grant
        delete(membership_id)

    world.identity.delete_membership = slow_delete  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        world.jit.expire(GROUP, ADA)
    world.identity.delete_membership = delete  # type: ignore[method-assign]
    assert world.phase(ADA) == "active", "the stale writer never overwrites the new grant"
    assert world.scheduler.of(ADA)


def test_the_jit_identity_store_client_answers_well_within_the_group_lease() -> None:
    config = jit_client_config()
    retries = config.retries or {}
    attempts = retries["total_max_attempts"]
    worst = attempts * (config.connect_timeout + config.read_timeout) + 2 ** (attempts - 1)
    assert retries["mode"] == "standard"
    assert worst <= JIT_CALL_SECONDS
    assert JIT_CALL_SECONDS + CLOCK_MARGIN_SECONDS < LEASE_SECONDS  # else every keep renews


def test_keep_renews_only_when_the_lease_would_not_outlast_the_next_call_and_the_margin() -> None:
    world = PimWorld()
    lease = GroupLease(world.state, GROUP, world.clock, LEASE_SECONDS, JIT_CALL_SECONDS)
    assert lease.acquire()
    spare = LEASE_SECONDS - JIT_CALL_SECONDS - CLOCK_MARGIN_SECONDS
    world.clock.advance(spare - 1)
    lease.keep()
    assert world.state.renewals == 0
    world.clock.advance(1)  # exactly the call and the margin left: not more than needed, so renew
    lease.keep()
    assert world.state.renewals == 1
    assert world.state.leases[lease.name] == (lease.owner, world.clock.now() + timedelta(seconds=LEASE_SECONDS))
    unbounded = GroupLease(world.state, "another", world.clock, LEASE_SECONDS)
    assert unbounded.acquire()
    unbounded.keep()  # a client without a bound: every call renews first
    assert world.state.renewals == 2


def test_an_activation_under_a_fresh_lease_renews_nothing_and_every_state_write_is_fenced() -> None:
    world = PimWorld(call_seconds=JIT_CALL_SECONDS)  # a client whose every call is bounded
    world.cycle()
    world.graph.grant("i1", ADA, world.clock.now(), 30)
    views: list[FencedJitState] = []
    fenced = world.state.fenced

    def watched(lease: str, owner: str) -> FencedJitState:
        views.append(fenced(lease, owner))
        return views[-1]

    world.state.fenced = watched  # type: ignore[method-assign]
    state = world.state
    renewals, grant_writes, records = state.renewals, state.grant_writes, state.records
    outcome = world.look()
    assert [a.user_id for a in outcome.activations] == [ADA]
    assert state.renewals == renewals
    assert [write for view in views for write in view.applied] == ["record_grant", "record_membership"]
    assert (state.grant_writes - grant_writes, state.records - records) == (1, 1)  # nothing written unfenced
    assert state.leases == {}  # released


def test_a_call_that_waits_past_the_lease_lands_only_while_its_writer_still_holds_it() -> None:
    """As deployed, the lease is renewed to its full length right before each Identity Center call: a look that
    read slowly (19 s) and whose call then waits 12 s for the shared budget and takes 29 s still lands inside
    its lease, so the look that the deactivation triggers waits for it and removes the membership. (A lease
    renewed only when less than the call's bound was left lapsed here, the second look found no membership yet
    and forgot the grant, and the late create left a member with no grant and no record, for good.)"""
    world = PimWorld()
    world.cycle(full=True)
    world.graph.grant("i1", ADA, world.clock.now(), 30)
    instances, create = world.graph.instances, world.identity.create_membership
    second: list[Any] = []

    def slow_read(*args: Any) -> Any:
        world.graph.instances = instances
        world.clock.advance(19)
        return instances(*args)

    def slow_create(group_id: str, user_id: str) -> Any:
        world.clock.advance(12 + 30 - 1)  # the budget's wait and the call: the request lands at its end
        world.graph.end("i1")
        world.clock.advance(1)
        world.identity.create_membership = create
        second.append(world.jit.look(GROUP))  # the deactivation's look, while the create is in flight
        return create(group_id, user_id)

    world.graph.instances, world.identity.create_membership = slow_read, slow_create  # type: ignore[method-assign]
    world.jit.look(GROUP)
    assert len(second) == 1
    assert not second[0].removals  # it found the lease held and looks again later
    for _ in range(3):
        world.clock.advance(31 * 60)
        world.look()
        world.fire_due()
        world.cycle(full=True)
    assert not world.is_member(ADA)
    assert world.phase(ADA) is None
    assert world.state.owned_memberships(GROUP) == {}


def _extended_then_paused(world: PimWorld) -> datetime:
    world.cycle()
    start = world.clock.now()
    world.graph.grant("i1", ADA, start, 30)
    world.look()
    world.graph.extend("i1", 15)  # an extension: no member change, so no notification
    pause(world.state, world.clock.now(), "incident", "ops")
    return start


def test_an_expiry_whose_re_arm_fails_raises_so_that_it_is_retried() -> None:
    world = PimWorld()
    start = _extended_then_paused(world)
    world.clock.current = start + timedelta(minutes=31)
    world.scheduler.fail_next = 1
    due = world.scheduler.due(world.clock.now())
    assert len(due) == 1
    with pytest.raises(SchedulerError):
        world.jit.expire(*world.scheduler.fire(due[0]))
    world.jit.expire(GROUP, ADA)  # Lambda's retry of the failed invocation
    assert world.scheduler.of(ADA) == [start + timedelta(minutes=45)]


def test_a_paused_cycle_still_ends_pim_access_and_adds_nobody() -> None:
    world = PimWorld()
    start = _extended_then_paused(world)
    world.scheduler.schedules.clear()  # every expiry schedule lost
    world.graph.grant("i2", BOB, world.clock.now(), 60)  # an activation whose notification was lost
    world.clock.current = start + timedelta(minutes=46)
    world.graph.end("i1", unlist=True)
    outcome = world.cycle()
    assert outcome.skipped is not None
    assert not world.is_member(ADA)
    assert not world.is_member(BOB), "a pause holds activations"
    assert world.scheduler.of(BOB) == []


def test_an_ended_activation_is_never_added_back_however_long_graph_keeps_listing_her() -> None:
    world = PimWorld()
    world.cycle()
    start = world.clock.now()
    world.graph.grant("i1", ADA, start, 30)
    world.look()
    end = start + timedelta(minutes=30)
    world.clock.current = end
    world.graph.end("i1", unlist=False)  # the instance is gone; the member list lags 25 minutes
    world.clock.current = end + timedelta(seconds=61)
    world.fire_due()
    for minutes in (10, 20):
        world.clock.current = end + timedelta(minutes=minutes, seconds=5)
        world.cycle()
        assert not world.is_member(ADA)
        assert world.phase(ADA) == "ended"
    world.clock.current = end + timedelta(minutes=25)
    world.graph.unlist(GROUP, ADA)
    world.cycle()
    assert world.phase(ADA) is None
    # a positive signal makes her a permanent member: an active assignment
    world.graph.grant("p1", ADA, world.clock.now(), None, assignment_type="assigned")
    world.look()
    assert world.is_member(ADA)


def _activated_and_schedule_lost(world: PimWorld) -> datetime:
    world.cycle()
    start = world.clock.now()
    world.graph.grant("i1", ADA, start, 30)
    world.look()
    world.scheduler.schedules.clear()  # the expiry schedule is lost: only the cycle can end her access
    return start


def test_with_graph_down_the_cycle_removes_access_whose_recorded_grant_ended() -> None:
    world = PimWorld()
    start = _activated_and_schedule_lost(world)
    world.graph.grant("i2", BOB, start, 60)
    world.look()
    world.graph.end("i1", unlist=True)
    world.clock.current = start + timedelta(minutes=31)
    world.graph.down = True
    with pytest.raises(DirectoryError):
        world.cycle()
    assert not world.is_member(ADA), "fail closed: her recorded grant ended"
    assert world.phase(ADA) == "ended"
    assert world.is_member(BOB), "a grant whose recorded end is ahead is kept"
    world.graph.down = False
    world.cycle()
    assert world.phase(ADA) is None
    assert not world.is_member(ADA)
    assert world.is_member(BOB)


def test_a_cycle_stopped_by_its_time_budget_still_removes_ended_pim_access() -> None:
    world = PimWorld()
    start = _activated_and_schedule_lost(world)
    world.graph.end("i1", unlist=True)
    world.graph.add_user("0f0e0d0c-0b0a-4909-8807-060504030201", "Nia Newcomer", department="Engineering")
    world.clock.current = start + timedelta(minutes=31)
    outcome = world.cycle_service.run(CycleOptions(should_stop=lambda: True))
    assert outcome.report is not None
    assert not outcome.report.complete
    assert not world.is_member(ADA)


def test_a_user_listed_before_her_instance_is_visible_is_looked_at_again_within_a_minute() -> None:
    world = PimWorld()
    world.cycle()
    world.graph.listed.setdefault(GROUP, set()).add(ADA)  # the member list shows her first
    outcome = world.look()
    assert outcome.sighted == 1
    assert outcome.wait_seconds is not None
    assert outcome.wait_seconds <= 60
    assert not world.is_member(ADA)
    world.clock.current += timedelta(seconds=outcome.wait_seconds)
    world.graph.grant("i1", ADA, world.clock.now(), 60)  # her instance becomes visible
    again = world.look()
    assert [a.user_id for a in again.activations] == [ADA]
    assert again.wait_seconds is None, "a sighting already recorded asks for no further look"
