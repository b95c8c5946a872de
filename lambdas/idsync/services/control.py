"""What an operator switches, kept in the state table so that every function honours it.

Pause (``idsync pause``): the sync cycle starts no cycle (it answers "paused"); the JIT worker grants
no new access (an activation is held and its hint comes back every ``PAUSE_RECHECK_SECONDS``) but
still removes access that Entra ended; the expiry function is never paused. So a pause never keeps
access granted past its end, and nothing is granted while it lasts. A cycle already running when
the pause is set finishes (``idsync status`` shows it); no cycle starts after.

Not configured yet: a deployment whose Graph secret still holds the stack's placeholder (or no
value) records when it was first seen, so ``idsync status`` can say so; a cycle that reaches
Entra clears it. It is never quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from idsync.ports import StateStore

PAUSE_KEY = "paused"
NOT_CONFIGURED_KEY = "not_configured"
PAUSE_RECHECK_SECONDS = 300  # a held activation is looked at again this often while paused


@dataclass(frozen=True)
class Pause:
    since: datetime
    reason: str
    by: str

    def describe(self) -> str:
        return f"paused since {self.since.isoformat()} by {self.by}: {self.reason}; `idsync resume` ends it"

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat(), "reason": self.reason, "by": self.by}


def load_pause(state: StateStore) -> Pause | None:
    """The pause in force, or None."""
    raw = state.get_item(PAUSE_KEY)
    if not raw:
        return None
    return Pause(datetime.fromisoformat(raw["since"]), str(raw.get("reason", "")), str(raw.get("by", "")))


def pause(state: StateStore, now: datetime, reason: str, by: str) -> Pause:
    """Pause idsync (again: the first pause's time is kept, the reason replaced)."""
    existing = load_pause(state)
    paused = Pause(existing.since if existing else now, reason, by)
    state.put_item(PAUSE_KEY, paused.as_dict())
    return paused


def resume(state: StateStore) -> bool:
    """End the pause; True when idsync was paused."""
    was = state.get_item(PAUSE_KEY) is not None
    state.delete_item(PAUSE_KEY)
    return was


def load_not_configured(state: StateStore) -> dict[str, Any] | None:
    """``{"since", "reason"}`` while the deployment is not configured yet, else None."""
    return state.get_item(NOT_CONFIGURED_KEY)


def record_not_configured(state: StateStore, now: datetime, reason: str) -> None:
    """Remember that the deployment is not configured yet (the first time seen is kept)."""
    existing = state.get_item(NOT_CONFIGURED_KEY) or {}
    state.put_item(NOT_CONFIGURED_KEY, {"since": existing.get("since", now.isoformat()), "reason": reason})


def clear_not_configured(state: StateStore) -> None:
    """Forget the not-configured record (a cycle reached Entra)."""
    if state.get_item(NOT_CONFIGURED_KEY) is not None:
        state.delete_item(NOT_CONFIGURED_KEY)
