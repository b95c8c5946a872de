"""The token bucket that meters PIM activations, shared by every concurrent JIT worker.

Continuous refill: ``tokens = min(capacity, tokens + elapsed * refill / period)``; a take needs one
whole token. The bucket lives in a ``BucketStore`` (DynamoDB) and every take is an optimistic
compare-and-set: read, compute, write only if nobody wrote in between, else read again and retry.
So concurrent workers can never spend the same token twice.

Only activations take tokens. Removals (expiry, early deactivation) never ask the bucket: access
is taken away on time whatever the load.

Arithmetic is in integers (millionths of a token, microseconds), so refills and waits are exact;
the only rounding is down, by less than a millionth of a token per take, which never over-grants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from idsync.config import PimSettings
from idsync.ports import BucketState, BucketStore, Clock

SCALE = 1_000_000  # micro-tokens per token, and microseconds per second
CONTENTION_RETRY_SECONDS = 0.2  # how soon to come back after losing every compare-and-set round
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class BucketPolicy:
    """Capacity and refill rate: ``refill`` tokens every ``period_seconds``, at most ``capacity`` held."""

    capacity: int = 5
    refill: int = 5
    period_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.refill < 1 or self.period_seconds <= 0:
            raise ValueError(
                f"token bucket policy: capacity ({self.capacity}) and refill ({self.refill}) must be "
                f"at least 1 and period_seconds ({self.period_seconds}) above 0"
            )

    @classmethod
    def from_settings(cls, pim: PimSettings) -> BucketPolicy:
        return cls(pim.bucket_capacity, pim.bucket_refill, pim.bucket_period_seconds)

    @property
    def period_us(self) -> int:
        return max(1, round(self.period_seconds * SCALE))


@dataclass(frozen=True, slots=True)
class Grant:
    """One token taken; ``tokens_left`` is what the bucket still holds."""

    tokens_left: float


@dataclass(frozen=True, slots=True)
class Wait:
    """No token now: come back in ``seconds`` (the exact time to the next whole token).

    ``contended`` is True when tokens may be left but every compare-and-set round was lost to
    other workers; ``seconds`` is then a short retry delay.
    """

    seconds: float
    contended: bool = False


def to_micros(instant: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware instant. Raises TypeError when naive."""
    return (instant - _EPOCH) // _MICROSECOND


def available(state: BucketState | None, now_us: int, policy: BucketPolicy) -> int:
    """Micro-tokens in the bucket at ``now_us``: a bucket never written is full; time never runs back."""
    full = policy.capacity * SCALE
    if state is None:
        return full
    elapsed = max(0, now_us - state.updated_us)
    gained = elapsed * policy.refill * SCALE // policy.period_us
    return min(full, state.micro_tokens + gained)


def micros_until_token(state: BucketState | None, now_us: int, policy: BucketPolicy) -> int:
    """Microseconds from ``now_us`` until the bucket holds one whole token (0 when it does now)."""
    if state is None or state.micro_tokens >= SCALE:
        return 0
    missing = SCALE - state.micro_tokens
    # ceiling division: the answer is never early
    ready_us = state.updated_us - (-missing * policy.period_us // (policy.refill * SCALE))
    return max(0, ready_us - max(now_us, state.updated_us))


class TokenBucket:
    """One named bucket in a shared store. ``try_take`` is safe to call from any number of workers."""

    def __init__(
        self,
        store: BucketStore,
        clock: Clock,
        policy: BucketPolicy,
        name: str = "activations",
        max_attempts: int = 10,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._name = name
        self._max_attempts = max(1, max_attempts)

    def try_take(self) -> Grant | Wait:
        """Take one token for one activation, at the injected clock's now.

        Returns Grant, or Wait with the exact time until the next token. Removals must never call
        this: they are not metered. Raises StateError when the store cannot be read or written.
        """
        state = self._store.load(self._name)
        for _ in range(self._max_attempts):
            now_us = to_micros(self._clock.now())
            tokens = available(state, now_us, self._policy)
            if tokens < SCALE:
                return Wait(seconds=micros_until_token(state, now_us, self._policy) / SCALE)
            # the stored time never moves back, so a worker with a lagging clock cannot mint tokens
            updated_us = now_us if state is None else max(now_us, state.updated_us)
            new = BucketState(
                micro_tokens=tokens - SCALE,
                updated_us=updated_us,
                version=1 if state is None else state.version + 1,
            )
            if self._store.replace(self._name, state, new):
                return Grant(tokens_left=new.micro_tokens / SCALE)
            state = self._store.load(self._name)
        return Wait(seconds=CONTENTION_RETRY_SECONDS, contended=True)

    def give_back(self) -> bool:
        """Return one token taken for an activation whose write then failed (never above capacity).

        True when returned; False when every compare-and-set round was lost (the token is then spent).
        Raises StateError when the store cannot be read or written.
        """
        state = self._store.load(self._name)
        for _ in range(self._max_attempts):
            if state is None:
                return True  # a bucket never written is full
            now_us = to_micros(self._clock.now())
            updated_us = max(now_us, state.updated_us)
            tokens = min(self._policy.capacity * SCALE, available(state, now_us, self._policy) + SCALE)
            new = BucketState(micro_tokens=tokens, updated_us=updated_us, version=state.version + 1)
            if self._store.replace(self._name, state, new):
                return True
            state = self._store.load(self._name)
        return False
