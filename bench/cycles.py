"""`noop_cycle`, `incremental_cycle` and `resume`: cycles after the initial sync of the scale tenant.

Runs in a fresh interpreter. After one uninterrupted full sync (its seconds and writes are the yardstick):

* ``noop_cycle``: a delta cycle with no change in Entra.
* ``incremental_cycle``: 1% of the provisioned users get a new jobTitle and 1% of the provisioned
  memberships change (half removed, half added), all made in the emulator's tenant; then one cycle. Every
  change is chosen to cost exactly one write: changed users stay in scope, and a removed membership's user
  keeps another one.
* ``resume``: the same initial sync on a fresh tenant, Identity Store and state, through invocations that
  each stop once 10 seconds have passed since they started (as the Lambda's time budget makes them).

AWS calls are told apart by operation name: List*, Get*, Describe* and IsMember* read, the rest write.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import world
from idsync.services.cycle import CycleOptions
from idsync.wiring import Engine

CHANGED_SHARE = 0.01
BUDGET_SECONDS = 10.0
MAX_INVOCATIONS = 500  # far more than a working resume needs: a cycle that never finishes stops the benchmark
SEED = 3


def measure() -> dict[str, Any]:
    """The three benchmarks' figures (run in a fresh interpreter by ``run``)."""
    with tempfile.TemporaryDirectory(prefix="idsync-bench-") as folder, world.EmulatorProcess(Path(folder)) as emulator:
        with world.fake_aws():
            started = time.perf_counter()
            engine = world.new_engine(emulator.graph, Path(folder) / "state.db")
            world.run_cycle(engine)
            full_seconds = time.perf_counter() - started
            _, full_writes = world.reads_and_writes(engine.counters.aws.calls)
            noop = noop_cycle(engine)
            incremental = incremental_cycle(engine, emulator, full_seconds / full_writes)
            del engine
        emulator.reset()
        with world.fake_aws():
            resumed = resume(emulator.graph, Path(folder) / "resume.db", full_writes)
    return {"noop_cycle": noop, "incremental_cycle": incremental, "resume": resumed}


def _delta_cycle(engine: Engine) -> tuple[float, int, int, int]:
    """(seconds, Graph requests, AWS reads, AWS writes) of one cycle, which must be a delta cycle."""
    engine.counters.aws.calls.clear()
    engine.counters.graph.calls.clear()
    started = time.perf_counter()
    outcome = world.run_cycle(engine)
    seconds = time.perf_counter() - started
    if outcome.mode != "delta":
        raise RuntimeError(f"expected a delta cycle after the initial sync, the engine ran a {outcome.mode} cycle")
    reads, writes = world.reads_and_writes(engine.counters.aws.calls)
    return seconds, world.graph_requests(engine.counters.graph.calls), reads, writes


def noop_cycle(engine: Engine) -> dict[str, Any]:
    seconds, graph_requests, reads, writes = _delta_cycle(engine)
    return {
        "graph_requests": graph_requests,
        "target_graph_requests": 3,
        "aws_writes": writes,
        "aws_reads": reads,
        "seconds": round(seconds, 3),
    }


def incremental_cycle(
    engine: Engine, emulator: world.EmulatorProcess, full_seconds_per_object: float
) -> dict[str, Any]:
    owned = engine.state.load_ownership()
    rng = random.Random(SEED)
    users = sorted(owned.users)
    changed_users = rng.sample(users, round(len(users) * CHANGED_SHARE))
    memberships = sorted(owned.memberships)
    wanted = round(len(memberships) * CHANGED_SHARE)
    per_user = Counter(user_id for _, user_id in memberships)
    removable = [(group_id, user_id) for group_id, user_id in memberships if per_user[user_id] >= 2]
    rng.shuffle(removable)
    removed: dict[str, str] = {}  # user -> group: one removal per user, so each keeps a membership
    for group_id, user_id in removable:
        if len(removed) == wanted // 2:
            break
        removed.setdefault(user_id, group_id)
    groups = sorted(owned.groups)
    added: set[tuple[str, str]] = set()
    while len(added) < wanted - len(removed):
        pair = (rng.choice(groups), rng.choice(users))
        if pair not in owned.memberships:
            added.add(pair)
    for n, user_id in enumerate(changed_users):
        emulator.mutate("update_user", user_id=user_id, jobTitle=f"Benchmark Title {n}")
    for user_id, group_id in removed.items():
        emulator.mutate("remove_member", group_id=group_id, member_id=user_id)
    for group_id, user_id in sorted(added):
        emulator.mutate("add_member", group_id=group_id, member_id=user_id)
    changes = len(changed_users) + len(removed) + len(added)
    seconds, _, _, writes = _delta_cycle(engine)
    return {
        "changes": changes,
        "aws_writes": writes,
        "seconds": round(seconds, 3),
        "seconds_per_change": round(seconds / changes, 5),
        "full_sync_seconds_per_object": round(full_seconds_per_object, 5),
    }


def _budget(seconds: float) -> Callable[[], bool]:
    started = time.monotonic()
    return lambda: time.monotonic() - started >= seconds


def resume(graph: dict[str, str], state_path: Path, uninterrupted_writes: int) -> dict[str, Any]:
    engine = world.new_engine(graph, state_path)
    invocations, complete = 0, False
    while not complete:
        if invocations == MAX_INVOCATIONS:
            raise RuntimeError(f"the initial sync did not finish in {invocations} invocations of {BUDGET_SECONDS} s")
        invocations += 1
        outcome = world.run_cycle(engine, CycleOptions(should_stop=_budget(BUDGET_SECONDS)))
        assert outcome.report is not None
        complete = outcome.report.complete
    _, writes = world.reads_and_writes(engine.counters.aws.calls)
    return {"invocations": invocations, "aws_writes": writes, "uninterrupted_aws_writes": uninterrupted_writes}


def run() -> dict[str, Any]:
    return world.in_fresh_process(measure)
