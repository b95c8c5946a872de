"""Stateful property test of the shared rate budget: a sync pool, access, the CLI, the JIT worker, the
expiry function and the poller draw from one bucket on a fake clock, interleaved with lost conditional
writes, throttled answers and the clock moving on. After every step:

- rate: the calls of all writers in any window of ``w`` seconds are at most ``capacity + rate x (w + lease)``;
- JIT wait: a JIT writer's call waited at most one refill interval at the rate it found, plus the short
  retries of compare-and-set rounds it lost; and it waited at all only when the JIT writers themselves spent
  the reserve: however hard the bulk writers draw, ``J`` JIT calls in the ``d`` seconds before it exceeded
  ``reserve - 1 + lowest rate x d``;
- no token minted twice: the bucket's versions were written once each, in order; the tokens granted never
  exceed the capacity plus the refill at the configured rate; no process spent more than it was granted.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from idsync.ports import RateBudget
from idsync.services.rate_budget import TokenRateBudget
from idsync.services.shared_budget import (
    CONTENTION_RETRY_SECONDS,
    SCALE,
    SharedBucket,
    SharedBudgetPolicy,
    SharedRateBudget,
    WriterClass,
    current_rate,
)
from idsync.services.token_bucket import to_micros
from tests.fakes import FakeBucketStore, FakeClock

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = SharedBudgetPolicy(rate=20.0, reserve=4.0)
CAPACITY = POLICY.capacity_u / SCALE
MAX_INTERLOPERS = 6
MAX_ATTEMPTS = 5
WRITERS = ["sync", "access", "cli", "jit", "expiry", "poller"]
EPSILON = 1e-6


class SharedBudgetMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(T0)
        self.store = FakeBucketStore()
        self.budgets = {
            writer: SharedRateBudget(
                SharedBucket(self.store, self.clock, POLICY, max_attempts=MAX_ATTEMPTS), writer, self.sleep, self.local
            )
            for writer in WRITERS
        }
        self.calls: list[float] = []  # when each call was allowed, in order
        self.checked = 0
        self.jit_waits: list[tuple[float, float]] = []  # (waited, the bound it had)
        self.jit_calls: list[float] = []  # when each JIT writer's call was allowed
        self.unexplained: list[str] = []  # JIT waits no JIT spending accounts for

    def elapsed(self) -> float:
        return (self.clock.now() - T0).total_seconds()

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def local(self, rate: float) -> RateBudget:
        return TokenRateBudget(rate, now=self.elapsed, sleep=self.sleep)

    @rule(writer=st.sampled_from(WRITERS), calls=st.integers(1, 12))
    def acquire(self, writer: str, calls: int) -> None:
        """One writer makes ``calls`` calls in a row (the sync: its pool's threads taking turns)."""
        budget = self.budgets[writer]
        for _ in range(calls):
            started = self.elapsed()
            rate = current_rate(self.store.buckets.get("identity-center"), to_micros(self.clock.now()), POLICY)
            contention = CONTENTION_RETRY_SECONDS * math.ceil(self.store.interlopers / MAX_ATTEMPTS)
            budget.acquire()
            self.calls.append(self.elapsed())
            if budget.kind is WriterClass.JIT:
                waited = self.elapsed() - started
                self.jit_waits.append((waited, SCALE / rate + contention))
                if waited > contention + EPSILON and not self._reserve_spent_by_jit(started):
                    self.unexplained.append(f"{writer} waited {waited:.4f} s at {started:.4f} s")
                self.jit_calls.append(self.elapsed())

    def _reserve_spent_by_jit(self, now: float) -> bool:
        """Whether JIT calls alone, in some window ending ``now``, outran the reserve plus the slowest refill."""
        lowest = POLICY.min_rate_u / SCALE
        for count, when in enumerate(reversed(self.jit_calls), start=1):
            if count > POLICY.reserve - 1 + lowest * (now - when) - 1e-3:
                return True
        return False

    @rule(calls=st.integers(1, 6))
    def every_writer(self, calls: int) -> None:
        """Every writer makes ``calls`` calls, taking turns call by call (processes running side by side)."""
        for _ in range(calls):
            for writer in WRITERS:
                self.acquire(writer, 1)

    @rule(seconds=st.floats(0.0, 1.5))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(writer=st.sampled_from(WRITERS))
    def throttled(self, writer: str) -> None:
        self.budgets[writer].throttled()

    @rule(lost=st.integers(1, MAX_INTERLOPERS))
    def lose_next_writes(self, lost: int) -> None:
        """Other writers win the next ``lost`` compare-and-set rounds."""
        self.store.interlopers = lost

    @invariant()
    def rate_within_any_window(self) -> None:
        for j in range(self.checked, len(self.calls)):
            for i in range(j + 1):
                window = self.calls[j] - self.calls[i]
                allowed = CAPACITY + POLICY.rate * (window + POLICY.lease_seconds)
                assert j - i + 1 <= allowed + EPSILON, f"{j - i + 1} calls in {window:.3f} s (allowed {allowed:.2f})"
        self.checked = len(self.calls)

    @invariant()
    def jit_waits_at_most_one_refill_interval(self) -> None:
        for waited, bound in self.jit_waits:
            assert waited <= bound + EPSILON, f"a JIT call waited {waited:.4f} s (bound {bound:.4f} s)"
        self.jit_waits.clear()

    @invariant()
    def jit_waits_only_after_spending_the_reserve(self) -> None:
        assert not self.unexplained, self.unexplained

    @invariant()
    def no_token_minted_twice(self) -> None:
        versions = [state.version for state in self.store.written]
        assert versions == list(range(1, len(versions) + 1))
        granted = sum(budget.stats.tokens for budget in self.budgets.values())
        assert granted <= CAPACITY + POLICY.rate * self.elapsed() + EPSILON
        for budget in self.budgets.values():
            assert budget.stats.calls - budget.stats.local_calls <= budget.stats.tokens


SharedBudgetMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestSharedBudget = SharedBudgetMachine.TestCase
