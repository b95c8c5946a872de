"""The cycle: crashes and time budgets lose nothing, one cycle at a time, escrow, quarantine, drift repair."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from idsync.adapters.notify import ConsoleNotifier
from idsync.errors import StateError
from idsync.model import DeprovisionMode, PlanPolicy
from idsync.services.cycle import CycleOptions, CycleService, Scoping
from idsync.services.escrow import load_quarantine
from tests.fakes import FakeClock, FakeIdentityStore, FakeSource, FakeState
from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper


def tenant(users: int = 12, groups: int = 3, boss: Callable[[int], int] = lambda i: i // 3) -> FakeSource:
    """``users`` people (each but the first reporting to person ``boss(i)``), ``groups`` teams sharing them out."""
    people = [
        {
            "id": f"e{i}",
            "userPrincipalName": f"u{i}@example.com",
            "displayName": f"User {i}",
            "jobTitle": "Engineer",
            "accountEnabled": True,
            "manager": {"id": f"e{boss(i)}"} if i else None,
        }
        for i in range(users)
    ]
    teams = [{"id": f"g{j}", "displayName": f"Team {j}"} for j in range(groups)]
    members = {f"g{j}": [p["id"] for k, p in enumerate(people) if k % groups == j] for j in range(groups)}
    return FakeSource(people, teams, members)


class World:
    def __init__(self, source: FakeSource | None = None, **policy: Any) -> None:
        self.source = source or tenant()
        self.store = FakeIdentityStore()
        self.state = FakeState()
        self.clock = FakeClock()
        self.notifier = ConsoleNotifier()
        self.policy = policy

    def service(self) -> CycleService:
        return CycleService(
            self.source,
            self.store,
            self.state,
            SimpleUserMapper(),
            SimpleGroupMapper(),
            Everything(),
            Scoping("all", False),
            PlanPolicy(**self.policy),
            self.clock,
            notifier=self.notifier,
        )

    def run(self, **options: Any) -> Any:
        return self.service().run(CycleOptions(**options))

    def snapshot(self) -> tuple[set[str], dict[str, set[str]], dict[str, Any]]:
        names = {u["UserName"] for u in self.store.users.values()}
        groups = {g["DisplayName"]: self.store.members_of(g["DisplayName"]) for g in self.store.groups.values()}
        managers = {n: self.store.manager_of(n) for n in names}
        return names, groups, managers


def uninterrupted() -> tuple[tuple[Any, ...], int]:
    world = World()
    world.run()
    return world.snapshot(), len(world.store.writes)


@pytest.mark.parametrize("k", range(0, 27, 2))
def test_a_crash_after_any_write_is_finished_by_the_next_run(k: int) -> None:
    expected, writes = uninterrupted()
    assert k < writes == 27
    # Given a cycle that dies after its k-th write to IAM Identity Center
    world = World()
    world.store.crash_after_writes = k
    with pytest.raises(RuntimeError):
        world.run()
    # When the next run starts
    world.store.crash_after_writes = None
    outcome = world.run()
    # Then it converges, with every object once and no write repeated
    assert outcome.report.failures == ()
    assert world.snapshot() == expected
    assert len(world.store.writes) == writes


@pytest.mark.parametrize("k", range(0, 27, 3))
def test_a_crash_between_a_write_and_its_record_is_adopted_not_duplicated(k: int) -> None:
    expected, writes = uninterrupted()
    world = World()
    world.state.crash_after_records = k
    with pytest.raises(RuntimeError):
        world.run()
    world.state.crash_after_records = None
    outcome = world.run()
    assert outcome.report.failures == ()
    assert world.snapshot() == expected
    # the one write whose record was lost is found again (conflict -> adopt), never created twice
    assert len(world.store.users) == 12
    assert len(world.store.writes) <= writes + 1


def test_a_time_budget_stops_cleanly_and_the_next_invocations_continue() -> None:
    expected, writes = uninterrupted()
    world = World()
    invocations = 0
    while True:
        invocations += 1
        budget = iter(range(7))  # seven operations per invocation
        outcome = world.run(should_stop=lambda b=budget: next(b, None) is None)
        if outcome.report.complete:
            break
        assert world.state.get_item("run:last")["status"].startswith("stopped")
    assert invocations > 3
    assert world.snapshot() == expected
    assert len(world.store.writes) == writes
    assert world.state.get_item("checkpoint") is None


def test_only_one_cycle_runs_at_a_time() -> None:
    world = World()
    world.state.acquire_lease("sync", "someone-else", world.clock.now(), 900)
    outcome = world.run()
    assert outcome.report is None
    assert "another cycle is running" in (outcome.skipped or "")
    assert world.store.writes == []
    # an expired lease (a crashed run) does not block the next
    world.clock.advance(901)
    assert world.run().report is not None
    assert len(world.store.users) == 12


def test_failed_objects_go_to_escrow_with_backoff_and_are_given_up_after_28_days() -> None:
    world = World()
    world.store.fail_on["u4@example.com"] = "ValidationException: simulated"
    first = world.run().report
    assert [f.name for f in first.failures] == ["u4@example.com"]
    assert len(world.store.users) == 11  # the others went ahead
    # next cycle retries soon (Entra's first retry), then waits 6 h
    assert len(world.run().report.failures) == 1
    world.clock.advance(3600)
    held = world.run().report
    assert held.failures == ()
    skipped = [e for e in world.state.logs if e.error and e.error.startswith("in escrow")]
    assert skipped
    assert "u4@example.com" in {e.name for e in skipped}
    world.clock.advance(5 * 3600)
    assert len(world.run().report.failures) == 1  # retried after 6 h
    for _ in range(30):
        world.clock.advance(86400)
        world.run()
    final = [e for e in world.state.logs if e.error and e.error.startswith("given up after 28 days")]
    assert len(final) == 1
    # the fix arrives: the object changes in Entra, leaves escrow and succeeds at once
    del world.store.fail_on["u4@example.com"]
    world.source.users[4]["displayName"] = "User Four"
    assert world.run().report.failures == ()
    assert world.store.user_by_name("u4@example.com")["doc"]["DisplayName"] == "User Four"


def test_quarantine_after_mass_failure_slows_to_daily_and_ends_after_a_clean_cycle() -> None:
    world = World()
    for i in range(8):
        world.store.fail_on[f"u{i}@example.com"] = "ValidationException: simulated"
    world.run()
    quarantine = load_quarantine(world.state)
    assert quarantine is not None
    assert "operations failed" in quarantine.reason
    assert any(subject == "idsync entered quarantine" for subject, _ in world.notifier.sent)
    # within the day: no cycle
    world.clock.advance(3600)
    skipped = world.run()
    assert skipped.report is None
    assert "quarantine" in (skipped.skipped or "")
    # a day later the cause is gone: the cycle runs clean and leaves quarantine
    world.store.fail_on.clear()
    world.clock.advance(86400)
    assert world.run().report.failures == ()
    assert load_quarantine(world.state) is None
    assert any(subject == "idsync left quarantine" for subject, _ in world.notifier.sent)


def test_drift_in_aws_is_repaired_by_the_full_reconcile() -> None:
    world = World()
    world.run()
    # Given a user deleted by hand in IAM Identity Center
    victim = world.store.find_user("u5@example.com")
    world.store.delete_user(victim)
    world.store.writes.clear()
    # a delta cycle trusts what it recorded: nothing to do
    assert world.run().mode == "delta"
    assert world.store.find_user("u5@example.com") is None
    # the daily full reconcile re-reads AWS and provisions it again, with its memberships
    world.clock.advance(25 * 3600)
    outcome = world.run()
    assert outcome.mode == "full"
    assert world.store.find_user("u5@example.com") is not None
    assert "u5@example.com" in world.store.members_of("Team 2")


def test_refusals_are_logged_once_not_every_cycle() -> None:
    source = tenant()
    source.users.append(
        {"id": "bad", "userPrincipalName": "bad@example.com", "displayName": "Bad", "accountEnabled": True}
    )

    class Refusing(SimpleUserMapper):
        def map(self, obj: dict[str, Any]) -> Any:
            from idsync.model import Refusal

            if obj["id"] == "bad":
                return Refusal("user", "bad", "bad@example.com", "name.givenName", "is required")
            return super().map(obj)

    world = World(source)
    service = world.service()
    service.user_mapper = Refusing()
    service.run(CycleOptions())
    service.run(CycleOptions())
    refused = [e for e in world.state.logs if e.source_id == "bad"]
    assert len(refused) == 1
    assert refused[0].error == "user bad@example.com [bad]: attribute name.givenName: is required"


def test_skip_out_of_scope_deletions_keeps_users_who_left_scope_but_not_disabled_ones() -> None:
    class DepartmentScope(Everything):
        def user(self, obj: dict[str, Any]) -> Any:
            verdict = type("Decision", (), {})()
            verdict.in_scope = obj.get("department") != "Contractors"
            return verdict

    world = World(skip_out_of_scope_deletions=True, allow_deletions=True)
    service = world.service()
    service.scope = DepartmentScope()
    service.run(CycleOptions())
    # Given one user moves out of scope and another is disabled
    world.source.users[7]["department"] = "Contractors"
    world.source.users[8]["accountEnabled"] = False
    service.run(CycleOptions())
    # Then the one out of scope is kept, the disabled one is removed
    assert world.store.find_user("u7@example.com") is not None
    assert world.store.find_user("u8@example.com") is None


def test_deprovision_keep_leaves_the_user_but_takes_group_access_away() -> None:
    world = World(deprovision=DeprovisionMode.KEEP)
    world.run()
    world.source.users[3]["accountEnabled"] = False
    report = world.run().report
    assert world.store.find_user("u3@example.com") is not None
    assert "u3@example.com" not in world.store.members_of("Team 0")
    assert report.counts == {"membership": {"delete": 1}}


class UpkeptState(FakeState):
    """A state store with an index to upkeep (``ports.LookupUpkeep``); can fail it."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.upkeep: list[tuple[Any, bool]] = []
        self.fail = fail

    def upgrade_lookups(self, now: Any, should_stop: Callable[[], bool]) -> bool:
        self.upkeep.append((now, should_stop()))
        if self.fail:
            raise StateError("ProvisionedThroughputExceededException")
        return True


@pytest.mark.parametrize("fail", [False, True])
def test_the_state_upkeep_runs_after_a_cycle_within_its_budget_and_never_fails_it(
    fail: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a state store with an index to upkeep (which may fail)
    world = World()
    world.state = UpkeptState(fail)

    # When a cycle runs, then a dry run
    outcome = world.service().run(CycleOptions(should_stop=lambda: False))
    world.service().run(CycleOptions(dry_run=True))

    # Then the cycle's writes went through, the upkeep ran once after it (at the clock's time, with the
    # cycle's budget), a failed one only logged
    assert outcome.report is not None
    assert len(world.store.users) == 12
    assert world.state.upkeep == [(world.clock.now(), False)]
    assert ("state upkeep failed" in caplog.text) is fail
