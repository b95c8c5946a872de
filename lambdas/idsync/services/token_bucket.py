"""The token bucket that meters PIM activations, shared by every concurrent JIT worker.

Continuous refill: ``tokens = min(capacity, tokens + elapsed * refill / period)``; a take needs one
whole token. The bucket lives in a ``BucketStore`` (DynamoDB) and every take is an optimistic
compare-and-set: read, compute, write only if nobody wrote in between, else read again and retry.
So concurrent workers can never spend the same token twice.

Only activations take tokens. Removals (expiry, early deactivation) never ask the bucket: access
is taken away on time whatever the load.

Fairness: a take that finds no token for it names its waiter (the PIM group whose hint waits) and joins
a line kept in the bucket, oldest first. The tokens that refill are kept for the waiters ahead: a take
succeeds only while the bucket holds a whole token for every waiter ahead of it plus one, and a new
arrival queues behind everyone. A waiter served leaves the line; if its group still has activations
waiting, its next take queues again at the back (round robin by waiting time). So with ``W`` groups
waiting and ``r = refill / period`` tokens a second, a hint waits at most ``W / r`` seconds plus the
lateness of the hints ahead of it coming back, which the line forgives for at most ``WAITER_GRACE``:
a waiter not back by ``due + WAITER_GRACE`` (its hint lost, its worker crashed) is dropped from the line.

Reads: a take starts from the state this process last read or wrote (an activation's take is then one
conditional write); a stale one only costs the failed write and a read. Every answer that writes nothing
(a wait without a place in line, a waiter not in line) is decided on a state read afresh.

Arithmetic is in integers (millionths of a token, microseconds), so refills and waits are exact;
the only rounding is down, by less than a millionth of a token per take, which never over-grants.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from idsync.config import PimSettings
from idsync.ports import BucketState, BucketStore, Clock, Waiter

SCALE = 1_000_000  # micro-tokens per token, and microseconds per second
CONTENTION_RETRY_SECONDS = 0.2  # how soon to come back after losing every compare-and-set round
WAITER_GRACE_SECONDS = 30  # a waiter not back this long after its due time has given up its place
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


def live_line(state: BucketState | None, now_us: int) -> list[Waiter]:
    """The waiters still in line at ``now_us``, oldest first (ties by name); the ones long overdue are gone."""
    if state is None:
        return []
    grace = WAITER_GRACE_SECONDS * SCALE
    return sorted((w for w in state.waiting if w.due_us + grace >= now_us), key=lambda w: (w.since_us, w.name))


def micros_until_tokens(tokens: int, wanted: int, policy: BucketPolicy) -> int:
    """Microseconds of refill until ``tokens`` (micro-tokens) grow to ``wanted`` whole tokens, capacity aside
    (the waiters ahead spend what refills; rounded up: the answer is never early)."""
    missing = wanted * SCALE - tokens
    if missing <= 0:
        return 0
    return -(-missing * policy.period_us // (policy.refill * SCALE))


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
        self._known: BucketState | None = None
        self._read = False  # ``_known`` holds what this process last read or wrote

    def _begin(self) -> tuple[BucketState | None, bool]:
        """The state a compare-and-set starts from, and whether it was read just now."""
        if self._read:
            return self._known, False
        return self._load(), True

    def _load(self) -> BucketState | None:
        self._known, self._read = self._store.load(self._name), True
        return self._known

    def _replace(self, expected: BucketState | None, new: BucketState) -> bool:
        if self._store.replace(self._name, expected, new):
            self._known, self._read = new, True
            return True
        self._read = False
        return False

    def try_take(self, waiter: str | None = None) -> Grant | Wait:
        """Take one token for one activation, at the injected clock's now, in line order.

        ``waiter`` names who waits (a PIM group): denied, it joins the line (keeping its place if already in
        it); served, it leaves it. Unnamed, the take queues behind every waiter and never joins the line.
        Returns Grant, or Wait with the time until its turn. Removals must never call this: they are not
        metered. Raises StateError when the store cannot be read or written.
        """
        state, fresh = self._begin()
        for _ in range(self._max_attempts):
            now_us = to_micros(self._clock.now())
            tokens = available(state, now_us, self._policy)
            line = live_line(state, now_us)
            mine = next((w for w in line if w.name == waiter), None) if waiter is not None else None
            ahead = line.index(mine) if mine is not None else len(line)
            updated_us = now_us if state is None else max(now_us, state.updated_us)
            version = 1 if state is None else state.version + 1
            if tokens >= (ahead + 1) * SCALE:
                rest = tuple(w for w in line if w is not mine)
                new = BucketState(tokens - SCALE, updated_us, version, rest)
                if self._replace(state, new):
                    return Grant(tokens_left=new.micro_tokens / SCALE)
                state, fresh = self._load(), True
                continue
            wait_us = micros_until_token(state, now_us, self._policy)
            if ahead:
                wait_us = max(wait_us, micros_until_tokens(tokens, ahead + 1, self._policy))
            if waiter is None:
                if not fresh:  # a wait writes nothing here: decided on the state as it is now
                    state, fresh = self._load(), True
                    continue
                return Wait(seconds=wait_us / SCALE)
            place = (
                replace(mine, due_us=now_us + wait_us) if mine is not None else Waiter(waiter, now_us, now_us + wait_us)
            )
            # the tokens as they are now (the refill is folded in), so no time is counted twice
            kept = (*(w for w in line if w is not mine), place)
            new = BucketState(tokens, updated_us, version, kept)
            if self._replace(state, new):
                return Wait(seconds=wait_us / SCALE)
            state, fresh = self._load(), True
        return Wait(seconds=CONTENTION_RETRY_SECONDS, contended=True)

    def leave(self, waiter: str) -> None:
        """Take ``waiter`` out of the line (its hint needs no token any more); nothing when it is not in it.

        Best effort: a lost race leaves the place to expire. Raises StateError.
        """
        state, fresh = self._begin()
        for _ in range(self._max_attempts):
            if state is None or all(w.name != waiter for w in state.waiting):
                if fresh:
                    return
                state, fresh = self._load(), True
                continue
            now_us = to_micros(self._clock.now())
            updated_us = max(now_us, state.updated_us)
            rest = tuple(w for w in live_line(state, now_us) if w.name != waiter)
            new = BucketState(available(state, now_us, self._policy), updated_us, state.version + 1, rest)
            if self._replace(state, new):
                return
            state, fresh = self._load(), True

    def line(self) -> list[Waiter]:
        """The waiters in line now, oldest first. Raises StateError."""
        return live_line(self._load(), to_micros(self._clock.now()))

    def give_back(self) -> bool:
        """Return one token taken for an activation whose write then failed (never above capacity).

        True when returned; False when every compare-and-set round was lost (the token is then spent).
        Raises StateError when the store cannot be read or written.
        """
        state, fresh = self._begin()
        for _ in range(self._max_attempts):
            if state is None:
                if fresh:
                    return True  # a bucket never written is full
                state, fresh = self._load(), True
                continue
            now_us = to_micros(self._clock.now())
            updated_us = max(now_us, state.updated_us)
            tokens = min(self._policy.capacity * SCALE, available(state, now_us, self._policy) + SCALE)
            new = BucketState(tokens, updated_us, state.version + 1, state.waiting)
            if self._replace(state, new):
                return True
            state, fresh = self._load(), True
        return False
