"""Grant expiries as EventBridge Scheduler one-time schedules (``ports.ExpiryScheduler``).

Each schedule is ``at(...)`` in UTC, in idsync's schedule group, targets the expiry function with
``{"group_id", "user_id"}`` as its input, runs with the scheduler role, and deletes itself once it
has fired (``ActionAfterCompletion: DELETE``). A delivery the scheduler cannot make (the function
throttled or unavailable) is retried (``RETRY_POLICY``) and then, when a dead-letter queue is
configured, put there so an alarm says so; the expiry function's own failures go to the same queue
through its asynchronous-invocation failure destination. The PIM poller removes an ended grant within
one poll interval whatever became of its schedule.

Schedules fire with one-minute precision (any second of the minute named), so the time is rounded
up to the next whole minute: an expiry never fires before the grant's end.

The name is derived from the group, the user and that minute. A moved grant gets a new schedule
before the old one is deleted, so a grant always has one (and, between the two calls, briefly two:
the older one then fires, finds the grant still active and does nothing). Renaming rather than
updating also means the expiry function, when it moves the grant it is running for, never races
the scheduler's own deletion of the schedule that invoked it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idsync.errors import SchedulerError

if TYPE_CHECKING:
    from mypy_boto3_scheduler import EventBridgeSchedulerClient

NAME_PREFIX = "grant-"
# Scheduler's retries of a delivery it could not make; an expiry older than an hour is the poller's by then
RETRY_POLICY = {"MaximumRetryAttempts": 10, "MaximumEventAgeInSeconds": 3600}
_AT = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")


def fire_time(end: datetime) -> datetime:
    """The whole UTC minute at or after ``end``: when the schedule for a grant ending at ``end`` fires."""
    moment = end.astimezone(UTC)
    minutes = math.ceil(moment.timestamp() / 60)
    return datetime.fromtimestamp(minutes * 60, UTC)


def schedule_name(group_id: str, user_id: str, end: datetime) -> str:
    """Deterministic: the same grant and minute always name the same schedule (at most 64 characters)."""
    digest = hashlib.sha256(f"{group_id.lower()}:{user_id.lower()}".encode()).hexdigest()[:24]
    return f"{NAME_PREFIX}{digest}-{fire_time(end):%Y%m%d%H%M}"


def at_expression(end: datetime) -> str:
    return f"at({fire_time(end):%Y-%m-%dT%H:%M:%S})"


def parse_at(expression: str) -> datetime | None:
    """The UTC time of an ``at(...)`` expression, or None for any other kind of expression."""
    match = _AT.match(expression)
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC) if match else None


class EventBridgeExpiryScheduler:
    """``ports.ExpiryScheduler`` over EventBridge Scheduler."""

    def __init__(
        self,
        group_name: str,
        target_arn: str,
        role_arn: str,
        client: EventBridgeSchedulerClient | None = None,
        dead_letter_arn: str | None = None,
    ) -> None:
        self.group_name = group_name
        self._target_arn = target_arn
        self._role_arn = role_arn
        self._dead_letter_arn = dead_letter_arn
        self._client: Any = client or boto3.client(
            "scheduler", config=Config(retries={"mode": "adaptive", "max_attempts": 5})
        )

    def set(self, group_id: str, user_id: str, end: datetime, previous: datetime | None = None) -> None:
        """Create the schedule for ``end`` (one that exists already is kept), then delete the one for
        ``previous`` when it is another. Raises SchedulerError."""
        name = schedule_name(group_id, user_id, end)
        target: dict[str, Any] = {
            "Arn": self._target_arn,
            "RoleArn": self._role_arn,
            "Input": json.dumps({"group_id": group_id, "user_id": user_id}),
            "RetryPolicy": dict(RETRY_POLICY),
        }
        if self._dead_letter_arn:
            target["DeadLetterConfig"] = {"Arn": self._dead_letter_arn}
        try:
            self._client.create_schedule(
                Name=name,
                GroupName=self.group_name,
                Description=f"idsync: end of the PIM grant of user {user_id} in group {group_id}",
                ScheduleExpression=at_expression(end),
                ScheduleExpressionTimezone="UTC",
                FlexibleTimeWindow={"Mode": "OFF"},
                ActionAfterCompletion="DELETE",
                State="ENABLED",
                Target=target,
            )
        except ClientError as error:
            if _code(error) != "ConflictException":
                raise self._error("create", name, error) from error
        except BotoCoreError as error:
            raise self._error("create", name, error) from error
        if previous is not None and schedule_name(group_id, user_id, previous) != name:
            self.clear(group_id, user_id, previous)

    def clear(self, group_id: str, user_id: str, end: datetime) -> None:
        """Delete the schedule for ``end``; one already gone (fired, or never made) is fine. Raises SchedulerError."""
        name = schedule_name(group_id, user_id, end)
        try:
            self._client.delete_schedule(Name=name, GroupName=self.group_name)
        except ClientError as error:
            if _code(error) != "ResourceNotFoundException":
                raise self._error("delete", name, error) from error
        except BotoCoreError as error:
            raise self._error("delete", name, error) from error

    def _error(self, verb: str, name: str, error: Exception) -> SchedulerError:
        return SchedulerError(f"cannot {verb} expiry schedule {name} in group {self.group_name}: {error}")


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
