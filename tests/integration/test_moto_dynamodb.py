"""A base-table Query answered from its partition (sandbox.moto_dynamodb) answers exactly as moto's own Query:
the same items, order, pages, counts and errors, through a real boto3 client (botocore validates each request)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from sandbox import moto_dynamodb

TABLE = "state"


def _queries() -> list[dict[str, Any]]:
    base: list[dict[str, Any]] = [
        {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}}},
        {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :g)",
            "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}, ":g": {"S": "g2#"}},
            "ConsistentRead": True,
        },
        {
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
            "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}, ":lo": {"S": "g1#u3"}, ":hi": {"S": "g3#u1"}},
            "ScanIndexForward": False,
        },
        {
            "KeyConditionExpression": "pk = :pk",
            "FilterExpression": "n > :n",
            "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}, ":n": {"N": "7"}},
        },
        {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "ABSENT"}}},
        {
            "IndexName": "by-user",
            "KeyConditionExpression": "usr = :u",
            "ExpressionAttributeValues": {":u": {"S": "u2"}},
        },
        {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": {"S": "GRANT#g1"}}},
    ]
    edges: list[dict[str, Any]] = [
        {
            "KeyConditionExpression": f"pk = :pk AND {condition}",
            "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}} | values,
            "ScanIndexForward": forward,
        }
        for condition, values in (
            ("begins_with(sk, :g)", {":g": {"S": "g1#"}}),  # the first run of the partition
            ("begins_with(sk, :g)", {":g": {"S": "g3#"}}),  # the last run
            ("begins_with(sk, :g)", {":g": {"S": "g9#"}}),  # no run at all
            ("sk = :k", {":k": {"S": "g2#u3"}}),
            ("sk < :k", {":k": {"S": "g2#u2"}}),
            ("sk <= :k", {":k": {"S": "g2#u2"}}),
            ("sk > :k", {":k": {"S": "g2#u2"}}),
            ("sk >= :k", {":k": {"S": "g2#u2"}}),
        )
        for forward in (True, False)
    ]
    filtered = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :g)",
        "FilterExpression": "n > :n",
        "ExpressionAttributeValues": {":pk": {"S": "MEMBERSHIP"}, ":g": {"S": "g2#"}, ":n": {"N": "10"}},
    }
    return base + edges + [filtered]


def _pages(client: Any, query: dict[str, Any], limit: int | None) -> list[dict[str, Any]]:
    pages: list[dict[str, Any]] = []
    params = {"TableName": TABLE, **query} | ({"Limit": limit} if limit else {})
    while True:
        answer = client.query(**params)
        pages.append({key: answer.get(key) for key in ("Items", "Count", "ScannedCount", "LastEvaluatedKey")})
        if "LastEvaluatedKey" not in answer:
            return pages
        params["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
                {"AttributeName": "usr", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-user",
                    "KeySchema": [{"AttributeName": "usr", "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
        number = 0
        for group in ("g3", "g1", "g2"):
            for user in ("u4", "u1", "u3", "u2"):
                number += 1
                item = {"pk": {"S": "MEMBERSHIP"}, "sk": {"S": f"{group}#{user}"}, "usr": {"S": user}}
                dynamodb.put_item(TableName=TABLE, Item=item | {"n": {"N": str(number)}})
            dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": f"GRANT#{group}"}, "sk": {"S": "u1"}})
        yield dynamodb
    moto_dynamodb.install()


@pytest.mark.parametrize("limit", [None, 1, 3, 4])  # 4: a page ends exactly at a run's last item
@pytest.mark.parametrize("index", range(len(_queries())))
def test_a_partition_query_answers_as_moto_answers(client: Any, index: int, limit: int | None) -> None:
    query = _queries()[index]
    moto_dynamodb.install()
    ours = _pages(client, query, limit)
    moto_dynamodb.uninstall()
    try:
        theirs = _pages(client, query, limit)
    finally:
        moto_dynamodb.install()
    assert ours == theirs
    assert sum(page["Count"] for page in ours) == len([item for page in ours for item in page["Items"]])


def test_a_query_reads_only_its_partition(client: Any) -> None:
    """The partition-sized Query never sorts the whole table: the other partitions are not read at all."""
    moto_dynamodb.install()
    table_items = []
    from moto.dynamodb.models.table import Table

    original = Table.all_items.__wrapped__  # type: ignore[attr-defined]

    def counting(self: Table) -> list[Any]:
        table_items.append(self.name)
        return original(self)

    Table.all_items.__wrapped__ = counting  # type: ignore[attr-defined]
    try:
        answer = client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": "GRANT#g2"}},
        )
    finally:
        Table.all_items.__wrapped__ = original  # type: ignore[attr-defined]
    assert [item["sk"]["S"] for item in answer["Items"]] == ["u1"]
    assert table_items == []


def test_a_sort_key_condition_hands_moto_its_run_and_one_neighbour_each_side(client: Any) -> None:
    """The JIT path's begins_with Query costs what it reads in the emulator too: the rest of the partition
    never reaches moto's per-item loop."""
    moto_dynamodb.install()
    from moto.dynamodb.models.table import Table

    handed: list[list[str]] = []
    original = Table.all_items.__wrapped__  # type: ignore[attr-defined]
    partitioned = Table.all_items

    def recording(self: Table) -> list[Any]:
        items = partitioned(self)
        handed.append([item.range_key.value for item in items])
        return items

    Table.all_items = recording  # type: ignore[method-assign]
    try:
        answer = client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :g)",
            ExpressionAttributeValues={":pk": {"S": "MEMBERSHIP"}, ":g": {"S": "g2#"}},
        )
    finally:
        Table.all_items = partitioned  # type: ignore[method-assign]
    assert original is not None
    assert [item["sk"]["S"] for item in answer["Items"]] == ["g2#u1", "g2#u2", "g2#u3", "g2#u4"]
    assert handed == [["g1#u4", "g2#u1", "g2#u2", "g2#u3", "g2#u4", "g3#u1"]]


def test_a_query_on_a_missing_table_fails_as_before(client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.query(
            TableName="absent", KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "x"}}
        )
    assert excinfo.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_run_near_the_page_size_pages_as_moto_pages(client: Any) -> None:
    """moto ends a page at any later item that would carry it past 1 MB, matching or not: a run that large is
    handed over with its whole partition, so the pages stay moto's."""
    blob = "x" * 230_000
    for key in ("a#1", "a#2", "a#3"):
        client.put_item(TableName=TABLE, Item={"pk": {"S": "BIG"}, "sk": {"S": key}, "blob": {"S": blob}})
    client.put_item(TableName=TABLE, Item={"pk": {"S": "BIG"}, "sk": {"S": "b#1"}})
    client.put_item(TableName=TABLE, Item={"pk": {"S": "BIG"}, "sk": {"S": "b#2"}, "blob": {"S": "y" * 350_000}})
    query = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :a)",
        "ExpressionAttributeValues": {":pk": {"S": "BIG"}, ":a": {"S": "a#"}},
        "ProjectionExpression": "sk",
    }
    moto_dynamodb.install()
    ours = _pages(client, query, None)
    moto_dynamodb.uninstall()
    try:
        theirs = _pages(client, query, None)
    finally:
        moto_dynamodb.install()
    assert ours == theirs
    assert [item["sk"]["S"] for page in ours for item in page["Items"]] == ["a#1", "a#2", "a#3"]
