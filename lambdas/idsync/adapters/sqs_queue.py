"""The JIT hint queue on SQS: one message per hint, sent in batches of ten (the API's limit)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idsync.errors import QueueError
from idsync.ports import Hint

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

BATCH_SIZE = 10  # SendMessageBatch takes at most 10 entries
RESEND_ROUNDS = 2  # entries SQS failed on its side are sent again this many times


class SqsHintQueue:
    """``ports.HintQueue`` over one SQS queue."""

    def __init__(self, queue_url: str, client: SQSClient | None = None) -> None:
        self._url = queue_url
        self._client: Any = client or boto3.client(
            "sqs", config=Config(retries={"mode": "adaptive", "max_attempts": 5})
        )

    def send(self, hints: Sequence[Hint]) -> None:
        for start in range(0, len(hints), BATCH_SIZE):
            self._send_batch(hints[start : start + BATCH_SIZE])

    def _send_batch(self, batch: Sequence[Hint]) -> None:
        pending = {str(index): hint for index, hint in enumerate(batch)}
        for _ in range(1 + RESEND_ROUNDS):
            entries = [{"Id": key, "MessageBody": hint.to_json()} for key, hint in pending.items()]
            try:
                answer = self._client.send_message_batch(QueueUrl=self._url, Entries=entries)
            except (ClientError, BotoCoreError) as error:
                raise QueueError(f"cannot enqueue {len(entries)} hint(s) on {self._url}: {error}") from error
            failed = answer.get("Failed") or []
            for entry in answer.get("Successful") or []:
                pending.pop(entry["Id"], None)
            if not pending:
                return
            # a sender fault (a bad message) will not succeed on a second try
            blocking = [f for f in failed if f.get("SenderFault")]
            if blocking:
                detail = "; ".join(f"{f.get('Code')}: {f.get('Message', '')}" for f in blocking)
                raise QueueError(f"SQS refused {len(blocking)} hint(s) on {self._url}: {detail}")
        raise QueueError(f"SQS kept failing {len(pending)} hint(s) on {self._url} after {RESEND_ROUNDS} resends")
