"""One rate budget for IAM Identity Center's APIs, shared by every idsync function through one bucket item.

IAM Identity Center's Identity Store and sso-admin APIs share one collective limit per account (20 calls a
second). The sync, the JIT worker, the expiry function, the poller, access as code and the CLI each run in
their own process; ``SharedRateBudget`` (``ports.RateBudget``) meters them all from one token bucket kept in a
``BucketStore`` (the state table), refilled at the configured rate and written by compare-and-set.

Batches: a process takes several tokens in one compare-and-set (a bulk writer a quarter second's worth) and
spends them locally, so a sync makes about one bucket write per batch, not per call. A batch is a lease: its
tokens expire ``lease_seconds`` after the take. Unspent tokens are let expire rather than given back: a give
back is one more write that can lose its race, and what expires is at most one batch per process per lease.

JIT reserve: the bucket keeps ``reserve`` tokens (``jit_reserve_per_second`` x one second) that only the JIT
writers (worker, expiry, poller) may take; a bulk writer (sync, access, CLI) takes only what lies above them,
and waits for a whole batch there. While a sync saturates its share the bucket therefore sits at the reserve,
a JIT call finds a token at once, and what the JIT spends refills before the sync gets anything again.

Invariants (the stateful property test checks them after every step):
- rate: the calls of all writers together in any window of ``w`` seconds are at most
  ``capacity + rate x (w + lease_seconds)``; ``capacity`` is the reserve plus one bulk batch, so beyond one
  window the sum of all writers' rates stays at or below the configured rate;
- JIT wait: a JIT call waits at most one refill interval (``1 / current rate``) plus one contention retry,
  however hard bulk writers draw, as long as the reserve holds at least one token;
- no token is minted twice: every grant is a compare-and-set on the version it read.

Throttling: ``throttled()`` halves the stored rate for everyone (at most once per ``cut_interval_seconds``,
never below ``min_fraction`` of the rate), empties the bucket down to the reserve and drops this process's
batch; the rate then recovers additively (``rate / recovery_seconds`` more each second). It never raises.

Outage: when the store cannot be read or written (StateError), the process falls back to a local
per-process budget for ``outage_retry_seconds``: a JIT writer at the reserve rate, a bulk writer at the rest
(rate minus reserve), so one sync and one JIT process still stay within the rate. The first failure of an
outage is logged once and counted (``fallbacks``, and the ``on_fallback`` callback: a metric); the table is
tried again after the retry interval. The JIT path never stops for the table.

Arithmetic is in integers (millionths of a token, microseconds); every rounding is down, so it never
over-grants.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from idsync.errors import StateError
from idsync.ports import BucketState, BucketStore, Clock, RateBudget
from idsync.services.token_bucket import SCALE, to_micros

logger = logging.getLogger(__name__)

BUCKET_NAME = "identity-center"  # item BUCKET#identity-center in the state table
CONTENTION_RETRY_SECONDS = 0.02  # how soon to come back after losing every compare-and-set round


class WriterClass(StrEnum):
    """JIT writers may take the reserve; bulk writers may not."""

    JIT = "jit"
    BULK = "bulk"


JIT_WRITERS = frozenset({"jit", "expiry", "poller"})
BULK_WRITERS = frozenset({"sync", "access", "cli"})


def writer_class(writer: str) -> WriterClass:
    """The class of a named writer. Raises ValueError for an unknown name."""
    if writer in JIT_WRITERS:
        return WriterClass.JIT
    if writer in BULK_WRITERS:
        return WriterClass.BULK
    raise ValueError(f"rate budget: unknown writer {writer!r} (one of {sorted(JIT_WRITERS | BULK_WRITERS)})")


@dataclass(frozen=True, slots=True)
class SharedBudgetPolicy:
    """The shared budget's numbers: ``rate`` calls a second in all, ``reserve`` tokens kept for JIT writers."""

    rate: float = 20.0
    reserve: float = 4.0
    batch_seconds: float = 0.25  # a bulk batch: this long's worth of the rate
    lease_seconds: float = 0.5  # a batch's tokens expire this long after the take
    slow_factor: float = 0.5  # throttled: the rate is multiplied by this
    min_fraction: float = 0.25  # ... but never below this fraction of the rate
    recovery_seconds: float = 10.0  # then it grows back by rate / recovery_seconds each second
    cut_interval_seconds: float = 1.0  # one cut per interval, however many calls were throttled
    outage_retry_seconds: float = 30.0  # a store that failed is tried again after this long

    def __post_init__(self) -> None:
        if self.rate <= 0 or not 0 <= self.reserve < self.rate:
            raise ValueError(
                f"shared rate budget: rate ({self.rate}) must be above 0 and reserve ({self.reserve}) "
                "at least 0 and below the rate"
            )
        if (
            not (0 < self.slow_factor < 1 and 0 < self.min_fraction <= 1)
            or min(self.batch_seconds, self.lease_seconds, self.recovery_seconds) <= 0
        ):
            raise ValueError("shared rate budget: factors must lie in (0, 1) and every interval above 0")

    @property
    def rate_u(self) -> int:
        """The configured rate in millionths of a token a second."""
        return max(1, round(self.rate * SCALE))

    @property
    def min_rate_u(self) -> int:
        return max(1, round(self.rate * self.min_fraction * SCALE))

    @property
    def recovery_u(self) -> int:
        """Additive recovery: millionths of a token a second gained each second."""
        return max(1, round(self.rate * SCALE / self.recovery_seconds))

    @property
    def floor_u(self) -> int:
        """The JIT reserve: micro-tokens bulk writers leave in the bucket."""
        return round(self.reserve * SCALE)

    @property
    def bulk_batch(self) -> int:
        return max(1, math.ceil(self.rate * self.batch_seconds))

    @property
    def capacity_u(self) -> int:
        return self.floor_u + self.bulk_batch * SCALE

    @property
    def lease_us(self) -> int:
        return round(self.lease_seconds * SCALE)


def current_rate(state: BucketState | None, now_us: int, policy: SharedBudgetPolicy) -> int:
    """The refill rate at ``now_us`` (micro-tokens a second): the stored one, recovered since it was stored."""
    full = policy.rate_u
    if state is None or state.rate_micro <= 0 or state.rate_micro >= full:
        return full
    elapsed = max(0, now_us - state.updated_us)
    return min(full, state.rate_micro + policy.recovery_u * elapsed // SCALE)


def refilled(state: BucketState | None, now_us: int, policy: SharedBudgetPolicy) -> int:
    """Micro-tokens in the bucket at ``now_us``: a bucket never written is full; time never runs back.

    The rate grows linearly from the stored one until it reaches the configured rate, so the refill is the
    integral of that ramp (rounded down)."""
    if state is None:
        return policy.capacity_u
    elapsed = max(0, now_us - state.updated_us)
    full = policy.rate_u
    start = min(full, state.rate_micro) if state.rate_micro > 0 else full
    if start >= full:
        gained = full * elapsed // SCALE
    else:
        slope = policy.recovery_u  # micro-tokens a second, gained per second
        ramp_us = min(elapsed, -(-(full - start) * SCALE // slope))
        gained = (start * ramp_us * SCALE + slope * ramp_us * ramp_us // 2) // (SCALE * SCALE)
        gained += full * (elapsed - ramp_us) // SCALE
    return min(policy.capacity_u, state.micro_tokens + gained)


@dataclass(frozen=True, slots=True)
class Taken:
    """``tokens`` granted by the bucket at ``at_us``."""

    tokens: int
    at_us: int


@dataclass(frozen=True, slots=True)
class Later:
    """No batch now: ask again in ``seconds``."""

    seconds: float


class SharedBucket:
    """The bucket item's arithmetic and compare-and-set rounds; safe from any number of processes."""

    def __init__(
        self,
        store: BucketStore,
        clock: Clock,
        policy: SharedBudgetPolicy,
        name: str = BUCKET_NAME,
        max_attempts: int = 5,
    ) -> None:
        self._store = store
        self._clock = clock
        self.policy = policy
        self.name = name
        self._max_attempts = max(1, max_attempts)
        self.lost = 0  # compare-and-set rounds lost to another writer

    def now_us(self) -> int:
        return to_micros(self._clock.now())

    def take(self, wanted: int, minimum: int, floor_u: int) -> Taken | Later:
        """Take up to ``wanted`` tokens (at least ``minimum``) from above ``floor_u``. Raises StateError."""
        state = self._store.load(self.name)
        policy = self.policy
        for _ in range(self._max_attempts):
            now_us = self.now_us()
            tokens = refilled(state, now_us, policy)
            rate_u = current_rate(state, now_us, policy)
            usable = tokens - floor_u
            if usable >= minimum * SCALE:
                granted = min(wanted, usable // SCALE)
                new = self._next(state, now_us, tokens - granted * SCALE, rate_u)
                if self._store.replace(self.name, state, new):
                    return Taken(granted, now_us)
                self.lost += 1
                state = self._store.load(self.name)
                continue
            missing = minimum * SCALE - usable
            return Later(-(-missing * SCALE // rate_u) / SCALE)  # rounded up: never early
        return Later(CONTENTION_RETRY_SECONDS)

    def slow_down(self) -> bool:
        """Lower the shared rate after a throttled call (once per cut interval). True when this call cut it.

        The bucket keeps only the reserve: the tokens above it were minted at a rate AWS just refused.
        Raises StateError.
        """
        state = self._store.load(self.name)
        policy = self.policy
        for _ in range(self._max_attempts):
            now_us = self.now_us()
            if state is not None and now_us - state.slowed_us < round(policy.cut_interval_seconds * SCALE):
                return False
            rate_u = max(policy.min_rate_u, int(current_rate(state, now_us, policy) * policy.slow_factor))
            tokens = min(refilled(state, now_us, policy), policy.floor_u)
            new = self._next(state, now_us, tokens, rate_u, slowed_us=now_us)
            if self._store.replace(self.name, state, new):
                return True
            self.lost += 1
            state = self._store.load(self.name)
        return False

    def _next(
        self, state: BucketState | None, now_us: int, tokens: int, rate_u: int, slowed_us: int | None = None
    ) -> BucketState:
        updated_us = now_us if state is None else max(now_us, state.updated_us)
        return BucketState(
            micro_tokens=tokens,
            updated_us=updated_us,
            version=1 if state is None else state.version + 1,
            rate_micro=0 if rate_u >= self.policy.rate_u else rate_u,
            slowed_us=slowed_us if slowed_us is not None else (0 if state is None else state.slowed_us),
        )


@dataclass
class BudgetStats:
    """What one process's budget did: for tests, benchmarks and metrics."""

    calls: int = 0  # acquire() returned
    takes: int = 0  # batches taken (one bucket write each)
    tokens: int = 0  # tokens those batches held
    expired: int = 0  # tokens whose lease ran out unspent
    waited: float = 0.0  # seconds slept waiting for a batch
    cuts: int = 0  # throttled() calls that lowered the shared rate
    fallbacks: int = 0  # outages of the store (each logged once)
    local_calls: int = 0  # calls allowed by the local fallback budget


class SharedRateBudget:
    """``ports.RateBudget`` for one process, drawing from the shared bucket in leased batches. Thread-safe.

    ``fallback(rate)`` builds the local per-process budget used while the store is unreachable.
    """

    def __init__(
        self,
        bucket: SharedBucket,
        writer: str,
        sleep: Callable[[float], None],
        fallback: Callable[[float], RateBudget],
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        """Raises ValueError for an unknown writer."""
        self._bucket = bucket
        self.writer = writer
        self.kind = writer_class(writer)
        policy = bucket.policy
        self._batch = 1 if self.kind is WriterClass.JIT else policy.bulk_batch
        self._floor_u = 0 if self.kind is WriterClass.JIT else policy.floor_u
        self._sleep = sleep
        local_rate = max(policy.reserve, 1.0) if self.kind is WriterClass.JIT else policy.rate - policy.reserve
        self._fallback = fallback(local_rate)
        self._on_fallback = on_fallback
        self._lock = threading.Lock()
        self._local = 0  # tokens of the current batch still to spend
        self._expires_us = 0
        self._drop = False  # set by throttled(): the batch in hand is dropped at the next acquire
        self._down_until_us: int | None = None
        self.stats = BudgetStats()

    def acquire(self) -> None:
        """Take one call's turn, sleeping until the shared bucket (or, in an outage, the local one) allows it."""
        with self._lock:  # held while sleeping: this process's callers queue in order
            while True:
                now_us = self._bucket.now_us()
                if self._drop or (self._local and now_us >= self._expires_us):
                    self.stats.expired += self._local
                    self._local, self._drop = 0, False
                if self._local:
                    self._local -= 1
                    self.stats.calls += 1
                    return
                if self._down(now_us):
                    self._fallback.acquire()
                    self.stats.calls += 1
                    self.stats.local_calls += 1
                    return
                try:
                    answer = self._bucket.take(self._batch, self._batch, self._floor_u)
                except StateError as error:
                    self._outage(error)
                    continue
                if self._down_until_us is not None:
                    self._down_until_us = None
                    logger.info("rate budget: the shared bucket is reachable again", extra={"writer": self.writer})
                if isinstance(answer, Taken):
                    # the first token is this call's, spent now: a process that stalls past the lease between
                    # the take and the spend (a pause, a loaded host) must not let it expire and take another
                    self._local, self._expires_us = answer.tokens - 1, answer.at_us + self._bucket.policy.lease_us
                    self.stats.takes += 1
                    self.stats.tokens += answer.tokens
                    self.stats.calls += 1
                    return
                self.stats.waited += answer.seconds
                self._sleep(answer.seconds)

    def throttled(self) -> None:
        """AWS throttled a call: drop this process's batch and lower the shared rate for every writer.

        Never raises: in an outage the local budget is slowed instead."""
        self._drop = True
        if self._down(self._bucket.now_us()):
            self._fallback.throttled()
            return
        try:
            if self._bucket.slow_down():
                self.stats.cuts += 1
                logger.info(
                    "rate budget: AWS throttled a call; the shared rate is lowered", extra={"writer": self.writer}
                )
        except StateError as error:
            self._outage(error)
            self._fallback.throttled()

    def _down(self, now_us: int) -> bool:
        return self._down_until_us is not None and now_us < self._down_until_us

    def _outage(self, error: StateError) -> None:
        first = self._down_until_us is None
        self._down_until_us = self._bucket.now_us() + round(self._bucket.policy.outage_retry_seconds * SCALE)
        if not first:
            return
        self.stats.fallbacks += 1
        logger.warning(
            "rate budget: the shared bucket cannot be reached; this process meters itself locally meanwhile",
            extra={"writer": self.writer, "error": str(error)},
        )
        if self._on_fallback is not None:
            self._on_fallback()
