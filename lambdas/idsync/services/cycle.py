"""The provisioning cycle: one lease, one read of what changed, one plan, one apply.

A cycle is *full* the first time, after a delta link expired, when the mapping or scope changed,
and every ``full_reconcile_hours``: it reads every user and group from Entra and every user and
group from IAM Identity Center, which also repairs drift made by hand in AWS. Other cycles are
*delta* cycles: they read only what changed in Entra (Graph delta queries), fold it into the
mirror, and compare with what idsync recorded, so a cycle with no change makes no AWS call.

A cycle that runs out of time stops between two writes. Every write is recorded as it happens,
and the delta links and mirror are stored only when a cycle finishes, so the next invocation
reads the same changes again (replays are harmless) and carries on where this one stopped.

Safety rules (each has a test in tests/unit/test_cycle_safety.py or tests/unit/test_full_reconcile.py):

* a cycle whose deletion guard trips stores neither its mirror nor its delta links: what it read
  (an empty directory during a Graph incident, say) never becomes the baseline, and the next cycle
  reads in full again;
* a resumed full reconcile is still a full reconcile: it reads IAM Identity Center again;
* every phase of a full cycle stops at the time budget and resumes where it stopped: the Graph full read
  between two pages (its nextLinks and what it read are checkpointed), the IAM Identity Center read
  between two List calls (what it listed, and where each listing goes on), then the writes. An unfinished
  read is never the directory nor IAM Identity Center: nothing is planned from it (so no deletion), and it
  never becomes the mirror or the delta links. Every invocation makes progress (at least one request);
* no blob outlives its purpose: a finished, distrusted or abandoned checkpoint's blobs are deleted, and
  a blob's replaced chunks are deleted (``idsync.services.blobs``);
* throttling and AWS-side faults end a cycle early without counting as failures (no quarantine);
* restorable Entra deletions (soft-deleted users and Microsoft 365 groups) lose their memberships
  but keep their Identity Store object until Entra deletes them for good or ``restorable_grace``
  passes, so a restore brings back the same id.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from idsync.access import AccessPlan, AccessPolicy
from idsync.delta import Before, Touched, narrow, touched_by, unsettled, with_out_of_scope
from idsync.errors import (
    DeltaExpired,
    DirectoryAuthError,
    DirectoryError,
    StateError,
    TargetAuthError,
    TargetError,
    TargetTransient,
)
from idsync.mirror import SOFT_DELETED, Mirror
from idsync.model import (
    Action,
    CurrentView,
    CycleReport,
    DesiredView,
    Group,
    Kind,
    Operation,
    Ownership,
    Plan,
    PlanPolicy,
    Refusal,
    Status,
    TargetGroup,
    TargetUser,
    User,
    content_hash,
)
from idsync.plan import EXTENSIONS, Totals, build_desired, make_plan, restrict, set_aside_memberships
from idsync.ports import (
    ChangeSource,
    Clock,
    DirectoryChanges,
    FullRead,
    IdentityStore,
    LookupUpkeep,
    Notifier,
    StateStore,
)
from idsync.services.access import NEW_GROUP, AccessService, GroupRef
from idsync.services.blobs import delete_blob, load_blob, save_blob
from idsync.services.control import load_pause
from idsync.services.escrow import (
    Escrow,
    Quarantine,
    clear_quarantine,
    failure_ratio_trips,
    load_quarantine,
    save_quarantine,
)
from idsync.services.mirror_store import load_mirror, save_mirror
from idsync.services.sync import PROBE_OPS, Applier, resolve_intent

if TYPE_CHECKING:
    from idsync.services.drift import DriftCheck
    from idsync.services.jit import JitService

logger = logging.getLogger(__name__)

LEASE = "sync"
CYCLE_KEY = "cycle"  # delta links, last full reconcile, configuration fingerprint
MIRROR_KEY = "mirror"
CHECKPOINT_KEY = "checkpoint"  # a full cycle stopped by its time budget: its mirror and links
CHECKPOINT_MIRROR = f"{CHECKPOINT_KEY}:mirror"  # blob: the checkpoint's mirror
CHECKPOINT_TARGET = f"{CHECKPOINT_KEY}:target"  # blob: IAM Identity Center as read so far (no write since)
FULL_READ_KEY = "full-read"  # a full read of Entra under way: when it began, for which configuration
FULL_READ_BLOB = f"{FULL_READ_KEY}:graph"  # blob: the pages read so far and the nextLinks to go on from
RUN_CURRENT, RUN_LAST = "run:current", "run:last"
REFUSALS_KEY = "refusals"
SOFT_DELETED_KEY = "soft-deleted"  # Entra's deleted items -> when first seen: kept even when a read is distrusted
COMPLETED_KEY = "last-complete"  # when a cycle last completed, and whether a stall was notified
COMPARE_EVERY = timedelta(hours=1)  # the longest a quiet tenant's cycles go without counting ownership
UNSETTLED_KEY = "unsettled"  # what the next delta cycle must plan again, and ownership's size after this one
STATUS_EVERY_SECONDS = 2.0


class UserMapping(Protocol):
    managed_attributes: frozenset[str]
    create_only_attributes: frozenset[str]

    def map(self, obj: Mapping[str, Any]) -> User | Refusal: ...


class GroupMapping(Protocol):
    def map(self, obj: Mapping[str, Any]) -> Group | Refusal: ...


class ScopeRules(Protocol):
    fingerprint: str

    def user(self, obj: Mapping[str, Any]) -> Any: ...

    def group(self, obj: Mapping[str, Any]) -> Any: ...


@dataclass
class CycleOptions:
    dry_run: bool = False
    allow_deletions: bool = False
    force_full: bool = False
    ignore_quarantine: bool = False  # an operator's manual run
    should_stop: Callable[[], bool] = field(default=lambda: False)
    progress: Callable[[int, int], None] | None = None
    lease_seconds: int = 900


@dataclass
class CycleOutcome:
    """A report, or why no cycle ran."""

    report: CycleReport | None
    skipped: str | None = None
    mode: str = ""
    plan: Plan | None = None


@dataclass(frozen=True)
class Scoping:
    mode: str  # "assigned" | "all"
    transitive: bool


@dataclass
class TargetRead:
    """IAM Identity Center as listed so far by a full cycle: users, groups, the memberships of the groups
    whose members were read (``members_read``) and where each unfinished listing goes on. Unfinished, it is
    never a view of IAM Identity Center: the cycle plans from ``view()`` only once ``read_target`` says it is done.
    """

    users: dict[str, TargetUser] = field(default_factory=dict)
    users_next: str | None = None
    users_done: bool = False
    groups: dict[str, TargetGroup] = field(default_factory=dict)
    groups_next: str | None = None
    groups_done: bool = False
    memberships: dict[tuple[str, str], str] = field(default_factory=dict)
    members_read: set[str] = field(default_factory=set)
    member_group: str | None = None  # the group whose members are being listed, from ``member_next``
    member_next: str | None = None
    # ownership's (users, groups, memberships) when listed: another count means another writer came in between
    owned: tuple[int, int, int] | None = None

    def view(self) -> CurrentView:
        return CurrentView(self.users, self.groups, self.memberships)

    @property
    def summary(self) -> str:
        """What was listed so far, for the run status."""
        return f"{len(self.users)} users, {len(self.groups)} groups, members of {len(self.members_read)} groups"

    def restart(self, what: str) -> None:
        """Forget one listing ("users", "groups" or a group id), which then begins again."""
        if what == "users":
            self.users, self.users_next = {}, None
        elif what == "groups":
            self.groups, self.groups_next = {}, None
        else:
            self.memberships = {k: v for k, v in self.memberships.items() if k[0] != what}
            self.member_group, self.member_next = None, None

    def to_bytes(self) -> bytes:
        document = {
            "users": [[u.target_id, u.user_name, u.doc, u.manager_target_id] for u in self.users.values()],
            "users_next": self.users_next,
            "users_done": self.users_done,
            "groups": [[g.target_id, g.display_name, g.description] for g in self.groups.values()],
            "groups_next": self.groups_next,
            "groups_done": self.groups_done,
            "memberships": [[g, u, m] for (g, u), m in self.memberships.items()],
            "members_read": sorted(self.members_read),
            "member_group": self.member_group,
            "member_next": self.member_next,
            "owned": list(self.owned) if self.owned is not None else None,
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, blob: bytes) -> TargetRead | None:
        """The stored read, or None when damaged (the read then begins again)."""
        try:
            d = json.loads(blob)
            return cls(
                {str(i): TargetUser(str(i), str(n), doc, m) for i, n, doc, m in d["users"]},
                d["users_next"],
                bool(d["users_done"]),
                {str(i): TargetGroup(str(i), str(n), desc) for i, n, desc in d["groups"]},
                d["groups_next"],
                bool(d["groups_done"]),
                {(str(g), str(u)): str(m) for g, u, m in d["memberships"]},
                {str(g) for g in d["members_read"]},
                d["member_group"],
                d["member_next"],
                _counts(d.get("owned")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _counts(value: Any) -> tuple[int, int, int] | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    return (int(value[0]), int(value[1]), int(value[2]))


def ownership_counts(owned: Ownership) -> tuple[int, int, int]:
    """(users, groups, memberships) idsync has recorded: what a stored listing of IAM Identity Center was made with."""
    return (len(owned.users), len(owned.groups), len(owned.memberships))


def current_from_ownership(owned: Ownership) -> CurrentView:
    """What IAM Identity Center holds, as idsync recorded it (delta cycles read nothing from AWS)."""
    users: dict[str, TargetUser] = {}
    for o in owned.users.values():
        manager = ((o.doc.get(EXTENSIONS) or {}).get("aws:identitystore:enterprise") or {}).get("manager") or {}
        users[o.target_id] = TargetUser(o.target_id, o.user_name, o.doc, manager.get("value"))
    groups = {o.target_id: TargetGroup(o.target_id, o.display_name, o.description) for o in owned.groups.values()}
    memberships = {}
    for m in owned.memberships.values():
        group = owned.groups.get(m.group_source_id)
        user = owned.users.get(m.user_source_id)
        if group is not None and user is not None:
            memberships[(group.target_id, user.target_id)] = m.membership_id
    return CurrentView(users, groups, memberships)


class _Tally:
    """Ownership's size for one cycle, counted at most once and only when asked (on DynamoDB a count reads
    the capacity of every record counted): the users and groups the cycle's record of what it left unsettled
    starts from (``base``: known without counting, when it is), and the deletion guard's totals, which alone
    count the memberships."""

    def __init__(self, state: StateStore, pim_groups: tuple[str, ...]) -> None:
        self.state, self.pim_groups = state, pim_groups
        self.base: tuple[int, int] | None = None
        self.carried = False  # ``base`` is the last cycle's record, not compared with a count this cycle
        self.compared: str | None = None  # when the carried record was last compared with a count (ISO time)
        self._counted: tuple[int, int, int] | None = None
        self._users_and_groups: tuple[int, int] | None = None

    def carry(self, recorded: tuple[int, int], compared: str) -> None:
        """Carry the recorded sizes forward, uncounted (a cycle with nothing to plan)."""
        self.base, self.carried, self.compared = recorded, True, compared

    def unverified(self) -> bool:
        """Whether the sizes were carried and not yet compared with a count this cycle."""
        return self.carried and self.compared is not None

    def changed_since_record(self) -> bool:
        """Whether ownership's users and groups, counted, differ from the carried record."""
        counted = self._count_users_and_groups()
        self.compared = None  # compared now
        return counted != self.base

    def _count_users_and_groups(self) -> tuple[int, int]:
        """The first count this cycle took: a later one (the guard's) could hide another writer's write, made in
        between, from the next cycle's comparison."""
        if self._users_and_groups is None:
            counted = self._counted
            self._users_and_groups = counted[:2] if counted else self.state.count_users_and_groups()
        return self._users_and_groups

    def _count(self) -> tuple[int, int, int]:
        if self._counted is None:
            self._counted = self.state.count_ownership(self.pim_groups)
        return self._counted

    def users_and_groups(self) -> tuple[int, int]:
        """``base`` when known, else counted. A cycle that carried the recorded sizes forward keeps them even
        if the guard counts later: a count taken then could hide another writer's write from the next cycle."""
        if self.base is not None:
            return self.base
        return self._count_users_and_groups()

    def totals(self) -> tuple[int, int]:
        """(managed users and groups, managed memberships outside PIM for Groups groups)."""
        users, groups, memberships = self._count()
        return users + groups, memberships


class CycleService:
    """Runs provisioning cycles; the scheduled Lambda and `idsync sync` both call ``run``."""

    drift: DriftCheck | None = None  # the drift check delta cycles run (idsync.services.drift); wiring sets it

    def __init__(
        self,
        source: ChangeSource,
        target: IdentityStore,
        state: StateStore,
        user_mapper: UserMapping,
        group_mapper: GroupMapping,
        scope: ScopeRules,
        scoping: Scoping,
        policy: PlanPolicy,
        clock: Clock,
        notifier: Notifier | None = None,
        full_reconcile: timedelta = timedelta(hours=24),
        config_fingerprint: str = "",
        restorable_grace: timedelta = timedelta(days=30),
        pim: JitService | None = None,
        pim_groups: Iterable[str] = (),
        access: AccessService | None = None,
        concurrency: int = 1,
        record_every: int = 1,
        narrow_delta: bool = True,
    ) -> None:
        """``concurrency``: Identity Store writes in flight at once; ``record_every``: ownership records
        written per batch (see ``services.sync.Applier``)."""
        self.source = source
        self.target = target
        self.state = state
        self.user_mapper = user_mapper
        self.group_mapper = group_mapper
        self.scope = scope
        self.scoping = scoping
        self.policy = replace(
            policy,
            managed_attributes=policy.managed_attributes or user_mapper.managed_attributes,
            create_only_attributes=policy.create_only_attributes or user_mapper.create_only_attributes,
        )
        self.clock = clock
        self.notifier = notifier
        self.full_reconcile = full_reconcile
        self.restorable_grace = restorable_grace
        self.access = access
        self.concurrency = concurrency
        self.record_every = record_every
        self.probe = PROBE_OPS  # operations measured one at a time before the applier's pool may grow
        self.fingerprint = content_hash([config_fingerprint, scope.fingerprint, sorted(self.policy.managed_attributes)])
        # PIM for Groups: the plan leaves these groups' memberships to idsync.pim's rule (see _pim_pass)
        self.pim = pim
        self.pim_groups = tuple(pim.groups if pim is not None else pim_groups)
        # per cycle: when its full read began, where a read stopped, whether it asked Graph for pages already
        self._full_started = clock.now()
        self._stopped_reading = ""
        self._read_entra = False

        self.narrow_delta = narrow_delta
        self.touched: Touched | None = None  # what the last delta read touched (None after a full read)

    def _pool(self) -> tuple[int, int]:
        return self.concurrency, self.record_every

    # ------------------------------------------------------------------ reading Entra

    def _read(
        self, force_full: bool, stop: Callable[[], bool] | None = None
    ) -> tuple[Mirror, dict[str, str], str, dict[str, Any]] | None:
        """(mirror, new links, mode, cycle record) for this cycle.

        ``stop`` (a cycle holding the lease): a full read goes page by page, is checkpointed when ``stop()``
        ends it early, and is carried on by the next call; None is returned then. Without ``stop`` (a dry
        run, ``explain``) a full read is made in one go and nothing is stored.
        """
        record = self.state.get_item(CYCLE_KEY) or {}
        checkpoint = self.state.get_item(CHECKPOINT_KEY)
        partial = self._partial_read() if stop is not None else None
        mirror: Mirror | None = None
        links: Mapping[str, str] | None = None
        mode = "full"
        if partial is not None:
            pass  # a full read under way goes on, whatever else is stored
        elif checkpoint is not None and not force_full:
            blob = load_blob(self.state, CHECKPOINT_MIRROR)
            mirror = Mirror.from_bytes(blob) if blob else None
            links = checkpoint.get("links")
            mode = "resume"
        elif not force_full and self._delta_allowed(record):
            mirror = load_mirror(self.state, MIRROR_KEY)
            links = record.get("links")
            mode = "delta"
        if mirror is None or not links:
            mirror, links, mode = Mirror(), None, "full"
        try:
            if mode == "full" and stop is not None:
                read = self._read_full(partial, stop)
                if read is None:
                    return None
                changes = read
            else:
                changes = self.source.read_changes(links)
        except DeltaExpired:
            mirror, mode = Mirror(), "full"
            if stop is None:
                changes = self.source.read_changes(None)
            else:
                read = self._read_full(None, stop)
                if read is None:
                    return None
                changes = read
        if changes.full:
            mirror = Mirror(soft_deleted=self._soft_deleted_before(mirror))
        named_groups = [str(g["id"]) for g in changes.groups] + list(changes.removed_groups)
        before = None if changes.full else Before.of(mirror, named_groups, self.scoping.transitive)
        now = self.clock.now().isoformat()
        mirror.merge_users(changes.users, changes.removed_users, now)
        mirror.merge_groups(changes.groups, changes.removed_groups, changes.member_changes, full=changes.full, now=now)
        if changes.full:
            # a full delta round does not list deleted items: what was restorable before still is, and
            # Graph's deleted items (read alongside) add what was soft-deleted since, with its deletion time
            for object_id, deleted_at in changes.deleted_items.items():
                when = _iso_or(deleted_at, now)
                seen = mirror.soft_deleted.get(object_id)
                # a delta read only knows when it saw the removal: Graph's deletion time is earlier, or equal
                if seen is None or datetime.fromisoformat(when) < datetime.fromisoformat(seen):
                    mirror.soft_deleted[object_id] = when
            alive = set(mirror.users) | set(mirror.groups)
            mirror.soft_deleted = {i: t for i, t in mirror.soft_deleted.items() if i not in alive}
        if self.scoping.mode == "assigned":
            users, groups = self.source.read_assignments()
            mirror.set_assignments(users, groups)
        self.touched = None
        if before is not None and mode == "delta":
            self.touched = touched_by(
                before,
                mirror,
                [str(u["id"]) for u in changes.users] + list(changes.removed_users),
                named_groups,
                [(c.group_id, c.member_id, c.member_type) for c in changes.member_changes],
                self.scoping.mode,
                self.scoping.transitive,
            )
        return mirror, dict(changes.links), mode, record

    def _read_at_once(self) -> tuple[Mirror, dict[str, str], str, dict[str, Any]]:
        """What the next cycle would read, read in one go and stored nowhere (explain, on demand, plans)."""
        read = self._read(force_full=False)
        assert read is not None  # without a stop, a read always finishes
        return read

    def _partial_read(self) -> FullRead | None:
        """The full read of Entra under way, if any; one begun for another configuration, one older than the
        full-reconcile interval, or a damaged one is deleted (the read begins again)."""
        record = self.state.get_item(FULL_READ_KEY)
        if record is None:
            return None
        try:
            started = datetime.fromisoformat(str(record.get("started")))
            fresh = self.clock.now() - started < self.full_reconcile
        except (ValueError, TypeError):
            started, fresh = self.clock.now(), False
        blob = (
            load_blob(self.state, FULL_READ_BLOB) if fresh and record.get("fingerprint") == self.fingerprint else None
        )
        read = FullRead.from_bytes(blob) if blob else None
        if read is None:
            logger.info("a full read under way is dropped: begun for another configuration, too old, or damaged")
            self._drop_full_read()
            return None
        self._full_started = started
        return read

    def _read_full(self, progress: FullRead | None, stop: Callable[[], bool]) -> DirectoryChanges | None:
        """Carry the full read of Entra on (or begin it) until done or stopped; None when stopped (its progress
        is stored first). Beginning a full read abandons a checkpoint left by an earlier one.

        Raises DirectoryError, StateError.
        """
        if progress is None:
            self._drop_checkpoint()
            progress = self._begin_full_read()
        self._read_entra = True
        try:
            read = self.source.read_full(progress, stop)
        except DeltaExpired as error:
            if not progress.pages:
                raise
            # Graph forgot the nextLink (it keeps them for a while only): the read begins again, now
            logger.warning("a full read's nextLink expired; the read begins again", extra={"error": str(error)})
            read = self.source.read_full(self._begin_full_read(), stop)
        if not read.done:
            self._store_full_read(read)
            self._stopped_reading = f"Entra (after {read.pages} delta pages)"
            return None
        return read.changes()

    def _begin_full_read(self) -> FullRead:
        """A new full read, recorded before its first request: a process that dies during it (an operator's
        forced full reconcile, say) is carried on by the next run rather than forgotten."""
        self._full_started = self.clock.now()
        read = FullRead()
        self._store_full_read(read)
        return read

    def _store_full_read(self, read: FullRead) -> None:
        save_blob(self.state, FULL_READ_BLOB, read.to_bytes())
        # the record last: it names a blob that is complete
        self.state.put_item(
            FULL_READ_KEY,
            {"started": self._full_started.isoformat(), "fingerprint": self.fingerprint, "pages": read.pages},
        )

    def _drop_full_read(self) -> None:
        """Forget the full read under way: its blob first, so no chunk outlives the record naming it."""
        if self.state.get_item(FULL_READ_KEY) is None and self.state.get_item(FULL_READ_BLOB) is None:
            return
        delete_blob(self.state, FULL_READ_BLOB)
        self.state.delete_item(FULL_READ_KEY)

    def _drop_checkpoint(self) -> None:
        """Forget a checkpoint (finished, distrusted or abandoned): its blobs first, then the item (a cycle
        without one writes nothing here)."""
        delete_blob(self.state, CHECKPOINT_MIRROR)
        delete_blob(self.state, CHECKPOINT_TARGET)
        if self.state.get_item(CHECKPOINT_KEY) is not None:
            self.state.delete_item(CHECKPOINT_KEY)

    def _soft_deleted_before(self, mirror: Mirror | None) -> dict[str, str]:
        """Objects in Entra's deleted items as last known: the state item, else the stored mirror."""
        kept = self.state.get_item(SOFT_DELETED_KEY)
        if kept is not None:
            return {str(k): str(v) for k, v in (kept.get("items") or {}).items()}
        if mirror is None or not mirror.soft_deleted:
            mirror = load_mirror(self.state, MIRROR_KEY)
        return dict(mirror.soft_deleted) if mirror is not None else {}

    def _keep_soft_deleted(self, mirror: Mirror) -> None:
        """Store what is in Entra's deleted items apart from the mirror, which a distrusted read throws away."""
        kept = self.state.get_item(SOFT_DELETED_KEY)
        if kept is None or kept.get("items") != mirror.soft_deleted:
            self.state.put_item(SOFT_DELETED_KEY, {"items": dict(mirror.soft_deleted)})

    def _delta_allowed(self, record: Mapping[str, Any]) -> bool:
        if not record.get("links") or record.get("fingerprint") != self.fingerprint:
            return False
        last_full = record.get("last_full")
        if not last_full:
            return False
        return self.clock.now() - datetime.fromisoformat(last_full) < self.full_reconcile

    def desired(self, mirror: Mirror) -> DesiredView:
        users, groups, members = mirror.in_scope(self.scoping.mode, self.scoping.transitive)
        users = [u for u in users if not u.get(SOFT_DELETED)]
        view = build_desired(users, groups, members, self.user_mapper, self.group_mapper, self.scope)
        alive = {uid for uid, obj in mirror.users.items() if not obj.get(SOFT_DELETED)}
        now = self.clock.now()
        retained = frozenset(
            object_id
            for object_id, since in mirror.soft_deleted.items()
            if now - datetime.fromisoformat(since) < self.restorable_grace
        )
        return replace(view, out_of_scope=frozenset(alive - set(view.users)), retained=retained)

    def read_target(
        self,
        desired: DesiredView,
        owned: Ownership,
        stop: Callable[[], bool] = lambda: False,
        read: TargetRead | None = None,
        first_free: bool = True,
    ) -> tuple[TargetRead, bool]:
        """Every user and group in IAM Identity Center, and the members of the groups that matter, and True
        once all is listed (``TargetRead.view()`` is then what AWS holds).

        One List call at a time, from where ``read`` stopped, until ``stop()`` answers True between two calls
        (with ``first_free``, never before this call's first): the read is then unfinished (False). A listing
        whose token AWS no longer accepts begins again. Raises TargetError.
        """
        read = read if read is not None else TargetRead()
        calls = 0 if first_free else 1

        def may_call() -> bool:
            nonlocal calls
            if calls and stop():
                return False
            calls += 1
            return True

        while not read.users_done:
            if not may_call():
                return read, False
            users, read.users_next = self._listed(read.users_next, read, "users")
            read.users.update((u.target_id, u) for u in users)
            read.users_done = read.users_next is None
        while not read.groups_done:
            if not may_call():
                return read, False
            groups, read.groups_next = self._listed(read.groups_next, read, "groups")
            read.groups.update((g.target_id, g) for g in groups)
            read.groups_done = read.groups_next is None
        wanted = {g.display_name for g in desired.groups.values()}
        owned_targets = {o.target_id for o in owned.groups.values()}
        for group in read.groups.values():
            group_id = group.target_id
            if group_id in read.members_read or not (group_id in owned_targets or group.display_name in wanted):
                continue
            while True:
                if not may_call():
                    return read, False
                token = read.member_next if read.member_group == group_id else None
                pairs, following = self._listed(token, read, group_id)
                read.memberships.update(((group_id, user_id), membership_id) for membership_id, user_id in pairs)
                if following is None:
                    read.members_read.add(group_id)
                    read.member_group, read.member_next = None, None
                    break
                read.member_group, read.member_next = group_id, following
        return read, True

    def _list_page(self, what: str, token: str | None) -> tuple[list[Any], str | None]:
        """One List call: ``what`` is "users", "groups" or the id of a group whose members are listed."""
        if what == "users":
            return self.target.list_users_page(token)
        if what == "groups":
            return self.target.list_groups_page(token)
        return self.target.list_memberships_page(what, token)

    def _listed(self, token: str | None, read: TargetRead, what: str) -> tuple[list[Any], str | None]:
        """One List call of ``what`` from ``token``; a resumed token AWS refuses (expired) restarts that listing.
        Raises TargetError."""
        try:
            return self._list_page(what, token)
        except (TargetAuthError, TargetTransient):
            raise
        except TargetError as error:
            if token is None:
                raise
            logger.warning(
                "a listing's token was refused; the listing begins again", extra={"what": what, "error": str(error)}
            )
            read.restart(what)
            return self._list_page(what, None)

    # ------------------------------------------------------------------ the cycle

    def run(self, options: CycleOptions | None = None) -> CycleOutcome:
        """Run one cycle unless paused, quarantined or another cycle holds the lease.

        A pause holds every cycle but a dry run (nothing is written); ``ignore_quarantine`` does not
        override it. A held cycle (paused, in quarantine) still runs the PIM pass without additions, so PIM
        access ends on time (``_pim_removals``).

        Raises DirectoryError / TargetError when Entra or AWS cannot be reached (after
        recording quarantine when credentials were rejected).
        """
        opts = options or CycleOptions()
        now = self.clock.now()
        paused = load_pause(self.state)
        if paused is not None and not opts.dry_run:
            self._pim_removals("paused")
            return CycleOutcome(None, skipped=paused.describe())
        quarantine = load_quarantine(self.state)
        if quarantine and not quarantine.due(now) and not opts.ignore_quarantine and not opts.dry_run:
            self._pim_removals("quarantine")
            return CycleOutcome(
                None,
                skipped=f"in quarantine since {quarantine.since.isoformat()}: {quarantine.reason}; "
                f"next attempt after {(quarantine.last_attempt + timedelta(days=1)).isoformat()}; "
                + quarantine.how_to_leave,
            )
        owner = uuid.uuid4().hex
        if not opts.dry_run and not self.state.acquire_lease(LEASE, owner, now, opts.lease_seconds):
            return CycleOutcome(None, skipped="another cycle is running (the sync lease is held); this one exits")
        try:
            outcome = self._run(opts, quarantine)
            if not opts.dry_run:
                self._upkeep(opts)
            return outcome
        except (DirectoryAuthError, TargetAuthError) as error:
            if not opts.dry_run:
                self._enter_quarantine(quarantine, f"credentials or permissions rejected: {error}")
                self._pim_removals("failed")
            raise
        except (DirectoryError, TargetError, StateError):
            if not opts.dry_run:
                self._pim_removals("failed")  # the PIM safety net never waits for Entra or AWS to recover
            raise
        finally:
            if not opts.dry_run:
                self.state.release_lease(LEASE, owner)

    def _upkeep(self, opts: CycleOptions) -> None:
        """The state store's own upkeep, in what is left of the invocation after a cycle: never fails it."""
        if not isinstance(self.state, LookupUpkeep):
            return
        try:
            self.state.upgrade_lookups(self.clock.now(), opts.should_stop)
        except Exception as error:  # the cycle is done: whatever its upkeep met, it is tried again after the next
            logger.warning("state upkeep failed; it is tried again after the next cycle", extra={"error": str(error)})

    def _run(self, opts: CycleOptions, quarantine: Quarantine | None) -> CycleOutcome:
        started = self.clock.now()
        cycle_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
        self._full_started, self._stopped_reading, self._read_entra = started, "", False
        stop = None if opts.dry_run else opts.should_stop  # a dry run stores nothing, so it reads in one go
        read = self._read(opts.force_full, stop)
        if read is None:
            return self._stopped_while_reading(cycle_id, started, "full")
        mirror, links, mode, record = read
        if not opts.dry_run:
            self._keep_soft_deleted(mirror)
        # ownership is loaded only when an intent is left to settle
        resolved = not opts.dry_run and resolve_intent(self.state, self.target)
        tally = _Tally(self.state, self.pim_groups)
        touched = self._delta_touched(mirror, tally) if mode == "delta" and not resolved else None
        # a resumed full reconcile compares with AWS too, or the drift it found would be forgotten
        full = mode in ("full", "resume")
        listed: TargetRead | None = None
        totals: Totals = None
        if touched is not None:
            # ownership read by key (the Applier asks for more when it must); the guard's totals are counted
            # only if a threshold needs them
            totals = tally.totals
            desired, owned = self._delta_views(mirror, touched)
            current = current_from_ownership(owned)
        else:
            owned = self.state.load_ownership()
            tally.base = (len(owned.users), len(owned.groups))
            desired = self.desired(mirror)
            if full:
                # the invocation's first request is made whatever the budget says, so every invocation makes progress
                listed, done = self.read_target(
                    desired,
                    owned,
                    stop or (lambda: False),
                    self._target_progress(mode, opts, owned),
                    not self._read_entra,
                )
                listed.owned = ownership_counts(owned)
                if not done:
                    self._checkpoint_target(listed, mirror, links, mode)
                    return self._stopped_while_reading(cycle_id, started, mode)
                current = listed.view()
            else:
                current = current_from_ownership(owned)
        # ---- drift check (idsync.services.drift): a slice of IAM Identity Center; what differs is planned too
        if self.drift is not None and mode == "delta":
            whole: list[bool] = []  # set when the drift's work met ownership changed by another writer

            def replan(widened: Touched) -> tuple[DesiredView, Ownership]:
                if tally.unverified() and tally.changed_since_record():
                    # nothing was to be planned, so ownership was not compared with the record: it is now, and
                    # changed since (another writer, a crash), this cycle plans from all of it, as a cycle whose
                    # own work met that change would
                    whole.append(True)
                    everything = self.state.load_ownership()
                    tally.base, tally.carried = (len(everything.users), len(everything.groups)), False
                    return self.desired(mirror), everything
                return self._delta_views(mirror, widened)

            desired, owned, current = self.drift.check(
                started,
                owned if touched is None else None,  # None: the check reads only what its slice needs
                (desired, owned, current),
                touched,
                replan,
                opts.dry_run,
            )
            if whole:
                touched, totals = None, None
        # ---- end of the drift check
        policy = replace(self.policy, allow_deletions=opts.allow_deletions or self.policy.allow_deletions)
        occupied = self._occupied(mirror) if touched is not None else None
        plan = make_plan(*set_aside_memberships(desired, current, owned, self.pim_groups), policy, totals, occupied)
        if (plan.writes or plan.held_back) and tally.unverified() and tally.changed_since_record():
            # a cycle that carried the recorded sizes still plans from ownership (every owned group is in its
            # views): before it writes, ownership is compared with the record, and changed since, planned whole
            owned = self.state.load_ownership()
            tally.base, tally.carried = (len(owned.users), len(owned.groups)), False
            touched, totals, occupied = None, None, None
            desired, current = self.desired(mirror), current_from_ownership(owned)
            plan = make_plan(*set_aside_memberships(desired, current, owned, self.pim_groups), policy, None, None)
        escrow = Escrow(self.state)
        runnable, held = self._escrow_filter(plan, escrow, desired)
        applier = Applier(
            self.target,
            self.state,
            self.clock,
            cycle_id,
            owned,
            current,
            policy,
            desired,
            *self._pool(),
            narrowed=touched is not None,
            probe=self.probe,
        )
        if opts.dry_run:
            return CycleOutcome(applier.report(plan, started.isoformat(), True, True), mode=mode, plan=plan)
        if mode == "full" and plan.writes > 0 and plan.guard is None:
            # a full read is expensive: keep it so that a stopped cycle resumes without repeating it
            save_blob(self.state, CHECKPOINT_MIRROR, mirror.to_bytes())
            self.state.put_item(CHECKPOINT_KEY, {"links": links, "started": self._full_started.isoformat()})
        self._drop_full_read()  # finished: the checkpoint (or the end of this cycle) carries it from here
        write_stop = (
            self._keep_listing_until_a_write(listed if plan.writes > 0 and plan.guard is None else None, opts)
            if full
            else opts.should_stop
        )
        status = _StatusWriter(self.state, self.clock, cycle_id, mode, len(runnable))
        progress = opts.progress

        def on_progress(done: int, total: int) -> None:
            status.update(done, applier.counts)
            if progress is not None:
                progress(done, total)

        ordinary, user_deletions = self._split_user_deletions(runnable)
        complete = applier.apply(ordinary, write_stop, on_progress)
        if self.pim is not None:
            # the PIM safety net runs even when the ordinary work stopped early; user deletions then wait
            if not complete:
                self._skip(applier, user_deletions, "waits for the next cycle: this one stopped early")
            done = self._pim_pass(applier, user_deletions if complete else [], cycle_id, opts, on_progress)
            complete = complete and done
        applier.log_held_back(plan.held_back)
        for entry, op in held:
            applier.pending.append(
                replace(
                    applier._entry(op.kind.value, op.action.value, Status.SKIPPED, op.source_id, op.name, op.target_id),
                    error=f"in escrow after {entry.attempts} failed attempt(s) "
                    + ("(given up)" if entry.given_up else f"until {entry.next_retry.isoformat()}")
                    + f": {entry.error}",
                )
            )
        self._log_new_refusals(applier, plan.refusals)
        self._update_escrow(escrow, applier, runnable, desired)
        self._keep_unsettled(plan, applier, owned, tally)
        applier.flush()
        report = applier.report(plan, started.isoformat(), dry_run=False, complete=complete)
        attempted = applier.attempted
        if complete and self.access is not None:
            report, attempted = self._reconcile_access(
                report, attempted, desired, applier.group_targets, mode, plan, opts
            )
        if complete and plan.guard is not None:
            self._distrust(record)
        elif complete:
            self._finish(mirror, links, mode, record)
        status.finish(report, mode)
        self._after(report, attempted, quarantine)
        self._watch_completion(complete, started, applier.stopped_by)
        return CycleOutcome(report, mode=mode, plan=plan)

    def _target_progress(self, mode: str, opts: CycleOptions, owned: Ownership) -> TargetRead | None:
        """What a stopped resume listed of IAM Identity Center, while ownership is as it was then (a different
        size means another writer, such as on-demand provisioning, wrote since: the listing begins again); a
        full cycle lists afresh, and forgets a listing an earlier checkpoint left."""
        if opts.dry_run:
            return None
        if mode == "resume":
            blob = load_blob(self.state, CHECKPOINT_TARGET)
            listed = TargetRead.from_bytes(blob) if blob else None
            if listed is not None and listed.owned == ownership_counts(owned):
                return listed
        delete_blob(self.state, CHECKPOINT_TARGET)
        return None

    def _keep_listing_until_a_write(self, listed: TargetRead | None, opts: CycleOptions) -> Callable[[], bool]:
        """The write phase's stop: ``opts.should_stop``, which also forgets the stored listing of IAM Identity
        Center just before the first write (after it, the listing is out of date). Until then the listing is kept
        with the checkpoint, so a cycle stopped before any write resumes its writes without listing again.
        ``listed`` None: nothing will be written (or the cycle distrusts its read): the listing goes now."""
        if listed is None:
            delete_blob(self.state, CHECKPOINT_TARGET)
            return opts.should_stop
        save_blob(self.state, CHECKPOINT_TARGET, listed.to_bytes())
        kept = True

        def stop() -> bool:
            nonlocal kept
            if opts.should_stop():
                return True
            if kept:
                delete_blob(self.state, CHECKPOINT_TARGET)
                kept = False
            return False

        return stop

    def _checkpoint_target(self, listed: TargetRead, mirror: Mirror, links: Mapping[str, str], mode: str) -> None:
        """Store an unfinished listing with the checkpoint it belongs to (made now for a full cycle: its
        mirror, links and start), then forget the full read of Entra the checkpoint now carries."""
        save_blob(self.state, CHECKPOINT_TARGET, listed.to_bytes())
        if mode == "full":
            save_blob(self.state, CHECKPOINT_MIRROR, mirror.to_bytes())
            self.state.put_item(CHECKPOINT_KEY, {"links": dict(links), "started": self._full_started.isoformat()})
            self._drop_full_read()
        self._stopped_reading = f"IAM Identity Center ({listed.summary} so far)"

    def _stopped_while_reading(self, cycle_id: str, started: datetime, mode: str) -> CycleOutcome:
        """The time budget ended this cycle during a read: nothing planned, nothing written but the checkpoint;
        the PIM safety net still runs, and the run status says where the next invocation goes on."""
        if self.pim is not None:
            with self.pim.cycle_pass(cycle_id) as net:
                net.reconcile()
        why = f"time budget while reading {self._stopped_reading}"
        finished = self.clock.now().isoformat()
        self.state.put_item(
            RUN_LAST,
            {
                "cycleId": cycle_id,
                "mode": mode,
                "total": 0,
                "started": started.isoformat(),
                "status": f"stopped ({why}; the next run continues)",
                "processed": None,
                "counts": {},
                "failures": 0,
                "refusals": 0,
                "writes": 0,
                "deletionGuard": None,
                "finished": finished,
            },
        )
        self._watch_completion(False, started, why)
        logger.info("cycle stopped while reading", extra={"cycleId": cycle_id, "where": self._stopped_reading})
        report = CycleReport(cycle_id, started.isoformat(), finished, False, {}, (), (), None, 0, complete=False)
        return CycleOutcome(report, mode=mode)

    # ------------------------------------------------------------------ delta planning

    def _delta_touched(self, mirror: Mirror, tally: _Tally) -> Touched | None:
        """What this delta cycle plans: what its read touched, what the last cycle left unsettled, and what
        Entra can still restore (its grace period may end). None (plan everything) when the last cycle's
        record is missing, or ownership changed since (another writer, a crash mid-cycle).

        Ownership is counted (a read of every record on DynamoDB) only when something is touched, or when
        the record's sizes were last compared more than ``COMPARE_EVERY`` ago: a cycle with nothing touched
        carries the recorded sizes forward (``_Tally.carry``), and compares them with a count as soon as it
        has anything to write (the drift check's repairs, a group its views plan), so any write another
        writer made in between is found before this cycle writes, or by the next one that writes."""
        item = self.state.get_item(UNSETTLED_KEY)
        if not self.narrow_delta or self.touched is None or item is None:
            return None
        recorded = (int(item.get("users_count", -1)), int(item.get("groups_count", -1)))
        if min(recorded) < 0:
            return None
        compared = str(item.get("compared") or "")
        touched = Touched(set(self.touched.users), set(self.touched.groups))
        touched.users |= {str(u) for u in item.get("users") or ()}
        touched.groups |= {str(g) for g in item.get("groups") or ()}
        for object_id in mirror.soft_deleted:
            (touched.groups if object_id in mirror.groups else touched.users).add(object_id)
        if not touched.users and not touched.groups and self._compared_lately(compared):
            tally.carry(recorded, compared)  # compared as soon as anything is to be planned (drift repairs)
            return touched
        if tally.users_and_groups() != recorded:
            return None
        return touched

    def _delta_views(self, mirror: Mirror, touched: Touched) -> tuple[DesiredView, Ownership]:
        """The desired view and ownership narrowed to the touched users (widened: see idsync.delta); only
        the ownership records narrowing needs are read, by key."""

        def map_user(obj: Mapping[str, Any]) -> User | Refusal | None:
            return self.user_mapper.map(obj) if self.scope.user(obj).in_scope else None

        views = narrow(mirror, self.state, touched, self.scoping.mode, self.scoping.transitive, map_user)
        view = build_desired(views.users, views.groups, views.members, self.user_mapper, self.group_mapper, self.scope)
        return with_out_of_scope(view, views.alive, self._retained(mirror)), views.owned

    def _occupied(self, mirror: Mirror) -> Callable[[str], bool]:
        """Whether a group has a member in the mirror that maps to an active user (the emptied-group
        threshold's question, answered from the whole mirror when the views are narrowed)."""

        def occupied(group_id: str) -> bool:
            for user_id in mirror.user_members(group_id, self.scoping.transitive):
                obj = mirror.users.get(user_id)
                if obj is None or obj.get(SOFT_DELETED) or not self.scope.user(obj).in_scope:
                    continue
                mapped = self.user_mapper.map(obj)
                if isinstance(mapped, User) and mapped.active:
                    return True
            return False

        return occupied

    def _retained(self, mirror: Mirror) -> frozenset[str]:
        now = self.clock.now()
        return frozenset(
            object_id
            for object_id, since in mirror.soft_deleted.items()
            if now - datetime.fromisoformat(since) < self.restorable_grace
        )

    def _keep_unsettled(self, plan: Plan, applier: Applier, owned: Ownership, tally: _Tally) -> None:
        """Record what the next delta cycle must plan again, and ownership's size after this cycle's writes
        (a different size next time means another writer changed it: that cycle plans everything)."""
        counts = tally.users_and_groups()
        # follow-ups (created again, memberships restored) are not in the plan: the ones not done count too
        done = applier.succeeded
        left = unsettled(
            [*plan.operations, *applier.unfinished, *applier.followups], done, plan.refusals, plan.held_back
        )
        # a record forgotten (created again) whose create did not go through: plan it again
        left.users |= {sid for sid in owned.users.keys() - applier.users.keys() if f"user:{sid}" not in done}
        left.groups |= {sid for sid in owned.groups.keys() - applier.groups.keys() if f"group:{sid}" not in done}
        for source_id, target_id in applier.user_targets.items():
            mine = owned.users.get(source_id)
            if mine is not None and mine.target_id != target_id:
                left.users.add(source_id)  # created again after a delete made by hand: its memberships follow
        for source_id, target_id in applier.group_targets.items():
            held = owned.groups.get(source_id)
            if held is not None and held.target_id != target_id:
                left.groups.add(source_id)
        self.state.put_item(
            UNSETTLED_KEY,
            {
                "users": sorted(left.users),
                "groups": sorted(left.groups),
                "users_count": counts[0] + len(applier.users) - len(owned.users),
                "groups_count": counts[1] + len(applier.groups) - len(owned.groups),
                # when those sizes were last compared with a count (carried by a cycle that did not compare)
                "compared": tally.compared if tally.carried and tally.compared else self.clock.now().isoformat(),
            },
        )

    def _compared_lately(self, compared: str) -> bool:
        """Whether the record's sizes were compared with a count within ``COMPARE_EVERY``: a quiet tenant's
        cycles carry them forward, and still find another writer's change within that time."""
        try:
            age = self.clock.now() - datetime.fromisoformat(compared)
        except (TypeError, ValueError):  # missing, damaged, or without a time zone
            return False
        return timedelta(0) <= age < COMPARE_EVERY  # a time ahead of the clock is not recent

    # ------------------------------------------------------------------ PIM for Groups

    def _split_user_deletions(self, runnable: list[Operation]) -> tuple[list[Operation], list[Operation]]:
        """(everything else, user deletions): with PIM groups, user deletions wait for ``_pim_pass``."""
        if self.pim is None:
            return runnable, []
        deleting = [op for op in runnable if op.kind is Kind.USER and op.action is Action.DELETE]
        return [op for op in runnable if op not in deleting], deleting

    def _pim_pass(
        self,
        applier: Applier,
        deletions: list[Operation],
        cycle_id: str,
        opts: CycleOptions,
        progress: Callable[[int, int], None],
    ) -> bool:
        """After the cycle's own writes, under every PIM group's lease: the reconciliation the JIT worker runs
        (the safety net: lost activations applied with their grants and expiries, ended access removed,
        schedules re-armed), then the user deletions, minus the users an active grant holds (read under the
        leases, so no activation can be applying meanwhile). A group whose lease another writer holds is left
        to it, and the deletions then wait for the next cycle. False when stopped by the time budget.
        """
        assert self.pim is not None
        with self.pim.cycle_pass(cycle_id) as net:
            net.reconcile()
            if not deletions:
                return True
            if not net.all_held:
                self._skip(applier, deletions, f"waits for the next cycle: PIM group(s) {', '.join(net.busy)} busy")
                return True
            protected = net.protected_users()
            self._skip(
                applier, [op for op in deletions if op.source_id in protected], "kept: holds an active PIM grant"
            )
            allowed = [op for op in deletions if op.source_id not in protected]
            return applier.apply(allowed, lambda: opts.should_stop() or not net.keep(), progress)

    def _pim_removals(self, why: str) -> None:
        """A held cycle's PIM pass: ended access removed and active grants' schedules re-armed, nothing added.
        Failures are logged, never raised: the hold stands either way and the next cycle retries."""
        if self.pim is None:
            return
        cycle_id = f"{self.clock.now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}-{why}"
        try:
            with self.pim.cycle_pass(cycle_id) as net:
                net.reconcile(adds=False)
        except (DirectoryError, StateError) as error:
            logger.error("PIM removals of a held cycle failed", extra={"why": why, "error": str(error)})

    @staticmethod
    def _skip(applier: Applier, ops: list[Operation], why: str) -> None:
        for op in ops:
            entry = applier._entry(op.kind.value, op.action.value, Status.SKIPPED, op.source_id, op.name, op.target_id)
            applier.pending.append(replace(entry, error=why))

    # ------------------------------------------------------------------ access as code

    def _access_inputs(
        self, desired: DesiredView, targets: Mapping[str, str], plan: Plan, allow_deletions: bool
    ) -> tuple[dict[str, GroupRef], AccessPolicy]:
        """The groups in scope (with their Identity Store ids where idsync holds them) and the guard's numbers."""
        groups = {sid: GroupRef(g.display_name, targets.get(sid)) for sid, g in desired.groups.items()}
        policy = AccessPolicy(
            max_deletions=self.policy.max_deletions,
            max_deletion_percent=self.policy.max_deletion_percent,
            allow_deletions=allow_deletions or self.policy.allow_deletions,
            hold_removals=plan.guard is not None,
        )
        return groups, policy

    def _reconcile_access(
        self,
        report: CycleReport,
        attempted: int,
        desired: DesiredView,
        targets: Mapping[str, str],
        mode: str,
        plan: Plan,
        opts: CycleOptions,
    ) -> tuple[CycleReport, int]:
        """Account assignments, once the groups exist, folded into the report. Raises TargetAuthError."""
        assert self.access is not None
        groups, policy = self._access_inputs(desired, targets, plan, opts.allow_deletions)
        return self.access.after_cycle(report, attempted, groups, mode != "delta", policy, opts.should_stop)

    def plan_access(self) -> tuple[AccessPlan, dict[str, str]] | None:
        """The account assignments the next cycle would make and remove (reads, never writes), and the
        names to show (group id -> displayName, permission set ARN -> the file's name); None when no
        ``access`` is configured. A group the sync would create first is planned with a placeholder
        principal. Raises DirectoryError, TargetError."""
        if self.access is None:
            return None
        mirror, _, mode, _ = self._read_at_once()
        desired = self.desired(mirror)
        owned = self.state.load_ownership()
        targets = {sid: g.target_id for sid, g in owned.groups.items()}
        targets |= {sid: f"{NEW_GROUP}{sid}" for sid in desired.groups if sid not in targets}
        plan = make_plan(desired, current_from_ownership(owned), owned, self.policy)
        groups, policy = self._access_inputs(desired, targets, plan, False)
        access_plan, entries, _ = self.access.plan(groups, mode != "delta", policy, store=False)
        names = {e.permission_set_arn: e.permission_set for e in entries if e.permission_set_arn}
        return access_plan, names | {sid: g.display_name for sid, g in desired.groups.items()}

    def groups_in_scope(self) -> dict[str, str]:
        """The groups in scope now (source id -> displayName). Raises DirectoryError."""
        mirror, _, _, _ = self._read_at_once()
        return {sid: g.display_name for sid, g in self.desired(mirror).groups.items()}

    # ------------------------------------------------------------------ on demand

    def provision(self, kind: str, key: str) -> CycleOutcome:
        """Provision one user (by id or userPrincipalName) or one group (by id or displayName) and its
        members now, with the same rules, logs and ownership as a cycle. Raises LookupError."""
        now = self.clock.now()
        owner = uuid.uuid4().hex
        if not self.state.acquire_lease(LEASE, owner, now, 300):
            return CycleOutcome(None, skipped="a sync cycle is running; try again when it ends (idsync status)")
        try:
            mirror, _, mode, _ = self._read_at_once()
            user_ids, group_ids = self._find(mirror, kind, key)
            desired = self.desired(mirror)
            if user_ids and not (user_ids & (set(desired.users) | {r.source_id for r in desired.refusals})):
                reason = self._out_of_scope_reason(mirror, "user", next(iter(user_ids)))
                return CycleOutcome(None, skipped=f"user {key} is not in scope: {reason}", mode=mode)
            if group_ids and not group_ids & set(desired.groups):
                reason = self._out_of_scope_reason(mirror, "group", next(iter(group_ids)))
                return CycleOutcome(None, skipped=f"group {key} is not in scope: {reason}", mode=mode)
            owned_now = self.state.load_ownership()
            if resolve_intent(self.state, self.target, owned_now):
                # a cycle stopped between a create and its record: settle it before this applier intends its own
                owned_now = self.state.load_ownership()
            inactive = [u for u in user_ids if u in desired.users and not desired.users[u].active]
            if kind == "user" and inactive and inactive[0] not in owned_now.users:
                return CycleOutcome(
                    None,
                    skipped=f"user {key} is disabled or soft-deleted in Entra (accountEnabled false) and not in "
                    "IAM Identity Center: there is nothing to provision",
                    mode=mode,
                )
            if kind == "group":
                user_ids = {u for g, u in desired.memberships if g in group_ids}
            owned = owned_now
            narrowed, mine = restrict(desired, owned, user_ids, group_ids)
            current = current_from_ownership(mine)
            policy = replace(self.policy, allow_deletions=True, delete_groups=False)
            views = set_aside_memberships(narrowed, self._with_matches(current, narrowed, mine), mine, self.pim_groups)
            plan = make_plan(*views, policy)
            started = self.clock.now()
            cycle_id = f"ondemand-{started.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
            applier = Applier(
                self.target,
                self.state,
                self.clock,
                cycle_id,
                owned,
                current,
                policy,
                narrowed,
                *self._pool(),
                probe=self.probe,
            )
            # a stored listing of IAM Identity Center is out of date once this writes
            delete_blob(self.state, CHECKPOINT_TARGET)
            applier.apply(plan.operations, lambda: False, None)
            applier.log_refusals(plan.refusals)
            applier.flush()
            self.state.delete_item(UNSETTLED_KEY)  # what it left unsettled is unknown to delta cycles: plan all
            return CycleOutcome(applier.report(plan, started.isoformat(), False, True), mode="on-demand", plan=plan)
        finally:
            self.state.release_lease(LEASE, owner)

    def explain(self, key: str) -> dict[str, Any]:
        """Why an object is (or is not) provisioned: scope decision, mapping result, planned operations.

        ``key``: a user id or userPrincipalName, or a group id or displayName. Raises LookupError.
        """
        mirror, _, mode, _ = self._read_at_once()
        try:
            user_ids, group_ids = self._find(mirror, "user", key)
            kind = "user"
        except LookupError:
            try:
                user_ids, group_ids = self._find(mirror, "group", key)
            except LookupError:
                raise LookupError(
                    f"no user or group {key!r} in Entra (users by object id or userPrincipalName, "
                    "groups by object id or displayName)"
                ) from None
            kind = "group"
        source_id = next(iter(user_ids or group_ids))
        obj = mirror.users[source_id] if kind == "user" else mirror.groups[source_id]
        users, groups, _ = mirror.in_scope(self.scoping.mode, self.scoping.transitive)
        assigned = source_id in {str(o["id"]) for o in (users if kind == "user" else groups)}
        decision = self.scope.user(obj) if kind == "user" else self.scope.group(obj)
        mapped = self.user_mapper.map(obj) if kind == "user" else self.group_mapper.map(obj)
        desired = self.desired(mirror)
        owned = self.state.load_ownership()
        plan = make_plan(desired, current_from_ownership(owned), owned, self.policy)
        ops = [op for op in plan.operations if source_id in (op.source_id, op.member_source_id)]
        held = [op for op in plan.held_back if source_id in (op.source_id, op.member_source_id)]
        return {
            "kind": kind,
            "id": source_id,
            "readMode": mode,
            "assignmentScope": (
                "in scope"
                if assigned
                else f"not in the {self.scoping.mode} scope (not assigned to the app, "
                "nor a member of an assigned group)"
            ),
            "scopingFilters": {"inScope": bool(decision.in_scope), "reason": getattr(decision, "reason", "")},
            "mapping": (
                {"refused": mapped.message}
                if isinstance(mapped, Refusal)
                else {"userName": mapped.user_name, "doc": dict(mapped.doc), "active": mapped.active}
                if isinstance(mapped, User)
                else {"displayName": mapped.display_name, "description": mapped.description}
            ),
            "owned": source_id in owned.users or source_id in owned.groups,
            "operations": [
                {
                    "kind": op.kind.value,
                    "action": op.action.value,
                    "name": op.name,
                    "reason": op.reason,
                    "changes": [c.attribute for c in op.changes],
                }
                for op in ops
            ],
            "heldBackByDeletionGuard": [op.name for op in held],
        }

    def _out_of_scope_reason(self, mirror: Mirror, kind: str, source_id: str) -> str:
        """Why an object is outside the scope: the assignment first (as Entra decides), then the scoping filter."""
        users, groups, _ = mirror.in_scope(self.scoping.mode, self.scoping.transitive)
        if source_id not in {str(o["id"]) for o in (users if kind == "user" else groups)}:
            return (
                f"not assigned to the application (scope.mode {self.scoping.mode}: neither assigned to the app "
                "nor a member of an assigned group)"
                if kind == "user"
                else f"not assigned to the application (scope.mode {self.scoping.mode})"
            )
        obj = mirror.users[source_id] if kind == "user" else mirror.groups[source_id]
        decision = self.scope.user(obj) if kind == "user" else self.scope.group(obj)
        return getattr(decision, "reason", "") or "excluded by the scoping filters"

    @staticmethod
    def _find(mirror: Mirror, kind: str, key: str) -> tuple[set[str], set[str]]:
        folded = key.casefold()
        if kind == "user":
            for user_id, obj in mirror.users.items():
                if user_id == key or str(obj.get("userPrincipalName", "")).casefold() == folded:
                    return {user_id}, set()
            raise LookupError(f"no user {key!r} in Entra (by object id or userPrincipalName)")
        for group_id, obj in mirror.groups.items():
            if group_id == key or str(obj.get("displayName", "")) == key:
                return set(), {group_id}
        raise LookupError(f"no group {key!r} in Entra (by object id or displayName)")

    def _with_matches(self, current: CurrentView, desired: DesiredView, owned: Ownership) -> CurrentView:
        """Add same-named objects from IAM Identity Center, so on-demand matching adopts them."""
        users = dict(current.users)
        for source_id, user in desired.users.items():
            if source_id not in owned.users:
                found = self.target.find_user(user.user_name)
                if found is not None:
                    users[found] = TargetUser(found, user.user_name, {})
        groups = dict(current.groups)
        for source_id, group in desired.groups.items():
            if source_id not in owned.groups:
                found = self.target.find_group(group.display_name)
                if found is not None:
                    groups[found] = TargetGroup(found, group.display_name, None)
        memberships = dict(current.memberships)
        return CurrentView(users, groups, memberships)

    # ------------------------------------------------------------------ escrow

    @staticmethod
    def _fingerprint(op: Operation, desired: DesiredView) -> str:
        if op.kind is Kind.USER and op.source_id in desired.users:
            return desired.users[op.source_id].fingerprint()
        if op.kind is Kind.GROUP and op.source_id in desired.groups:
            return desired.groups[op.source_id].fingerprint()
        return ""

    def _escrow_filter(
        self, plan: Plan, escrow: Escrow, desired: DesiredView
    ) -> tuple[list[Operation], list[tuple[Any, Operation]]]:
        now = self.clock.now()
        runnable: list[Operation] = []
        held: list[tuple[Any, Operation]] = []
        for op in plan.operations:
            entry = escrow.held(op.key, self._fingerprint(op, desired), now) if op.is_write else None
            if entry is None:
                runnable.append(op)
            else:
                held.append((entry, op))
        return runnable, held

    def _update_escrow(self, escrow: Escrow, applier: Applier, runnable: list[Operation], desired: DesiredView) -> None:
        now = self.clock.now()
        failed = {(e.kind, e.action, e.source_id): e for e in applier.failures}
        for op in runnable:
            if not op.is_write:
                continue
            source = op.key.split(":", 1)[1] if op.kind is Kind.MEMBERSHIP else op.source_id
            entry = failed.get((op.kind.value, op.action.value, source))
            if entry is None:
                if op.key in applier.succeeded:
                    escrow.succeeded(op.key)
                # never attempted (the run stopped first): its escrow stays as it was
                continue
            held = escrow.failed(op.key, self._fingerprint(op, desired), entry.error or "", now)
            if held.given_up:
                applier.pending.append(
                    replace(
                        entry,
                        error=f"given up after 28 days of failures: {entry.error}",
                        change_id=entry.change_id + "-final",
                    )
                )
        escrow.save()

    def _log_new_refusals(self, applier: Applier, refusals: tuple[Refusal, ...]) -> None:
        previous = (self.state.get_item(REFUSALS_KEY) or {}).get("messages", {})
        current = {r.source_id: r.message for r in refusals}
        applier.log_refusals([r for r in refusals if previous.get(r.source_id) != r.message])
        if current != previous:
            self.state.put_item(REFUSALS_KEY, {"messages": current})

    # ------------------------------------------------------------------ finishing

    def _finish(self, mirror: Mirror, links: dict[str, str], mode: str, record: dict[str, Any]) -> None:
        checkpoint = self.state.get_item(CHECKPOINT_KEY)
        save_mirror(self.state, MIRROR_KEY, mirror)
        new_record = dict(record)
        new_record["links"] = links
        new_record["fingerprint"] = self.fingerprint
        if mode == "full":
            new_record["last_full"] = self._full_started.isoformat()
        elif mode == "resume" and checkpoint:
            new_record["last_full"] = checkpoint["started"]
        self.state.put_item(CYCLE_KEY, new_record)
        self._drop_checkpoint()
        self._drop_full_read()

    def _distrust(self, record: dict[str, Any]) -> None:
        """The deletion guard tripped: keep nothing this cycle read, so the next one reads in full."""
        new_record = dict(record)
        new_record.pop("links", None)
        self.state.put_item(CYCLE_KEY, new_record)
        self._drop_checkpoint()
        self._drop_full_read()

    def _watch_completion(self, complete: bool, started: datetime, stopped_by: str | None) -> None:
        """Notify once when no cycle has completed for longer than the full-reconcile interval."""
        item = self.state.get_item(COMPLETED_KEY)
        if complete:
            self.state.put_item(COMPLETED_KEY, {"at": started.isoformat()})
            return
        if item is None:
            self.state.put_item(COMPLETED_KEY, {"at": started.isoformat()})
            return
        since = datetime.fromisoformat(str(item["at"]))
        if item.get("notified") or self.clock.now() - since <= self.full_reconcile:
            return
        self.state.put_item(COMPLETED_KEY, {"at": item["at"], "notified": True})
        if self.notifier is not None:
            self.notifier.notify(
                "idsync cycles are not completing",
                f"No sync cycle has completed since {since.isoformat()}; the last one stopped: "
                f"{stopped_by or 'time budget'}. Later writes (removals, deletions) wait until one completes.",
            )

    def _enter_quarantine(self, previous: Quarantine | None, reason: str) -> None:
        now = self.clock.now()
        quarantine = Quarantine(previous.since if previous else now, reason, now)
        save_quarantine(self.state, quarantine)
        if previous is None and self.notifier is not None:
            self.notifier.notify(
                "idsync entered quarantine",
                f"idsync stopped provisioning into IAM Identity Center: {reason}.\n"
                f"Cycles now run once a day. To leave quarantine: {quarantine.how_to_leave}.",
            )

    def _after(self, report: CycleReport, attempted: int, quarantine: Quarantine | None) -> None:
        if failure_ratio_trips(attempted, len(report.failures)):
            self._enter_quarantine(
                quarantine,
                f"{len(report.failures)} of {attempted} operations failed in cycle {report.cycle_id}",
            )
        elif quarantine is not None and report.complete and not report.failures:
            clear_quarantine(self.state)
            if self.notifier is not None:
                self.notifier.notify(
                    "idsync left quarantine", f"Cycle {report.cycle_id} ran clean; provisioning resumed."
                )
        if self.notifier is None:
            return
        if report.guard is not None:
            self.notifier.notify("idsync held deletions back", report.guard.message)
        if report.failures:
            lines = [f"- {f.kind} {f.name}: {f.action} failed: {f.error}" for f in report.failures[:50]]
            more = len(report.failures) - len(lines)
            self.notifier.notify(
                f"idsync cycle {report.cycle_id}: {len(report.failures)} failure(s)",
                "\n".join(lines) + (f"\n... and {more} more (idsync logs --status failure)" if more > 0 else ""),
            )


class _StatusWriter:
    """Keeps the run status item current (progress for `idsync status`) without writing per object."""

    def __init__(self, state: StateStore, clock: Clock, cycle_id: str, mode: str, total: int) -> None:
        self.state = state
        self.clock = clock
        self.base = {"cycleId": cycle_id, "mode": mode, "total": total, "started": clock.now().isoformat()}
        self.last = 0.0
        self.state.put_item(RUN_CURRENT, {**self.base, "status": "running", "processed": 0})

    def update(self, done: int, counts: Mapping[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last < STATUS_EVERY_SECONDS:
            return
        self.last = now
        self.state.put_item(RUN_CURRENT, {**self.base, "status": "running", "processed": done, "counts": dict(counts)})

    def finish(self, report: CycleReport, mode: str) -> None:
        summary = {
            **self.base,
            "status": "complete" if report.complete else "stopped (time budget; the next run continues)",
            "processed": self.base["total"] if report.complete else None,
            "counts": {k: dict(v) for k, v in report.counts.items()},
            "failures": len(report.failures),
            "refusals": len(report.refusals),
            "writes": report.writes,
            "deletionGuard": report.guard.message if report.guard else None,
            "deletionGuardDetail": report.guard.as_dict() if report.guard else None,
            "finished": self.clock.now().isoformat(),
            "mode": mode,
        }
        self.state.put_item(RUN_LAST, summary)
        self.state.delete_item(RUN_CURRENT)


def _iso_or(moment: str, fallback: str) -> str:
    """``moment`` when it is an ISO 8601 time (Graph's ``Z`` accepted), else ``fallback``."""
    try:
        return datetime.fromisoformat(moment.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return fallback
