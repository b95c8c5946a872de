"""Lambda entry point: the JIT worker, fed by the hint queue (SQS, partial batch responses).

Each message is "look at group G"; the logic is in ``idsync.services.jit``. A message whose
activation found no token is hidden until the next token is due and reported as a batch item
failure, so SQS delivers it again then; it is never dropped and never left to a sync cycle.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from idsync.config import load_settings_from_env
from idsync.errors import IdsyncError
from idsync.services.jit import JitOutcome, JitWorker, MessageFate, MessageOutcome
from idsync.wiring import build_jit_worker

# one service name for every idsync logger, so the services' standard loggers share this handler
logger = Logger(service="idsync")
tracer = Tracer(service="idsync")
metrics = Metrics(namespace="idsync", service="idsync")
# a batch whose every message waits for a token is not an error of the function
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

_worker: JitWorker | None = None


class HintNotDone(IdsyncError):
    """The message stays on the queue: requeued until the next token, or not a hint (poison)."""


def worker() -> JitWorker:
    """Built once per cold start. Raises ConfigError."""
    global _worker  # noqa: PLW0603 -- built once per cold start
    if _worker is None:
        _worker = build_jit_worker(load_settings_from_env())
    return _worker


def use(built: JitWorker | None) -> None:
    """Serve with ``built`` instead of a worker built from the environment (local runs); None resets."""
    global _worker  # noqa: PLW0603 -- the local flow wires its own
    _worker = built


def publish(outcome: JitOutcome) -> None:
    """The outcome's metrics: applied activations and their latency, removals, grants moved, refusals."""
    if outcome.activations:
        metrics.add_metric(name="ActivationsApplied", unit=MetricUnit.Count, value=len(outcome.activations))
    for activation in outcome.activations:
        if activation.latency_seconds is not None:
            metrics.add_metric(name="ActivationLatency", unit=MetricUnit.Seconds, value=activation.latency_seconds)
    if outcome.removals:
        metrics.add_metric(name="DeactivationsApplied", unit=MetricUnit.Count, value=len(outcome.removals))
    if outcome.moved:
        metrics.add_metric(name="GrantsMoved", unit=MetricUnit.Count, value=outcome.moved)
    if outcome.refused:
        metrics.add_metric(name="ActivationsRefused", unit=MetricUnit.Count, value=len(outcome.refused))
    if outcome.failed:
        metrics.add_metric(name="PimWritesFailed", unit=MetricUnit.Count, value=len(outcome.failed))


def _publish_message(result: MessageOutcome) -> None:
    if result.outcome is not None:
        publish(result.outcome)
    if result.fate in (MessageFate.REQUEUED, MessageFate.RESENT):
        metrics.add_metric(name="Requeued", unit=MetricUnit.Count, value=1)
    elif result.fate is MessageFate.DUPLICATE:
        metrics.add_metric(name="HintsCoalesced", unit=MetricUnit.Count, value=1)
    elif result.fate is MessageFate.POISON:
        metrics.add_metric(name="HintsRejected", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    batch = worker().batch()

    def record_handler(record: SQSRecord) -> None:
        try:
            result = batch.handle(record.body, record.receipt_handle, int(record.attributes.approximate_receive_count))
        except Exception:
            # the batch processor records the failure quietly; this is where an operator sees it
            logger.exception("hint not processed; SQS delivers it again", extra={"message_id": record.message_id})
            metrics.add_metric(name="HintsFailed", unit=MetricUnit.Count, value=1)
            raise
        _publish_message(result)
        if result.failed:
            raise HintNotDone(result.error or f"requeued for {result.requeue_seconds} s (waiting for a token)")

    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
