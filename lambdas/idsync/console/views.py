"""Read-only views of the state for `idsync status`, `grants`, `logs` and `report`, and the operator audit.

Everything here reads the state store (SQLite or DynamoDB) only: nothing calls Graph, and nothing
but ``record_operator_action`` writes.
"""

from __future__ import annotations

import csv
import getpass
import io
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from idsync.model import LogEntry, Status
from idsync.ports import GrantStore, StateStore

HELD_BACK_ERROR = "held back by the deletion guard"
OPERATOR_KIND = "operator"
LOG_SCAN_LIMIT = 100_000  # filters beyond cycle and status are applied to at most this many newest entries
CSV_COLUMNS = (
    "activityDateTime",
    "cycleId",
    "kind",
    "action",
    "status",
    "name",
    "sourceIdentity",
    "targetIdentity",
    "modifiedProperties",
    "error",
    "durationMs",
)


# --------------------------------------------------------------------------- logs


@dataclass(frozen=True)
class LogFilter:
    """Which provisioning log entries to show. ``obj`` matches a name (UPN, group name) or an id, case-insensitively;
    for a membership (``group <- user``) either side's name matches."""

    cycle_id: str | None = None
    status: str | None = None
    action: str | None = None
    obj: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100

    @property
    def narrows(self) -> bool:
        """True when a filter the state store cannot apply itself is set."""
        return any(v is not None for v in (self.action, self.obj, self.since, self.until))

    def matches(self, row: Mapping[str, Any]) -> bool:
        if self.action is not None and row.get("action") != self.action:
            return False
        if self.obj is not None:
            wanted = self.obj.casefold()
            name = str(row.get("name") or "")
            names = {name.casefold(), *(part.strip().casefold() for part in name.split(" <- "))}
            ids = {str(row.get("sourceIdentity") or "").casefold(), str(row.get("targetIdentity") or "").casefold()}
            ids |= {part.casefold() for part in str(row.get("sourceIdentity") or "").split(":")}
            if wanted not in names | ids:
                return False
        when = parse_time(str(row.get("activityDateTime") or ""))
        if self.since is not None and (when is None or when < self.since):
            return False
        return not (self.until is not None and (when is None or when >= self.until))


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 date or date-time as an aware UTC datetime; None when it is not one."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def query_logs(state: StateStore, wanted: LogFilter) -> list[dict[str, Any]]:
    """Entries matching every filter, newest first, at most ``wanted.limit``."""
    if not wanted.narrows:
        return state.query_logs(cycle_id=wanted.cycle_id, status=wanted.status, limit=wanted.limit)
    rows = state.query_logs(cycle_id=wanted.cycle_id, status=wanted.status, limit=LOG_SCAN_LIMIT)
    return [row for row in rows if wanted.matches(row)][: wanted.limit]


def logs_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The entries as CSV (a header, one row each; modified properties as ``attribute: old -> new; ...``)."""
    from idsync.console.output import changes_text

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        modified = changes_text(
            (m["attribute"], m.get("oldValue"), m.get("newValue")) for m in row.get("modifiedProperties") or []
        )
        writer.writerow(
            [modified if column == "modifiedProperties" else _cell(row.get(column)) for column in CSV_COLUMNS]
        )
    return out.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def cycles_from_logs(rows: Sequence[Mapping[str, Any]], last: int = 20) -> list[dict[str, Any]]:
    """Per cycle (oldest first, at most ``last``): applied changes by action, failures, refusals, held back."""
    cycles: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("kind") == OPERATOR_KIND:
            continue
        cycle = cycles.setdefault(
            str(row["cycleId"]),
            {"cycleId": row["cycleId"], "started": row["activityDateTime"], "changes": {}, "failures": 0, "skipped": 0},
        )
        cycle["started"] = min(cycle["started"], row["activityDateTime"])
        if row["status"] == Status.SUCCESS.value:
            cycle["changes"][row["action"]] = cycle["changes"].get(row["action"], 0) + 1
        elif row["status"] == Status.FAILURE.value:
            cycle["failures"] += 1
        else:
            cycle["skipped"] += 1
    ordered = sorted(cycles.values(), key=lambda c: c["started"])
    return ordered[-last:]


# --------------------------------------------------------------------------- status


def interval_minutes(config_path: str) -> float | None:
    """The deployment's sync interval (``stack.sync_interval_minutes`` in the configuration file), if any."""
    from pathlib import Path

    import yaml

    try:
        data = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    stack = data.get("stack") if isinstance(data, dict) else None
    value = stack.get("sync_interval_minutes") if isinstance(stack, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def next_cycle(last: Mapping[str, Any] | None, interval: float | None, now: datetime) -> dict[str, Any] | None:
    """When the next scheduled cycle is due: one interval after the last cycle started (None without a schedule)."""
    if interval is None:
        return None
    started = parse_time(str((last or {}).get("started") or ""))
    due = (started or now) + timedelta(minutes=interval)
    while due < now:
        due += timedelta(minutes=interval)
    return {"intervalMinutes": interval, "dueBy": due.isoformat()}


def active_grants(store: StateStore, pim_groups: Sequence[str], now: datetime) -> list[dict[str, Any]]:
    """The JIT grants in force now (end in the future or none), soonest end first, with names where owned."""
    if not isinstance(store, GrantStore):
        return []
    out: list[dict[str, Any]] = []
    for group_id in pim_groups:
        group = store.owned_group(group_id)
        for user_id, grant in store.grants(group_id).items():
            if grant.end is not None and grant.end <= now:
                continue
            user = store.owned_user(user_id)
            out.append(
                {
                    "groupId": group_id,
                    "group": group.display_name if group else group_id,
                    "userId": user_id,
                    "user": user.user_name if user else user_id,
                    "end": grant.end.isoformat() if grant.end else None,
                    "standing": grant.standing,
                    "appliedAt": grant.applied_at,
                }
            )
    far = datetime.max.replace(tzinfo=UTC)
    out.sort(key=lambda g: (parse_time(g["end"] or "") or far, g["group"], g["user"]))
    return out


def status_payload(
    state: StateStore, pim_groups: Sequence[str], interval: float | None, now: datetime
) -> dict[str, Any]:
    """Everything `idsync status --json` prints (and the HTML report shows)."""
    from idsync.services.control import load_not_configured, load_pause
    from idsync.services.cycle import REFUSALS_KEY, RUN_CURRENT, RUN_LAST
    from idsync.services.drift import drift_status
    from idsync.services.escrow import ESCROW_KEY, load_quarantine

    current = state.get_item(RUN_CURRENT)
    last = state.get_item(RUN_LAST)
    quarantine = load_quarantine(state)
    escrow = (state.get_item(ESCROW_KEY) or {}).get("entries", {})
    users, groups, memberships = state.count_ownership()  # counted: no record is loaded
    refusals = (state.get_item(REFUSALS_KEY) or {}).get("messages", {})
    paused = load_pause(state)
    return {
        "paused": paused.as_dict() if paused else None,
        "notConfigured": load_not_configured(state),
        "running": current,
        "last": last,
        "quarantine": None
        if quarantine is None
        else {
            "since": quarantine.since.isoformat(),
            "reason": quarantine.reason,
            "lastAttempt": quarantine.last_attempt.isoformat(),
            "howToLeave": quarantine.how_to_leave,
        },
        "escrow": len(escrow),
        "escrowEntries": [
            {
                "object": key,
                "attempts": e.get("attempts"),
                "nextRetry": e.get("next_retry"),
                "error": e.get("error"),
                "givenUp": bool(e.get("given_up")),
            }
            for key, e in sorted(escrow.items())
        ],
        "totals": {"users": users, "groups": groups, "memberships": memberships},
        "refused": len(refusals),
        "refusals": [refusals[k] for k in sorted(refusals)],
        "nextCycle": next_cycle(last, interval, now),
        "drift": drift_status(state),
        "grants": active_grants(state, pim_groups, now),
    }


# --------------------------------------------------------------------------- operator audit


def operator_identity(state_backend: str, region: str | None = None, endpoint_url: str | None = None) -> str:
    """Who runs the command: the AWS principal's ARN when the state is in AWS, else the local user and host.

    An AWS principal that cannot be read (no credentials, no network) falls back to the local user, marked so.
    """
    local = f"local user {getpass.getuser()}@{socket.gethostname()}"
    if state_backend != "dynamodb":
        return local
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        arn = boto3.client("sts", region_name=region, endpoint_url=endpoint_url).get_caller_identity()["Arn"]
    except (BotoCoreError, ClientError) as error:
        return f"{local} (AWS principal unknown: {error})"
    return str(arn)


def record_operator_action(state: StateStore, who: str, action: str, target: str, now: datetime) -> LogEntry:
    """Append one audit entry to the provisioning log: ``action`` (``quarantine clear``) on ``target`` by ``who``."""
    entry = LogEntry(
        cycle_id=f"operator-{now.strftime('%Y%m%dT%H%M%SZ')}",
        change_id=uuid.uuid4().hex,
        time=now.isoformat(),
        kind=OPERATOR_KIND,
        action=action,
        status=Status.SUCCESS,
        source_id=who,
        name=target,
    )
    state.append_logs([entry])
    return entry
