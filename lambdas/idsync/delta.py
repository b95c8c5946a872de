"""Delta planning: which users and groups a delta cycle must plan, and the views narrowed to them.

Pure: no I/O. A delta cycle plans only what its delta read touched, plus what the previous cycle left
unsettled (``Touched.users`` / ``Touched.groups`` carried in state), so a cycle costs in proportion to
its changes instead of re-mapping and re-diffing every mirrored user.

Invariant (tests/unit/test_delta_plan.py): when every object outside the touched set is settled (the
last plan's writes for it succeeded, and it is not refused), the plan of the narrowed views holds
exactly the operations of the full plan, in an order the full plan's rules accept. Whatever a
touched object's plan depends on is widened into the set, never guessed:

* a touched user's manager (up the chain), and the people whose manager is a touched user;
* the users idsync manages under a userName a touched user wants (name contests, parked names);
* every member of a touched group (Entra's, and the memberships idsync recorded); a group the delta
  names only for its member changes (its own object unchanged) is not touched: its changed members are;
* every group in scope (cheap: groups are few), so displayName contests decide as in the full plan.

Every planned user has all its memberships planned, so a deletion or recreation never leaves one out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from idsync.mirror import GROUP, SOFT_DELETED, USER, Mirror
from idsync.model import DesiredView, Ownership, Refusal, User

MapUser = Callable[[Mapping[str, Any]], "User | Refusal | None"]


@dataclass
class Touched:
    """Users whose own operations and memberships are planned; groups whose memberships all are."""

    users: set[str] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Before:
    """What a delta's scope decisions need from the mirror before the delta is folded in."""

    assigned_users: frozenset[str]
    assigned_groups: frozenset[str]
    live: Mapping[str, bool]  # changed or removed group -> live before
    members: Mapping[str, frozenset[str]]  # changed or removed group -> its user members before
    # changed or removed group -> its mirror object before (None: absent); unknown ones count as changed
    objects: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)

    @classmethod
    def of(cls, mirror: Mirror, groups: Iterable[str], transitive: bool) -> Before:
        """Capture, for the groups the delta names, their liveness, user members and objects."""
        live = {g: g in mirror.groups and not mirror.groups[g].get(SOFT_DELETED) for g in groups}
        members = {g: frozenset(mirror.user_members(g, transitive)) for g in live}
        objects = {g: dict(mirror.groups[g]) if g in mirror.groups else None for g in live}
        return cls(frozenset(mirror.assigned_users), frozenset(mirror.assigned_groups), live, members, objects)

    def unchanged(self, mirror: Mirror, group_id: str) -> bool:
        """Whether the group's own object (not its members) is as it was: a delta naming a group only for
        its members' sake; the member changes touch those members."""
        was = self.objects.get(group_id)
        return was is not None and mirror.groups.get(group_id) == was


def touched_by(
    before: Before,
    mirror: Mirror,
    users: Iterable[str],
    groups: Iterable[str],
    member_changes: Iterable[tuple[str, str, str]],
    mode: str,
    transitive: bool,
) -> Touched:
    """The objects a delta touched, ``mirror`` being the mirror with the delta folded in.

    ``users`` / ``groups``: ids the delta changed or removed; ``member_changes``: (group, member, member
    type). In the "assigned" scope, a user gains or loses the scope with the app's assignments and with
    the liveness of the assigned groups it belongs to: those users are touched too.
    """
    # a group named only for its member changes is not touched as a whole: the changed members are
    out = Touched(set(users), {g for g in groups if not before.unchanged(mirror, g)})
    parents: dict[str, list[str]] | None = None
    for group_id, member_id, member_type in member_changes:
        if member_type == USER:
            out.users.add(member_id)
            continue
        if not transitive:
            continue
        # a nested group moved: its users join or leave the parent and every group above it
        parents = parents if parents is not None else parents_of(mirror)
        out.groups.add(group_id)
        out.groups |= ancestors(parents, group_id)
        out.users |= mirror.user_members(member_id, True)
    if mode != "all":
        out.users |= set(mirror.assigned_users) ^ set(before.assigned_users)
        for group_id in set(mirror.assigned_groups) ^ set(before.assigned_groups):
            out.groups.add(group_id)
            out.users |= before.members.get(group_id, frozenset()) | mirror.user_members(group_id, transitive)
        for group_id, was_live in before.live.items():
            live = group_id in mirror.groups and not mirror.groups[group_id].get(SOFT_DELETED)
            if was_live != live or group_id not in mirror.groups:
                out.users |= before.members[group_id] | mirror.user_members(group_id, transitive)
    return out


def parents_of(mirror: Mirror) -> dict[str, list[str]]:
    """Member id (user or group) -> the groups it is a direct member of."""
    parents: defaultdict[str, list[str]] = defaultdict(list)
    for group_id, members in mirror.members.items():
        for member_id in members:
            parents[member_id].append(group_id)
    return parents


class Parents(dict[str, list[str]]):
    """``parents_of`` for the ids asked for only: ``find`` adds a batch of ids in one pass over the groups
    (a set intersection per group), so a delta cycle never inverts the whole membership."""

    def __init__(self, mirror: Mirror) -> None:
        super().__init__()
        self.mirror = mirror

    def find(self, ids: Iterable[str]) -> None:
        """Learn the groups of every id in ``ids`` not known yet."""
        wanted = {i for i in ids if i not in self}
        if not wanted:
            return
        for object_id in wanted:
            self[object_id] = []
        for group_id, members in self.mirror.members.items():
            if not wanted.isdisjoint(members):
                for member_id in wanted.intersection(members):
                    self[member_id].append(group_id)


def ancestors(parents: Mapping[str, list[str]], object_id: str) -> set[str]:
    """Every group ``object_id`` belongs to through nested groups (the object itself excluded)."""
    seen: set[str] = set()
    stack = list(parents.get(object_id, ()))
    while stack:
        group_id = stack.pop()
        if group_id in seen:
            continue
        seen.add(group_id)
        stack.extend(parents.get(group_id, ()))
    return seen


@dataclass
class DeltaViews:
    """The narrowed views a delta cycle plans with, and which users they cover."""

    users: list[Mapping[str, Any]]  # mirror objects of the planned users in the assignment scope
    groups: list[Mapping[str, Any]]  # every group in the assignment scope
    members: dict[str, list[str]]  # group -> planned users that are members of it
    owned: Ownership
    planned: frozenset[str]  # every planned user (mapped or not)
    alive: frozenset[str]  # planned users alive in Entra (not soft-deleted)


class OwnedIndex(Protocol):
    """What narrowing asks of ownership, by key: ``ports.StateStore`` answers it without loading every record;
    ``Loaded`` answers it from records already loaded."""

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        """The records of ``users``, every owned group, the memberships of ``users`` or of ``groups``."""
        ...

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        """Casefolded userName -> the owned users holding it, for ``names``."""
        ...


@dataclass(frozen=True)
class Loaded:
    """``OwnedIndex`` over ownership loaded in full."""

    owned: Ownership

    def load_ownership_of(self, users: Collection[str], groups: Collection[str]) -> Ownership:
        wanted_users, wanted_groups = set(users), set(groups)
        return Ownership(
            users={k: v for k, v in self.owned.users.items() if k in wanted_users},
            groups=self.owned.groups,
            memberships={
                k: v for k, v in self.owned.memberships.items() if k[1] in wanted_users or k[0] in wanted_groups
            },
        )

    def owned_users_named(self, names: Collection[str]) -> dict[str, list[str]]:
        wanted = {name.casefold() for name in names}
        holders: dict[str, list[str]] = {}
        for user_id, mine in self.owned.users.items():
            if mine.user_name.casefold() in wanted:
                holders.setdefault(mine.user_name.casefold(), []).append(user_id)
        return holders


def narrow(
    mirror: Mirror,
    owned: Ownership | OwnedIndex,
    touched: Touched,
    mode: str,
    transitive: bool,
    map_user: MapUser,
) -> DeltaViews:
    """The users to plan (``touched.users`` widened as the module docstring says) and the views for them.

    ``owned``: ownership, or an index that reads it by key (then only the records of the touched groups'
    members, of the userNames the planned users want, and of the planned users are read, in one request
    per widening step). ``map_user``: the mapped user for an in-scope mirror object (None when the scoping
    filters leave it out); used for the names and managers the widening follows.
    """
    index = Loaded(owned) if isinstance(owned, Ownership) else owned
    live_groups = {g for g, obj in mirror.groups.items() if not obj.get(SOFT_DELETED)}
    group_ids = live_groups if mode == "all" else set(mirror.assigned_groups) & live_groups
    parents = Parents(mirror)
    if transitive:
        parents.find(mirror.members)  # every group that has members: the nested ones' parents, for ancestors()
    assigned = set(mirror.assigned_users)

    def groups_of(user_id: str) -> set[str]:
        direct = {g for g in parents.get(user_id, ()) if mirror.members[g].get(user_id) == USER}
        if not transitive:
            return direct
        found = set(direct)
        for group_id in direct:
            found |= ancestors(parents, group_id)
        return found

    def in_scope(user_id: str) -> bool:
        obj = mirror.users.get(user_id)
        if obj is None or obj.get(SOFT_DELETED):
            return False
        return mode == "all" or user_id in assigned or bool(groups_of(user_id) & group_ids)

    reports: dict[str, list[str]] = {}
    if touched.users:
        for user_id, obj in mirror.users.items():
            manager = _reference(obj.get("manager"))
            if manager is not None:
                reports.setdefault(manager, []).append(user_id)

    work = list(touched.users)
    for user_id in touched.users:
        work += reports.get(user_id, [])
    # the touched groups' owned members, read from the groups' records: planned, and their memberships in
    # these groups kept whatever the by-user read below returns (an index may be a moment behind)
    group_records = dict(index.load_ownership_of((), touched.groups).memberships) if touched.groups else {}
    work += [user_id for _, user_id in group_records]
    for group_id in touched.groups:
        work += mirror.user_members(group_id, transitive) if group_id in mirror.members else []
    planned: set[str] = set()
    asked: set[str] = set()
    # in rounds: one request for the holders of every userName the round's users want
    while work:
        names: set[str] = set()
        round_ = [u for u in dict.fromkeys(work) if u not in planned]
        parents.find(round_)
        for user_id in round_:
            planned.add(user_id)
            mapped = map_user(mirror.users[user_id]) if in_scope(user_id) else None
            if isinstance(mapped, User):
                if mapped.manager_source_id:
                    work.append(mapped.manager_source_id)
                names.add(mapped.user_name.casefold())
        work = [u for u in work if u not in planned]
        names -= asked
        asked |= names
        for holders in index.owned_users_named(names).values() if names else ():
            work += holders
    scoped = sorted(u for u in planned if in_scope(u))
    members: dict[str, list[str]] = {}
    for user_id in scoped:
        for group_id in groups_of(user_id) & group_ids:
            members.setdefault(group_id, []).append(user_id)
    narrowed = index.load_ownership_of(planned, ())
    if touched.groups:  # in the touched groups, the groups' own reads decide (an index may be a moment behind)
        kept = {k: v for k, v in narrowed.memberships.items() if k[0] not in touched.groups}
        narrowed = replace(narrowed, memberships=kept | group_records)
    alive = frozenset(u for u in planned if u in mirror.users and not mirror.users[u].get(SOFT_DELETED))
    return DeltaViews(
        users=[mirror.users[u] for u in scoped],
        groups=[mirror.groups[g] for g in sorted(group_ids)],
        members={g: sorted(members[g]) for g in sorted(members)},
        owned=narrowed,
        planned=frozenset(planned),
        alive=alive,
    )


def with_out_of_scope(view: DesiredView, alive: Iterable[str], retained: frozenset[str]) -> DesiredView:
    """The desired view with the planned users alive in Entra but outside the scope, and the retained ids."""
    return replace(view, out_of_scope=frozenset(set(alive) - set(view.users)), retained=retained)


def unsettled(
    operations: Iterable[Any], succeeded: set[str], refusals: Iterable[Refusal], held_back: Iterable[Any]
) -> Touched:
    """What the next delta cycle must plan again: the sources of every write that did not go through
    (failed, escrowed, skipped, not reached), of deletions the guard held back, and every refused object."""
    out = Touched()
    ops = [op for op in operations if op.is_write and op.key not in succeeded]
    for op in [*ops, *held_back]:
        if op.member_source_id:
            out.users.add(op.member_source_id)
        elif op.kind.value == GROUP:
            out.groups.add(op.source_id)
        else:
            out.users.add(op.source_id)
    for refusal in refusals:
        (out.groups if refusal.kind == GROUP else out.users).add(refusal.source_id)
    return out


def _reference(value: Any) -> str | None:
    if isinstance(value, Mapping):
        ref = value.get("id")
        return ref if isinstance(ref, str) and ref else None
    return value if isinstance(value, str) and value else None
