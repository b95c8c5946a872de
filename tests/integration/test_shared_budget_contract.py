"""The shared rate budget's bucket item: the same cases against the fake store and moto's DynamoDB.

A conditional write can lose under contention, the lowered rate travels between processes in the item,
concurrent writers never mint a token twice, and an unreachable table is a StateError the budget survives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from idsync.adapters.dynamodb_bucket import DynamoDbBucketStore
from idsync.errors import StateError
from idsync.ports import BucketState, BucketStore
from idsync.services.rate_budget import TokenRateBudget
from idsync.services.shared_budget import (
    CONTENTION_RETRY_SECONDS,
    SCALE,
    Later,
    SharedBucket,
    SharedBudgetPolicy,
    SharedRateBudget,
    Taken,
)
from idsync.services.token_bucket import to_micros
from tests.fakes import FakeBucketStore, FakeClock
from tests.integration.test_bucket_dynamodb import TABLE, atomic_moto, dynamodb  # noqa: F401 -- fixtures

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
POLICY = SharedBudgetPolicy(rate=20.0, reserve=4.0)
NAME = "identity-center"


class Between:
    """A store that lets ``other`` run once between our first read and our first write (a lost race)."""

    def __init__(self, inner: BucketStore, other: Callable[[], None]) -> None:
        self.inner = inner
        self.other: Callable[[], None] | None = other

    def load(self, name: str) -> BucketState | None:
        return self.inner.load(name)

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        if self.other is not None:
            other, self.other = self.other, None
            other()
        return self.inner.replace(name, expected, new)


@pytest.fixture(params=["fake", "moto"])
def stores(request: pytest.FixtureRequest) -> Callable[[], BucketStore]:
    """A factory of store objects over one bucket: each process has its own (its own DynamoDB client)."""
    if request.param == "fake":
        shared = FakeBucketStore()
        return lambda: shared
    request.getfixturevalue("atomic_moto")
    request.getfixturevalue("dynamodb")
    return lambda: DynamoDbBucketStore(TABLE, client=boto3.client("dynamodb"))


def test_a_lost_conditional_write_is_retried_and_each_token_is_taken_once(stores: Callable[[], BucketStore]) -> None:
    # Given a bulk writer, and a JIT writer whose first write another process's take overtakes
    clock = FakeClock(T0)
    bulk = SharedBucket(stores(), clock, POLICY)
    jit = SharedBucket(Between(stores(), lambda: bulk.take(5, 5, POLICY.floor_u)), clock, POLICY)

    # When the JIT writer takes one token
    answer = jit.take(1, 1, 0)

    # Then its first write lost, its second landed on the winner's bucket: 9 - 5 - 1 left, versions 1 and 2
    assert answer == Taken(1, to_micros(T0))
    assert jit.lost == 1
    assert stores().load(NAME) == BucketState(3 * SCALE, to_micros(T0), 2)


def test_a_lowered_rate_travels_in_the_item_to_every_process(stores: Callable[[], BucketStore]) -> None:
    # Given one process throttled (the bucket drawn down to the reserve first)
    clock = FakeClock(T0)
    first = SharedBucket(stores(), clock, POLICY)
    assert first.take(5, 5, POLICY.floor_u) == Taken(5, to_micros(T0))
    assert first.slow_down()

    # When another process, with its own store object, asks for a batch
    second = SharedBucket(stores(), clock, POLICY)
    answer = second.take(5, 5, POLICY.floor_u)

    # Then it waits for 5 tokens at the halved rate, and a second cut in the same second does nothing
    assert answer == Later(0.5)
    assert not second.slow_down()
    stored = stores().load(NAME)
    assert stored is not None
    assert (stored.rate_micro, stored.slowed_us) == (10 * SCALE, to_micros(T0))


def test_concurrent_writers_hand_out_exactly_the_capacity(stores: Callable[[], BucketStore]) -> None:
    # Given four bulk and four JIT processes on a frozen clock, each with its own store object
    clock = FakeClock(T0)
    granted: dict[str, int] = {"bulk": 0, "jit": 0}
    record = threading.Lock()
    start = threading.Barrier(8)

    def work(kind: str) -> None:
        bucket = SharedBucket(stores(), clock, POLICY, max_attempts=50)
        start.wait()
        while True:
            answer = bucket.take(*((5, 5, POLICY.floor_u) if kind == "bulk" else (1, 1, 0)))
            if isinstance(answer, Later):
                if answer.seconds == CONTENTION_RETRY_SECONDS:  # lost every round: try again
                    continue
                return
            with record:
                granted[kind] += answer.tokens

    threads = [threading.Thread(target=work, args=(kind,)) for kind in ["bulk", "jit"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then the nine tokens went out once each: bulk writers one batch at most, never the reserve
    assert granted["bulk"] + granted["jit"] == 9
    assert granted["bulk"] in (0, 5)
    stored = stores().load(NAME)
    assert stored is not None
    assert stored.micro_tokens == 0


def test_an_unreachable_table_is_a_state_error_the_budget_survives(
    stores: Callable[[], BucketStore], request: pytest.FixtureRequest
) -> None:
    # Given a store that cannot reach its table
    clock = FakeClock(T0)
    if "fake" in request.node.callspec.id:
        store = stores()
        assert isinstance(store, FakeBucketStore)
        store.down = True
        broken: BucketStore = store
    else:
        broken = DynamoDbBucketStore("no-such-table", client=boto3.client("dynamodb"))
    bucket = SharedBucket(broken, clock, POLICY)

    # When it is read directly, Then it is a StateError
    with pytest.raises(StateError, match=r"token bucket identity-center"):
        bucket.take(1, 1, 0)

    # When a JIT budget over it makes three calls, Then they go through on the local budget
    def elapsed() -> float:
        return (clock.now() - T0).total_seconds()

    def local(rate: float) -> Any:
        return TokenRateBudget(rate, now=elapsed, sleep=clock.advance)

    budget = SharedRateBudget(bucket, "expiry", clock.advance, local)
    for _ in range(3):
        budget.acquire()
    assert budget.stats.local_calls == 3
    assert budget.stats.fallbacks == 1
