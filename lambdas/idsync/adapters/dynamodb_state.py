"""StateStore on one DynamoDB table, for the Lambda functions.

Every key attribute is a string; ``TABLE_SCHEMA`` states the table once for the CDK stack and tests.
Item families (pk / sk):

- ``USER`` / <source id>: an owned user (targetId, userName, doc, managerSourceId, fingerprint), indexed in
  ``gsi1`` under ``USERNAME#<casefolded userName>`` / <source id>: a delta cycle finds a name's holders with
  one Query instead of reading every user.
- ``GROUP`` / <source id>: an owned group (targetId, displayName, description, fingerprint).
- ``MEMBERSHIP`` / ``<group source id>#<user source id>``: an owned membership (group, user,
  membershipId), indexed in ``gsi1`` under ``MEMBEROF#<user source id>`` / <group source id>: a user's
  memberships are one Query. One partition per family rather than one per group: ``load_ownership`` reads
  each family with one paginated Query (1 MB pages, about ten for 50,000 memberships) where
  per-group partitions would cost a Query per group. A cycle writes at most about 20 objects a
  second (the Identity Center limit), far below one partition's 1,000 writes a second.
- ``ITEM`` / <key>: a small named document (delta links, checkpoints, quarantine, run status).
- ``LEASE`` / <name>: owner and expires (epoch seconds), taken with one conditional PutItem. A lease
  holder's writes (``fenced``) are transactions that check the lease's owner.
- ``LOG#<cycle id>`` / ``<time>#<change id>``: a provisioning log entry, with ``ttl`` (its time
  plus the retention) and ``gsi1pk`` ``LOG``. An entry that did not succeed gets a second item
  ``LOG#<cycle id>`` / ``STATUS#<status>#<time>#<change id>`` with ``gsi1pk`` ``LOGSTATUS#<status>``,
  so newest logs, newest failures and a cycle's failures are each one Query, while successes
  (the bulk of a sync) cost one write. ``gsi1sk`` is ``<time>#<change id>`` on both.
- ``BUCKET#<name>`` / ``BUCKET``: a JIT token bucket (``dynamodb_bucket``).
- ``GRANT#<group id>`` / <user id>: an active JIT grant (``ports.AccessGrant`` as a JSON ``doc``);
  a group's grants are one Query.

The ``gsi1`` entries of users and memberships written before they existed are added by
``upgrade_lookups`` (one-time, resumable, run by the sync after its cycle), which also notices a writer
without entries afterwards (a rollback: its log entries lack the ``entries`` stamp) and starts over; until
the entries are complete, the lookups read the family instead. ``gsi1`` is eventually consistent: what it
may miss, and why that is safe, is said where it is read. ``gsi2`` (``targetId``, keys only) finds users
by their IAM Identity Center id.

<time> is UTC with fixed-width microseconds, so text order is time order. Documents (user docs,
named items, log entries) are JSON strings: no Decimal conversion, and empty strings, unicode and
nesting come back unchanged. TTL deletes lazily (up to days late), so queries leave expired logs
out by their sort key.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, NotRequired, TypedDict

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from idsync.adapters.state_codec import encode_json as _encode
from idsync.adapters.state_codec import epoch as _epoch
from idsync.adapters.state_codec import log_time as _log_time
from idsync.adapters.state_codec import time_key as _time_key
from idsync.errors import LeaseLost, StateError
from idsync.model import LogEntry, OwnedGroup, OwnedMembership, OwnedUser, Ownership, Status
from idsync.ports import AccessGrant, Forget, GroupRecords, OwnershipWrite

logger = logging.getLogger(__name__)


class IndexSchema(TypedDict):
    name: str
    partition_key: str
    sort_key: NotRequired[str]
    projection: str


class TableSchema(TypedDict):
    partition_key: str
    sort_key: str
    ttl_attribute: str
    indexes: tuple[IndexSchema, ...]


TABLE_SCHEMA: Final[TableSchema] = {
    "partition_key": "pk",
    "sort_key": "sk",
    "ttl_attribute": "ttl",
    "indexes": (
        {"name": "gsi1", "partition_key": "gsi1pk", "sort_key": "gsi1sk", "projection": "ALL"},
        # the users (and groups) by their IAM Identity Center id: built by DynamoDB from the attribute they have
        {"name": "gsi2", "partition_key": "targetId", "projection": "KEYS_ONLY"},
    ),
}

_USER, _GROUP, _MEMBERSHIP, _ITEM, _LEASE = "USER", "GROUP", "MEMBERSHIP", "ITEM", "LEASE"
_GRANT = "GRANT#"
_LOG_INDEX = TABLE_SCHEMA["indexes"][0]["name"]
_LOOKUP_INDEX = _LOG_INDEX  # one index, overloaded: logs, users by name, memberships by user
_TARGET_INDEX = TABLE_SCHEMA["indexes"][1]["name"]
_UNREADABLE_INDEX = ("specified index", "backfilling")  # what DynamoDB says of an index absent or being built
_NAMED, _MEMBER_OF = "USERNAME#", "MEMBEROF#"
LOOKUPS_ITEM = "state-lookups"  # the named document recording the lookup entries' backfill
# the backfill begins this long after the first cycle that saw it needed: every invocation of the version before
# (whose writes carry no index entry) has ended by then, as none runs longer than 15 minutes
LOOKUPS_DRAIN = timedelta(minutes=15)
_LOOKUPS_PAGE = 500  # items read per backfill page; ``should_stop`` is asked between pages
_LOOKUPS_WRITERS = 4  # backfill updates in flight (one partition takes 1,000 writes a second)
_LOOKUPS_TRUST_SECONDS = 60.0  # a store checks the lookups' completeness again after this long (once a cycle)
_monotonic = time.monotonic  # the waits' clock (tests move it)
_INDEX_RETRY_SECONDS = 900.0  # an unreadable gsi2 (absent, or being built) is tried again after this long
_TARGETS_KEPT_SECONDS = 60.0  # without gsi2, every user's target id is read again after this long
_LOOKUPS_MAX_KEYS = 1000  # more users than this: reading the membership family costs fewer requests
# a writer's log entries may bear a time a little before they are written (buffered) or come from a skewed clock
_LOG_SKEW = timedelta(minutes=5)
_STAMP = "entries"  # on every provisioning log entry this version writes: its writer keeps the gsi1 entries
_CONDITION_FAILED = "ConditionalCheckFailedException"
_CANCELLED = "TransactionCanceledException"
# a lease item's single write that meets a fenced transaction in flight on it; botocore does not retry it
_IN_TRANSACTION = "TransactionConflictException"
_LEASE_ATTEMPTS = 4
_TRANSACTION_ATTEMPTS = 4
_TRANSACTION_ITEMS = 100  # TransactWriteItems' limit
# ':' sorts right after '9': after every "<time>#..." key and before "STATUS#..." keys
_AFTER_ANY_TIME = ":"
_BATCH_SIZE = 25  # BatchWriteItem's limit
_GET_BATCH_SIZE = 100  # BatchGetItem's limit
_BATCH_ATTEMPTS = 8


def _user_lookup(source_id: str, user_name: str) -> dict[str, Any]:
    return {"gsi1pk": _s(_NAMED + user_name.casefold()), "gsi1sk": _s(source_id)}


def _membership_lookup(group_source_id: str, user_source_id: str) -> dict[str, Any]:
    return {"gsi1pk": _s(_MEMBER_OF + user_source_id), "gsi1sk": _s(group_source_id)}


def _user_item(owned: OwnedUser) -> dict[str, Any]:
    item = (
        _key(_USER, owned.source_id)
        | _user_lookup(owned.source_id, owned.user_name)
        | {
            "targetId": _s(owned.target_id),
            "userName": _s(owned.user_name),
            "doc": _s(_encode(owned.doc, f"user {owned.user_name} [{owned.source_id}]: attribute doc")),
            "fingerprint": _s(owned.fingerprint),
        }
    )
    if owned.manager_source_id is not None:
        item["managerSourceId"] = _s(owned.manager_source_id)
    return item


def _group_item(owned: OwnedGroup) -> dict[str, Any]:
    item = _key(_GROUP, owned.source_id) | {
        "targetId": _s(owned.target_id),
        "displayName": _s(owned.display_name),
        "fingerprint": _s(owned.fingerprint),
    }
    if owned.description is not None:
        item["description"] = _s(owned.description)
    return item


def _membership_item(owned: OwnedMembership) -> dict[str, Any]:
    lookup = _membership_lookup(owned.group_source_id, owned.user_source_id)
    return (
        _key(_MEMBERSHIP, f"{owned.group_source_id}#{owned.user_source_id}")
        | lookup
        | {
            "group": _s(owned.group_source_id),
            "user": _s(owned.user_source_id),
            "membershipId": _s(owned.membership_id),
        }
    )


def table_definition(table_name: str) -> dict[str, Any]:
    """CreateTable parameters for the state table (on-demand), built from ``TABLE_SCHEMA``."""
    keys = [TABLE_SCHEMA["partition_key"], TABLE_SCHEMA["sort_key"]]
    indexes = []
    for index in TABLE_SCHEMA["indexes"]:
        schema = [{"AttributeName": index["partition_key"], "KeyType": "HASH"}]
        keys.append(index["partition_key"])
        if "sort_key" in index:
            schema.append({"AttributeName": index["sort_key"], "KeyType": "RANGE"})
            keys.append(index["sort_key"])
        indexes.append(
            {"IndexName": index["name"], "KeySchema": schema, "Projection": {"ProjectionType": index["projection"]}}
        )
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"} for key in keys],
        "KeySchema": [
            {"AttributeName": TABLE_SCHEMA["partition_key"], "KeyType": "HASH"},
            {"AttributeName": TABLE_SCHEMA["sort_key"], "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": indexes,
    }


class DynamoDbStateStore:
    """``ports.StateStore`` on the DynamoDB table described by ``TABLE_SCHEMA``."""

    def __init__(self, table_name: str, client: Any = None, log_retention_days: int = 30) -> None:
        self._table = table_name
        self._client = client or boto3.client(
            "dynamodb", config=Config(retries={"mode": "adaptive", "max_attempts": 10})
        )
        self._retention = timedelta(days=log_retention_days)
        self._fence: tuple[str, str] | None = None  # (lease, owner): see ``fenced``
        # read_group's requests, sent at once (threads start on first use; ``fenced`` views share them)
        self._readers = ThreadPoolExecutor(max_workers=3, thread_name_prefix="idsync-state-read")
        self._trusted_until = 0.0  # monotonic time until which the gsi1 lookups are trusted (``_lookups_ready``)
        self._stale = False  # a record or log entry of a writer without entries was met: the lookups read the table
        self._target_index_retry = 0.0  # monotonic time before which gsi2 is not tried again (``_by_target``)
        self._targets: tuple[float, dict[str, str]] | None = None  # without gsi2: (until, target id -> source id)

    # ------------------------------------------------------------------ ownership

    def load_ownership(self) -> Ownership:
        """Everything recorded as owned: one paginated, strongly consistent Query per family.

        Raises StateError.
        """
        unindexed = 0
        users = {}
        for item in self._partition(_USER):
            unindexed += "gsi1pk" not in item
            owned_user = _owned_user(item)
            users[owned_user.source_id] = owned_user
        groups = {owned.source_id: owned for owned in map(_owned_group, self._partition(_GROUP))}
        memberships = {}
        for item in self._partition(_MEMBERSHIP):
            unindexed += "gsi1pk" not in item
            owned = _owned_membership(item)
            memberships[(owned.group_source_id, owned.user_source_id)] = owned
        if unindexed:
            self._lookups_incomplete(unindexed)
        return Ownership(users=users, groups=groups, memberships=memberships)

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        """The users by key (strongly consistent BatchGetItem, unprocessed keys retried), every group (one
        Query), the groups' memberships (a Query on each group's sort-key prefix) and the users' memberships:
        a ``gsi1`` Query per user (sent three at a time), or, until the index entries are complete, one
        projected Query of the membership family.

        The index is eventually consistent (behind by a fraction of a second): it can miss only a membership
        recorded a moment ago. The JIT path records only PIM groups' memberships, which no plan decides
        (``plan.set_aside_memberships``); the cycles, which hold one lease, record theirs minutes before the
        next one reads; and a delta cycle also reads, from the table itself, the members of every group whose
        membership changed in Entra. Raises StateError."""
        keys = [_key(_USER, source_id) for source_id in dict.fromkeys(users)]
        found = {owned.source_id: owned for owned in map(_owned_user, self._get_batch(keys))}
        every = {owned.source_id: owned for owned in map(_owned_group, self._partition(_GROUP))}
        memberships: dict[tuple[str, str], OwnedMembership] = {}
        wanted = list(dict.fromkeys(users))
        if wanted and len(wanted) <= _LOOKUPS_MAX_KEYS and self._lookups_ready():
            for items in self._readers.map(lambda user: list(self._lookup(_MEMBER_OF + user)), wanted):
                for owned in map(_owned_membership, items):
                    memberships[(owned.group_source_id, owned.user_source_id)] = owned
        elif wanted:
            wanted_set = set(wanted)
            for item in self._partition(_MEMBERSHIP, "#group, #user, membershipId"):
                if item["user"]["S"] in wanted_set:
                    owned = _owned_membership(item)
                    memberships[(owned.group_source_id, owned.user_source_id)] = owned
        for group_id in dict.fromkeys(groups):
            for owned in self.owned_memberships(group_id).values():
                memberships[(owned.group_source_id, owned.user_source_id)] = owned
        return Ownership(users=found, groups=every, memberships=memberships)

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        """Holders of the userNames: a ``gsi1`` Query per casefolded name (sent three at a time), or, until the
        index entries are complete, one Query of the user family projected to source id and userName.

        The index is eventually consistent: a user recorded or renamed a moment ago (by the JIT path, which
        creates a PIM member's user) can be missed or found under her old name. The names only widen what a
        delta cycle plans; a name still held by a user left unplanned makes the write that wants it fail with
        a conflict, which is logged and planned again by the next cycle. Raises StateError."""
        wanted = list(dict.fromkeys(name.casefold() for name in names))
        holders: dict[str, list[str]] = {}
        if not wanted:
            return holders
        if len(wanted) <= _LOOKUPS_MAX_KEYS and self._lookups_ready():
            for name, items in zip(
                wanted, self._readers.map(lambda name: list(self._lookup(_NAMED + name, "sk")), wanted), strict=True
            ):
                if items:
                    holders[name] = [item["sk"]["S"] for item in items]
            return holders
        wanted_set = set(wanted)
        for item in self._partition(_USER, "sk, userName"):
            folded = item["userName"]["S"].casefold()
            if folded in wanted_set:
                holders.setdefault(folded, []).append(item["sk"]["S"])
        return holders

    def owned_users_by_target(self, target_ids: Collection[str]) -> dict[str, OwnedUser]:
        """A ``gsi2`` Query per target id (sent three at a time), or, on a table without that index, one Query
        of the user family projected to source id and target id; then the users found, read by key (strongly
        consistent) and kept only if they still hold the target id. The index may be a moment behind: a user
        recorded a moment ago can be missed (the drift check, which asks, then leaves her for its next round),
        never one wrongly found. Raises StateError."""
        wanted = set(target_ids)
        if not wanted:
            return {}
        sources = self._by_target(sorted(wanted))
        if sources is None:
            every = self._user_targets_for_a_while()
            sources = [every[target_id] for target_id in wanted if target_id in every]
        found = map(_owned_user, self._get_batch([_key(_USER, source_id) for source_id in dict.fromkeys(sources)]))
        return {owned.target_id: owned for owned in found if owned.target_id in wanted}

    def _user_targets_for_a_while(self) -> Mapping[str, str]:
        """Every owned user's target id -> source id, read once per ``_TARGETS_KEPT_SECONDS`` (the drift check
        asks page after page): without ``gsi2``. What it misses for that long is missed as the index misses
        what it lags behind; what it lists is read again by key."""
        now = _monotonic()
        if self._targets is None or now >= self._targets[0]:
            self._targets = (now + _TARGETS_KEPT_SECONDS, self.owned_user_targets())
        return self._targets[1]

    def _by_target(self, target_ids: Sequence[str]) -> list[str] | None:
        """The source ids of the users ``gsi2`` lists under ``target_ids``; None when the table has no readable
        ``gsi2`` (a table adopted from an earlier version, or one whose index DynamoDB is still building): the
        index is then tried again after ``_INDEX_RETRY_SECONDS``."""
        if _monotonic() < self._target_index_retry:
            return None

        def holders(target_id: str) -> list[dict[str, Any]]:
            params = {
                "IndexName": _TARGET_INDEX,
                "KeyConditionExpression": "targetId = :target",
                "ExpressionAttributeValues": {":target": _s(target_id)},
            }
            return list(self._query(params))

        try:
            listed = list(self._readers.map(holders, target_ids))
        except StateError as error:
            cause = error.__cause__
            answer = cause.response.get("Error", {}) if isinstance(cause, ClientError) else {}
            # DynamoDB answers "The table does not have the specified index: gsi2", or, while it builds the index
            # after the stack update that added it, "Cannot read from backfilling global secondary index: gsi2"
            message = str(answer.get("Message"))
            if answer.get("Code") != "ValidationException" or not any(w in message for w in _UNREADABLE_INDEX):
                raise
            self._target_index_retry = _monotonic() + _INDEX_RETRY_SECONDS
            logger.warning(
                "state: the table's index by IAM Identity Center id cannot be read; users are found by reading "
                "their ids (once a minute) until it can",
                extra={"index": _TARGET_INDEX, "error": str(cause)},
            )
            return None
        return [item["sk"]["S"] for items in listed for item in items if item["pk"]["S"] == _USER]

    def owned_users(self, source_ids: Collection[str]) -> dict[str, OwnedUser]:
        """Strongly consistent BatchGetItem (unprocessed keys retried). Raises StateError."""
        keys = [_key(_USER, source_id) for source_id in dict.fromkeys(source_ids)]
        return {owned.source_id: owned for owned in map(_owned_user, self._get_batch(keys))}

    def owned_user_targets(self) -> dict[str, str]:
        """One Query of the user family projected to source id and target id (no document read into memory;
        its read capacity is the family's). Raises StateError."""
        return {item["targetId"]["S"]: item["sk"]["S"] for item in self._partition(_USER, "sk, targetId")}

    def count_users_and_groups(self) -> tuple[int, int]:
        """Counted with Select=COUNT Queries (charged for every record counted). Raises StateError."""
        return self._count(_USER), self._count(_GROUP)

    def count_ownership(self, excluded_groups: Collection[str] = ()) -> tuple[int, int, int]:
        """Counted with Select=COUNT Queries, an excluded group's memberships on its sort-key prefix (group ids
        are GUIDs: asked as given, in lower and in upper case). Raises StateError."""
        memberships = self._count(_MEMBERSHIP)
        for group_id in sorted({v for g in excluded_groups for v in (g, g.lower(), g.upper())}):
            memberships -= self._count(_MEMBERSHIP, f"{group_id}#")
        return self._count(_USER), self._count(_GROUP), memberships

    def record_user(self, owned: OwnedUser) -> None:
        """Record (or replace) an owned user. Raises ValueError for a doc that is not JSON, StateError."""
        self._put(_user_item(owned))

    def forget_user(self, source_id: str) -> None:
        self._delete(_key(_USER, source_id))

    def record_group(self, owned: OwnedGroup) -> None:
        self._put(_group_item(owned))

    def forget_group(self, source_id: str) -> None:
        self._delete(_key(_GROUP, source_id))

    def record_membership(self, owned: OwnedMembership) -> None:
        self._put(_membership_item(owned))

    def forget_membership(self, group_source_id: str, user_source_id: str) -> None:
        self._delete(_key(_MEMBERSHIP, f"{group_source_id}#{user_source_id}"))

    def write_ownership(self, writes: Sequence[OwnershipWrite]) -> None:
        """Apply the records and forgets with BatchWriteItem (25 a request, unprocessed items retried); the
        last write of a key wins, as a batch refuses two requests on one key. Not atomic across requests.

        Raises ValueError for a doc that is not JSON, StateError.
        """
        requests: dict[tuple[str, str], dict[str, Any]] = {}
        for write in writes:
            if isinstance(write, OwnedUser):
                item = _user_item(write)
            elif isinstance(write, OwnedGroup):
                item = _group_item(write)
            elif isinstance(write, OwnedMembership):
                item = _membership_item(write)
            else:
                family = {"user": _USER, "group": _GROUP, "membership": _MEMBERSHIP}[write.kind]
                item = _key(family, "#".join(write.key))
            identity = (item["pk"]["S"], item["sk"]["S"])
            requests.pop(identity, None)
            forget = isinstance(write, Forget)
            requests[identity] = {"DeleteRequest": {"Key": item}} if forget else {"PutRequest": {"Item": item}}
        batch = list(requests.values())
        if self._fence is not None:  # a batch cannot carry a condition: one fenced transaction a write
            for request in batch:
                if "PutRequest" in request:
                    self._put(request["PutRequest"]["Item"])
                else:
                    self._delete(request["DeleteRequest"]["Key"])
            return
        for start in range(0, len(batch), _BATCH_SIZE):
            self._write_batch(batch[start : start + _BATCH_SIZE])

    # ------------------------------------------------------------------ the lookup entries (gsi1)

    def upgrade_lookups(self, now: datetime, should_stop: Callable[[], bool]) -> bool:
        """Keep the ``gsi1`` entries of users and memberships complete; True while they are (the lookups then
        use the index). The sync runs it after each cycle, holding its lease.

        Backfill (one-time, resumable): the first call records when it was first needed and does nothing else;
        the backfill begins ``LOOKUPS_DRAIN`` later, once no invocation of the version before can still write a
        record without its entry. It reads each family in pages of ``_LOOKUPS_PAGE`` from where it stopped (the
        position is stored after every page; ``should_stop`` is asked between pages) and sets the entry with a
        conditional UpdateItem: on a user only while its userName is the one read, on a membership only while it
        exists, so a record rewritten or forgotten meanwhile by another writer is left as that writer left it.

        Once complete, each call checks that no writer without entries has run since the last check (a
        rollback to the version before, an older CLI): every provisioning log entry this version writes is
        stamped, and the entries logged since then are read (one cycle's worth). An unstamped one, or a record
        without its entry met by ``load_ownership``, starts the backfill over. Raises StateError."""
        progress = self.get_item(LOOKUPS_ITEM) or {}
        if progress.get("ready"):
            if not self._stale and not self._written_without_entries(progress):
                self.put_item(LOOKUPS_ITEM, progress | {"checked": (now - _LOG_SKEW).isoformat()})
                return True
            logger.warning(
                "state: records were written without their lookup index entries (by an earlier version); they "
                "are added again, and the lookups read the table meanwhile"
            )
            progress = {}
        if "since" not in progress:
            self.put_item(LOOKUPS_ITEM, {"since": now.isoformat(), "family": _USER, "after": None})
            self._stale, self._trusted_until = False, 0.0
            logger.info(
                "state: the lookup index entries of earlier records are added once the version before has drained",
                extra={"from": (now + LOOKUPS_DRAIN).isoformat()},
            )
            return False
        if now < datetime.fromisoformat(progress["since"]) + LOOKUPS_DRAIN:
            return False
        progress.setdefault("began", now.isoformat())
        with ThreadPoolExecutor(max_workers=_LOOKUPS_WRITERS, thread_name_prefix="idsync-lookups") as writers:
            while not should_stop():
                family, after = str(progress["family"]), progress.get("after")
                params: dict[str, Any] = {
                    "TableName": self._table,
                    "KeyConditionExpression": "pk = :pk",
                    "ExpressionAttributeValues": {":pk": _s(family)},
                    "ExpressionAttributeNames": {"#user": "user"},
                    "ProjectionExpression": "sk, userName, #user, gsi1pk",
                    "ConsistentRead": True,
                    "Limit": _LOOKUPS_PAGE,
                }
                if after is not None:
                    params["ExclusiveStartKey"] = _key(family, after)
                page = self._call("query", **params)
                missing = [item for item in page["Items"] if "gsi1pk" not in item]
                added = int(progress.get("added", 0)) + sum(writers.map(partial(self._add_lookup, family), missing))
                following = page.get("LastEvaluatedKey")
                if following is not None:
                    progress |= {"after": following["sk"]["S"], "added": added}
                elif family == _USER:
                    progress |= {"family": _MEMBERSHIP, "after": None, "added": added}
                else:
                    # what was written since the pass began is checked next time: the pass may have passed it
                    checked = datetime.fromisoformat(progress["began"]) - _LOG_SKEW
                    self.put_item(
                        LOOKUPS_ITEM, progress | {"added": added, "ready": True, "checked": checked.isoformat()}
                    )
                    logger.info("state: lookup index entries complete", extra={"added": added})
                    return True
                self.put_item(LOOKUPS_ITEM, progress)
        return False

    def _add_lookup(self, family: str, item: Mapping[str, Any]) -> bool:
        """One item's ``gsi1`` entry, set only if the item is still the one read. True when it was set."""
        source = item["sk"]["S"]
        if family == _USER:
            entry = _user_lookup(source, item["userName"]["S"])
            condition, values = "userName = :name", {":name": item["userName"]}
        else:
            group, user = source.split("#", 1)
            entry = _membership_lookup(group, user)
            condition, values = "attribute_exists(pk)", {}
        try:
            self._call(
                "update_item",
                TableName=self._table,
                Key=_key(family, source),
                UpdateExpression="SET gsi1pk = :gsi1pk, gsi1sk = :gsi1sk",
                ConditionExpression=f"{condition} AND attribute_not_exists(gsi1pk)",
                ExpressionAttributeValues=values | {":gsi1pk": entry["gsi1pk"], ":gsi1sk": entry["gsi1sk"]},
            )
        except ClientError:  # the condition failed: rewritten (with its entry) or forgotten meanwhile
            return False
        return True

    def _lookups_ready(self) -> bool:
        """Whether the lookups may use ``gsi1``: the backfill is complete and no writer without entries has
        logged anything since the last check. Asked again after ``_LOOKUPS_TRUST_SECONDS`` (once a cycle); only
        reads."""
        if self._stale:
            return False
        if _monotonic() < self._trusted_until:
            return True
        progress = self.get_item(LOOKUPS_ITEM) or {}
        if not progress.get("ready"):
            return False
        if self._written_without_entries(progress):
            self._stale = True  # the upkeep starts the backfill over
            return False
        self._trusted_until = _monotonic() + _LOOKUPS_TRUST_SECONDS
        return True

    def _written_without_entries(self, progress: Mapping[str, Any]) -> bool:
        """Whether a provisioning log entry without this version's stamp was written since the last check."""
        since = _time_key(datetime.fromisoformat(progress.get("checked") or progress["since"]))
        params = {
            "IndexName": _LOG_INDEX,
            "KeyConditionExpression": "gsi1pk = :pk AND gsi1sk >= :since",
            "FilterExpression": f"attribute_not_exists({_STAMP})",
            "ProjectionExpression": "gsi1sk",
            "ExpressionAttributeValues": {":pk": _s("LOG"), ":since": _s(since)},
        }
        return next(iter(self._query(params)), None) is not None

    def _lookups_incomplete(self, unindexed: int) -> None:
        """Records without their entry were read while the entries were said complete: this store reads the
        families, and the upkeep starts over (before, they are what the backfill is there to add)."""
        if self._stale or not self._lookups_ready():
            return
        logger.warning(
            "state: records without their lookup index entry (written by an earlier version); the lookups read "
            "the table until they are added again",
            extra={"records": unindexed},
        )
        self._stale = True

    def _lookup(self, value: str, projection: str | None = None) -> Iterator[dict[str, Any]]:
        """The items ``gsi1`` lists under ``value`` (eventually consistent: a GSI cannot be read otherwise)."""
        params: dict[str, Any] = {
            "IndexName": _LOOKUP_INDEX,
            "KeyConditionExpression": "gsi1pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(value)},
        }
        if projection is not None:
            params["ProjectionExpression"] = projection
        return self._query(params)

    # ------------------------------------------------------------------ named documents

    def get_item(self, key: str) -> dict[str, Any] | None:
        response = self._call("get_item", TableName=self._table, Key=_key(_ITEM, key), ConsistentRead=True)
        item = response.get("Item")
        return json.loads(item["value"]["S"]) if item else None

    def put_item(self, key: str, value: Mapping[str, Any]) -> None:
        """Store a JSON document under key. Raises ValueError when value is not JSON, StateError."""
        item = _key(_ITEM, key) | {"value": _s(_encode(value, f"item {key}: attribute value"))}
        self._put(item)

    def delete_item(self, key: str) -> None:
        self._delete(_key(_ITEM, key))

    # ------------------------------------------------------------------ provisioning log

    def append_logs(self, entries: Sequence[LogEntry]) -> None:
        """Write entries with BatchWriteItem, retrying unprocessed items until all are stored.

        Raises ValueError for an entry whose time is not ISO 8601, StateError.
        """
        requests = [{"PutRequest": {"Item": item}} for item in self._log_items(entries)]
        for start in range(0, len(requests), _BATCH_SIZE):
            self._write_batch(requests[start : start + _BATCH_SIZE])

    def _log_items(self, entries: Sequence[LogEntry]) -> list[dict[str, Any]]:
        items: dict[tuple[str, str], dict[str, Any]] = {}  # one request per key: a batch refuses duplicates
        for entry in entries:
            moment = _log_time(entry)
            order = f"{_time_key(moment)}#{entry.change_id}"
            common = {
                _STAMP: _s("1"),
                "status": _s(entry.status.value),
                "doc": _s(_encode(entry.as_dict(), "log entry")),
                "gsi1sk": _s(order),
                "ttl": {"N": str(int((moment + self._retention).timestamp()))},
            }
            pk = f"LOG#{entry.cycle_id}"
            items[(pk, order)] = _key(pk, order) | common | {"gsi1pk": _s("LOG")}
            if entry.status is not Status.SUCCESS:
                status_sk = f"STATUS#{entry.status.value}#{order}"
                items[(pk, status_sk)] = (
                    _key(pk, status_sk) | common | {"gsi1pk": _s(f"LOGSTATUS#{entry.status.value}")}
                )
        return list(items.values())

    def query_logs(
        self, cycle_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Unexpired entries, newest first, as ``LogEntry.as_dict()`` documents.

        One Query, except for successes (written once), which are filtered from all entries.
        Raises ValueError for a limit below 1, StateError.
        """
        if limit < 1:
            raise ValueError(f"query_logs: limit {limit}: must be at least 1")
        cutoff = self._cutoff_key()
        indexed = status is not None and str(status) != Status.SUCCESS.value
        params: dict[str, Any] = {"ScanIndexForward": False}
        if cycle_id is not None:
            prefix = f"STATUS#{status}#" if indexed else ""
            params |= {
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
                "ExpressionAttributeValues": {
                    ":pk": _s(f"LOG#{cycle_id}"),
                    ":low": _s(prefix + cutoff),
                    ":high": _s(prefix + _AFTER_ANY_TIME),
                },
                "ConsistentRead": True,
            }
        else:
            params |= {
                "IndexName": _LOG_INDEX,
                "KeyConditionExpression": "gsi1pk = :pk AND gsi1sk >= :low",
                "ExpressionAttributeValues": {
                    ":pk": _s(f"LOGSTATUS#{status}" if indexed else "LOG"),
                    ":low": _s(cutoff),
                },
            }
        if status is not None and not indexed:
            params["FilterExpression"] = "#status = :status"
            params["ExpressionAttributeNames"] = {"#status": "status"}
            params["ExpressionAttributeValues"][":status"] = _s(str(status))
        return [json.loads(item["doc"]["S"]) for item in self._query(params, limit)]

    # ------------------------------------------------------------------ JIT (ports.GrantStore)

    def owned_user(self, source_id: str) -> OwnedUser | None:
        """One owned user (strongly consistent GetItem), or None. Raises StateError."""
        item = self._get_item(_key(_USER, source_id))
        return _owned_user(item) if item else None

    def owned_group(self, source_id: str) -> OwnedGroup | None:
        item = self._get_item(_key(_GROUP, source_id))
        return _owned_group(item) if item else None

    def owned_for(self, group_id: str, user_ids: Sequence[str]) -> tuple[OwnedGroup | None, dict[str, OwnedUser]]:
        """One strongly consistent BatchGetItem (per 100 keys; unprocessed keys asked again). Raises StateError."""
        keys = [_key(_GROUP, group_id)] + [_key(_USER, source_id) for source_id in dict.fromkeys(user_ids)]
        group: OwnedGroup | None = None
        users: dict[str, OwnedUser] = {}
        for item in self._get_batch(keys):
            if item["pk"]["S"] == _GROUP:
                group = _owned_group(item)
            else:
                owned = _owned_user(item)
                users[owned.source_id] = owned
        return group, users

    def read_group(self, group_id: str, user_ids: Sequence[str]) -> GroupRecords:
        """The grants Query, the memberships Query and the BatchGetItem sent at once (one round trip's wait
        instead of three). Raises StateError, ValueError for a malformed grant."""
        grants = self._readers.submit(self.grants, group_id)
        memberships = self._readers.submit(self.owned_memberships, group_id)
        owned = self._readers.submit(self.owned_for, group_id, user_ids)
        group, users = owned.result()
        return GroupRecords(grants.result(), memberships.result(), group, users)

    def owned_memberships(self, group_source_id: str) -> dict[str, OwnedMembership]:
        """The group's owned memberships by user source id: one Query on a sort-key prefix. Raises StateError."""
        items = self._query(
            {
                "KeyConditionExpression": "pk = :pk AND begins_with(sk, :group)",
                "ExpressionAttributeValues": {":pk": _s(_MEMBERSHIP), ":group": _s(f"{group_source_id}#")},
                "ConsistentRead": True,
            }
        )
        return {owned.user_source_id: owned for owned in map(_owned_membership, items)}

    def grants(self, group_id: str) -> dict[str, AccessGrant]:
        """The group's grants by user id. Raises StateError, ValueError for a malformed stored grant."""
        return {item["sk"]["S"]: _grant(item) for item in self._partition(f"{_GRANT}{group_id}")}

    def grant(self, group_id: str, user_id: str) -> AccessGrant | None:
        item = self._get_item(_key(f"{_GRANT}{group_id}", user_id))
        return _grant(item) if item else None

    def record_grant(self, grant: AccessGrant) -> None:
        item = _key(f"{_GRANT}{grant.group_id}", grant.user_id) | {
            "doc": _s(_encode(grant.to_document(), f"grant {grant.group_id}/{grant.user_id}"))
        }
        self._put(item)

    def forget_grant(self, group_id: str, user_id: str) -> None:
        self._delete(_key(f"{_GRANT}{group_id}", user_id))

    def fenced(self, lease: str, owner: str) -> DynamoDbStateStore:
        """This store seen by the holder of ``lease``: every write becomes one TransactWriteItems with a
        ConditionCheck that ``owner`` still holds the lease, so a writer that lost it writes nothing (LeaseLost);
        the same client and table."""
        view = copy.copy(self)
        view._fence = (lease, owner)
        return view

    def _get_item(self, key: dict[str, Any]) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self._call("get_item", TableName=self._table, Key=key, ConsistentRead=True).get(
            "Item"
        )
        return item

    # ------------------------------------------------------------------ leases

    def acquire_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Take, take over (expired) or renew (same owner) the lease with one conditional PutItem.

        False when another owner holds it unexpired. Raises StateError.
        """
        at = _epoch(now)
        try:
            self._lease_call(
                "put_item",
                TableName=self._table,
                Item=_key(_LEASE, name) | {"owner": _s(owner), "expires": _n(at + ttl_seconds)},
                ConditionExpression="attribute_not_exists(pk) OR #expires < :now OR #owner = :owner",
                ExpressionAttributeNames={"#expires": "expires", "#owner": "owner"},
                ExpressionAttributeValues={":now": _n(at), ":owner": _s(owner)},
            )
        except ClientError:  # a failed condition, or a holder's transaction on it in flight: another owner holds it
            return False
        return True

    def renew_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Extend the lease while this owner still holds it (expired or not), with one conditional PutItem.

        False once another owner took it over, even one that released it since. Raises StateError.
        """
        try:
            self._lease_call(
                "put_item",
                TableName=self._table,
                Item=_key(_LEASE, name) | {"owner": _s(owner), "expires": _n(_epoch(now) + ttl_seconds)},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": _s(owner)},
            )
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == _IN_TRANSACTION:
                raise self._error("put_item", error) from error  # unknown: the caller stops, as on any error
            return False  # a failed condition: the lease is someone else's
        return True

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up; a lease held by another owner is left alone. Raises StateError."""
        try:
            self._lease_call(
                "delete_item",
                TableName=self._table,
                Key=_key(_LEASE, name),
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": _s(owner)},
            )
        except ClientError:  # held by another owner, already gone, or still in a transaction: it expires
            return

    def append_logs_and_release(self, entries: Sequence[LogEntry], name: str, owner: str) -> None:
        """A lease holder's last write: its log entries and the release, in one TransactWriteItems when they fit
        (100 items); a lease another owner holds is left alone and the entries are written all the same.
        Raises ValueError for an entry whose time is not ISO 8601, StateError."""
        items = self._log_items(entries)
        if not items or len(items) >= _TRANSACTION_ITEMS:
            self.append_logs(entries)
            self.release_lease(name, owner)
            return
        release = {
            "Delete": {
                "TableName": self._table,
                "Key": _key(_LEASE, name),
                "ConditionExpression": "#owner = :owner",
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": {":owner": _s(owner)},
            }
        }
        puts = [{"Put": {"TableName": self._table, "Item": item}} for item in items]
        try:
            self._client.transact_write_items(TransactItems=[release, *puts])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != _CANCELLED:
                raise self._error("transact_write_items", error) from error
            # the lease is another owner's (or a request raced for it): the entries go on their own
            self.append_logs(entries)
            self.release_lease(name, owner)
        except BotoCoreError as error:
            raise self._error("transact_write_items", error) from error

    # ------------------------------------------------------------------ plumbing

    def _cutoff_key(self) -> str:
        return _time_key(datetime.now(UTC) - self._retention)

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One client call; a failed condition is re-raised as is, every other error as StateError."""
        try:
            response: dict[str, Any] = getattr(self._client, operation)(**params)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == _CONDITION_FAILED:
                raise
            raise self._error(operation, error) from error
        except BotoCoreError as error:
            raise self._error(operation, error) from error
        return response

    def _lease_call(self, operation: str, **params: Any) -> dict[str, Any]:
        """A lease item's conditional write. A lease holder's fenced transactions name the lease item, and
        DynamoDB refuses a single write to an item a transaction is applying (TransactionConflictException, which
        botocore does not retry): tried again briefly, then re-raised as is, like a failed condition."""
        attempt = 0
        while True:
            try:
                return self._call(operation, **params)
            except StateError as error:
                cause = error.__cause__
                if not isinstance(cause, ClientError) or cause.response.get("Error", {}).get("Code") != _IN_TRANSACTION:
                    raise
                attempt += 1
                if attempt == _LEASE_ATTEMPTS:
                    raise cause from None
                time.sleep(0.02 * 2**attempt)  # transactions take milliseconds

    def _put(self, item: dict[str, Any]) -> None:
        if self._fence is None:
            self._call("put_item", TableName=self._table, Item=item)
        else:
            self._fenced_write({"Put": {"TableName": self._table, "Item": item}})

    def _delete(self, key: dict[str, Any]) -> None:
        if self._fence is None:
            self._call("delete_item", TableName=self._table, Key=key)
        else:
            self._fenced_write({"Delete": {"TableName": self._table, "Key": key}})

    def _fenced_write(self, write: dict[str, Any]) -> None:
        """One write and the lease check in one transaction. A transaction cancelled by a conflicting request
        on one of its items (another writer trying the lease) is sent again. Raises LeaseLost, StateError."""
        assert self._fence is not None
        lease, owner = self._fence
        check = {
            "ConditionCheck": {
                "TableName": self._table,
                "Key": _key(_LEASE, lease),
                "ConditionExpression": "#owner = :owner",
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": {":owner": _s(owner)},
            }
        }
        for attempt in range(_TRANSACTION_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=[check, write])
                return
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != _CANCELLED:
                    raise self._error("transact_write_items", error) from error
                reasons = [reason.get("Code", "None") for reason in error.response.get("CancellationReasons", [])]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    raise LeaseLost(f"lease {lease} was taken over by another writer: write not applied") from None
                if "TransactionConflict" not in reasons or attempt == _TRANSACTION_ATTEMPTS - 1:
                    raise self._error("transact_write_items", error) from error
            except BotoCoreError as error:
                raise self._error("transact_write_items", error) from error
            time.sleep(0.02 * 2**attempt)  # the conflicting request is one conditional write: it is over soon

    def _error(self, operation: str, error: Exception) -> StateError:
        return StateError(f"DynamoDB table {self._table}: {operation} failed: {error}")

    def _partition(self, pk: str, projection: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a family (strongly consistent); ``projection`` may name ``#group`` and ``#user``."""
        params: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(pk)},
            "ConsistentRead": True,
        }
        if projection is not None:
            params["ProjectionExpression"] = projection
            names = {name: name[1:] for name in ("#group", "#user") if name in projection}
            if names:
                params["ExpressionAttributeNames"] = names
        return self._query(params)

    def _count(self, pk: str, prefix: str | None = None) -> int:
        """How many items a family holds (those whose sort key begins with ``prefix``, when given)."""
        condition, values = "pk = :pk", {":pk": _s(pk)}
        if prefix is not None:
            condition, values = f"{condition} AND begins_with(sk, :prefix)", values | {":prefix": _s(prefix)}
        pages = self._client.get_paginator("query").paginate(
            TableName=self._table,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
            ConsistentRead=True,
            Select="COUNT",
        )
        try:
            return sum(int(page["Count"]) for page in pages)
        except (ClientError, BotoCoreError) as error:
            raise self._error("query", error) from error

    def _get_batch(self, keys: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The items of ``keys`` that exist (BatchGetItem, 100 keys a request, strongly consistent, unprocessed
        keys retried with backoff). Raises StateError."""
        for start in range(0, len(keys), _GET_BATCH_SIZE):
            pending: list[dict[str, Any]] = list(keys[start : start + _GET_BATCH_SIZE])
            for attempt in range(_BATCH_ATTEMPTS):
                response = self._call(
                    "batch_get_item", RequestItems={self._table: {"Keys": pending, "ConsistentRead": True}}
                )
                yield from response.get("Responses", {}).get(self._table, [])
                pending = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
                if not pending:
                    break
                time.sleep(min(0.05 * 2**attempt, 2.0))  # unprocessed keys mean throttling: back off
            else:
                raise StateError(
                    f"DynamoDB table {self._table}: batch_get_item left {len(pending)} keys unprocessed "
                    f"after {_BATCH_ATTEMPTS} attempts"
                )

    def _query(self, params: dict[str, Any], limit: int | None = None) -> Iterator[dict[str, Any]]:
        paging = {"MaxItems": limit, "PageSize": limit} if limit else {}
        pages = self._client.get_paginator("query").paginate(TableName=self._table, PaginationConfig=paging, **params)
        try:
            for page in pages:
                yield from page["Items"]
        except (ClientError, BotoCoreError) as error:
            raise self._error("query", error) from error

    def _write_batch(self, requests: list[dict[str, Any]]) -> None:
        pending = requests
        for attempt in range(_BATCH_ATTEMPTS):
            response = self._call("batch_write_item", RequestItems={self._table: pending})
            pending = response.get("UnprocessedItems", {}).get(self._table, [])
            if not pending:
                return
            time.sleep(min(0.05 * 2**attempt, 2.0))  # unprocessed items mean throttling: back off
        raise StateError(
            f"DynamoDB table {self._table}: batch_write_item left {len(pending)} items unprocessed "
            f"after {_BATCH_ATTEMPTS} attempts"
        )


def _owned_user(item: Mapping[str, Any]) -> OwnedUser:
    manager = item.get("managerSourceId")
    return OwnedUser(
        source_id=sys.intern(item["sk"]["S"]),
        target_id=item["targetId"]["S"],
        user_name=item["userName"]["S"],
        doc=json.loads(item["doc"]["S"]),
        manager_source_id=manager["S"] if manager else None,
        fingerprint=item["fingerprint"]["S"],
    )


def _owned_group(item: Mapping[str, Any]) -> OwnedGroup:
    description = item.get("description")
    return OwnedGroup(
        source_id=sys.intern(item["sk"]["S"]),
        target_id=item["targetId"]["S"],
        display_name=item["displayName"]["S"],
        description=description["S"] if description else None,
        fingerprint=item["fingerprint"]["S"],
    )


def _owned_membership(item: Mapping[str, Any]) -> OwnedMembership:
    # ids interned: hundreds of thousands of memberships share the strings of their users and groups
    return OwnedMembership(sys.intern(item["group"]["S"]), sys.intern(item["user"]["S"]), item["membershipId"]["S"])


def _grant(item: Mapping[str, Any]) -> AccessGrant:
    return AccessGrant.from_document(json.loads(item["doc"]["S"]))


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: float) -> dict[str, str]:
    return {"N": f"{value:.6f}"}


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": _s(pk), "sk": _s(sk)}
