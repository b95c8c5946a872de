"""The sync cycle: read Entra, read IAM Identity Center, plan, apply, record.

Speaks to ports only. Every applied write is recorded in state before the next one starts, so a
cycle stopped at any point (crash, time budget) is finished by the next: the next cycle plans again
from what is recorded and what the Identity Store holds, and a replayed write is harmless
(a create that finds its object already there adopts it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from idsync.errors import TargetAuthError, TargetConflict, TargetError, TargetNotFound
from idsync.model import (
    Action,
    AttributeChange,
    CurrentView,
    CycleReport,
    DesiredView,
    Group,
    JsonValue,
    Kind,
    LogEntry,
    Operation,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Ownership,
    Plan,
    PlanPolicy,
    Refusal,
    Status,
    TargetGroup,
    TargetUser,
    User,
    UserDoc,
    freeze_doc,
)
from idsync.plan import (
    EXTENSIONS,
    build_desired,
    desired_doc_for_create,
    make_plan,
    resolve_refs,
    with_manager,
)
from idsync.ports import Clock, Directory, IdentityStore, StateStore

LOG_FLUSH_EVERY = 500
Progress = Callable[[int, int], None]


class UserMapping(Protocol):
    managed_attributes: frozenset[str]
    create_only_attributes: frozenset[str]

    def map(self, obj: Mapping[str, Any]) -> User | Refusal: ...


class GroupMapping(Protocol):
    def map(self, obj: Mapping[str, Any]) -> Group | Refusal: ...


class ScopeRules(Protocol):
    def user(self, obj: Mapping[str, Any]) -> Any: ...

    def group(self, obj: Mapping[str, Any]) -> Any: ...


@dataclass
class SyncOptions:
    dry_run: bool = False
    allow_deletions: bool = False
    should_stop: Callable[[], bool] = field(default=lambda: False)  # a time budget running out
    progress: Progress | None = None


class SyncService:
    """One full cycle of provisioning, idempotent and resumable."""

    def __init__(
        self,
        directory: Directory,
        target: IdentityStore,
        state: StateStore,
        user_mapper: UserMapping,
        group_mapper: GroupMapping,
        scope: ScopeRules,
        policy: PlanPolicy,
        clock: Clock,
    ) -> None:
        self.directory = directory
        self.target = target
        self.state = state
        self.user_mapper = user_mapper
        self.group_mapper = group_mapper
        self.scope = scope
        self.policy = replace(
            policy,
            managed_attributes=policy.managed_attributes or user_mapper.managed_attributes,
            create_only_attributes=policy.create_only_attributes or user_mapper.create_only_attributes,
        )
        self.clock = clock

    # ------------------------------------------------------------------ reading

    def desired(self) -> DesiredView:
        """Read Entra and map it. Raises DirectoryError."""
        snapshot = self.directory.snapshot()
        return build_desired(
            snapshot.users, snapshot.groups, snapshot.members, self.user_mapper, self.group_mapper, self.scope
        )

    def current(self, desired: DesiredView, owned: Ownership) -> CurrentView:
        """Read IAM Identity Center: every user and group, and the members of the groups that matter."""
        users: dict[str, TargetUser] = {u.target_id: u for u in self.target.list_users()}
        groups: dict[str, TargetGroup] = {g.target_id: g for g in self.target.list_groups()}
        wanted_names = {g.display_name for g in desired.groups.values()}
        owned_targets = {o.target_id for o in owned.groups.values()}
        memberships: dict[tuple[str, str], str] = {}
        for group in groups.values():
            if group.target_id in owned_targets or group.display_name in wanted_names:
                for membership_id, user_id in self.target.list_memberships(group.target_id):
                    memberships[(group.target_id, user_id)] = membership_id
        return CurrentView(users, groups, memberships)

    def plan(self, allow_deletions: bool = False) -> tuple[Plan, CurrentView, Ownership]:
        """Read both sides and plan, without writing anything."""
        desired = self.desired()
        owned = self.state.load_ownership()
        current = self.current(desired, owned)
        policy = replace(self.policy, allow_deletions=allow_deletions or self.policy.allow_deletions)
        return make_plan(desired, current, owned, policy), current, owned

    # ------------------------------------------------------------------ the cycle

    def run(self, options: SyncOptions | None = None) -> CycleReport:
        """Plan and apply one cycle. Raises DirectoryError / TargetAuthError when a side is unreachable."""
        opts = options or SyncOptions()
        cycle_id = f"{self.clock.now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"
        started = self.clock.now().isoformat()
        plan, current, owned = self.plan(opts.allow_deletions)
        applier = Applier(self.target, self.state, self.clock, cycle_id, owned, current, self.policy)
        if opts.dry_run:
            return applier.report(plan, started, dry_run=True, complete=True)
        complete = applier.apply(plan.operations, opts.should_stop, opts.progress)
        applier.log_refusals(plan.refusals)
        applier.log_held_back(plan.held_back)
        applier.flush()
        return applier.report(plan, started, dry_run=False, complete=complete)


class Applier:
    """Applies operations in order, recording ownership and a log entry for each."""

    def __init__(
        self,
        target: IdentityStore,
        state: StateStore,
        clock: Clock,
        cycle_id: str,
        owned: Ownership,
        current: CurrentView,
        policy: PlanPolicy,
    ) -> None:
        self.target = target
        self.state = state
        self.clock = clock
        self.cycle_id = cycle_id
        self.current = current
        self.policy = policy
        self.users: dict[str, OwnedUser] = dict(owned.users)
        self.groups: dict[str, OwnedGroup] = dict(owned.groups)
        self.user_targets: dict[str, str] = {sid: o.target_id for sid, o in owned.users.items()}
        self.group_targets: dict[str, str] = {sid: o.target_id for sid, o in owned.groups.items()}
        self.memberships: set[tuple[str, str]] = set(owned.memberships)
        self.pending: list[LogEntry] = []
        self.failures: list[LogEntry] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.writes = 0
        self.sequence = 0
        self.deferred_managers: list[User] = []  # created before their manager (a management cycle)

    # ------------------------------------------------------------------ loop

    def apply(
        self, operations: Iterable[Operation], should_stop: Callable[[], bool], progress: Progress | None
    ) -> bool:
        ops = list(operations)
        for index, op in enumerate(ops):
            if should_stop():
                self.flush()
                return False
            started = time.perf_counter()
            try:
                status, target_id, changes, note = self._apply_one(op)
            except TargetAuthError:
                self.flush()
                raise
            except TargetError as error:
                status, target_id, changes, note = Status.FAILURE, op.target_id, op.changes, str(error)
            self._log(op, status, target_id, changes, note, time.perf_counter() - started)
            if progress is not None:
                progress(index + 1, len(ops))
            if len(self.pending) >= LOG_FLUSH_EVERY:
                self.flush()
        self._resolve_deferred_managers()
        self.flush()
        return True

    def _resolve_deferred_managers(self) -> None:
        for user in self.deferred_managers:
            owned = self.users.get(user.source_id)
            manager = self.user_targets.get(user.manager_source_id or "")
            if owned is None or manager is None:
                continue
            doc = with_manager(owned.doc, manager)
            change = AttributeChange(EXTENSIONS, owned.doc.get(EXTENSIONS), doc.get(EXTENSIONS))
            op = Operation(
                Kind.USER, Action.UPDATE, user.source_id, user.user_name, owned.target_id, (change,), user
            )
            started = time.perf_counter()
            try:
                status, target_id, changes, note = self._update_user(op)
            except TargetError as error:
                status, target_id, changes, note = Status.FAILURE, owned.target_id, (change,), str(error)
            self._log(op, status, target_id, changes, note, time.perf_counter() - started)

    def _apply_one(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        handler = {
            (Kind.USER, Action.CREATE): self._create_user,
            (Kind.USER, Action.ADOPT): self._adopt_user,
            (Kind.USER, Action.UPDATE): self._update_user,
            (Kind.USER, Action.DELETE): self._delete_user,
            (Kind.GROUP, Action.CREATE): self._create_group,
            (Kind.GROUP, Action.ADOPT): self._adopt_group,
            (Kind.GROUP, Action.UPDATE): self._update_group,
            (Kind.GROUP, Action.DELETE): self._delete_group,
            (Kind.MEMBERSHIP, Action.CREATE): self._add_member,
            (Kind.MEMBERSHIP, Action.ADOPT): self._adopt_member,
            (Kind.MEMBERSHIP, Action.DELETE): self._remove_member,
        }[(op.kind, op.action)]
        return handler(op)

    # ------------------------------------------------------------------ users

    def _record_user(self, user: User, target_id: str, doc: UserDoc) -> None:
        owned = OwnedUser(
            source_id=user.source_id,
            target_id=target_id,
            user_name=user.user_name,
            doc=freeze_doc(doc),
            manager_source_id=user.manager_source_id,
            fingerprint=user.fingerprint(),
        )
        self.state.record_user(owned)
        self.users[user.source_id] = owned
        self.user_targets[user.source_id] = target_id

    def _create_user(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        user = op.user
        doc = desired_doc_for_create(user, self.user_targets)
        if user.manager_source_id and user.manager_source_id not in self.user_targets:
            self.deferred_managers.append(user)
        changes = tuple(AttributeChange(k, None, v) for k, v in sorted(doc.items()))
        try:
            target_id = self.target.create_user(user.user_name, doc)
            self.writes += 1
        except TargetConflict:
            # a previous run created it but stopped before recording it, or it was created by hand
            existing = self.target.find_user(user.user_name)
            if existing is None or existing in {o.target_id for o in self.users.values()}:
                raise
            self.target.update_user(existing, [AttributeChange(k, None, v) for k, v in sorted(doc.items())])
            self.writes += 1
            target_id = existing
        self._record_user(user, target_id, doc)
        return Status.SUCCESS, target_id, changes, None

    def _adopt_user(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        current = self.current.users.get(op.target_id)
        doc = with_manager(current.doc, current.manager_target_id) if current else {}
        self._record_user(op.user, op.target_id, doc)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_user(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        changes = tuple(
            AttributeChange(c.attribute, c.old, resolve_refs(c.new, self.user_targets)) for c in op.changes
        )
        try:
            self.target.update_user(op.target_id, changes)
        except TargetNotFound:
            # deleted outside idsync since it was read: provision it again
            self.state.forget_user(op.user.source_id)
            self.users.pop(op.user.source_id, None)
            self.user_targets.pop(op.user.source_id, None)
            return self._create_user(op)
        self.writes += 1
        previous = self.users.get(op.user.source_id)
        doc: dict[str, JsonValue] = dict(previous.doc) if previous else {}
        for change in changes:
            if change.attribute == "UserName":
                continue
            if change.new is None:
                doc.pop(change.attribute, None)
            else:
                doc[change.attribute] = change.new
        self._record_user(op.user, op.target_id, doc)
        return Status.SUCCESS, op.target_id, changes, None

    def _delete_user(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.target_id is not None
        self.target.delete_user(op.target_id)
        self.writes += 1
        for group_sid, user_sid in [m for m in self.memberships if m[1] == op.source_id]:
            self.state.forget_membership(group_sid, user_sid)
            self.memberships.discard((group_sid, user_sid))
        self.state.forget_user(op.source_id)
        self.users.pop(op.source_id, None)
        self.user_targets.pop(op.source_id, None)
        return Status.SUCCESS, op.target_id, (), op.reason

    # ------------------------------------------------------------------ groups

    def _record_group(self, group: Group, target_id: str) -> None:
        owned = OwnedGroup(
            group.source_id, target_id, group.display_name, group.description, group.fingerprint()
        )
        self.state.record_group(owned)
        self.groups[group.source_id] = owned
        self.group_targets[group.source_id] = target_id

    def _create_group(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        group = op.group
        changes: tuple[AttributeChange, ...] = (AttributeChange("DisplayName", None, group.display_name),)
        if group.description:
            changes += (AttributeChange("Description", None, group.description),)
        try:
            target_id = self.target.create_group(group.display_name, group.description)
            self.writes += 1
        except TargetConflict:
            existing = self.target.find_group(group.display_name)
            if existing is None or existing in {o.target_id for o in self.groups.values()}:
                raise
            target_id = existing
        self._record_group(group, target_id)
        return Status.SUCCESS, target_id, changes, None

    def _adopt_group(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        current = self.current.groups.get(op.target_id)
        adopted = (
            Group(op.group.source_id, current.display_name, current.description) if current else op.group
        )
        self._record_group(adopted, op.target_id)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_group(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        self.target.update_group(op.target_id, op.changes)
        self.writes += 1
        self._record_group(op.group, op.target_id)
        return Status.SUCCESS, op.target_id, op.changes, None

    def _delete_group(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.target_id is not None
        self.target.delete_group(op.target_id)
        self.writes += 1
        for group_sid, user_sid in [m for m in self.memberships if m[0] == op.source_id]:
            self.state.forget_membership(group_sid, user_sid)
            self.memberships.discard((group_sid, user_sid))
        self.state.forget_group(op.source_id)
        self.groups.pop(op.source_id, None)
        self.group_targets.pop(op.source_id, None)
        return Status.SUCCESS, op.target_id, (), op.reason

    # ------------------------------------------------------------------ memberships

    def _member_targets(self, op: Operation) -> tuple[str, str] | str:
        assert op.member_source_id is not None
        group_target = self.group_targets.get(op.source_id)
        user_target = self.user_targets.get(op.member_source_id)
        if group_target is None:
            return f"group {op.source_id} is not provisioned (see its own log entry)"
        if user_target is None:
            return f"user {op.member_source_id} is not provisioned (see its own log entry)"
        return group_target, user_target

    def _add_member(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.member_source_id is not None
        targets = self._member_targets(op)
        if isinstance(targets, str):
            return Status.SKIPPED, None, (), targets
        group_target, user_target = targets
        try:
            membership_id = self.target.create_membership(group_target, user_target)
            self.writes += 1
        except TargetConflict:
            found = self.target.find_membership(group_target, user_target)
            if found is None:
                raise
            membership_id = found
        self._record_member(op, membership_id)
        return Status.SUCCESS, membership_id, (AttributeChange("members", None, user_target),), None

    def _adopt_member(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.membership_id is not None
        self._record_member(op, op.membership_id)
        return Status.SUCCESS, op.membership_id, (), op.reason

    def _record_member(self, op: Operation, membership_id: str) -> None:
        assert op.member_source_id is not None
        self.state.record_membership(OwnedMembership(op.source_id, op.member_source_id, membership_id))
        self.memberships.add((op.source_id, op.member_source_id))

    def _remove_member(
        self, op: Operation
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.member_source_id is not None
        assert op.membership_id is not None
        self.target.delete_membership(op.membership_id)
        self.writes += 1
        self.state.forget_membership(op.source_id, op.member_source_id)
        self.memberships.discard((op.source_id, op.member_source_id))
        return Status.SUCCESS, op.membership_id, (), op.reason

    # ------------------------------------------------------------------ logs and report

    def _entry(
        self,
        kind: str,
        action: str,
        status: Status,
        source_id: str,
        name: str,
        target_id: str | None = None,
        changes: tuple[AttributeChange, ...] = (),
        error: str | None = None,
        seconds: float = 0.0,
    ) -> LogEntry:
        self.sequence += 1
        return LogEntry(
            cycle_id=self.cycle_id,
            change_id=f"{self.cycle_id}-{self.sequence:06d}",
            time=self.clock.now().isoformat(),
            kind=kind,
            action=action,
            status=status,
            source_id=source_id,
            name=name,
            target_id=target_id,
            modified=changes,
            error=error,
            duration_ms=seconds * 1000.0,
        )

    def _log(
        self,
        op: Operation,
        status: Status,
        target_id: str | None,
        changes: tuple[AttributeChange, ...],
        note: str | None,
        seconds: float,
    ) -> None:
        source = op.key.split(":", 1)[1] if op.kind is Kind.MEMBERSHIP else op.source_id
        error = note if status is not Status.SUCCESS else None
        entry = self._entry(
            op.kind.value, op.action.value, status, source, op.name, target_id, changes, error, seconds
        )
        self.pending.append(entry)
        if status is Status.FAILURE:
            self.failures.append(entry)
        if status is Status.SUCCESS:
            bucket = self.counts.setdefault(op.kind.value, {})
            bucket[op.action.value] = bucket.get(op.action.value, 0) + 1

    def log_refusals(self, refusals: Iterable[Refusal]) -> None:
        for refusal in refusals:
            self.pending.append(
                self._entry(
                    refusal.kind,
                    "skip",
                    Status.SKIPPED,
                    refusal.source_id,
                    refusal.name,
                    error=refusal.message,
                )
            )

    def log_held_back(self, operations: Iterable[Operation]) -> None:
        for op in operations:
            self.pending.append(
                self._entry(
                    op.kind.value,
                    op.action.value,
                    Status.SKIPPED,
                    op.source_id,
                    op.name,
                    op.target_id,
                    error="held back by the deletion guard",
                )
            )

    def flush(self) -> None:
        if self.pending:
            self.state.append_logs(self.pending)
            self.pending = []

    def report(self, plan: Plan, started: str, dry_run: bool, complete: bool) -> CycleReport:
        counts = plan.summary() if dry_run else self.counts
        return CycleReport(
            cycle_id=self.cycle_id,
            started=started,
            finished=self.clock.now().isoformat(),
            dry_run=dry_run,
            counts=counts,
            failures=tuple(self.failures),
            refusals=plan.refusals,
            guard=plan.guard,
            writes=plan.writes if dry_run else self.writes,
            complete=complete,
        )
