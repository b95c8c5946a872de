"""PIM for Groups just in time: apply an activation within seconds, take access away when the grant ends.

A hint says only "look at group G". ``JitService.look`` reads the truth from Graph (the group's direct
user members and its assignment schedule instances), compares it with what idsync recorded (owned
memberships and grants), and for each user of the group decides one step (``decide``, pure):

- add: the user holds access in Entra but not in IAM Identity Center. An activation takes a token
  from the shared bucket first; with none left, the hint must come back when the next token is due
  (``JitOutcome.wait_seconds``). With a token: provision the user if Identity Center lacks them,
  add the membership, record the grant and schedule its expiry.
- remove: nothing grants access any more (an early deactivation, or an expiry). Never metered.
- record / forget: the grant's instances or end changed (an extension moves the expiry), or a
  standing membership no longer needs one. No write to Identity Center.

Grants are reference counted by instance id: access stays while any active instance remains. A
membership idsync added for instances ends with them, even while Graph's member list still shows the
user (it is updated after the end); a membership that existed before idsync saw the grant (a
permanent member who also activated) stays while Graph lists the user.

``JitService.expire`` is the same comparison for one user, run by the scheduled expiry; it never
adds. ``JitWorker`` turns queue messages into ``look`` calls: one look per group per batch, and a
message that found no token is put back to be seen again exactly when the next token is due.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from idsync.errors import TargetConflict, TargetError
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
from idsync.plan import desired_doc_for_create
from idsync.ports import (
    AccessGrant,
    AssignmentInstance,
    Clock,
    ExpiryScheduler,
    GrantStore,
    Hint,
    HintRetry,
    IdentityStore,
    PimDirectory,
    StateStore,
)
from idsync.services.control import PAUSE_RECHECK_SECONDS, load_pause
from idsync.services.token_bucket import TokenBucket, Wait

logger = logging.getLogger(__name__)

MEMBER_ACCESS = "member"  # accessId of the instances that grant membership (owner ones do not)
# A message received this many times is sent afresh instead of hidden again, so that a long wait
# for tokens never carries it past the queue's maxReceiveCount (50) into the dead-letter queue.
RESEND_AFTER_RECEIVES = 40


class UserMapping(Protocol):
    def map(self, obj: Mapping[str, Any]) -> User | Refusal: ...


class _Decides(Protocol):
    @property
    def in_scope(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class UserScope(Protocol):
    def user(self, obj: Mapping[str, Any]) -> _Decides: ...


# --------------------------------------------------------------------------- the decision (pure)


class Step(StrEnum):
    NOTHING = "nothing"
    ADD = "add"
    REMOVE = "remove"
    RECORD = "record"
    FORGET = "forget"


@dataclass(frozen=True, slots=True)
class Decision:
    step: Step
    grant: AccessGrant | None = None  # the grant to record (add, record)


def grant_terms(
    group_id: str, user_id: str, active: Sequence[AssignmentInstance], standing: bool, applied_at: str
) -> AccessGrant:
    """The grant that ``active`` instances make: their ids, and the end of the last (None if one never ends)."""
    ends = [i.end for i in active]
    end = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return AccessGrant(group_id, user_id, tuple(sorted(i.id for i in active)), end, standing, applied_at)


def decide(
    group_id: str,
    user_id: str,
    listed: bool,
    active: Sequence[AssignmentInstance],
    grant: AccessGrant | None,
    member: bool,
    now: datetime,
) -> Decision:
    """What to do for one user of a PIM group.

    ``listed``: Graph lists the user among the group's direct members; ``active``: the user's member
    instances active now; ``grant``: what idsync recorded; ``member``: idsync holds the membership in
    IAM Identity Center.
    """
    stamp = now.astimezone(UTC).isoformat()
    if not member:
        if active or listed:
            terms = grant_terms(group_id, user_id, active, False, stamp) if active else None
            return Decision(Step.ADD, terms)
        return Decision(Step.FORGET) if grant is not None else Decision(Step.NOTHING)
    if active:
        standing = grant.standing if grant is not None else True
        terms = grant_terms(group_id, user_id, active, standing, grant.applied_at if grant else stamp)
        return Decision(Step.NOTHING) if terms.same_terms(grant) else Decision(Step.RECORD, terms)
    if grant is None:
        return Decision(Step.NOTHING)  # a standing membership: the sync cycle's to manage
    if grant.standing and listed:
        return Decision(Step.FORGET)
    return Decision(Step.REMOVE)


def _active_by_user(instances: Iterable[AssignmentInstance], now: datetime) -> dict[str, list[AssignmentInstance]]:
    """The member instances active at ``now``, by user."""
    out: dict[str, list[AssignmentInstance]] = {}
    for instance in instances:
        if instance.access_id == MEMBER_ACCESS and instance.active_at(now):
            out.setdefault(instance.principal_id, []).append(instance)
    return out


def _latest_start(active: Sequence[AssignmentInstance]) -> datetime | None:
    starts = [i.start for i in active if i.start is not None]
    return max(starts) if starts else None


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Activation:
    user_id: str
    user_name: str
    latency_seconds: float | None  # from the newest instance's startDateTime to the membership being present
    provisioned_user: bool


@dataclass
class JitOutcome:
    """What one look (or one expiry) did."""

    group_id: str
    cycle_id: str = ""
    activations: list[Activation] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)  # user ids whose membership was removed
    moved: int = 0  # grants recorded, moved or forgotten without touching Identity Center
    refused: list[tuple[str, str]] = field(default_factory=list)  # (user id, why)
    wait_seconds: float | None = None  # an activation waits for the next token (or for the pause to end)
    held: int = 0  # activations not applied because idsync is paused
    ignored: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "groupId": self.group_id,
            "cycleId": self.cycle_id,
            "activations": [a.user_id for a in self.activations],
            "removals": list(self.removals),
            "moved": self.moved,
            "refused": [{"userId": u, "reason": r} for u, r in self.refused],
            "waitSeconds": self.wait_seconds,
            "held": self.held,
            "ignored": self.ignored,
        }


# --------------------------------------------------------------------------- the service


class JitService:
    """Applies PIM for Groups activations and expiries for the configured PIM groups."""

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
        self._groups = {group.lower(): group for group in pim_groups}

    def configured(self, group_id: str) -> str | None:
        """The configured PIM group id matching ``group_id`` (any case), or None."""
        return self._groups.get(group_id.lower())

    def look(self, group_id: str, paused: bool = False) -> JitOutcome:
        """Bring IAM Identity Center in line with Graph for one PIM group: removals first, then activations
        while tokens last (``wait_seconds`` tells when the next is due). While ``paused``, removals still
        apply and activations are held (``held``; ``wait_seconds`` asks to look again later).

        Raises DirectoryError, TargetError, StateError, SchedulerError (the hint is then retried).
        """
        group = self.configured(group_id)
        if group is None:
            logger.warning("hint ignored: not a configured PIM group", extra={"group_id": group_id})
            return JitOutcome(group_id, ignored="not a configured PIM group")
        run = _Run(self, group, "jit")
        members = self.directory.members(group)
        instances = self.directory.instances(group)
        active = _active_by_user(instances, run.now)
        # listed only through activations that have ended: Graph has not dropped the member yet
        lagging = {i.principal_id for i in instances if i.end is not None and i.end <= run.now} - set(active)
        grants = self.grants.grants(group)
        owned = self.grants.owned_memberships(group)
        adds: list[tuple[str, Decision, list[AssignmentInstance]]] = []
        try:
            for user_id in sorted(members | set(active) | set(grants)):
                mine = active.get(user_id, [])
                decision = decide(
                    group, user_id, user_id in members, mine, grants.get(user_id), user_id in owned, run.now
                )
                if decision.step is Step.ADD and user_id in lagging:
                    continue  # an ended activation is never added back; plain members are the sync cycle's
                if decision.step is Step.ADD:
                    adds.append((user_id, decision, mine))
                else:
                    run.apply(user_id, decision, grants.get(user_id), owned.get(user_id))
            if paused and adds:
                run.outcome.held = len(adds)
                run.outcome.wait_seconds = PAUSE_RECHECK_SECONDS
                logger.info("activations held: idsync is paused", extra={"group_id": group, "held": len(adds)})
                adds = []
            # the longest-waiting activation first
            adds.sort(key=lambda a: (_latest_start(a[2]) or run.now, a[0]))
            for user_id, decision, mine in adds:
                if not run.add(user_id, decision, mine):
                    break
        finally:
            run.flush()
        return run.outcome

    def expire(self, group_id: str, user_id: str) -> JitOutcome:
        """A grant's scheduled end: re-read Graph for this user and remove the membership if nothing grants it;
        an extended grant's expiry moves. Never adds and never takes a token.

        Raises DirectoryError, TargetError, StateError, SchedulerError.
        """
        group = self.configured(group_id)
        if group is None:
            logger.warning("expiry ignored: not a configured PIM group", extra={"group_id": group_id})
            return JitOutcome(group_id, ignored="not a configured PIM group")
        run = _Run(self, group, "jit-expiry")
        listed = user_id in self.directory.members(group)
        mine = _active_by_user(self.directory.instances(group, user_id), run.now).get(user_id, [])
        grant = self.grants.grant(group, user_id)
        owned = self.grants.owned_memberships(group).get(user_id)
        decision = decide(group, user_id, listed, mine, grant, owned is not None, run.now)
        try:
            if decision.step is Step.ADD:
                # Entra grants access that Identity Center lacks: that is the worker's (metered) job
                logger.warning(
                    "expiry found an activation not applied; left to the worker and the sync cycle",
                    extra={"group_id": group, "user_id": user_id},
                )
                run.outcome.ignored = "access granted in Entra but not applied; not the expiry's to add"
            else:
                run.apply(user_id, decision, grant, owned)
        finally:
            run.flush()
        return run.outcome


class _Run:
    """One look or expiry: its cycle id, clock reading, provisioning log entries and outcome."""

    def __init__(self, service: JitService, group_id: str, prefix: str) -> None:
        self.service = service
        self.group_id = group_id
        self.now = service.clock.now()
        self.cycle_id = f"{prefix}-{self.now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.outcome = JitOutcome(group_id, self.cycle_id)
        self.entries: list[LogEntry] = []
        self._group: OwnedGroup | None = None

    # ------------------------------------------------------------------ steps without a token

    def apply(self, user_id: str, decision: Decision, grant: AccessGrant | None, owned: OwnedMembership | None) -> None:
        service = self.service
        if decision.step is Step.RECORD:
            assert decision.grant is not None
            self._schedule(decision.grant, grant)
            service.grants.record_grant(decision.grant)
            self.outcome.moved += 1
            logger.info(
                "grant recorded",
                extra={"group_id": self.group_id, "user_id": user_id, "end": _iso(decision.grant.end)},
            )
        elif decision.step is Step.FORGET:
            assert grant is not None
            if grant.end is not None:
                service.scheduler.clear(self.group_id, user_id, grant.end)
            service.grants.forget_grant(self.group_id, user_id)
            self.outcome.moved += 1
        elif decision.step is Step.REMOVE:
            assert owned is not None
            assert grant is not None
            self._remove(user_id, owned)
            if grant.end is not None:
                service.scheduler.clear(self.group_id, user_id, grant.end)
            service.grants.forget_grant(self.group_id, user_id)
            self.outcome.removals.append(user_id)

    def _remove(self, user_id: str, owned: OwnedMembership) -> None:
        service = self.service
        user = service.grants.owned_user(user_id)
        name = f"{self._group_display()} <- {user.user_name if user else user_id}"
        service.target.delete_membership(owned.membership_id)
        service.state.forget_membership(self.group_id, user_id)
        self._log("membership", "delete", Status.SUCCESS, f"{self.group_id}:{user_id}", name, owned.membership_id)
        logger.info("membership removed", extra={"group_id": self.group_id, "user_id": user_id, "cycle": self.cycle_id})

    def _schedule(self, new: AccessGrant, old: AccessGrant | None) -> None:
        """Set the expiry before recording the grant, so a crash in between cannot leave a grant without one."""
        previous = old.end if old is not None else None
        if new.end is not None:
            if new.end != previous:
                self.service.scheduler.set(self.group_id, new.user_id, new.end, previous)
        elif previous is not None:
            self.service.scheduler.clear(self.group_id, new.user_id, previous)

    # ------------------------------------------------------------------ activations

    def add(self, user_id: str, decision: Decision, active: Sequence[AssignmentInstance]) -> bool:
        """Apply one activation. False when the bucket holds no token (stop: the hint comes back later)."""
        service = self.service
        if not self._group_ready():
            return False
        owned_user = service.grants.owned_user(user_id)
        user: User | None = None
        if owned_user is None:
            user = self._mapped_user(user_id)
            if user is None:
                return True
        taken = service.bucket.try_take()
        if isinstance(taken, Wait):
            self.outcome.wait_seconds = taken.seconds
            logger.info(
                "activation waits for a token",
                extra={"group_id": self.group_id, "user_id": user_id, "wait_seconds": taken.seconds},
            )
            return False
        try:
            provisioned = owned_user is None
            if owned_user is None:
                assert user is not None
                owned_user = self._provision(user)
            self._add_membership(owned_user)
        except TargetError as error:
            self._log("membership", "create", Status.FAILURE, f"{self.group_id}:{user_id}", user_id, error=str(error))
            raise
        if decision.grant is not None:
            self._schedule(decision.grant, None)
            service.grants.record_grant(decision.grant)
        start = _latest_start(active)
        applied = service.clock.now()
        latency = (applied - start).total_seconds() if start is not None else None
        self.outcome.activations.append(Activation(user_id, owned_user.user_name, latency, provisioned))
        logger.info(
            "activation applied",
            extra={
                "group_id": self.group_id,
                "user_id": user_id,
                "latency_seconds": latency,
                "end": _iso(decision.grant.end if decision.grant else None),
                "cycle": self.cycle_id,
            },
        )
        return True

    def _owned_group(self) -> OwnedGroup | None:
        if self._group is None:
            self._group = self.service.grants.owned_group(self.group_id)
        return self._group

    def _group_ready(self) -> bool:
        if self._owned_group() is not None:
            return True
        # a PIM group is provisioned by the sync cycle (it is in scope); that cycle adds its members too
        logger.error(
            "PIM group not provisioned in IAM Identity Center yet; its activations are left to the sync cycle",
            extra={"group_id": self.group_id},
        )
        self.outcome.ignored = "group not provisioned in IAM Identity Center (the sync cycle provisions it)"
        return False

    def _group_display(self) -> str:
        group = self._owned_group()
        return group.display_name if group is not None else self.group_id

    def _mapped_user(self, user_id: str) -> User | None:
        """The user as the mapping makes it, or None (logged and counted) when it cannot be provisioned."""
        service = self.service
        obj = service.directory.user(user_id)
        why: str | None = None
        name = user_id
        user: User | None = None
        if obj is None:
            why = "the user no longer exists in Entra"
        else:
            name = str(obj.get("userPrincipalName") or user_id)
            decided = service.scope.user(obj)
            mapped = service.user_mapper.map(obj)
            if not decided.in_scope:
                why = f"out of scope: {decided.reason}"
            elif isinstance(mapped, Refusal):
                why = mapped.message
            elif not mapped.active:
                why = "the account is disabled in Entra"
            else:
                user = mapped
        if why is not None:
            self.outcome.refused.append((user_id, why))
            self._log("user", "skip", Status.SKIPPED, user_id, name, error=why)
            logger.warning("activation refused", extra={"group_id": self.group_id, "user_id": user_id, "reason": why})
        return user

    def _provision(self, user: User) -> OwnedUser:
        """Create the user, or adopt the one holding its userName, and record it as the sync cycle does."""
        service = self.service
        targets: dict[str, str] = {}
        if user.manager_source_id:
            manager = service.grants.owned_user(user.manager_source_id)
            if manager is not None:
                targets[user.manager_source_id] = manager.target_id
        doc = desired_doc_for_create(user, targets)
        try:
            target_id = service.target.create_user(user.user_name, doc)
            action, changes = "create", tuple(AttributeChange(k, None, v) for k, v in sorted(doc.items()))
        except TargetConflict:
            existing = service.target.find_user(user.user_name)
            if existing is None:
                raise
            # matched on first sight, as the cycle adopts; its attributes are unknown here, so the
            # recorded document is empty and the next cycle writes every managed attribute
            target_id, action, changes, doc = existing, "adopt", (), {}
        owned = OwnedUser(
            source_id=user.source_id,
            target_id=target_id,
            user_name=user.user_name,
            doc=freeze_doc(doc),
            manager_source_id=user.manager_source_id,
            fingerprint=user.fingerprint(),
        )
        service.state.record_user(owned)
        self._log("user", action, Status.SUCCESS, user.source_id, user.user_name, target_id, changes)
        return owned

    def _add_membership(self, user: OwnedUser) -> None:
        service = self.service
        group = self._owned_group()
        assert group is not None  # checked by _group_ready before the token was taken
        name = f"{group.display_name} <- {user.user_name}"
        try:
            membership_id = service.target.create_membership(group.target_id, user.target_id)
            action = "create"
        except TargetConflict:
            found = service.target.find_membership(group.target_id, user.target_id)
            if found is None:
                raise
            membership_id, action = found, "adopt"
        service.state.record_membership(OwnedMembership(self.group_id, user.source_id, membership_id))
        changes = (AttributeChange("members", None, user.target_id),) if action == "create" else ()
        self._log(
            "membership", action, Status.SUCCESS, f"{self.group_id}:{user.source_id}", name, membership_id, changes
        )

    # ------------------------------------------------------------------ provisioning log

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
                change_id=f"{self.cycle_id}-{len(self.entries) + 1:06d}",
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
