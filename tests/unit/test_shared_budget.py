"""The rate budget shared across functions: batches, the JIT reserve, leases, throttle feedback, outages."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idsync.config import parse_settings
from idsync.errors import ConfigError
from idsync.ports import BucketState, RateBudget
from idsync.services.rate_budget import TokenRateBudget
from idsync.services.shared_budget import (
    SCALE,
    BudgetStats,
    Later,
    SharedBucket,
    SharedBudgetPolicy,
    SharedRateBudget,
    Taken,
    current_rate,
    refilled,
    writer_class,
)
from idsync.services.token_bucket import to_micros
from tests.fakes import FakeBucketStore, FakeClock

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = SharedBudgetPolicy(rate=20.0, reserve=4.0)  # capacity 9: the reserve 4 plus a bulk batch of 5


@dataclass
class World:
    """Several processes' budgets over one store and one fake clock; sleeping moves the clock."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    store: FakeBucketStore = field(default_factory=FakeBucketStore)
    slept: list[float] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    def elapsed(self) -> float:
        return (self.clock.now() - T0).total_seconds()

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)

    def local(self, rate: float) -> RateBudget:
        return TokenRateBudget(rate, now=self.elapsed, sleep=self.sleep)

    def budget(self, writer: str, policy: SharedBudgetPolicy = POLICY) -> SharedRateBudget:
        bucket = SharedBucket(self.store, self.clock, policy)
        return SharedRateBudget(bucket, writer, self.sleep, self.local, lambda: self.fallbacks.append(writer))

    def stored(self) -> BucketState:
        return self.store.buckets["identity-center"]


def test_a_bulk_writer_takes_a_batch_in_one_write_and_spends_it_locally() -> None:
    # Given a sync's budget over a fresh (full) bucket
    world = World()
    sync = world.budget("sync")

    # When it makes 5 calls, then a sixth
    for _ in range(5):
        sync.acquire()
    assert len(world.store.written) == 1
    assert world.slept == []
    sync.acquire()

    # Then the five cost one write, and the sixth waited a quarter second for the next batch above the reserve
    assert len(world.store.written) == 2
    assert world.slept == [0.25]
    assert sync.stats.takes == 2
    assert sync.stats.tokens == 10
    assert sync.stats.calls == 6
    assert world.stored().micro_tokens == 4 * SCALE  # the reserve is left


def test_the_sync_never_takes_the_reserve_and_a_jit_call_finds_it_at_once() -> None:
    # Given a sync drawing as hard as it can for two seconds
    world = World()
    sync, jit = world.budget("sync"), world.budget("jit")
    while world.elapsed() < 2.0:
        sync.acquire()
        assert world.stored().micro_tokens >= 4 * SCALE

    # When the JIT worker makes four calls at once
    slept = len(world.slept)
    for _ in range(4):
        jit.acquire()

    # Then none of them waited, and the sync waits for the reserve to refill before its next batch
    assert len(world.slept) == slept
    while len(world.slept) == slept:  # the rest of the batch in hand, then the next take
        sync.acquire()
    assert world.slept[-1] == pytest.approx((4 + 5) / 20, abs=1e-6)


def test_a_jit_call_waits_at_most_one_refill_interval_while_the_sync_saturates() -> None:
    # Given a sync that takes every batch it can, and a JIT worker calling five times a second for 10 s
    world = World()
    sync, jit = world.budget("sync"), world.budget("jit")
    jit_waits: list[float] = []
    next_jit = 0.0
    sync_calls = 0
    while world.elapsed() < 10.0:
        if world.elapsed() >= next_jit:
            started = world.elapsed()
            jit.acquire()
            jit_waits.append(world.elapsed() - started)
            next_jit += 0.2
        else:
            sync.acquire()
            sync_calls += 1

    # Then no JIT call waited, and together they stayed within 20 calls a second plus the bucket's capacity
    assert max(jit_waits) == 0.0
    assert len(jit_waits) == 50
    assert sync_calls + len(jit_waits) <= 20 * world.elapsed() + 9


def test_unspent_tokens_expire_with_their_lease() -> None:
    # Given a sync that took a batch and made one call
    world = World()
    sync = world.budget("sync")
    sync.acquire()

    # When it calls again after its lease ran out
    world.clock.advance(0.5)
    sync.acquire()

    # Then the four left were not spent: it took a fresh batch
    assert sync.stats.expired == 4
    assert sync.stats.takes == 2


class StallingClock(FakeClock):
    """A process that stalls: every reading of the clock comes ``stall`` seconds after the one before."""

    def __init__(self, stall: float) -> None:
        super().__init__(T0)
        self.stall = stall
        self.readings = 0

    def now(self) -> datetime:
        self.readings += 1
        assert self.readings < 100, "the budget never let a call through: each take expired before its spend"
        self.advance(self.stall)
        return self.current


@pytest.mark.parametrize("writer", ["jit", "sync"])
def test_a_process_that_stalls_past_the_lease_after_a_take_still_spends_the_token_it_took(writer: str) -> None:
    # Given a process so slow that each look at the clock comes after a whole lease has gone by
    world = World(clock=StallingClock(POLICY.lease_seconds + 0.1))

    # When it makes three calls
    budget = world.budget(writer)
    for _ in range(3):
        budget.acquire()

    # Then each call took one batch and spent its first token: a take is never let expire before its call
    assert budget.stats.calls == 3
    assert budget.stats.takes == 3
    assert world.stored().version == 3
    batch = budget.stats.tokens // 3
    assert budget.stats.expired == 2 * (batch - 1)  # the first two batches' rest; the third's is still in hand


def test_throttled_halves_the_rate_for_every_process_once_a_second_and_it_recovers_additively() -> None:
    # Given two sync processes on one bucket, the first having drawn it down to the reserve
    world = World()
    first, second = world.budget("sync"), world.budget("access")
    for _ in range(5):
        first.acquire()

    # When the first is throttled three times in the same second
    first.throttled()
    first.throttled()
    first.throttled()

    # Then the shared rate was cut once, to 10 a second, and the second process waits twice as long for a batch
    assert first.stats.cuts == 1
    assert world.stored().rate_micro == 10 * SCALE
    second.acquire()
    assert world.slept[-1] == pytest.approx(0.5, abs=1e-6)
    # and the rate grows back by 2 a second: full again 5 s after the cut
    assert current_rate(world.stored(), to_micros(T0) + 3_000_000, POLICY) == 16 * SCALE
    assert current_rate(world.stored(), to_micros(T0) + 6_000_000, POLICY) == 20 * SCALE


def test_throttled_drops_the_batch_in_hand_and_the_bucket_above_the_reserve() -> None:
    # Given a sync holding four tokens of its batch and a full reserve in the bucket
    world = World()
    sync = world.budget("sync")
    sync.acquire()

    # When AWS throttles one of its calls
    sync.throttled()

    # Then its next call takes a new batch after the bucket refills above the reserve at the lowered rate
    sync.acquire()
    assert sync.stats.expired == 4
    assert world.slept == [pytest.approx(0.5, abs=1e-6)]


def test_the_rate_never_falls_below_its_floor() -> None:
    world = World()
    sync = world.budget("sync")
    for _ in range(6):
        sync.throttled()
        world.clock.advance(1.0)
    assert world.stored().rate_micro >= POLICY.min_rate_u
    assert current_rate(world.stored(), to_micros(world.clock.now()), POLICY) >= 5 * SCALE


def test_an_outage_keeps_the_jit_path_going_on_a_local_budget_logged_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a JIT worker, and the table unreachable
    world = World()
    jit = world.budget("jit")
    world.store.down = True

    # When it makes 8 calls and is throttled once
    with caplog.at_level(logging.WARNING, logger="idsync.services.shared_budget"):
        for _ in range(8):
            jit.acquire()
        jit.throttled()

    # Then every call went through, at the reserve rate (4 a second, a quarter second apart), one outage logged
    assert jit.stats.calls == 8
    assert jit.stats.local_calls == 8
    assert world.elapsed() == pytest.approx(7 * 0.25, abs=1e-6)
    assert jit.stats.fallbacks == 1
    assert world.fallbacks == ["jit"]
    assert [r.message for r in caplog.records].count(
        "rate budget: the shared bucket cannot be reached; this process meters itself locally meanwhile"
    ) == 1

    # When the table is back and the retry interval has passed
    world.store.down = False
    world.clock.advance(POLICY.outage_retry_seconds)
    jit.acquire()

    # Then the call drew from the shared bucket again
    assert jit.stats.takes == 1
    assert jit.stats.local_calls == 8
    assert world.stored().version == 1


def test_in_an_outage_the_sync_meters_itself_at_the_rate_less_the_reserve() -> None:
    world = World()
    sync = world.budget("sync")
    world.store.down = True
    for _ in range(17):
        sync.acquire()
    assert world.elapsed() == pytest.approx(1.0, abs=1e-6)  # 16 a second: 17 calls span one second
    assert sync.stats.fallbacks == 1


def test_a_lost_compare_and_set_is_retried_against_the_winner_s_bucket() -> None:
    # Given another writer that wins the next two rounds
    world = World()
    world.budget("sync").acquire()
    world.store.interlopers = 2
    jit = world.budget("jit")

    # When the JIT worker calls
    jit.acquire()

    # Then it was granted on the third round, one token from the reserve
    assert world.store.refused == 2
    assert world.stored().micro_tokens == 3 * SCALE


def test_losing_every_round_retries_shortly_and_still_never_double_spends() -> None:
    world = World()
    jit = world.budget("jit")
    world.budget("sync").acquire()
    world.store.interlopers = 5  # every round of one take
    jit.acquire()
    assert world.slept == [0.02]
    assert world.stored().micro_tokens == 3 * SCALE + 400_000  # one token taken once; 0.02 s of refill


def test_a_throttled_call_in_an_outage_never_raises() -> None:
    world = World()
    sync = world.budget("sync")
    world.store.down = True
    sync.throttled()
    assert sync.stats.fallbacks == 1
    assert sync.stats.cuts == 0


@given(
    tokens=st.integers(0, 2 * SCALE),
    rate=st.integers(1, 20 * SCALE),
    first=st.integers(0, 400_000),
    second=st.integers(0, 400_000),
)
def test_folding_the_refill_at_any_instant_neither_mints_nor_loses_beyond_rounding(
    tokens: int, rate: int, first: int, second: int
) -> None:
    # Given a bucket with a lowered rate recovering, far from its capacity
    policy = SharedBudgetPolicy(rate=20.0, reserve=4.0, batch_seconds=1.0)  # capacity 24
    start = BucketState(tokens, 0, 1, rate_micro=rate)

    # When the refill is folded in at an intermediate instant, then computed on to the end
    middle = BucketState(refilled(start, first, policy), first, 2, rate_micro=current_rate(start, first, policy))
    split = refilled(middle, first + second, policy)

    # Then it matches the refill computed at once, within rounding (never more than a few millionths)
    direct = refilled(start, first + second, policy)
    assert abs(split - direct) <= 3


def test_a_jit_writer_takes_one_token_a_bulk_writer_a_batch_above_the_reserve() -> None:
    world = World()
    bucket = SharedBucket(world.store, world.clock, POLICY)
    assert bucket.take(1, 1, 0) == Taken(1, to_micros(T0))
    assert bucket.take(5, 5, POLICY.floor_u) == Later(0.05)  # 8 left: 4 above the reserve, one short
    assert bucket.take(5, 5, 0) == Taken(5, to_micros(T0))


def test_unknown_writers_and_a_reserve_not_below_the_rate_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown writer 'nightly'"):
        writer_class("nightly")
    with pytest.raises(ValueError, match=r"reserve \(20.0\)"):
        SharedBudgetPolicy(rate=20.0, reserve=20.0)
    with pytest.raises(ConfigError, match=r"identity_store\.jit_reserve_per_second"):
        parse_settings(
            {"graph": {"tenant_id": "t", "client_id": "c"}, "identity_store": {"jit_reserve_per_second": 20}}
        )


def test_stats_start_empty() -> None:
    assert World().budget("poller").stats == BudgetStats()
