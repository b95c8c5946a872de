"""Lambda entry point: Graph change and lifecycle notifications (API Gateway REST, proxy integration).

``POST /graph/notifications`` and ``POST /graph/lifecycle``; the logic is in
``idsync.services.notifications``. Errors that a retry can cure (Secrets Manager, SQS, configuration
being fixed) are answered 503 so that Graph delivers the notification again.
"""

from __future__ import annotations

import base64
import functools
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.errors import IdsyncError
from idsync.services.notifications import Endpoint, NotificationService, WebhookRequest
from idsync.wiring_webhook import build_webhook_service

# one service name for every idsync logger, so the services' standard loggers share this handler
logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")
app = APIGatewayRestResolver()


@functools.cache
def service() -> NotificationService:
    """Built once per cold start. Raises ConfigError."""
    return build_webhook_service(load_settings_from_env())


@app.post("/graph/notifications")
def notifications() -> Response[str]:
    return _answer(Endpoint.NOTIFICATIONS)


@app.post("/graph/lifecycle")
def lifecycle() -> Response[str]:
    return _answer(Endpoint.LIFECYCLE)


def unavailable(error: IdsyncError) -> Response[str]:
    logger.exception("notification not handled; Graph will deliver it again", extra={"error": str(error)})
    metrics.add_metric(name="RequestsFailed", unit=MetricUnit.Count, value=1)
    return Response(
        status_code=503,
        content_type=content_types.APPLICATION_JSON,
        body='{"error": {"code": "serviceUnavailable", "message": "try again later"}}',
    )


# registered by call: the decorator form is untyped
app.exception_handler(IdsyncError)(unavailable)


def _answer(endpoint: Endpoint) -> Response[str]:
    event = app.current_event
    raw = event.body or ""
    # API Gateway hands query parameters over already URL-decoded
    request = WebhookRequest(
        body=base64.b64decode(raw) if event.is_base64_encoded else raw.encode("utf-8", "surrogatepass"),
        content_type=event.headers.get("content-type"),
        validation_token=(event.query_string_parameters or {}).get("validationToken"),
    )
    reply = service().receive(endpoint, request)
    for name, count in reply.metrics.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    return Response(status_code=reply.status, content_type=reply.content_type, body=reply.body)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
