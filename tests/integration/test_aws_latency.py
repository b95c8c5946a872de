"""The latency-and-throttle layer in front of moto, and the rate budget that keeps idsync under it."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from idsync.adapters.sso_admin import attach_budget
from idsync.model import freeze_doc
from idsync.services.cycle import CycleOptions
from idsync.services.rate_budget import TokenRateBudget
from sandbox.aws_latency import LatencyLayer

NO_RETRY = Config(retries={"mode": "standard", "total_max_attempts": 1})


class VirtualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [("sso-admin", "list_instances", "ThrottlingException"), ("sts", "get_caller_identity", "Throttling")],
)
def test_calls_above_the_rate_are_throttled_as_aws_answers_them(aws: None, service: str, call: str, code: str) -> None:
    time = VirtualTime()
    client = boto3.client(service, region_name="us-east-1", config=NO_RETRY)
    layer = LatencyLayer(median=0.0, rate=5.0, burst=5, now=time.now, sleep=time.sleep)
    layer.attach(client)
    for _ in range(5):
        getattr(client, call)()
    with pytest.raises(ClientError) as raised:
        getattr(client, call)()
    assert raised.value.response["Error"]["Code"] == code
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert layer.stats.throttled == 1
    time.sleep(0.2)  # one token back
    getattr(client, call)()
    assert layer.stats.calls == 6


def test_latency_is_drawn_around_the_median_on_the_injected_clock(aws: None) -> None:
    time = VirtualTime()
    client = boto3.client("sso-admin", region_name="us-east-1")
    layer = LatencyLayer(median=0.05, sigma=0.3, rate=None, now=time.now, sleep=time.sleep, seed=7)
    layer.attach(client)
    for _ in range(200):
        client.list_instances()
    assert 0.04 < time.t / 200 < 0.07
    assert layer.stats.throttled == 0


def test_a_rate_budget_in_front_keeps_every_call_under_the_limit(aws: None) -> None:
    time = VirtualTime()
    client = boto3.client("sso-admin", region_name="us-east-1", config=NO_RETRY)
    attach_budget(client, TokenRateBudget(20.0, now=time.now, sleep=time.sleep))
    layer = LatencyLayer(median=0.01, sigma=0.5, rate=20.0, burst=1, now=time.now, sleep=time.sleep)
    layer.attach(client)
    for _ in range(100):
        client.list_instances()
    assert layer.stats.throttled == 0
    assert time.t >= 99 / 20


def test_the_budget_spaces_calls_and_allows_its_burst() -> None:
    time = VirtualTime()
    budget = TokenRateBudget(10.0, burst=3, now=time.now, sleep=time.sleep)
    stamps = []
    for _ in range(6):
        budget.acquire()
        stamps.append(round(time.t, 6))
    assert stamps == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="rate"):
        TokenRateBudget(0)


def test_throttling_cuts_the_rate_once_per_burst_and_it_recovers_to_the_configured_rate() -> None:
    time = VirtualTime()
    budget = TokenRateBudget(20.0, now=time.now, sleep=time.sleep)
    # Given three throttled answers at once (calls that were in flight together)
    budget.throttled()
    budget.throttled()
    budget.throttled()
    # Then the rate is cut once (x 0.7), and the next call waits one interval of the cut rate
    assert budget.cuts == 1
    assert budget.throttles == 3
    assert budget.current_rate() == pytest.approx(14.0)
    budget.acquire()
    assert time.t == pytest.approx(1 / 14.0)
    # and a throttled answer a second later cuts again, from the rate recovered since (+2 a second)
    time.sleep(1.0)
    budget.throttled()
    cut = (14.0 + 2.0 * (1.0 + 1 / 14.0)) * 0.7  # recovered for the wait of the call, then the second
    assert budget.current_rate() == pytest.approx(cut)
    # and with no more throttling the rate climbs back by 2 calls a second every second, up to 20
    time.sleep(3.0)
    assert budget.current_rate() == pytest.approx(cut + 6.0)
    time.sleep(60.0)
    assert budget.current_rate() == 20.0
    # and cuts stop at the floor (a tenth of the rate)
    slow = TokenRateBudget(20.0, now=time.now, sleep=time.sleep, recovery=1e-6)
    for _ in range(20):
        time.sleep(1.0)
        slow.throttled()
    assert slow.current_rate() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="floor"):
        TokenRateBudget(10.0, floor=11.0)


def test_an_attached_budget_hears_every_throttled_answer(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import botocore.endpoint

    time = VirtualTime()
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=time.sleep))  # retries wait virtually
    config = Config(retries={"mode": "standard", "max_attempts": 10})
    client = boto3.client("sso-admin", region_name="us-east-1", config=config)
    budget = TokenRateBudget(100.0, now=time.now, sleep=time.sleep)
    attach_budget(client, budget)
    attach_budget(client, budget)  # attached twice: registered once
    layer = LatencyLayer(median=0.0, rate=10.0, burst=1, now=time.now, sleep=time.sleep)
    layer.attach(client)
    for _ in range(20):
        client.list_instances()
    # Then every throttled attempt was reported, and the budget slowed down to what the service takes
    assert layer.stats.throttled > 0
    assert budget.throttles == layer.stats.throttled
    assert budget.cuts >= 1
    assert budget.current_rate() < 100.0


def test_a_sync_against_an_identity_store_that_throttles_completes_and_the_budget_slows_down(
    aws: None, identity_store_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.endpoint

    from idsync.adapters.identitystore import IdentityStoreTarget, budgeted_retry_config
    from idsync.model import PlanPolicy
    from idsync.services.cycle import CycleService, Scoping
    from tests.unit.test_cycle import World
    from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper

    class NamedUserMapper(SimpleUserMapper):
        """The Identity Store requires a name's given and family parts."""

        def map(self, obj: dict[str, Any]) -> Any:
            user = super().map(obj)
            doc = {**user.doc, "Name": {"GivenName": "Given", "FamilyName": obj["displayName"]}}
            return replace(user, doc=freeze_doc(doc))

    # the client's retries go at once: the budget alone spaces the calls out (in real time)
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=lambda _seconds: None))
    # Given an Identity Store that throttles above 20 calls a second, and a budget that starts at 60
    client = boto3.client("identitystore", region_name="us-east-1", config=budgeted_retry_config(10))
    budget = TokenRateBudget(60.0)
    attach_budget(client, budget)
    layer = LatencyLayer(median=0.0, rate=20.0, burst=2)
    layer.attach(client)
    world = World()
    service = CycleService(
        world.source,
        IdentityStoreTarget(identity_store_id, client),
        world.state,
        NamedUserMapper(),
        SimpleGroupMapper(),
        Everything(),
        Scoping("all", False),
        PlanPolicy(),
        world.clock,
        concurrency=4,
        record_every=25,
    )
    # When a pooled cycle provisions the tenant
    outcome = service.run(CycleOptions())
    # Then it completes with no failure although AWS throttled, and the budget slowed down
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert layer.stats.throttled > 0
    assert budget.cuts >= 1
    assert budget.current_rate() < 60.0
    users = client.list_users(IdentityStoreId=identity_store_id)["Users"]
    assert len(users) == 12
    assert len(world.state.users) == 12
