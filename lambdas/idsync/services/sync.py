"""Applying a plan: one write at a time, each recorded in state and in the provisioning log.

Speaks to ports only. Every applied write is recorded in state before the next one starts, so a
cycle stopped at any point (crash, time budget) is finished by the next: the next cycle plans again
from what is recorded, and a replayed write is harmless (a create that finds its object already
there adopts it).

Invariants:

* write-ahead: every create is recorded as intended before it is sent, so a crash or a state error
  between CreateUser/CreateGroup and its ownership record leaves an intent that the next run resolves
  by looking the object up by name (``resolve_intent``), never an orphan. Each writer has its own
  intent item, written and resolved only under its lease (``INTENT_KEY`` under the sync lease, which
  cycles and on-demand provisioning share; ``jit_intent_key(group)`` under a PIM group's lease), so
  no writer overwrites or deletes another's;
* a managed user or group found deleted by hand is created again and gets every membership the
  desired view gives it, in the same cycle;
* throttling and AWS-side faults (``TargetTransient``, after the client's own retries) are not
  failures: the cycle stops there and the next invocation carries on; but one operation that stops
  ``TRANSIENT_STOPS_LIMIT`` runs in a row (``TRANSIENT_KEY``) becomes a failure (escrowed) and the
  run goes on past it, so one object that always answers 5xx cannot stall every later write.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from idsync.errors import (
    TargetAuthError,
    TargetConflict,
    TargetError,
    TargetNotFound,
    TargetThrottled,
    TargetTransient,
)
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
    User,
    UserDoc,
    freeze_doc,
)
from idsync.plan import (
    EXTENSIONS,
    TEMPORARY_NAME_PREFIX,
    desired_doc_for_create,
    resolve_refs,
    with_manager,
)
from idsync.ports import Clock, IdentityStore, StateStore

LOG_FLUSH_EVERY = 500
INTENT_KEY = "create-intent"  # the sync lease holder's create in flight: {"kind", "source_id", "name"}


def jit_intent_key(group_id: str) -> str:
    """The intent item of the JIT writer holding ``group_id``'s lease."""
    return f"{INTENT_KEY}:jit:{group_id}"


TRANSIENT_KEY = "transient-stops"  # {"key": operation key, "count": runs in a row it stopped}
TRANSIENT_STOPS_LIMIT = 3
Progress = Callable[[int, int], None]


def resolve_intent(
    state: StateStore, target: IdentityStore, owned: Ownership | None = None, key: str = INTENT_KEY
) -> bool:
    """Settle a create a previous run of the writer owning ``key`` sent but may not have recorded; True
    when ownership changed. Call it under that writer's lease, before its first write.

    The object is looked up by the name it was created with (GetUserId / GetGroupId): found and
    owned by nobody, it is recorded as the intended source object's; the next plan then updates or
    renames it. ``owned`` is loaded only when an intent is found and none is given.
    Raises TargetError / StateError (the intent stays for the next run).
    """
    intent = state.get_item(key)
    if not intent:
        return False
    if owned is None:
        owned = state.load_ownership()
    kind, source_id, name = str(intent["kind"]), str(intent["source_id"]), str(intent["name"])
    changed = False
    if kind == "user":
        found = target.find_user(name)
        mine = owned.users.get(source_id)
        others = {o.target_id for s, o in owned.users.items() if s != source_id}
        if found is not None and found not in others and (mine is None or mine.target_id != found):
            # the create landed: it replaces whatever stale record the source object had
            for group, member in [m for m in owned.memberships if m[1] == source_id]:
                state.forget_membership(group, member)
            state.record_user(OwnedUser(source_id, found, name, freeze_doc(intent.get("doc") or {})))
            changed = True
    elif kind == "group":
        found = target.find_group(name)
        held = owned.groups.get(source_id)
        others = {o.target_id for s, o in owned.groups.items() if s != source_id}
        if found is not None and found not in others and (held is None or held.target_id != found):
            for group, member in [m for m in owned.memberships if m[0] == source_id]:
                state.forget_membership(group, member)
            state.record_group(OwnedGroup(source_id, found, name, intent.get("description")))
            changed = True
    state.delete_item(key)
    return changed


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
        desired: DesiredView | None = None,
    ) -> None:
        self.target = target
        self.desired = desired
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
        self.attempted = 0  # write operations tried (succeeded or failed; skipped ones excluded)
        self.sequence = 0
        self.deferred_managers: list[User] = []  # created before their manager (a management cycle)
        self.followups: list[Operation] = []  # memberships of objects created again after a hand-made delete
        self.intent_written = False
        self.stopped_by: str | None = None  # why the cycle ended early (throttling, AWS faults)
        self.succeeded: set[str] = set()  # keys of the operations that went through this run
        # the operation that stopped earlier runs with transient errors (counted in TRANSIENT_KEY)
        self.transient_key: str | None = None

    # ------------------------------------------------------------------ loop

    def apply(
        self, operations: Iterable[Operation], should_stop: Callable[[], bool], progress: Progress | None
    ) -> bool:
        """Apply in order; False when stopped early (time budget, or AWS throttling past the retries)."""
        ops = list(operations)
        self.transient_key = str((self.state.get_item(TRANSIENT_KEY) or {}).get("key") or "") or None
        index = 0
        while index < len(ops) or self.followups:
            if index >= len(ops):
                ops.extend(op for op in self.followups if self._still_missing(op))
                self.followups = []
                if index >= len(ops):
                    break
            op = ops[index]
            index += 1
            if should_stop():
                self._end()
                return False
            started = time.perf_counter()
            try:
                status, target_id, changes, note = self._apply_one(op)
            except TargetAuthError:
                self._end()
                raise
            except TargetTransient as error:
                # throttling is account-wide; only an operation AWS keeps failing on is counted against it
                stops = 0 if isinstance(error, TargetThrottled) else self._transient_stop(op)
                if stops < TRANSIENT_STOPS_LIMIT:
                    # not a failure of this object: AWS asked to slow down or failed on its side; a create
                    # may still have landed, so its intent stays for the next run to resolve
                    self.stopped_by = str(error)
                    self._log(op, Status.SKIPPED, op.target_id, (), f"{error}; the next run carries on", 0.0)
                    self.flush()
                    return False
                status, target_id, changes = Status.FAILURE, op.target_id, op.changes
                note = f"{error} (stopped {stops} runs in a row: escrowed so that later operations go on)"
            except TargetError as error:
                status, target_id, changes, note = Status.FAILURE, op.target_id, op.changes, str(error)
            if status is not Status.FAILURE:
                self._transient_cleared(op)
            self._log(op, status, target_id, changes, note, time.perf_counter() - started)
            if progress is not None:
                progress(index, len(ops))
            if len(self.pending) >= LOG_FLUSH_EVERY:
                self.flush()
        self._resolve_deferred_managers()
        self._end()
        return True

    def _transient_stop(self, op: Operation) -> int:
        """Count one more run in a row that ``op`` stopped with a transient error; returns the count."""
        item = self.state.get_item(TRANSIENT_KEY) or {}
        count = int(item.get("count", 0)) + 1 if item.get("key") == op.key else 1
        self.state.put_item(TRANSIENT_KEY, {"key": op.key, "count": count})
        self.transient_key = op.key
        return count

    def _transient_cleared(self, op: Operation) -> None:
        self.succeeded.add(op.key)
        if self.transient_key == op.key:
            self.state.delete_item(TRANSIENT_KEY)
            self.transient_key = None

    def _end(self) -> None:
        if self.intent_written:
            self.state.delete_item(INTENT_KEY)
            self.intent_written = False
        self.flush()

    def _intend(self, kind: str, source_id: str, name: str, **what: JsonValue) -> None:
        self.state.put_item(INTENT_KEY, {"kind": kind, "source_id": source_id, "name": name, **what})
        self.intent_written = True

    def _still_missing(self, op: Operation) -> bool:
        if op.kind is Kind.USER:
            return op.source_id not in self.users
        return (op.source_id, op.member_source_id or "") not in self.memberships

    def _restore_memberships(self, user_sid: str | None = None, group_sid: str | None = None) -> None:
        """Queue every membership the desired view gives a user or group created again."""
        if self.desired is None:
            return
        for group, member in sorted(self.desired.memberships):
            if (user_sid is not None and member != user_sid) or (group_sid is not None and group != group_sid):
                continue
            user = self.desired.users.get(member)
            owner = self.desired.groups.get(group)
            if user is None or owner is None or not user.active:
                continue
            self.followups.append(
                Operation(
                    Kind.MEMBERSHIP,
                    Action.CREATE,
                    group,
                    f"{owner.display_name} <- {user.user_name}",
                    member_source_id=member,
                    reason="created again after a delete made outside idsync",
                )
            )

    def _forget_memberships(self, user_sid: str | None = None, group_sid: str | None = None) -> None:
        for pair in [m for m in self.memberships if m[1] == user_sid or m[0] == group_sid]:
            self.state.forget_membership(*pair)
            self.memberships.discard(pair)

    def _resolve_deferred_managers(self) -> None:
        for user in self.deferred_managers:
            owned = self.users.get(user.source_id)
            manager = self.user_targets.get(user.manager_source_id or "")
            if owned is None or manager is None:
                continue
            doc = with_manager(owned.doc, manager)
            change = AttributeChange(EXTENSIONS, owned.doc.get(EXTENSIONS), doc.get(EXTENSIONS))
            op = Operation(Kind.USER, Action.UPDATE, user.source_id, user.user_name, owned.target_id, (change,), user)
            started = time.perf_counter()
            try:
                status, target_id, changes, note = self._update_user(op)
            except TargetTransient as error:
                # not this user's failure: the manager reference waits for the next run
                status, target_id, changes = Status.SKIPPED, owned.target_id, (change,)
                note = f"{error}; the next run carries on"
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

    def _create_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        user = op.user
        doc = desired_doc_for_create(user, self.user_targets)
        if user.manager_source_id and user.manager_source_id not in self.user_targets:
            self.deferred_managers.append(user)
        changes = tuple(AttributeChange(k, None, v) for k, v in sorted(doc.items()))
        if user.source_id in self.users:
            # created again (gone from AWS): the memberships recorded for the old object went with it
            self._forget_memberships(user_sid=user.source_id)
        self._intend("user", user.source_id, user.user_name, doc=doc)
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

    def _adopt_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        current = self.current.users.get(op.target_id)
        doc = with_manager(current.doc, current.manager_target_id) if current else {}
        self._record_user(op.user, op.target_id, doc)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.user is not None
        assert op.target_id is not None
        changes = tuple(AttributeChange(c.attribute, c.old, resolve_refs(c.new, self.user_targets)) for c in op.changes)
        try:
            self.target.update_user(op.target_id, changes)
        except TargetNotFound:
            # deleted outside idsync since it was read: provision it again, with its memberships
            return self._recreate_user(op.user.source_id, op)
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

    def _recreate_user(
        self, source_id: str, op: Operation | None = None
    ) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        """Create a managed user again (deleted by hand in AWS) and queue its memberships."""
        user = self.desired.users.get(source_id) if self.desired is not None else None
        if user is None and op is not None and op.user is not None:
            user = op.user
        if user is None or user.user_name.startswith(TEMPORARY_NAME_PREFIX):
            raise TargetNotFound(f"user {source_id} was deleted outside idsync; the next cycle provisions it again")
        self.state.forget_user(source_id)
        self.users.pop(source_id, None)
        self.user_targets.pop(source_id, None)
        self._forget_memberships(user_sid=source_id)
        create = Operation(Kind.USER, Action.CREATE, source_id, user.user_name, user=user, reason="deleted by hand")
        try:
            result = self._create_user(create)
        except TargetConflict:
            # its name is still held by a managed user this cycle renames later: create it after the renames
            self.followups.append(create)
            self._restore_memberships(user_sid=source_id)
            return Status.SKIPPED, None, (), "deleted outside idsync; created again at the end of this cycle"
        self._restore_memberships(user_sid=source_id)
        return result

    def _recreate_group(self, source_id: str) -> str:
        """Create a managed group again (deleted by hand in AWS) and queue its members; its new id."""
        group = self.desired.groups.get(source_id) if self.desired is not None else None
        if group is None:
            raise TargetNotFound(f"group {source_id} was deleted outside idsync and is no longer in scope")
        self.state.forget_group(source_id)
        self.groups.pop(source_id, None)
        self.group_targets.pop(source_id, None)
        self._forget_memberships(group_sid=source_id)
        _, target_id, _, _ = self._create_group(
            Operation(Kind.GROUP, Action.CREATE, source_id, group.display_name, group=group)
        )
        self._restore_memberships(group_sid=source_id)
        assert target_id is not None
        return target_id

    def _delete_user(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
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
        owned = OwnedGroup(group.source_id, target_id, group.display_name, group.description, group.fingerprint())
        self.state.record_group(owned)
        self.groups[group.source_id] = owned
        self.group_targets[group.source_id] = target_id

    def _create_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        group = op.group
        changes: tuple[AttributeChange, ...] = (AttributeChange("DisplayName", None, group.display_name),)
        if group.description:
            changes += (AttributeChange("Description", None, group.description),)
        if group.source_id in self.groups:
            self._forget_memberships(group_sid=group.source_id)
        self._intend("group", group.source_id, group.display_name, description=group.description)
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

    def _adopt_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        current = self.current.groups.get(op.target_id)
        adopted = Group(op.group.source_id, current.display_name, current.description) if current else op.group
        self._record_group(adopted, op.target_id)
        return Status.SUCCESS, op.target_id, (), op.reason

    def _update_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.group is not None
        assert op.target_id is not None
        try:
            self.target.update_group(op.target_id, op.changes)
        except TargetNotFound:
            # deleted outside idsync since it was read: provision it again, with its members
            target_id = self._recreate_group(op.source_id)
            return Status.SUCCESS, target_id, op.changes, "created again: it was deleted outside idsync"
        self.writes += 1
        self._record_group(op.group, op.target_id)
        return Status.SUCCESS, op.target_id, op.changes, None

    def _delete_group(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
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

    def _add_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.member_source_id is not None
        targets = self._member_targets(op)
        if isinstance(targets, str):
            return Status.SKIPPED, None, (), targets
        group_target, user_target = targets
        try:
            try:
                membership_id = self.target.create_membership(group_target, user_target)
            except TargetNotFound:
                # the group or the user was deleted outside idsync: create it again, then add
                targets_again = self._recreate_missing(op, group_target, user_target)
                if targets_again is None:
                    return Status.SKIPPED, None, (), "the user is created again at the end of this cycle"
                group_target, user_target = targets_again
                membership_id = self.target.create_membership(group_target, user_target)
            self.writes += 1
        except TargetConflict:
            found = self.target.find_membership(group_target, user_target)
            if found is None:
                raise
            membership_id = found
        self._record_member(op, membership_id)
        return Status.SUCCESS, membership_id, (AttributeChange("members", None, user_target),), None

    def _recreate_missing(self, op: Operation, group_target: str, user_target: str) -> tuple[str, str] | None:
        """(group, user) target ids once the missing one is created again; None when the user waits."""
        assert op.member_source_id is not None
        owned_group = self.groups.get(op.source_id)
        if owned_group is None or self.target.find_group(owned_group.display_name) != group_target:
            group_target = self._recreate_group(op.source_id)
        owned_user = self.users.get(op.member_source_id)
        if owned_user is None or self.target.find_user(owned_user.user_name) != user_target:
            self._recreate_user(op.member_source_id)
            if op.member_source_id not in self.user_targets:
                return None
            user_target = self.user_targets[op.member_source_id]
        return group_target, user_target

    def _adopt_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
        assert op.membership_id is not None
        self._record_member(op, op.membership_id)
        return Status.SUCCESS, op.membership_id, (), op.reason

    def _record_member(self, op: Operation, membership_id: str) -> None:
        assert op.member_source_id is not None
        self.state.record_membership(OwnedMembership(op.source_id, op.member_source_id, membership_id))
        self.memberships.add((op.source_id, op.member_source_id))

    def _remove_member(self, op: Operation) -> tuple[Status, str | None, tuple[AttributeChange, ...], str | None]:
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
        entry = self._entry(op.kind.value, op.action.value, status, source, op.name, target_id, changes, error, seconds)
        self.pending.append(entry)
        if op.is_write and status is not Status.SKIPPED:
            self.attempted += 1
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
