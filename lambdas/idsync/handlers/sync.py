"""Scheduled sync cycle (EventBridge): one cycle per tick, within the invocation's time budget."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.services.cycle import CycleOptions
from idsync.services.escrow import load_quarantine
from idsync.wiring import Engine, build_engine

logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")
SAFETY_MARGIN_MS = 60_000  # stop this long before the function's timeout: the next tick continues

_engine: Engine | None = None


def engine() -> Engine:
    global _engine  # noqa: PLW0603 -- built once per cold start
    if _engine is None:
        _engine = build_engine(load_settings_from_env())
    return _engine


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    options = CycleOptions(
        should_stop=lambda: context.get_remaining_time_in_millis() < SAFETY_MARGIN_MS,
        lease_seconds=max(60, context.get_remaining_time_in_millis() // 1000 + 60),
        force_full=bool(event.get("full")),
    )
    outcome = engine().cycle.run(options)
    quarantined = load_quarantine(engine().state) is not None
    metrics.add_metric(name="Quarantined", unit=MetricUnit.Count, value=int(quarantined))
    if outcome.report is None:
        logger.info("cycle skipped", extra={"reason": outcome.skipped})
        metrics.add_metric(name="CyclesSkipped", unit=MetricUnit.Count, value=1)
        return {"skipped": outcome.skipped}
    report = outcome.report
    for kind, actions in report.counts.items():
        for action, count in actions.items():
            metrics.add_metric(name=f"{kind.capitalize()}{action.capitalize()}", unit=MetricUnit.Count, value=count)
    metrics.add_metric(name="Failures", unit=MetricUnit.Count, value=len(report.failures))
    metrics.add_metric(name="Refusals", unit=MetricUnit.Count, value=len(report.refusals))
    metrics.add_metric(name="DeletionGuardTripped", unit=MetricUnit.Count, value=int(report.guard is not None))
    metrics.add_metric(name="CycleComplete", unit=MetricUnit.Count, value=int(report.complete))
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
    logger.info("cycle finished", extra=summary)
    return summary
