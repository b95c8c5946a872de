"""Access as code at scale: 20 groups x 50 accounts (1,000 assignments) through latency and throttling.

moto's sso-admin (asynchronous gaps filled by sandbox.moto_sso: each request IN_PROGRESS for one status
read) behind sandbox.aws_latency (30 ms median latency, ThrottlingException above 20 requests a second),
on a virtual clock: the seconds reported are those the calls would take, not the machine's.

Figures: ``seconds`` (virtual), ``calls`` (sso-admin requests), ``ratio_to_limit`` = seconds / (calls / 20):
1.0 means the whole cycle ran exactly at IAM Identity Center's 20 requests a second (target <= 1.2);
``max_outstanding`` the most requests ever in progress (emulator's count, <= 15); ``throttled`` answers;
``second_cycle_writes`` assignment writes a second full cycle makes (0).
"""

from __future__ import annotations

from typing import Any

import boto3
from moto import mock_aws

from idsync.access import AccessPolicy
from idsync.adapters.clock import SystemClock
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.adapters.sso_admin import SsoAdminAccess
from idsync.config import AccessEntry
from idsync.ports import CallCounter
from idsync.services.access import AccessService, GroupRef
from idsync.services.rate_budget import TokenRateBudget
from sandbox import moto_sso
from sandbox.aws_latency import LatencyLayer

GROUPS, ACCOUNTS, LIMIT = 20, 50, 20.0


class VirtualTime:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


def run() -> dict[str, Any]:
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return _run(SqliteStateStore(os.path.join(folder, "state.db")))


def _run(state: SqliteStateStore) -> dict[str, Any]:
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    with mock_aws():
        moto_sso.install()
        emulator = moto_sso.reset(polls_in_progress=1)
        client = boto3.client("sso-admin", region_name="us-east-1")
        orgs = boto3.client("organizations", region_name="us-east-1")
        instance = client.list_instances()["Instances"][0]["InstanceArn"]
        client.create_permission_set(Name="ReadOnly", InstanceArn=instance)
        time = VirtualTime()
        counter = CallCounter()
        access = SsoAdminAccess(instance, client, orgs, TokenRateBudget(LIMIT, now=time.now, sleep=time.sleep), counter)
        layer = LatencyLayer(median=0.03, sigma=0.4, rate=LIMIT, burst=int(LIMIT), now=time.now, sleep=time.sleep)
        layer.attach(client)
        accounts = [f"{100000000000 + n}" for n in range(ACCOUNTS)]
        entries = [AccessEntry(group=f"Team {g}", permission_set="ReadOnly", accounts=accounts) for g in range(GROUPS)]
        groups = {f"g{g}": GroupRef(f"Team {g}", f"principal-{g}") for g in range(GROUPS)}
        service = AccessService(access, state, SystemClock(), entries, monotonic=time.now, sleep=time.sleep)
        started, calls_before = time.now(), counter.total
        first = service.reconcile(groups, True, AccessPolicy(), "bench-1")
        seconds = time.now() - started
        calls = counter.total - calls_before
        by_operation = dict(sorted(counter.calls.items()))
        writes = emulator.writes
        second = service.reconcile(groups, True, AccessPolicy(), "bench-2")
        return {
            "access": {
                "groups": GROUPS,
                "accounts": ACCOUNTS,
                "assignments": first.counts.get("create", 0),
                "failures": len(first.failures),
                "calls": calls,
                "calls_by_operation": by_operation,
                "seconds": round(seconds, 2),
                "ratio_to_limit": round(seconds / (calls / LIMIT), 3),
                "max_outstanding": emulator.peak,
                "throttled": layer.stats.throttled,
                "second_cycle_writes": emulator.writes - writes + second.writes,
                "second_cycle_calls": counter.total - calls_before - calls,
            }
        }
