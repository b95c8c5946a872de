"""PIM for Groups just in time: apply an activation within seconds, take access away when the grant ends.

Every writer of a PIM group's memberships (the JIT worker's ``look``, the scheduled ``expire``, and the
sync cycle's ``CyclePass``) does the same thing, ``_Run.reconcile``, under the group's lease:

1. take the per-group lease (a conditional write in the state store); a writer that cannot, does not read:
   a look comes back in ``LEASE_RETRY_SECONDS``, an expiry re-arms its schedule a minute later, the cycle
   leaves the group to its holder;
2. read Graph (direct members, assignment schedule instances), idsync's grants and owned memberships,
   all after the lease is held, so nothing read is older than the last write to the group;
3. decide with the one rule, ``idsync.pim.judge_group``;
4. write under the lease's fence (``GroupLease``: every state write checks the lease in the same transaction,
   and an external call goes out only while the lease outlasts it; ``LeaseLost`` stops the run: the new
   holder decides):
   removals first (never metered), then grants recorded or moved, then additions. An activation checks
   that the user can be provisioned (enabled, in scope, mapped) even when Identity Center holds them,
   takes a token, records its grant *before* writing (so a crash leaves a grant the next run completes,
   and the cycle never deletes a user an activation is applying), provisions the user if needed, adds
   the membership and schedules the expiry. A write that fails gives the token back, is logged against
   the object that failed (the user, or the membership) and never stops the other users.

Whoever applies an activation (worker or cycle) records its grant and schedules its expiry. An expiry
that fires while the grant is still active (clock skew, an extension) re-arms its schedule: EventBridge
Scheduler deletes a one-time schedule once it has fired. The cycle also re-arms every active grant's
schedule, so one lost schedule costs at most one cycle interval.

What a look costs the state table (DynamoDB) when it applies one activation of a provisioned user: the lease
(one conditional write); the grants, the owned memberships, the group and the user (two Queries and one
BatchGetItem, sent at once); the activation token (one conditional write, from the bucket state this worker
last wrote); the write-ahead grant (one transaction with the lease check); the shared budget's token for the
Identity Store call (a read and a conditional write); the membership record (one transaction); the log
entries and the release (one transaction). Ten calls, eight of them one after the other.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from idsync.errors import (
    DirectoryAuthError,
    DirectoryError,
    LeaseLost,
    SchedulerError,
    StateError,
    TargetConflict,
    TargetError,
)
from idsync.model import (
    AttributeChange,
    LogEntry,
    OwnedGroup,
    OwnedMembership,
    OwnedUser,
    Refusal,
    Status,
    User,
    freeze_doc,
)
from idsync.pim import SETTLE, Facts, Verdict, judge, judge_group, latest_start
from idsync.plan import desired_doc_for_create
from idsync.ports import (
    GRANT_ACTIVE,
    GRANT_ENDED,
    GRANT_SIGHTED,
    AccessGrant,
    Clock,
    ExpiryScheduler,
    GrantStore,
    Hint,
    HintRetry,
    IdentityStore,
    LeasedStore,
    PimDirectory,
    StateStore,
)
from idsync.services.control import PAUSE_RECHECK_SECONDS, load_pause
from idsync.services.sync import jit_intent_key, resolve_intent
from idsync.services.token_bucket import TokenBucket, Wait

logger = logging.getLogger(__name__)

# A message received this many times is sent afresh instead of hidden again, so that a long wait
# for tokens never carries it past the queue's maxReceiveCount (50) into the dead-letter queue.
RESEND_AFTER_RECEIVES = 40
LEASE_PREFIX = "pim:"
LEASE_SECONDS = 60  # a crashed holder blocks the group at most this long
CLOCK_MARGIN_SECONDS = 10  # leases compare clocks of different processes (NTP keeps them within milliseconds)
LEASE_RETRY_SECONDS = 1.0  # a look that found the group's lease held comes back this soon
SIGHTING_RECHECK_SECONDS = 30.0  # Graph may list an activated user before her instance: look again this soon
EXPIRY_RETRY = timedelta(minutes=1)  # an expiry that could not run (lease held, fired early) fires again
READ_AHEAD_USERS = 99  # a run reads this many users with its group's records at most (one BatchGetItem)


class UserMapping(Protocol):
    def map(self, obj: Mapping[str, Any]) -> User | Refusal: ...


class _Decides(Protocol):
    @property
    def in_scope(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class UserScope(Protocol):
    def user(self, obj: Mapping[str, Any]) -> _Decides: ...


# --------------------------------------------------------------------------- the group lease


class GroupLease:
    """One writer's hold on one PIM group: taken before reading, kept before every external call, released after.

    Built on ``StateStore.acquire_lease`` (one conditional write: of two writers racing, one loses). Nobody else
    can take the lease before it expires, so the holder knows how long it still holds it without asking the
    store. The fence, two halves:

    - a state write is applied only while this owner holds the lease, checked atomically with the write itself
      (``GrantStore.fenced``): a writer whose lease was taken over writes nothing, however late its write lands;
    - an external call (Identity Center, the scheduler) cannot carry that check, so ``keep`` runs before each:
      the call is sent only while the lease is held for longer than the call can take (``call_seconds``, the
      client's timeouts and retries) plus ``CLOCK_MARGIN_SECONDS``; when less is left, it renews first (one
      conditional write, which fails once another writer took the lease over).

    ``call_seconds`` None (a client whose calls are not bounded): ``keep`` renews every time.
    """

    def __init__(
        self,
        state: StateStore,
        group_id: str,
        clock: Clock,
        seconds: int = LEASE_SECONDS,
        call_seconds: float | None = None,
    ) -> None:
        self.state = state
        self.name = f"{LEASE_PREFIX}{group_id.lower()}"
        self.owner = uuid.uuid4().hex
        self.clock = clock
        self.seconds = seconds
        need = seconds if call_seconds is None else call_seconds + CLOCK_MARGIN_SECONDS
        self.renew_below = timedelta(seconds=need)
        self.expires: datetime | None = None  # as this writer last wrote it (its own clock)
        self.held = False

    def acquire(self) -> bool:
        """True when this writer now holds the lease. Raises StateError."""
        now = self.clock.now()
        self.held = self.state.acquire_lease(self.name, self.owner, now, self.seconds)
        self.expires = now + timedelta(seconds=self.seconds) if self.held else None
        return self.held

    def keep(self) -> None:
        """Before an external call: hold the lease for longer than ``renew_below`` from now, renewing it when less
        is left. Raises LeaseLost when not held, or once another writer took the lease over (even one that
        released it since: the renewal is conditioned on this owner), StateError."""
        now = self.clock.now()
        if self.held and self.expires is not None and self.expires - now > self.renew_below:
            return
        if not self.held or not self.state.renew_lease(self.name, self.owner, now, self.seconds):
            self.held = False
            raise LeaseLost(f"lease {self.name} was taken over by another writer")
        self.expires = now + timedelta(seconds=self.seconds)

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.release_lease(self.name, self.owner)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Activation:
    user_id: str
    user_name: str
    latency_seconds: float | None  # from the newest instance's startDateTime to the membership being present
    provisioned_user: bool


@dataclass
class JitOutcome:
    """What one look, expiry or cycle pass did for one group."""

    group_id: str
    cycle_id: str = ""
    activations: list[Activation] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)  # user ids whose membership was removed
    moved: int = 0  # grants recorded, moved or forgotten without touching Identity Center
    rearmed: int = 0  # expiry schedules set again for grants that are still active
    refused: list[tuple[str, str]] = field(default_factory=list)  # (user id, why)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (user id, error): retried by the next run
    wait_seconds: float | None = None  # an activation waits for the next token, or for the group's lease
    busy: bool = False  # another writer held the group's lease: nothing was read or written
    held: int = 0  # activations not applied because idsync is paused (or left to others by an expiry)
    sighted: int = 0  # users first seen listed without an instance (perhaps an activation not visible yet)
    ignored: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "groupId": self.group_id,
            "cycleId": self.cycle_id,
            "activations": [a.user_id for a in self.activations],
            "removals": list(self.removals),
            "moved": self.moved,
            "rearmed": self.rearmed,
            "refused": [{"userId": u, "reason": r} for u, r in self.refused],
            "failed": [{"userId": u, "error": e} for u, e in self.failed],
            "waitSeconds": self.wait_seconds,
            "busy": self.busy,
            "held": self.held,
            "sighted": self.sighted,
            "ignored": self.ignored,
        }


# --------------------------------------------------------------------------- the service


class JitService:
    """Applies PIM for Groups activations and expiries for the configured PIM groups.

    ``state`` and ``grants`` are one store (the same file or table): a run writes through ``grants.fenced``.
    ``call_seconds``: the longest a call of ``target`` can take (see ``GroupLease``; None when unbounded, e.g. the
    sync cycle's client). A schedule call that lands late does no harm: an expiry judges again under the lease,
    and the cycle re-arms every active grant's schedule.
    """

    def __init__(
        self,
        directory: PimDirectory,
        target: IdentityStore,
        state: StateStore,
        grants: GrantStore,
        bucket: TokenBucket,
        scheduler: ExpiryScheduler,
        user_mapper: UserMapping,
        scope: UserScope,
        clock: Clock,
        pim_groups: Iterable[str],
        settle: timedelta = SETTLE,
        lease_seconds: int = LEASE_SECONDS,
        call_seconds: float | None = None,
    ) -> None:
        self.directory = directory
        self.target = target
        self.state = state
        self.grants = grants
        self.bucket = bucket
        self.scheduler = scheduler
        self.user_mapper = user_mapper
        self.scope = scope
        self.clock = clock
        self.settle = settle
        self.lease_seconds = lease_seconds
        self.call_seconds = call_seconds
        self._groups = {group.lower(): group for group in pim_groups}

    @property
    def groups(self) -> list[str]:
        """The configured PIM group ids, as configured."""
        return sorted(self._groups.values())

    def configured(self, group_id: str) -> str | None:
        """The configured PIM group id matching ``group_id`` (any case), or None."""
        return self._groups.get(group_id.lower())

    def lease(self, group_id: str) -> GroupLease:
        return GroupLease(self.state, group_id, self.clock, self.lease_seconds, self.call_seconds)

    def look(self, group_id: str, paused: bool = False) -> JitOutcome:
        """Bring IAM Identity Center in line with the rule for one PIM group: removals first, then activations
        while tokens last (``wait_seconds`` tells when the next is due, or when the held lease is worth retrying).
        While ``paused``, removals still apply and activations are held (``held``; ``wait_seconds`` asks to look
        again later). A user first seen listed without an instance asks for another look in
        ``SIGHTING_RECHECK_SECONDS`` (her instance may not be visible yet).

        Raises DirectoryError, StateError (the hint is then retried).
        """
        group = self.configured(group_id)
        if group is None:
            logger.warning("hint ignored: not a configured PIM group", extra={"group_id": group_id})
            return JitOutcome(group_id, ignored="not a configured PIM group")
        run = _Run(self, group, "jit")
        lease = self.lease(group)
        if not lease.acquire():
            run.outcome.busy = True
            run.outcome.wait_seconds = LEASE_RETRY_SECONDS
            logger.info("group busy: another writer holds its lease; the hint comes back", extra={"group_id": group})
            return run.outcome
        run.waiter = group
        try:
            run.apply_additions(run.settle(lease, adds=not paused, rearm=()))
            if paused and run.outcome.held:
                run.outcome.wait_seconds = PAUSE_RECHECK_SECONDS
                logger.info("activations held: idsync is paused", extra={"group_id": group, "held": run.outcome.held})
            if run.outcome.sighted:
                # the notification may have come before Graph shows her instance: look again soon, not a cycle later
                waits = run.outcome.wait_seconds
                run.outcome.wait_seconds = min(waits, SIGHTING_RECHECK_SECONDS) if waits else SIGHTING_RECHECK_SECONDS
        finally:
            run.finish(lease)
        if run.outcome.wait_seconds is None and not run.served:
            # nothing of this group waits for a token any more (a take that served it took it out of the line)
            self.bucket.leave(group)
        return run.outcome

    def expire(self, group_id: str, user_id: str) -> JitOutcome:
        """A grant's scheduled end: the same rule as a look, for this user only, without additions (never takes a
        token; every other grant has its own schedule, and the cycle is the safety net).

        A grant still active (the schedule fired early, or the grant was extended) gets its schedule again;
        when another writer holds the group's lease, the expiry is re-armed a minute later. A schedule that
        cannot be set raises (after the run's other writes), so the invocation fails and is retried: a fired
        one-time schedule is gone, and nothing else would end the grant while the cycle is held.
        Raises DirectoryError, StateError, SchedulerError.
        """
        group = self.configured(group_id)
        if group is None:
            logger.warning("expiry ignored: not a configured PIM group", extra={"group_id": group_id})
            return JitOutcome(group_id, ignored="not a configured PIM group")
        run = _Run(self, group, "jit-expiry")
        lease = self.lease(group)
        if not lease.acquire():
            run.outcome.busy = True
            self.scheduler.set(group, user_id, run.now + EXPIRY_RETRY)
            logger.info("group busy: the expiry fires again in a minute", extra={"group_id": group, "user_id": user_id})
            return run.outcome
        run.scheduler_errors_raise = True
        try:
            run.settle(lease, adds=False, rearm=(user_id,), only=user_id)
        finally:
            run.finish(lease)
        return run.outcome

    @contextmanager
    def cycle_pass(self, cycle_id: str) -> Iterator[CyclePass]:
        """The sync cycle's turn: every PIM group's lease it can get, held until the block ends."""
        leases = {group: self.lease(group) for group in self.groups}
        held = CyclePass(self, cycle_id, {g: lease for g, lease in leases.items() if lease.acquire()})
        try:
            yield held
        finally:
            for lease in held.leases.values():
                lease.release()


class CyclePass:
    """The sync cycle as the PIM safety net, holding the leases of ``leases``' groups.

    ``reconcile`` runs the same reconciliation as a look in each held group (activations whose notification
    was lost are applied, their grants recorded and their expiries scheduled; ended access is removed),
    and re-arms every active grant's schedule. ``protected_users`` are the users an active grant holds:
    the cycle must not delete them.
    """

    def __init__(self, service: JitService, cycle_id: str, leases: dict[str, GroupLease]) -> None:
        self.service = service
        self.cycle_id = cycle_id
        self.leases = leases
        self.busy = [g for g in service.groups if g not in leases]

    @property
    def all_held(self) -> bool:
        return not self.busy

    def reconcile(self, adds: bool = True) -> list[JitOutcome]:
        """One reconciliation per held group (``adds`` False: removals and re-arms only, for a held cycle); a group
        whose run fails (Graph unreadable, lease lost) is logged and the others go on.
        Raises DirectoryAuthError, StateError."""
        outcomes: list[JitOutcome] = []
        for group, lease in sorted(self.leases.items()):
            run = _Run(self.service, group, "cycle", self.cycle_id)
            try:
                additions = run.settle(lease, adds=adds, rearm=None)
                if adds:
                    run.apply_additions(additions)
            except DirectoryAuthError:
                run.fail_closed(lease)
                raise  # the cycle's quarantine handles rejected credentials
            except DirectoryError as error:
                run.outcome.failed.append(("", str(error)))
                logger.error("PIM group not reconciled by the cycle", extra={"group_id": group, "error": str(error)})
                run.fail_closed(lease)
            except LeaseLost as error:
                # the cycle's own writes stand; this group is retried by the next look or cycle
                run.outcome.failed.append(("", str(error)))
                logger.error("PIM group not reconciled by the cycle", extra={"group_id": group, "error": str(error)})
            finally:
                run.flush()
            outcomes.append(run.outcome)
        for group in self.busy:
            logger.info("PIM group skipped by the cycle: another writer holds its lease", extra={"group_id": group})
        return outcomes

    def keep(self) -> bool:
        """Keep every held lease (``GroupLease.keep``); False when one was lost (the caller must stop writing).
        Raises StateError."""
        try:
            for lease in self.leases.values():
                lease.keep()
        except LeaseLost:
            return False
        return True

    def protected_users(self) -> set[str]:
        """Users holding an active grant in any PIM group (read now, under the leases). Raises StateError."""
        users: set[str] = set()
        for group in self.service.groups:
            users |= {user for user, record in self.service.grants.grants(group).items() if record.active}
        return users


# --------------------------------------------------------------------------- one run over one group


class _Run:
    """One look, expiry or cycle pass over one group: its cycle id, clock reading, log entries and outcome."""

    def __init__(self, service: JitService, group_id: str, prefix: str, cycle_id: str | None = None) -> None:
        self.service = service
        self.group_id = group_id
        self.now = service.clock.now()
        self.cycle_id = cycle_id or f"{prefix}-{self.now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.outcome = JitOutcome(group_id, self.cycle_id)
        self.entries: list[LogEntry] = []
        self._group: OwnedGroup | None = None
        self.lease: GroupLease | None = None
        self._store: LeasedStore | None = None
        self._users: dict[str, OwnedUser | None] = {}  # read ahead for the additions: each used once
        self.served = False  # a token was taken for ``waiter``: that take also took it out of the line
        # a look's hint waits in the token line under its group's name; the cycle takes only unreserved tokens
        self.waiter: str | None = None
        self.scheduler_errors_raise = False  # an expiry's schedule is its only trigger: failing it must retry

    def settle(
        self, lease: GroupLease, adds: bool, rearm: Iterable[str] | None, only: str | None = None
    ) -> list[tuple[Facts, Verdict]]:
        """Read, judge and write for the group under ``lease`` (for the user ``only``, when given): removals,
        records and re-arms. ``rearm``: users whose active grant's schedule is set again (None: every one).
        Returns the additions the rule asks for; only a caller that may add (``adds``) applies them, through
        ``apply_additions``, so that the expiry's code path holds no call that creates anything (the stack's
        least-privilege test reads it).
        Raises DirectoryError, StateError, LeaseLost."""
        service = self.service
        self.hold(lease)
        members = service.directory.members(self.group_id)
        instances = service.directory.instances(self.group_id, only)
        # the users an addition may need (read with the records, when few): listed members, active principals
        candidates = sorted(members | {i.principal_id for i in instances}) if adds else []
        ahead = candidates if len(candidates) <= READ_AHEAD_USERS else []
        read = self.store.read_group(self.group_id, ahead)
        records, owned = read.grants, read.memberships
        self._group = read.group
        self._users = {user_id: read.users.get(user_id) for user_id in ahead}
        judged = judge_group(self.group_id, members, instances, records, owned, self.now, settle=service.settle)
        if only is not None:
            judged = [(facts, verdict) for facts, verdict in judged if facts.user_id == only]
        again = None if rearm is None else set(rearm)
        additions: list[tuple[Facts, Verdict]] = []
        for facts, verdict in judged:
            if verdict.adds(facts):
                additions.append((facts, verdict))
                continue
            try:
                if verdict.removes(facts):
                    self._remove(facts, verdict, owned[facts.user_id])
                elif self._ends_unrecorded(facts, verdict):
                    self._sweep(facts, verdict, again is None or facts.user_id in again)
                else:
                    self._keep(facts, verdict, again is None or facts.user_id in again)
            except LeaseLost:
                raise
            except (TargetError, SchedulerError, StateError) as error:
                self._failed(facts.user_id, error)
                if isinstance(error, SchedulerError) and self.scheduler_errors_raise:
                    raise
        if not adds:
            self.outcome.held = len(additions)
            if additions:
                logger.info(
                    "access to apply left for later (an expiry never adds; a paused idsync holds activations)",
                    extra={"group_id": self.group_id, "users": [f.user_id for f, _ in additions]},
                )
            return []
        return additions

    def hold(self, lease: GroupLease) -> None:
        """Write under ``lease`` from now on (every state write fenced by it)."""
        self.lease = lease
        self._store = self.service.grants.fenced(lease.name, lease.owner)

    @property
    def store(self) -> LeasedStore:
        """The state store as this run's lease holder sees it (``GrantStore.fenced``)."""
        assert self._store is not None, "a run writes only under a lease (hold)"
        return self._store

    def apply_additions(self, additions: list[tuple[Facts, Verdict]]) -> None:
        """Apply what ``reconcile`` found to add, while tokens last. Raises StateError, LeaseLost."""
        # the longest-waiting activation first; permanent members are not metered and come last
        additions.sort(key=lambda a: (not a[1].activation, latest_start(a[0].active) or self.now, a[0].user_id))
        wanted = [facts.user_id for facts, _ in additions if facts.user_id not in self._users]
        if wanted:
            group, users = self.store.owned_for(self.group_id, wanted)
            self._group = self._group or group
            self._users |= {user_id: users.get(user_id) for user_id in wanted}
        metered = True
        for facts, verdict in additions:
            if verdict.activation and not metered:
                continue
            if not self._add(facts, verdict):
                metered = False

    def fail_closed(self, lease: GroupLease) -> None:
        """Graph unreadable: remove the membership of every non-standing grant whose recorded end is past (its
        expiry never ran), keeping an ended marker so that the first run with Graph back re-adds only a grant
        that was extended meanwhile. Raises StateError; stops quietly when the lease is lost."""
        self.hold(lease)
        grants = self.store
        owned = grants.owned_memberships(self.group_id)
        stamp = self.now.astimezone(UTC).isoformat()
        for user, record in sorted(grants.grants(self.group_id).items()):
            if record.phase != GRANT_ACTIVE or record.standing or record.end is None or record.end > self.now:
                continue
            facts = Facts(user, True, (), record, user in owned)
            marker = replace(record, phase=GRANT_ENDED, applied_at=stamp)
            verdict = Verdict(user, False, marker, False, "the recorded grant ended; Graph unreadable (fail closed)")
            logger.warning(
                "Graph unreadable: access whose recorded grant ended is removed",
                extra={"group_id": self.group_id, "user_id": user, "end": _iso(record.end)},
            )
            try:
                if facts.member:
                    self._remove(facts, verdict, owned[user])
                else:
                    self._sweep(facts, verdict, rearm=False)
            except LeaseLost:
                return
            except (TargetError, SchedulerError, StateError) as error:
                self._failed(user, error)

    # ------------------------------------------------------------------ removals and records

    def _remove(self, facts: Facts, verdict: Verdict, owned: OwnedMembership) -> None:
        service = self.service
        self._keep_lease()
        user = self.store.owned_user(facts.user_id)
        name = f"{self._group_display()} <- {user.user_name if user else facts.user_id}"
        source = f"{self.group_id}:{facts.user_id}"
        try:
            service.target.delete_membership(owned.membership_id)
        except TargetError as error:
            self._log("membership", "delete", Status.FAILURE, source, name, owned.membership_id, error=str(error))
            raise
        # fenced: the call may have outlived the lease, and a new holder decides then
        self.store.forget_membership(self.group_id, facts.user_id)
        self._log("membership", "delete", Status.SUCCESS, source, name, owned.membership_id)
        self.outcome.removals.append(facts.user_id)
        logger.info(
            "membership removed",
            extra={"group_id": self.group_id, "user_id": facts.user_id, "why": verdict.why, "cycle": self.cycle_id},
        )
        self._write_record(facts.user_id, facts.record, verdict.record)

    @staticmethod
    def _ends_unrecorded(facts: Facts, verdict: Verdict) -> bool:
        """A live grant ends while idsync records no membership: a write that failed after the membership was
        created may have left one behind (the grant is written ahead, the membership recorded after)."""
        live = facts.record is not None and facts.record.phase == GRANT_ACTIVE
        return live and not verdict.member and not facts.member

    def _sweep(self, facts: Facts, verdict: Verdict, rearm: bool) -> None:
        """Remove the membership Identity Center holds for an ended grant that idsync never recorded, then write
        the record as the rule says. Raises TargetError, StateError, LeaseLost, SchedulerError."""
        service = self.service
        user = self.store.owned_user(facts.user_id)
        group = self._owned_group()
        found = None
        if user is not None and group is not None:
            found = service.target.find_membership(group.target_id, user.target_id)
        if found is None:
            self._keep(facts, verdict, rearm)
            return
        logger.warning(
            "membership held without a record: removed with its ended grant",
            extra={"group_id": self.group_id, "user_id": facts.user_id, "membership_id": found},
        )
        self._remove(facts, verdict, OwnedMembership(self.group_id, facts.user_id, found))

    def _keep(self, facts: Facts, verdict: Verdict, rearm: bool) -> None:
        """No membership change: record, move or forget the grant; re-arm a still-active grant's schedule."""
        new, old = verdict.record, facts.record
        if (new is not None and new.same_terms(old)) or (new is None and old is None):
            if rearm and new is not None and new.active and new.end is not None and verdict.member:
                self._keep_lease()
                self.service.scheduler.set(self.group_id, facts.user_id, max(new.end, self.now + EXPIRY_RETRY))
                self.outcome.rearmed += 1
            return
        self._keep_lease()
        self._write_record(facts.user_id, old, new)
        self.outcome.moved += 1
        if old is None and new is not None and new.phase == GRANT_SIGHTED:
            self.outcome.sighted += 1
        logger.info(
            "grant recorded",
            extra={
                "group_id": self.group_id,
                "user_id": facts.user_id,
                "phase": new.phase if new else None,
                "end": _iso(new.end if new else None),
            },
        )

    def _write_record(self, user_id: str, old: AccessGrant | None, new: AccessGrant | None) -> None:
        """Schedule first, then record, so a crash in between never leaves an active grant without an expiry;
        then drop the old schedule. Raises SchedulerError, StateError."""
        service = self.service
        before = old.end if old is not None and old.active else None
        after = new.end if new is not None and new.active else None
        if after is not None and after != before:
            service.scheduler.set(self.group_id, user_id, after, before)
        if new is not None:
            if not new.same_terms(old):
                self.store.record_grant(new)
        elif old is not None:
            self.store.forget_grant(self.group_id, user_id)
        if before is not None and after is None:
            service.scheduler.clear(self.group_id, user_id, before)

    # ------------------------------------------------------------------ additions

    def _add(self, facts: Facts, verdict: Verdict) -> bool:
        """Apply one addition. False when it needed a token and none was left (metered additions stop)."""
        service = self.service
        if not self._group_ready():
            return False
        user_id = facts.user_id
        user, why = self._provisionable(user_id)
        if user is None:
            refused = judge(self.group_id, replace(facts, member=False, refused=why), self.now)
            self._refuse(user_id, why or "cannot be provisioned")
            if refused.record != facts.record:
                self._keep_lease()
                self._write_record(user_id, facts.record, refused.record)
            return True
        if verdict.activation:
            taken = service.bucket.try_take(self.waiter)
            self.served = not isinstance(taken, Wait)
            if isinstance(taken, Wait):
                self.outcome.wait_seconds = taken.seconds
                logger.info(
                    "activation waits for a token",
                    extra={"group_id": self.group_id, "user_id": user_id, "wait_seconds": taken.seconds},
                )
                return False
        try:
            applied = self._apply_addition(facts, verdict, user)
        except LeaseLost:
            self._give_back(verdict)
            raise
        except (TargetError, StateError) as error:
            # a state write lost after the membership was created: the write-ahead grant lets a later run
            # find and remove that membership when the grant ends (``_sweep``)
            self._give_back(verdict)
            self._failed(user_id, error)
            return True
        if not applied:
            return True
        try:
            if verdict.record is not None and verdict.record.active and verdict.record.end is not None:
                service.scheduler.set(self.group_id, user_id, verdict.record.end)
        except SchedulerError as error:
            # the grant is recorded: the next cycle re-arms its schedule
            self._failed(user_id, error)
        return True

    def _apply_addition(self, facts: Facts, verdict: Verdict, user: User) -> bool:
        """Record the grant, provision the user if needed, add the membership. Raises TargetError, LeaseLost."""
        service = self.service
        user_id = facts.user_id
        if verdict.record is not None:
            self.store.record_grant(verdict.record)  # write-ahead: an active grant protects the user
        owned_user = self._users.pop(user_id) if user_id in self._users else self.store.owned_user(user_id)
        provisioned = owned_user is None
        if owned_user is None:
            self._keep_lease()
            owned_user = self._provision(user)
        self._keep_lease()
        self._add_membership(owned_user)
        if verdict.record is None and facts.record is not None:
            self.store.forget_grant(self.group_id, user_id)  # a settled sighting: now a permanent member
        latency = None
        if verdict.activation:
            start = latest_start(facts.active)
            latency = (service.clock.now() - start).total_seconds() if start is not None else None
        self.outcome.activations.append(Activation(user_id, owned_user.user_name, latency, provisioned))
        logger.info(
            "activation applied" if verdict.activation else "permanent member added",
            extra={
                "group_id": self.group_id,
                "user_id": user_id,
                "latency_seconds": latency,
                "end": _iso(verdict.record.end if verdict.record else None),
                "cycle": self.cycle_id,
            },
        )
        return True

    def _give_back(self, verdict: Verdict) -> None:
        if verdict.activation and not self.service.bucket.give_back():
            logger.warning("token not given back (bucket contended)", extra={"group_id": self.group_id})

    def _owned_group(self) -> OwnedGroup | None:
        if self._group is None:
            self._group = self.store.owned_group(self.group_id)
        return self._group

    def _group_ready(self) -> bool:
        if self._owned_group() is not None:
            return True
        # a PIM group is provisioned by the sync cycle (it is in scope); the cycle's pass then adds its members
        logger.error(
            "PIM group not provisioned in IAM Identity Center yet; its activations are left to the sync cycle",
            extra={"group_id": self.group_id},
        )
        self.outcome.ignored = "group not provisioned in IAM Identity Center (the sync cycle provisions it)"
        return False

    def _group_display(self) -> str:
        group = self._owned_group()
        return group.display_name if group is not None else self.group_id

    def _provisionable(self, user_id: str) -> tuple[User | None, str | None]:
        """The user as the mapping makes it, or (None, why) when it cannot be provisioned: gone, disabled,
        out of scope or refused by the mapping (checked for every addition, provisioned users too)."""
        obj = self.service.directory.user(user_id)
        if obj is None:
            return None, "the user no longer exists in Entra"
        decided = self.service.scope.user(obj)
        if not decided.in_scope:
            return None, f"out of scope: {decided.reason}"
        mapped = self.service.user_mapper.map(obj)
        if isinstance(mapped, Refusal):
            return None, mapped.message
        if not mapped.active:
            return None, "the account is disabled in Entra"
        return mapped, None

    def _refuse(self, user_id: str, why: str) -> None:
        self.outcome.refused.append((user_id, why))
        obj = self.service.directory.user(user_id)
        name = str(obj.get("userPrincipalName") or user_id) if obj else user_id
        self._log("user", "skip", Status.SKIPPED, user_id, name, error=why)
        logger.warning("activation refused", extra={"group_id": self.group_id, "user_id": user_id, "reason": why})

    def _provision(self, user: User) -> OwnedUser:
        """Create the user, or adopt the one holding its userName, and record it as the sync cycle does.

        Raises TargetError (logged against the user)."""
        service, store = self.service, self.store
        targets: dict[str, str] = {}
        if user.manager_source_id:
            manager = store.owned_user(user.manager_source_id)
            if manager is not None:
                targets[user.manager_source_id] = manager.target_id
        doc = desired_doc_for_create(user, targets)
        intent = jit_intent_key(self.group_id)
        try:
            # a create this group's writer sent before a crash is settled before this one is intended
            resolve_intent(store, service.target, key=intent)
            recorded = store.owned_user(user.source_id)
            if recorded is not None:
                return recorded
            store.put_item(intent, {"kind": "user", "source_id": user.source_id, "name": user.user_name, "doc": doc})
            try:
                target_id = service.target.create_user(user.user_name, doc)
                action, changes = "create", tuple(AttributeChange(k, None, v) for k, v in sorted(doc.items()))
            except TargetConflict as conflict:
                self._keep_lease()
                existing = service.target.find_user(user.user_name)
                if existing is None:
                    raise
                recorded = store.owned_user(user.source_id)
                if recorded is not None and recorded.target_id == existing:
                    store.delete_item(intent)
                    return recorded  # another writer (the sync cycle) created and recorded it meanwhile
                holders = sorted(s for s, o in store.load_ownership().users.items() if o.target_id == existing)
                if holders:
                    store.delete_item(intent)
                    raise TargetConflict(
                        f"user {user.user_name}: userName is held by IAM Identity Center user {existing}, which "
                        f"idsync manages for Entra user {holders[0]}; the sync cycle settles the names"
                    ) from conflict
                # matched on first sight, as the cycle adopts; its attributes are unknown here, so the
                # recorded document is empty and the next cycle writes every managed attribute
                target_id, action, changes, doc = existing, "adopt", (), {}
        except TargetError as error:
            self._log("user", "create", Status.FAILURE, user.source_id, user.user_name, error=str(error))
            raise
        owned = OwnedUser(
            source_id=user.source_id,
            target_id=target_id,
            user_name=user.user_name,
            doc=freeze_doc(doc),
            manager_source_id=user.manager_source_id,
            fingerprint=user.fingerprint(),
        )
        store.record_user(owned)
        store.delete_item(intent)
        self._log("user", action, Status.SUCCESS, user.source_id, user.user_name, target_id, changes)
        return owned

    def _add_membership(self, user: OwnedUser) -> None:
        """Raises TargetError (logged against the membership)."""
        service = self.service
        group = self._owned_group()
        assert group is not None  # checked by _group_ready before the token was taken
        name = f"{group.display_name} <- {user.user_name}"
        source = f"{self.group_id}:{user.source_id}"
        try:
            try:
                membership_id = service.target.create_membership(group.target_id, user.target_id)
                action = "create"
            except TargetConflict:
                self._keep_lease()
                found = service.target.find_membership(group.target_id, user.target_id)
                if found is None:
                    raise
                membership_id, action = found, "adopt"
        except TargetError as error:
            self._log("membership", "create", Status.FAILURE, source, name, error=str(error))
            raise
        self.store.record_membership(OwnedMembership(self.group_id, user.source_id, membership_id))
        changes = (AttributeChange("members", None, user.target_id),) if action == "create" else ()
        self._log("membership", action, Status.SUCCESS, source, name, membership_id, changes)

    # ------------------------------------------------------------------ plumbing

    def _keep_lease(self) -> None:
        if self.lease is not None:
            self.lease.keep()

    def _failed(self, user_id: str, error: Exception) -> None:
        self.outcome.failed.append((user_id, str(error)))
        logger.error(
            "PIM change failed for one user; the others go on and the next run retries it",
            extra={"group_id": self.group_id, "user_id": user_id, "error": str(error)},
        )

    def _log(
        self,
        kind: str,
        action: str,
        status: Status,
        source_id: str,
        name: str,
        target_id: str | None = None,
        changes: tuple[AttributeChange, ...] = (),
        error: str | None = None,
    ) -> None:
        self.entries.append(
            LogEntry(
                cycle_id=self.cycle_id,
                change_id=f"{self.cycle_id}-{self.group_id[:8]}-{len(self.entries) + 1:06d}",
                time=self.service.clock.now().isoformat(),
                kind=kind,
                action=action,
                status=status,
                source_id=source_id,
                name=name,
                target_id=target_id,
                modified=changes,
                error=error,
            )
        )

    def finish(self, lease: GroupLease) -> None:
        """The run's log entries and the release of ``lease``, in one write where the store can. Raises StateError."""
        entries, self.entries = self.entries, []
        if lease.held:
            lease.held = False
            self.service.grants.append_logs_and_release(entries, lease.name, lease.owner)
        elif entries:
            self.service.state.append_logs(entries)

    def flush(self) -> None:
        if self.entries:
            self.service.state.append_logs(self.entries)
            self.entries = []


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --------------------------------------------------------------------------- queue messages


class MessageFate(StrEnum):
    DONE = "done"  # delete the message
    DUPLICATE = "duplicate"  # another message of this batch looked at the same group: delete
    REQUEUED = "requeued"  # hidden until the next token: report it as a batch item failure
    RESENT = "resent"  # sent afresh (receive count near the queue's limit): delete this one
    POISON = "poison"  # not a hint: fail it, so it reaches the dead-letter queue


@dataclass(frozen=True, slots=True)
class MessageOutcome:
    fate: MessageFate
    outcome: JitOutcome | None = None
    requeue_seconds: int | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """True when the queue must keep the message (a batch item failure)."""
        return self.fate in (MessageFate.REQUEUED, MessageFate.POISON)


class JitWorker:
    """Turns queue messages into looks; ``batch()`` starts the bookkeeping of one received batch."""

    def __init__(self, service: JitService, retry: HintRetry) -> None:
        self.service = service
        self.retry = retry

    def batch(self) -> WorkerBatch:
        return WorkerBatch(self)


class WorkerBatch:
    """One batch: each group is looked at once (a look re-reads everything, so later hints add nothing)."""

    def __init__(self, worker: JitWorker) -> None:
        self._worker = worker
        self._seen: set[str] = set()
        # read once per batch: a pause set during a batch holds activations from the next one on
        self._paused = load_pause(worker.service.state) is not None

    def handle(self, body: str, receipt_handle: str, receive_count: int) -> MessageOutcome:
        """Process one message. Raises what ``JitService.look`` raises (the message is then retried)."""
        try:
            hint = Hint.from_json(body)
        except ValueError as error:
            logger.error("queue message is not a hint", extra={"error": str(error)})
            return MessageOutcome(MessageFate.POISON, error=str(error))
        group = hint.group_id.lower()
        if group in self._seen:
            return MessageOutcome(MessageFate.DUPLICATE)
        self._seen.add(group)
        outcome = self._worker.service.look(hint.group_id, paused=self._paused)
        if outcome.wait_seconds is None:
            return MessageOutcome(MessageFate.DONE, outcome)
        seconds = max(1, math.ceil(outcome.wait_seconds))
        if receive_count >= RESEND_AFTER_RECEIVES:
            self._worker.retry.resend(hint, seconds)
            fate = MessageFate.RESENT
        else:
            self._worker.retry.delay(receipt_handle, seconds)
            fate = MessageFate.REQUEUED
        logger.info(
            "hint requeued until the next token",
            extra={"group_id": hint.group_id, "seconds": seconds, "receive_count": receive_count, "fate": fate.value},
        )
        return MessageOutcome(fate, outcome, seconds)
