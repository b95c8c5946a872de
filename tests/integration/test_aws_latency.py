"""The latency-and-throttle layer in front of moto, and the rate budget that keeps idsync under it."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from idsync.adapters.sso_admin import attach_budget
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
