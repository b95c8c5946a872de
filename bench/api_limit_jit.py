"""`api_limit_jit`: how long a PIM activation waits while a big sync saturates IAM Identity Center's limit.

A sync of at least 1,800 writes (300 users, 30 groups, 1,500 memberships) runs from the Graph emulator into
in-process moto through ``sandbox.aws_latency.LatencyLayer`` (50 ms median latency, ThrottlingException above
20 requests a second for the sync's and the JIT's clients together, as AWS meters the account). Meanwhile one
PIM activation a second goes through the JIT path as the worker runs it (``JitService.look`` for the group the
notification names, looking again when the look asks to, e.g. while the cycle's PIM pass holds the group).
Both are wired by ``idsync.wiring`` as deployed: state in one moto DynamoDB table, and every Identity Store
call drawing from the rate budget shared through that table (the sync as a bulk writer, the JIT as a JIT
writer with the reserve). The activation token bucket is opened wide so that only the shared budget is
measured. Real time: the sync takes about as long as its calls allow at 20 a second.

Figures: ``p99_s`` / ``p50_s`` / ``samples``: seconds from the activation (the notification) to the
membership being present, over the activations made while the sync ran (target p99 < 2 s); ``idle_p50_s`` the
same with no sync running (what the path costs here on its own); ``jit_budget_wait_s`` the seconds the JIT
calls spent waiting for the shared budget during the sync, over ``jit_calls`` calls;
``sync_seconds``, ``sync_writes``, ``aws_calls`` (requests that reached the emulator), ``throttled`` answers,
``ratio_to_limit`` = sync_seconds / (aws_calls / 20); ``budget_writes``: the bucket item's writes (its
version), against ``aws_calls`` (batches make it a fraction).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
from moto.dynamodb.models import DynamoDBBackend

from bench.world import fake_aws
from idsync.adapters.dynamodb_state import TABLE_SCHEMA, table_definition
from idsync.adapters.identitystore import from_settings
from idsync.adapters.sso_admin import attach_budget
from idsync.config import Settings, parse_settings
from idsync.services.cycle import CycleOptions
from idsync.services.jit import JitService
from idsync.services.shared_budget import SharedRateBudget
from idsync.wiring import build_engine, build_jit_service, build_rate_budget
from sandbox.aws_latency import LatencyLayer
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import (
    CLIENT_ID,
    CLIENT_SECRET,
    SERVICE_PRINCIPAL_APP_ID,
    SERVICE_PRINCIPAL_ID,
    SERVICE_PRINCIPAL_NAME,
    Tenant,
    scale_tenant,
)

USERS, GROUPS, MEMBERSHIPS = 300, 30, 1500
PIM_USERS = 240  # more than the sync's seconds: one activation a second while it runs
MEDIAN_S, LIMIT = 0.05, 20.0
TABLE = "idsync-bench-api-limit-jit"
SCHEDULE_GROUP = "idsync-bench-expiry"
GRANT_MINUTES = 600
TARGET_P99_S = 2.0
LOOK_TIMEOUT_S = 30.0
IDLE_SAMPLES = 10  # activations before the sync starts: the same path without the sync's load


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@contextlib.contextmanager
def atomic_dynamodb() -> Iterator[None]:
    """DynamoDB applies each conditional write atomically; moto's in-process backend does not lock. One lock
    around its item operations gives the two writers DynamoDB's guarantee on the shared budget's item."""
    lock = threading.RLock()
    saved = {name: getattr(DynamoDBBackend, name) for name in ("get_item", "update_item", "put_item")}

    def locked(original: Any) -> Any:
        def call(self: DynamoDBBackend, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return original(self, *args, **kwargs)

        return call

    for name, original in saved.items():
        setattr(DynamoDBBackend, name, locked(original))
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(DynamoDBBackend, name, original)


def pim_tenant() -> tuple[Tenant, str, list[str]]:
    """The PIM world alone: a PIM group (assigned, no members) and the users who will activate (assigned)."""
    tenant = Tenant(seed=5)
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    tenant.add_service_principal(SERVICE_PRINCIPAL_ID, SERVICE_PRINCIPAL_APP_ID, SERVICE_PRINCIPAL_NAME)
    group = tenant.add_group("AWS PIM Production Admin", "Just-in-time production access", mailNickname="pimprod")
    tenant.assign(group)
    users = []
    for n in range(PIM_USERS):
        nickname = f"oncall.{n}"
        user = tenant.add_user(
            userPrincipalName=f"{nickname}@{tenant.domain}",
            mail=f"{nickname}@{tenant.domain}",
            mailNickname=nickname,
            displayName=f"On Call {n}",
            givenName="On",
            surname=f"Call {n}",
        )
        tenant.assign(user)
        users.append(user)
    tenant.changes.clear()
    return tenant, group, users


def add_scale(tenant: Tenant) -> None:
    """Copy the scale tenant's users, groups, memberships and assignments into the live tenant."""
    scale = scale_tenant(USERS, GROUPS, MEMBERSHIPS)
    for user in scale.users.values():
        tenant.add_user(**dict(user))
    for user_id, manager_id in scale.managers.items():
        tenant.set_manager(user_id, manager_id)
    for group in scale.groups.values():
        properties = dict(group)
        tenant.add_group(properties.pop("displayName"), properties.pop("description", None), **properties)
    for group_id, members in scale.members.items():
        for member_id in members:
            tenant.add_member(group_id, member_id)
    for principal_id in scale.assignments[SERVICE_PRINCIPAL_ID]:
        tenant.assign(principal_id)


def bench_settings(emulator: GraphEmulator, group: str) -> Settings:
    return parse_settings(
        {
            "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET},
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            "identity_store": {"region": "us-east-1", "rate_per_second": LIMIT},
            "state": {"backend": "dynamodb", "table_name": TABLE, "region": "us-east-1"},
            "pim": {
                "groups": [group],
                # wide open: the activation bucket must not be what is measured
                "bucket_capacity": 1000,
                "bucket_refill": 1000,
                "bucket_period_seconds": 1,
                "scheduler_group": SCHEDULE_GROUP,
                "scheduler_role_arn": "arn:aws:iam::123456789012:role/idsync-scheduler",
                "expiry_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:idsync-jit-expiry",
            },
        }
    )


def present(jit: JitService, group: str, user: str) -> bool:
    return jit.grants.owned_memberships(group).get(user) is not None


def activate_and_wait(emulator: GraphEmulator, jit: JitService, group: str, user: str) -> float:
    """One activation through the JIT path; seconds from the activation to the membership being present."""
    started = time.monotonic()
    emulator.app.pim.activate(group, user, GRANT_MINUTES)
    while True:
        outcome = jit.look(group)
        if present(jit, group, user):
            return time.monotonic() - started
        if time.monotonic() - started > LOOK_TIMEOUT_S:
            raise RuntimeError(f"activation of {user} in {group} not applied in {LOOK_TIMEOUT_S} s: {outcome}")
        time.sleep(min(outcome.wait_seconds or 0.05, 1.0))  # the worker's requeue, shortened


def run() -> dict[str, Any]:
    return {"api_limit_jit": measure()}


def measure() -> dict[str, Any]:
    """The figures (see the module docstring), measured in this process."""
    tenant, group, pim_users = pim_tenant()
    with fake_aws(), atomic_dynamodb(), GraphEmulator(tenant) as emulator:
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(**table_definition(TABLE))
        dynamodb.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]}
        )
        boto3.client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
        settings = bench_settings(emulator, group)
        first = build_engine(settings)
        provisioned = first.cycle.run(CycleOptions())  # the PIM group and its users, before the clock starts
        if provisioned.report is None or not provisioned.report.complete:
            raise RuntimeError(f"the PIM world was not provisioned: {provisioned}")
        add_scale(tenant)

        layer = LatencyLayer(median=MEDIAN_S, sigma=0.4, rate=LIMIT, burst=int(LIMIT))
        engine = build_engine(settings)
        # the JIT worker's client and budget exactly as build_jit_service wires them, kept to read its waits
        target = from_settings(settings.identity_store, bounded=True)
        budget = build_rate_budget(settings, "jit")
        attach_budget(target.client, budget)
        jit = build_jit_service(settings, target=target)
        layer.attach(engine.target.client)  # type: ignore[attr-defined]
        layer.attach(target.client)
        users = iter(pim_users)
        idle = [activate_and_wait(emulator, jit, group, next(users)) for _ in range(IDLE_SAMPLES)]
        assert isinstance(budget, SharedRateBudget)
        idle_waited, idle_calls = budget.stats.waited, budget.stats.calls
        calls_before = layer.stats.calls

        result: dict[str, Any] = {}

        def sync() -> None:
            started = time.monotonic()
            outcome = engine.cycle.run(CycleOptions(force_full=True))
            result["seconds"] = time.monotonic() - started
            result["outcome"] = outcome

        thread = threading.Thread(target=sync, name="bench-sync")
        thread.start()
        latencies: list[float] = []
        next_at = time.monotonic() + 1.0
        while thread.is_alive():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0
            if not thread.is_alive():
                break
            latencies.append(activate_and_wait(emulator, jit, group, next(users)))
        thread.join()
        report = result["outcome"].report
        if report is None or not report.complete:
            raise RuntimeError(f"the sync did not complete: {result['outcome']}")
        calls = layer.stats.calls - calls_before
        bucket = dynamodb.get_item(
            TableName=TABLE, Key={"pk": {"S": "BUCKET#identity-center"}, "sk": {"S": "BUCKET"}}, ConsistentRead=True
        )["Item"]
    seconds = result["seconds"]
    return {
        "samples": len(latencies),
        "p99_s": round(percentile(latencies, 0.99), 3),
        "p50_s": round(statistics.median(latencies), 3),
        "max_s": round(max(latencies), 3),
        "idle_samples": len(idle),
        "idle_p50_s": round(statistics.median(idle), 3),
        "idle_max_s": round(max(idle), 3),
        "jit_calls": budget.stats.calls - idle_calls,
        "jit_budget_wait_s": round(budget.stats.waited - idle_waited, 3),
        "target_p99_s": TARGET_P99_S,
        "sync_seconds": round(seconds, 1),
        "sync_writes": report.writes,
        "aws_calls": calls,
        "throttled": layer.stats.throttled,
        "ratio_to_limit": round(seconds / (calls / LIMIT), 3),
        "budget_writes": int(bucket["version"]["N"]),
        "median_latency_s": MEDIAN_S,
        "limit_per_s": LIMIT,
    }
