"""The malformed-request corpus: every bad request gets the right 4xx, a clear message, and enqueues nothing.

The corpus lives in tests/fixtures/graph_notifications/malformed/ (one file per body, cases.json says
what each must get); bodies too big to keep as files are built here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from idsync.adapters.secrets import StaticSecrets
from idsync.ports import Hint
from idsync.services.notifications import (
    MAX_BODY_BYTES,
    MAX_ITEMS,
    Endpoint,
    Metric,
    NotificationService,
    WebhookRequest,
)
from tests.fakes import FakeClock

CORPUS = Path(__file__).parents[1] / "fixtures" / "graph_notifications"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "malformed" / "cases.json").read_text(encoding="utf-8"))
VALID = json.loads((CORPUS / "valid" / "change-group-members.json").read_text(encoding="utf-8"))
TENANT = "5f8c2a1e-3b4d-4c6e-9f0a-1b2c3d4e5f60"
GROUP_A = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
CLIENT_STATE = "pim-client-state-7Qx2"


class RecordingQueue:
    def __init__(self) -> None:
        self.hints: list[Hint] = []

    def send(self, hints: Sequence[Hint]) -> None:
        self.hints.extend(hints)


class RecordingRenewer:
    def __init__(self) -> None:
        self.renewed: list[str] = []

    def renew(self, subscription_id: str) -> None:
        self.renewed.append(subscription_id)


def generated() -> list[tuple[str, bytes, int, str, str]]:
    """(name, body, status, code, message) for bodies too large to keep in the repository."""
    item = VALID["value"][0]
    padded = dict(VALID, padding="x" * MAX_BODY_BYTES)
    many = {"value": [copy.deepcopy(item) for _ in range(MAX_ITEMS + 1)]}
    huge_state = {"value": [dict(item, clientState="s" * 900_000)]}
    return [
        ("over-1-mib", json.dumps(padded).encode(), 413, "payloadTooLarge", f"the limit is {MAX_BODY_BYTES} bytes"),
        ("too-many-items", json.dumps(many).encode(), 413, "tooManyItems", f"the limit is {MAX_ITEMS} per request"),
        (
            "client-state-900-kb",
            json.dumps(huge_state).encode(),
            400,
            "invalidNotification",
            "value[0].clientState: String should have at most 255 characters",
        ),
        ("1-mib-of-nothing", b" " * (MAX_BODY_BYTES + 1), 413, "payloadTooLarge", "bytes; the limit is"),
    ]


PARAMS = [
    pytest.param(
        (CORPUS / "malformed" / c["file"]).read_bytes(),
        c["content_type"],
        c["status"],
        c["code"],
        c["message"],
        id=c["file"],
    )
    for c in CASES
] + [
    pytest.param(body, "application/json", status, code, message, id=name)
    for name, body, status, code, message in generated()
]


@pytest.fixture
def collaborators() -> tuple[NotificationService, RecordingQueue, RecordingRenewer]:
    queue, renewer = RecordingQueue(), RecordingRenewer()
    service = NotificationService(
        queue=queue,
        secrets=StaticSecrets({"client-state": CLIENT_STATE}),
        client_state_secret="client-state",
        pim_groups=[GROUP_A],
        clock=FakeClock(datetime(2030, 1, 1, tzinfo=UTC)),
        tenant_id=TENANT,
        renewer=renewer,
    )
    return service, queue, renewer


def test_the_corpus_is_large_and_every_file_has_a_case() -> None:
    files = {p.name for p in (CORPUS / "malformed").iterdir() if p.name != "cases.json"}
    assert files == {c["file"] for c in CASES}
    assert len(PARAMS) >= 50


@pytest.mark.parametrize("endpoint", list(Endpoint))
@pytest.mark.parametrize(("body", "content_type", "status", "code", "message"), PARAMS)
def test_a_malformed_request_is_refused_with_a_clear_message_and_enqueues_nothing(
    collaborators: tuple[NotificationService, RecordingQueue, RecordingRenewer],
    endpoint: Endpoint,
    body: bytes,
    content_type: str | None,
    status: int,
    code: str,
    message: str,
) -> None:
    service, queue, renewer = collaborators

    # When the request is posted
    reply = service.receive(endpoint, WebhookRequest(body=body, content_type=content_type))

    # Then the status and Graph-style error name the problem, and nothing was enqueued or renewed
    assert reply.status == status
    assert reply.content_type == "application/json"
    error = json.loads(reply.body)["error"]
    assert error["code"] == code
    assert message in error["message"]
    assert reply.metrics == {Metric.REJECTED: 1}
    assert queue.hints == []
    assert renewer.renewed == []


def test_every_problem_is_listed_in_the_details(
    collaborators: tuple[NotificationService, RecordingQueue, RecordingRenewer],
) -> None:
    service, queue, _ = collaborators
    bad = {"value": [{"clientState": CLIENT_STATE, "changeType": 7}]}

    reply = service.receive(
        Endpoint.NOTIFICATIONS, WebhookRequest(body=json.dumps(bad).encode(), content_type="application/json")
    )

    details = {(d["target"], d["message"]) for d in json.loads(reply.body)["error"]["details"]}
    assert details == {
        ("value[0].subscriptionId", "Field required"),
        ("value[0].subscriptionExpirationDateTime", "Field required"),
        ("value[0].tenantId", "Field required"),
        ("value[0].changeType", "Input should be 'created', 'updated' or 'deleted'"),
    }
    assert queue.hints == []


def test_the_valid_fixture_passes_the_same_checks(
    collaborators: tuple[NotificationService, RecordingQueue, RecordingRenewer],
) -> None:
    # Guards the corpus: the good body the bad ones are derived from is itself accepted
    service, queue, _ = collaborators
    body = (CORPUS / "valid" / "change-group-members.json").read_bytes()

    reply = service.receive(Endpoint.NOTIFICATIONS, WebhookRequest(body=body, content_type="application/json"))

    assert reply.status == 202
    assert [h.group_id for h in queue.hints] == [GROUP_A]
