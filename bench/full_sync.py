"""`full_sync`: the initial sync of the scale tenant (10,000 users, 1,000 groups, 50,000 memberships, every
group assigned) from the Graph emulator into moto, against the floor: the same writes from a bare boto3 loop.

The sync (A) and the floor (B) run interleaved, A B A B ..., each in a fresh interpreter with a fresh moto
backend (and the sync with a fresh emulator), so that a machine that slows down for a while slows both
alike. Each floor replays the writes its own pair's sync made. ``ratio`` is the median of the per-pair
ratios; ``pairs`` lists each pair (``seconds``, ``floor_seconds``, ``ratio``) in the order they ran. The
tenant stays at full size: the five pairs take about half an hour on two cores. Five, not three: a shared machine's
speed moves by up to 2x within seconds, and three pairs of one run have ranged from 1.13 to 1.65.

``seconds`` (median over the syncs) covers building the engine and one full cycle. ``peak_rss_mb`` is
the largest of the sync interpreters' peak RSS: the engine, its libraries and moto's in-process Identity
Store; the emulator serves from its own process and is not counted. ``floor_seconds`` (median over the
floors) is the time spent inside a bare client's calls when the writes the engine made (recorded as it
made them) are issued again, in the same order, against a fresh moto backend. ``backend_seconds`` and
``floor_backend_seconds`` (medians) are the parts of each spent inside moto's Identity Store backend
storing the writes (its own work, which stands for AWS's service time). ``users``, ``groups``,
``memberships``, ``graph_requests`` and ``aws_calls`` are the first sync's (every sync makes the same).
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import world

TARGET_RATIO = 1.3
TARGET_PEAK_RSS_MB = 512
PAIRS = 5


def sync(writes_path: Path) -> dict[str, Any]:
    """One full sync in this interpreter; its writes are recorded in ``writes_path``."""
    with world.EmulatorProcess(writes_path.parent) as emulator, world.fake_aws(), world.BackendClock() as backend:
        gc.collect()
        started = time.perf_counter()
        engine = world.new_engine(emulator.graph, writes_path.parent / "state.db")
        recorder = world.WriteRecorder(writes_path)
        recorder.attach(world.identitystore_client(engine))
        outcome = world.run_cycle(engine)
        seconds = time.perf_counter() - started
        recorder.close()
        assert outcome.report is not None
        created = {kind: actions.get("create", 0) for kind, actions in outcome.report.counts.items()}
        return {
            "users": created.get("user", 0),
            "groups": created.get("group", 0),
            "memberships": created.get("membership", 0),
            "seconds": round(seconds, 2),
            "backend_seconds": round(backend.seconds, 2),
            "peak_rss_mb": world.peak_rss_mb(),
            "graph_requests": world.graph_requests(engine.counters.graph.calls),
            "aws_calls": dict(sorted(engine.counters.aws.calls.items())),
        }


def floor(writes_path: Path) -> tuple[float, float]:
    """(seconds inside the calls, seconds inside moto's backend) of the recorded writes from a bare client."""
    with world.fake_aws(), world.BackendClock() as backend:
        seconds = world.replay(writes_path)
    return seconds, backend.seconds


def run() -> dict[str, Any]:
    syncs: list[dict[str, Any]] = []
    floors: list[tuple[float, float]] = []
    for pair in range(PAIRS):
        with tempfile.TemporaryDirectory(prefix="idsync-bench-") as folder:
            writes_path = Path(folder) / "writes.pickle"
            syncs.append(world.in_fresh_process(sync, writes_path))
            floors.append(world.in_fresh_process(floor, writes_path))
        print(f"  pair {pair + 1}: sync {syncs[-1]['seconds']} s, floor {floors[-1][0]:.2f} s", flush=True)
    pairs = [
        {"seconds": a["seconds"], "floor_seconds": round(b[0], 2), "ratio": round(a["seconds"] / b[0], 3)}
        for a, b in zip(syncs, floors, strict=True)
    ]
    figures = dict(syncs[0])
    figures["seconds"] = round(statistics.median(a["seconds"] for a in syncs), 2)
    figures["backend_seconds"] = round(statistics.median(a["backend_seconds"] for a in syncs), 2)
    figures["peak_rss_mb"] = max(a["peak_rss_mb"] for a in syncs)
    figures["floor_seconds"] = round(statistics.median(b[0] for b in floors), 2)
    figures["floor_backend_seconds"] = round(statistics.median(b[1] for b in floors), 2)
    figures["ratio"] = round(statistics.median(p["ratio"] for p in pairs), 3)
    figures["pairs"] = pairs
    figures["target_ratio"] = TARGET_RATIO
    figures["target_peak_rss_mb"] = TARGET_PEAK_RSS_MB
    return {"full_sync": figures}
