"""`api_limit`: how close an initial sync comes to IAM Identity Center's collective limit of 20 calls a second.

An initial sync of 300 users / 30 groups / about 1,500 memberships (over 1,800 writes), from the Graph
emulator (in-process) through the engine wired by ``build_engine`` as production wires it, into in-process
moto with ``sandbox.aws_latency.LatencyLayer`` in front of the Identity Store client: a log-normal latency
around a 50 ms (then 100 ms) median, and ThrottlingException above 20 requests a second, in real time.
``seconds`` is the whole cycle (the Graph read included); ``aws_calls`` the Identity Store requests the
service answered; ``throttled`` the ones it refused; ``ratio_to_limit`` = seconds / (aws_calls / 20): 1.0
is the limit itself. ``sequential_ratio_to_limit`` is the same sync one write at a time (concurrency 1),
for contrast. Each measurement runs in a fresh interpreter (the process-wide rate budget starts fresh).

``build_world(latency, rate)`` and ``run_sync(world)`` are the reusable parts (a world is a context manager).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench import api_limit_jit
from bench import world as bench_world
from idsync.config import Settings, parse_settings
from idsync.services.cycle import CycleOptions
from idsync.wiring import Engine, build_engine
from sandbox.aws_latency import LatencyLayer
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, scale_tenant

LIMIT = 20.0  # calls a second: IAM Identity Center's collective limit, and the budget's rate
USERS, GROUPS, MEMBERSHIPS = 300, 30, 1_500
CONCURRENCY = 6
TARGET_RATIO = 1.15


@dataclass
class World:
    """The emulator, moto, the engine and the layer in front of its Identity Store client."""

    engine: Engine
    layer: LatencyLayer
    emulator: GraphEmulator
    settings: Settings
    stack: ExitStack = field(default_factory=ExitStack)

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()


def build_world(
    latency: float, rate: float = LIMIT, concurrency: int = CONCURRENCY, extra: dict[str, Any] | None = None
) -> World:
    """A fresh tenant, moto and engine; the layer answers after ``latency`` s (median) and throttles above
    ``rate`` a second. ``extra``: more settings sections (merged over the defaults)."""
    stack = ExitStack()
    try:
        stack.enter_context(bench_world.fake_aws())
        tenant = scale_tenant(users=USERS, groups=GROUPS, memberships=MEMBERSHIPS)
        emulator = stack.enter_context(GraphEmulator(tenant))
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="idsync-api-limit-"))
        data: dict[str, Any] = {
            "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET},
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            "identity_store": {"region": bench_world.REGION, "rate_per_second": LIMIT, "concurrency": concurrency},
            "state": {"backend": "sqlite", "path": f"{folder}/state.db"},
        }
        for key, value in (extra or {}).items():
            data[key] = {**data.get(key, {}), **value}
        settings = parse_settings(data)
        engine = build_engine(settings, local=True)
        layer = LatencyLayer(median=latency, rate=rate, burst=int(rate))
        layer.attach(bench_world.identitystore_client(engine))
        return World(engine, layer, emulator, settings, stack)
    except BaseException:
        stack.close()
        raise


def run_sync(world: World) -> dict[str, Any]:
    """One cycle (the initial sync); its seconds, Identity Store calls, throttled calls and ratio to the limit.
    Raises RuntimeError when the cycle did not complete or an object failed."""
    started = time.perf_counter()
    outcome = bench_world.run_cycle(world.engine, CycleOptions())
    seconds = time.perf_counter() - started
    assert outcome.report is not None
    if not outcome.report.complete:
        raise RuntimeError(f"the sync stopped early: {world.engine.cycle.target}")
    calls = world.layer.stats.calls
    return {
        "seconds": round(seconds, 2),
        "aws_calls": calls,
        "writes": outcome.report.writes,
        "throttled": world.layer.stats.throttled,
        "ratio_to_limit": round(seconds / (calls / LIMIT), 3),
    }


def measure(latency: float, concurrency: int) -> dict[str, Any]:
    with build_world(latency, concurrency=concurrency) as world:
        return run_sync(world)


def run() -> dict[str, Any]:
    at_50 = bench_world.in_fresh_process(measure, 0.05, CONCURRENCY)
    at_100 = bench_world.in_fresh_process(measure, 0.1, CONCURRENCY)
    sequential = bench_world.in_fresh_process(measure, 0.05, 1)
    jit = api_limit_jit.measure()  # spawns its own processes (a pool's worker may not)
    return {
        "api_limit": {
            **at_50,
            "seconds_100ms": at_100["seconds"],
            "aws_calls_100ms": at_100["aws_calls"],
            "throttled_100ms": at_100["throttled"],
            "ratio_to_limit_100ms": at_100["ratio_to_limit"],
            "sequential_seconds": sequential["seconds"],
            "sequential_ratio_to_limit": sequential["ratio_to_limit"],
            "concurrency": CONCURRENCY,
            "target_ratio_to_limit": TARGET_RATIO,
            "jit_p99_during_sync_s": jit["p99_s"],
            "jit_p50_during_sync_s": jit["p50_s"],
            "jit_samples_during_sync": jit["samples"],
            "target_jit_p99_during_sync_s": jit["target_p99_s"],
        },
        "api_limit_jit": jit,
    }
