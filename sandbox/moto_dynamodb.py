"""DynamoDB Query in time proportional to the partition it reads, as DynamoDB answers it.

moto 5.2.5 answers a Query on the table's own key by sorting every item of the table and keeping those of
the asked partition, so each Query costs O(table log table). DynamoDB reads only the partition (its items are
stored in sort-key order): a Query's cost grows with what it reads, not with the table. idsync's state table
holds every ownership record and log entry beside the grants and leases a PIM activation queries, so in the
emulator a JIT activation's Query grows slower with every write the sync makes, which the real service does
not do, and benchmarks measuring the JIT path during a sync would measure moto.

``install()`` (idempotent) makes a base-table Query hand moto's own ``Table.query`` only the asked partition's
items; everything else (key conditions, filters, paging, limits, ordering, errors, index queries, scans) is
moto's own code, unchanged. ``tests/integration/test_moto_dynamodb.py`` runs the same queries with and without
it and compares the answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models.table import Table

_lock = threading.Lock()
_partition = threading.local()  # the table and the items one base-table Query may see, in this thread


def _only_partition(original: Callable[..., Any]) -> Callable[..., Any]:
    def query(
        self: Table,
        hash_key: Any,
        range_comparison: Any,
        range_objs: Any,
        limit: Any,
        exclusive_start_key: Any,
        scan_index_forward: Any,
        projection_expressions: Any,
        index_name: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        positional = (range_comparison, range_objs, limit, exclusive_start_key, scan_index_forward)
        if index_name is not None or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *positional, projection_expressions, index_name, *args, **kwargs)
        stored = self.items.get(hash_key, {})  # .get: a defaultdict must not grow a partition
        _partition.seen = (self, sorted(stored.values(), key=lambda item: item.range_key))
        try:
            return original(self, hash_key, *positional, projection_expressions, index_name, *args, **kwargs)
        finally:
            _partition.seen = None

    query.__wrapped__ = original  # type: ignore[attr-defined]
    return query


def _partition_items(original: Callable[[Table], list[Any]]) -> Callable[[Table], list[Any]]:
    def all_items(self: Table) -> list[Any]:
        seen = getattr(_partition, "seen", None)
        if seen is not None and seen[0] is self:
            return list(seen[1])
        return original(self)

    all_items.__wrapped__ = original  # type: ignore[attr-defined]
    return all_items


def install() -> None:
    """Answer base-table Queries from their partition (idempotent; in-process and server mode)."""
    with _lock:
        if not hasattr(Table.query, "__wrapped__"):
            Table.query = _only_partition(Table.query)  # type: ignore[method-assign]
        if not hasattr(Table.all_items, "__wrapped__"):
            Table.all_items = _partition_items(Table.all_items)  # type: ignore[method-assign]


def uninstall() -> None:
    """moto's own Query again (for the contract test that compares both)."""
    with _lock:
        for name in ("query", "all_items"):
            wrapped = getattr(getattr(Table, name), "__wrapped__", None)
            if wrapped is not None:
                setattr(Table, name, wrapped)
