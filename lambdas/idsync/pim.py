"""The one rule for a PIM for Groups group's membership (pure): who must be a member, and what idsync keeps on record.

The JIT worker, the scheduled expiry and the sync cycle all decide through ``judge_group``; none has an
opinion of its own. For one user of the group, from what Graph says now (is she listed among the direct
members; her ``member`` assignment schedule instances active now), what idsync recorded (her
``AccessGrant``, in one of three phases) and whether idsync holds the membership:

1. An active member instance: she must be a member (unless she cannot be provisioned: disabled, out of
   scope, refused by the mapping; then she never gets in). The grant records the instances and the end of
   the last one; adding her is an activation (metered by the token bucket).
2. No active instance, an active grant: the instances ended (an expiry, an early deactivation). She must
   not be a member, even while Graph still lists her (its member list lags behind the end); the grant
   becomes an ``ended`` marker while Graph lists her, and is forgotten once Graph stops. A ``standing``
   grant (she was a member before idsync saw an instance) only ends the grant: a listed user stays.
3. No active instance, an ``ended`` marker (``applied_at``: when the end was seen): not a member; the
   marker stays until Graph stops listing her or a new instance appears (rule 1), however long Graph's
   member list lags: time alone never makes her a member again. A permanent membership needs a positive
   signal: an ``assigned`` instance (rule 1), or being listed again after Graph stopped listing her
   (rule 5, from no record).
4. Listed, no active instance, no record, but a member instance Graph still shows although it ended (its
   instance list lags too): not a member, whatever the lag: that instance explains the listing, exactly as
   an ``ended`` marker does, and one is recorded (rule 3) so that the user stays out once the instance
   disappears while the member list still lags. Idsync already holding the membership keeps it (a
   permanent member whose own activation ended).
5. Listed, no instance, no record: a permanent member. Idsync already holding the membership keeps it. A
   new one is first recorded as ``sighted`` and added once listed for ``settle`` (a lagging member list
   after an activation idsync never saw must not look like a permanent member). Owner instances
   (``accessId: owner``) grant nothing.
6. Not listed, no instance: not a member.

Invariants (checked by the stateful property test in tests/unit/test_pim_truth_machine.py):
(a) nobody is a member later than the end of her last grant plus one cycle interval unless a permanent
    assignment holds her; (b) nobody holding an active member instance loses an applied membership;
(c) a user listed whose only visible member instances ended is never added, however long Graph lags.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from idsync.ports import GRANT_ACTIVE, GRANT_ENDED, GRANT_SIGHTED, AccessGrant, AssignmentInstance

MEMBER_ACCESS = "member"  # accessId of the instances that grant membership (owner ones do not)
SETTLE = timedelta(minutes=10)  # how long a user is listed without an instance before she counts as permanent


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known about one user of a PIM group at one instant.

    ``refused``: why the user cannot be provisioned (checked only for users about to be added), or None.
    ``ended``: her member instances Graph still shows although they ended (its instance list lags).
    """

    user_id: str
    listed: bool
    active: tuple[AssignmentInstance, ...]
    record: AccessGrant | None
    member: bool
    refused: str | None = None
    ended: tuple[AssignmentInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rule's answer for one user: be a member or not, and the record to hold afterwards (None: none)."""

    user_id: str
    member: bool
    record: AccessGrant | None
    activation: bool  # becoming a member now applies an instance (metered)
    why: str

    def adds(self, facts: Facts) -> bool:
        return self.member and not facts.member

    def removes(self, facts: Facts) -> bool:
        return facts.member and not self.member


def active_instances(
    instances: Iterable[AssignmentInstance], now: datetime
) -> dict[str, tuple[AssignmentInstance, ...]]:
    """The member instances active at ``now``, by principal."""
    out: dict[str, list[AssignmentInstance]] = {}
    for instance in instances:
        if instance.access_id == MEMBER_ACCESS and instance.active_at(now):
            out.setdefault(instance.principal_id, []).append(instance)
    return {user: tuple(found) for user, found in out.items()}


def grant_terms(
    group_id: str, user_id: str, active: Sequence[AssignmentInstance], standing: bool, applied_at: str
) -> AccessGrant:
    """The active grant that ``active`` instances make: their ids, and the end of the last (None if one never ends)."""
    ends = [i.end for i in active]
    end = None if any(e is None for e in ends) else max(e for e in ends if e is not None)
    return AccessGrant(group_id, user_id, tuple(sorted(i.id for i in active)), end, standing, applied_at)


def ended_instances(
    instances: Iterable[AssignmentInstance], now: datetime
) -> dict[str, tuple[AssignmentInstance, ...]]:
    """The member instances that ended by ``now`` (Graph may still show them), by principal."""
    out: dict[str, list[AssignmentInstance]] = {}
    for instance in instances:
        if instance.access_id == MEMBER_ACCESS and instance.end is not None and instance.end <= now:
            out.setdefault(instance.principal_id, []).append(instance)
    return {user: tuple(found) for user, found in out.items()}


def ended_marker(group_id: str, user_id: str, ended: Sequence[AssignmentInstance], stamp: str) -> AccessGrant:
    """The ``ended`` marker for instances that ended before idsync applied them (``stamp``: when seen)."""
    ends = [i.end for i in ended if i.end is not None]
    end = max(ends) if ends else None
    return AccessGrant(group_id, user_id, tuple(sorted(i.id for i in ended)), end, False, stamp, GRANT_ENDED)


def judge(group_id: str, facts: Facts, now: datetime, settle: timedelta = SETTLE) -> Verdict:
    """Apply the rule (see the module docstring) to one user. Pure; never raises for a well-formed record."""
    user, record = facts.user_id, facts.record
    live = record if record is not None and record.phase == GRANT_ACTIVE else None
    stamp = now.astimezone(UTC).isoformat()
    if facts.active:
        if not facts.member and facts.refused is not None:
            return Verdict(user, False, record, False, f"cannot be provisioned: {facts.refused}")
        standing = live.standing if live is not None else (facts.member and record is None)
        applied_at = live.applied_at if live is not None else stamp
        terms = grant_terms(group_id, user, facts.active, standing, applied_at)
        return Verdict(user, True, terms, not facts.member, "an active member instance")
    if live is not None:
        if live.standing and facts.listed:
            return Verdict(user, True, None, False, "a permanent member whose activation ended")
        marker = replace(live, phase=GRANT_ENDED, applied_at=stamp) if facts.listed else None
        return Verdict(user, False, marker, False, "the grant ended")
    if record is not None and record.phase == GRANT_ENDED:
        if not facts.listed:
            return Verdict(user, False, None, False, "the grant ended")
        return Verdict(user, False, record, False, "the grant ended; Graph still lists the user")
    if not facts.listed:
        return Verdict(user, False, None, False, "not a member in Entra")
    if facts.member:
        return Verdict(user, True, None, False, "a permanent member")
    if facts.ended:
        marker = ended_marker(group_id, user, facts.ended, stamp)
        return Verdict(user, False, marker, False, "listed after her member instances ended; Graph lags")
    if facts.refused is not None:
        return Verdict(user, False, None, False, f"cannot be provisioned: {facts.refused}")
    sighted = record if record is not None and record.phase == GRANT_SIGHTED else None
    if sighted is None:
        return Verdict(user, False, AccessGrant(group_id, user, (), None, True, stamp, GRANT_SIGHTED), False, "sighted")
    if now - datetime.fromisoformat(sighted.applied_at) >= settle:
        return Verdict(user, True, None, False, "a permanent member")
    return Verdict(user, False, sighted, False, "listed without an instance; not settled yet")


def judge_group(
    group_id: str,
    listed: Iterable[str],
    instances: Iterable[AssignmentInstance],
    records: Mapping[str, AccessGrant],
    members: Iterable[str],
    now: datetime,
    refused: Mapping[str, str] | None = None,
    settle: timedelta = SETTLE,
) -> list[tuple[Facts, Verdict]]:
    """The rule for every user Graph or idsync knows in the group, sorted by user id."""
    listed_set, member_set = set(listed), set(members)
    seen = list(instances)
    active, ended = active_instances(seen, now), ended_instances(seen, now)
    why_not = refused or {}
    out: list[tuple[Facts, Verdict]] = []
    for user in sorted(listed_set | set(active) | set(records) | member_set):
        facts = Facts(
            user,
            user in listed_set,
            active.get(user, ()),
            records.get(user),
            user in member_set,
            why_not.get(user),
            ended.get(user, ()),
        )
        out.append((facts, judge(group_id, facts, now, settle)))
    return out


def stale_grants(
    instances: Iterable[AssignmentInstance], records: Mapping[str, AccessGrant], now: datetime
) -> list[str]:
    """Why a group's recorded grants no longer match its assignment schedule instances (empty: they match).

    What the poller checks from the instances alone (no member read): an active member instance without an
    active grant (an activation not applied), a grant whose instances or end changed (an extension, a
    second activation), an active grant without an active instance (an end or an early deactivation).
    Owner instances grant nothing, so they never call for a look.
    """
    active = active_instances(instances, now)
    reasons: list[str] = []
    for user, found in sorted(active.items()):
        record = records.get(user)
        if record is None or not record.active:
            reasons.append(f"{user}: an active member instance without an applied grant")
            continue
        terms = grant_terms(record.group_id, user, found, record.standing, record.applied_at)
        if terms.instance_ids != record.instance_ids or terms.end != record.end:
            reasons.append(f"{user}: the grant's instances or end changed")
    for user, record in sorted(records.items()):
        if record.active and user not in active:
            reasons.append(f"{user}: the grant has no active member instance any more")
    return reasons


def latest_start(active: Sequence[AssignmentInstance]) -> datetime | None:
    """When the newest of ``active`` started (None when none says)."""
    starts = [i.start for i in active if i.start is not None]
    return max(starts) if starts else None
