"""The drift check: each delta cycle compares one slice of IAM Identity Center with what idsync believes.

A round reads every page of ListUsers, then of ListGroups, then every managed group's members
(ListGroupMemberships, paged; PIM for Groups groups are left to the PIM path, as the plan leaves them). A
cycle reads a slice of the round sized by ``idsync.drift.slice_budget``, so that a round ends within
``sync.drift_check_hours``. What differs from ownership (a member removed or added by hand in a managed
group, a managed user or group edited by hand, a member missing because its user or group was deleted by
hand) joins the cycle's touched set with the slice's actual state in place of the believed one, and the
normal plan and apply repair it, under the deletion guard, pause and quarantine like any other write.

Invariants (tests/unit/test_drift.py):

* the cursor is durable and advances only once the cycle that compared its slice completed: a crash, a
  stopped cycle, a dry run or an unreadable slice leaves it where it was, so that slice is read again and
  none is ever skipped;
* a slice whose read fails (throttled, refused, an AWS fault) repairs nothing: its partial read never
  becomes a deletion; a page token AWS no longer accepts begins that listing again;
* only objects idsync manages are compared: users and groups it does not own are never drift;
* a slice never makes more List calls than its budget;
* every managed object is read at least once every ``drift_check_hours`` while cycles run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from idsync.delta import Touched
from idsync.drift import PAGE, Drift, Findings, group_differences, round_calls, slice_budget, user_differences
from idsync.errors import TargetAuthError, TargetError, TargetTransient
from idsync.model import CurrentView, DesiredView, Ownership, TargetGroup, TargetUser
from idsync.ports import Clock, IdentityStore, StateStore
from idsync.services.blobs import load_blob, save_blob
from idsync.services.cycle import COMPLETED_KEY, current_from_ownership

logger = logging.getLogger(__name__)

DRIFT_KEY = "drift"  # blob: the committed cursor, and the slice the last cycle checked (pending)
USERS, GROUPS, MEMBERS = "users", "groups", "members"

Replan = Callable[[Touched], tuple[DesiredView, Ownership]]


@dataclass
class Cursor:
    """Where a round goes on: the listing under way and its page token, or the last group compared."""

    phase: str = USERS
    token: str | None = None
    pages: int = 0  # pages read of the listing under way
    after: str = ""  # members: every managed group up to this source id was compared this round
    group: str | None = None  # members: the group whose listing spans slices
    pairs: dict[str, str] = field(default_factory=dict)  # user target -> membership id, of ``group`` so far
    unseen: list[str] = field(default_factory=list)  # managed targets the listing under way has not shown yet
    confirm: list[list[str]] = field(default_factory=list)  # [kind, target] a finished listing missed: described
    users_pages: int = 0  # pages the last finished listing took (0: not known yet)
    groups_pages: int = 0
    rounds: int = 0  # rounds finished

    @classmethod
    def of(cls, value: Any) -> Cursor:
        """The cursor a stored document holds; a damaged one begins a round."""
        try:
            return cls(**value) if isinstance(value, dict) else cls()
        except TypeError:
            return cls()


@dataclass
class SliceReport:
    """What one slice did: for the metrics, the logs and the tests."""

    budget: int = 0
    calls: int = 0
    drifts: tuple[Drift, ...] = ()
    failed: str | None = None  # why the slice was unreadable (nothing repaired)
    phase: str = ""


class _Budget(Exception):
    """The slice spent its calls."""


class DriftCheck:
    """Reads one slice of IAM Identity Center per delta cycle and folds what differs into the cycle's plan."""

    def __init__(
        self,
        target: IdentityStore,
        state: StateStore,
        clock: Clock,
        period: timedelta,
        managed_attributes: Iterable[str],
        create_only_attributes: frozenset[str] = frozenset(),
        pim_groups: Iterable[str] = (),
    ) -> None:
        """``period``: a round's length (``sync.drift_check_hours``)."""
        self.target = target
        self.state = state
        self.clock = clock
        self.period = period
        self.managed = frozenset(managed_attributes)
        self.create_only = create_only_attributes
        self.pim = {g.lower() for g in pim_groups}
        self.last = SliceReport()

    # ------------------------------------------------------------------ the cycle's hook

    def check(
        self,
        started: datetime,
        every: Ownership,
        views: tuple[DesiredView, Ownership, CurrentView],
        touched: Touched | None,
        replan: Replan,
        dry_run: bool = False,
    ) -> tuple[DesiredView, Ownership, CurrentView]:
        """The cycle's (desired, owned, current) with this slice's drift folded in.

        ``every``: all of ownership; ``views``: what the cycle plans from; ``touched``: the delta's touched set
        (None: the views cover everything), widened with the drifted objects and planned again by ``replan``.
        ``started``: the cycle's start, by which the next check knows whether this cycle completed. A dry run
        reads its slice and stores nothing. Raises StateError.
        """
        desired, owned, current = views
        findings = self.read_slice(started, every, dry_run)
        if not findings:
            return desired, owned, current
        for drift in findings.drifts:
            logger.warning(
                "drift in IAM Identity Center: repaired by this cycle",
                extra={"kind": drift.kind, "sourceId": drift.source_id, "object": drift.name, "differs": drift.differs},
            )
        if touched is not None:
            touched.users |= findings.touched_users
            touched.groups |= findings.touched_groups
            desired, owned = replan(touched)
            current = current_from_ownership(owned)
        return desired, owned, findings.apply(current)

    # ------------------------------------------------------------------ the slice

    def read_slice(self, started: datetime, every: Ownership, dry_run: bool = False) -> Findings:
        """Read this cycle's slice and compare it; empty findings when the slice could not be read."""
        now = self.clock.now()
        cursor, checked = self._load()
        members = self._members_by_group(every)
        counts = {group_id: len(users) for group_id, users in members.items()}
        total = round_calls(
            cursor.users_pages or math.ceil(len(every.users) / PAGE) or 1,
            cursor.groups_pages or math.ceil(len(every.groups) / PAGE) or 1,
            counts,
        )
        elapsed = now - checked if checked is not None else timedelta(0)
        report = SliceReport(budget=slice_budget(total, elapsed, self.period), phase=cursor.phase)
        self.last = report
        reading = _Slice(self, every, members, report)
        try:
            findings = reading.run(cursor)
        except TargetError as error:
            report.failed = str(error)
            logger.warning(
                "drift check: the slice could not be read; nothing is repaired from it, and the next cycle "
                "reads it again",
                extra={"phase": cursor.phase, "calls": report.calls, "error": str(error)},
            )
            return Findings()
        report.drifts = tuple(findings.drifts)
        if not dry_run:
            self._store(started, now, cursor, reading.cursor)
        logger.info(
            "drift check",
            extra={
                "phase": reading.cursor.phase,
                "calls": report.calls,
                "budget": report.budget,
                "drift": len(findings.drifts),
            },
        )
        return findings

    @staticmethod
    def _members_by_group(every: Ownership) -> dict[str, list[str]]:
        """Managed group -> the users idsync recorded as its members (one pass over the memberships)."""
        members: dict[str, list[str]] = {group_id: [] for group_id in every.groups}
        for group_id, user_id in every.memberships:
            if group_id in members:
                members[group_id].append(user_id)
        return members

    def managed_groups(self, every: Ownership) -> list[str]:
        """The groups whose members a round compares, in order: the managed ones outside PIM."""
        return sorted(sid for sid in every.groups if sid.lower() not in self.pim)

    # ------------------------------------------------------------------ the cursor

    def _load(self) -> tuple[Cursor, datetime | None]:
        """The cursor to go on from, and when the last slice was read. The slice a cycle checked counts as
        done only once that cycle completed (the cycle's completion record names its start)."""
        blob = load_blob(self.state, DRIFT_KEY)
        try:
            document = json.loads(blob) if blob else {}
        except ValueError:
            document = {}
        cursor = Cursor.of(document.get("cursor"))
        pending = document.get("pending")
        if isinstance(pending, dict):
            completed = self.state.get_item(COMPLETED_KEY) or {}
            if completed.get("at") == pending.get("started"):
                cursor = Cursor.of(pending.get("cursor"))
        try:
            checked = datetime.fromisoformat(str(document["checked"]))
        except (KeyError, ValueError):
            checked = None
        return cursor, checked

    def _store(self, started: datetime, now: datetime, committed: Cursor, following: Cursor) -> None:
        """Keep ``committed`` (where this slice began) and ``following`` as pending until this cycle completes."""
        document = {
            "cursor": asdict(committed),
            "pending": {"started": started.isoformat(), "cursor": asdict(following)},
            "checked": now.isoformat(),
        }
        save_blob(self.state, DRIFT_KEY, json.dumps(document, separators=(",", ":")).encode("utf-8"))

    def cursor(self) -> Cursor:
        """The cursor the next slice goes on from (status, tests)."""
        return self._load()[0]


class _Slice:
    """One slice's read and comparison, from a cursor, within a budget of List calls."""

    def __init__(
        self, check: DriftCheck, every: Ownership, members: Mapping[str, list[str]], report: SliceReport
    ) -> None:
        self.check = check
        self.target = check.target
        self.every = every
        self.members = members
        self.report = report
        self.cursor = Cursor()
        self.findings = Findings()
        self.unseen: set[str] = set()  # the cursor's ``unseen``, as a set while the slice reads
        self.user_of = {o.target_id: sid for sid, o in every.users.items()}  # target id -> source id
        self.group_of = {o.target_id: sid for sid, o in every.groups.items()}

    def run(self, start: Cursor) -> Findings:
        """Read from ``start`` until the budget is spent or the round ends. Raises TargetError."""
        self.cursor = Cursor(**asdict(start))
        self.unseen = set(start.unseen)
        try:
            while True:
                if self.cursor.confirm:
                    self._confirm()
                elif self.cursor.phase == USERS:
                    self._page(USERS)
                elif self.cursor.phase == GROUPS:
                    self._page(GROUPS)
                elif not self._members():
                    break  # the round ended: the next slice begins the next one
        except _Budget:
            pass
        self.cursor.unseen = sorted(self.unseen)
        return self.findings

    def _call(self) -> None:
        if self.report.calls >= self.report.budget:
            raise _Budget
        self.report.calls += 1

    def _listed(self, what: str, token: str | None, group_target: str = "") -> tuple[list[Any], str | None]:
        """One List call; a token AWS refuses (expired) begins that listing again. Raises TargetError."""
        self._call()
        try:
            if what == USERS:
                return self.target.list_users_page(token)
            if what == GROUPS:
                return self.target.list_groups_page(token)
            return self.target.list_memberships_page(group_target, token)
        except (TargetAuthError, TargetTransient):
            raise
        except TargetError as error:
            if token is None:
                raise
            logger.warning(
                "drift check: a page token was refused; the listing begins again",
                extra={"what": what, "error": str(error)},
            )
            self.cursor.token, self.cursor.pages, self.cursor.pairs = None, 0, {}
            if what != MEMBERS:
                self.unseen = self._managed_targets(what)
            return self._listed(what, None, group_target)

    def _managed_targets(self, what: str) -> set[str]:
        owned = self.every.users if what == USERS else self.every.groups
        return {o.target_id for o in owned.values()}

    def _page(self, what: str) -> None:
        """One page of users or groups, compared; a finished listing's missing objects are described next."""
        cursor = self.cursor
        if cursor.token is None and cursor.pages == 0:
            self.unseen = self._managed_targets(what)  # managed when the listing begins
        items, following = self._listed(what, cursor.token)
        for item in items:
            if what == USERS:
                self._compare_user(item)
            else:
                self._compare_group(item)
        self.unseen -= {item.target_id for item in items}
        cursor.token, cursor.pages = following, cursor.pages + 1
        if following is None:
            # still managed, and never listed: deleted by hand, or created again since (DescribeUser tells)
            known = self.user_of if what == USERS else self.group_of
            cursor.confirm = [[what, t] for t in sorted(self.unseen) if t in known]
            if what == USERS:
                cursor.users_pages, cursor.phase = cursor.pages, GROUPS
            else:
                cursor.groups_pages, cursor.phase = cursor.pages, MEMBERS
            cursor.pages, self.unseen = 0, set()

    def _confirm(self) -> None:
        """Describe one managed object a finished listing did not show: gone, it is drift; there, compared."""
        what, target = self.cursor.confirm[0]
        self._call()
        if what == USERS:
            user = self.target.describe_user(target)
            source_id = self.user_of.get(target)
            if user is not None:
                self._compare_user(user)
            elif source_id is not None:
                self.findings.gone_users.add(target)
                self.findings.touched_users.add(source_id)
                name = self.every.users[source_id].user_name
                self.findings.drifts.append(Drift("user", source_id, name, "deleted outside idsync"))
        else:
            group = self.target.describe_group(target)
            group_id = self.group_of.get(target)
            if group is not None:
                self._compare_group(group)
            elif group_id is not None:
                self.findings.gone_groups.add(target)
                self.findings.touched_groups.add(group_id)
                name = self.every.groups[group_id].display_name
                self.findings.drifts.append(Drift("group", group_id, name, "deleted outside idsync"))
        self.cursor.confirm = self.cursor.confirm[1:]

    def _compare_user(self, actual: TargetUser) -> None:
        source_id = self.user_of.get(actual.target_id)
        if source_id is None:
            return  # not idsync's
        owned = self.every.users[source_id]
        differs = user_differences(owned, actual, self.check.managed, self.check.create_only)
        if differs:
            self.findings.users[actual.target_id] = actual
            self.findings.touched_users.add(source_id)
            self.findings.drifts.append(Drift("user", source_id, owned.user_name, f"{', '.join(differs)} edited"))

    def _compare_group(self, actual: TargetGroup) -> None:
        source_id = self.group_of.get(actual.target_id)
        if source_id is None:
            return
        owned = self.every.groups[source_id]
        differs = group_differences(owned, actual)
        if differs:
            self.findings.groups[actual.target_id] = actual
            self.findings.drifts.append(Drift("group", source_id, owned.display_name, f"{', '.join(differs)} edited"))

    def _members(self) -> bool:
        """List (on) one managed group's members and compare them once listed; False when the round ended."""
        cursor = self.cursor
        managed = self.check.managed_groups(self.every)
        if cursor.group is not None and cursor.group not in managed:
            cursor.group, cursor.token, cursor.pairs = None, None, {}  # no longer managed: its listing is moot
        group_id = cursor.group or next((g for g in managed if g > cursor.after), None)
        if group_id is None:
            self.cursor = Cursor(
                users_pages=cursor.users_pages, groups_pages=cursor.groups_pages, rounds=cursor.rounds + 1
            )
            return False
        group_target = self.every.groups[group_id].target_id
        if cursor.group != group_id:
            cursor.group, cursor.token, cursor.pairs = group_id, None, {}
        pairs, following = self._listed(MEMBERS, cursor.token, group_target)
        cursor.pairs.update((user, membership) for membership, user in pairs)
        cursor.token = following
        if following is None:
            self._compare_members(group_id, group_target, cursor.pairs)
            cursor.after, cursor.group, cursor.pairs = group_id, None, {}
        return True

    def _compare_members(self, group_id: str, group_target: str, actual: Mapping[str, str]) -> None:
        believed = {
            self.every.users[user_id].target_id: user_id
            for user_id in self.members.get(group_id, ())
            if user_id in self.every.users
        }
        group_name = self.every.groups[group_id].display_name
        drifted = False
        for user_target, user_id in sorted(believed.items()):
            if user_target not in actual:
                drifted = True
                self.findings.touched_users.add(user_id)
                name = f"{group_name} <- {self.every.users[user_id].user_name}"
                why = "member missing in IAM Identity Center (removed by hand, or its user or group deleted)"
                self.findings.drifts.append(Drift("membership", group_id, name, why))
        for user_target in sorted(actual):
            member = self.user_of.get(user_target)
            if member is None or user_target in believed:
                continue  # not a user idsync manages, or as believed
            drifted = True
            self.findings.touched_users.add(member)
            name = f"{group_name} <- {self.every.users[member].user_name}"
            self.findings.drifts.append(Drift("membership", group_id, name, "member added outside idsync"))
        if drifted:
            self.findings.members[group_target] = dict(actual)
