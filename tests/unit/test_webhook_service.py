"""The webhook's logic: handshake, clientState, groups, tenant, lifecycle, and what gets enqueued."""

from __future__ import annotations

import copy
import hmac
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from idsync.adapters.secrets import StaticSecrets
from idsync.errors import DirectoryError, QueueError, SecretError
from idsync.ports import Hint
from idsync.services.notifications import (
    Endpoint,
    Metric,
    NotificationService,
    WebhookReply,
    WebhookRequest,
    group_of,
)
from tests.fakes import FakeClock

FIXTURES = Path(__file__).parents[1] / "fixtures" / "graph_notifications" / "valid"
TENANT = "5f8c2a1e-3b4d-4c6e-9f0a-1b2c3d4e5f60"
GROUP_A = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
GROUP_B = "9B2C4D6E-1F3A-4B5C-8D7E-6F5A4B3C2D1E"  # configured in upper case on purpose
OTHER_GROUP = "3c5e7a9b-2d4f-4e6a-8b0c-1d3f5a7c9e2b"
SUBSCRIPTION = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
CLIENT_STATE = "pim-client-state-7Qx2"
SECRET_NAME = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:idsync-client-state"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
JSON = "application/json; charset=utf-8"


class FakeQueue:
    def __init__(self, fail: bool = False) -> None:
        self.hints: list[Hint] = []
        self.fail = fail

    def send(self, hints: Sequence[Hint]) -> None:
        if self.fail:
            raise QueueError("SQS unreachable")
        self.hints.extend(hints)


class FakeRenewer:
    def __init__(self, fail: bool = False) -> None:
        self.renewed: list[str] = []
        self.fail = fail

    def renew(self, subscription_id: str) -> None:
        if self.fail:
            raise DirectoryError("Graph answered 503")
        self.renewed.append(subscription_id)


class Webhook:
    """The service with fakes around it."""

    def __init__(self, tenant: str | None = TENANT, renewer: FakeRenewer | None = None) -> None:
        self.queue = FakeQueue()
        self.renewer = renewer if renewer is not None else FakeRenewer()
        self.service = NotificationService(
            queue=self.queue,
            secrets=StaticSecrets({SECRET_NAME: CLIENT_STATE}),
            client_state_secret=SECRET_NAME,
            pim_groups=[GROUP_A, GROUP_B],
            clock=FakeClock(T0),
            tenant_id=tenant,
            renewer=self.renewer,
        )

    def post(self, body: Any, endpoint: Endpoint = Endpoint.NOTIFICATIONS) -> WebhookReply:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.service.receive(endpoint, WebhookRequest(body=raw, content_type=JSON))


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def change(**fields: Any) -> dict[str, Any]:
    item = copy.deepcopy(fixture("change-group-members.json")["value"][0])
    item.update(fields)
    return item


def lifecycle(event: str, **fields: Any) -> dict[str, Any]:
    item = fixture(f"lifecycle-{event}.json")["value"][0]
    item.update(fields)
    return item


@pytest.fixture
def webhook() -> Webhook:
    return Webhook()


# --------------------------------------------------------------------------- handshake


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_the_validation_handshake_echoes_the_token_as_plain_text_whatever_the_body(
    webhook: Webhook, endpoint: Endpoint
) -> None:
    # Given Graph's validation request: the token URL-decoded by API Gateway, and a body of junk
    token = f"Validation: Testing client application reachability for subscription Request-Id: {SUBSCRIPTION}"
    request = WebhookRequest(body=b"\x00not json", content_type="text/plain", validation_token=token)

    # When the webhook answers
    reply = webhook.service.receive(endpoint, request)

    # Then it is 200, text/plain, the token itself, and nothing is enqueued
    assert (reply.status, reply.content_type, reply.body) == (200, "text/plain", token)
    assert reply.metrics == {Metric.HANDSHAKES: 1}
    assert webhook.queue.hints == []


@pytest.mark.parametrize("token", ["", "x" * 1025, "line\nbreak", "nul\x00"])
def test_a_handshake_token_that_graph_never_sends_is_refused(webhook: Webhook, token: str) -> None:
    reply = webhook.service.receive(Endpoint.NOTIFICATIONS, WebhookRequest(body=b"", validation_token=token))

    assert reply.status == 400
    assert json.loads(reply.body)["error"]["code"] == "invalidValidationToken"


# --------------------------------------------------------------------------- change notifications


def test_a_notification_with_the_right_client_state_becomes_one_hint(webhook: Webhook) -> None:
    # Given Graph's notification that a PIM group's members changed
    body = fixture("change-group-members.json")

    # When it is posted
    reply = webhook.post(body)

    # Then 202 with an empty body, and one hint naming the group, stamped with the clock
    assert (reply.status, reply.body) == (202, "")
    assert webhook.queue.hints == [
        Hint(group_id=GROUP_A, reason="notification", received_at="2030-01-01T12:00:00.000+00:00")
    ]
    assert reply.metrics == {Metric.ACCEPTED: 1}


def test_the_hint_carries_the_configured_group_id_never_the_request_s_spelling(webhook: Webhook) -> None:
    # Given a notification naming group B in lower case (configured in upper case)
    reply = webhook.post({"value": [change(resource=f"groups/{GROUP_B.lower()}/members")]})

    # Then the hint holds the id exactly as configured
    assert reply.status == 202
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_B]


def test_the_client_state_is_compared_in_constant_time(webhook: Webhook, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a spy on the standard library's constant-time comparison
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    # When one matching and one forged notification arrive
    webhook.post({"value": [change(), change(clientState="forged")]})

    # Then both were compared with hmac.compare_digest, as bytes, against the secret
    assert calls == [(CLIENT_STATE.encode(), CLIENT_STATE.encode()), (CLIENT_STATE.encode(), b"forged")]


@pytest.mark.parametrize(
    "client_state",
    ["forged", "", None, CLIENT_STATE + " ", CLIENT_STATE.upper(), CLIENT_STATE[:-1], "pim-client-state-7Qx2\u200b"],
)
def test_a_notification_with_a_wrong_client_state_is_dropped_but_answered_202(
    webhook: Webhook, client_state: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a notification whose clientState is not the secret
    caplog.set_level(logging.INFO, logger="idsync")

    # When it is posted
    reply = webhook.post({"value": [change(clientState=client_state)]})

    # Then Graph still gets its 202, nothing is enqueued, and the drop is logged with its reason
    assert (reply.status, reply.body) == (202, "")
    assert webhook.queue.hints == []
    assert reply.metrics == {Metric.DROPPED: 1}
    dropped = [r for r in caplog.records if r.getMessage() == "notification dropped"]
    assert [(r.reason, r.subscription_id, r.index) for r in dropped] == [  # type: ignore[attr-defined]
        ("clientState mismatch", SUBSCRIPTION, 0)
    ]


def test_no_client_state_is_ever_logged(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    # Given accepted, forged and lifecycle items in one request
    caplog.set_level(logging.DEBUG, logger="idsync")
    forged = "forged-state-Zq9"

    # When they are handled
    webhook.post({"value": [change(), change(clientState=forged), lifecycle("missed")]})

    # Then neither the secret nor the forged value appears in any log record, message or field
    assert caplog.records
    for record in caplog.records:
        text = json.dumps(record.__dict__, default=str)
        assert CLIENT_STATE not in text
        assert forged not in text


def test_a_group_that_is_not_a_configured_pim_group_is_counted_and_logged_once_per_request(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a tenant-wide subscription's request: 50 changes of groups that are not PIM groups
    caplog.set_level(logging.DEBUG, logger="idsync")
    items = [change(resource=f"Groups/{OTHER_GROUP[:-3]}{n:03d}") for n in range(50)]

    # When posted
    reply = webhook.post({"value": items})

    # Then nothing is enqueued, they are counted, and one summary line is logged (no line per item)
    assert reply.status == 202
    assert webhook.queue.hints == []
    assert reply.metrics == {Metric.OTHER_GROUPS: 50}
    assert [r.getMessage() for r in caplog.records] == ["notifications received"]
    assert caplog.records[0].other_groups == 50  # type: ignore[attr-defined]


def test_a_request_of_1000_items_for_one_group_becomes_one_hint(webhook: Webhook) -> None:
    # Given Graph's largest request: 1,000 member changes of one PIM group
    items = [change(id=f"item-{n}") for n in range(1000)]

    # When posted
    reply = webhook.post({"value": items})

    # Then one message is enqueued: the look re-reads the whole group anyway
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_A]
    assert reply.metrics == {Metric.ACCEPTED: 1000, Metric.COALESCED: 999}


def test_a_notification_from_another_tenant_is_dropped(webhook: Webhook) -> None:
    other_tenant = "11111111-2222-4333-8444-555555555555"

    reply = webhook.post({"value": [change(tenantId=other_tenant)]})

    assert (reply.status, reply.metrics) == (202, {Metric.DROPPED: 1})
    assert webhook.queue.hints == []


def test_the_tenant_is_not_checked_when_configured_by_domain_name() -> None:
    # Given a configuration naming the tenant by its domain, not its id
    webhook = Webhook(tenant="contoso.onmicrosoft.com")

    # When a notification with the right clientState arrives
    reply = webhook.post({"value": [change(tenantId="11111111-2222-4333-8444-555555555555")]})

    # Then the clientState alone decides
    assert reply.metrics == {Metric.ACCEPTED: 1}


@pytest.mark.parametrize(
    "resource",
    [
        f"Groups/{GROUP_A}",
        f"groups/{GROUP_A}/members",
        f"/groups/{GROUP_A}/members",
        f"Groups('{GROUP_A}')/members",
        f"groups({GROUP_A})",
        f"GROUPS/{GROUP_A.upper()}/Members",
        f"/Groups/{GROUP_A}/",
    ],
)
def test_every_spelling_of_a_group_members_resource_is_understood(webhook: Webhook, resource: str) -> None:
    assert group_of(resource) == GROUP_A
    webhook.post({"value": [change(resource=resource)]})
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_A]


@pytest.mark.parametrize(
    "resource",
    [
        f"groups/{GROUP_A}/owners",
        f"users/{GROUP_A}",
        f"groups/{GROUP_A}/members/extra",
        f"https://graph.microsoft.com/v1.0/groups/{GROUP_A}/members",
        f"groups/{GROUP_A}\u200b/members",  # zero-width space
        "groups/" + GROUP_A.replace("0", "\uff10"),  # fullwidth digit
        f"groups/{GROUP_A}\n",
        "groups/",
        "",
    ],
)
def test_a_resource_that_is_not_a_group_s_members_is_dropped(webhook: Webhook, resource: str) -> None:
    reply = webhook.post({"value": [change(resource=resource)]})

    assert group_of(resource) is None
    assert (reply.status, reply.metrics) == (202, {Metric.DROPPED: 1})
    assert webhook.queue.hints == []


def test_a_mixed_request_enqueues_exactly_the_accepted_items_in_order(webhook: Webhook) -> None:
    # Given two good items (A, B), a forged one, an unknown group, and a deletion on A
    body = {
        "value": [
            change(),
            change(clientState="forged", resource=f"groups/{GROUP_B}/members"),
            change(resource=f"groups/{GROUP_B}/members"),
            change(resource=f"groups/{OTHER_GROUP}/members"),
            change(changeType="deleted"),
        ]
    }

    # When posted
    reply = webhook.post(body)

    # Then one hint per group named by an accepted item, in order of first mention, nothing for the others
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_A, GROUP_B]
    assert reply.metrics == {Metric.ACCEPTED: 3, Metric.COALESCED: 1, Metric.DROPPED: 1, Metric.OTHER_GROUPS: 1}


def test_one_item_of_the_wrong_shape_never_costs_the_good_ones(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a good item, one without subscriptionId, one carrying both changeType and lifecycleEvent, a good one
    broken = change()
    del broken["subscriptionId"]
    body = {
        "value": [
            change(),
            broken,
            change(lifecycleEvent="missed", resource=f"groups/{GROUP_B}/members"),
            change(resource=f"groups/{GROUP_B}/members"),
        ]
    }
    # When posted
    reply = webhook.post(body)
    # Then the good items become hints, the two others are dropped and logged by index with the rule
    assert reply.status == 202
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_A, GROUP_B]
    assert reply.metrics == {Metric.ACCEPTED: 2, Metric.DROPPED: 2}
    dropped = {r.index: r.reason for r in caplog.records if r.getMessage() == "notification dropped"}  # type: ignore[attr-defined]
    assert "value[1].subscriptionId: Field required" in dropped[1]
    assert "exactly one of changeType and lifecycleEvent" in dropped[2]


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_an_unknown_lifecycle_event_is_ignored_and_the_rest_of_the_batch_handled(
    webhook: Webhook, endpoint: Endpoint
) -> None:
    body = {"value": [lifecycle("missed", lifecycleEvent="expired"), lifecycle("reauthorizationRequired")]}
    reply = webhook.post(body, endpoint)
    assert reply.status == 202
    assert reply.metrics == {
        Metric.LIFECYCLE_UNKNOWN: 1,
        Metric.REAUTHORIZATION_REQUIRED: 1,
        Metric.RENEWED: 1,
    }
    assert webhook.renewer.renewed == [SUBSCRIPTION]


def test_a_request_without_one_item_of_a_valid_shape_is_refused(webhook: Webhook) -> None:
    broken = change()
    del broken["subscriptionId"]
    reply = webhook.post({"value": [broken, change(changeType="renamed")]})
    assert reply.status == 400
    assert "value[0].subscriptionId: Field required" in reply.body
    assert webhook.queue.hints == []


def test_properties_graph_may_add_later_are_ignored(webhook: Webhook) -> None:
    reply = webhook.post({"value": [change(newProperty={"nested": [1, 2]})], "@odata.context": "x"})

    assert reply.metrics == {Metric.ACCEPTED: 1}


def test_a_queue_failure_is_raised_so_graph_delivers_again(webhook: Webhook) -> None:
    webhook.queue.fail = True

    with pytest.raises(QueueError):
        webhook.post(fixture("change-group-members.json"))


def test_an_unreadable_secret_is_raised_so_graph_delivers_again() -> None:
    webhook = Webhook()
    webhook.service = NotificationService(
        queue=webhook.queue,
        secrets=StaticSecrets({}),
        client_state_secret=SECRET_NAME,
        pim_groups=[GROUP_A],
        clock=FakeClock(T0),
    )

    with pytest.raises(SecretError, match="is not configured"):
        webhook.post(fixture("change-group-members.json"))
    assert webhook.queue.hints == []


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_reauthorization_required_renews_the_subscription(webhook: Webhook, endpoint: Endpoint) -> None:
    # Given a reauthorizationRequired lifecycle notification (on either path: Graph falls back to the
    # notification URL when a subscription has no lifecycle URL)
    body = fixture("lifecycle-reauthorizationRequired.json")

    # When posted
    reply = webhook.post(body, endpoint)

    # Then the subscription is renewed, nothing is enqueued, and both events are counted
    assert reply.status == 202
    assert webhook.renewer.renewed == [SUBSCRIPTION]
    assert webhook.queue.hints == []
    assert reply.metrics == {Metric.REAUTHORIZATION_REQUIRED: 1, Metric.RENEWED: 1}


def test_a_forged_reauthorization_renews_nothing(webhook: Webhook) -> None:
    reply = webhook.post({"value": [lifecycle("reauthorizationRequired", clientState="forged")]}, Endpoint.LIFECYCLE)

    assert reply.status == 202
    assert webhook.renewer.renewed == []
    assert reply.metrics == {Metric.DROPPED: 1}


@pytest.mark.parametrize(
    ("event", "metric"),
    [("subscriptionRemoved", Metric.SUBSCRIPTION_REMOVED), ("missed", Metric.MISSED)],
)
def test_a_lost_notifications_event_asks_for_a_look_of_every_pim_group_at_once(
    webhook: Webhook, event: str, metric: Metric, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a lifecycle event saying notifications were (or will be) lost, naming no resource
    caplog.set_level(logging.INFO, logger="idsync")

    # When it arrives
    reply = webhook.post(fixture(f"lifecycle-{event}.json"), Endpoint.LIFECYCLE)

    # Then every PIM group gets one hint (an immediate look), nothing is renewed, and it is logged
    assert reply.status == 202
    assert reply.metrics == {metric: 1, Metric.LOOKS_REQUESTED: 2}
    assert webhook.renewer.renewed == []
    assert sorted((h.group_id, h.reason) for h in webhook.queue.hints) == [
        (GROUP_A, "lifecycle"),
        (GROUP_B, "lifecycle"),
    ]
    logged = [r for r in caplog.records if r.getMessage().startswith("lifecycle event")]
    assert [(r.lifecycle_event, r.subscription_id) for r in logged] == [(event, SUBSCRIPTION)]  # type: ignore[attr-defined]


def test_a_missed_event_naming_one_group_and_its_changes_make_one_hint(webhook: Webhook) -> None:
    # Given a missed event whose resource names group B, and a change of B in the same request
    body = {"value": [lifecycle("missed", resource=f"groups/{GROUP_B}/members"), change(resource=f"groups/{GROUP_B}")]}

    # When posted
    reply = webhook.post(body)

    # Then B alone is looked at, once
    assert [h.group_id for h in webhook.queue.hints] == [GROUP_B]
    assert reply.metrics == {Metric.MISSED: 1, Metric.ACCEPTED: 1}


def test_a_forged_missed_event_asks_for_nothing(webhook: Webhook) -> None:
    reply = webhook.post({"value": [lifecycle("missed", clientState="forged")]}, Endpoint.LIFECYCLE)

    assert webhook.queue.hints == []
    assert reply.metrics == {Metric.DROPPED: 1}


def test_a_failed_renewal_is_counted_and_graph_still_gets_202() -> None:
    webhook = Webhook(renewer=FakeRenewer(fail=True))

    reply = webhook.post(fixture("lifecycle-reauthorizationRequired.json"), Endpoint.LIFECYCLE)

    assert reply.status == 202
    assert reply.metrics == {Metric.REAUTHORIZATION_REQUIRED: 1, Metric.RENEWAL_FAILED: 1}


def test_without_a_renewer_reauthorization_is_left_to_the_scheduled_job(caplog: pytest.LogCaptureFixture) -> None:
    # Given a service wired without a renewer
    caplog.set_level(logging.INFO, logger="idsync")
    queue = FakeQueue()
    service = NotificationService(
        queue=queue,
        secrets=StaticSecrets({SECRET_NAME: CLIENT_STATE}),
        client_state_secret=SECRET_NAME,
        pim_groups=[GROUP_A],
        clock=FakeClock(T0),
    )
    body = json.dumps(fixture("lifecycle-reauthorizationRequired.json")).encode()

    # When reauthorizationRequired arrives
    reply = service.receive(Endpoint.LIFECYCLE, WebhookRequest(body=body, content_type=JSON))

    # Then it is counted and logged as left to the subscriptions job
    assert reply.metrics == {Metric.REAUTHORIZATION_REQUIRED: 1}
    assert any("left to the scheduled subscriptions job" in r.getMessage() for r in caplog.records)
