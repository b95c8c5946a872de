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
    return base


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


@pytest.mark.parametrize("limit", [None, 1, 3])
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


def test_a_query_on_a_missing_table_fails_as_before(client: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        client.query(
            TableName="absent", KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "x"}}
        )
    assert excinfo.value.response["Error"]["Code"] == "ResourceNotFoundException"
