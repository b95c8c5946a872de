"""What both state stores share: JSON text for documents and fixed-width UTC keys for times."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from idsync.model import LogEntry

_ZERO = timedelta(0)


def encode_json(value: Any, where: str) -> str:
    """Compact JSON text. Raises ValueError naming ``where`` when the value is not JSON."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_plain)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: must hold only JSON values ({error})") from None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def epoch(moment: datetime) -> float:
    # a naive datetime is taken as UTC, like every time idsync records
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def time_key(moment: datetime) -> str:
    # fixed width, so comparing the text compares the times
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def log_time_key(entry: LogEntry) -> str:
    """``time_key`` of the entry's time. When the text is already the clock's form (UTC, with microseconds)
    the key is that text re-ended, without formatting the time again. Raises ValueError as ``log_time``."""
    moment = log_time(entry)
    text = entry.time
    if moment.microsecond and moment.year >= 1000 and moment.utcoffset() == _ZERO and text == moment.isoformat():
        return text[:26] + "Z"
    return time_key(moment)


def log_time(entry: LogEntry) -> datetime:
    """The entry's time, timezone-aware. Raises ValueError naming the entry when it is not ISO 8601."""
    try:
        moment = datetime.fromisoformat(entry.time)
    except ValueError:
        raise ValueError(
            f"log entry {entry.change_id} of cycle {entry.cycle_id}: attribute time ({entry.time!r}): "
            "must be an ISO 8601 date-time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
