"""Fairness of the token line: the hint that has waited longest gets the next token, so a hint's wait is bounded.

The bound (``idsync.services.token_bucket``): with ``W`` groups waiting and ``r`` tokens a second, a hint waits at
most ``W / r`` seconds plus the lateness of the hints coming back (here at most ``MAX_LATE``) plus the rounding
of a requeue to whole seconds. The state machine drives the real bucket on a fake clock under sustained load:
activations keep arriving in every group, hints come back late, get lost, and the sync cycle takes tokens too.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from idsync.services.token_bucket import WAITER_GRACE_SECONDS, BucketPolicy, Grant, TokenBucket, Wait
from tests.fakes import FakeClock
from tests.unit.test_token_bucket import MemoryBucketStore

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = BucketPolicy(capacity=5, refill=5, period_seconds=10.0)
RATE = POLICY.refill / POLICY.period_seconds
GROUPS = [f"group-{n}" for n in range(8)]
MAX_LATE = 3  # seconds a requeued hint may come back after its due time


def test_a_requeued_hint_gets_the_next_token_before_new_arrivals() -> None:
    # Given an empty bucket and group A denied first (it waits in line)
    clock = FakeClock(T0)
    tokens = TokenBucket(MemoryBucketStore(), clock, POLICY)
    for _ in range(5):
        assert isinstance(tokens.try_take("busy"), Grant)
    first = tokens.try_take("A")
    assert first == Wait(seconds=2.0)

    # When new arrivals B and C ask just before A's token is due, and again when it is
    clock.advance(1.5)
    assert tokens.try_take("B") == Wait(seconds=2.5)  # queued behind A: A's token, then its own
    clock.advance(0.5)
    late_comer = tokens.try_take("C")

    # Then the token is kept for A: C waits behind A and B; A takes it on its return
    assert isinstance(late_comer, Wait)
    assert [w.name for w in tokens.line()] == ["A", "B", "C"]
    assert isinstance(tokens.try_take("A"), Grant)
    assert [w.name for w in tokens.line()] == ["B", "C"]


def test_an_unnamed_take_never_spends_a_token_kept_for_a_waiter() -> None:
    # Given one whole token in the bucket and one group waiting for it (coming back now)
    clock = FakeClock(T0)
    tokens = TokenBucket(MemoryBucketStore(), clock, POLICY)
    for _ in range(5):
        tokens.try_take()
    assert isinstance(tokens.try_take("A"), Wait)
    clock.advance(2.0)

    # When the sync cycle (unnamed) asks first, then A
    cycle = tokens.try_take()

    # Then the cycle waits, A is served
    assert cycle == Wait(seconds=2.0)
    assert isinstance(tokens.try_take("A"), Grant)


def test_a_waiter_that_never_comes_back_gives_up_its_place_after_the_grace() -> None:
    # Given a one-token bucket, spent, and A waiting for the next token (due in 2 s) and never coming back
    clock = FakeClock(T0)
    tokens = TokenBucket(MemoryBucketStore(), clock, BucketPolicy(capacity=1, refill=1, period_seconds=2.0))
    tokens.try_take()
    assert tokens.try_take("A") == Wait(seconds=2.0)

    # When B asks within A's grace, then after it
    clock.advance(2.0 + WAITER_GRACE_SECONDS - 1)
    held_back = tokens.try_take("B")
    clock.advance(2)
    served = tokens.try_take("B")

    # Then B is held back while A may still come, and served once A's place lapsed
    assert isinstance(held_back, Wait)
    assert isinstance(served, Grant)
    assert tokens.line() == []


def test_a_group_that_leaves_frees_its_place() -> None:
    clock = FakeClock(T0)
    tokens = TokenBucket(MemoryBucketStore(), clock, POLICY)
    for _ in range(5):
        tokens.try_take()
    tokens.try_take("A")
    tokens.try_take("B")

    tokens.leave("A")

    assert [w.name for w in tokens.line()] == ["B"]


class FairnessMachine(RuleBasedStateMachine):
    """Groups with activations arriving all the time; each group's one hint takes tokens until its group has
    none waiting or it is told to wait, then comes back at its due time (plus lateness). Checks the bound."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(T0)
        self.bucket = TokenBucket(MemoryBucketStore(), self.clock, POLICY)
        self.pending = dict.fromkeys(GROUPS, 0)
        self.due: dict[str, float] = {}  # a group's hint in flight: when it comes back (seconds from T0)
        self.since: dict[str, float] = {}  # when a group's oldest waiting activation was first denied a token
        self.late = 0
        self.worst = 0.0

    @property
    def now(self) -> float:
        return (self.clock.now() - T0).total_seconds()

    def _look(self, group: str) -> None:
        """What a look does: one token per activation, in order, until the group has none left or must wait."""
        while self.pending[group]:
            answer = self.bucket.try_take(group)
            if isinstance(answer, Wait):
                self.since.setdefault(group, self.now)
                self.due[group] = self.now + max(1, math.ceil(answer.seconds)) + self.late
                return
            self.pending[group] -= 1
            if group in self.since:
                self.worst = max(self.worst, self.now - self.since.pop(group))
        self.due.pop(group, None)
        self.bucket.leave(group)

    @rule(group=st.sampled_from(GROUPS), count=st.integers(1, 6))
    def activations_arrive(self, group: str, count: int) -> None:
        self.pending[group] += count
        if group not in self.due:
            self._look(group)  # the notification's hint is looked at now

    @rule(late=st.integers(0, MAX_LATE))
    def hints_come_back_this_late(self, late: int) -> None:
        self.late = late

    @rule(seconds=st.floats(0.1, 20.0))
    def time_passes(self, seconds: float) -> None:
        end = self.now + seconds
        while self.due and min(self.due.values()) <= end:
            group = min(self.due, key=lambda g: (self.due[g], g))
            self.clock.advance(max(0.0, self.due[group] - self.now))
            self._look(group)
            self._check()
        self.clock.advance(max(0.0, end - self.now))

    @rule()
    def the_cycle_takes_what_is_free(self) -> None:
        # the sync cycle's pass applies activations with unreserved tokens only
        while isinstance(self.bucket.try_take(), Grant):
            pass

    @invariant()
    def no_hint_waits_longer_than_the_bound(self) -> None:
        self._check()

    def _check(self) -> None:
        waiting = len(GROUPS)
        bound = waiting / RATE + MAX_LATE + 1
        longest = max([self.now - since for since in self.since.values()] + [self.worst])
        assert longest <= bound, f"a hint waited {longest:.1f} s; the bound is {bound:.1f} s"


TestFairness = FairnessMachine.TestCase
TestFairness.settings = settings(
    max_examples=80, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
