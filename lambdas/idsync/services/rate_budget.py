"""An in-process client-side rate budget: at most N calls per second, however many callers share it.

The generic cell rate algorithm (a token bucket of ``burst`` tokens refilled at ``rate`` a second,
kept as one instant); ``acquire`` sleeps (on the injected sleep) until the next call is allowed.
With ``burst`` 1 calls are spaced exactly ``1 / rate`` apart, so a service that throttles above
``rate`` calls a second never does.
Thread-safe: callers on several threads share one budget, each waiting its turn.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenRateBudget:
    """``ports.RateBudget`` for one process: ``acquire`` blocks until a call is allowed."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Raises ValueError when ``rate`` is not above 0 or ``burst`` is below 1."""
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate budget: rate ({rate}) must be above 0 and burst ({burst}) at least 1")
        self.rate = rate
        self.burst = burst
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self._interval = 1.0 / rate
        self._tat: float | None = None  # theoretical arrival time of the next call (GCRA)
        self.acquired = 0

    def acquire(self) -> None:
        """Take one call's turn, sleeping until the budget allows it."""
        with self._lock:  # held while sleeping: later callers queue behind this one, in order
            now = self._now()
            tat = now if self._tat is None else max(self._tat, now)
            allowed_at = tat - (self.burst - 1) * self._interval
            if allowed_at > now:
                self._sleep(allowed_at - now)
            self._tat = tat + self._interval
            self.acquired += 1

    def throttled(self) -> None:
        """AWS throttled a call: the next turn comes one interval later than it would have."""
        with self._lock:
            self._tat = (self._now() if self._tat is None else max(self._tat, self._now())) + self._interval
