"""`scale`: delta cycles at 100,000 users / 10,000 groups / 500,000 memberships, and the same delta at 10,000.

Nothing is synced to get there: the Graph emulator serves the scale tenant from its own process; one full
Graph read (no AWS call) gives the mirror and the delta links, and IAM Identity Center (moto, gap-filled,
in its own server process) and the state (SQLite) are seeded directly with what a finished initial sync
would hold. Then, each in a fresh interpreter that measures its own peak RSS (ru_maxrss: the engine alone;
the emulator and moto live in other processes, so their memory is not counted):

* a delta cycle after 1% of the users changed in Entra: new jobTitles, a membership added or removed,
  a few joiners (a new user and its membership) and leavers (the user and the memberships idsync holds);
  ``delta_changes`` counts the writes those changes need, ``delta_writes`` the writes the cycle made;
* a delta cycle with no change (``noop_delta_seconds``).

The same 1% delta at 10,000 users gives ``delta_seconds_10k`` and ``delta_ratio`` (1% against 1%: ten
times the changes at 100,000). Then the 10,000-user tenant takes as many changed users as the big one's 1%
(1,000, so about as many writes, ``delta_changes_10k_same_changes``) in one more delta cycle:
``delta_seconds_10k_same_changes``, and ``delta_ratio_same_changes`` (100,000 against 10,000 users for the
same changes: what the tenant's size still costs). ``noop_delta_seconds_10k`` is the 10,000-user no-change
cycle.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import world


def lambda_memory_mb() -> int:
    """The sync function's memory as the stack sets it by default (``stack.sync_memory_mb``)."""
    from stacks.deployment import StackSettings

    return StackSettings().sync_memory_mb


SIZES = (10_000, 100_000)
CHANGED_SHARE = 0.01
SEED = 5


def _settings(graph: Mapping[str, str], state_path: Path, endpoint: str) -> Any:
    os.environ.update(world.FAKE_AWS_ENVIRONMENT)  # moto's server takes any credentials
    settings = world.settings(graph, state_path)
    identity_store = settings.identity_store.model_copy(update={"endpoint_url": endpoint})
    return settings.model_copy(update={"identity_store": identity_store})


# --------------------------------------------------------------------------- AWS in its own process


def _aws_server(conn: Any) -> None:
    """A moto server process: seeds its Identity Store from a file when asked, then serves until told."""
    os.environ.update(world.FAKE_AWS_ENVIRONMENT)
    import boto3
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    from sandbox import moto_server

    server, endpoint = moto_server.start(0)
    conn.send(endpoint)
    while True:
        command, path = conn.recv()
        if command == "stop":
            server.stop()
            return
        sso = boto3.client("sso-admin", region_name=world.REGION, endpoint_url=endpoint)
        store_id = sso.list_instances()["Instances"][0]["IdentityStoreId"]
        backend = get_backend("identitystore")[DEFAULT_ACCOUNT_ID][world.REGION]
        with open(path, "rb") as file:
            users, groups, memberships = pickle.load(file)
        ids: dict[str, str] = {}
        for source_id, user_name, doc in users:
            fields = {k: v for k, v in doc.items() if k != "Extensions"}
            # a user managing itself (the scale tenant has a few) gets its manager in the recorded doc only
            extensions = _manager_resolved(doc.get("Extensions"), ids | {source_id: None})
            ids[source_id] = backend.create_user(store_id, {"UserName": user_name, **fields}, extensions)[0]
        for source_id, display_name, description in groups:
            ids[source_id] = backend.create_group(store_id, display_name, description)[0]
        member_ids = {}
        for group_id, user_id in memberships:
            member_ids[(group_id, user_id)] = backend.create_group_membership(
                store_id, ids[group_id], {"UserId": ids[user_id]}
            )[0]
        with open(path + ".ids", "wb") as file:
            pickle.dump((ids, member_ids), file, pickle.HIGHEST_PROTOCOL)
        conn.send("seeded")


def _manager_resolved(extensions: Any, ids: Mapping[str, str | None]) -> Any:
    """The enterprise extension with its manager's Entra id swapped for the Identity Store id."""
    if not extensions:
        return None
    out = {name: dict(value) for name, value in extensions.items()}
    enterprise = out.get("aws:identitystore:enterprise") or {}
    manager = (enterprise.get("manager") or {}).get("value")
    if manager is not None and ids[str(manager)] is not None:
        enterprise["manager"] = {"value": ids[str(manager)]}
    elif manager is not None:
        enterprise.pop("manager")
    return {name: value for name, value in out.items() if value} or None


# --------------------------------------------------------------------------- seeding


def _read(graph: Mapping[str, str], state_path: Path, endpoint: str, creates: Path) -> int:
    """One full Graph read: the mirror and the delta links stored as a finished cycle stores them, and
    what IAM Identity Center would hold written to ``creates`` for the AWS process. Returns the users read."""
    from idsync.plan import _manager_first, with_manager
    from idsync.services.cycle import CYCLE_KEY, MIRROR_KEY
    from idsync.services.mirror_store import save_mirror
    from idsync.wiring import build_engine

    engine = build_engine(_settings(graph, state_path, endpoint), local=True)
    cycle = engine.cycle
    mirror, links, _, _ = cycle._read(force_full=True)
    desired = cycle.desired(mirror)
    save_mirror(engine.state, MIRROR_KEY, mirror)
    now = datetime.now(UTC).isoformat()
    engine.state.put_item(CYCLE_KEY, {"links": links, "fingerprint": cycle.fingerprint, "last_full": now})
    active = [u for u in desired.users.values() if u.active]
    live = {u.source_id for u in active}
    users = []
    for user in _manager_first(active):
        manager = user.manager_source_id if user.manager_source_id in live else None
        users.append((user.source_id, user.user_name, with_manager(user.doc, manager)))
    groups = [(g.source_id, g.display_name, g.description) for g in desired.groups.values()]
    memberships = sorted(desired.memberships)
    with creates.open("wb") as file:
        pickle.dump((users, groups, memberships), file, pickle.HIGHEST_PROTOCOL)
    return len(mirror.users)


def _record(state_path: Path, creates: Path, seeded: Path) -> dict[str, Any]:
    """Record the seeded objects as owned, as the initial sync would have. Returns the counts."""
    from idsync.adapters.sqlite_state import SqliteStateStore
    from idsync.model import OwnedGroup, OwnedMembership, OwnedUser, User, freeze_doc
    from idsync.services.cycle import UNSETTLED_KEY

    with creates.open("rb") as file:
        users, groups, memberships = pickle.load(file)
    with seeded.open("rb") as file:
        ids, member_ids = pickle.load(file)
    state = SqliteStateStore(state_path)
    conn = state._conn
    conn.execute("BEGIN")
    for source_id, user_name, doc in users:
        manager = ((doc.get("Extensions") or {}).get("aws:identitystore:enterprise") or {}).get("manager")
        manager_source = manager["value"] if manager else None
        plain = {k: v for k, v in doc.items() if k != "Extensions"}
        extensions = _manager_resolved(doc.get("Extensions"), ids)
        recorded = freeze_doc({**plain, **({"Extensions": extensions} if extensions else {})})
        fingerprint = User(source_id, user_name, plain | _without_manager(doc), manager_source).fingerprint()
        state.record_user(OwnedUser(source_id, ids[source_id], user_name, recorded, manager_source, fingerprint))
    for source_id, display_name, description in groups:
        state.record_group(OwnedGroup(source_id, ids[source_id], display_name, description))
    for (group_id, user_id), membership_id in member_ids.items():
        state.record_membership(OwnedMembership(group_id, user_id, membership_id))
    conn.execute("COMMIT")
    state.put_item(UNSETTLED_KEY, {"users": [], "groups": [], "users_count": len(users), "groups_count": len(groups)})
    state.close()
    return {"users": len(users), "groups": len(groups), "memberships": len(memberships)}


def _without_manager(doc: Mapping[str, Any]) -> dict[str, Any]:
    extensions = dict(doc.get("Extensions") or {})
    enterprise = {k: v for k, v in (extensions.get("aws:identitystore:enterprise") or {}).items() if k != "manager"}
    if enterprise:
        extensions["aws:identitystore:enterprise"] = enterprise
    else:
        extensions.pop("aws:identitystore:enterprise", None)
    return {"Extensions": extensions} if extensions else {}


# --------------------------------------------------------------------------- the measured cycles


def _cycle(graph: Mapping[str, str], state_path: Path, endpoint: str) -> dict[str, Any]:
    """One cycle in this (fresh) interpreter: seconds, mode, AWS writes, peak RSS."""
    from idsync.wiring import build_engine

    engine = build_engine(_settings(graph, state_path, endpoint), local=True)
    started = time.perf_counter()
    outcome = world.run_cycle(engine)
    seconds = time.perf_counter() - started
    _, writes = world.reads_and_writes(engine.counters.aws.calls)
    return {"seconds": seconds, "mode": outcome.mode, "writes": writes, "peak_rss_mb": world.peak_rss_mb()}


def _owned(state_path: Path) -> tuple[list[str], dict[str, int], set[str], list[str]]:
    """(users, memberships per user, managers, groups) as recorded."""
    from idsync.adapters.sqlite_state import SqliteStateStore

    state = SqliteStateStore(state_path)
    owned = state.load_ownership()
    state.close()
    per_user = Counter(user_id for _, user_id in owned.memberships)
    managers = {o.manager_source_id for o in owned.users.values() if o.manager_source_id}
    return sorted(owned.users), dict(per_user), managers, sorted(owned.groups)


def _change(emulator: world.EmulatorProcess, state_path: Path, count: int, tag: str = "") -> int:
    """Change ``count`` users in Entra; returns the writes those changes need. ``tag`` keeps a second round's
    titles and joiners apart from the first's."""
    users, per_user, managers, groups = world.in_fresh_process(_owned, state_path)
    rng = random.Random(SEED + len(tag))
    chosen = rng.sample([u for u in users if u not in managers and per_user.get(u, 0) >= 2], count)
    leavers, joiners = chosen[: max(1, len(chosen) // 20)], max(1, len(chosen) // 20)
    movers = chosen[len(leavers) : len(leavers) + len(chosen) * 2 // 5]
    retitled = chosen[len(leavers) + len(movers) :]
    writes = 0
    for n, user_id in enumerate(retitled):
        emulator.mutate("update_user", user_id=user_id, jobTitle=f"Scale Title {tag}{n}")
        writes += 1
    for n, user_id in enumerate(movers):
        group_id = groups[rng.randrange(len(groups))]
        emulator.mutate("add_member", group_id=group_id, member_id=user_id)
        writes += 1
        del n
    for user_id in leavers:
        emulator.mutate("hard_delete_user", user_id=user_id)
        writes += 1 + per_user.get(user_id, 0)  # the memberships go first, then the user
    for n in range(joiners):
        name = f"scale.joiner.{tag}{n}"
        user_id = emulator.mutate(
            "add_user",
            userPrincipalName=f"{name}@contoso.example",
            displayName=f"Scale Joiner {tag}{n}",
            givenName="Scale",
            surname=f"Joiner {tag}{n}",
            mail=f"{name}@contoso.example",
            mailNickname=name,
        )
        emulator.mutate("add_member", group_id=groups[rng.randrange(len(groups))], member_id=user_id)
        writes += 2
    return writes


def _answer(conn: Any, process: Any) -> Any:
    """The AWS process's next answer; raises RuntimeError when it died (it printed why)."""
    while not conn.poll(1.0):
        if not process.is_alive():
            raise RuntimeError(f"the moto process exited with code {process.exitcode}")
    return conn.recv()


def _measure(emulator: world.EmulatorProcess, folder: Path, size: int, then: int = 0) -> dict[str, Any]:
    """Seed ``size`` users, then a 1% delta cycle and a no-change one; with ``then``, a third delta cycle
    after ``then`` more users changed (the big tenant's 1%: the same changes at this size)."""
    emulator.admin("reset", {"kind": "scale", "users": size, "groups": size // 10, "memberships": size * 5})
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    aws = context.Process(target=_aws_server, args=(child,), daemon=True)
    aws.start()
    try:
        endpoint = _answer(parent, aws)
        print(f"  {size} users: moto serves at {endpoint}; reading Entra in full", flush=True)
        state_path, creates = folder / f"state-{size}.db", folder / f"creates-{size}.pickle"
        started = time.perf_counter()
        world.in_fresh_process(_read, emulator.graph, state_path, endpoint, creates)
        print(f"  {size} users: seeding IAM Identity Center and the state", flush=True)
        parent.send(("seed", str(creates)))
        _answer(parent, aws)
        counts = world.in_fresh_process(_record, state_path, creates, Path(f"{creates}.ids"))
        seeding = time.perf_counter() - started
        changes = _change(emulator, state_path, round(size * CHANGED_SHARE))
        print(f"  {size} users: seeded in {seeding:.0f} s; {changes} writes' worth of changes made", flush=True)
        delta = world.in_fresh_process(_cycle, emulator.graph, state_path, endpoint)
        noop = world.in_fresh_process(_cycle, emulator.graph, state_path, endpoint)
        more: dict[str, Any] = {}
        if then:
            more["changes"] = _change(emulator, state_path, then, tag="same-")
            print(f"  {size} users: {more['changes']} writes' worth of changes made again", flush=True)
            more["delta"] = world.in_fresh_process(_cycle, emulator.graph, state_path, endpoint)
        parent.send(("stop", ""))
    finally:
        aws.join(timeout=30)
        if aws.is_alive():
            aws.terminate()
    for name, cycle in (("delta", delta), ("no-change", noop), ("same-changes", more.get("delta", delta))):
        if cycle["mode"] != "delta":
            raise RuntimeError(f"the {name} cycle at {size} users ran {cycle['mode']}, not a delta cycle")
    return {**counts, "seeding": seeding, "changes": changes, "delta": delta, "noop": noop, "same": more}


def measure(sizes: tuple[int, int] = SIZES) -> dict[str, Any]:
    """The figures, at ``sizes`` (users: the small delta, then the big one)."""
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="idsync-scale-") as folder, world.EmulatorProcess(Path(folder)) as emulator:
        for size in sizes:
            # the small tenant also takes the big one's 1% (as many changed users) in a third cycle
            then = round(sizes[-1] * CHANGED_SHARE) if size == sizes[0] else 0
            figures[str(size)] = _measure(emulator, Path(folder), size, then)
    small, big = figures[str(sizes[0])], figures[str(sizes[-1])]
    same = small["same"]
    memory = lambda_memory_mb()
    target_rss = min(1536, 0.75 * memory)
    ratio = big["delta"]["seconds"] / small["delta"]["seconds"]
    same_ratio = big["delta"]["seconds"] / same["delta"]["seconds"]
    return {
        "scale": {
            "targets_met": {
                "delta_ratio <= 3": ratio <= 3,
                "delta_ratio_same_changes <= 3": same_ratio <= 3,
                "delta_writes == delta_changes": big["delta"]["writes"] == big["changes"],
                "peak_rss_mb <= target_peak_rss_mb": big["delta"]["peak_rss_mb"] <= target_rss,
            },
            "users": big["users"],
            "groups": big["groups"],
            "memberships": big["memberships"],
            "peak_rss_mb": big["delta"]["peak_rss_mb"],
            "peak_rss_measured": "the sync engine's own process (fresh interpreter); the Graph emulator and "
            "moto run in other processes",
            "lambda_memory_mb": memory,
            "target_peak_rss_mb": target_rss,
            "delta_changes": big["changes"],
            "delta_writes": big["delta"]["writes"],
            "delta_seconds": round(big["delta"]["seconds"], 3),
            "delta_seconds_10k": round(small["delta"]["seconds"], 3),
            "delta_changes_10k": small["changes"],
            "delta_writes_10k": small["delta"]["writes"],
            "delta_ratio": round(ratio, 2),
            "delta_seconds_10k_same_changes": round(same["delta"]["seconds"], 3),
            "delta_changes_10k_same_changes": same["changes"],
            "delta_writes_10k_same_changes": same["delta"]["writes"],
            "delta_ratio_same_changes": round(same_ratio, 2),
            "noop_delta_seconds_10k": round(small["noop"]["seconds"], 3),
            "noop_delta_seconds": round(big["noop"]["seconds"], 3),
            "noop_delta_peak_rss_mb": big["noop"]["peak_rss_mb"],
            "seeding_seconds": round(big["seeding"], 1),
        }
    }


def run() -> dict[str, Any]:
    return measure()
