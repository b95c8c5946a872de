"""Access as code, applied: reconcile account assignments after the cycle has made the groups.

One ``reconcile`` call per cycle: resolve the ``access`` entries (permission set names, accounts
under OUs: on full cycles, or when the section changed; otherwise the stored resolution is reused, so
a delta cycle with nothing to do makes no AWS call), read the assignments of the groups that need it,
plan (``idsync.access``), then apply.

Invariants (tested in tests/unit/test_access_service.py and tests/integration/test_access_moto.py):
- never more than ``max_outstanding`` (15) asynchronous create/delete requests in flight;
- a create is recorded as ``pending`` before its call, and confirmed (or dropped on FAILED) after, so
  a crash anywhere leaves idsync owning exactly what it may have made;
- only owned assignments are ever deleted; a wanted one that exists already is adopted;
- a FAILED request is logged with AWS's reason, goes to escrow (retried on Entra's schedule), and
  never stops the other requests;
- removals beyond the deletion guard are held back and each is named in the provisioning log.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from idsync.access import (
    AccessGuard,
    AccessPlan,
    AccessPolicy,
    Assignment,
    How,
    OwnedAssignments,
    OwnedRecord,
    ResolvedEntry,
    desired,
    groups_to_read,
    kept_groups,
    make_access_plan,
    resolve_group,
)
from idsync.config import AccessEntry
from idsync.errors import TargetAuthError, TargetError, TargetNotFound
from idsync.model import CycleReport, LogEntry, Status, content_hash
from idsync.ports import AccountAccess, AssignmentStatus, Clock, StateStore
from idsync.services.escrow import Escrow

GROUPS_KEY = "access:groups"  # the Entra ids of the groups that own assignments
OWNED_PREFIX = "access:owned:"  # + group source id: that group's owned assignments
RESOLVED_KEY = "access:resolved"  # permission set ARNs and accounts of each entry, and their fingerprint
PROBLEMS_KEY = "access:problems"
ESCROW_KEY = "access:escrow"
KIND = "assignment"
MAX_OUTSTANDING = 15  # IAM Identity Center's limit on asynchronous account-assignment calls in flight
POLL_INTERVAL_SECONDS = 0.5  # never ask after one request more often than this
SAVE_EVERY = 25  # completed requests between two writes of the ownership record
NEW_GROUP = "new:"  # principal of a group a plan would create first (plans only; never applied)


@dataclass(frozen=True, slots=True)
class GroupRef:
    """A group in scope: its displayName, and its Identity Store id once provisioned."""

    display_name: str
    principal_id: str | None


@dataclass
class AccessOutcome:
    plan: AccessPlan
    counts: dict[str, int] = field(default_factory=dict)  # action -> applied
    failures: list[LogEntry] = field(default_factory=list)
    max_outstanding: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # permission set ARN -> the name the file gives

    @property
    def guard(self) -> AccessGuard | None:
        return self.plan.guard

    @property
    def writes(self) -> int:
        return self.counts.get("create", 0) + self.counts.get("delete", 0)


@dataclass
class _InFlight:
    action: str  # "create" | "delete"
    assignment: Assignment
    request_id: str
    asked_at: float
    started_at: float


def load_owned(state: StateStore) -> OwnedAssignments:
    """Every assignment idsync owns, by group. Raises ValueError naming a malformed stored record."""
    owned = OwnedAssignments()
    for group in (state.get_item(GROUPS_KEY) or {}).get("groups", []):
        records = (state.get_item(OWNED_PREFIX + group) or {}).get("assignments", [])
        owned.by_group[group] = {
            r.assignment: r.how for r in (OwnedRecord.from_document(group, doc) for doc in records)
        }
    return owned


def save_owned(state: StateStore, owned: OwnedAssignments) -> None:
    """Write the groups whose record changed: the index gains a group before its record is written and
    loses it only after its record is deleted, so no record is ever unreachable."""
    if not owned.changed:
        return
    index = list((state.get_item(GROUPS_KEY) or {}).get("groups", []))
    added = [g for g in sorted(owned.changed) if owned.by_group.get(g) and g not in index]
    if added:
        index += added
        state.put_item(GROUPS_KEY, {"groups": index})
    emptied = []
    for group in sorted(owned.changed):
        records = owned.by_group.get(group) or {}
        if records:
            docs = [OwnedRecord(a, how).to_document() for a, how in sorted(records.items())]
            state.put_item(OWNED_PREFIX + group, {"assignments": docs})
        else:
            state.delete_item(OWNED_PREFIX + group)
            emptied.append(group)
    if emptied:
        state.put_item(GROUPS_KEY, {"groups": [g for g in index if g not in emptied]})
    owned.changed.clear()


class AccessService:
    """Reconciles the ``access`` section's account assignments; also reads them for the CLI."""

    def __init__(
        self,
        access: AccountAccess,
        state: StateStore,
        clock: Clock,
        entries: Sequence[AccessEntry],
        max_outstanding: int = MAX_OUTSTANDING,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.access = access
        self.state = state
        self.clock = clock
        self.entries = list(entries)
        self.max_outstanding = max(1, min(max_outstanding, MAX_OUTSTANDING))
        self.poll_interval = poll_interval
        self._monotonic = monotonic
        self._sleep = sleep
        self.fingerprint = content_hash([e.model_dump(mode="json") for e in self.entries])

    # ------------------------------------------------------------------ resolving the file

    def _resolve_targets(self, force: bool, store: bool) -> list[dict[str, Any]]:
        """Per entry: {"ps": ARN or None, "accounts": [...], "problem": text or None}; read from AWS when
        ``force`` or the section changed (and kept when ``store``), else as stored. Raises TargetError
        when AWS cannot be read."""
        stored = self.state.get_item(RESOLVED_KEY)
        if not force and stored and stored.get("fingerprint") == self.fingerprint:
            return list(stored["entries"])
        sets = self.access.permission_sets() if self.entries else {}
        arns = set(sets.values())
        under: dict[str, set[str] | str] = {}
        out: list[dict[str, Any]] = []
        for index, entry in enumerate(self.entries):
            problems: list[str] = []
            arn = entry.permission_set if entry.permission_set in arns else sets.get(entry.permission_set)
            if arn is None:
                problems.append(
                    f"access.{index}.permission_set: no permission set {entry.permission_set!r} in the instance"
                )
            accounts = set(entry.accounts)
            for ou in entry.organizational_units:
                if ou not in under:
                    try:
                        under[ou] = self.access.accounts_under(ou)
                    except TargetNotFound as error:
                        under[ou] = str(error)
                found = under[ou]
                if isinstance(found, str):
                    problems.append(f"access.{index}.organizational_units: {ou} cannot be read: {found}")
                else:
                    accounts |= found
            out.append(
                {
                    "ps": arn,
                    "accounts": sorted(accounts - set(entry.exclude_accounts)),
                    "problem": "; ".join(problems) or None,
                }
            )
        if store:
            self.state.put_item(RESOLVED_KEY, {"fingerprint": self.fingerprint, "entries": out})
        return out

    def resolve(self, groups: Mapping[str, GroupRef], force: bool, store: bool = True) -> list[ResolvedEntry]:
        """The entries with groups, permission sets and accounts resolved. Raises TargetError."""
        targets = self._resolve_targets(force, store)
        names = {source_id: ref.display_name for source_id, ref in groups.items()}
        resolved: list[ResolvedEntry] = []
        for index, (entry, target) in enumerate(zip(self.entries, targets, strict=True)):
            source_id = resolve_group(entry.group, names)
            problem = target["problem"]
            if source_id is None:
                problem = f"access.{index}.group: no group {entry.group!r} in scope (by displayName or object id)"
            principal = groups[source_id].principal_id if source_id is not None else None
            if source_id is not None and principal is None and problem is None:
                problem = f"access.{index}.group: group {entry.group!r} is not provisioned in IAM Identity Center yet"
            resolved.append(
                ResolvedEntry(
                    index=index,
                    group=entry.group,
                    group_source_id=source_id,
                    principal_id=principal,
                    permission_set=entry.permission_set,
                    permission_set_arn=target["ps"],
                    accounts=frozenset(target["accounts"]),
                    problem=problem,
                )
            )
        return resolved

    # ------------------------------------------------------------------ planning

    def plan(
        self, groups: Mapping[str, GroupRef], full: bool, policy: AccessPolicy, store: bool = True
    ) -> tuple[AccessPlan, list[ResolvedEntry], OwnedAssignments]:
        """What this cycle would do. Reads AWS (resolution, assignments of the groups that need it);
        writes nothing but, when ``store``, the resolution it read.

        Raises TargetError when AWS cannot be read.
        """
        entries = self.resolve(groups, force=full, store=store)
        owned = load_owned(self.state)
        flat = owned.flat()
        wanted = desired(entries)
        existing: dict[str, frozenset[tuple[str, str]]] = {}
        for _, principal in sorted(groups_to_read(wanted, flat, full)):
            if principal not in existing:
                # a group this sync is about to create holds nothing yet
                new = principal.startswith(NEW_GROUP)
                existing[principal] = frozenset() if new else frozenset(self.access.assignments(principal))
        kept = kept_groups(entries, groups)
        problems = [e.problem for e in entries if e.problem]
        return make_access_plan(wanted, flat, existing, kept, policy, problems), entries, owned

    # ------------------------------------------------------------------ applying

    def reconcile(
        self,
        groups: Mapping[str, GroupRef],
        full: bool,
        policy: AccessPolicy,
        cycle_id: str,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> AccessOutcome:
        """Plan and apply one cycle's assignments; write the provisioning log.

        Raises TargetAuthError (credentials or permissions rejected), TargetError (AWS unreadable).
        """
        plan, entries, owned = self.plan(groups, full, policy)
        labels = {e.permission_set_arn: e.permission_set for e in entries if e.permission_set_arn}
        names = {source_id: ref.display_name for source_id, ref in groups.items()}
        log = _Log(cycle_id, self.clock, names, labels)
        outcome = AccessOutcome(plan, labels=labels)
        self._log_new_problems(log, plan.problems)
        escrow = Escrow(self.state, ESCROW_KEY)
        now = self.clock.now()
        for item in plan.adopts:
            owned.set(item, How.ADOPTED)
            log.add(item, "adopt", Status.SUCCESS)
            outcome.counts["adopt"] = outcome.counts.get("adopt", 0) + 1
        for item in plan.forgets:
            owned.drop(item)
        for item in plan.held_back:
            log.add(item, "delete", Status.SKIPPED, note="held back by the deletion guard")
        runnable: list[tuple[str, Assignment]] = []
        for action, items in (("create", plan.creates), ("delete", plan.removes)):
            for item in items:
                held = escrow.held(item.key, "", now)
                if held is None:
                    runnable.append((action, item))
                    continue
                when = "(given up)" if held.given_up else f"until {held.next_retry.isoformat()}"
                log.add(
                    item,
                    action,
                    Status.SKIPPED,
                    note=f"in escrow after {held.attempts} failed attempt(s) {when}: {held.error}",
                )
        prior = owned.flat()  # before this cycle's write-ahead records
        for action, item in runnable:
            if action == "create":
                owned.set(item, How.PENDING)
        save_owned(self.state, owned)  # write-ahead: the creates are known before any is made
        try:
            self._apply(runnable, owned, prior, log, outcome, escrow, should_stop)
        finally:
            save_owned(self.state, owned)
            escrow.save()
            outcome.failures = log.failures
            self.state.append_logs(log.entries)
        return outcome

    def after_cycle(
        self,
        report: CycleReport,
        attempted: int,
        groups: Mapping[str, GroupRef],
        full: bool,
        policy: AccessPolicy,
        should_stop: Callable[[], bool],
    ) -> tuple[CycleReport, int]:
        """Reconcile after a cycle applied its plan; return its report with the assignments folded in
        (counts under ``assignment``, failures, the guard, writes) and the operations attempted.

        AWS unreadable is one failure of the cycle, not the end of it. Raises TargetAuthError.
        """
        try:
            outcome = self.reconcile(groups, full, policy, report.cycle_id, should_stop)
        except TargetAuthError:
            raise
        except TargetError as error:
            failure = LogEntry(
                cycle_id=report.cycle_id,
                change_id=f"{report.cycle_id}-access",
                time=self.clock.now().isoformat(),
                kind=KIND,
                action="reconcile",
                status=Status.FAILURE,
                source_id="access",
                name="access",
                error=f"account assignments not reconciled this cycle: {error}",
            )
            self.state.append_logs([failure])
            return replace(report, failures=(*report.failures, failure)), attempted + 1
        counts = {kind: dict(actions) for kind, actions in report.counts.items()}
        if outcome.counts:
            counts[KIND] = dict(outcome.counts)
        folded = replace(
            report,
            counts=counts,
            failures=report.failures + tuple(outcome.failures),
            guard=report.guard or outcome.guard,
            writes=report.writes + outcome.writes,
        )
        return folded, attempted + outcome.writes + len(outcome.failures)

    def _apply(
        self,
        runnable: Sequence[tuple[str, Assignment]],
        owned: OwnedAssignments,
        prior: Mapping[Assignment, How],
        log: _Log,
        outcome: AccessOutcome,
        escrow: Escrow,
        should_stop: Callable[[], bool],
    ) -> None:
        queue = deque(runnable)
        flight: deque[_InFlight] = deque()
        completed = 0

        def finish(
            action: str, item: Assignment, status: AssignmentStatus | None, error: str | None, started: float
        ) -> None:
            nonlocal completed
            completed += 1
            seconds = self._monotonic() - started
            if error is None and status is not None and status.status == "SUCCEEDED":
                if action == "create":
                    owned.set(item, How.CREATED)
                else:
                    owned.drop(item)
                escrow.succeeded(item.key)
                log.add(item, action, Status.SUCCESS, seconds=seconds)
                outcome.counts[action] = outcome.counts.get(action, 0) + 1
            else:
                reason = error or f"{action} request {status.request_id if status else ''} FAILED: " + (
                    (status.reason if status else None) or "no reason given"
                )
                if action == "create" and prior.get(item) is None:
                    owned.drop(item)  # AWS made nothing: a hand-made one later must not look like ours
                elif action == "create":
                    owned.set(item, prior[item])  # an earlier call may have made it: stay its owner
                escrow.failed(item.key, "", reason, self.clock.now())
                log.add(item, action, Status.FAILURE, note=reason, seconds=seconds)
            if completed % SAVE_EVERY == 0:
                save_owned(self.state, owned)

        while queue or flight:
            while queue and len(flight) < self.max_outstanding and not should_stop():
                action, item = queue.popleft()
                started = self._monotonic()
                try:
                    status = (
                        self.access.create(item.principal_id, item.permission_set_arn, item.account_id)
                        if action == "create"
                        else self.access.delete(item.principal_id, item.permission_set_arn, item.account_id)
                    )
                except TargetAuthError:
                    raise
                except TargetNotFound as error:
                    if action == "delete":  # gone already (by hand, or with its group): nothing to remove
                        finish(action, item, AssignmentStatus("", "SUCCEEDED"), None, started)
                    else:
                        finish(action, item, None, str(error), started)
                    continue
                except TargetError as error:
                    finish(action, item, None, str(error), started)
                    continue
                if status.done:
                    finish(action, item, status, None, started)
                else:
                    flight.append(_InFlight(action, item, status.request_id, self._monotonic(), started))
                outcome.max_outstanding = max(outcome.max_outstanding, len(flight))
            if should_stop():
                queue.clear()  # the rest stays as planned (pending creates are made next cycle)
            if not flight:
                continue
            current = flight.popleft()
            wait = current.asked_at + self.poll_interval - self._monotonic()
            if wait > 0:
                self._sleep(wait)
            try:
                status = (
                    self.access.creation_status(current.request_id)
                    if current.action == "create"
                    else self.access.deletion_status(current.request_id)
                )
            except TargetAuthError:
                raise
            except TargetError as error:
                finish(
                    current.action,
                    current.assignment,
                    None,
                    f"status of request {current.request_id}: {error}",
                    current.started_at,
                )
                continue
            if status.done:
                finish(current.action, current.assignment, status, None, current.started_at)
            else:
                current.asked_at = self._monotonic()
                flight.append(current)

    def _log_new_problems(self, log: _Log, problems: Iterable[str]) -> None:
        current = sorted(set(problems))
        previous = (self.state.get_item(PROBLEMS_KEY) or {}).get("problems", [])
        for problem in current:
            if problem not in previous:
                log.problem(problem)
        if current != previous:
            self.state.put_item(PROBLEMS_KEY, {"problems": current})

    # ------------------------------------------------------------------ checking the file, for the CLI

    def check(self, groups: Mapping[str, str]) -> list[str]:
        """Every entry's problems against AWS and Entra: a permission set, account or OU that does not
        exist, a group not in scope (``groups``: source id -> displayName). Raises TargetError."""
        sets = self.access.permission_sets()
        accounts = self.access.accounts()
        problems: list[str] = []
        for index, entry in enumerate(self.entries):
            where = f"access.{index}"
            if resolve_group(entry.group, groups) is None:
                problems.append(f"{where}.group: no group {entry.group!r} in scope (by displayName or object id)")
            if entry.permission_set not in sets and entry.permission_set not in sets.values():
                problems.append(f"{where}.permission_set: no permission set {entry.permission_set!r} in the instance")
            for field_name, ids in (("accounts", entry.accounts), ("exclude_accounts", entry.exclude_accounts)):
                for position, account in enumerate(ids):
                    if account not in accounts:
                        problems.append(f"{where}.{field_name}.{position}: no account {account} in the organization")
            for position, ou in enumerate(entry.organizational_units):
                try:
                    self.access.accounts_under(ou)
                except TargetNotFound:
                    problems.append(
                        f"{where}.organizational_units.{position}: no organizational unit or root {ou} "
                        "in the organization"
                    )
        return problems


def managed_assignments(state: StateStore, entries: Sequence[AccessEntry]) -> list[dict[str, str]]:
    """Every assignment idsync manages, as recorded (no AWS call), sorted by group, permission set, account."""
    resolved = (state.get_item(RESOLVED_KEY) or {}).get("entries", [])
    labels = {r["ps"]: e.permission_set for e, r in zip(entries, resolved, strict=False) if r.get("ps")}
    names = {sid: g.display_name for sid, g in state.load_ownership().groups.items()}
    return [
        {
            "group": names.get(a.group_source_id, a.group_source_id),
            "groupId": a.group_source_id,
            "principalId": a.principal_id,
            "permissionSet": labels.get(a.permission_set_arn, a.permission_set_arn),
            "permissionSetArn": a.permission_set_arn,
            "account": a.account_id,
            "how": how.value,
        }
        for a, how in sorted(load_owned(state).flat().items())
    ]


class _Log:
    """The provisioning log entries of one reconcile."""

    def __init__(self, cycle_id: str, clock: Clock, names: Mapping[str, str], labels: Mapping[str, str]) -> None:
        self.cycle_id = cycle_id
        self.clock = clock
        self.names = names
        self.labels = labels
        self.entries: list[LogEntry] = []
        self.failures: list[LogEntry] = []

    def name(self, item: Assignment) -> str:
        group = self.names.get(item.group_source_id, item.group_source_id)
        return f"{group} -> {self.labels.get(item.permission_set_arn, item.permission_set_arn)} @ {item.account_id}"

    def _entry(self, **fields: Any) -> LogEntry:
        return LogEntry(
            cycle_id=self.cycle_id,
            change_id=f"{self.cycle_id}-a{len(self.entries) + 1:06d}",
            time=self.clock.now().isoformat(),
            kind=KIND,
            **fields,
        )

    def add(self, item: Assignment, action: str, status: Status, note: str | None = None, seconds: float = 0.0) -> None:
        entry = self._entry(
            action=action,
            status=status,
            source_id=item.group_source_id,
            name=self.name(item),
            target_id=item.principal_id,
            error=note if status is not Status.SUCCESS else None,
            duration_ms=seconds * 1000.0,
        )
        self.entries.append(entry)
        if status is Status.FAILURE:
            self.failures.append(entry)

    def problem(self, message: str) -> None:
        self.entries.append(
            self._entry(action="skip", status=Status.SKIPPED, source_id="access", name="access", error=message)
        )
