"""The cycle's one hook into access as code: assignments follow the groups the cycle provisions."""

from __future__ import annotations

from typing import Any

from idsync.config import AccessEntry
from idsync.model import PlanPolicy
from idsync.services.access import AccessService
from idsync.services.cycle import CycleOptions, CycleService, Scoping
from tests.fakes import FakeAccountAccess, FakeClock, FakeIdentityStore, FakeState
from tests.unit.test_cycle import tenant
from tests.unit.test_plan_laws import Everything, SimpleGroupMapper, SimpleUserMapper

ADMIN = "arn:aws:sso:::permissionSet/ssoins-0000000000000000/ps-aaaaaaaaaaaaaaaa"
ACCOUNTS = ["111111111111", "222222222222"]


class World:
    def __init__(self, **policy: Any) -> None:
        self.source = tenant()
        self.store = FakeIdentityStore()
        self.state = FakeState()
        self.clock = FakeClock()
        self.aws = FakeAccountAccess(permission_sets_by_name={"AdministratorAccess": ADMIN})
        self.policy = policy
        self.entries = [AccessEntry(group="Team 0", permission_set="AdministratorAccess", accounts=ACCOUNTS)]

    def service(self) -> CycleService:
        access = AccessService(
            self.aws,
            self.state,
            self.clock,
            self.entries,
            monotonic=lambda: self.clock.now().timestamp(),
            sleep=self.clock.advance,
        )
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
            access=access,
        )

    def run(self, **options: Any) -> Any:
        return self.service().run(CycleOptions(**options)).report

    def principal(self, name: str) -> str:
        return next(gid for gid, g in self.store.groups.items() if g["DisplayName"] == name)


def test_the_cycle_assigns_the_group_it_just_created_and_a_second_cycle_writes_nothing() -> None:
    world = World()
    report = world.run()
    team = world.principal("Team 0")
    assert world.aws.held == {(team, ADMIN, a) for a in ACCOUNTS}
    assert report.counts["assignment"] == {"create": 2}
    writes = world.aws.writes
    again = world.run()
    assert "assignment" not in again.counts
    assert world.aws.writes == writes


def test_a_group_leaving_scope_holds_its_assignments_while_the_deletion_guard_holds_the_group() -> None:
    world = World()
    world.run()
    team = world.principal("Team 0")
    world.source.groups = [g for g in world.source.groups if g["displayName"] != "Team 0"]
    report = world.run()
    assert report.guard is not None
    assert len(world.aws.held) == 2
    assert any(e.kind == "assignment" and e.error == "held back by the deletion guard" for e in world.state.logs)
    world.run(allow_deletions=True)
    assert world.aws.held == set()
    assert sorted(k for k in world.aws.deleted_by_idsync) == sorted((team, ADMIN, a) for a in ACCOUNTS)


def test_a_failed_assignment_is_a_cycle_failure_with_aws_reason() -> None:
    world = World()
    world.aws.failures[ACCOUNTS[1]] = "account is suspended"
    report = world.run()
    (failure,) = report.failures
    assert failure.kind == "assignment"
    assert "account is suspended" in (failure.error or "")
    assert report.counts["assignment"] == {"create": 1}


def test_aws_unreadable_for_assignments_is_one_failure_and_the_cycle_still_finishes() -> None:
    world = World()
    world.aws.unreachable = True
    report = world.run()
    assert report.complete
    assert [f.action for f in report.failures] == ["reconcile"]
    assert "HTTP 500" in (report.failures[0].error or "")
    assert world.store.groups  # the groups were provisioned all the same
    world.aws.unreachable = False
    assert world.run().counts["assignment"] == {"create": 2}


def test_plan_access_shows_the_assignments_of_groups_still_to_create_and_writes_nothing() -> None:
    world = World()
    before = dict(world.state.items)
    result = world.service().plan_access()
    assert result is not None
    plan, names = result
    assert [(names[a.group_source_id], names[a.permission_set_arn], a.account_id) for a in plan.creates] == [
        ("Team 0", "AdministratorAccess", account) for account in ACCOUNTS
    ]
    assert world.state.items == before
    assert world.aws.writes == 0
