"""The emulator's DynamoDB transactions (``sandbox.moto_transactions``) behave as DynamoDB's: all or nothing,
one cancellation reason per item in order, one operation per item."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from idsync.adapters.dynamodb_state import table_definition

TABLE = "idsync-state"


@pytest.fixture
def client(aws: None) -> Any:
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(**table_definition(TABLE))
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "LEASE"}, "sk": {"S": "pim:g"}, "owner": {"S": "a"}})
    dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": "ITEM"}, "sk": {"S": "old"}, "value": {"S": "1"}})
    return dynamodb


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _items(client: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(i["pk"]["S"], i["sk"]["S"]): i for i in client.scan(TableName=TABLE)["Items"]}


def _check(owner: str) -> dict[str, Any]:
    return {
        "ConditionCheck": {
            "TableName": TABLE,
            "Key": _key("LEASE", "pim:g"),
            "ConditionExpression": "#owner = :owner",
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":owner": {"S": owner}},
        }
    }


def _writes() -> list[dict[str, Any]]:
    return [
        {"Put": {"TableName": TABLE, "Item": _key("GRANT#g", "ada") | {"doc": {"S": "{}"}}}},
        {"Delete": {"TableName": TABLE, "Key": _key("ITEM", "old")}},
        {
            "Update": {
                "TableName": TABLE,
                "Key": _key("ITEM", "new"),
                "UpdateExpression": "SET #value = :value",
                "ExpressionAttributeNames": {"#value": "value"},
                "ExpressionAttributeValues": {":value": {"S": "2"}},
            }
        },
    ]


def test_a_transaction_whose_checks_hold_applies_every_write(client: Any) -> None:
    client.transact_write_items(TransactItems=[*_writes(), _check("a")])
    items = _items(client)
    assert ("GRANT#g", "ada") in items
    assert ("ITEM", "old") not in items
    assert items[("ITEM", "new")]["value"] == {"S": "2"}


def test_a_transaction_whose_check_fails_writes_nothing_and_gives_each_items_reason(client: Any) -> None:
    before = _items(client)
    with pytest.raises(ClientError) as caught:
        client.transact_write_items(TransactItems=[*_writes(), _check("b")])  # the writes come before the check
    error = caught.value.response
    assert error["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in error["CancellationReasons"]] == ["None", "None", "None", "ConditionalCheckFailed"]
    assert _items(client) == before


def test_two_operations_on_one_item_are_refused_and_write_nothing(client: Any) -> None:
    before = _items(client)
    twice = [_writes()[0], {"Delete": {"TableName": TABLE, "Key": _key("GRANT#g", "ada")}}]
    with pytest.raises(ClientError) as caught:
        client.transact_write_items(TransactItems=twice)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert _items(client) == before
