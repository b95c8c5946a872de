"""The token bucket in the state table (moto DynamoDB): item layout, conditional writes, shared by threads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto.dynamodb.models import DynamoDBBackend

from idsync.adapters.dynamodb_bucket import TTL_SECONDS, DynamoDbBucketStore
from idsync.adapters.dynamodb_state import TABLE_SCHEMA, table_definition
from idsync.errors import StateError
from idsync.ports import BucketState
from idsync.services.token_bucket import BucketPolicy, Grant, TokenBucket, Wait, to_micros
from tests.fakes import FakeClock

TABLE = "idsync-state"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WORKERS = 8


@pytest.fixture
def dynamodb(aws: None, aws_region: str) -> Any:
    """A moto DynamoDB holding the state table as ``TABLE_SCHEMA`` states it, TTL on."""
    client = boto3.client("dynamodb", region_name=aws_region)
    client.create_table(**table_definition(TABLE))
    client.update_time_to_live(
        TableName=TABLE,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]},
    )
    return client


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB applies each conditional write atomically; moto's in-process backend does not lock.

    One lock around the backend's item operations gives the test DynamoDB's guarantee, so it measures
    the bucket's protocol and not a race inside the emulator.
    """
    lock = threading.RLock()
    for operation in ("get_item", "update_item"):
        original = getattr(DynamoDBBackend, operation)

        def locked(self: DynamoDBBackend, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, operation, locked)


def store(dynamodb: Any) -> DynamoDbBucketStore:
    return DynamoDbBucketStore(TABLE, client=boto3.client("dynamodb"))


def test_the_bucket_is_one_item_in_the_state_table(dynamodb: Any) -> None:
    # Given the default bucket over the table
    tokens = TokenBucket(store(dynamodb), FakeClock(T0), BucketPolicy())

    # When two activations take a token
    tokens.try_take()
    tokens.try_take()

    # Then one item holds it: pk BUCKET#<name>, sk BUCKET, 3 tokens left, version 2, TTL a week on
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "BUCKET#activations"}, "sk": {"S": "BUCKET"}})
    assert item["Item"]["micro_tokens"] == {"N": "3000000"}
    assert item["Item"]["version"] == {"N": "2"}
    assert item["Item"]["updated_us"] == {"N": str(to_micros(T0))}
    assert int(item["Item"]["ttl"]["N"]) == int(T0.timestamp()) + TTL_SECONDS
    assert dynamodb.scan(TableName=TABLE)["Count"] == 1


def test_a_write_against_a_stale_version_is_refused(dynamodb: Any) -> None:
    # Given a bucket at version 1
    buckets = store(dynamodb)
    first = BucketState(micro_tokens=4_000_000, updated_us=to_micros(T0), version=1)
    assert buckets.replace("b", None, first)

    # When two writers both read version 1 and both try to write version 2
    mine = BucketState(3_000_000, to_micros(T0), 2)
    theirs = BucketState(3_000_000, to_micros(T0), 2)
    won = buckets.replace("b", first, mine)
    lost = buckets.replace("b", first, theirs)

    # Then only the first write lands; creating an existing bucket is refused too
    assert (won, lost) == (True, False)
    assert not buckets.replace("b", None, first)
    assert buckets.load("b") == mine
    assert buckets.load("absent") is None


def test_an_unreachable_table_is_a_state_error(dynamodb: Any) -> None:
    # Given a store pointed at a table that does not exist
    missing = DynamoDbBucketStore("no-such-table", client=boto3.client("dynamodb"))

    # When it is read or written, Then the error names the bucket and the table
    with pytest.raises(StateError, match=r"token bucket b: cannot read table no-such-table"):
        missing.load("b")
    with pytest.raises(StateError, match=r"token bucket b: cannot write table no-such-table"):
        missing.replace("b", None, BucketState(1, 1, 1))


@pytest.mark.usefixtures("atomic_moto")
def test_eight_concurrent_workers_share_one_bucket_without_double_spending(dynamodb: Any) -> None:
    # Given eight workers, each with its own client and bucket object, on one frozen clock
    clock = FakeClock(T0)
    policy = BucketPolicy(capacity=5, refill=5, period_seconds=10.0)
    workers = [TokenBucket(store(dynamodb), clock, policy, max_attempts=50) for _ in range(WORKERS)]
    grants: list[Grant] = []
    record = threading.Lock()
    start = threading.Barrier(WORKERS)

    def work(tokens: TokenBucket) -> None:
        start.wait()
        while True:
            answer = tokens.try_take()
            if isinstance(answer, Grant):
                with record:
                    grants.append(answer)
            elif not answer.contended:
                return  # the bucket is empty, and on a frozen clock it stays empty

    def race() -> None:
        threads = [threading.Thread(target=work, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    # When they all race for tokens until each sees the bucket empty
    race()

    # Then exactly the capacity was handed out, each token once
    assert len(grants) == 5
    assert sorted(g.tokens_left for g in grants) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert store(dynamodb).load("activations") == BucketState(0, to_micros(T0), 5)

    # When 4.5 s pass (2.25 tokens) and they race again
    clock.advance(4.5)
    start.reset()
    race()

    # Then exactly two more were handed out, a quarter token stays, and the next whole one is 1.5 s away
    assert len(grants) == 7
    assert store(dynamodb).load("activations") == BucketState(250_000, to_micros(T0) + 4_500_000, 7)
    assert workers[0].try_take() == Wait(seconds=1.5)


def test_the_waiting_line_is_kept_in_the_item_and_served_in_order(dynamodb: Any) -> None:
    # Given the bucket over the table, emptied, and two groups denied in turn
    clock = FakeClock(T0)
    tokens = TokenBucket(store(dynamodb), clock, BucketPolicy())
    for _ in range(5):
        tokens.try_take()
    assert tokens.try_take("group-a") == Wait(seconds=2.0)
    assert tokens.try_take("group-b") == Wait(seconds=4.0)

    # When a second worker (its own store object) reads the line, and B comes back first
    other = TokenBucket(store(dynamodb), clock, BucketPolicy())
    clock.advance(2.0)
    b_first = other.try_take("group-b")

    # Then the line survives the round trip, and the token due to A is kept for A
    assert isinstance(b_first, Wait)
    assert [w.name for w in other.line()] == ["group-a", "group-b"]
    assert isinstance(tokens.try_take("group-a"), Grant)
    assert [w.name for w in other.line()] == ["group-b"]
