"""An in-process client-side rate budget: at most N calls per second, however many callers share it.

The generic cell rate algorithm (a token bucket of ``burst`` tokens refilled at ``rate`` a second,
kept as one instant); ``acquire`` sleeps (on the injected sleep) until the next call is allowed.
With ``burst`` 1 calls are spaced exactly ``1 / rate`` apart, so a service that throttles above
``rate`` calls a second never does.

Throttle feedback (AIMD): ``throttled()`` cuts the current rate by ``DECREASE`` (never below
``floor``) and pushes the next call one interval out; the rate then climbs back linearly, by
``recovery`` calls a second every second, to the configured rate. Several throttled answers within
one interval of a cut (the calls that were in flight together) count as one cut, so a pool of N
workers does not divide the rate by 2^N. Deterministic on the injected clock.
Thread-safe: callers on several threads share one budget, each waiting its turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DECREASE = 0.7  # the multiplicative cut botocore's adaptive mode also uses


class TokenRateBudget:
    """``ports.RateBudget`` for one process: ``acquire`` blocks until a call is allowed."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        floor: float | None = None,
        recovery: float | None = None,
    ) -> None:
        """``floor``: the lowest rate throttling cuts to (default a tenth of ``rate``); ``recovery``: calls a
        second regained per second after a cut (default a tenth of ``rate``).

        Raises ValueError when ``rate`` is not above 0, ``burst`` is below 1, or ``floor`` / ``recovery``
        are not above 0 (or ``floor`` above ``rate``).
        """
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate budget: rate ({rate}) must be above 0 and burst ({burst}) at least 1")
        self.floor = rate / 10 if floor is None else floor
        self.recovery = rate / 10 if recovery is None else recovery
        if not 0 < self.floor <= rate or self.recovery <= 0:
            raise ValueError(
                f"rate budget: floor ({self.floor}) must be above 0 and at most the rate ({rate}), "
                f"recovery ({self.recovery}) above 0"
            )
        self.rate = rate
        self.burst = burst
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat: float | None = None  # theoretical arrival time of the next call (GCRA)
        self._cut_rate = rate  # the rate right after the last cut
        self._cut_at: float | None = None  # when the last cut happened
        self.acquired = 0
        self.throttles = 0  # throttled answers reported
        self.cuts = 0  # times the rate was cut

    def current_rate(self) -> float:
        """The rate allowed now: the configured one, or less while recovering from throttling."""
        with self._lock:
            return self._rate_at(self._now())

    def _rate_at(self, now: float) -> float:
        if self._cut_at is None:
            return self.rate
        return min(self.rate, self._cut_rate + self.recovery * max(0.0, now - self._cut_at))

    def acquire(self) -> None:
        """Take one call's turn, sleeping until the budget allows it."""
        with self._lock:  # held while sleeping: later callers queue behind this one, in order
            now = self._now()
            interval = 1.0 / self._rate_at(now)
            tat = now if self._tat is None else max(self._tat, now)
            allowed_at = tat - (self.burst - 1) * interval
            if allowed_at > now:
                self._sleep(allowed_at - now)
            self._tat = tat + interval
            self.acquired += 1

    def throttled(self) -> None:
        """The service throttled a call: cut the rate (once per interval) and space the next call out."""
        with self._lock:
            now = self._now()
            self.throttles += 1
            current = self._rate_at(now)
            if self._cut_at is not None and now - self._cut_at < 1.0 / current:
                return  # answers to calls sent together: one cut
            self._cut_rate = max(self.floor, current * DECREASE)
            self._cut_at = now
            self.cuts += 1
            self._tat = max(self._tat or now, now) + 1.0 / self._cut_rate
