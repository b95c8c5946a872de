"""The safety rules end to end: the Graph emulator and moto failing the way Graph and AWS fail."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import botocore.endpoint
import pytest

from idsync.config import Settings
from idsync.services.cycle import CycleOptions
from idsync.services.escrow import load_quarantine
from idsync.wiring import Engine, build_engine
from sandbox import moto_ext
from sandbox.graph_emulator import GraphEmulator
from tests.e2e.conftest import IdentityCenter
from tests.fakes import FakeClock


def run(engine: Engine, **options: Any) -> Any:
    outcome = engine.cycle.run(CycleOptions(**options))
    assert outcome.report is not None, outcome.skipped
    return outcome


def test_an_empty_full_read_during_a_graph_incident_costs_nobody_access(
    engine: Engine, emulator: GraphEmulator, identity_center: IdentityCenter
) -> None:
    # Given a provisioned tenant
    run(engine)
    users = identity_center.users()
    # When Graph answers a full read with nobody (an incident), the guard holds every deletion back
    emulator.empty_next_full_delta("users")
    tripped = run(engine, force_full=True)
    assert tripped.report.guard is not None
    assert len(tripped.plan.held_back) == tripped.report.guard.held_back
    assert identity_center.users() == users
    # Then, Graph recovered, the very next cycle reads in full and plans no deletion
    recovered = run(engine)
    assert recovered.mode == "full"
    assert recovered.plan.held_back == ()
    assert recovered.report.guard is None
    # and the notice's advice, followed now, deletes nobody
    run(engine, allow_deletions=True)
    assert identity_center.users() == users


def test_a_graph_500_is_retried_and_the_cycle_completes(
    engine: Engine, emulator: GraphEmulator, identity_center: IdentityCenter
) -> None:
    emulator.inject(500, count=1, path_prefix="/v1.0/users", retry_after=None)
    outcome = run(engine)
    assert outcome.report.complete
    assert outcome.report.failures == ()
    assert identity_center.users()


def test_aws_throttling_past_the_retries_stops_the_cycle_without_quarantine(
    make_settings: Callable[..., Settings],
    clock: FakeClock,
    identity_center: IdentityCenter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=lambda _seconds: None))
    engine = build_engine(make_settings(identity_store={"max_attempts": 2}), clock=clock)
    # Given AWS throttling CreateUser for 30 attempts in a row: more than the pool's concurrent calls absorb
    # in botocore's two retries each
    moto_ext.fail_next("CreateUser", "ThrottlingException", times=30)
    stopped = run(engine)
    # Then the cycle stops early, nothing counts as failed, and idsync is not quarantined
    assert not stopped.report.complete
    assert stopped.report.failures == ()
    assert load_quarantine(engine.state) is None
    # and the next invocations carry on to a complete, clean sync
    resumed = run(engine)
    while not resumed.report.complete:
        resumed = run(engine)
    assert resumed.report.failures == ()
    assert identity_center.users()
    assert run(engine).report.writes == 0
