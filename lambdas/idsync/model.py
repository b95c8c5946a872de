"""Domain types of idsync: what Entra holds, what IAM Identity Center holds, and what to do about it.

Pure: no I/O, no boto3, no HTTP, no environment. Every type is immutable.

Attribute documents (``UserDoc``) use the Identity Store API's own shapes and key names
(``DisplayName``, ``Name`` {``GivenName`` ...}, ``Emails`` [{``Value``, ``Type``, ``Primary``}],
``Extensions`` {``aws:identitystore:enterprise``: {...}}), so the target adapter passes them on
unchanged and a diff speaks the target's language. ``UserName`` is kept outside the document.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

JsonValue = Any
UserDoc = Mapping[str, JsonValue]

ENTERPRISE_EXTENSION = "aws:identitystore:enterprise"


def canonical_json(value: JsonValue) -> str:
    """The one serialisation used for hashing and comparing documents."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(value: JsonValue) -> str:
    """A short stable hash of a JSON-like value (decides "changed" between cycles)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:32]


def freeze_doc(doc: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """Copy a document without empty values, so that absent and empty compare equal."""
    out: dict[str, JsonValue] = {}
    for key in sorted(doc):
        value = _prune(doc[key])
        if value is not None:
            out[key] = value
    return out


def _prune(value: JsonValue) -> JsonValue:
    if isinstance(value, Mapping):
        inner = {k: _prune(v) for k, v in value.items()}
        inner = {k: v for k, v in inner.items() if v is not None}
        return inner or None
    if isinstance(value, list | tuple):
        items = [v for v in (_prune(v) for v in value) if v is not None]
        return items or None
    if value == "":
        return None
    return value


# --------------------------------------------------------------------------- desired (Entra side)


@dataclass(frozen=True, slots=True)
class User:
    """A user as idsync wants IAM Identity Center to hold it (mapped from Entra)."""

    source_id: str
    user_name: str
    doc: UserDoc
    manager_source_id: str | None = None
    active: bool = True  # False: disabled or soft-deleted in Entra, to be deprovisioned

    def fingerprint(self) -> str:
        return content_hash({"u": self.user_name, "d": self.doc, "m": self.manager_source_id})


@dataclass(frozen=True, slots=True)
class Group:
    """A group as idsync wants IAM Identity Center to hold it."""

    source_id: str
    display_name: str
    description: str | None = None

    def fingerprint(self) -> str:
        return content_hash({"n": self.display_name, "d": self.description})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An Entra object that cannot be provisioned, and exactly why."""

    kind: str  # "user" | "group"
    source_id: str
    name: str
    attribute: str
    rule: str
    value: str | None = None

    @property
    def message(self) -> str:
        shown = f" (value {self.value!r})" if self.value is not None else ""
        return f"{self.kind} {self.name} [{self.source_id}]: attribute {self.attribute}{shown}: {self.rule}"


@dataclass(frozen=True, slots=True)
class DesiredView:
    """The mapped, in-scope Entra view: what IAM Identity Center should hold."""

    users: Mapping[str, User]
    groups: Mapping[str, Group]
    memberships: frozenset[tuple[str, str]]  # (group source id, user source id)
    refusals: tuple[Refusal, ...] = ()
    out_of_scope: frozenset[str] = frozenset()  # users alive in Entra but outside the scope
    retained: frozenset[str] = frozenset()  # users and groups soft-deleted in Entra, within the grace period


# --------------------------------------------------------------------------- current (AWS side)


@dataclass(frozen=True, slots=True)
class TargetUser:
    """A user as IAM Identity Center holds it."""

    target_id: str
    user_name: str
    doc: UserDoc
    manager_target_id: str | None = None


@dataclass(frozen=True, slots=True)
class TargetGroup:
    target_id: str
    display_name: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CurrentView:
    """What IAM Identity Center holds (read live, or as recorded in state on a delta cycle)."""

    users: Mapping[str, TargetUser]  # by target id
    groups: Mapping[str, TargetGroup]  # by target id
    memberships: Mapping[tuple[str, str], str]  # (group target id, user target id) -> membership id


# --------------------------------------------------------------------------- ownership (state)


@dataclass(frozen=True, slots=True)
class OwnedUser:
    """A user idsync created or adopted: the only kind it will ever update or delete."""

    source_id: str
    target_id: str
    user_name: str
    doc: UserDoc
    manager_source_id: str | None = None
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class OwnedGroup:
    source_id: str
    target_id: str
    display_name: str
    description: str | None = None
    fingerprint: str = ""


@dataclass(frozen=True, slots=True)
class OwnedMembership:
    group_source_id: str
    user_source_id: str
    membership_id: str


@dataclass(frozen=True, slots=True)
class Ownership:
    """Everything idsync has recorded as its own."""

    users: Mapping[str, OwnedUser] = field(default_factory=dict)  # by source id
    groups: Mapping[str, OwnedGroup] = field(default_factory=dict)  # by source id
    memberships: Mapping[tuple[str, str], OwnedMembership] = field(default_factory=dict)

    def user_target(self, source_id: str) -> str | None:
        owned = self.users.get(source_id)
        return owned.target_id if owned else None

    def group_target(self, source_id: str) -> str | None:
        owned = self.groups.get(source_id)
        return owned.target_id if owned else None


# --------------------------------------------------------------------------- operations


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    ADOPT = "adopt"
    SKIP = "skip"


class Kind(StrEnum):
    USER = "user"
    GROUP = "group"
    MEMBERSHIP = "membership"


@dataclass(frozen=True, slots=True)
class AttributeChange:
    """One top-level attribute (Identity Store key) going from old to new; new None clears it."""

    attribute: str
    old: JsonValue
    new: JsonValue


@dataclass(frozen=True, slots=True)
class Operation:
    """One write (or adoption) against IAM Identity Center, named by source ids.

    Target ids that do not exist yet at plan time (a user created earlier in the same plan)
    are resolved by the applier through the ownership it records as it goes.
    """

    kind: Kind
    action: Action
    source_id: str  # user or group source id; for memberships the group source id
    name: str  # userName, displayName, or "group <- user" for memberships
    target_id: str | None = None
    changes: tuple[AttributeChange, ...] = ()
    user: User | None = None
    group: Group | None = None
    member_source_id: str | None = None  # memberships only
    membership_id: str | None = None  # membership deletes only
    reason: str = ""

    @property
    def is_write(self) -> bool:
        return self.action in (Action.CREATE, Action.UPDATE, Action.DELETE)

    @property
    def key(self) -> str:
        if self.kind is Kind.MEMBERSHIP:
            return f"membership:{self.source_id}:{self.member_source_id}"
        return f"{self.kind.value}:{self.source_id}"


class GuardThreshold(StrEnum):
    """Which of the deletion guard's thresholds a plan crossed."""

    DELETIONS = "deletions"  # users and groups: Entra's own threshold, a count and a percentage
    MEMBERSHIP_REMOVALS = "membership_removals"  # a percentage of managed memberships, with a floor
    EMPTIED_GROUPS = "emptied_groups"  # a group Entra still lists losing every managed member


@dataclass(frozen=True, slots=True)
class DeletionGuard:
    """Why a cycle's deletions were held back (None on the plan when nothing tripped).

    ``held_back`` counts every operation held back, membership removals included: it is the
    number of operations ``Plan.held_back`` names. ``removals`` counts every membership removal;
    ``counted_removals`` only those the membership threshold weighs (a membership removed because its
    user or group is deleted counts under that deletion). ``tripped`` names the thresholds crossed and
    ``emptied_groups`` the groups (display names) that would lose every managed member.
    """

    deletions: int  # users and groups
    managed: int
    max_deletions: int
    max_percent: float
    removals: int = 0  # memberships
    managed_memberships: int = 0
    counted_removals: int = 0
    removal_floor: int = 0
    removal_percent: float = 0.0
    empty_group_min: int = 0
    emptied_groups: tuple[str, ...] = ()
    tripped: tuple[GuardThreshold, ...] = ()

    @property
    def held_back(self) -> int:
        return self.deletions + self.removals

    @property
    def removal_limit(self) -> float:
        """The most membership removals a cycle may make: the percentage of managed ones, at least the floor."""
        return max(float(self.removal_floor), self.removal_percent * self.managed_memberships / 100.0)

    def reasons(self) -> list[str]:
        """One sentence per threshold crossed."""
        out: list[str] = []
        if GuardThreshold.DELETIONS in self.tripped:
            out.append(
                f"{self.deletions} user and group deletions are above the limit of {self.max_deletions} "
                f"or {self.max_percent:g}% of the managed ones"
            )
        if GuardThreshold.MEMBERSHIP_REMOVALS in self.tripped:
            share = 100.0 * self.counted_removals / self.managed_memberships if self.managed_memberships else 100.0
            out.append(
                f"{self.counted_removals} membership removals ({share:.1f}% of the managed ones) are above the "
                f"limit of {self.removal_percent:g}% of them, at least {self.removal_floor}"
            )
        if GuardThreshold.EMPTIED_GROUPS in self.tripped:
            out.append(
                f"{len(self.emptied_groups)} group(s) Entra still lists would lose all their managed members "
                f"(at least {self.empty_group_min} each), which is what an empty read of a group looks like: "
                + ", ".join(self.emptied_groups)
            )
        return out

    @property
    def message(self) -> str:
        percent = 100.0 * self.deletions / self.managed if self.managed else 100.0
        share = 100.0 * self.removals / self.managed_memberships if self.managed_memberships else 100.0
        removals = (
            f" and remove {self.removals} of {self.managed_memberships} managed memberships ({share:.1f}%)"
            if self.removals
            else ""
        )
        return (
            f"deletion guard: this cycle would delete {self.deletions} of {self.managed} managed objects "
            f"({percent:.1f}%){removals}: {'; '.join(self.reasons())}; "
            f"none of these {self.held_back} deletions was applied (`idsync plan` names each). Check the source "
            "directory, then raise the limits or run `idsync sync --allow-deletions` once."
        )

    def as_dict(self) -> dict[str, Any]:
        """The guard's numbers for JSON output: what tripped, the counts, the limits, the emptied groups."""
        return {
            "tripped": [t.value for t in self.tripped],
            "deletions": self.deletions,
            "managed": self.managed,
            "maxDeletions": self.max_deletions,
            "maxDeletionPercent": self.max_percent,
            "membershipRemovals": self.removals,
            "countedMembershipRemovals": self.counted_removals,
            "managedMemberships": self.managed_memberships,
            "membershipRemovalFloor": self.removal_floor,
            "maxMembershipRemovalPercent": self.removal_percent,
            "emptyGroupMinMemberships": self.empty_group_min,
            "emptiedGroups": list(self.emptied_groups),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """Ordered operations: users, managers, groups, memberships added, memberships removed,
    groups deleted, users deleted. ``held_back`` holds deletions stopped by the guard."""

    operations: tuple[Operation, ...]
    refusals: tuple[Refusal, ...] = ()
    held_back: tuple[Operation, ...] = ()
    guard: DeletionGuard | None = None

    @property
    def writes(self) -> int:
        return sum(1 for op in self.operations if op.is_write)

    def count(self, kind: Kind, action: Action) -> int:
        return sum(1 for op in self.operations if op.kind is kind and op.action is action)

    def summary(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for op in self.operations:
            bucket = out.setdefault(op.kind.value, {})
            bucket[op.action.value] = bucket.get(op.action.value, 0) + 1
        return out


class DeprovisionMode(StrEnum):
    """What happens in IAM Identity Center to a user who leaves scope or is disabled in Entra."""

    DELETE = "delete"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class PlanPolicy:
    deprovision: DeprovisionMode = DeprovisionMode.DELETE
    delete_groups: bool = True
    max_deletions: int = 500
    max_deletion_percent: float = 20.0
    # membership removals weigh against managed memberships, never below the floor (README: "Deletion guard")
    max_membership_removal_percent: float = 5.0
    membership_removal_floor: int = 500
    empty_group_min_memberships: int = 10  # 0: an emptied group alone never trips the guard
    allow_deletions: bool = False  # an operator's one-off override of the guard
    skip_out_of_scope_deletions: bool = False  # keep users who merely left the scope (Entra's option)
    managed_attributes: frozenset[str] = frozenset()  # doc keys idsync owns; others are left alone
    create_only_attributes: frozenset[str] = frozenset()  # doc keys set on create, never updated


# --------------------------------------------------------------------------- provisioning log and runs


class Status(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One provisioning log entry: one object, one action, one outcome (Entra's shape)."""

    cycle_id: str
    change_id: str
    time: str  # ISO 8601 UTC
    kind: str
    action: str
    status: Status
    source_id: str
    name: str
    target_id: str | None = None
    modified: tuple[AttributeChange, ...] = ()
    error: str | None = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, JsonValue]:
        return {
            "cycleId": self.cycle_id,
            "changeId": self.change_id,
            "activityDateTime": self.time,
            "kind": self.kind,
            "action": self.action,
            "status": self.status.value,
            "sourceIdentity": self.source_id,
            "name": self.name,
            "targetIdentity": self.target_id,
            "modifiedProperties": [
                {"attribute": c.attribute, "oldValue": c.old, "newValue": c.new} for c in self.modified
            ],
            "error": self.error,
            "durationMs": round(self.duration_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class CycleReport:
    """What one cycle did, for the CLI, the logs and the metrics."""

    cycle_id: str
    started: str
    finished: str
    dry_run: bool
    counts: Mapping[str, Mapping[str, int]]  # kind -> action -> applied count
    failures: tuple[LogEntry, ...]
    refusals: tuple[Refusal, ...]
    guard: DeletionGuard | None
    writes: int
    complete: bool = True  # False when stopped at a checkpoint (time budget)

    @property
    def ok(self) -> bool:
        return not self.failures and self.guard is None
