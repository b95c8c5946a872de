"""The planner: a pure diff from what Entra says (desired) to what IAM Identity Center holds (current).

``make_plan(desired, current, owned, policy)`` returns ordered operations:

1. users created (managers before the people who report to them), adopted, updated;
2. groups created, adopted, updated;
3. memberships added (or adopted when already present);
4. memberships removed;
5. groups deleted;
6. users deleted.

Laws (each has a property test): applying the plan to ``current`` yields ``desired`` for everything
idsync owns (convergence); planning again after that yields no writes (idempotence); objects that
idsync neither created nor adopted are never updated or deleted (ownership); a plan that would
delete more than the policy allows holds every deletion back (deletion guard); an object idsync
manages keeps its contested name (the incumbent wins); objects Entra can still restore
(``DesiredView.retained``) lose their memberships but are never deleted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from idsync.expressions import is_soft_deleted
from idsync.model import (
    ENTERPRISE_EXTENSION,
    Action,
    AttributeChange,
    CurrentView,
    DeletionGuard,
    DeprovisionMode,
    DesiredView,
    Group,
    GuardThreshold,
    JsonValue,
    Kind,
    Operation,
    Ownership,
    Plan,
    PlanPolicy,
    Refusal,
    TargetGroup,
    TargetUser,
    User,
    UserDoc,
    canonical_json,
    freeze_doc,
)

USER_NAME = "UserName"
DISPLAY_NAME = "DisplayName"
DESCRIPTION = "Description"
EXTENSIONS = "Extensions"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A reference to a user by Entra id whose Identity Store id is only known once it is created."""

    source_id: str

    def __str__(self) -> str:
        return f"source:{self.source_id}"


def with_manager(doc: UserDoc, manager: str | SourceRef | None) -> dict[str, JsonValue]:
    """The document with the enterprise extension's manager set (or removed when None)."""
    out = dict(doc)
    extensions = dict(out.get(EXTENSIONS) or {})
    enterprise = dict(extensions.get(ENTERPRISE_EXTENSION) or {})
    enterprise.pop("manager", None)
    if manager is not None:
        enterprise["manager"] = {"value": manager}
    if enterprise:
        extensions[ENTERPRISE_EXTENSION] = enterprise
    else:
        extensions.pop(ENTERPRISE_EXTENSION, None)
    if extensions:
        out[EXTENSIONS] = extensions
    else:
        out.pop(EXTENSIONS, None)
    return freeze_doc(out)


def resolve_refs(value: JsonValue, targets: Mapping[str, str]) -> JsonValue:
    """Replace SourceRef markers by Identity Store ids; an unknown reference drops its manager."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if key == "manager" and isinstance(item, Mapping) and isinstance(item.get("value"), SourceRef):
                target = targets.get(item["value"].source_id)
                if target is not None:
                    out[key] = {"value": target}
                continue
            out[key] = resolve_refs(item, targets)
        return out
    if isinstance(value, list | tuple):
        return [resolve_refs(v, targets) for v in value]
    return value


def _same(a: JsonValue, b: JsonValue) -> bool:
    return canonical_json(a) == canonical_json(b)


def diff_user(
    desired_name: str,
    desired_doc: UserDoc,
    current: TargetUser,
    current_doc: UserDoc,
    managed: Iterable[str],
    create_only: frozenset[str],
) -> tuple[AttributeChange, ...]:
    """The attribute changes that turn ``current`` into the desired user (managed keys only)."""
    changes: list[AttributeChange] = []
    if desired_name != current.user_name:
        changes.append(AttributeChange(USER_NAME, current.user_name, desired_name))
    for key in sorted(set(managed)):
        if key in create_only:
            continue
        old = current_doc.get(key)
        new = desired_doc.get(key)
        if not _same(old, new):
            changes.append(AttributeChange(key, old, new))
    return tuple(changes)


def _diff_group(desired: Group, current: TargetGroup) -> tuple[AttributeChange, ...]:
    changes: list[AttributeChange] = []
    if desired.display_name != current.display_name:
        changes.append(AttributeChange(DISPLAY_NAME, current.display_name, desired.display_name))
    if (desired.description or None) != (current.description or None):
        changes.append(AttributeChange(DESCRIPTION, current.description, desired.description))
    return tuple(changes)


def _manager_first(users: list[User]) -> list[User]:
    """Order new users so that a manager is created before the people who report to them."""
    by_id = {u.source_id: u for u in users}
    done: set[str] = set()
    ordered: list[User] = []
    for user in users:
        chain: list[User] = []
        seen: set[str] = set()
        walker: User | None = user
        # walk up the management chain until a manager that is placed, absent, or a cycle
        while walker is not None and walker.source_id not in done and walker.source_id not in seen:
            chain.append(walker)
            seen.add(walker.source_id)
            walker = by_id.get(walker.manager_source_id or "")
        for placed in reversed(chain):
            done.add(placed.source_id)
            ordered.append(placed)
    return ordered


class _UserPlanner:
    def __init__(self, desired: DesiredView, current: CurrentView, owned: Ownership, policy: PlanPolicy):
        self.desired = desired
        self.current = current
        self.owned = owned
        self.policy = policy
        self.refusals: list[Refusal] = []
        # source id -> target id for every user idsync will own after this plan (created ones excluded)
        self.targets: dict[str, str] = {sid: o.target_id for sid, o in owned.users.items()}
        self.creating: set[str] = set()
        # managed users refused a new userName: they keep the one they hold, and all their other changes
        self.kept: set[str] = set()

    def manager_value(self, user: User) -> str | SourceRef | None:
        if not user.manager_source_id:
            return None
        target = self.targets.get(user.manager_source_id)
        if target is not None:
            return target
        if user.manager_source_id in self.creating:
            return SourceRef(user.manager_source_id)
        return None

    def run(self) -> tuple[list[Operation], list[Operation], list[Operation]]:
        creates: list[User] = []
        adopts: list[Operation] = []
        updates: list[tuple[User, TargetUser, UserDoc]] = []
        owned_targets = {o.target_id for o in self.owned.users.values()}
        free_by_name: dict[str, TargetUser] = {}
        for target in self.current.users.values():
            if target.target_id not in owned_targets:
                free_by_name.setdefault(target.user_name.casefold(), target)
        taken_names: dict[str, str] = {}
        for refusal in self.desired.refusals:
            # a managed user refused for its data keeps the userName it holds: a newcomer cannot take it
            mine = self.owned.users.get(refusal.source_id) if refusal.kind == "user" else None
            holding = self.current.users.get(mine.target_id) if mine is not None else None
            if holding is not None:
                taken_names.setdefault(holding.user_name.casefold(), refusal.source_id)
        live = {sid for sid, u in self.desired.users.items() if u.active}
        if self.policy.deprovision is DeprovisionMode.KEEP:
            live |= set(self.owned.users)  # kept users stay valid manager references
        for sid in sorted(self.desired.users, key=self._claim_order):
            user = self.desired.users[sid]
            if not user.active:
                continue
            if user.manager_source_id is not None and user.manager_source_id not in live:
                # a manager who is not provisioned cannot be referenced
                user = replace(user, manager_source_id=None)
            folded = user.user_name.casefold()
            if folded in taken_names:
                incumbent = taken_names[folded]
                held = " (which idsync already manages)" if incumbent in self.owned.users else ""
                self.refusals.append(
                    Refusal(
                        "user",
                        sid,
                        user.user_name,
                        "userName",
                        f"is also the userName of Entra user {incumbent}{held}; userNames must be unique in "
                        f"IAM Identity Center, compared without regard to case, and {incumbent} keeps it",
                        user.user_name,
                    )
                )
                self._keep_held_name(user, taken_names, updates)
                continue
            taken_names[folded] = sid
            owned = self.owned.users.get(sid)
            if owned is not None and owned.target_id in self.current.users:
                target = self.current.users[owned.target_id]
                updates.append((user, target, self._current_doc(target)))
                continue
            match = free_by_name.pop(folded, None)
            if match is not None and owned is None:
                self.targets[sid] = match.target_id
                adopts.append(
                    Operation(
                        Kind.USER,
                        Action.ADOPT,
                        sid,
                        user.user_name,
                        target_id=match.target_id,
                        user=user,
                        reason=f"matched on userName {match.user_name!r}",
                    )
                )
                updates.append((user, match, self._current_doc(match)))
                continue
            creates.append(user)
            self.creating.add(sid)
        create_ops = [
            Operation(
                Kind.USER,
                Action.CREATE,
                u.source_id,
                u.user_name,
                user=u,
                reason="missing in IAM Identity Center" if u.source_id in self.owned.users else "new in scope",
            )
            for u in _manager_first(creates)
        ]
        update_ops: list[Operation] = []
        for user, target, current_doc in updates:
            desired_doc = with_manager(user.doc, self.manager_value(user))
            managed = set(self.policy.managed_attributes) | set(desired_doc) | {EXTENSIONS}
            changes = diff_user(
                user.user_name, desired_doc, target, current_doc, managed, self.policy.create_only_attributes
            )
            if changes:
                update_ops.append(
                    Operation(
                        Kind.USER,
                        Action.UPDATE,
                        user.source_id,
                        user.user_name,
                        target_id=target.target_id,
                        changes=changes,
                        user=user,
                    )
                )
        update_ops += self._park_retained_names(taken_names)
        names = {t: u.user_name for t, u in self.current.users.items()}
        renames, update_ops = _order_renames(update_ops, names, case_blind=True)
        # creates that need a name a rename frees come after the renames
        return renames + create_ops, adopts, update_ops

    def _keep_held_name(
        self, user: User, taken: dict[str, str], updates: list[tuple[User, TargetUser, UserDoc]]
    ) -> None:
        """A managed user refused a new userName goes on under the userName it holds (unless another took it)."""
        owned = self.owned.users.get(user.source_id)
        target = self.current.users.get(owned.target_id) if owned is not None else None
        if target is None or target.user_name.casefold() in taken:
            return
        taken[target.user_name.casefold()] = user.source_id
        self.kept.add(user.source_id)
        updates.append((replace(user, user_name=target.user_name), target, self._current_doc(target)))

    def _park_retained_names(self, taken: Mapping[str, str]) -> list[Operation]:
        """Renames to a temporary name of managed users that stay or wait for deletion (restorable,
        disabled, out of scope, refused) whose userName a live user now takes."""
        ops = []
        for sid in sorted(set(self.owned.users) - set(taken.values())):
            owned = self.owned.users[sid]
            target = self.current.users.get(owned.target_id)
            if target is None or taken.get(target.user_name.casefold(), sid) == sid:
                continue
            parked = f"{TEMPORARY_NAME_PREFIX}{sid}"
            user = User(sid, parked, owned.doc, owned.manager_source_id, active=False)
            change = AttributeChange(USER_NAME, target.user_name, parked)
            reason = "its userName is now another Entra user's"
            ops.append(
                Operation(Kind.USER, Action.UPDATE, sid, parked, owned.target_id, (change,), user, reason=reason)
            )
        return ops

    def _claim_order(self, sid: str) -> tuple[int, str]:
        """Who gets a contested userName first: the user holding it already, then managed users, then others."""
        owned = self.owned.users.get(sid)
        if owned is None:
            return 2, sid
        return (0 if owned.user_name.casefold() == self.desired.users[sid].user_name.casefold() else 1), sid

    @staticmethod
    def _current_doc(target: TargetUser) -> UserDoc:
        return with_manager(target.doc, target.manager_target_id)

    def deletions(self, refused: set[str]) -> list[Operation]:
        if self.policy.deprovision is DeprovisionMode.KEEP:
            return []
        ops = []
        for sid in sorted(self.owned.users):
            user = self.desired.users.get(sid)
            if (user is not None and user.active) or sid in refused or sid in self.desired.retained:
                continue
            if user is None and self.policy.skip_out_of_scope_deletions and sid in self.desired.out_of_scope:
                continue
            owned = self.owned.users[sid]
            reason = "disabled in Entra" if user is not None else "no longer in scope (or deleted) in Entra"
            ops.append(
                Operation(Kind.USER, Action.DELETE, sid, owned.user_name, target_id=owned.target_id, reason=reason)
            )
        return ops


TEMPORARY_NAME_PREFIX = "idsync-renaming-"


def _order_renames(
    updates: list[Operation], names: Mapping[str, str], case_blind: bool
) -> tuple[list[Operation], list[Operation]]:
    """(renames, other updates): every userName (users, compared without regard to case) or displayName
    (groups) change as its own operation, ordered so that each name is freed before it is taken; a cycle
    of renames (a swap) goes through a temporary name.

    ``names``: target id -> the name it holds now; ``case_blind``: names compare without regard to case.
    Law: applying the renames in order to ``names`` never asks for a name another of them still holds.
    """

    def fold(name: str) -> str:
        return name.casefold() if case_blind else name

    holder = {fold(name): t for t, name in names.items()}
    pending: dict[str, tuple[Operation, str, str]] = {}  # target id -> (op, old name, new name)
    rest: list[Operation] = []
    for op in updates:
        attribute = DISPLAY_NAME if op.kind is Kind.GROUP else USER_NAME
        rename = next((c for c in op.changes if c.attribute == attribute), None)
        if rename is None:
            rest.append(op)
            continue
        assert op.target_id is not None
        pending[op.target_id] = (op, str(rename.old), str(rename.new))
        others = tuple(c for c in op.changes if c.attribute != attribute)
        if others:
            rest.append(replace(op, changes=others))
    ordered: list[Operation] = []

    def emit(target_id: str, op: Operation, old: str, new: str, temporary: bool) -> None:
        if op.kind is Kind.GROUP:
            assert op.group is not None
            group = replace(op.group, display_name=new) if temporary else op.group
            ordered.append(replace(op, name=new, changes=(AttributeChange(DISPLAY_NAME, old, new),), group=group))
        else:
            assert op.user is not None
            user = replace(op.user, user_name=new) if temporary else op.user
            ordered.append(replace(op, name=new, changes=(AttributeChange(USER_NAME, old, new),), user=user))
        if holder.get(fold(old)) == target_id:
            del holder[fold(old)]
        holder[fold(new)] = target_id

    while pending:
        ready = [
            t for t, (_, _, new) in pending.items() if holder.get(fold(new), t) == t or holder[fold(new)] not in pending
        ]
        if ready:
            for target_id in sorted(ready, key=lambda t: pending[t][0].source_id):
                op, old, new = pending.pop(target_id)
                emit(target_id, op, old, new, temporary=False)
            continue
        # every remaining rename waits on another: free one name through a temporary one
        target_id = min(pending, key=lambda t: pending[t][0].source_id)
        op, old, new = pending[target_id]
        temporary = f"{TEMPORARY_NAME_PREFIX}{op.source_id}"
        emit(target_id, op, old, temporary, temporary=True)
        pending[target_id] = (op, temporary, new)
    return ordered, rest


def _plan_groups(
    desired: DesiredView, current: CurrentView, owned: Ownership, policy: PlanPolicy, refused: set[str]
) -> tuple[list[Operation], list[Operation], dict[str, str], list[Refusal], set[str]]:
    """(creates and updates, deletions, source id -> target id, refusals, refused groups left out of the plan).

    A managed group refused a new displayName goes on under the displayName it holds: it is not left out."""
    ops: list[Operation] = []
    refusals: list[Refusal] = []
    targets = {sid: o.target_id for sid, o in owned.groups.items()}
    owned_targets = set(targets.values())
    free_by_name: dict[str, TargetGroup] = {}
    for target in current.groups.values():
        if target.target_id not in owned_targets:
            free_by_name.setdefault(target.display_name, target)
    taken: dict[str, str] = {}
    creates: list[Operation] = []
    left_out: set[str] = set()

    def claim_order(sid: str) -> tuple[int, str]:
        # the group holding a contested displayName keeps it, then managed groups, then newcomers
        mine = owned.groups.get(sid)
        if mine is None:
            return 2, sid
        return (0 if mine.display_name == desired.groups[sid].display_name else 1), sid

    for sid in sorted(desired.groups, key=claim_order):
        group = desired.groups[sid]
        if group.display_name in taken:
            incumbent = taken[group.display_name]
            managed = " (which idsync already manages)" if incumbent in owned.groups else ""
            refusals.append(
                Refusal(
                    "group",
                    sid,
                    group.display_name,
                    "displayName",
                    f"is also the displayName of Entra group {incumbent}{managed}; displayNames must be unique in "
                    f"IAM Identity Center, and {incumbent} keeps it",
                    group.display_name,
                )
            )
            mine = owned.groups.get(sid)
            held_now = current.groups.get(mine.target_id) if mine is not None else None
            if held_now is None or held_now.display_name in taken:
                left_out.add(sid)
                continue
            group = replace(group, display_name=held_now.display_name)
        taken[group.display_name] = sid
        mine = owned.groups.get(sid)
        held: TargetGroup | None = None
        if mine is not None and mine.target_id in current.groups:
            held = current.groups[mine.target_id]
        elif mine is None and (match := free_by_name.pop(group.display_name, None)) is not None:
            targets[sid] = match.target_id
            reason = f"matched on displayName {match.display_name!r}"
            ops.append(
                Operation(
                    Kind.GROUP,
                    Action.ADOPT,
                    sid,
                    group.display_name,
                    target_id=match.target_id,
                    group=group,
                    reason=reason,
                )
            )
            held = match
        if held is not None:
            changes = _diff_group(group, held)
            if changes:
                ops.append(
                    Operation(
                        Kind.GROUP,
                        Action.UPDATE,
                        sid,
                        group.display_name,
                        target_id=held.target_id,
                        changes=changes,
                        group=group,
                    )
                )
            continue
        creates.append(
            Operation(
                Kind.GROUP,
                Action.CREATE,
                sid,
                group.display_name,
                group=group,
                reason="missing in IAM Identity Center" if mine is not None else "new in scope",
            )
        )
    deletes: list[Operation] = []
    if policy.delete_groups:
        for sid in sorted(owned.groups):
            if sid in desired.groups or sid in refused or sid in desired.retained:
                continue
            mine = owned.groups[sid]
            deletes.append(
                Operation(
                    Kind.GROUP,
                    Action.DELETE,
                    sid,
                    mine.display_name,
                    target_id=mine.target_id,
                    reason="no longer in scope (or deleted) in Entra",
                )
            )
    renames, ops = _order_renames(ops, {t: g.display_name for t, g in current.groups.items()}, case_blind=False)
    # creates that need a displayName a rename frees come after the renames
    return renames + creates + ops, deletes, targets, refusals, left_out


def _plan_memberships(
    desired: DesiredView,
    current: CurrentView,
    owned: Ownership,
    user_targets: Mapping[str, str],
    group_targets: Mapping[str, str],
    live_users: set[str],
    live_groups: set[str],
    refused: set[str],
) -> tuple[list[Operation], list[Operation]]:
    user_by_target = {t: s for s, t in user_targets.items()}
    group_by_target = {t: s for s, t in group_targets.items()}
    present: dict[tuple[str, str], str] = {}
    for (group_target, user_target), membership_id in current.memberships.items():
        group_sid = group_by_target.get(group_target)
        user_sid = user_by_target.get(user_target)
        if group_sid is not None and user_sid is not None:
            present[(group_sid, user_sid)] = membership_id
    adds: list[Operation] = []
    for group_sid, user_sid in sorted(desired.memberships):
        if group_sid not in live_groups or user_sid not in live_users:
            continue
        name = f"{desired.groups[group_sid].display_name} <- {desired.users[user_sid].user_name}"
        existing = present.get((group_sid, user_sid))
        if existing is not None:
            if (group_sid, user_sid) not in owned.memberships:
                adds.append(
                    Operation(
                        Kind.MEMBERSHIP,
                        Action.ADOPT,
                        group_sid,
                        name,
                        member_source_id=user_sid,
                        membership_id=existing,
                        reason="already a member",
                    )
                )
            continue
        adds.append(Operation(Kind.MEMBERSHIP, Action.CREATE, group_sid, name, member_source_id=user_sid))
    removes: list[Operation] = []
    for group_sid, user_sid in sorted(present):
        if (group_sid, user_sid) in desired.memberships and group_sid in live_groups and user_sid in live_users:
            continue
        if group_sid in refused or user_sid in refused:
            continue
        group_name = owned.groups[group_sid].display_name if group_sid in owned.groups else group_sid
        user_name = owned.users[user_sid].user_name if user_sid in owned.users else user_sid
        removes.append(
            Operation(
                Kind.MEMBERSHIP,
                Action.DELETE,
                group_sid,
                f"{group_name} <- {user_name}",
                member_source_id=user_sid,
                membership_id=present[(group_sid, user_sid)],
                reason="no longer a member in Entra",
            )
        )
    return adds, removes


Totals = tuple[int, int] | Callable[[], tuple[int, int]] | None
"""The deletion guard's (managed users and groups, managed memberships), or a function answering them."""


def _guard(
    user_deletes: list[Operation],
    group_deletes: list[Operation],
    membership_removes: list[Operation],
    desired: DesiredView,
    live_users: set[str],
    owned: Ownership,
    policy: PlanPolicy,
    totals: Totals = None,
    occupied: Callable[[str], bool] | None = None,
) -> DeletionGuard | None:
    """The deletion guard's verdict on a plan: None when its deletions may apply.

    Three thresholds, each checked on its own:

    * users and groups (Entra's own threshold): more than ``max_deletions`` deleted, or more than
      ``max_deletion_percent`` of the managed ones;
    * membership removals: more than ``membership_removal_floor`` and more than
      ``max_membership_removal_percent`` of the managed memberships. A membership removed because its user
      or its group is deleted this cycle counts under that deletion, not here;
    * an emptied group: a group Entra still lists, with no active member in Entra's answer, that would lose
      at least ``empty_group_min_memberships`` managed memberships (0 turns this off). That is what an
      outage's empty read of a group looks like, however small its share of the whole.
    """
    if policy.allow_deletions:
        return None
    deletions = len(user_deletes) + len(group_deletes)
    known: list[tuple[int, int]] = []

    def managed_totals() -> tuple[int, int]:
        """Asked only when a threshold needs a share (a cycle with nothing to delete never counts)."""
        if not known:
            known.append(
                totals()
                if callable(totals)
                else totals or (len(owned.users) + len(owned.groups), len(owned.memberships))
            )
        return known[0]

    deleted_users = {op.source_id for op in user_deletes}
    deleted_groups = {op.source_id for op in group_deletes}
    counted = [
        op
        for op in membership_removes
        if op.source_id not in deleted_groups and op.member_source_id not in deleted_users
    ]

    def trips(count: int) -> bool:
        if count == 0:
            return False
        if count > policy.max_deletions:
            return True
        total = managed_totals()[0]
        return total > 0 and 100.0 * count / total > policy.max_deletion_percent

    def removals_trip(count: int) -> bool:
        if count <= policy.membership_removal_floor:
            return False
        total = managed_totals()[1]
        return total == 0 or 100.0 * count / total > policy.max_membership_removal_percent

    tripped: list[GuardThreshold] = []
    if trips(deletions):
        tripped.append(GuardThreshold.DELETIONS)
    if removals_trip(len(counted)):
        tripped.append(GuardThreshold.MEMBERSHIP_REMOVALS)
    emptied = _emptied_groups(counted, desired, live_users, policy.empty_group_min_memberships, occupied)
    if emptied:
        tripped.append(GuardThreshold.EMPTIED_GROUPS)
    if not tripped:
        return None
    managed, managed_memberships = managed_totals()
    return DeletionGuard(
        deletions,
        managed,
        policy.max_deletions,
        policy.max_deletion_percent,
        len(membership_removes),
        managed_memberships,
        counted_removals=len(counted),
        removal_floor=policy.membership_removal_floor,
        removal_percent=policy.max_membership_removal_percent,
        empty_group_min=policy.empty_group_min_memberships,
        emptied_groups=tuple(sorted(desired.groups[sid].display_name for sid in emptied)),
        tripped=tuple(tripped),
    )


def _emptied_groups(
    counted: list[Operation],
    desired: DesiredView,
    live_users: set[str],
    minimum: int,
    occupied: Callable[[str], bool] | None,
) -> set[str]:
    """Groups Entra still lists with no active member that lose at least ``minimum`` managed memberships.
    ``occupied``: whether a group has an active member outside the (narrowed) desired view."""
    if minimum <= 0:
        return set()
    per_group = Counter(op.source_id for op in counted)
    candidates = {sid for sid, count in per_group.items() if count >= minimum and sid in desired.groups}
    if not candidates:
        return set()
    listed = {group for group, user in desired.memberships if group in candidates and user in live_users}
    if occupied is not None:
        listed |= {group for group in candidates - listed if occupied(group)}
    return candidates - listed


def make_plan(
    desired: DesiredView,
    current: CurrentView,
    owned: Ownership,
    policy: PlanPolicy,
    totals: Totals = None,
    occupied: Callable[[str], bool] | None = None,
) -> Plan:
    """Diff desired against current for the objects idsync owns or can adopt. Pure and deterministic.

    ``totals``: (managed users and groups, managed memberships) the deletion guard compares with, when
    the views are narrowed to part of what idsync manages (a delta cycle), or a function answering them
    (called at most once, and only when a threshold needs a share); else counted from ``owned``.
    ``occupied``: with narrowed views, whether a group has an active member in Entra that the views leave
    out (asked only of groups the emptied-group threshold would otherwise trip on)."""
    refused = {r.source_id for r in desired.refusals}
    users = _UserPlanner(desired, current, owned, policy)
    user_creates, user_adopts, user_updates = users.run()
    refused |= {r.source_id for r in users.refusals} - users.kept
    user_deletes = users.deletions(refused)
    group_ops, group_deletes, group_targets, group_refusals, refused_groups = _plan_groups(
        desired, current, owned, policy, refused
    )
    live_users = {sid for sid, u in desired.users.items() if u.active and sid not in refused}
    live_groups = set(desired.groups) - refused_groups
    membership_adds, membership_removes = _plan_memberships(
        desired, current, owned, users.targets, group_targets, live_users, live_groups, refused | refused_groups
    )
    guard = _guard(
        user_deletes, group_deletes, membership_removes, desired, live_users, owned, policy, totals, occupied
    )
    held_back: list[Operation] = []
    if guard is not None:
        held_back = membership_removes + group_deletes + user_deletes
        membership_removes, group_deletes, user_deletes = [], [], []
    operations = (
        user_creates
        + user_adopts
        + user_updates
        + group_ops
        + membership_adds
        + membership_removes
        + group_deletes
        + user_deletes
    )
    return Plan(
        operations=tuple(operations),
        refusals=tuple(desired.refusals) + tuple(users.refusals) + tuple(group_refusals),
        held_back=tuple(held_back),
        guard=guard,
    )


def desired_doc_for_create(user: User, targets: Mapping[str, str]) -> dict[str, JsonValue]:
    """The document to send when creating ``user``, its manager resolved through ``targets``."""
    manager = targets.get(user.manager_source_id) if user.manager_source_id else None
    return with_manager(user.doc, manager)


class _MapsUsers(Protocol):
    def map(self, obj: Mapping[str, Any]) -> User | Refusal: ...


class _MapsGroups(Protocol):
    def map(self, obj: Mapping[str, Any]) -> Group | Refusal: ...


class _Decides(Protocol):
    @property
    def in_scope(self) -> bool: ...


class _Scopes(Protocol):
    def user(self, obj: Mapping[str, Any]) -> _Decides: ...

    def group(self, obj: Mapping[str, Any]) -> _Decides: ...


def build_desired(
    users: Iterable[Mapping[str, Any]],
    groups: Iterable[Mapping[str, Any]],
    members: Mapping[str, Iterable[str]],
    user_mapper: _MapsUsers,
    group_mapper: _MapsGroups,
    scope: _Scopes,
) -> DesiredView:
    """Scope and map Entra objects into the desired view; invalid objects become refusals, except a
    disabled or soft-deleted user, which stays (inactive) so that it is deprovisioned all the same."""
    mapped_users: dict[str, User] = {}
    mapped_groups: dict[str, Group] = {}
    refusals: list[Refusal] = []
    for obj in users:
        if not scope.user(obj).in_scope:
            continue
        result = user_mapper.map(obj)
        if isinstance(result, Refusal) and (obj.get("accountEnabled") is False or is_soft_deleted(obj)):
            # a disabled or deleted account needs no valid attributes to be deprovisioned
            mapped_users[result.source_id] = User(result.source_id, result.name, {}, None, active=False)
        elif isinstance(result, Refusal):
            refusals.append(result)
        else:
            mapped_users[result.source_id] = result
    for obj in groups:
        if not scope.group(obj).in_scope:
            continue
        group_result = group_mapper.map(obj)
        if isinstance(group_result, Refusal):
            refusals.append(group_result)
        else:
            mapped_groups[group_result.source_id] = group_result
    memberships = frozenset(
        (group_id, user_id)
        for group_id, user_ids in members.items()
        if group_id in mapped_groups
        for user_id in user_ids
        if user_id in mapped_users and mapped_users[user_id].active
    )
    return DesiredView(mapped_users, mapped_groups, memberships, tuple(refusals))


def restrict(
    desired: DesiredView, owned: Ownership, user_ids: set[str], group_ids: set[str]
) -> tuple[DesiredView, Ownership]:
    """Narrow both views to some users and groups (on-demand provisioning): nothing else is touched.

    Memberships kept are those between the chosen users and chosen groups, plus, for a chosen
    user, those with groups idsync already provisioned (Entra's on-demand behaviour).
    """
    groups = set(group_ids)
    for group_id, user_id in desired.memberships:
        if user_id in user_ids and group_id in owned.groups:
            groups.add(group_id)
    users = set(user_ids)
    memberships = frozenset(
        (g, u) for g, u in desired.memberships if g in groups and u in users and (u in user_ids or g in group_ids)
    )
    narrowed = DesiredView(
        users={k: v for k, v in desired.users.items() if k in users},
        groups={k: v for k, v in desired.groups.items() if k in groups},
        memberships=memberships,
        refusals=tuple(r for r in desired.refusals if r.source_id in users | groups),
    )
    mine = Ownership(
        users={k: v for k, v in owned.users.items() if k in users},
        groups={k: v for k, v in owned.groups.items() if k in groups},
        memberships={k: v for k, v in owned.memberships.items() if k[0] in groups and k[1] in users},
    )
    return narrowed, mine


def set_aside_memberships(
    desired: DesiredView, current: CurrentView, owned: Ownership, group_ids: Iterable[str]
) -> tuple[DesiredView, CurrentView, Ownership]:
    """The three views without the memberships of ``group_ids`` (any case), so a plan neither adds nor removes
    them: PIM for Groups groups, whose memberships only ``idsync.pim``'s rule decides. The groups themselves stay."""
    wanted = {g.lower() for g in group_ids}
    if not wanted:
        return desired, current, owned
    aside = {sid for sid in set(desired.groups) | set(owned.groups) if sid.lower() in wanted}
    names = {desired.groups[sid].display_name for sid in aside if sid in desired.groups}
    targets = {owned.groups[sid].target_id for sid in aside if sid in owned.groups}
    targets |= {t.target_id for t in current.groups.values() if t.display_name in names}
    return (
        replace(desired, memberships=frozenset(m for m in desired.memberships if m[0] not in aside)),
        replace(current, memberships={k: v for k, v in current.memberships.items() if k[0] not in targets}),
        replace(owned, memberships={k: v for k, v in owned.memberships.items() if k[0] not in aside}),
    )
