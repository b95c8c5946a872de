"""Failure and quarantine notifications: SNS (the stack topic and its email subscription) or the console."""

from __future__ import annotations

import sys
from typing import Any, TextIO

SUBJECT_LIMIT = 100  # SNS rejects longer subjects


class SnsNotifier:
    def __init__(self, topic_arn: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("sns")
        self.client = client
        self.topic_arn = topic_arn

    def notify(self, subject: str, message: str) -> None:
        self.client.publish(TopicArn=self.topic_arn, Subject=subject[:SUBJECT_LIMIT], Message=message)


class ConsoleNotifier:
    """Prints notifications when idsync runs from a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.sent: list[tuple[str, str]] = []

    def notify(self, subject: str, message: str) -> None:
        self.sent.append((subject, message))
        print(f"[notification] {subject}\n{message}", file=self.stream)
