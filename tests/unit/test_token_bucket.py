"""The activation token bucket: refill math, exact waits, the rate law, and compare-and-set retries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idsync.config import PimSettings
from idsync.ports import BucketState
from idsync.services.token_bucket import (
    CONTENTION_RETRY_SECONDS,
    BucketPolicy,
    Grant,
    TokenBucket,
    Wait,
    to_micros,
)
from tests.fakes import FakeClock

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
DEFAULT = BucketPolicy(capacity=5, refill=5, period_seconds=10.0)


class MemoryBucketStore:
    """``ports.BucketStore`` in memory, with the same compare-and-set contract as the DynamoDB one."""

    def __init__(self) -> None:
        self.buckets: dict[str, BucketState] = {}
        self.writes = 0
        self._lock = threading.Lock()

    def load(self, name: str) -> BucketState | None:
        with self._lock:
            return self.buckets.get(name)

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        with self._lock:
            if self.buckets.get(name) != expected:
                return False
            self.buckets[name] = new
            self.writes += 1
            return True


def bucket(policy: BucketPolicy = DEFAULT) -> tuple[TokenBucket, FakeClock, MemoryBucketStore]:
    clock = FakeClock(T0)
    store = MemoryBucketStore()
    return TokenBucket(store, clock, policy), clock, store


def elapsed(clock: FakeClock) -> float:
    return (clock.now() - T0).total_seconds()


def max_in_window(times: list[float], width: float) -> int:
    """The most grants inside any closed window [t, t + width]."""
    return max(sum(1 for u in times if t <= u <= t + width) for t in times)


def test_a_burst_of_20_at_one_instant_gets_capacity_and_exact_waits() -> None:
    # Given a fresh bucket (capacity 5, refill 5 per 10 s) and a frozen clock
    tokens, _, store = bucket()

    # When 20 activations ask at the same instant
    answers = [tokens.try_take() for _ in range(20)]

    # Then exactly 5 are granted, each leaving one token fewer, and 15 wait the 2 s to the next token
    grants = [a for a in answers if isinstance(a, Grant)]
    waits = [a for a in answers if isinstance(a, Wait)]
    assert [g.tokens_left for g in grants] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert waits == [Wait(seconds=2.0)] * 15
    assert store.writes == 5  # a Wait writes nothing


def test_a_burst_of_20_served_at_each_wait_follows_the_bucket_schedule() -> None:
    # Given a fresh bucket and 20 activations that come back exactly when told to
    tokens, clock, _ = bucket()
    granted_at: list[float] = []

    # When each one retries at its Wait until granted
    while len(granted_at) < 20:
        answer = tokens.try_take()
        if isinstance(answer, Wait):
            clock.advance(answer.seconds)
        else:
            granted_at.append(elapsed(clock))

    # Then the first 5 land at once and the rest one every 2 s: (20 - 5) / 0.5 = 30 s for the last
    assert granted_at == [0.0] * 5 + [2.0 * n for n in range(1, 16)]
    # And no window of w seconds ever holds more than capacity + refill * w / period grants
    for width in (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0):
        assert max_in_window(granted_at, width) <= 5 + 5 * width / 10.0
    # (so any 10 s window holds at most 5 + 5; a lone instant at most 5)
    assert max_in_window(granted_at, 0.0) == 5


@given(
    gaps=st.lists(st.integers(min_value=0, max_value=4_000_000), min_size=1, max_size=60),
    capacity=st.integers(min_value=1, max_value=6),
    refill=st.integers(min_value=1, max_value=6),
    period=st.sampled_from([1.0, 2.5, 10.0]),
)
def test_no_window_ever_holds_more_than_the_bucket_allows(
    gaps: list[int], capacity: int, refill: int, period: float
) -> None:
    # Given any bucket policy and activations arriving at arbitrary microsecond gaps
    tokens, clock, _ = bucket(BucketPolicy(capacity, refill, period))
    granted_at: list[float] = []

    # When each asks once at its arrival time
    for gap in gaps:
        clock.advance(gap / 1_000_000)
        if isinstance(tokens.try_take(), Grant):
            granted_at.append(elapsed(clock))

    # Then between any two grants there were at most capacity + refill * span / period of them
    for i, start in enumerate(granted_at):
        for j in range(i, len(granted_at)):
            assert j - i + 1 <= capacity + refill * (granted_at[j] - start) / period + 1e-9


def test_refill_is_continuous_and_proportional_to_elapsed_time() -> None:
    # Given a drained bucket
    tokens, clock, _ = bucket()
    for _ in range(5):
        tokens.try_take()

    # When 3 s pass (5 per 10 s -> 1.5 tokens)
    clock.advance(3.0)

    # Then one activation is granted leaving half a token, and the next waits the 1 s to a whole token
    assert tokens.try_take() == Grant(tokens_left=0.5)
    assert tokens.try_take() == Wait(seconds=1.0)
    clock.advance(1.0)
    assert tokens.try_take() == Grant(tokens_left=0.0)


def test_refill_stops_at_capacity() -> None:
    # Given a drained bucket left idle for a long time
    tokens, clock, _ = bucket()
    for _ in range(5):
        tokens.try_take()
    clock.advance(3600.0)

    # When activations ask
    answers = [tokens.try_take() for _ in range(7)]

    # Then only capacity is there, not an hour's worth
    assert sum(isinstance(a, Grant) for a in answers) == 5
    assert answers[5] == Wait(seconds=2.0)


@pytest.mark.parametrize(
    ("after", "wait"),
    [(0.0, 2.0), (0.5, 1.5), (1.25, 0.75), (1.999999, 0.000001)],
)
def test_wait_is_the_exact_time_to_the_next_token(after: float, wait: float) -> None:
    # Given a bucket drained at T0
    tokens, clock, _ = bucket()
    for _ in range(5):
        tokens.try_take()

    # When asked again some time later
    clock.advance(after)
    answer = tokens.try_take()

    # Then the wait is exactly what is left of the 2 s per token
    assert answer == Wait(seconds=pytest.approx(wait, abs=1e-9))
    # And coming back exactly then is enough
    clock.advance(answer.seconds)  # type: ignore[union-attr]
    assert isinstance(tokens.try_take(), Grant)


def test_a_slower_policy_waits_its_own_interval() -> None:
    # Given capacity 2 and 1 token every 3 s
    tokens, clock, _ = bucket(BucketPolicy(capacity=2, refill=1, period_seconds=3.0))

    # When three ask at once, then the third comes back when told
    first = [tokens.try_take() for _ in range(3)]
    clock.advance(first[2].seconds)  # type: ignore[union-attr]

    # Then two are granted at once and the third after 3 s
    assert [type(a) for a in first] == [Grant, Grant, Wait]
    assert first[2] == Wait(seconds=3.0)
    assert tokens.try_take() == Grant(tokens_left=0.0)


def test_a_clock_running_backwards_mints_no_tokens() -> None:
    # Given a bucket drained at T0 + 10 s by a worker whose clock was ahead
    tokens, clock, store = bucket()
    clock.advance(10.0)
    for _ in range(5):
        tokens.try_take()
    stored = store.buckets["activations"]

    # When a worker with a clock 10 s behind asks
    clock.advance(-10.0)
    answer = tokens.try_take()

    # Then it gets no token, and the stored time did not move back
    assert answer == Wait(seconds=2.0)
    assert store.buckets["activations"] == stored
    assert stored.updated_us == to_micros(T0) + 10_000_000


class RacingStore(MemoryBucketStore):
    """Another worker takes a token between our read and our write, ``races`` times."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races
        self.replace_calls = 0

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        self.replace_calls += 1
        if self.races > 0:
            self.races -= 1
            current = self.buckets.get(name)
            other = BucketState(
                micro_tokens=(current.micro_tokens if current else 5_000_000) - 1_000_000,
                updated_us=new.updated_us,
                version=(current.version if current else 0) + 1,
            )
            self.buckets[name] = other
            return False
        return super().replace(name, expected, new)


def test_a_lost_race_is_retried_against_the_winner_s_bucket() -> None:
    # Given a store where another worker wins the first two compare-and-set rounds
    store = RacingStore(races=2)
    tokens = TokenBucket(store, FakeClock(T0), DEFAULT)

    # When one activation asks
    answer = tokens.try_take()

    # Then it is granted on the third round, after the other worker's two tokens: 5 - 2 - 1 left
    assert answer == Grant(tokens_left=2.0)
    assert store.replace_calls == 3
    assert store.buckets["activations"].version == 3


def test_losing_every_round_answers_a_short_contended_wait() -> None:
    # Given a store where other workers always win
    store = RacingStore(races=1000)
    tokens = TokenBucket(store, FakeClock(T0), BucketPolicy(capacity=1000), max_attempts=4)

    # When one activation asks
    answer = tokens.try_take()

    # Then it gives up after max_attempts rounds with a short retry delay, flagged as contention
    assert answer == Wait(seconds=CONTENTION_RETRY_SECONDS, contended=True)
    assert store.replace_calls == 4


def test_separate_names_are_separate_buckets() -> None:
    # Given two buckets in one store
    store = MemoryBucketStore()
    clock = FakeClock(T0)
    first = TokenBucket(store, clock, DEFAULT, name="a")
    second = TokenBucket(store, clock, DEFAULT, name="b")

    # When the first is drained
    for _ in range(5):
        first.try_take()

    # Then the second is still full
    assert isinstance(first.try_take(), Wait)
    assert second.try_take() == Grant(tokens_left=4.0)


def test_policy_comes_from_the_pim_settings_and_refuses_nonsense() -> None:
    assert BucketPolicy.from_settings(PimSettings()) == DEFAULT
    assert BucketPolicy.from_settings(
        PimSettings(bucket_capacity=3, bucket_refill=1, bucket_period_seconds=2.5)
    ) == BucketPolicy(3, 1, 2.5)
    with pytest.raises(ValueError, match=r"capacity \(0\)"):
        BucketPolicy(capacity=0)
    with pytest.raises(ValueError, match=r"period_seconds \(0.0\)"):
        BucketPolicy(period_seconds=0.0)


def test_a_token_given_back_is_there_again_and_never_above_capacity() -> None:
    tokens, _, _ = bucket()
    for _ in range(5):
        assert isinstance(tokens.try_take(), Grant)
    assert isinstance(tokens.try_take(), Wait)

    # a write failed after the take: the token comes back at once
    assert tokens.give_back() is True
    assert isinstance(tokens.try_take(), Grant)
    # giving back to a full bucket leaves it full
    full, _, _ = bucket()
    assert full.give_back() is True
    full.try_take()
    assert full.give_back() is True
    assert full.give_back() is True
    assert sum(isinstance(full.try_take(), Grant) for _ in range(7)) == 5


class CountingStore(MemoryBucketStore):
    """Counts the reads, as DynamoDB GetItem calls."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    def load(self, name: str) -> BucketState | None:
        self.loads += 1
        return super().load(name)


def test_a_take_starts_from_the_state_this_worker_wrote_and_a_stale_one_never_spends_a_token_twice() -> None:
    clock, store = FakeClock(T0), CountingStore()
    one = TokenBucket(store, clock, BucketPolicy(capacity=2, refill=1, period_seconds=60.0))
    other = TokenBucket(store, clock, BucketPolicy(capacity=2, refill=1, period_seconds=60.0))
    assert isinstance(one.try_take("g1"), Grant)
    loads = store.loads
    assert isinstance(one.try_take("g1"), Grant)  # from its own last write: one conditional write, no read
    assert store.loads == loads
    # the other worker's view is stale (never read): it reads, and finds the bucket empty
    assert isinstance(other.try_take("g2"), Wait)
    assert one.give_back()  # one worker returns a token; the other's cached state does not show it
    assert isinstance(other.try_take("g2"), Grant)  # its stale write fails, it reads and takes the token
    assert isinstance(one.try_take(), Wait)  # an answer that writes nothing is decided on a fresh read
    assert store.buckets["activations"].micro_tokens == 0
    assert store.writes == 5  # two takes, a place in line, the give back, the take that served g2


def test_a_worker_that_saw_no_token_reads_again_before_it_answers_wait() -> None:
    clock, store = FakeClock(T0), CountingStore()
    policy = BucketPolicy(capacity=1, refill=1, period_seconds=60.0)
    one, other = TokenBucket(store, clock, policy), TokenBucket(store, clock, policy)
    assert isinstance(one.try_take(), Grant)
    assert isinstance(other.try_take(), Wait)
    assert one.give_back()
    assert isinstance(other.try_take(), Grant), "a wait from a stale state would make it wait for nothing"
    other.leave("absent")  # no place in line: nothing written
    assert store.writes == 3
