"""Token buckets in the state table (DynamoDB): one item per bucket, written by conditional UpdateItem.

Item: pk ``BUCKET#<name>``, sk ``BUCKET``; ``micro_tokens`` (millionths of a token), ``updated_us``
(microseconds since the epoch), ``version`` (grows by one per write), ``waiting`` (the line of hints
waiting for a token, JSON: ``[[name, since_us, due_us], ...]``; at most one entry per PIM group) and
``ttl`` (epoch seconds; an idle bucket expires and comes back full, which is what an idle bucket is anyway);
``rate_micro`` and ``slowed_us`` (a refill rate lowered after throttling, and when; absent reads as 0).
Reads are strongly consistent; a write carries a condition on the version it read, so of two
workers racing for the same token exactly one succeeds.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idsync.errors import StateError
from idsync.ports import BucketState, Waiter

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

SORT_KEY = "BUCKET"
TTL_SECONDS = 7 * 24 * 3600
_MICROS = 1_000_000
_UPDATE = (
    "SET #tokens = :tokens, #updated = :updated, #version = :version, #ttl = :ttl, #waiting = :waiting, "
    "#rate = :rate, #slowed = :slowed"
)
_NAMES = {
    "#tokens": "micro_tokens",
    "#updated": "updated_us",
    "#version": "version",
    "#ttl": "ttl",
    "#waiting": "waiting",
    "#rate": "rate_micro",
    "#slowed": "slowed_us",
}


def _line(item: dict[str, Any]) -> tuple[Waiter, ...]:
    raw = item.get("waiting", {}).get("S", "[]")
    return tuple(Waiter(str(name), int(since), int(due)) for name, since, due in json.loads(raw))


def _key(name: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": f"BUCKET#{name}"}, "sk": {"S": SORT_KEY}}


class DynamoDbBucketStore:
    """``ports.BucketStore`` over the state table."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self._table = table_name
        self._client: Any = client or boto3.client(
            "dynamodb", config=Config(retries={"mode": "adaptive", "max_attempts": 5})
        )

    def load(self, name: str) -> BucketState | None:
        try:
            answer = self._client.get_item(TableName=self._table, Key=_key(name), ConsistentRead=True)
        except (ClientError, BotoCoreError) as error:
            raise StateError(f"token bucket {name}: cannot read table {self._table}: {error}") from error
        item = answer.get("Item")
        if item is None:
            return None
        try:
            return BucketState(
                micro_tokens=int(item["micro_tokens"]["N"]),
                updated_us=int(item["updated_us"]["N"]),
                version=int(item["version"]["N"]),
                waiting=_line(item),
                rate_micro=int(item.get("rate_micro", {}).get("N", "0")),
                slowed_us=int(item.get("slowed_us", {}).get("N", "0")),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise StateError(f"token bucket {name}: item in table {self._table} is malformed: {error}") from None

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        values = {
            ":tokens": {"N": str(new.micro_tokens)},
            ":updated": {"N": str(new.updated_us)},
            ":version": {"N": str(new.version)},
            ":ttl": {"N": str(new.updated_us // _MICROS + TTL_SECONDS)},
            ":waiting": {"S": json.dumps([[w.name, w.since_us, w.due_us] for w in new.waiting])},
            ":rate": {"N": str(new.rate_micro)},
            ":slowed": {"N": str(new.slowed_us)},
        }
        if expected is None:
            condition = "attribute_not_exists(pk)"
        else:
            condition = "#version = :expected"
            values[":expected"] = {"N": str(expected.version)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key=_key(name),
                UpdateExpression=_UPDATE,
                ConditionExpression=condition,
                ExpressionAttributeNames=_NAMES,
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise StateError(f"token bucket {name}: cannot write table {self._table}: {error}") from error
        except BotoCoreError as error:
            raise StateError(f"token bucket {name}: cannot write table {self._table}: {error}") from error
        return True
