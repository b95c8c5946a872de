"""The console's read-only views: log filtering, cycles for the chart, the next cycle's due time."""

from __future__ import annotations

import getpass
import socket
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from idsync.console.report import chart
from idsync.console.views import LogFilter, cycles_from_logs, next_cycle, operator_identity, query_logs
from idsync.model import AttributeChange, LogEntry, Status
from tests.fakes import FakeState

START = datetime(2026, 11, 1, tzinfo=UTC)
NAMES = ("ann@contoso.example", "bo@contoso.example", "Admins", "Admins <- ann@contoso.example")

entries = st.lists(
    st.builds(
        lambda minute, cycle, action, status, name: LogEntry(
            cycle_id=f"c{cycle}",
            change_id=f"{minute}-{cycle}-{action}-{name}",
            time=(START + timedelta(minutes=minute)).isoformat(),
            kind="membership" if " <- " in name else "user",
            action=action,
            status=status,
            source_id=f"id-{NAMES.index(name)}",
            name=name,
            modified=(AttributeChange("title", None, "x"),),
        ),
        st.integers(0, 500),
        st.integers(0, 3),
        st.sampled_from(["create", "update", "delete", "adopt", "skip"]),
        st.sampled_from(list(Status)),
        st.sampled_from(NAMES),
    ),
    max_size=40,
).map(lambda items: sorted(items, key=lambda e: e.time))  # appended in time order, as cycles write them

filters = st.builds(
    LogFilter,
    cycle_id=st.none() | st.sampled_from(["c0", "c1"]),
    status=st.none() | st.sampled_from([s.value for s in Status]),
    action=st.none() | st.sampled_from(["create", "update", "skip"]),
    obj=st.none() | st.sampled_from(["ANN@contoso.example", "admins", "id-1", "nobody"]),
    since=st.none() | st.integers(0, 500).map(lambda m: START + timedelta(minutes=m)),
    until=st.none() | st.integers(0, 500).map(lambda m: START + timedelta(minutes=m)),
    limit=st.integers(1, 50),
)


def brute_force(logs: list[LogEntry], wanted: LogFilter) -> list[str]:
    """The definition: every entry that passes every filter, newest first, at most ``limit``."""
    out = []
    for entry in reversed(logs):
        when = datetime.fromisoformat(entry.time)
        names = {entry.name.casefold(), *(p.casefold() for p in entry.name.split(" <- "))}
        if (
            (wanted.cycle_id is None or entry.cycle_id == wanted.cycle_id)
            and (wanted.status is None or entry.status.value == wanted.status)
            and (wanted.action is None or entry.action == wanted.action)
            and (wanted.obj is None or wanted.obj.casefold() in names | {entry.source_id})
            and (wanted.since is None or when >= wanted.since)
            and (wanted.until is None or when < wanted.until)
        ):
            out.append(entry.change_id)
    return out[: wanted.limit]


@settings(max_examples=200, deadline=None)
@given(entries, filters)
def test_query_logs_returns_exactly_the_matching_entries_newest_first(logs: list[LogEntry], wanted: LogFilter) -> None:
    state = FakeState(logs=list(logs))
    assert [row["changeId"] for row in query_logs(state, wanted)] == brute_force(logs, wanted)


@settings(max_examples=100, deadline=None)
@given(entries)
def test_cycles_count_every_entry_once_and_the_chart_scales_to_the_tallest(logs: list[LogEntry]) -> None:
    rows = [e.as_dict() for e in reversed(logs)]
    cycles = cycles_from_logs(rows, last=10)
    assert sum(sum(c["changes"].values()) + c["failures"] + c["skipped"] for c in cycles) == len(logs)
    assert [c["started"] for c in cycles] == sorted(c["started"] for c in cycles)
    drawn = chart(cycles)
    heights = [sum(p["height"] for p in bar["parts"]) for bar in drawn["bars"]]
    if drawn["peak"]:
        assert max(heights) >= drawn["height"] - 0.5
    for bar in drawn["bars"]:
        assert all(part["value"] > 0 for part in bar["parts"])
        assert min((p["y"] for p in bar["parts"]), default=0) >= -0.5


def test_the_next_cycle_is_one_interval_after_the_last_start_and_never_in_the_past() -> None:
    now = START + timedelta(minutes=25)
    assert next_cycle({"started": (START + timedelta(minutes=20)).isoformat()}, 10, now) == {
        "intervalMinutes": 10,
        "dueBy": (START + timedelta(minutes=30)).isoformat(),
    }
    assert next_cycle({"started": START.isoformat()}, 10, now) == {
        "intervalMinutes": 10,
        "dueBy": (START + timedelta(minutes=30)).isoformat(),
    }
    assert next_cycle(None, 10, now) == {"intervalMinutes": 10, "dueBy": (now + timedelta(minutes=10)).isoformat()}
    assert next_cycle({"started": START.isoformat()}, None, now) is None


def test_who_ran_it_is_the_aws_principal_with_aws_state_else_the_local_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        arn = boto3.client("sts", region_name="us-east-1").get_caller_identity()["Arn"]
        assert operator_identity("dynamodb", "us-east-1") == arn
    assert arn.startswith("arn:aws:")
    assert operator_identity("sqlite") == f"local user {getpass.getuser()}@{socket.gethostname()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    unknown = operator_identity("dynamodb", "us-east-1", endpoint_url="http://127.0.0.1:9")
    assert unknown.startswith(f"local user {getpass.getuser()}@{socket.gethostname()} (AWS principal unknown: ")
