"""Scheduled sync cycle (EventBridge): one cycle per tick, within the invocation's time budget.

An operator may invoke the function with a run request instead of the schedule's event:
``{"full": true}`` forces a full reconcile, ``{"ignore_quarantine": true}`` runs even in quarantine
(after fixing its cause). A pause is never overridden: ``idsync resume`` ends it.

Before the Graph secret holds a real value (the stack's placeholder, or none), a tick answers
``{"skipped": "not configured yet: ..."}``, logs it, publishes ``NotConfigured`` = 1 and records it
for ``idsync status``; it never enters quarantine.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from idsync.config import load_settings_from_env
from idsync.errors import NotConfigured
from idsync.services.control import clear_not_configured, record_not_configured
from idsync.services.cycle import CycleOptions
from idsync.services.escrow import load_quarantine
from idsync.wiring import Engine, build_engine

logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")
SAFETY_MARGIN_MS = 60_000  # stop this long before the function's timeout: the next tick continues
SCHEDULED_SOURCE = "aws.events"

_engine: Engine | None = None


class RunRequest(BaseModel):
    """An operator's explicit run request (the invocation's payload)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    full: StrictBool = False
    ignore_quarantine: StrictBool = False


def parse_request(event: Any) -> RunRequest:
    """The run request in ``event``; the schedule's own event is a plain tick. Raises ValueError naming the
    field and the rule."""
    if not isinstance(event, dict):
        raise ValueError('sync run request must be a JSON object, e.g. {"full": true}')
    if event.get("source") == SCHEDULED_SOURCE:
        return RunRequest()
    try:
        return RunRequest.model_validate(event)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise ValueError(f"sync run request: {problems} (accepted: full, ignore_quarantine)") from None


def engine() -> Engine:
    global _engine  # noqa: PLW0603 -- built once per cold start
    if _engine is None:
        _engine = build_engine(load_settings_from_env())
    return _engine


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = parse_request(event)
    options = CycleOptions(
        should_stop=lambda: context.get_remaining_time_in_millis() < SAFETY_MARGIN_MS,
        lease_seconds=max(60, context.get_remaining_time_in_millis() // 1000 + 60),
        force_full=request.full,
        ignore_quarantine=request.ignore_quarantine,
    )
    state = engine().state
    try:
        outcome = engine().cycle.run(options)
    except NotConfigured as error:
        record_not_configured(state, engine().cycle.clock.now(), str(error))
        logger.warning("not configured yet", extra={"reason": str(error)})
        metrics.add_metric(name="NotConfigured", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name="Quarantined", unit=MetricUnit.Count, value=int(load_quarantine(state) is not None))
        return {"skipped": f"not configured yet: {error}"}
    metrics.add_metric(name="NotConfigured", unit=MetricUnit.Count, value=0)
    quarantined = load_quarantine(state) is not None
    metrics.add_metric(name="Quarantined", unit=MetricUnit.Count, value=int(quarantined))
    if outcome.report is None:
        logger.info("cycle skipped", extra={"reason": outcome.skipped})
        metrics.add_metric(name="CyclesSkipped", unit=MetricUnit.Count, value=1)
        return {"skipped": outcome.skipped}
    clear_not_configured(state)
    report = outcome.report
    for kind, actions in report.counts.items():
        for action, count in actions.items():
            metrics.add_metric(name=f"{kind.capitalize()}{action.capitalize()}", unit=MetricUnit.Count, value=count)
    metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=len(report.failures))
    metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=len(report.refusals))
    metrics.add_metric(name="DeletionGuardTripped", unit=MetricUnit.Count, value=int(report.guard is not None))
    metrics.add_metric(name="CycleComplete", unit=MetricUnit.Count, value=int(report.complete))
    drift = engine().cycle.drift
    if drift is not None and outcome.mode == "delta":
        metrics.add_metric(name="DriftCheckCalls", unit=MetricUnit.Count, value=drift.last.calls)
        metrics.add_metric(name="DriftFound", unit=MetricUnit.Count, value=len(drift.last.drifts))
    summary = {
        "cycleId": report.cycle_id,
        "mode": outcome.mode,
        "complete": report.complete,
        "writes": report.writes,
        "counts": report.counts,
        "failures": len(report.failures),
        "refusals": len(report.refusals),
        "deletionGuard": report.guard.message if report.guard else None,
    }
    logger.info("cycle finished", extra={**summary, "ignoreQuarantine": request.ignore_quarantine})
    return summary
