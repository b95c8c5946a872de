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
  none is ever skipped; so does a cycle that left one of the slice's repairs unsettled (a failed write);
* a managed group whose member listing answers that it does not exist (deleted by hand) is described and,
  gone, created again; the round goes on past it, so one missing group never stops the check;
* a slice whose read fails (throttled, refused, an AWS fault) repairs nothing: its partial read never
  becomes a deletion; a page token AWS no longer accepts begins that listing again;
* only objects idsync manages are compared: users and groups it does not own are never drift;
* a slice never makes more List calls than its budget;
* every managed object is read at least once every ``drift_check_hours`` while cycles run;
* a slice reads state in proportion to its slice, never all of ownership: a members-phase slice reads the
  owned groups, the owned memberships of the groups it listed and the users recorded in them (by key); a
  users-phase slice reads the owned users' target ids (two columns, no record decoded) and each page's
  owned users by key.

What a slice reads from the state store: the members phase (most of a round's cycles) reads the owned groups,
the memberships recorded for the groups it listed (one read of their sort-key prefixes on DynamoDB) and the
users recorded in them by key; only a listed member those users do not explain (added by hand, or a user
idsync does not manage) is looked up by its IAM Identity Center id (on SQLite an index; on DynamoDB one Query
of the user family projected to two attributes, whose read capacity is the family's). The groups phase reads
the owned groups only. The users phase reads every owned user's IAM Identity Center id once a slice (on
DynamoDB that projected Query) and, for each page listed, that page's owned users by key.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from idsync.delta import Touched
from idsync.drift import (
    PAGE,
    Drift,
    Findings,
    group_differences,
    members_calls_estimate,
    slice_budget,
    user_differences,
)
from idsync.errors import TargetAuthError, TargetError, TargetNotFound, TargetTransient
from idsync.model import CurrentView, DesiredView, OwnedGroup, OwnedUser, Ownership, TargetGroup, TargetUser
from idsync.ports import Clock, IdentityStore, StateStore
from idsync.services.blobs import load_blob, save_blob
from idsync.services.cycle import COMPLETED_KEY, UNSETTLED_KEY, current_from_ownership

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
    members_pages: int = 0  # membership pages the last finished round read (0: not known yet)
    members_read: int = 0  # membership pages this round has read so far
    rounds: int = 0  # rounds finished
    round_started: str = ""  # when the round under way read its first slice (ISO time; status only)
    round_finished: str = ""  # when the last finished round read its last slice (ISO time; status only)

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


class Believed:
    """What idsync recorded, read from the state store as a slice needs it (each read at most once a slice).

    ``every``: all of ownership when the cycle already holds it (every query is then answered from it).
    Raises StateError from each read.
    """

    def __init__(self, state: StateStore, every: Ownership | None = None) -> None:
        self.state = state
        self._every = every
        self._groups: dict[str, OwnedGroup] | None = None
        self._user_of: dict[str, str] | None = None

    def user_targets(self) -> Mapping[str, str]:
        """Target id -> source id, of every owned user (the users phase's: read once, on first use, without
        decoding a record)."""
        if self._user_of is None:
            if self._every is not None:
                self._user_of = {o.target_id: sid for sid, o in self._every.users.items()}
            else:
                self._user_of = self.state.owned_user_targets()
        return self._user_of

    def groups(self) -> Mapping[str, OwnedGroup]:
        """Every owned group (groups are few)."""
        if self._every is not None:
            return self._every.groups
        if self._groups is None:
            self._groups = dict(self.state.load_ownership_of((), ()).groups)
        return self._groups

    def members_of(self, groups: Collection[str]) -> dict[str, list[str]]:
        """Group -> the users idsync recorded as its members, for ``groups`` only."""
        members: dict[str, list[str]] = {group_id: [] for group_id in groups}
        recorded = self._every.memberships if self._every is not None else None
        if recorded is None:
            recorded = self.state.load_ownership_of((), members).memberships
        for group_id, user_id in recorded:
            if group_id in members:
                members[group_id].append(user_id)
        return members

    def users_by_target(self, target_ids: Collection[str]) -> dict[str, OwnedUser]:
        """Target id -> the owned user holding it, for ``target_ids`` only."""
        if self._every is None:
            return self.state.owned_users_by_target(target_ids) if target_ids else {}
        wanted = set(target_ids)
        return {o.target_id: o for o in self._every.users.values() if o.target_id in wanted}

    def users(self, source_ids: Collection[str]) -> dict[str, OwnedUser]:
        """Source id -> the owned user, for ``source_ids`` only (by key; no membership is read)."""
        if self._every is None:
            return self.state.owned_users(source_ids) if source_ids else {}
        return {k: v for k, v in self._every.users.items() if k in source_ids}

    def counts(self, excluded_groups: Collection[str]) -> tuple[int, int, int]:
        """(users, groups, memberships outside ``excluded_groups``), counted without loading a record."""
        if self._every is None:
            return self.state.count_ownership(excluded_groups)
        aside = {g.lower() for g in excluded_groups}
        kept = sum(1 for group_id, _ in self._every.memberships if group_id.lower() not in aside)
        return len(self._every.users), len(self._every.groups), kept


class _Budget(Exception):
    """The slice spent its calls."""


def load_cursor(state: StateStore) -> tuple[Cursor, datetime | None]:
    """The cursor the next slice goes on from, and when the last slice was read. The slice a cycle checked
    counts as done only once that cycle completed (the cycle's completion record names its start).
    Raises StateError."""
    return _cursor_of(state, load_blob(state, DRIFT_KEY))


def _cursor_of(state: StateStore, blob: bytes | None) -> tuple[Cursor, datetime | None]:
    try:
        document = json.loads(blob) if blob else {}
    except ValueError:
        document = {}
    cursor = Cursor.of(document.get("cursor"))
    pending = document.get("pending")
    if isinstance(pending, dict):
        completed = state.get_item(COMPLETED_KEY) or {}
        if completed.get("at") == pending.get("started") and not _unrepaired(state, pending):
            cursor = Cursor.of(pending.get("cursor"))
    try:
        checked = datetime.fromisoformat(str(document["checked"]))
    except (KeyError, ValueError):
        checked = None
    return cursor, checked


def _unrepaired(state: StateStore, pending: Mapping[str, Any]) -> bool:
    """Whether a write of the pending slice's repairs did not go through: the cycle left one of its drifted
    objects unsettled (failed, held back, not reached), and a delta cycle plans from ownership, which does
    not know the drift; so the slice is read again rather than forgotten until the next round."""
    left = state.get_item(UNSETTLED_KEY) or {}
    users, groups = set(left.get("users") or ()), set(left.get("groups") or ())
    return bool(users & set(pending.get("users") or ()) or groups & set(pending.get("groups") or ()))


def drift_status(state: StateStore) -> dict[str, Any] | None:
    """Where the drift check stands, for ``idsync status``: None before its first slice. Raises StateError."""
    blob = load_blob(state, DRIFT_KEY)
    if blob is None:
        return None
    cursor, checked = _cursor_of(state, blob)
    return {
        "phase": cursor.phase,
        "lastSlice": checked.isoformat() if checked else None,
        "roundStarted": cursor.round_started or None,
        "roundsFinished": cursor.rounds,
        "lastRoundFinished": cursor.round_finished or None,
    }


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
        every: Ownership | None,
        views: tuple[DesiredView, Ownership, CurrentView],
        touched: Touched | None,
        replan: Replan,
        dry_run: bool = False,
    ) -> tuple[DesiredView, Ownership, CurrentView]:
        """The cycle's (desired, owned, current) with this slice's drift folded in.

        ``every``: all of ownership when the cycle holds it (None: the slice reads what it needs from the state
        store, see the module docstring); ``views``: what the cycle plans from; ``touched``: the delta's touched set
        (None: the views cover everything), widened with the drifted objects and planned again by ``replan``.
        ``started``: the cycle's start, by which the next check knows whether this cycle completed. A dry run
        reads its slice and stores nothing. Raises StateError.
        """
        desired, owned, current = views
        findings = self.read_slice(started, Believed(self.state, every), dry_run)
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

    def read_slice(self, started: datetime, believed: Believed, dry_run: bool = False) -> Findings:
        """Read this cycle's slice and compare it; empty findings when the slice could not be read.
        Raises StateError."""
        now = self.clock.now()
        cursor, checked = load_cursor(self.state)
        total = self._round_calls(cursor, believed)
        elapsed = now - checked if checked is not None else timedelta(0)
        report = SliceReport(budget=slice_budget(total, elapsed, self.period), phase=cursor.phase)
        self.last = report
        reading = _Slice(self, believed, report)
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
        following = reading.cursor
        if following.rounds > cursor.rounds:
            following.round_finished = now.isoformat()  # the next slice begins the next round
        elif not following.round_started:
            following.round_started = now.isoformat()
        if not dry_run:
            self._store(started, now, cursor, reading.cursor, findings)
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

    def _round_calls(self, cursor: Cursor, believed: Believed) -> int:
        """List calls a round takes: as the last round took them, else estimated from ownership's counts."""
        users_pages, groups_pages, members_pages = cursor.users_pages, cursor.groups_pages, cursor.members_pages
        if users_pages and groups_pages and members_pages:
            return users_pages + groups_pages + members_pages
        managed = self.managed_groups(believed.groups())
        users, groups, memberships = believed.counts([g for g in believed.groups() if g.lower() in self.pim])
        return (
            (users_pages or math.ceil(users / PAGE) or 1)
            + (groups_pages or math.ceil(groups / PAGE) or 1)
            + (members_pages or members_calls_estimate(len(managed), memberships))
        )

    def managed_groups(self, groups: Iterable[str]) -> list[str]:
        """The groups whose members a round compares, in order: the managed ones outside PIM."""
        return sorted(sid for sid in groups if sid.lower() not in self.pim)

    # ------------------------------------------------------------------ the cursor

    def _store(
        self, started: datetime, now: datetime, committed: Cursor, following: Cursor, findings: Findings
    ) -> None:
        """Keep ``committed`` (where this slice began) and ``following`` as pending until this cycle completes,
        with the objects this slice found drifted (``load_cursor``: a repair that did not go through reads it again)."""
        pending = {
            "started": started.isoformat(),
            "cursor": asdict(following),
            "users": sorted(findings.touched_users),
            "groups": sorted(findings.touched_groups),
        }
        document = {"cursor": asdict(committed), "pending": pending, "checked": now.isoformat()}
        save_blob(self.state, DRIFT_KEY, json.dumps(document, separators=(",", ":")).encode("utf-8"))

    def cursor(self) -> Cursor:
        """The cursor the next slice goes on from (status, tests)."""
        return load_cursor(self.state)[0]


class _Slice:
    """One slice's read and comparison, from a cursor, within a budget of List calls."""

    def __init__(self, check: DriftCheck, believed: Believed, report: SliceReport) -> None:
        self.check = check
        self.target = check.target
        self.believed = believed
        self.report = report
        self.cursor = Cursor()
        self.findings = Findings()
        self.unseen: set[str] = set()  # the cursor's ``unseen``, as a set while the slice reads
        self.listed: list[tuple[str, str, dict[str, str]]] = []  # (group, its target, user target -> membership)
        self._group_of: dict[str, str] | None = None

    @property
    def user_of(self) -> Mapping[str, str]:
        """Target id -> source id, of every owned user."""
        return self.believed.user_targets()

    @property
    def group_of(self) -> Mapping[str, str]:
        """Target id -> source id, of every owned group."""
        if self._group_of is None:
            self._group_of = {o.target_id: sid for sid, o in self.believed.groups().items()}
        return self._group_of

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
        self._compare_listed()
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
        if what == USERS:
            return set(self.user_of)
        return {o.target_id for o in self.believed.groups().values()}

    def _page(self, what: str) -> None:
        """One page of users or groups, compared; a finished listing's missing objects are described next."""
        cursor = self.cursor
        if cursor.token is None and cursor.pages == 0:
            self.unseen = self._managed_targets(what)  # managed when the listing begins
        items, following = self._listed(what, cursor.token)
        if what == USERS:
            # the page's owned users, found by their IAM Identity Center ids: never all of them
            owners = self.believed.users_by_target({item.target_id for item in items})
            for item in items:
                self._compare_user(item, owners.get(item.target_id))
        else:
            for item in items:
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
            owner = self.believed.users_by_target([target]).get(target)
            if user is not None:
                self._compare_user(user, owner)
            elif owner is not None:
                self.findings.gone_users.add(target)
                self.findings.touched_users.add(owner.source_id)
                self.findings.drifts.append(Drift("user", owner.source_id, owner.user_name, "deleted outside idsync"))
        else:
            group = self.target.describe_group(target)
            group_id = self.group_of.get(target)
            if group is not None:
                self._compare_group(group)
            elif group_id is not None:
                self.findings.gone_groups.add(target)
                self.findings.touched_groups.add(group_id)
                name = self.believed.groups()[group_id].display_name
                self.findings.drifts.append(Drift("group", group_id, name, "deleted outside idsync"))
        self.cursor.confirm = self.cursor.confirm[1:]

    def _compare_user(self, actual: TargetUser, owned: OwnedUser | None) -> None:
        if owned is None:
            return  # not idsync's (or no longer: forgotten since the listing began)
        source_id = owned.source_id
        differs = user_differences(owned, actual, self.check.managed, self.check.create_only)
        if differs:
            self.findings.users[actual.target_id] = actual
            self.findings.touched_users.add(source_id)
            self.findings.drifts.append(Drift("user", source_id, owned.user_name, f"{', '.join(differs)} edited"))

    def _compare_group(self, actual: TargetGroup) -> None:
        source_id = self.group_of.get(actual.target_id)
        if source_id is None:
            return
        owned = self.believed.groups()[source_id]
        differs = group_differences(owned, actual)
        if differs:
            self.findings.groups[actual.target_id] = actual
            self.findings.drifts.append(Drift("group", source_id, owned.display_name, f"{', '.join(differs)} edited"))

    def _members(self) -> bool:
        """List (on) one managed group's members, to compare once listed; False when the round ended."""
        cursor = self.cursor
        groups = self.believed.groups()
        managed = self.check.managed_groups(groups)
        if cursor.group is not None and cursor.group not in managed:
            cursor.group, cursor.token, cursor.pairs = None, None, {}  # no longer managed: its listing is moot
        group_id = cursor.group or next((g for g in managed if g > cursor.after), None)
        if group_id is None:
            self.cursor = Cursor(
                users_pages=cursor.users_pages,
                groups_pages=cursor.groups_pages,
                members_pages=cursor.members_read,
                rounds=cursor.rounds + 1,
            )
            return False
        group_target = groups[group_id].target_id
        if cursor.group != group_id:
            cursor.group, cursor.token, cursor.pairs = group_id, None, {}
        try:
            pairs, following = self._listed(MEMBERS, cursor.token, group_target)
        except TargetNotFound:
            # the group is gone (deleted by hand): described next, and the round goes on without it
            cursor.confirm.append([GROUPS, group_target])
            cursor.after, cursor.group, cursor.token, cursor.pairs = group_id, None, None, {}
            return True
        cursor.members_read += 1
        cursor.pairs.update((user, membership) for membership, user in pairs)
        cursor.token = following
        if following is None:
            self.listed.append((group_id, group_target, cursor.pairs))
            cursor.after, cursor.group, cursor.pairs = group_id, None, {}
        return True

    def _compare_listed(self) -> None:
        """Compare the groups this slice listed in full with what idsync recorded: one read of their owned
        memberships and one, by key, of the users recorded in them; a listed member none of those users
        explains (added by hand, or not idsync's) is looked up by its IAM Identity Center id."""
        if not self.listed:
            return
        members = self.believed.members_of([group_id for group_id, _, _ in self.listed])
        records = self.believed.users({u for users in members.values() for u in users})
        owners = {owned.target_id: owned for owned in records.values()}
        unexplained = {t for _, _, actual in self.listed for t in actual} - owners.keys()
        if unexplained:
            owners |= self.believed.users_by_target(unexplained)
        listed_ids = {
            group_id: {owners[t].source_id for t in actual if t in owners} for group_id, _, actual in self.listed
        }
        for group_id, group_target, actual in self.listed:
            believed = set(members[group_id])
            group_name = self.believed.groups()[group_id].display_name
            gone = sorted((records[u] for u in believed - listed_ids[group_id] if u in records), key=_by_target)
            added = sorted(
                (owners[t] for t in actual if t in owners and owners[t].source_id not in believed), key=_by_target
            )
            for owned in gone:
                self.findings.touched_users.add(owned.source_id)
                why = "member missing in IAM Identity Center (removed by hand, or its user or group deleted)"
                self.findings.drifts.append(Drift("membership", group_id, f"{group_name} <- {owned.user_name}", why))
            for owned in added:
                self.findings.touched_users.add(owned.source_id)
                name = f"{group_name} <- {owned.user_name}"
                self.findings.drifts.append(Drift("membership", group_id, name, "member added outside idsync"))
            if gone or added:
                self.findings.members[group_target] = dict(actual)


def _by_target(owned: OwnedUser) -> str:
    return owned.target_id
