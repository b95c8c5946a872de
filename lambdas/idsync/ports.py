"""The ports: what the services need from the outside world, and nothing about how it is done.

Adapters in ``idsync.adapters`` implement these for Microsoft Graph, the Identity Store API,
DynamoDB and local files; tests use in-memory fakes of the same protocols.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from idsync.mirror import MemberChange
from idsync.model import (
    AttributeChange,
    LogEntry,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Ownership,
    TargetGroup,
    TargetUser,
    UserDoc,
)

GraphObject = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DirectorySnapshot:
    """A full read of Entra, already narrowed to the assignment scope.

    ``users`` and ``groups`` are Graph objects as returned with ``$select`` (users carry
    ``manager: {"id": ...}`` when the manager is mapped). ``members`` lists, per group id, the
    ids of its user members (direct, or transitive when nested groups are flattened).
    """

    users: Sequence[GraphObject]
    groups: Sequence[GraphObject]
    members: Mapping[str, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of a connection test."""

    name: str
    ok: bool
    detail: str


class Directory(Protocol):
    """Microsoft Entra ID, read through Microsoft Graph."""

    def snapshot(self) -> DirectorySnapshot:
        """Read every in-scope user, group and membership. Raises DirectoryError."""
        ...

    def check(self) -> list[Check]:
        """Test credentials and permissions (Entra's "Test Connection")."""
        ...


class IdentityStore(Protocol):
    """AWS IAM Identity Center's identity store."""

    def list_users(self) -> Iterator[TargetUser]: ...

    def list_groups(self) -> Iterator[TargetGroup]: ...

    def list_memberships(self, group_id: str) -> Iterator[tuple[str, str]]:
        """(membership id, user id) of each user member of the group."""
        ...

    def list_users_page(self, token: str | None) -> tuple[list[TargetUser], str | None]:
        """One ListUsers page (at most 100) from ``token`` (None: the first), and the token of the next page
        (None after the last). Raises TargetError (a token AWS no longer accepts included)."""
        ...

    def list_groups_page(self, token: str | None) -> tuple[list[TargetGroup], str | None]:
        """One ListGroups page, as ``list_users_page``."""
        ...

    def list_memberships_page(self, group_id: str, token: str | None) -> tuple[list[tuple[str, str]], str | None]:
        """One ListGroupMemberships page of the group: (membership id, user id) of its user members."""
        ...

    def describe_user(self, user_id: str) -> TargetUser | None:
        """The user (with the enterprise extension), or None when it does not exist. Raises TargetError."""
        ...

    def describe_group(self, group_id: str) -> TargetGroup | None:
        """The group, or None when it does not exist. Raises TargetError."""
        ...

    def find_user(self, user_name: str) -> str | None:
        """The user id holding this userName, or None."""
        ...

    def find_group(self, display_name: str) -> str | None: ...

    def find_membership(self, group_id: str, user_id: str) -> str | None: ...

    def create_user(self, user_name: str, doc: UserDoc) -> str:
        """Create and return the new user id. Raises TargetConflict when the userName exists."""
        ...

    def update_user(self, user_id: str, changes: Sequence[AttributeChange]) -> None:
        """Apply every change in one UpdateUser call. Raises TargetNotFound."""
        ...

    def delete_user(self, user_id: str) -> None:
        """Delete; a user already gone is not an error."""
        ...

    def create_group(self, display_name: str, description: str | None) -> str: ...

    def update_group(self, group_id: str, changes: Sequence[AttributeChange]) -> None: ...

    def delete_group(self, group_id: str) -> None: ...

    def create_membership(self, group_id: str, user_id: str) -> str:
        """Add; raises TargetConflict when the membership exists already."""
        ...

    def delete_membership(self, membership_id: str) -> None: ...

    def check(self) -> list[Check]: ...


@dataclass(frozen=True, slots=True)
class Forget:
    """An ownership record to delete: ``kind`` "user" / "group" (key: source id) or "membership"
    (key: group source id, user source id)."""

    kind: str
    key: tuple[str, ...]


OwnershipWrite = OwnedUser | OwnedGroup | OwnedMembership | Forget


class StateStore(Protocol):
    """Sync state: ownership, delta links, runs, provisioning logs, leases.

    Every write is durable when the call returns, so a crash right after loses nothing.
    """

    def load_ownership(self) -> Ownership: ...

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        """Part of ownership, read by key (a delta cycle's): the records of ``users``, every owned group (groups
        are few), and the memberships of ``users`` or of ``groups``. Raises StateError."""
        ...

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        """The owned users holding each userName in ``names`` (compared casefolded, as IAM Identity Center
        compares userNames): casefolded name -> source ids; names nobody holds are left out. Raises StateError."""
        ...

    def owned_users_by_target(self, target_ids: Collection[str]) -> dict[str, OwnedUser]:
        """The owned users whose IAM Identity Center user id is in ``target_ids``: target id -> record; ids no
        owned user holds are left out. Raises StateError."""
        ...

    def owned_users(self, source_ids: Collection[str]) -> dict[str, OwnedUser]:
        """The owned users among ``source_ids``, read by key (no membership read): source id -> record.
        Raises StateError."""
        ...

    def owned_user_targets(self) -> dict[str, str]:
        """IAM Identity Center user id -> source id, of every owned user, without decoding a record (the drift
        check's users listing). Raises StateError."""
        ...

    def count_users_and_groups(self) -> tuple[int, int]:
        """(users, groups) recorded, without counting the memberships (on DynamoDB, the most records): whether
        another writer changed ownership since a cycle's record. Raises StateError."""
        ...

    def count_ownership(self, excluded_groups: Collection[str] = ()) -> tuple[int, int, int]:
        """(users, groups, memberships) recorded, without the memberships of ``excluded_groups`` (ids compared
        without regard to case): the deletion guard's totals, without loading a record. Raises StateError."""
        ...

    def record_user(self, owned: OwnedUser) -> None: ...

    def forget_user(self, source_id: str) -> None: ...

    def record_group(self, owned: OwnedGroup) -> None: ...

    def forget_group(self, source_id: str) -> None: ...

    def record_membership(self, owned: OwnedMembership) -> None: ...

    def forget_membership(self, group_source_id: str, user_source_id: str) -> None: ...

    def get_item(self, key: str) -> dict[str, Any] | None:
        """A small named document (delta links, checkpoints, quarantine, run status)."""
        ...

    def put_item(self, key: str, value: Mapping[str, Any]) -> None: ...

    def delete_item(self, key: str) -> None: ...

    def append_logs(self, entries: Sequence[LogEntry]) -> None: ...

    def write_ownership(self, writes: Sequence[OwnershipWrite]) -> None:
        """Apply ownership records and forgets in one batch (a transaction, or BatchWriteItem with its
        unprocessed items retried), in order: the last write of a key wins. Not atomic across keys:
        a crash may leave a prefix applied. Raises ValueError for a doc that is not JSON, StateError."""
        ...

    def query_logs(
        self, cycle_id: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first, as ``LogEntry.as_dict()`` documents."""
        ...

    def acquire_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Take the named lease if free or expired. True when this owner holds it."""
        ...

    def renew_lease(self, name: str, owner: str, now: datetime, ttl_seconds: int) -> bool:
        """Extend a lease this owner holds (expired or not). False once another owner took it over, even one
        that has since released it: a fencing check, so a writer that lost its lease never writes again."""
        ...

    def release_lease(self, name: str, owner: str) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class Notifier(Protocol):
    """Failure and quarantine notifications (SNS, or the console when run locally)."""

    def notify(self, subject: str, message: str) -> None: ...


@dataclass
class CallCounter:
    """Counts calls by operation; adapters fill it for the CLI summary and the benchmarks."""

    calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, operation: str) -> None:
        with self._lock:  # the applier's pool counts from several threads
            self.calls[operation] = self.calls.get(operation, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


# --------------------------------------------------------------------------- PIM for Groups (JIT)


@dataclass(frozen=True, slots=True)
class Hint:
    """ "Look at group G": all a change notification is trusted to say, as one queue message.

    ``group_id`` is the configured PIM group's object id (never a string copied from a request);
    ``received_at`` is an ISO 8601 UTC instant. The worker re-reads Graph, so duplicates are harmless.
    """

    group_id: str
    reason: str
    received_at: str

    def to_json(self) -> str:
        return json.dumps(
            {"group_id": self.group_id, "reason": self.reason, "received_at": self.received_at},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, body: str) -> Hint:
        """Parse a queue message body. Raises ValueError naming the missing or mistyped field."""
        try:
            data = json.loads(body)
        except ValueError as error:
            raise ValueError(f"hint message is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("hint message must be a JSON object")
        fields: dict[str, str] = {}
        for name in ("group_id", "reason", "received_at"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"hint message: field {name} must be a non-empty string")
            fields[name] = value
        return cls(**fields)


class HintQueue(Protocol):
    """The queue feeding the JIT worker (SQS)."""

    def send(self, hints: Sequence[Hint]) -> None:
        """Enqueue each hint as one message. Raises QueueError when any could not be enqueued."""
        ...


class SecretSource(Protocol):
    """Named secrets (Secrets Manager, cached; or values from the local configuration)."""

    def get(self, name: str) -> str:
        """The secret's current string value. Raises SecretError."""
        ...


class Credential(Protocol):
    """A secret that can change while a function is warm (the Graph client secret)."""

    def current(self, fresh: bool = False) -> str:
        """The value, cached for a while; ``fresh`` reads it again now. Raises NotConfigured, SecretError."""
        ...


class SubscriptionRenewer(Protocol):
    """Renews (and so reauthorizes) a Graph subscription after a reauthorizationRequired event."""

    def renew(self, subscription_id: str) -> None:
        """Raises DirectoryError when Graph refuses or cannot be reached."""
        ...


@dataclass(frozen=True, slots=True)
class Waiter:
    """One hint waiting in line for a token: who (a PIM group), since when, and when it said it would be back."""

    name: str
    since_us: int
    due_us: int


@dataclass(frozen=True, slots=True)
class BucketState:
    """A token bucket as stored: tokens in millionths and time in microseconds, so the arithmetic is exact.

    ``version`` grows by one on every write; a write succeeds only against the version it read.
    ``waiting`` is the line of hints denied a token, which the next tokens are kept for (oldest first).
    ``rate_micro`` is a refill rate lowered after throttling (millionths of a token a second, as of
    ``updated_us``; 0: the configured rate) and ``slowed_us`` when it was last lowered (0: never).
    """

    micro_tokens: int
    updated_us: int  # microseconds since the Unix epoch
    version: int
    waiting: tuple[Waiter, ...] = ()
    rate_micro: int = 0
    slowed_us: int = 0


class BucketStore(Protocol):
    """Where token buckets live, shared by every concurrent worker (DynamoDB)."""

    def load(self, name: str) -> BucketState | None:
        """The bucket as last written (strongly consistent), or None before its first write."""
        ...

    def replace(self, name: str, expected: BucketState | None, new: BucketState) -> bool:
        """Write ``new`` only if the stored bucket is still ``expected`` (None: not created yet).

        True when written; False when another writer got there first. Raises StateError.
        """
        ...


@dataclass(frozen=True, slots=True)
class DirectoryChanges:
    """What changed in Entra since a set of delta links (everything, when ``full``).

    ``links`` are the delta links to start from next time; they are stored only once the cycle
    that used these changes has finished.
    """

    users: Sequence[GraphObject]
    removed_users: Mapping[str, str]  # id -> "changed" (soft-deleted) | "deleted"
    groups: Sequence[GraphObject]
    removed_groups: Mapping[str, str]
    member_changes: Sequence[MemberChange]
    links: Mapping[str, str]
    full: bool
    # full reads only: users and groups in Entra's deleted items (restorable) -> when deleted (ISO 8601)
    deleted_items: Mapping[str, str] = field(default_factory=dict)


@dataclass
class DeltaRound:
    """One resource's full delta round as read so far: the objects, removals and member changes of the pages
    read, and where Graph said to continue (``next_link``) or, once the round ended, its ``delta_link``."""

    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)
    member_changes: list[MemberChange] = field(default_factory=list)
    next_link: str | None = None
    delta_link: str | None = None
    pages: int = 0

    @property
    def done(self) -> bool:
        return bool(self.delta_link)

    def to_document(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "removed": self.removed,
            "members": [[c.group_id, c.member_id, c.member_type, c.added] for c in self.member_changes],
            "next": self.next_link,
            "delta": self.delta_link,
            "pages": self.pages,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> DeltaRound:
        """Raises KeyError / TypeError / ValueError on a damaged document (the caller reads afresh)."""
        return cls(
            dict(document["objects"]),
            dict(document["removed"]),
            [MemberChange(str(g), str(m), str(t), bool(a)) for g, m, t, a in document["members"]],
            document.get("next"),
            document.get("delta"),
            int(document.get("pages") or 0),
        )


@dataclass
class FullRead:
    """A full read of Entra (every user, every group with its members, the deleted users) that may take
    several invocations: it is done only when both delta rounds reached their deltaLink and the deleted items
    were read. Until then it is never a directory: ``changes()`` refuses."""

    users: DeltaRound = field(default_factory=DeltaRound)
    groups: DeltaRound = field(default_factory=DeltaRound)
    deleted_items: dict[str, str] | None = None  # None until read

    @property
    def done(self) -> bool:
        return self.users.done and self.groups.done and self.deleted_items is not None

    @property
    def pages(self) -> int:
        return self.users.pages + self.groups.pages

    def changes(self) -> DirectoryChanges:
        """The whole directory as full ``DirectoryChanges``. Raises ValueError while the read is unfinished."""
        if not self.done:
            raise ValueError("a full read of Entra is unfinished: it is not the directory")
        return DirectoryChanges(
            list(self.users.objects.values()),
            dict(self.users.removed),
            list(self.groups.objects.values()),
            dict(self.groups.removed),
            list(self.groups.member_changes),
            {"users": str(self.users.delta_link), "groups": str(self.groups.delta_link)},
            True,
            dict(self.deleted_items or {}),
        )

    @classmethod
    def of(cls, changes: DirectoryChanges) -> FullRead:
        """A finished read holding ``changes`` (a source that reads everything in one go)."""
        return cls(
            DeltaRound(
                {str(u["id"]): dict(u) for u in changes.users},
                dict(changes.removed_users),
                [],
                None,
                changes.links.get("users") or "-",
                1,
            ),
            DeltaRound(
                {str(g["id"]): dict(g) for g in changes.groups},
                dict(changes.removed_groups),
                list(changes.member_changes),
                None,
                changes.links.get("groups") or "-",
                1,
            ),
            dict(changes.deleted_items),
        )

    def to_bytes(self) -> bytes:
        document = {
            "users": self.users.to_document(),
            "groups": self.groups.to_document(),
            "deleted": self.deleted_items,
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, blob: bytes) -> FullRead | None:
        """The stored read, or None when it is damaged (the read then begins again)."""
        try:
            document = json.loads(blob)
            deleted = document.get("deleted")
            return cls(
                DeltaRound.from_document(document["users"]),
                DeltaRound.from_document(document["groups"]),
                None if deleted is None else {str(k): str(v) for k, v in deleted.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class ChangeSource(Protocol):
    """Entra read through Graph delta queries (the sync cycle's source)."""

    def read_full(self, progress: FullRead | None, should_stop: Callable[[], bool]) -> FullRead:
        """Begin a full read (``progress`` None) or carry one on, page by page, until it is done or
        ``should_stop()`` answers True between two pages (at least one page is read per call, so every call
        makes progress). The links in ``progress`` are Graph's own and stay valid across invocations as long
        as Graph keeps them.

        Raises DeltaExpired when Graph no longer knows a link (the read must begin again),
        DirectoryAuthError, DirectoryError.
        """
        ...

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        """All users and groups with their members (links None), or the changes since ``links``.

        Raises DeltaExpired when a link is no longer valid, DirectoryAuthError, DirectoryError.
        """
        ...

    def read_assignments(self) -> tuple[set[str], set[str]]:
        """(user ids, group ids) assigned to the enterprise application."""
        ...


# --------------------------------------------------------------------------- PIM grants, expiry, subscriptions


@dataclass(frozen=True, slots=True)
class AssignmentInstance:
    """One PIM for Groups assignment schedule instance, as Graph reports it (only ``member`` ones grant membership).

    ``assignment_type`` is ``activated`` (an eligible user activated) or ``assigned`` (an active assignment);
    ``end`` None means it does not end.
    """

    id: str
    principal_id: str
    group_id: str
    access_id: str
    assignment_type: str
    member_type: str
    start: datetime | None
    end: datetime | None

    def active_at(self, now: datetime) -> bool:
        """True while the instance grants access: started, and not ended at ``now``."""
        return (self.start is None or self.start <= now) and (self.end is None or self.end > now)


GRANT_ACTIVE = "active"  # instances grant access (applied, or being applied: recorded before the write)
GRANT_ENDED = "ended"  # the instances ended; kept while Graph still lists the user, so she is not re-added
GRANT_SIGHTED = "sighted"  # listed without an instance or a grant: a permanent member once the sighting settles
GRANT_PHASES = (GRANT_ACTIVE, GRANT_ENDED, GRANT_SIGHTED)


@dataclass(frozen=True, slots=True)
class AccessGrant:
    """What idsync records for one user in one PIM group (see ``idsync.pim`` for the rule that reads it).

    ``instance_ids`` are the active instances behind it (reference counting: access stays while any
    remains). ``end`` is when the last of them ends (None: one never ends). ``standing`` is True when
    the membership existed before idsync saw the grant (a permanent member who also activated), so a
    user Graph still lists keeps access after the instances end; a membership idsync added for the
    instances is removed when they end. ``phase``: ``GRANT_ACTIVE``, ``GRANT_ENDED`` (a marker kept while
    Graph's member list lags) or ``GRANT_SIGHTED`` (``applied_at`` is then when the user was first seen
    listed without an instance).
    """

    group_id: str
    user_id: str
    instance_ids: tuple[str, ...]
    end: datetime | None
    standing: bool
    applied_at: str  # ISO 8601 UTC
    phase: str = GRANT_ACTIVE

    @property
    def active(self) -> bool:
        return self.phase == GRANT_ACTIVE

    def same_terms(self, other: AccessGrant | None) -> bool:
        """True when ``other`` records the same instances, end, standing and phase (so nothing needs writing)."""
        return (
            other is not None
            and other.instance_ids == self.instance_ids
            and other.end == self.end
            and other.standing == self.standing
            and other.phase == self.phase
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "user_id": self.user_id,
            "instance_ids": list(self.instance_ids),
            "end": self.end.isoformat() if self.end is not None else None,
            "standing": self.standing,
            "applied_at": self.applied_at,
            "phase": self.phase,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> AccessGrant:
        """Read a stored grant. Raises ValueError naming the attribute that is missing or malformed."""
        where = f"grant {document.get('group_id')}/{document.get('user_id')}"
        phase = str(document.get("phase") or GRANT_ACTIVE)
        if phase not in GRANT_PHASES:
            raise ValueError(f"{where}: attribute phase must be one of {', '.join(GRANT_PHASES)}, not {phase!r}")
        try:
            end = document.get("end")
            return cls(
                group_id=str(document["group_id"]),
                user_id=str(document["user_id"]),
                instance_ids=tuple(str(i) for i in document["instance_ids"]),
                end=datetime.fromisoformat(end) if end else None,
                standing=bool(document["standing"]),
                applied_at=str(document["applied_at"]),
                phase=phase,
            )
        except KeyError as missing:
            raise ValueError(f"{where}: attribute {missing} is missing") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: attribute end must be an ISO 8601 date-time ({error})") from None


class PimDirectory(Protocol):
    """What the JIT worker reads from Graph: a PIM group's members and assignment instances, and users."""

    def members(self, group_id: str) -> set[str]:
        """Ids of the group's direct user members. Raises DirectoryError."""
        ...

    def instances(self, group_id: str, user_id: str | None = None) -> list[AssignmentInstance]:
        """The group's current assignment schedule instances (of one principal when given). Raises DirectoryError."""
        ...

    def user(self, user_id: str) -> GraphObject | None:
        """The user with the mapped properties (manager as ``{"id": ...}``), or None when gone.

        Raises DirectoryError.
        """
        ...


@dataclass(frozen=True, slots=True)
class GroupRecords:
    """``GrantStore.read_group``: a PIM group's grants and owned memberships (by user id), its owned group, and
    those of the users asked for that are owned."""

    grants: dict[str, AccessGrant]
    memberships: dict[str, OwnedMembership]
    group: OwnedGroup | None
    users: dict[str, OwnedUser]


@runtime_checkable
class LookupUpkeep(Protocol):
    """A state store whose lookups use an index that records written before it existed must be added to."""

    def upgrade_lookups(self, now: datetime, should_stop: Callable[[], bool]) -> bool:
        """Add what the index lacks, until done or ``should_stop``; True once complete. Raises StateError."""
        ...


@runtime_checkable
class GrantStore(Protocol):
    """JIT state beside the sync state: grants, and point reads of what the sync state owns.

    Implemented by the same adapters as ``StateStore``, on the same file or table.
    """

    def owned_user(self, source_id: str) -> OwnedUser | None: ...

    def owned_group(self, source_id: str) -> OwnedGroup | None: ...

    def owned_for(self, group_id: str, user_ids: Sequence[str]) -> tuple[OwnedGroup | None, dict[str, OwnedUser]]:
        """The owned group and those of the users that are owned (by source id), read together (one request
        where the store can). Raises StateError."""
        ...

    def owned_memberships(self, group_source_id: str) -> dict[str, OwnedMembership]:
        """The group's owned memberships, by user source id."""
        ...

    def read_group(self, group_id: str, user_ids: Sequence[str]) -> GroupRecords:
        """What a run over one PIM group reads from the store: ``grants``, ``owned_memberships`` and ``owned_for``
        (the requests sent at once where the store can). Raises StateError, ValueError for a malformed grant."""
        ...

    def grants(self, group_id: str) -> dict[str, AccessGrant]:
        """The group's grants, by user id."""
        ...

    def grant(self, group_id: str, user_id: str) -> AccessGrant | None: ...

    def record_grant(self, grant: AccessGrant) -> None: ...

    def forget_grant(self, group_id: str, user_id: str) -> None: ...

    def append_logs_and_release(self, entries: Sequence[LogEntry], name: str, owner: str) -> None:
        """A lease holder's last write: ``StateStore.append_logs`` then ``StateStore.release_lease`` (one request
        where the store can). Raises ValueError, StateError."""
        ...

    def fenced(self, lease: str, owner: str) -> LeasedStore:
        """A view of this store whose every write is applied only while ``owner`` holds the lease ``lease``
        (expired or not, as ``StateStore.renew_lease`` has it), checked atomically with the write itself: once
        another owner took the lease over, the write changes nothing and raises LeaseLost. Reads and
        ``append_logs`` are the store's own."""
        ...


class LeasedStore(StateStore, GrantStore, Protocol):
    """The state store and grant store seen by one lease holder (``GrantStore.fenced``)."""


class ExpiryScheduler(Protocol):
    """One-time schedules that call the expiry function when a grant ends (EventBridge Scheduler)."""

    def set(self, group_id: str, user_id: str, end: datetime, previous: datetime | None = None) -> None:
        """Have the expiry fire at ``end`` (or within the scheduler's precision after it), and remove the
        one set for ``previous`` (a moved grant). Idempotent. Raises SchedulerError."""
        ...

    def clear(self, group_id: str, user_id: str, end: datetime) -> None:
        """Remove the expiry set for ``end``; one already gone is fine. Raises SchedulerError."""
        ...


class HintRetry(Protocol):
    """Puts a JIT hint back on its queue to be seen again later (SQS)."""

    def delay(self, receipt_handle: str, seconds: int) -> None:
        """Hide the received message for ``seconds`` (it comes back then). Raises QueueError."""
        ...

    def resend(self, hint: Hint, seconds: int) -> None:
        """Enqueue ``hint`` afresh, visible in ``seconds``. Raises QueueError."""
        ...


@dataclass(frozen=True, slots=True)
class GraphSubscription:
    """A Microsoft Graph change-notification subscription, as Graph lists it."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    expiration: datetime


class SubscriptionApi(Protocol):
    """Graph's /subscriptions."""

    def list(self) -> list[GraphSubscription]:
        """Every subscription this application holds. Raises DirectoryError."""
        ...

    def create(
        self,
        resource: str,
        change_type: str,
        notification_url: str,
        lifecycle_url: str | None,
        client_state: str,
        expiration: datetime,
    ) -> GraphSubscription:
        """Raises DirectoryError (Graph validates the URLs first and refuses when they do not answer)."""
        ...

    def renew(self, subscription_id: str, expiration: datetime) -> GraphSubscription:
        """Move the expiration. Raises DirectoryError (SubscriptionGone when it no longer exists)."""
        ...

    def delete(self, subscription_id: str) -> None:
        """Delete; one already gone is fine. Raises DirectoryError."""
        ...


# --------------------------------------------------------------------------- access as code (account assignments)


class RateBudget(Protocol):
    """A client-side budget of calls per second, shared by every caller of one service's API."""

    def acquire(self) -> None:
        """Block until one call may be made now."""
        ...

    def throttled(self) -> None:
        """The service answered a call with throttling: slow down (never fail a call)."""
        ...


@dataclass(frozen=True, slots=True)
class AssignmentStatus:
    """The state of one asynchronous CreateAccountAssignment / DeleteAccountAssignment request.

    ``status`` is IN_PROGRESS, SUCCEEDED or FAILED; ``reason`` is AWS's FailureReason when FAILED.
    """

    request_id: str
    status: str
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "IN_PROGRESS"


class AccountAccess(Protocol):
    """IAM Identity Center's account assignments (sso-admin) and AWS Organizations' accounts."""

    def permission_sets(self) -> dict[str, str]:
        """Every permission set of the instance: name -> ARN. Raises TargetError."""
        ...

    def accounts_under(self, parent_id: str) -> set[str]:
        """Ids of the ACTIVE accounts under an OU or root, recursively. Raises TargetNotFound, TargetError."""
        ...

    def accounts(self) -> set[str]:
        """Ids of every account of the organization. Raises TargetError."""
        ...

    def assignments(self, principal_id: str) -> set[tuple[str, str]]:
        """(permission set ARN, account id) of each assignment of a group. Raises TargetError."""
        ...

    def create(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        """Start creating an assignment (asynchronous). Raises TargetNotFound, TargetError."""
        ...

    def delete(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        """Start deleting an assignment. Raises TargetNotFound when it does not exist, TargetError."""
        ...

    def creation_status(self, request_id: str) -> AssignmentStatus: ...

    def deletion_status(self, request_id: str) -> AssignmentStatus: ...
