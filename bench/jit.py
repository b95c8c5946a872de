"""`jit`: the PIM for Groups flow on this machine, end to end (sandbox.jit_local): Graph emulator notification ->
webhook over HTTP -> SQS (moto) -> worker -> Identity Store (moto), with the default token bucket.

- single activations, spaced so the bucket never holds them back: latency from the notification to the
  membership being present (p50, p99);
- a burst of 50 activations at once: when the last one lands, against the bucket's theoretical minimum
  ((50 - capacity) / (refill / period) = 90 s); this takes real time;
- expiry: the grant clock is moved past the end and each one-time schedule fires; seconds from the fire
  to the membership being gone, i.e. until the expiry function returns (the worst of the samples);
- races: the stateful property test's model (tests/pim_machine.py: worker, expiry and sync cycle interleaved
  with Graph's lag, lost and replayed notifications, early and duplicate fires, refused writes, lost lease
  races) run over random interleavings at scale; ``race_violations`` counts breaches of its two invariants
  over ``race_steps`` steps (target 0 over at least 10,000).
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.world import fake_aws
from idsync.config import parse_settings
from idsync.services.cycle import CycleOptions
from idsync.services.token_bucket import BucketPolicy
from idsync.wiring import build_engine
from sandbox.graph_emulator import GraphEmulator
from sandbox.jit_local import LocalJit
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, sample_tenant

PIM_GROUP = "AWS PIM Production Admin"
SINGLES = 20
BURST = 50
EXPIRIES = 5
LONG_GRANT_MINUTES = 600  # singles and burst: their expiries stay out of the expiry samples
TARGET_SINGLE_P99_S = 2.0
TARGET_BURST_RATIO = 1.1
TARGET_EXPIRY_S = 2.0
RACE_EXAMPLES = 400
RACE_STEPS_PER_EXAMPLE = 50
TARGET_RACE_STEPS = 10_000


class ShiftedClock:
    """The wall clock plus an offset the benchmark moves forward (to reach grant ends without waiting)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def run() -> dict[str, Any]:
    tenant = sample_tenant()
    group = next(g for g, obj in tenant.groups.items() if obj["displayName"] == PIM_GROUP)
    users = [
        u
        for u, obj in tenant.users.items()
        if obj.get("accountEnabled", True) and u not in tenant.expected_refusals and u not in tenant.members[group]
    ]
    policy = BucketPolicy()
    clock = ShiftedClock()
    with fake_aws(), GraphEmulator(tenant) as emulator, tempfile.TemporaryDirectory() as folder:
        settings = parse_settings(
            {
                "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET},
                "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
                "identity_store": {"region": "us-east-1"},
                "state": {"backend": "sqlite", "path": f"{folder}/state.db"},
                "pim": {"groups": [group]},
            }
        )
        engine = build_engine(settings, clock=clock)
        engine.cycle.run(CycleOptions())  # provisions the PIM group
        with LocalJit(emulator, settings, clock=clock, state=engine.state) as jit:
            singles = _singles(jit, group, users[:SINGLES], policy)
            time.sleep(policy.period_seconds)  # the bucket refills to capacity
            burst_last = _burst(jit, group, users[SINGLES : SINGLES + BURST])
            expiries = _expiries(jit, clock, group, users[SINGLES + BURST : SINGLES + BURST + EXPIRIES])
            if jit.errors:
                raise RuntimeError(f"the local flow reported errors: {jit.errors[:5]}")
    theoretical = (BURST - policy.capacity) / (policy.refill / policy.period_seconds)
    race = races()
    return {
        "jit": {
            "single_samples": len(singles),
            "single_p50_s": round(statistics.median(singles), 3),
            "single_p99_s": round(percentile(singles, 0.99), 3),
            "burst_size": BURST,
            "burst_last_s": round(burst_last, 2),
            "burst_theoretical_s": theoretical,
            "burst_ratio": round(burst_last / theoretical, 3),
            "expiry_samples": len(expiries),
            "expiry_s": round(max(expiries), 3),
            "target_single_p99_s": TARGET_SINGLE_P99_S,
            "target_burst_ratio": TARGET_BURST_RATIO,
            "target_expiry_s": TARGET_EXPIRY_S,
            **race,
        }
    }


def races(examples: int = RACE_EXAMPLES) -> dict[str, Any]:
    """Invariant violations of the PIM model over random interleavings (none expected), and how many steps ran."""
    from hypothesis import HealthCheck, settings
    from hypothesis.stateful import run_state_machine_as_test

    from tests.pim_machine import PimMachine

    class Counting(PimMachine):
        strict = False

    PimMachine.violations.clear()
    PimMachine.steps = PimMachine.checks = 0
    started = time.perf_counter()
    logging.disable(logging.INFO)  # a million log lines would measure the logging, not the races
    try:
        run_state_machine_as_test(
            Counting,
            settings=settings(
                max_examples=examples,
                stateful_step_count=RACE_STEPS_PER_EXAMPLE,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            ),
        )
    finally:
        logging.disable(logging.NOTSET)
    return {
        "race_examples": examples,
        "race_steps": PimMachine.steps,
        "race_checks": PimMachine.checks,
        "race_violations": len(PimMachine.violations),
        "race_seconds": round(time.perf_counter() - started, 1),
        "target_race_violations": 0,
        "target_race_steps": TARGET_RACE_STEPS,
    }


def _singles(jit: LocalJit, group: str, users: list[str], policy: BucketPolicy) -> list[float]:
    """One activation at a time, one token's refill apart, so none waits for the bucket."""
    spacing = policy.period_seconds / policy.refill
    latencies = []
    for user in users:
        started = time.monotonic()
        jit.activate(group, user, LONG_GRANT_MINUTES)
        latencies.append(jit.wait_applied(group, user).latency)
        time.sleep(max(0.0, spacing - (time.monotonic() - started)))
    return latencies


def _burst(jit: LocalJit, group: str, users: list[str]) -> float:
    """Seconds from the first activation of the burst until the last membership is present."""
    started = time.time()
    for user in users:
        jit.activate(group, user, LONG_GRANT_MINUTES)
    timeout = 3 * len(users) * 2.0 + 60
    return max(jit.wait_applied(group, user, timeout=timeout).present_at for user in users) - started


def _expiries(jit: LocalJit, clock: ShiftedClock, group: str, users: list[str]) -> list[float]:
    """Seconds from each schedule's fire to the membership being gone (Entra's own removal held back)."""
    for user in users:
        jit.activate(group, user, 60)
        jit.wait_applied(group, user, timeout=30)
    jit.wait_idle()  # no hint left to look at the group once the grants have ended
    jit.emulator.app.pim.auto_expire = False
    fired_before = len(jit.fired)
    clock.advance(61 * 60)
    for user in users:
        jit.wait_removed(group, user, timeout=60)
    fired = {f.event["user_id"]: f for f in jit.wait_fired(fired_before + len(users))[fired_before:]}
    missing = [user for user in users if user not in fired or (fired[user].result or {}).get("removals") != [user]]
    if missing:
        raise RuntimeError(f"{len(missing)} membership(s) were not removed by their expiry schedule")
    # the expiry function returns once the membership is gone
    return [fired[user].seconds for user in users]
