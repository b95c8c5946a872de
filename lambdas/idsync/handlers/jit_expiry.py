"""Lambda entry point: a grant's end, invoked by its one-time EventBridge Scheduler schedule.

The event is the schedule's input, ``{"group_id": ..., "user_id": ...}``; the logic is in
``JitService.expire``. A failure raises, so Lambda retries the invocation (twice), then sends it to the
expiry dead-letter queue, whose alarm says so; the PIM poller removes the ended access within one poll
interval whatever became of the expiry.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.services.jit import JitService
from idsync.wiring import build_jit_service

logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")

_service: JitService | None = None


def service() -> JitService:
    """Built once per cold start. Raises ConfigError."""
    global _service  # noqa: PLW0603 -- built once per cold start
    if _service is None:
        _service = build_jit_service(load_settings_from_env(), writer="expiry")
    return _service


def use(built: JitService | None) -> None:
    """Serve with ``built`` instead of a service built from the environment (local runs); None resets."""
    global _service  # noqa: PLW0603 -- the local flow wires its own
    _service = built


def parse_event(event: Any) -> tuple[str, str]:
    """(group id, user id) from the schedule's input. Raises ValueError naming the missing field."""
    if not isinstance(event, dict):
        raise ValueError("expiry event must be a JSON object with group_id and user_id")
    values = []
    for name in ("group_id", "user_id"):
        value = event.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"expiry event: field {name} must be a non-empty string")
        values.append(value)
    return values[0], values[1]


@logger.inject_lambda_context(log_event=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001 -- Lambda's signature
    group_id, user_id = parse_event(event)
    outcome = service().expire(group_id, user_id)
    if outcome.removals:
        metrics.add_metric(name="ExpiriesApplied", unit=MetricUnit.Count, value=len(outcome.removals))
    if outcome.moved:
        metrics.add_metric(name="GrantsMoved", unit=MetricUnit.Count, value=outcome.moved)
    summary = outcome.summary()
    logger.info("expiry handled", extra=summary)
    return summary
