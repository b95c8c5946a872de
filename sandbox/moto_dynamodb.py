"""DynamoDB Query in time proportional to the partition it reads, as DynamoDB answers it.

moto 5.2.5 answers a Query on the table's own key by sorting every item of the table and keeping those of
the asked partition, so each Query costs O(table log table). DynamoDB reads only the partition (its items are
stored in sort-key order): a Query's cost grows with what it reads, not with the table. idsync's state table
holds every ownership record and log entry beside the grants and leases a PIM activation queries, so in the
emulator a JIT activation's Query grows slower with every write the sync makes, which the real service does
not do, and benchmarks measuring the JIT path during a sync would measure moto.

``install()`` (idempotent) makes a base-table Query hand moto's own ``Table.query`` only the asked partition's
items; everything else (key conditions, filters, paging, limits, ordering, errors, index queries, scans) is
moto's own code, unchanged. A sort-key condition narrows further, as DynamoDB's sorted storage does: moto is
handed the contiguous run of items the condition matches plus one neighbour on each side. moto decides
``LastEvaluatedKey`` when it meets the item after a full page (matching or not), so that neighbour keeps its
pages exactly as they were; when the run is so large that a later non-matching item could end a page on
moto's 1 MB size rule, or the condition does not match a contiguous run, the whole partition is handed over.
``tests/integration/test_moto_dynamodb.py`` runs the same queries with and without it and compares the answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.comparisons import get_comparison_func
from moto.dynamodb.models.table import RESULT_SIZE_LIMIT, Table

_MAX_ITEM_BYTES = 400 * 1024  # DynamoDB's item size limit: no single later item can be larger

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
        ordered = sorted(stored.values(), key=lambda item: item.range_key.cast_value)
        narrowing = bool(range_comparison) and not _other_filters(kwargs)
        _partition.seen = (self, _run(ordered, range_comparison, range_objs) if narrowing else ordered)
        try:
            return original(self, hash_key, *positional, projection_expressions, index_name, *args, **kwargs)
        finally:
            _partition.seen = None

    query.__wrapped__ = original  # type: ignore[attr-defined]
    return query


def _other_filters(kwargs: dict[str, Any]) -> bool:
    """Legacy QueryFilter arguments arrive as extra keywords; moto then counts every item it walks."""
    known = {"consistent_read", "filter_expression", "hash_key_conditions", "range_key_conditions"}
    return any(value for key, value in kwargs.items() if key not in known)


def _run(ordered: list[Any], comparison: str, objs: list[Any]) -> list[Any]:
    """The items a sort-key condition matches with one neighbour each side, or all of them when unsafe."""
    matches = get_comparison_func(comparison)
    if matches is None:
        return ordered
    values = [obj.cast_value for obj in objs]
    hits = [index for index, item in enumerate(ordered) if matches(item.range_key.cast_value, *values)]
    if not hits:
        return []
    first, last = hits[0], hits[-1]
    if last - first + 1 != len(hits):
        return ordered
    if sum(item.size() for item in ordered[first : last + 1]) > RESULT_SIZE_LIMIT - _MAX_ITEM_BYTES:
        return ordered
    return ordered[max(first - 1, 0) : last + 2]


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
