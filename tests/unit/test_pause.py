"""Pause: no cycle starts and no access is granted while it lasts, and access never outlives its end.

The stateful test interleaves PIM activations, early deactivations, the passing of time (which fires
the one-time expiry schedules that are due, each deleted once fired, as EventBridge does), pause,
resume, the JIT worker and the sync cycle, and checks the invariants after every step.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from idsync.ports import GRANT_ENDED, Hint
from idsync.services.control import PAUSE_RECHECK_SECONDS, load_pause, pause, resume
from idsync.services.jit import JitWorker, WorkerBatch
from tests.unit.test_cycle import World as CycleWorld
from tests.unit.test_jit_service import ADA, BOB, GROUP, World, make_world, present


class RecordingRetry:
    """``ports.HintRetry``: remembers what the worker put back on the queue."""

    def __init__(self) -> None:
        self.delayed: list[int] = []
        self.resent: list[int] = []

    def delay(self, receipt_handle: str, seconds: int) -> None:
        self.delayed.append(seconds)

    def resend(self, hint: object, seconds: int) -> None:
        self.resent.append(seconds)


def hint() -> str:
    return Hint(GROUP, "created", "2030-01-01T12:00:00+00:00").to_json()


# --------------------------------------------------------------------------- the sync cycle


def test_a_paused_deployment_starts_no_cycle_even_when_told_to_ignore_quarantine() -> None:
    world = CycleWorld()
    pause(world.state, world.clock.now(), "tenant migration", "ops")

    outcome = world.run(ignore_quarantine=True, force_full=True)

    assert outcome.report is None
    assert (outcome.skipped or "").startswith("paused since ")
    assert "tenant migration" in (outcome.skipped or "")
    assert world.store.writes == []
    # a dry run writes nothing, so it may plan while paused
    assert world.run(dry_run=True).plan is not None
    assert world.store.writes == []
    # resumed: the next tick provisions
    assert resume(world.state) is True
    assert world.run().report is not None
    assert len(world.store.users) == 12
    assert resume(world.state) is False


def test_pausing_twice_keeps_the_first_time_and_the_latest_reason() -> None:
    world = CycleWorld()
    first = pause(world.state, world.clock.now(), "first", "ops")
    world.clock.advance(60)
    second = pause(world.state, world.clock.now(), "second", "oncall")
    assert second.since == first.since
    assert load_pause(world.state) == second
    assert second.reason == "second"


# --------------------------------------------------------------------------- the JIT worker and expiry


def test_while_paused_the_worker_holds_activations_and_still_removes_ended_ones() -> None:
    world = make_world()
    world.graph.grant("i1", ADA, world.clock.now(), 60)
    world.service.look(GROUP)
    assert present(world, ADA)
    pause(world.state, world.clock.now(), "incident", "ops")
    retry = RecordingRetry()
    worker = JitWorker(world.service, retry)

    # When Ada deactivates early and Bob activates, both while paused
    world.clock.advance(300)
    world.graph.end("i1")
    world.graph.grant("i2", BOB, world.clock.now(), 60)
    result = worker.batch().handle(hint(), "receipt-1", 1)

    # Then Ada's access is gone at once, Bob's is held and his hint comes back later
    assert not present(world, ADA)
    assert not present(world, BOB)
    assert result.outcome is not None
    assert result.outcome.removals == [ADA]
    assert result.outcome.held == 1
    assert retry.delayed == [PAUSE_RECHECK_SECONDS]
    assert result.failed  # the message stays on the queue

    # and once resumed, the hint that came back applies Bob's activation
    resume(world.state)
    world.clock.advance(PAUSE_RECHECK_SECONDS)
    again = worker.batch().handle(hint(), "receipt-1", 2)
    assert present(world, BOB)
    assert again.outcome is not None
    assert again.outcome.held == 0
    assert not again.failed


def test_the_expiry_is_never_paused() -> None:
    world = make_world()
    world.graph.grant("i1", ADA, world.clock.now(), 60)
    world.service.look(GROUP)
    pause(world.state, world.clock.now(), "migration", "ops")

    world.clock.advance(3600)
    outcome = world.service.expire(GROUP, ADA)

    assert outcome.removals == [ADA]
    assert not present(world, ADA)


def test_an_activation_that_ended_before_the_worker_saw_it_never_becomes_a_permanent_membership() -> None:
    # Given Ada activates for 5 minutes and the worker first runs after the end, Graph still showing the
    # ended instance and still listing Ada (both lag)
    world = make_world()
    worker = JitWorker(world.service, RecordingRetry())
    world.graph.grant("i1", ADA, world.clock.now(), 5)
    world.clock.advance(5 * 60)
    worker.batch().handle(hint(), "receipt", 1)
    assert not present(world, ADA)
    assert world.state.grant(GROUP, ADA) is not None

    # When 10 more minutes pass with Graph still lagging (past the settle time) and the worker runs again
    world.clock.advance(10 * 60)
    worker.batch().handle(hint(), "receipt", 1)

    # Then Identity Center holds no membership for her, and idsync keeps the ended marker and no schedule
    assert not present(world, ADA)
    assert world.members_in_identity_center() == set()
    marker = world.state.grant(GROUP, ADA)
    assert marker is not None
    assert marker.phase == GRANT_ENDED
    assert marker.instance_ids == ("i1",)
    assert world.scheduler.schedules == set()


class PauseMachine(RuleBasedStateMachine):
    """Activations, deactivations, time, pause/resume, worker, expiry schedules and sync, interleaved."""

    world: World

    @initialize()
    def setup(self) -> None:
        self.world = make_world()
        self.worker = JitWorker(self.world.service, RecordingRetry())
        self.serial = 0
        self.held_at_pause: set[str] | None = None
        # the latest end PIM gave each user (None: permanent) and whether an instance is still active
        self.ends: dict[str, list[tuple[str, datetime]]] = {ADA: [], BOB: []}

    def _paused(self) -> bool:
        return load_pause(self.world.state) is not None

    def _present(self) -> set[str]:
        return {user for user in (ADA, BOB) if present(self.world, user)}

    @rule(user=st.sampled_from([ADA, BOB]), minutes=st.sampled_from([5, 30, 60, 480]))
    def activate(self, user: str, minutes: int) -> None:
        self.serial += 1
        instance_id = f"i{self.serial}"
        self.world.graph.grant(instance_id, user, self.world.clock.now(), minutes)
        self.ends[user].append((instance_id, self.world.clock.now() + timedelta(minutes=minutes)))

    @rule(user=st.sampled_from([ADA, BOB]))
    def deactivate_early(self, user: str) -> None:
        live = [i for i in self.world.graph.current if i.principal_id == user]
        if live:
            # access may last until the worker looks, and never past the end PIM gave
            self.world.graph.end(live[0].id)

    @rule(minutes=st.integers(min_value=1, max_value=120), graph_lags=st.booleans())
    def time_passes(self, minutes: int, graph_lags: bool) -> None:
        world = self.world
        world.clock.advance(minutes * 60)
        now = world.clock.now()
        if not graph_lags:
            for instance in [i for i in world.graph.current if i.end is not None and i.end <= now]:
                world.graph.end(instance.id)
        # EventBridge fires each due one-time schedule once, then deletes it
        for group_id, user_id, end in sorted(world.scheduler.schedules, key=lambda s: s[2]):
            if end <= now:
                world.scheduler.schedules.discard((group_id, user_id, end))
                world.service.expire(group_id, user_id)

    @rule(reason=st.sampled_from(["migration", "incident"]))
    def pause_it(self, reason: str) -> None:
        if not self._paused():
            self.held_at_pause = self._present()
        pause(self.world.state, self.world.clock.now(), reason, "ops")

    @rule()
    def resume_it(self) -> None:
        resume(self.world.state)
        self.held_at_pause = None

    @rule()
    def worker_runs(self) -> None:
        self.worker.batch().handle(hint(), "receipt", 1)

    @rule()
    def tokens_refill(self) -> None:
        self.world.clock.advance(10)

    @invariant()
    def nothing_is_granted_while_paused(self) -> None:
        if self._paused() and self.held_at_pause is not None:
            assert self._present() <= self.held_at_pause

    @invariant()
    def access_never_outlives_its_end(self) -> None:
        now = self.world.clock.now()
        for user in self._present():
            ends = [end for _, end in self.ends[user]]
            assert ends, f"{user} holds access no activation gave"
            assert max(ends) > now, f"{user} holds access past its end"

    @invariant()
    def every_held_grant_has_its_expiry_scheduled(self) -> None:
        for (group_id, user_id), grant in self.world.state.granted.items():
            if grant.end is not None and present(self.world, user_id):
                assert (group_id, user_id, grant.end) in self.world.scheduler.schedules


PauseMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_pause_machine = PauseMachine.TestCase


def test_a_batch_reads_the_pause_once() -> None:
    world = make_world()
    batch = WorkerBatch(JitWorker(world.service, RecordingRetry()))
    pause(world.state, world.clock.now(), "later", "ops")
    world.graph.grant("i1", ADA, world.clock.now(), 60)
    # a pause set after the batch began holds activations from the next batch on
    batch.handle(hint(), "r", 1)
    assert present(world, ADA)
