"""Escrow and quarantine: how failures are retried, and when idsync stops to protect a tenant.

Escrow follows Entra's schedule: a failed object is retried on the next cycle, then after 6 h,
12 h, 24 h, then daily, and given up 28 days after its first failure (a final log entry says so).
An object whose Entra data changes leaves escrow at once: the new data may well succeed.

Quarantine: credentials rejected, or more than 40% of a cycle's operations failed (with at least
10 attempted). Cycles then run once a day until one is clean, which ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from idsync.ports import StateStore

ESCROW_KEY = "escrow"
QUARANTINE_KEY = "quarantine"
BACKOFF = (timedelta(0), timedelta(hours=6), timedelta(hours=12), timedelta(hours=24))
DAILY = timedelta(days=1)
GIVE_UP_AFTER = timedelta(days=28)
QUARANTINE_FAILURE_RATIO = 0.4
QUARANTINE_MIN_OPERATIONS = 10
QUARANTINE_INTERVAL = timedelta(days=1)


def next_retry(attempts: int, now: datetime) -> datetime:
    """When an object that failed ``attempts`` times should be tried again."""
    delay = BACKOFF[attempts - 1] if attempts - 1 < len(BACKOFF) else DAILY
    return now + delay


@dataclass
class EscrowEntry:
    key: str
    first_failed: datetime
    attempts: int
    next_retry: datetime
    fingerprint: str
    error: str
    given_up: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_failed": self.first_failed.isoformat(),
            "attempts": self.attempts,
            "next_retry": self.next_retry.isoformat(),
            "fingerprint": self.fingerprint,
            "error": self.error,
            "given_up": self.given_up,
        }

    @classmethod
    def from_dict(cls, key: str, data: dict[str, Any]) -> EscrowEntry:
        return cls(
            key=key,
            first_failed=datetime.fromisoformat(data["first_failed"]),
            attempts=int(data["attempts"]),
            next_retry=datetime.fromisoformat(data["next_retry"]),
            fingerprint=str(data.get("fingerprint", "")),
            error=str(data.get("error", "")),
            given_up=bool(data.get("given_up", False)),
        )


class Escrow:
    """Failed objects awaiting their next attempt, persisted as one state item."""

    def __init__(self, state: StateStore, key: str = ESCROW_KEY) -> None:
        self.state = state
        self.key = key
        raw = state.get_item(key) or {}
        self.entries = {k: EscrowEntry.from_dict(k, v) for k, v in raw.get("entries", {}).items()}
        self.dirty = False

    def held(self, key: str, fingerprint: str, now: datetime) -> EscrowEntry | None:
        """The entry holding this object back now, or None when it may be tried."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.fingerprint != fingerprint:
            # the object changed in Entra: try the new data right away
            del self.entries[key]
            self.dirty = True
            return None
        if entry.given_up or entry.next_retry > now:
            return entry
        return None

    def failed(self, key: str, fingerprint: str, error: str, now: datetime) -> EscrowEntry:
        entry = self.entries.get(key)
        if entry is None or entry.fingerprint != fingerprint:
            entry = EscrowEntry(key, now, 0, now, fingerprint, error)
        entry.attempts += 1
        entry.error = error
        entry.next_retry = next_retry(entry.attempts, now)
        entry.given_up = now - entry.first_failed >= GIVE_UP_AFTER
        self.entries[key] = entry
        self.dirty = True
        return entry

    def succeeded(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.state.put_item(self.key, {"entries": {k: e.as_dict() for k, e in self.entries.items()}})
            self.dirty = False


@dataclass
class Quarantine:
    since: datetime
    reason: str
    last_attempt: datetime

    @property
    def how_to_leave(self) -> str:
        return (
            "fix the cause, then run `idsync quarantine clear` (or wait: idsync tries once a day and "
            "leaves quarantine by itself after a clean cycle)"
        )

    def due(self, now: datetime) -> bool:
        return now - self.last_attempt >= QUARANTINE_INTERVAL


def load_quarantine(state: StateStore) -> Quarantine | None:
    raw = state.get_item(QUARANTINE_KEY)
    if not raw:
        return None
    return Quarantine(
        since=datetime.fromisoformat(raw["since"]),
        reason=str(raw["reason"]),
        last_attempt=datetime.fromisoformat(raw["last_attempt"]),
    )


def save_quarantine(state: StateStore, quarantine: Quarantine) -> None:
    state.put_item(
        QUARANTINE_KEY,
        {
            "since": quarantine.since.isoformat(),
            "reason": quarantine.reason,
            "last_attempt": quarantine.last_attempt.isoformat(),
        },
    )


def clear_quarantine(state: StateStore) -> bool:
    """Leave quarantine; True when idsync was in it."""
    was = state.get_item(QUARANTINE_KEY) is not None
    state.delete_item(QUARANTINE_KEY)
    return was


def failure_ratio_trips(attempted: int, failed: int) -> bool:
    return attempted >= QUARANTINE_MIN_OPERATIONS and failed / attempted > QUARANTINE_FAILURE_RATIO
