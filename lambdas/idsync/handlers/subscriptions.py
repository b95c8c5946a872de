"""Lambda entry point: the daily job that creates and renews the PIM groups' Graph subscriptions.

The logic is in ``idsync.services.subscriptions``. A group whose subscription could not be ensured
is counted and logged; the function fails (and alarms) only when Graph cannot be read at all. Before
the Graph secret holds a real value (a new deployment), a run answers "not configured yet" and
publishes ``NotConfigured`` = 1 instead of failing.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.errors import NotConfigured
from idsync.services.subscriptions import SubscriptionsService
from idsync.wiring import build_subscriptions_service

logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")


@functools.cache
def service() -> SubscriptionsService:
    """Built once per cold start. Raises ConfigError."""
    return build_subscriptions_service(load_settings_from_env())


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:  # noqa: ARG001 -- Lambda's signature
    try:
        report = service().ensure()
    except NotConfigured as error:
        logger.warning("not configured yet", extra={"reason": str(error)})
        metrics.add_metric(name="NotConfigured", unit=MetricUnit.Count, value=1)
        return {"skipped": f"not configured yet: {error}"}
    for name, count in (
        ("SubscriptionsCreated", len(report.created)),
        ("SubscriptionsRecreated", len(report.recreated)),
        ("SubscriptionsRenewed", len(report.renewed)),
        ("SubscriptionsDeleted", len(report.deleted)),
        ("SubscriptionsFailed", len(report.failed)),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    return report.as_dict()
