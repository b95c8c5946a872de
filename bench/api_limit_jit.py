"""`api_limit_jit`: how long a PIM activation waits while a big sync saturates IAM Identity Center's limit.

Three processes, as deployed: the sync (the sync Lambda) in one, the JIT path (the JIT worker Lambda) in this
one, and one AWS emulator (moto_server with the gap-fill, DynamoDB's item writes made atomic) in a third, which
both reach over HTTP; the Graph emulator runs here and both read it over HTTPS. A sync of at least 1,800
writes (300 users, 30 groups, 1,500 memberships) runs from the Graph emulator into the AWS emulator, its
Identity Store client behind its own ``sandbox.aws_latency.LatencyLayer`` (50 ms median latency,
ThrottlingException above 20 requests a second); the JIT's client has its own layer at 20 a second too: the
rate budget shared through the one DynamoDB table (the sync as a bulk writer, the JIT as a JIT writer with the
reserve) is what keeps their sum under the limit. Meanwhile one PIM activation a second goes through the JIT
path as the worker runs it (``JitService.look`` for the group the notification names, looking again when the
look asks to, e.g. while the cycle's PIM pass holds the group's lease). The activation token bucket is opened
wide so that only the shared budget is measured. Real time: the sync takes about as long as its calls allow at
20 a second.

Figures: ``p99_s`` / ``p50_s`` / ``max_s`` / ``samples``: seconds from the activation (the notification) to the
membership being present, over the activations made while the sync ran (target p99 < 2 s); ``idle_p50_s`` the
same with no sync running (what the path costs here on its own); ``jit_budget_wait_s`` the seconds the JIT
calls spent waiting for the shared budget during the sync, over ``jit_calls`` calls;
``sync_seconds``, ``sync_writes``, ``aws_calls`` (Identity Center requests the sync's and the JIT's layers let
through to the emulator), ``throttled`` answers (both layers), ``ratio_to_limit`` = sync_seconds /
(aws_calls / 20); ``budget_writes``: the bucket item's writes (its version), against ``aws_calls`` (batches
make it a fraction). ``emulator_max_calls_per_s``: the most Identity Center requests the emulator answered in
any 1 s window while the sync ran (the sum of both processes: at most 20 plus a burst), ``emulator_calls``
the requests it answered in that time. ``breakdown``: where the activations' seconds went, summed over the
samples (``*_sum_s``) and for the slowest one (``slowest``): ``lease_wait`` sleeping because the look found
the group's lease held (the cycle's PIM pass holds every PIM group's lease while it reconciles),
``requeue_wait`` sleeping after other looks (the membership not applied yet), ``identitystore`` /
``dynamodb`` / ``scheduler`` the AWS calls' seconds (latency layer and budget waits included), ``graph_and_cpu``
the rest of the looks (Graph reads and Python), ``busy_looks`` the looks that found the lease held,
``aws_calls`` by service, ``dynamodb_calls_per_activation`` the median of the DynamoDB calls an activation's
looks made (the bench's own check of the membership not counted), ``calls_of_one_activation`` the AWS calls of
one activation applied in one look, in order (a shared budget call, made inside an Identity Store call, comes
before it; the three reads a look sends at once in any order), ``seconds_by_operation`` the AWS calls' seconds
summed by operation (calls sent at once each count their own: the sum may exceed the wall time),
``over_target`` the activations of at least 2 s; ``idle_breakdown`` the same for the idle activations.

Where the time goes (2-core machine shared with other work): an activation applied in one look makes 11 DynamoDB
calls one after the other (``calls_of_one_activation``: the lease, the three reads sent at once, the token, the
grant with its lease check, the lease's renewal before the Identity Store call, the shared budget's read and write,
the membership record, the logs with the release: see ``idsync.services.jit``), one Identity Store and one
Scheduler call; before, 17 (renewals before and after each write, a GetItem per read, the token's read, the bucket
line's read after the look). The saved run (a quiet machine): 124 activations during the sync, p50 0.59 s,
p99 1.14 s, max 1.14 s, idle p50 0.26 s, no look met a held lease. Earlier runs: p99 1.58 s beside the full test
suite, and 2.08-2.55 s on a more loaded machine while moto still tested every item of the partition for the
owned memberships' sort-key prefix (59 ms idle at 1,500 items, 0.3 s under the sync's load). Before: p50 1.07 s,
p99 2.29 s, idle p50 0.55 s. The emulator reads only the asked partition, and of it only a sort-key
condition's run (``sandbox.moto_dynamodb``: moto sorted the whole table for each Query), and its transactions cost
the items they touch (``sandbox.moto_transactions``: moto copied the whole table for each one); answers are moto's
own. The calls sent at once each count their own seconds, so
``graph_and_cpu`` (the look's seconds not spent in AWS calls) reads 0 here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.session
from moto.core.responses import BaseResponse
from moto.dynamodb.models import DynamoDBBackend
from moto.identitystore.responses import IdentityStoreResponse
from moto.ssoadmin.responses import SSOAdminResponse

from bench.world import FAKE_AWS_ENVIRONMENT
from idsync.adapters.dynamodb_state import TABLE_SCHEMA, table_definition
from idsync.adapters.identitystore import from_settings
from idsync.adapters.sso_admin import attach_budget
from idsync.config import Settings, parse_settings
from idsync.services.cycle import CycleOptions
from idsync.services.jit import JitService
from idsync.services.shared_budget import SharedRateBudget
from idsync.wiring import build_engine, build_jit_service, build_rate_budget
from sandbox import moto_server
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
    """DynamoDB applies each conditional write and each transaction atomically; moto's in-process backend does
    not lock. One lock around its item operations gives the writers DynamoDB's guarantee on the shared budget's
    item and on a lease (a fenced write's check and write against another writer's take-over)."""
    lock = threading.RLock()
    operations = ("get_item", "update_item", "put_item", "delete_item", "transact_write_items")
    saved = {name: getattr(DynamoDBBackend, name) for name in operations}

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


def bench_settings(graph: dict[str, str], group: str) -> Settings:
    """The settings both processes run with; ``graph`` is the Graph emulator's ``graph_config()``."""
    return parse_settings(
        {
            "graph": {**graph, "client_secret": CLIENT_SECRET},
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


def latency_layer() -> LatencyLayer:
    return LatencyLayer(median=MEDIAN_S, sigma=0.4, rate=LIMIT, burst=int(LIMIT))


def max_per_window(stamps: list[float], window: float = 1.0) -> int:
    """The most timestamps in any half-open interval of ``window`` seconds."""
    ordered = sorted(stamps)
    best, low = 0, 0
    for high, stamp in enumerate(ordered):
        while ordered[low] <= stamp - window:
            low += 1
        best = max(best, high - low + 1)
    return best


def serve_aws(endpoints: Any, stop: Any, answered: Any) -> None:
    """The AWS emulator's process: moto_server (gap-fill installed, DynamoDB's item writes atomic) until
    ``stop``; puts its endpoint on ``endpoints``, then the wall-clock times of the Identity Center requests it
    answered on ``answered``."""
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    stamps: list[float] = []
    original = BaseResponse.call_action

    def call_action(self: BaseResponse) -> Any:
        if isinstance(self, IdentityStoreResponse | SSOAdminResponse):
            stamps.append(time.time())
        return original(self)

    BaseResponse.call_action = call_action  # type: ignore[method-assign]
    with atomic_dynamodb():
        server, endpoint = moto_server.start(0)
        endpoints.put(endpoint)
        stop.wait()
        server.stop()
    answered.put(stamps)


def sync_process(endpoint: str, graph: dict[str, str], group: str, ready: Any, go: Any, results: Any) -> None:
    """The sync Lambda's process: a forced full cycle through its own latency layer, once ``go`` is set."""
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    engine = build_engine(bench_settings(graph, group))
    layer = latency_layer()
    layer.attach(engine.target.client)  # type: ignore[attr-defined]
    ready.set()
    go.wait()
    started = time.monotonic()
    outcome = engine.cycle.run(CycleOptions(force_full=True))
    report = outcome.report
    results.put(
        {
            "seconds": time.monotonic() - started,
            "complete": report is not None and report.complete,
            "writes": report.writes if report is not None else 0,
            "outcome": repr(outcome)[:500],
            "calls": layer.stats.calls,
            "throttled": layer.stats.throttled,
        }
    )


@dataclass
class Activation:
    """Where one activation's seconds went (see the module docstring's ``breakdown``)."""

    total: float = 0.0
    looks: int = 0
    busy_looks: int = 0
    lease_wait: float = 0.0
    requeue_wait: float = 0.0
    look: float = 0.0
    aws: dict[str, float] = field(default_factory=dict)
    aws_calls: dict[str, int] = field(default_factory=dict)
    operations: list[str] = field(default_factory=list)  # every AWS call of the looks, in order
    operation_seconds: dict[str, float] = field(default_factory=dict)  # the seconds of each kind of call
    recording: bool = False  # True inside a look: the bench's own check of the membership is not counted

    def dynamodb_calls(self) -> int:
        return sum(1 for operation in self.operations if operation.startswith("dynamodb."))

    def parts(self) -> dict[str, float]:
        aws = {service: self.aws.get(service, 0.0) for service in ("identitystore", "dynamodb", "scheduler")}
        return {
            "lease_wait": self.lease_wait,
            "requeue_wait": self.requeue_wait,
            **aws,
            "graph_and_cpu": max(0.0, self.look - sum(self.aws.values())),
        }


class AwsClock:
    """Seconds spent in each AWS service's calls by clients this process creates while it is installed."""

    def __init__(self) -> None:
        self.current = Activation()
        self._stack: dict[int, list[list[float]]] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = botocore.session.Session.create_client

        def create_client(self_: botocore.session.Session, service_name: str, *args: Any, **kwargs: Any) -> Any:
            client = original(self_, service_name, *args, **kwargs)
            client.meta.events.register("before-call", self._before)
            client.meta.events.register("after-call", self._after(service_name))
            return client

        botocore.session.Session.create_client = create_client
        try:
            yield
        finally:
            botocore.session.Session.create_client = original

    def _before(self, **_: Any) -> None:
        self._stack.setdefault(threading.get_ident(), []).append([time.monotonic(), 0.0])

    def _after(self, service: str) -> Callable[..., None]:
        def after(model: Any = None, **_: Any) -> None:
            if self.current.recording and model is not None:
                self.current.operations.append(f"{service}.{model.name}")
            stack = self._stack.get(threading.get_ident())
            if not stack:
                return
            started, inner = stack.pop()
            elapsed = time.monotonic() - started
            # a call made inside another (the shared budget's DynamoDB item inside an Identity Store call)
            # counts for its own service only
            self.current.aws[service] = self.current.aws.get(service, 0.0) + elapsed - inner
            self.current.aws_calls[service] = self.current.aws_calls.get(service, 0) + 1
            if model is not None:
                name = f"{service}.{model.name}"
                self.current.operation_seconds[name] = self.current.operation_seconds.get(name, 0.0) + elapsed - inner
            if stack:
                stack[-1][1] += elapsed

        return after


def present(jit: JitService, group: str, user: str) -> bool:
    return jit.grants.owned_memberships(group).get(user) is not None


def activate_and_wait(emulator: GraphEmulator, jit: JitService, group: str, user: str, clock: AwsClock) -> Activation:
    """One activation through the JIT path; where its seconds went, ``total`` from the activation to the
    membership being present."""
    clock.current = record = Activation()
    started = time.monotonic()
    emulator.app.pim.activate(group, user, GRANT_MINUTES)
    while True:
        looked = time.monotonic()
        record.recording = True
        try:
            outcome = jit.look(group)
        finally:
            record.recording = False
        applied = present(jit, group, user)
        record.look += time.monotonic() - looked
        record.looks += 1
        record.busy_looks += outcome.busy
        if applied:
            record.total = time.monotonic() - started
            return record
        if time.monotonic() - started > LOOK_TIMEOUT_S:
            raise RuntimeError(f"activation of {user} in {group} not applied in {LOOK_TIMEOUT_S} s: {outcome}")
        pause = min(outcome.wait_seconds or 0.05, 1.0)  # the worker's requeue, shortened
        time.sleep(pause)
        if outcome.busy:
            record.lease_wait += pause
        else:
            record.requeue_wait += pause


def breakdown(records: list[Activation]) -> dict[str, Any]:
    slowest = max(records, key=lambda record: record.total)
    sums: dict[str, float] = {}
    calls: dict[str, int] = {}
    by_operation: dict[str, float] = {}
    for record in records:
        for name, seconds in record.operation_seconds.items():
            by_operation[name] = by_operation.get(name, 0.0) + seconds
        for name, seconds in record.parts().items():
            sums[name] = sums.get(name, 0.0) + seconds
        for service, count in record.aws_calls.items():
            calls[service] = calls.get(service, 0) + count
    return {
        "total_sum_s": round(sum(record.total for record in records), 3),
        **{f"{name}_sum_s": round(seconds, 3) for name, seconds in sums.items()},
        "busy_looks": sum(record.busy_looks for record in records),
        "dynamodb_calls_per_activation": statistics.median(record.dynamodb_calls() for record in records),
        "seconds_by_operation": {name: round(seconds, 3) for name, seconds in sorted(by_operation.items())},
        "calls_of_one_activation": next((r.operations for r in records if r.looks == 1), slowest.operations),
        "looks": sum(record.looks for record in records),
        "aws_calls": dict(sorted(calls.items())),
        "over_target": [
            {"total_s": round(record.total, 3), "busy_looks": record.busy_looks}
            | {f"{name}_s": round(seconds, 3) for name, seconds in record.parts().items()}
            for record in records
            if record.total >= TARGET_P99_S
        ],
        "slowest": {
            "total_s": round(slowest.total, 3),
            "looks": slowest.looks,
            "busy_looks": slowest.busy_looks,
            **{f"{name}_s": round(seconds, 3) for name, seconds in slowest.parts().items()},
        },
    }


def run() -> dict[str, Any]:
    return {"api_limit_jit": measure()}


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in [*values, "AWS_PROFILE"]}
    os.environ.update(values)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def aws_emulator() -> Iterator[tuple[str, Callable[[], list[float]]]]:
    """The AWS emulator's process; yields its endpoint and the function that stops it and returns the
    wall-clock times of the Identity Center requests it answered."""
    context = multiprocessing.get_context("spawn")
    endpoints, answered, stop = context.Queue(), context.Queue(), context.Event()
    process = context.Process(target=serve_aws, args=(endpoints, stop, answered), name="bench-aws", daemon=True)
    process.start()
    stamps: list[float] = []

    def finish() -> list[float]:
        if not stop.is_set():
            stop.set()
            stamps.extend(answered.get(timeout=60))
            process.join(timeout=30)
        return stamps

    try:
        yield endpoints.get(timeout=120), finish
    finally:
        if not stop.is_set():
            stop.set()
            process.join(timeout=30)
        if process.is_alive():
            process.kill()


def measure() -> dict[str, Any]:
    """The figures (see the module docstring), measured in three processes."""
    tenant, group, pim_users = pim_tenant()
    context = multiprocessing.get_context("spawn")
    with (
        aws_emulator() as (endpoint, finish),
        environment({**FAKE_AWS_ENVIRONMENT, "AWS_ENDPOINT_URL": endpoint}),
        GraphEmulator(tenant) as emulator,
    ):
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(**table_definition(TABLE))
        dynamodb.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TABLE_SCHEMA["ttl_attribute"]}
        )
        boto3.client("scheduler").create_schedule_group(Name=SCHEDULE_GROUP)
        graph = emulator.graph_config()
        settings = bench_settings(graph, group)
        provisioned = build_engine(settings).cycle.run(CycleOptions())  # the PIM world, before the clock starts
        if provisioned.report is None or not provisioned.report.complete:
            raise RuntimeError(f"the PIM world was not provisioned: {provisioned}")
        add_scale(tenant)

        clock = AwsClock()
        layer = latency_layer()
        with clock.installed():
            # the JIT worker's client and budget exactly as build_jit_service wires them, kept to read its waits
            target = from_settings(settings.identity_store, bounded=True)
            budget = build_rate_budget(settings, "jit")
            attach_budget(target.client, budget)
            jit = build_jit_service(settings, target=target)  # the lease renewed before every call, as wired
        layer.attach(target.client)
        users = iter(pim_users)
        idle_records = [activate_and_wait(emulator, jit, group, next(users), clock) for _ in range(IDLE_SAMPLES)]
        idle = [record.total for record in idle_records]
        assert isinstance(budget, SharedRateBudget)
        idle_waited, idle_calls = budget.stats.waited, budget.stats.calls
        jit_calls_before = layer.stats.calls

        ready, go, results = context.Event(), context.Event(), context.Queue()
        sync = context.Process(
            target=sync_process, args=(endpoint, graph, group, ready, go, results), name="bench-sync", daemon=True
        )
        sync.start()
        if not ready.wait(180):
            raise RuntimeError("the sync process did not start")
        sync_started = time.time()
        go.set()
        records: list[Activation] = []
        next_at = time.monotonic() + 1.0
        while sync.is_alive() and results.empty():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += 1.0
            if not sync.is_alive() or not results.empty():
                break
            records.append(activate_and_wait(emulator, jit, group, next(users), clock))
        result = results.get(timeout=LOOK_TIMEOUT_S)
        sync_ended = time.time()
        sync.join(timeout=30)
        if not result["complete"]:
            raise RuntimeError(f"the sync did not complete: {result['outcome']}")
        bucket = dynamodb.get_item(
            TableName=TABLE, Key={"pk": {"S": "BUCKET#identity-center"}, "sk": {"S": "BUCKET"}}, ConsistentRead=True
        )["Item"]
        answered = [stamp for stamp in finish() if sync_started <= stamp <= sync_ended]
    latencies = [record.total for record in records]
    seconds = result["seconds"]
    calls = result["calls"] + layer.stats.calls - jit_calls_before
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
        "sync_writes": result["writes"],
        "aws_calls": calls,
        "throttled": result["throttled"] + layer.stats.throttled,
        "ratio_to_limit": round(seconds / (calls / LIMIT), 3),
        "budget_writes": int(bucket["version"]["N"]),
        "median_latency_s": MEDIAN_S,
        "limit_per_s": LIMIT,
        "processes": "sync, jit (+ Graph emulator), aws emulator",
        "emulator_calls": len(answered),
        "emulator_max_calls_per_s": max_per_window(answered),
        "breakdown": breakdown(records),
        "idle_breakdown": breakdown(idle_records),
    }
