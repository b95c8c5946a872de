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
  over ``race_steps`` steps (target 0 over at least 10,000);
- poll fallback, with the webhook down (no Graph subscription, so no notification at all) and ``groups``
  PIM groups configured (at least 150): the PIM poller runs every ``poll_interval_s`` (shortened from the
  default minute so the bench takes seconds); each activation lands in one of the groups at a random phase of
  the interval; ``poll_fallback_s`` is the worst time from the activation to the membership being present
  (target: the interval plus 2 s);
- amplification: SQS messages enqueued for one webhook request of 1,000 items naming one PIM group (target 1);
  and the webhook's load from a tenant-wide ``/groups`` subscription: the time the service takes for one
  request of 1,000 changes of groups that are not PIM groups (``noise_post_ms``, median), and the messages
  that enqueues (``noise_messages``, target 0).
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from bench.world import fake_aws
from idsync.adapters.clock import SystemClock
from idsync.adapters.secrets import StaticSecrets
from idsync.adapters.sqs_queue import SqsHintQueue
from idsync.config import parse_settings
from idsync.model import OwnedGroup
from idsync.services.cycle import CycleOptions
from idsync.services.notifications import Endpoint, NotificationService, WebhookRequest
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
POLL_INTERVAL_S = 5.0
POLL_SAMPLES = 6
PIM_GROUPS = 150
TARGET_POLL_SLACK_S = 2.0
POST_ITEMS = 1000
NOISE_POSTS = 20
TARGET_AMPLIFICATION = 1


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
        taken = SINGLES + BURST + EXPIRIES
        fallback, served = _poll_fallback(emulator, engine, settings, clock, group, users[taken : taken + POLL_SAMPLES])
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
            "poll_interval_s": POLL_INTERVAL_S,
            "poll_samples": len(fallback),
            "poll_fallback_s": round(max(fallback), 2),
            "poll_fallback_p50_s": round(statistics.median(fallback), 2),
            "target_poll_fallback_s": POLL_INTERVAL_S + TARGET_POLL_SLACK_S,
            "groups": served,
            **_amplification(),
            **race,
        }
    }


def _poll_fallback(
    emulator: GraphEmulator, engine: Any, settings: Any, clock: ShiftedClock, first: str, users: list[str]
) -> tuple[list[float], int]:
    """Seconds from an activation to its membership with no notification at all, over ``PIM_GROUPS`` groups."""
    tenant = emulator.app.tenant
    groups = [first]
    for n in range(PIM_GROUPS - 1):
        group_id = tenant.add_group(f"AWS PIM account {n:03d} role Admin")
        target = engine.target.create_group(f"AWS PIM account {n:03d} role Admin", None)
        engine.state.record_group(OwnedGroup(group_id, target, f"AWS PIM account {n:03d} role Admin"))
        groups.append(group_id)
    pim = settings.pim.model_copy(update={"groups": groups})
    wide = settings.model_copy(update={"pim": pim})
    chosen = random.Random(12)
    latencies = []
    with LocalJit(
        emulator, wide, clock=clock, state=engine.state, poll_seconds=POLL_INTERVAL_S, webhook_down=True
    ) as jit:
        for user in users:
            group = chosen.choice(groups)
            time.sleep(chosen.uniform(0, POLL_INTERVAL_S))  # a random phase of the poll interval
            jit.activate(group, user, LONG_GRANT_MINUTES)
            started = time.time()
            deadline = started + 3 * POLL_INTERVAL_S + 30
            while not jit.member(group, user):
                if time.time() > deadline:
                    raise RuntimeError(f"the poller never applied {user} in {group}")
                time.sleep(0.02)
            latencies.append(time.time() - started)
        if jit.errors:
            raise RuntimeError(f"the local flow reported errors: {jit.errors[:5]}")
    return latencies, len(groups)


def _item(group: str, tenant: str, secret: str, n: int) -> dict[str, Any]:
    return {
        "id": f"item-{n}",
        "subscriptionId": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        "subscriptionExpirationDateTime": "2030-01-20T11:23:45.9356913-08:00",
        "tenantId": tenant,
        "clientState": secret,
        "changeType": "updated",
        "resource": f"Groups/{group}",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Group", "@odata.id": f"Groups/{group}", "id": group},
    }


def _amplification() -> dict[str, Any]:
    """SQS messages for one request of 1,000 items naming one PIM group; the cost of 1,000 other groups' changes."""
    tenant, secret = "5f8c2a1e-3b4d-4c6e-9f0a-1b2c3d4e5f60", "bench-client-state"
    rng = random.Random(7)

    def guid() -> str:
        return "-".join(f"{rng.getrandbits(b * 4):0{b}x}" for b in (8, 4, 4, 4, 12))

    pim_groups = [guid() for _ in range(PIM_GROUPS)]
    with fake_aws():
        sqs = boto3.client("sqs")
        url = sqs.create_queue(QueueName="idsync-bench-amplification")["QueueUrl"]
        service = NotificationService(
            SqsHintQueue(url, client=sqs),
            StaticSecrets({"client-state": secret}),
            "client-state",
            pim_groups,
            SystemClock(),
            tenant_id=tenant,
        )

        def queued() -> int:
            counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
            return int(counts["Attributes"]["ApproximateNumberOfMessages"])

        def post(items: list[dict[str, Any]]) -> tuple[int, float]:
            """Messages the request enqueued, and the milliseconds the webhook's service took to answer it."""
            before = queued()
            body = json.dumps({"value": items}).encode()
            started = time.perf_counter()
            reply = service.receive(Endpoint.NOTIFICATIONS, WebhookRequest(body, "application/json"))
            took = (time.perf_counter() - started) * 1000
            if reply.status != 202:
                raise RuntimeError(f"the webhook answered {reply.status}: {reply.body}")
            return queued() - before, took

        messages, _ = post([_item(pim_groups[0], tenant, secret, n) for n in range(POST_ITEMS)])
        noise = [[_item(guid(), tenant, secret, n) for n in range(POST_ITEMS)] for _ in range(NOISE_POSTS)]
        timings, noise_messages = [], 0
        logging.disable(logging.INFO)
        try:
            for items in noise:
                enqueued, took = post(items)
                noise_messages += enqueued
                timings.append(took)
        finally:
            logging.disable(logging.NOTSET)
    return {
        "amplification": messages,
        "target_amplification": TARGET_AMPLIFICATION,
        "noise_items_per_post": POST_ITEMS,
        "noise_post_ms": round(statistics.median(timings), 1),
        "noise_messages": noise_messages,
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
    """Seconds from the fire that removed each membership to the expiry function returning (Entra's own removal
    held back). An expiry applies the rule to the whole group, so the first of grants ending together removes
    them all and deletes the others' schedules."""
    for user in users:
        jit.activate(group, user, 60)
        jit.wait_applied(group, user, timeout=30)
    jit.wait_idle()  # no hint left to look at the group once the grants have ended
    jit.emulator.app.pim.auto_expire = False
    fired_before = len(jit.fired)
    clock.advance(61 * 60)
    for user in users:
        jit.wait_removed(group, user, timeout=60)
    removed_by: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while len(removed_by) < len(users) and time.monotonic() < deadline:
        for fired in jit.fired[fired_before:]:
            for user in (fired.result or {}).get("removals", []):
                removed_by.setdefault(user, fired)
        time.sleep(0.02)
    missing = [user for user in users if user not in removed_by]
    if missing:
        raise RuntimeError(f"{len(missing)} membership(s) were not removed by an expiry schedule")
    # the expiry function returns once the membership is gone
    return [removed_by[user].seconds for user in users]
