"""Graph subscriptions for the PIM groups against the emulator, whose validation handshakes and change
notifications reach the real webhook handler over HTTP (SQS on moto): create, keep, renew, recreate,
clean up; the emulator's own rules; the daily handler and `idsync subscriptions`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from idsync import cli
from idsync.adapters.graph import GraphClient
from idsync.adapters.graph_pim import GraphSubscriptions
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.config import Settings, parse_settings
from idsync.errors import DirectoryError, SubscriptionGone
from idsync.handlers import subscriptions as subscriptions_handler
from idsync.handlers import webhook
from idsync.ports import Hint
from idsync.services.subscriptions import LIFETIME_MARGIN, MAX_LIFETIME, SubscriptionsService
from idsync.wiring import build_subscriptions_service
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LambdaContext, WebhookServer
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, Tenant
from tests.fakes import FakeClock

GROUP_A = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
GROUP_B = "9b2c4d6e-1f3a-4b5c-8d7e-6f5a4b3c2d1e"
OTHER_GROUP = "3c5e7a9b-2d4f-4e6a-8b0c-1d3f5a7c9e2b"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"
CLIENT_STATE = "pim-client-state-7Qx2"


@dataclass
class World:
    emulator: GraphEmulator
    webhook: WebhookServer
    settings: Settings
    clock: FakeClock
    state: SqliteStateStore
    sqs: Any
    queue_url: str

    def service(self, **pim: Any) -> SubscriptionsService:
        settings = self.settings
        if pim:
            settings = settings.model_copy(update={"pim": settings.pim.model_copy(update=pim)})
        return build_subscriptions_service(settings, clock=self.clock, state=self.state)

    def api(self) -> GraphSubscriptions:
        return GraphSubscriptions(GraphClient(self.settings.graph, CLIENT_SECRET))

    def held(self) -> dict[str, dict[str, Any]]:
        """The emulator's subscriptions by group id."""
        return {sub["group"]: sub for sub in self.emulator.app.pim.subscriptions.values()}

    def writes(self) -> list[str]:
        return [
            line
            for line in self.emulator.log
            if line.split(" ")[0] in ("POST", "PATCH", "DELETE") and " /v1.0/" in line
        ]

    def hints(self) -> list[Hint]:
        messages = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        return [Hint.from_json(m["Body"]) for m in messages]


@pytest.fixture
def world(aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    tenant = Tenant()
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    for name, group_id in (("PIM A", GROUP_A), ("PIM B", GROUP_B), ("Other", OTHER_GROUP)):
        tenant.add_group(name, id=group_id)
    tenant.add_user(id=ADA, userPrincipalName="ada@contoso.example", displayName="Ada Lovelace")
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName="idsync-jit")["QueueUrl"]
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    state = SqliteStateStore(tmp_path / "state.db")
    with GraphEmulator(tenant) as emulator, WebhookServer() as server:
        emulator.app.pim.clock = clock
        settings = parse_settings(
            {
                "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET, "max_retries": 1},
                "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
                "pim": {
                    "groups": [GROUP_A, GROUP_B],
                    "client_state": CLIENT_STATE,
                    "queue_url": queue_url,
                    "notification_url": f"{server.url}/graph/notifications",
                    "lifecycle_url": f"{server.url}/graph/lifecycle",
                },
            }
        )
        # the webhook function reads its settings from the environment, as in Lambda
        monkeypatch.setenv("IDSYNC_SETTINGS", settings.model_dump_json())
        webhook.service.cache_clear()
        yield World(emulator, server, settings, clock, state, sqs, queue_url)
        webhook.service.cache_clear()
    state.close()


def test_ensure_creates_one_subscription_per_pim_group_after_the_handshake(world: World) -> None:
    report = world.service().ensure()

    # Then each PIM group has one subscription, as the webhook needs it
    assert report.created == [GROUP_A, GROUP_B]
    held = world.held()
    assert set(held) == {GROUP_A, GROUP_B}
    for group_id, sub in held.items():
        assert sub["resource"] == f"/groups/{group_id}/members"
        assert sub["changeType"] == "updated,deleted"
        assert sub["notificationUrl"] == f"{world.webhook.url}/graph/notifications"
        assert sub["lifecycleNotificationUrl"] == f"{world.webhook.url}/graph/lifecycle"
        assert sub["clientState"] == CLIENT_STATE
        # the longest Graph allows, less the margin
        assert sub["expiration"] == world.clock.now() + MAX_LIFETIME - LIFETIME_MARGIN
    # and each was validated by Graph against both URLs of the webhook (two handshakes per subscription)
    assert world.webhook.requests == 4


def test_a_second_ensure_changes_nothing(world: World) -> None:
    world.service().ensure()
    before = world.writes()

    report = world.service().ensure()

    assert report.unchanged == [GROUP_A, GROUP_B]
    assert report.created == report.renewed == report.recreated == report.deleted == []
    assert world.writes() == before


def test_subscriptions_ending_within_a_week_are_renewed(world: World) -> None:
    world.service().ensure()
    ids = {g: s["id"] for g, s in world.held().items()}

    # When 23 days have passed (six days left)
    world.clock.advance(23 * 86400)
    report = world.service().ensure()

    # Then both are renewed in place (PATCH) to the full lifetime from now
    assert report.renewed == [GROUP_A, GROUP_B]
    assert {g: s["id"] for g, s in world.held().items()} == ids
    assert all(s["expiration"] == world.clock.now() + MAX_LIFETIME - LIFETIME_MARGIN for s in world.held().values())
    assert sum(line.startswith("PATCH /v1.0/subscriptions/") for line in world.writes()) == 2


def test_a_subscription_graph_deleted_is_recreated(world: World) -> None:
    world.service().ensure()
    old = world.held()[GROUP_A]["id"]
    world.api().delete(old)

    report = world.service().ensure()

    assert report.recreated == [GROUP_A]
    assert report.unchanged == [GROUP_B]
    assert world.held()[GROUP_A]["id"] != old
    # and its group's notifications may have been lost meanwhile: it is looked at now
    assert [(h.group_id, h.reason) for h in world.hints()] == [(GROUP_A, "subscription")]


def test_expired_subscriptions_are_recreated(world: World) -> None:
    world.service().ensure()

    world.clock.advance(30 * 86400)
    report = world.service().ensure()

    assert report.recreated == [GROUP_A, GROUP_B]
    assert len(world.held()) == 2


def test_duplicates_and_groups_no_longer_configured_are_deleted_but_others_are_left(world: World) -> None:
    world.service().ensure()
    api, ours = world.api(), world.settings.pim.notification_url
    assert ours is not None
    expires = world.clock.now() + timedelta(days=10)
    stale = api.create(f"/groups/{OTHER_GROUP}/members", "updated", ours, None, CLIENT_STATE, expires)
    duplicate = api.create(f"/groups/{GROUP_A}/members", "updated", ours, None, CLIENT_STATE, expires)
    foreign = api.create(f"/groups/{OTHER_GROUP}/members", "updated", ours + "?deployment=other", None, "x", expires)

    report = world.service().ensure()

    # Then the stale and the duplicate (the one expiring first) are deleted; another deployment's is untouched
    assert sorted(report.deleted) == sorted([stale.id, duplicate.id])
    assert report.unchanged == [GROUP_A, GROUP_B]
    left = {s.id for s in api.list()}
    assert foreign.id in left
    assert stale.id not in left
    assert duplicate.id not in left


def test_a_url_that_fails_the_handshake_is_reported_per_group(world: World) -> None:
    service = world.service(notification_url=f"{world.webhook.url}/not-the-webhook", lifecycle_url=None)

    report = service.ensure()

    assert set(report.failed) == {GROUP_A, GROUP_B}
    assert "Subscription validation request failed" in report.failed[GROUP_A]
    assert world.held() == {}


def test_graph_limits_a_group_subscription_to_41760_minutes(world: World) -> None:
    url = world.settings.pim.notification_url
    assert url is not None
    too_long = world.clock.now() + timedelta(minutes=41_761)

    with pytest.raises(DirectoryError, match="41760 minutes"):
        world.api().create(f"/groups/{GROUP_A}/members", "updated", url, None, CLIENT_STATE, too_long)


def test_renew_reauthorizes_one_subscription(world: World) -> None:
    world.service().ensure()
    sub_id = world.held()[GROUP_A]["id"]
    world.clock.advance(86400)

    world.service().renew(sub_id)

    assert world.held()[GROUP_A]["expiration"] == world.clock.now() + MAX_LIFETIME - LIFETIME_MARGIN
    with pytest.raises(SubscriptionGone, match="no longer exists"):
        world.service().renew("00000000-0000-4000-8000-000000000000")


def test_member_changes_reach_the_webhook_and_become_hints(world: World) -> None:
    world.service().ensure()

    # When Ada activates in group A (Graph notifies its subscribers)
    world.emulator.app.pim.activate(GROUP_A, ADA, 30)
    delivery = world.emulator.app.pim.wait_for(lambda d: d.kind == "notification")

    # Then the webhook answered 202 and queued "look at group A"
    assert delivery.status == 202
    item = delivery.items[0]
    assert item["resource"] == f"Groups/{GROUP_A}/members"
    assert item["clientState"] == CLIENT_STATE
    assert item["subscriptionId"] == world.held()[GROUP_A]["id"]
    assert item["resourceData"]["members@delta"] == [{"id": ADA}]
    assert [h.group_id for h in world.hints()] == [GROUP_A]


def test_past_the_limit_one_groups_subscription_serves_every_pim_group(world: World) -> None:
    # Given per-group subscriptions, then a limit the PIM groups now exceed (2 groups, at most 1 each)
    world.service().ensure()
    per_group = {s["id"] for s in world.held().values()}

    # When the subscriptions are ensured
    report = world.service(max_group_subscriptions=1).ensure()

    # Then one /groups subscription replaces them, created before they are deleted
    subs = list(world.emulator.app.pim.subscriptions.values())
    assert [(s["resource"], s["group"]) for s in subs] == [("/groups", None)]
    assert report.created == [GROUP_A, GROUP_B]
    assert sorted(report.deleted) == sorted(per_group)
    assert world.service(max_group_subscriptions=1).status()[0].subscription is not None
    # And a second ensure changes nothing
    before = world.writes()
    assert world.service(max_group_subscriptions=1).ensure().unchanged == [GROUP_A, GROUP_B]
    assert world.writes() == before


def test_the_groups_subscription_brings_every_group_s_changes_and_the_webhook_keeps_the_pim_ones(
    world: World,
) -> None:
    # Given the PIM groups served by one /groups subscription
    world.service(max_group_subscriptions=1).ensure()

    # When a group that is not a PIM group changes, then Ada activates in group B
    world.emulator.app.tenant.add_member(OTHER_GROUP, ADA)
    other = world.emulator.app.pim.wait_for(lambda d: d.kind == "notification")
    world.emulator.app.pim.activate(GROUP_B, ADA, 30)
    pim = world.emulator.app.pim.wait_for(lambda d: d.kind == "notification" and d is not other)

    # Then both reached the webhook (202), and only group B became a hint
    assert (other.status, other.items[0]["resource"]) == (202, f"Groups/{OTHER_GROUP}")
    assert (pim.status, pim.items[0]["resource"]) == (202, f"Groups/{GROUP_B}")
    assert [h.group_id for h in world.hints()] == [GROUP_B]


def test_a_groups_subscription_that_disappeared_is_recreated_and_every_pim_group_looked_at(world: World) -> None:
    world.service(max_group_subscriptions=1).ensure()
    [old] = list(world.emulator.app.pim.subscriptions)
    world.api().delete(old)

    report = world.service(max_group_subscriptions=1).ensure()

    assert report.recreated == [GROUP_A, GROUP_B]
    assert sorted((h.group_id, h.reason) for h in world.hints()) == [
        (GROUP_A, "subscription"),
        (GROUP_B, "subscription"),
    ]


def test_graph_refuses_the_101st_group_subscription_of_an_app(world: World) -> None:
    url = world.settings.pim.notification_url
    assert url is not None
    api, expires = world.api(), world.clock.now() + timedelta(days=1)
    for _ in range(100):
        api.create(f"/groups/{OTHER_GROUP}/members", "updated", url, None, CLIENT_STATE, expires)

    with pytest.raises(DirectoryError, match="Maximum number of subscriptions"):
        api.create(f"/groups/{GROUP_A}/members", "updated", url, None, CLIENT_STATE, expires)


def test_lifecycle_notifications_are_delivered_on_demand(world: World) -> None:
    world.service().ensure()

    delivery = world.emulator.app.pim.send_lifecycle(world.held()[GROUP_B]["id"])

    assert delivery.url == f"{world.webhook.url}/graph/lifecycle"
    assert delivery.status == 202
    assert delivery.items[0]["lifecycleEvent"] == "reauthorizationRequired"


def test_the_daily_function_ensures_and_counts(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    world.emulator.app.pim.clock = FakeClock(datetime.now(UTC))  # the function runs on the wall clock
    subscriptions_handler.service.cache_clear()

    result = subscriptions_handler.lambda_handler({}, LambdaContext("idsync-subscriptions"))  # type: ignore[arg-type]
    subscriptions_handler.service.cache_clear()

    assert result["created"] == [GROUP_A, GROUP_B]
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert emitted[-1]["SubscriptionsCreated"] == [2.0]
    assert emitted[-1]["SubscriptionsFailed"] == [0.0]


def test_the_cli_lists_and_ensures(
    world: World,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world.emulator.app.pim.clock = FakeClock(datetime.now(UTC))
    # only the command's own output on stdout (the webhook answering the handshakes runs in this process)
    caplog.set_level(logging.WARNING, logger="idsync")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    config = tmp_path / "idsync.yaml"
    config.write_text(yaml.safe_dump(json.loads(world.settings.model_dump_json())), encoding="utf-8")

    assert cli.main(["--config", str(config), "subscriptions", "list", "--json"]) == cli.EXIT_OK
    before = json.loads(capsys.readouterr().out)
    assert cli.main(["--config", str(config), "subscriptions", "ensure", "--json"]) == cli.EXIT_OK
    ensured = json.loads(capsys.readouterr().out)
    assert cli.main(["--config", str(config), "subscriptions", "--json"]) == cli.EXIT_OK
    after = json.loads(capsys.readouterr().out)

    assert [(row["groupId"], row["subscriptionId"], row["renewDue"]) for row in before] == [
        (GROUP_A, None, True),
        (GROUP_B, None, True),
    ]
    assert ensured["created"] == [GROUP_A, GROUP_B]
    assert [row["subscriptionId"] for row in after] == [world.held()[GROUP_A]["id"], world.held()[GROUP_B]["id"]]
    assert not any(row["renewDue"] for row in after)
