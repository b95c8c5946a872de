"""moto's DynamoDB TransactWriteItems at the cost of the items it touches, as DynamoDB's.

moto 5.2 backs up every table a transaction names with a deep copy before applying it (to roll a cancelled
one back), so one transaction costs as much as its table is large: against a state table holding a sync's
thousands of items, a two-item transaction took about a second, where DynamoDB answers one in milliseconds,
like any write. ``install()`` replaces ``DynamoDBBackend.transact_write_items`` with moto's own semantics (every
condition evaluated, all or nothing, TransactionCanceledException with one reason per item in order, an error
for two operations on one item) whose rollback restores only the items the transaction touched.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend

_lock = threading.Lock()
_OPERATIONS = frozenset({"ConditionCheck", "Put", "Delete", "Update"})


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    touched: set[tuple[str, str]] = set()
    backup: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []  # (table, key, item before)
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []

    def rollback() -> None:
        for table_name, key, before in reversed(backup):
            if before is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, before)

    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        returned: dict[str, Any] | None = None  # the item, for ReturnValuesOnConditionCheckFailure ALL_OLD
        try:
            op_type, op = next(iter(entry.items()))
            if op_type not in _OPERATIONS:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                table = self.get_table(table_name)
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            identity = (str(table_name), str(dict(sorted(key.items()))))
            if identity in touched:
                raise MultipleTransactionsException()
            touched.add(identity)
            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if condition is not None and not get_filter_expression(condition, names, values).expr(current):
                if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current is not None:
                    returned = current.to_json()["Attributes"]
                raise ConditionalCheckFailed(item=returned)
            if op_type != "ConditionCheck":
                before = copy.deepcopy(current.to_json()["Attributes"]) if current is not None else None
                backup.append((table_name, key, before))
            if op_type == "Put":
                self.put_item(table_name, op["Item"])
            elif op_type == "Delete":
                self.delete_item(table_name, key)
            elif op_type == "Update":
                self.update_item(
                    table_name,
                    key,
                    update_expression=op["UpdateExpression"],
                    expression_attribute_names=names,
                    expression_attribute_values=values,
                )
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            rollback()
            raise
        except ConditionalCheckFailed as error:
            errors.append(("ConditionalCheckFailed", str(error.message), returned))
        except Exception as error:  # moto's own: any other failure of one item is that item's reason
            errors.append((type(error).__name__, str(error), returned))
    if any(code is not None for code, _, _ in errors):
        rollback()
        raise TransactionCanceledException(errors)


def install() -> None:
    """Install the transaction on moto's DynamoDB backend (idempotent; in-process and server mode)."""
    with _lock:
        if DynamoDBBackend.__dict__.get("transact_write_items") is not _transact_write_items:
            DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]
