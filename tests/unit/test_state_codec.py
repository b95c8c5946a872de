"""The state stores' shared codec: a log entry's sort key read from its text equals the parsed one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from idsync.adapters.state_codec import log_time, log_time_key, time_key
from idsync.model import LogEntry, Status


def _entry(text: str) -> LogEntry:
    return LogEntry("cycle", "cycle-000001", text, "user", "create", Status.SUCCESS, "e1", "u1@example.com")


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))


@given(moments, offsets)
def test_the_key_read_from_the_text_is_the_key_of_the_parsed_time(moment: datetime, offset: timezone) -> None:
    # every form a log entry's time may take: the clock's own, another offset, no zone, Graph's Z
    texts = [
        moment.isoformat(),
        moment.astimezone(offset).isoformat(),
        moment.replace(tzinfo=None).isoformat(),
        moment.isoformat().replace("+00:00", "Z"),
        moment.isoformat(timespec="seconds"),
        moment.replace(microsecond=0).isoformat(),
    ]
    for text in texts:
        assert log_time_key(_entry(text)) == time_key(log_time(_entry(text))), text


def test_a_time_that_is_not_iso_8601_is_refused_naming_the_entry() -> None:
    with pytest.raises(ValueError, match="log entry cycle-000001 of cycle cycle: attribute time"):
        log_time_key(_entry("yesterday at noon, 32 characters"))


def test_a_text_in_the_clocks_shape_that_is_no_date_is_refused() -> None:
    # 32 characters ending +00:00 like the clock's, but month 13
    with pytest.raises(ValueError, match="must be an ISO 8601 date-time"):
        log_time_key(_entry("2026-13-27T18:35:43.123456+00:00"))
