"""The Entra mirror: idsync's local copy of the directory, kept current by Graph delta queries.

Pure: the sync cycle reads changes from Graph, folds them into the mirror here, and derives the
in-scope view from it. Delta responses carry "at least the properties that changed", so changes
are merged into the stored object; ``@removed`` reason ``changed`` is a soft delete (restorable,
mapped through Entra's ``IsSoftDeleted``), ``deleted`` a hard delete.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
USER, GROUP = "user", "group"
SOFT_DELETED = "IsSoftDeleted"


@dataclass(frozen=True, slots=True)
class MemberChange:
    group_id: str
    member_id: str
    member_type: str  # "user" | "group"
    added: bool


@dataclass
class Mirror:
    """Entra users and groups (selected properties), direct members, and the app's assignments."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> member id -> type
    assigned_users: set[str] = field(default_factory=set)
    assigned_groups: set[str] = field(default_factory=set)
    soft_deleted: dict[str, str] = field(default_factory=dict)  # user or group id -> when first seen removed
    # ids of users and groups changed since the mirror was loaded (None: anything may have): what to store again
    changed: set[str] | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------------ folding changes in

    def merge_users(self, changed: Iterable[Mapping[str, Any]], removed: Mapping[str, str], now: str = "") -> int:
        """Fold changed and removed users in; returns how many objects changed. ``now``: ISO time of the read."""
        count = 0
        changed = list(changed)
        self._note([str(obj["id"]) for obj in changed], removed)
        for obj in changed:
            current = self.users.setdefault(str(obj["id"]), {})
            before = dict(current)
            current.update({k: v for k, v in obj.items() if not k.startswith("@")})
            current.pop(SOFT_DELETED, None)  # a user delta returns is live again
            self.soft_deleted.pop(str(obj["id"]), None)
            count += current != before
        for user_id, reason in removed.items():
            if reason == "changed" and user_id in self.users:
                if not self.users[user_id].get(SOFT_DELETED):
                    self.users[user_id][SOFT_DELETED] = True
                    self.soft_deleted.setdefault(user_id, now or _epoch())
                    count += 1
            else:
                self.soft_deleted.pop(user_id, None)
                if self.users.pop(user_id, None) is not None:
                    count += 1
        return count

    def merge_groups(
        self,
        changed: Iterable[Mapping[str, Any]],
        removed: Mapping[str, str],
        member_changes: Iterable[MemberChange],
        full: bool = False,
        now: str = "",
    ) -> int:
        """Fold changed groups and membership changes in. ``full``: the changes are a complete read.

        A group removed with reason ``changed`` (a Microsoft 365 group in deleted items) is kept,
        marked soft-deleted, with its members: a restore brings it back as it was.
        """
        count = 0
        changed, member_changes = list(changed), list(member_changes)
        self._note([str(obj["id"]) for obj in changed] + [c.group_id for c in member_changes], removed)
        for obj in changed:
            current = self.groups.setdefault(str(obj["id"]), {})
            before = dict(current)
            current.update({k: v for k, v in obj.items() if not k.startswith("@") and k != "members@delta"})
            current.pop(SOFT_DELETED, None)
            self.soft_deleted.pop(str(obj["id"]), None)
            count += current != before
        for group_id, reason in removed.items():
            if reason == "changed" and group_id in self.groups:
                if not self.groups[group_id].get(SOFT_DELETED):
                    self.groups[group_id][SOFT_DELETED] = True
                    self.soft_deleted.setdefault(group_id, now or _epoch())
                    count += 1
                continue
            self.soft_deleted.pop(group_id, None)
            if self.groups.pop(group_id, None) is not None:
                count += 1
            self.members.pop(group_id, None)
        if full:
            self.members = {}
        for change in member_changes:
            members = self.members.setdefault(change.group_id, {})
            if change.added:
                count += members.get(change.member_id) != change.member_type
                members[change.member_id] = change.member_type
            elif members.pop(change.member_id, None) is not None:
                count += 1
        return count

    def _note(self, ids: Iterable[str], removed: Iterable[str]) -> None:
        if self.changed is not None:
            self.changed.update(ids)
            self.changed.update(removed)

    def set_assignments(self, users: Iterable[str], groups: Iterable[str]) -> bool:
        """Replace the app's assignments; True when they changed."""
        new_users, new_groups = set(users), set(groups)
        changed = new_users != self.assigned_users or new_groups != self.assigned_groups
        self.assigned_users, self.assigned_groups = new_users, new_groups
        return changed

    # ------------------------------------------------------------------ deriving the scope

    def user_members(self, group_id: str, transitive: bool) -> set[str]:
        """User ids that are members of the group, directly or through nested groups."""
        direct = self.members.get(group_id, {})
        users = {m for m, kind in direct.items() if kind == USER}
        if not transitive:
            return users
        seen = {group_id}
        stack = [m for m, kind in direct.items() if kind == GROUP]
        while stack:
            nested = stack.pop()
            if nested in seen:
                continue
            seen.add(nested)
            for member, kind in self.members.get(nested, {}).items():
                if kind == USER:
                    users.add(member)
                else:
                    stack.append(member)
        return users

    def in_scope(
        self, mode: str, transitive: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]]:
        """(users, groups, members) in the assignment scope: "assigned" or "all"."""
        live_groups = {g for g, obj in self.groups.items() if not obj.get(SOFT_DELETED)}
        if mode == "all":
            group_ids = live_groups
            user_ids = set(self.users)
        else:
            group_ids = self.assigned_groups & live_groups
            user_ids = set(self.assigned_users)
            for group_id in group_ids:
                user_ids |= self.user_members(group_id, transitive)
            user_ids &= set(self.users)
        members = {g: sorted(self.user_members(g, transitive) & user_ids) for g in sorted(group_ids)}
        users = [self.users[u] for u in sorted(user_ids)]
        groups = [self.groups[g] for g in sorted(group_ids)]
        return users, groups, members

    # ------------------------------------------------------------------ storage

    def to_bytes(self) -> bytes:
        payload = {
            "v": SCHEMA_VERSION,
            "users": self.users,
            "groups": self.groups,
            "members": self.members,
            "assigned_users": sorted(self.assigned_users),
            "assigned_groups": sorted(self.assigned_groups),
            "soft_deleted": self.soft_deleted,
        }
        return gzip.compress(json.dumps(payload, separators=(",", ":")).encode("utf-8"), compresslevel=5)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Mirror | None:
        """The stored mirror, or None when it is from another schema version (a full read follows)."""
        payload = json.loads(gzip.decompress(blob))
        if payload.get("v") != SCHEMA_VERSION:
            return None
        return cls(
            users=payload["users"],
            groups=payload["groups"],
            members=payload["members"],
            assigned_users=set(payload["assigned_users"]),
            assigned_groups=set(payload["assigned_groups"]),
            soft_deleted=dict(payload.get("soft_deleted") or {}),
        )


def _epoch() -> str:
    # no read time given: the grace period counts as long past
    return "1970-01-01T00:00:00+00:00"
