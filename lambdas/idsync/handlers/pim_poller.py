"""Lambda entry point: the PIM poller, on its own EventBridge schedule (``pim.poll_interval_minutes``).

The logic is in ``idsync.services.poller``. A group that cannot be read is counted and logged and the poll
goes on; the function fails (and alarms) only when Graph refuses the credentials or the queue is unreachable.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.services.poller import PimPoller
from idsync.wiring import build_pim_poller

logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")

_poller: PimPoller | None = None


def poller() -> PimPoller:
    """Built once per cold start. Raises ConfigError."""
    global _poller  # noqa: PLW0603 -- built once per cold start
    if _poller is None:
        _poller = build_pim_poller(load_settings_from_env())
    return _poller


def use(built: PimPoller | None) -> None:
    """Serve with ``built`` instead of a poller built from the environment (local runs); None resets."""
    global _poller  # noqa: PLW0603 -- the local flow wires its own
    _poller = built


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001 -- Lambda's signature
    report = poller().poll()
    activations = [a for outcome in report.outcomes for a in outcome.activations]
    for name, count in (
        ("PimGroupsPolled", report.polled),
        ("PimGroupsLookedAt", len(report.looked)),
        ("PimGroupsNotPolled", len(report.failed)),
        ("ActivationsApplied", len(activations)),
        ("DeactivationsApplied", sum(len(o.removals) for o in report.outcomes)),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    for activation in activations:
        if activation.latency_seconds is not None:
            metrics.add_metric(name="ActivationLatency", unit=MetricUnit.Seconds, value=activation.latency_seconds)
    return report.summary()
