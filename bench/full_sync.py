"""`full_sync`: the initial sync of the scale tenant (10,000 users, 1,000 groups, 50,000 memberships, every
group assigned) from the Graph emulator into moto, against the floor: the same writes from a bare boto3 loop.

The sync and the floor each run in a fresh interpreter, one after the other. ``seconds`` covers building
the engine and one full cycle. ``peak_rss_mb`` is the sync interpreter's peak RSS: the engine, its libraries
and moto's in-process Identity Store; the emulator serves from its own process and is not counted.
``floor_seconds`` is the time spent inside a bare client's calls when the writes the engine made (recorded
as it made them) are issued again, in the same order, against a fresh moto backend. ``backend_seconds`` and
``floor_backend_seconds`` are the parts of each spent inside moto's Identity Store backend storing the
writes (its own work, which stands for AWS's service time). ``users``, ``groups`` and ``memberships`` count
what the sync provisioned.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import world

TARGET_RATIO = 1.3
TARGET_PEAK_RSS_MB = 512


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
    with tempfile.TemporaryDirectory(prefix="idsync-bench-") as folder:
        writes_path = Path(folder) / "writes.pickle"
        figures = world.in_fresh_process(sync, writes_path)
        floor_seconds, floor_backend_seconds = world.in_fresh_process(floor, writes_path)
    figures["floor_seconds"] = round(floor_seconds, 2)
    figures["floor_backend_seconds"] = round(floor_backend_seconds, 2)
    figures["ratio"] = round(figures["seconds"] / floor_seconds, 3)
    figures["target_ratio"] = TARGET_RATIO
    figures["target_peak_rss_mb"] = TARGET_PEAK_RSS_MB
    return {"full_sync": figures}
