"""Drift: what a slice of IAM Identity Center holds against what idsync believes it holds. Pure: no I/O.

A delta cycle plans from ownership (what idsync recorded it wrote), so a change made by hand in AWS stays
unseen until a full reconcile. The drift check (``idsync.services.drift``) reads a slice of IAM Identity
Center each delta cycle; this module says what in that slice differs from the belief, and builds the view
the cycle plans from: the slice's actual state in place of the believed one, for the drifted objects only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from idsync.model import CurrentView, Group, OwnedGroup, OwnedUser, TargetGroup, TargetUser
from idsync.plan import EXTENSIONS, _diff_group, diff_user, with_manager

PAGE = 100  # results in one Identity Store List call
MARGIN = 1.1  # a slice reads a tenth more than its share, so a round ends before the period does
MIN_ELAPSED = timedelta(minutes=1)  # a slice right after another still makes progress
MAX_ELAPSED = timedelta(hours=1)  # after a long gap (a full reconcile, a pause) a slice does not balloon


@dataclass(frozen=True, slots=True)
class Drift:
    """One object IAM Identity Center holds otherwise than idsync believes."""

    kind: str  # "user" | "group" | "membership"
    source_id: str  # the Entra id of the user or group (for a membership: the group)
    name: str
    differs: str  # what differs, for the log line


@dataclass
class Findings:
    """The drift a slice found, and the actual state of the drifted objects."""

    drifts: list[Drift] = field(default_factory=list)
    users: dict[str, TargetUser] = field(default_factory=dict)  # target id -> as AWS holds it
    groups: dict[str, TargetGroup] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # group target -> user target -> membership
    gone_users: set[str] = field(default_factory=set)  # target ids deleted by hand
    gone_groups: set[str] = field(default_factory=set)
    touched_users: set[str] = field(default_factory=set)  # source ids the plan must cover
    touched_groups: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.drifts)

    def apply(self, current: CurrentView) -> CurrentView:
        """``current`` with the drifted objects as AWS holds them (a listed group's memberships replaced, the
        deleted objects and their memberships gone)."""
        users = {k: v for k, v in {**current.users, **self.users}.items() if k not in self.gone_users}
        groups = {k: v for k, v in {**current.groups, **self.groups}.items() if k not in self.gone_groups}
        memberships = {k: v for k, v in current.memberships.items() if k[0] not in self.members}
        for group_target, pairs in self.members.items():
            memberships.update(((group_target, user), membership) for user, membership in pairs.items())
        memberships = {
            k: v for k, v in memberships.items() if k[0] not in self.gone_groups and k[1] not in self.gone_users
        }
        return CurrentView(users, groups, memberships)


def believed_user(owned: OwnedUser) -> TargetUser:
    """The user as idsync recorded writing it."""
    manager = ((owned.doc.get(EXTENSIONS) or {}).get("aws:identitystore:enterprise") or {}).get("manager") or {}
    return TargetUser(owned.target_id, owned.user_name, owned.doc, manager.get("value"))


def user_differences(
    owned: OwnedUser, actual: TargetUser, managed: Iterable[str], create_only: frozenset[str]
) -> tuple[str, ...]:
    """The attributes the planner would write back: those idsync manages that AWS holds otherwise."""
    believed = believed_user(owned)
    believed_doc = with_manager(believed.doc, believed.manager_target_id)
    actual_doc = with_manager(actual.doc, actual.manager_target_id)
    keys = set(managed) | set(believed_doc) | {EXTENSIONS}
    changes = diff_user(believed.user_name, believed_doc, actual, actual_doc, keys, create_only)
    return tuple(sorted({c.attribute for c in changes}))


def group_differences(owned: OwnedGroup, actual: TargetGroup) -> tuple[str, ...]:
    """The group's attributes (displayName, description) AWS holds otherwise than recorded."""
    believed = Group(owned.source_id, owned.display_name, owned.description)
    return tuple(c.attribute for c in _diff_group(believed, actual))


def members_calls_estimate(groups: int, memberships: int) -> int:
    """At most the List calls the members phase takes for ``groups`` holding ``memberships`` in all, when no
    round has measured it yet: a group of c members takes max(1, ceil(c / PAGE)) <= 1 + c // PAGE pages."""
    return groups + memberships // PAGE


def slice_budget(round_total: int, elapsed: timedelta, period: timedelta) -> int:
    """Calls one slice may make: its share of a round for the time since the last slice (clamped), with a
    margin, so that slices every ``elapsed`` cover a round of ``round_total`` calls within ``period``."""
    share = min(max(elapsed, MIN_ELAPSED), MAX_ELAPSED) / period
    return max(1, math.ceil(round_total * MARGIN * share))
