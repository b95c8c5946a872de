"""The stateful property test of PIM for Groups (tests/pim_machine.py): every actor interleaved on a fake clock,
invariants (a) and (b) checked after every step. ``IDSYNC_PIM_EXAMPLES`` raises the example count for a long run.
The example test replays a case the random search rarely reaches."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

from idsync.ports import GRANT_ENDED
from idsync.services.jit import LEASE_RETRY_SECONDS
from tests.pim_machine import MAX_LAG, SIGHTED_MAX_LAG, USERS, PimMachine
from tests.pim_world import GROUP, GROUP_NAME

EXAMPLES = int(os.environ.get("IDSYNC_PIM_EXAMPLES", "60"))

TestPimTruth = PimMachine.TestCase
TestPimTruth.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_the_model_keeps_listing_an_activation_that_ran_out_unapplied_past_the_settle_time() -> None:
    # An activation held by a pause runs out; Graph keeps showing the ended instance and listing the user for
    # MAX_LAG (longer than SETTLE). Once resumed, no look, poll or cycle may admit her (invariant (a)).
    machine = PimMachine()
    machine.provision()
    user = USERS[0]
    machine.pause_or_resume(on=True)
    machine.activate(user, 5, 0)  # its notification lost; the poller holds it while paused
    machine.time_passes(seconds=6 * 60, lag=int(MAX_LAG.total_seconds()))
    machine.pause_or_resume(on=False)
    machine.replayed_notification()
    machine.time_passes(seconds=12 * 60, lag=0)
    graph = machine.world.graph
    assert user in graph.listed[GROUP]  # the model produced the case: still listed, the ended instance visible
    assert [i.id for i in graph.current if i.principal_id == user] == ["i1"]
    assert not machine.world.is_member(user)
    machine.time_passes(seconds=10 * 60, lag=0)  # a cycle runs past the settle time
    assert user in graph.listed[GROUP]
    assert not machine.world.is_member(user)
    assert machine.world.phase(user) == GRANT_ENDED
    machine.graph_drops_ended_instances()  # the marker explains the listing once the instance is gone
    assert graph.current == []
    machine.time_passes(seconds=20 * 60, lag=0)
    assert user not in graph.listed[GROUP]
    assert not machine.world.is_member(user)
    assert machine.world.phase(user) is None


def test_a_state_write_that_stalls_past_the_lease_is_refused_and_the_new_holder_applies_both() -> None:
    machine = PimMachine()
    machine.provision()
    first, second = USERS[0], USERS[1]
    machine.activate(first, 30, 0)  # its notification lost: the stalled look is the first to see it
    state = machine.world.state
    machine.writer_stalls_before_a_state_write(second, 30)
    assert state.fenced_refusals == 1  # the stalled look's write-ahead grant of the first user
    assert machine.world.is_member(first)
    assert machine.world.is_member(second)
    assert machine.world.phase(first) == "active"
    assert machine.world.phase(second) == "active"


def test_identity_center_writes_at_the_clients_bound_keep_the_lease_by_renewing_it() -> None:
    machine = PimMachine()
    machine.provision()
    machine.activate(USERS[0], 30, 0)
    machine.activate(USERS[1], 30, 0)
    renewals = machine.world.state.renewals
    machine.identity_center_slow(USERS[2], 30, 30)
    assert machine.world.is_member(USERS[0])
    assert machine.world.is_member(USERS[1])
    assert machine.world.state.renewals > renewals  # 30 s per call: the second call needed a renewal first
    machine.time_passes(seconds=2, lag=0)  # the busy look's hint comes back
    assert machine.world.is_member(USERS[2])


def test_a_removal_on_its_way_when_she_activates_again_ends_the_old_instance_and_her_hint_re_adds_her() -> None:
    # Given a member whose instance was just deactivated (no notification), Graph still listing her
    machine = PimMachine()
    machine.provision()
    user = USERS[1]
    machine.activate(user, 5, 1)
    assert machine.world.is_member(user)
    machine.world.graph.end("i1", unlist=False)
    machine.truth["i1"].end = machine.now

    # When a look removes her, and she activates again while that removal is on its way to AWS
    machine.identity_center_slow(user, 30, 0)

    # Then the removal lands (it was sent on the ended instance: not a breach of (b)), the hint of her new
    # activation, turned away while the group was held, comes back and re-adds her
    assert not machine.world.is_member(user)
    assert machine.pending_hint == machine.now + timedelta(seconds=LEASE_RETRY_SECONDS)
    machine.time_passes(seconds=2, lag=0)
    assert machine.world.is_member(user)
    assert machine.world.phase(user) == "active"


def test_the_excuse_is_for_the_removal_on_its_way_only() -> None:
    # Given a member holding an active instance, her membership applied during it
    machine = PimMachine()
    machine.provision()
    user = USERS[1]
    machine.activate(user, 30, 1)
    assert machine.world.is_member(user)

    # When something removes her while the instance lasts (a stray delete, not one sent before the stretch)
    group = machine.world.identity.find_group(GROUP_NAME)
    target = machine.world.target_id(user)
    assert group is not None
    assert target is not None
    membership = machine.world.identity.find_membership(group, target)
    assert membership is not None
    machine.world.identity.delete_membership(membership)

    # Then invariant (b) fails
    with pytest.raises(AssertionError, match=r"\(b\) .* lost her membership"):
        machine.access_follows_entra()


def test_a_listing_sighted_before_an_unseen_activation_ends_is_not_taken_for_a_permanent_member() -> None:
    # Given a user Graph lists before her instance is visible (idsync records only the sighting), whose
    # activation then ends at once, unseen (no notification)
    machine = PimMachine()
    machine.provision()
    user = USERS[0]
    machine.listed_before_instance(user, 1, 30)
    assert machine.world.phase(user) == "sighted"
    active = [i for i in machine.truth.values() if i.user == user]

    class Pick:
        def draw(self, strategy: object) -> object:
            return active[0]

    machine.deactivate(Pick(), 600, False)  # type: ignore[arg-type]

    # Then Graph's listing lags as for an activation idsync never saw (under SETTLE), and once the settle time
    # has passed she is not a member
    assert machine.lag[user] - machine.now <= SIGHTED_MAX_LAG
    machine.time_passes(seconds=11 * 60, lag=int(MAX_LAG.total_seconds()))
    assert not machine.world.is_member(user)
