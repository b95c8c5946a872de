"""Access as code: which account assignments (group x permission set x account) IAM Identity Center should hold.

Pure: no I/O. The service resolves names (permission sets, organizational units) and reads what AWS
holds; this module decides what to create, adopt, remove and forget.

Ownership rule: idsync removes only assignments it recorded as its own (created, or adopted because
the file wanted them when idsync found them). A create is recorded *before* the call (``pending``), so
a crash between the call and the record never leaves an assignment idsync made but does not know.
Removals count toward a deletion guard with the same numbers as the sync's: above ``max_deletions``
or ``max_deletion_percent`` of the managed assignments, every removal is held back and named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from idsync.model import DeletionGuard, GuardThreshold


class How(StrEnum):
    """How idsync came to own an assignment."""

    CREATED = "created"
    ADOPTED = "adopted"
    PENDING = "pending"  # recorded before its create call; confirmed when the call succeeds


@dataclass(frozen=True, slots=True, order=True)
class Assignment:
    """One account assignment of a group, named by the group's Entra id and its Identity Store id."""

    group_source_id: str
    principal_id: str
    permission_set_arn: str
    account_id: str

    @property
    def key(self) -> str:
        """Stable name of the assignment in escrow and logs (independent of the principal id)."""
        return f"access:{self.group_source_id}:{self.permission_set_arn}:{self.account_id}"

    @property
    def target(self) -> tuple[str, str]:
        """(permission set ARN, account id): what AWS lists for a principal."""
        return (self.permission_set_arn, self.account_id)


@dataclass(frozen=True, slots=True)
class ResolvedEntry:
    """An ``access`` entry with its group, permission set and accounts resolved.

    ``group_source_id`` is None when the group is not in scope or not provisioned (yet); ``problem``
    says why an entry cannot be applied this cycle (its owned assignments are then kept as they are).
    """

    index: int
    group: str
    group_source_id: str | None
    principal_id: str | None
    permission_set: str
    permission_set_arn: str | None
    accounts: frozenset[str]
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    max_deletions: int = 500
    max_deletion_percent: float = 20.0
    allow_deletions: bool = False
    hold_removals: bool = False  # the sync's own guard tripped this cycle: remove nothing


@dataclass(frozen=True, slots=True)
class AccessGuard(DeletionGuard):
    """Why assignment removals were held back (``deletions`` counts the removals)."""

    @property
    def message(self) -> str:
        percent = 100.0 * self.deletions / self.managed if self.managed else 100.0
        return (
            f"deletion guard: this cycle would remove {self.deletions} of {self.managed} managed account "
            f"assignments ({percent:.1f}%), above the limit of {self.max_deletions} or {self.max_percent:g}%; "
            "no assignment was removed. Check the source directory and the access section, then raise the "
            "limits or run `idsync sync --allow-deletions` once."
        )


@dataclass(frozen=True, slots=True)
class AccessPlan:
    creates: tuple[Assignment, ...] = ()
    adopts: tuple[Assignment, ...] = ()
    removes: tuple[Assignment, ...] = ()
    forgets: tuple[Assignment, ...] = ()  # owned, unwanted, and already gone from AWS: no call
    held_back: tuple[Assignment, ...] = ()
    guard: AccessGuard | None = None
    problems: tuple[str, ...] = ()

    @property
    def writes(self) -> int:
        return len(self.creates) + len(self.removes)


def resolve_group(key: str, groups: Mapping[str, str]) -> str | None:
    """The Entra id of the group ``key`` names (an object id, or a displayName), among ``groups``
    (source id -> displayName); None when no group in scope has it."""
    if key in groups:
        return key
    matches = sorted(source_id for source_id, name in groups.items() if name == key)
    return matches[0] if len(matches) == 1 else None


def desired(entries: Iterable[ResolvedEntry]) -> frozenset[Assignment]:
    """Every assignment the applicable entries want."""
    out: set[Assignment] = set()
    for entry in entries:
        if entry.problem or entry.group_source_id is None or not entry.principal_id or not entry.permission_set_arn:
            continue
        for account in entry.accounts:
            out.add(Assignment(entry.group_source_id, entry.principal_id, entry.permission_set_arn, account))
    return frozenset(out)


def kept_groups(entries: Iterable[ResolvedEntry], in_scope: Iterable[str]) -> frozenset[str]:
    """Groups whose owned assignments must stay untouched: an entry of theirs could not be applied
    this cycle (unknown permission set, OU unreadable, group in scope but not provisioned yet)."""
    scope = set(in_scope)
    return frozenset(
        e.group_source_id
        for e in entries
        if e.group_source_id is not None and e.group_source_id in scope and (e.problem or not e.principal_id)
    )


def groups_to_read(
    wanted: frozenset[Assignment], owned: Mapping[Assignment, How], full: bool
) -> frozenset[tuple[str, str]]:
    """(group source id, principal id) pairs whose assignments must be read from AWS before planning:
    all of them on a full cycle; otherwise only those with an assignment idsync does not own yet
    (it may exist already and must then be adopted, never claimed as created)."""
    if full:
        pairs = {(a.group_source_id, a.principal_id) for a in wanted}
        pairs |= {(a.group_source_id, a.principal_id) for a in owned}
        return frozenset(pairs)
    return frozenset((a.group_source_id, a.principal_id) for a in wanted if a not in owned)


def make_access_plan(
    wanted: frozenset[Assignment],
    owned: Mapping[Assignment, How],
    existing: Mapping[str, frozenset[tuple[str, str]]],
    kept: frozenset[str],
    policy: AccessPolicy,
    problems: Sequence[str] = (),
) -> AccessPlan:
    """Diff what the file wants against what idsync owns and what AWS holds. Pure and deterministic.

    ``existing`` maps a principal id to the (permission set, account) pairs AWS holds for it; a
    principal absent from it was not read this cycle (idsync's record is trusted). Every unowned
    wanted assignment must have its principal read. Raises ValueError when one was not.
    """
    creates: list[Assignment] = []
    adopts: list[Assignment] = []
    for item in sorted(wanted):
        held = existing.get(item.principal_id)
        how = owned.get(item)
        if how is None:
            if held is None:
                raise ValueError(f"assignment {item.key}: principal {item.principal_id} was not read")
            (adopts if item.target in held else creates).append(item)
        elif how is How.PENDING or (held is not None and item.target not in held):
            creates.append(item)  # an unconfirmed create, or one removed by hand: make it (again)
    removes: list[Assignment] = []
    forgets: list[Assignment] = []
    for item in sorted(owned):
        if item in wanted or item.group_source_id in kept:
            continue
        held = existing.get(item.principal_id)
        (forgets if held is not None and item.target not in held else removes).append(item)
    guard = _guard(len(removes), len(owned), policy)
    held_back: list[Assignment] = []
    if guard is not None or (policy.hold_removals and not policy.allow_deletions):
        held_back, removes = removes, []
    return AccessPlan(
        creates=tuple(creates),
        adopts=tuple(adopts),
        removes=tuple(removes),
        forgets=tuple(forgets),
        held_back=tuple(held_back),
        guard=guard,
        problems=tuple(problems),
    )


def _guard(removals: int, managed: int, policy: AccessPolicy) -> AccessGuard | None:
    if policy.allow_deletions or removals == 0:
        return None
    if removals > policy.max_deletions or (managed > 0 and 100.0 * removals / managed > policy.max_deletion_percent):
        return AccessGuard(
            removals,
            managed,
            policy.max_deletions,
            policy.max_deletion_percent,
            tripped=(GuardThreshold.DELETIONS,),
        )
    return None


@dataclass(frozen=True, slots=True)
class OwnedRecord:
    """One owned assignment as stored (a state item per group holds a list of these)."""

    assignment: Assignment
    how: How

    def to_document(self) -> dict[str, str]:
        a = self.assignment
        return {"principal": a.principal_id, "ps": a.permission_set_arn, "account": a.account_id, "how": self.how.value}

    @classmethod
    def from_document(cls, group_source_id: str, document: Mapping[str, object]) -> OwnedRecord:
        """Read a stored record. Raises ValueError naming the attribute that is missing or malformed."""
        try:
            assignment = Assignment(
                group_source_id, str(document["principal"]), str(document["ps"]), str(document["account"])
            )
            return cls(assignment, How(str(document["how"])))
        except KeyError as missing:
            raise ValueError(f"owned assignment of group {group_source_id}: attribute {missing} is missing") from None
        except ValueError:
            raise ValueError(
                f"owned assignment of group {group_source_id}: attribute how must be one of "
                f"{', '.join(h.value for h in How)}"
            ) from None


@dataclass
class OwnedAssignments:
    """What idsync owns, by group; ``changed`` names the groups whose record must be written."""

    by_group: dict[str, dict[Assignment, How]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def flat(self) -> dict[Assignment, How]:
        return {a: how for group in self.by_group.values() for a, how in group.items()}

    def set(self, assignment: Assignment, how: How) -> None:
        self.by_group.setdefault(assignment.group_source_id, {})[assignment] = how
        self.changed.add(assignment.group_source_id)

    def drop(self, assignment: Assignment) -> None:
        group = self.by_group.get(assignment.group_source_id, {})
        if group.pop(assignment, None) is not None:
            self.changed.add(assignment.group_source_id)
