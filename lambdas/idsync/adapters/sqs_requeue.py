"""Putting a JIT hint back on its SQS queue (``ports.HintRetry``): hide a received message until a given
time (ChangeMessageVisibility), or send the hint afresh with a delay (DelaySeconds)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idsync.errors import QueueError
from idsync.ports import Hint

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

MAX_VISIBILITY_SECONDS = 12 * 3600  # SQS's limit for ChangeMessageVisibility
MAX_DELAY_SECONDS = 900  # SQS's limit for DelaySeconds


class SqsHintRetry:
    """``ports.HintRetry`` over one SQS queue."""

    def __init__(self, queue_url: str, client: SQSClient | None = None) -> None:
        self._url = queue_url
        self._client: Any = client or boto3.client(
            "sqs", config=Config(retries={"mode": "adaptive", "max_attempts": 5})
        )

    def delay(self, receipt_handle: str, seconds: int) -> None:
        """The received message becomes visible again in ``seconds``. Raises QueueError."""
        timeout = min(max(seconds, 0), MAX_VISIBILITY_SECONDS)
        try:
            self._client.change_message_visibility(
                QueueUrl=self._url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout
            )
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"cannot requeue a hint on {self._url} for {timeout} s: {error}") from error

    def resend(self, hint: Hint, seconds: int) -> None:
        """Send the hint as a new message, delivered in ``seconds``. Raises QueueError."""
        delay = min(max(seconds, 0), MAX_DELAY_SECONDS)
        try:
            self._client.send_message(QueueUrl=self._url, MessageBody=hint.to_json(), DelaySeconds=delay)
        except (ClientError, BotoCoreError) as error:
            raise QueueError(f"cannot resend the hint for group {hint.group_id} on {self._url}: {error}") from error
