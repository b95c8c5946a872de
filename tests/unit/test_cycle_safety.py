"""The cycle's safety rules: outages, throttling, crashes and hand-made drift never cost anyone access."""

from __future__ import annotations

from typing import Any

import pytest

from idsync.console.output import plan_lines
from idsync.model import GuardThreshold, OwnedUser
from idsync.services.escrow import load_quarantine
from tests.fakes import FakeDeltaSource
from tests.unit.test_cycle import World, tenant


def delta_world(**policy: Any) -> World:
    base = tenant()
    return World(FakeDeltaSource(base.users, base.groups, base.members), **policy)


def expected() -> tuple[Any, ...]:
    world = World()
    world.run()
    return world.snapshot()


def test_an_empty_full_read_is_not_kept_so_the_next_cycle_plans_no_deletion() -> None:
    # Given a provisioned tenant, and a full read during a Graph incident that returns nobody
    world = delta_world(max_deletions=5)
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    source.outage = True
    tripped = world.run(force_full=True)
    assert tripped.report.guard is not None
    assert len(tripped.plan.held_back) == 12 + 3 + 12  # users, groups, memberships: all named
    # When Graph has recovered, the next cycle reads in full again, and plans no deletion
    after = world.run()
    assert source.asked[-1] is None
    assert after.mode == "full"
    assert after.plan.held_back == ()
    assert after.report.guard is None
    # and the notice's advice, run now, deletes nobody
    world.store.writes.clear()
    world.run(allow_deletions=True)
    assert "DeleteUser" not in world.store.writes
    assert world.snapshot() == expected()


def test_throttling_past_the_retries_ends_the_cycle_early_and_never_quarantines() -> None:
    # Given AWS throttling 15 writes in a row (beyond what the client's retries absorb)
    world = World()
    world.store.throttled_writes = 15
    runs = 0
    while True:
        runs += 1
        report = world.run().report
        # Then no cycle reports a failure or enters quarantine; each stopped cycle is resumed
        assert report.failures == ()
        assert load_quarantine(world.state) is None
        if report.complete:
            break
        assert runs < 40
    assert runs == 16
    assert world.snapshot() == expected()


def test_a_resumed_full_reconcile_keeps_reading_aws_and_repairs_drift() -> None:
    world = World()
    world.run()
    # Given a user deleted by hand in AWS, and a full reconcile stopped by its time budget after one write
    world.store.delete_user(world.store.find_user("u5@example.com") or "")
    for user in world.source.users:
        user["jobTitle"] = "Staff"
    budget = iter(range(1))
    stopped = world.run(force_full=True, should_stop=lambda: next(budget, None) is None)
    assert not stopped.report.complete
    # When the next invocation resumes it
    resumed = world.run()
    # Then the resume still compares with AWS: the user is back, with its memberships
    assert resumed.mode == "resume"
    assert world.store.find_user("u5@example.com") is not None
    assert "u5@example.com" in world.store.members_of("Team 2")


def test_a_user_re_created_by_a_delta_cycle_gets_every_membership_back() -> None:
    world = World()
    world.run()
    # Given a user deleted by hand in AWS, then changed in Entra
    world.store.delete_user(world.store.find_user("u4@example.com") or "")
    world.source.users[4]["jobTitle"] = "Lead"
    outcome = world.run()
    # Then the delta cycle re-creates it with its group memberships
    assert outcome.mode == "delta"
    assert outcome.report.failures == ()
    assert world.store.user_by_name("u4@example.com")["doc"]["Title"] == "Lead"
    assert "u4@example.com" in world.store.members_of("Team 1")
    # and the next full reconcile finds nothing left to do
    world.store.writes.clear()
    world.run(force_full=True)
    assert world.store.writes == []


def test_a_managed_group_deleted_by_hand_is_re_created_with_its_members() -> None:
    world = World()
    world.run()
    # Given "Team 0" deleted by hand in AWS, then a member added to it in Entra
    world.store.delete_group(world.store.find_group("Team 0") or "")
    world.source.members["g0"].append("e1")
    outcome = world.run()
    # Then the delta cycle re-creates it and adds every member Entra says it has
    assert outcome.report.failures == ()
    assert world.store.members_of("Team 0") == {f"u{i}@example.com" for i in (0, 1, 3, 6, 9)}
    world.store.writes.clear()
    world.run(force_full=True)
    assert world.store.writes == []


def test_a_crash_between_create_and_record_then_a_rename_leaves_no_orphan() -> None:
    # Given a first cycle that dies right after CreateUser of its first user (before recording it)
    world = World()
    world.state.crash_after_records = 0
    with pytest.raises(RuntimeError):
        world.run()
    assert len(world.store.users) == 1
    created = next(iter(world.store.users))
    # When Entra renames that user before the next run
    world.state.crash_after_records = None
    world.source.users[0]["userPrincipalName"] = "renamed@example.com"
    outcome = world.run()
    # Then the next run finds the user it created, keeps its id and renames it: no orphan
    assert outcome.report.failures == ()
    assert len(world.store.users) == 12
    assert world.store.find_user("renamed@example.com") == created
    assert world.store.find_user("u0@example.com") is None


def test_a_state_error_between_create_and_record_leaves_no_orphan_even_after_a_full_reconcile() -> None:
    from idsync.errors import StateError

    world = World()

    class Failing(type(world.state)):  # type: ignore[misc]
        fail = True

        def record_user(self, owned: OwnedUser) -> None:
            if self.fail:
                raise StateError("ProvisionedThroughputExceededException")
            super().record_user(owned)

    failing = Failing()
    world.state = failing
    with pytest.raises(StateError):
        world.run()
    failing.fail = False
    world.source.users[0]["userPrincipalName"] = "renamed@example.com"
    world.run(force_full=True)
    assert len(world.store.users) == 12
    assert set(failing.users) == {u["id"] for u in world.source.users}


def test_a_soft_deleted_user_or_group_keeps_its_aws_id_loses_only_managed_memberships_and_restores() -> None:
    world = delta_world(max_deletion_percent=50.0)
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    user_id = world.store.find_user("u4@example.com")
    group_id = world.store.find_group("Team 0")
    hand_made = world.store.create_group("Break glass", None)
    world.store.create_membership(hand_made, user_id or "")
    # Given a user and a Microsoft 365 group moved to Entra's deleted items
    user = source.users.pop(4)
    group = source.groups.pop(0)
    members = source.members.pop("g0")
    source.members["g1"].remove("e4")
    source.soft_deleted |= {"e4", "g0"}
    world.run()
    # Then neither is deleted in AWS, and the memberships idsync manages are gone; what idsync does not
    # manage (a hand-made group's membership) stays for the grace period, as the README says
    assert world.store.find_user("u4@example.com") == user_id
    assert world.store.find_group("Team 0") == group_id
    assert world.store.members_of("Team 0") == set()
    assert "u4@example.com" not in world.store.members_of("Team 1")
    assert world.store.members_of("Break glass") == {"u4@example.com"}
    # When both are restored in Entra
    source.users.insert(4, user)
    source.groups.insert(0, group)
    source.members["g0"] = members
    source.members["g1"].append("e4")
    source.soft_deleted.clear()
    world.run()
    # Then they come back with the same ids and their memberships
    assert world.store.find_user("u4@example.com") == user_id
    assert world.store.find_group("Team 0") == group_id
    world.store.delete_group(hand_made)
    assert world.snapshot() == expected()


def test_a_soft_deleted_user_is_deleted_once_the_grace_period_passes() -> None:
    world = delta_world()
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    source.users.pop(4)
    source.members["g1"].remove("e4")
    source.soft_deleted.add("e4")
    world.run()
    assert world.store.find_user("u4@example.com") is not None
    world.clock.advance(31 * 86400)
    world.run()
    assert world.store.find_user("u4@example.com") is None


def test_a_hard_delete_is_an_aws_delete_at_once() -> None:
    world = delta_world()
    world.run()
    world.source.users.pop(4)
    world.source.members["g1"].remove("e4")
    world.run()
    assert world.store.find_user("u4@example.com") is None


def test_a_create_whose_answer_was_lost_then_a_rename_leaves_no_orphan() -> None:
    # Given a CreateUser that lands in AWS but answers an AWS-side fault (the cycle stops there)
    world = World()
    world.store.lost_create_answers = 1
    stopped = world.run().report
    assert not stopped.complete
    assert stopped.failures == ()
    landed = next(iter(world.store.users))
    # When Entra renames that user before the next run
    world.source.users[0]["userPrincipalName"] = "renamed@example.com"
    world.run()
    # Then the user it created is found, kept and renamed: no orphan
    assert len(world.store.users) == 12
    assert world.store.find_user("renamed@example.com") == landed


def test_a_full_reconcile_keeps_a_soft_deleted_user_within_the_grace_period() -> None:
    world = delta_world()
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    user_id = world.store.find_user("u4@example.com")
    source.users.pop(4)
    source.members["g1"].remove("e4")
    source.soft_deleted.add("e4")
    world.run()
    # a full read does not list Entra's deleted items: the user is still restorable, so still kept
    world.clock.advance(2 * 86400)
    assert world.run(force_full=True).mode == "full"
    assert world.store.find_user("u4@example.com") == user_id
    world.clock.advance(29 * 86400)
    world.run(force_full=True)
    assert world.store.find_user("u4@example.com") is None


def _always_500_for(world: World, user_name: str) -> None:
    from idsync.errors import TargetTransient

    original = world.store.update_user

    def update_user(user_id: str, changes: Any) -> None:
        if world.store.users[user_id]["UserName"] == user_name:
            raise TargetTransient("UpdateUser: InternalServerException (HTTP 500)")
        original(user_id, changes)

    world.store.update_user = update_user  # type: ignore[method-assign]


def test_an_operation_that_always_answers_5xx_is_escrowed_after_three_runs_and_later_writes_go_on() -> None:
    # Given a provisioned tenant where u1's UpdateUser answers HTTP 500 every time
    world = World()
    world.run()
    _always_500_for(world, "u1@example.com")
    # When u1 gets a new title and u11 leaves (its removals come after u1's update)
    world.source.users[1]["jobTitle"] = "Lead"
    world.source.users.pop(11)
    for members in world.source.members.values():
        if "e11" in members:
            members.remove("e11")
    stopped = [world.run() for _ in range(2)]
    # Then two runs stop at u1 without a failure, and the third escrows u1's update and goes on
    assert [o.report.complete for o in stopped] == [False, False]
    assert all(o.report.failures == () for o in stopped)
    assert world.store.find_user("u11@example.com") is not None
    third = world.run()
    assert third.report.complete
    assert [(f.name, f.action) for f in third.report.failures] == [("u1@example.com", "update")]
    assert world.store.find_user("u11@example.com") is None
    assert world.store.users[world.store.find_user("u1@example.com")]["doc"]["Title"] == "Engineer"


def test_operations_a_stopped_run_never_attempted_keep_their_escrow() -> None:
    from idsync.errors import TargetError
    from idsync.services.escrow import Escrow

    # Given u2's update failed once (escrowed: retried on the next cycle)
    world = World()
    world.run()
    original = world.store.update_user
    failing = {"once": True}

    def update_user(user_id: str, changes: Any) -> None:
        if world.store.users[user_id]["UserName"] == "u2@example.com" and failing.pop("once", False):
            raise TargetError("ValidationException")
        original(user_id, changes)

    world.store.update_user = update_user  # type: ignore[method-assign]
    world.source.users[2]["jobTitle"] = "Lead"
    first = world.run()
    assert [f.name for f in first.report.failures] == ["u2@example.com"]
    # When the next run stops at u1's update (planned before u2's), which answers HTTP 500
    _always_500_for(world, "u1@example.com")
    world.source.users[1]["jobTitle"] = "Lead"
    second = world.run()
    assert not second.report.complete
    # Then u2's escrow entry is still there, with its one attempt
    entries = Escrow(world.state).entries
    assert [(k, e.attempts) for k, e in entries.items() if k == "user:e2"] == [("user:e2", 1)]


def test_no_cycle_completing_for_longer_than_the_full_reconcile_interval_is_notified_once() -> None:
    from datetime import timedelta

    # Given a provisioned tenant whose cycles then keep stopping on their time budget
    world = World()
    world.run()
    world.source.users[1]["jobTitle"] = "Lead"
    world.notifier.sent.clear()
    for _ in range(4 * 30):  # 30 hours of 15-minute cycles
        world.clock.advance(timedelta(minutes=15).total_seconds())
        assert world.run(should_stop=lambda: True).report.complete is False
    # Then exactly one notice says no cycle has completed, naming since when
    stalls = [s for s, _ in world.notifier.sent if "not completing" in s]
    assert len(stalls) == 1


def test_on_demand_provisioning_settles_a_create_a_stopped_cycle_left_unrecorded() -> None:
    from idsync.services.sync import INTENT_KEY

    # Given a cycle that created u12 but crashed before recording it (its intent is all that is left)
    world = World()
    world.run()
    world.source.users.append(
        {"id": "e12", "userPrincipalName": "u12@example.com", "displayName": "User 12", "accountEnabled": True}
    )
    created = world.store.create_user("u12@example.com", {"DisplayName": "User 12"})
    world.state.put_item(INTENT_KEY, {"kind": "user", "source_id": "e12", "name": "u12@example.com", "doc": {}})
    # When an operator provisions another user on demand
    world.source.users[3]["jobTitle"] = "Lead"
    outcome = world.service().provision("user", "e3")
    # Then the stopped cycle's create is recorded as e12's (not lost), and the intent is settled
    assert outcome.report is not None
    assert outcome.report.failures == ()
    assert world.state.users["e12"].target_id == created
    assert world.state.get_item(INTENT_KEY) is None


def _soft_delete(world: World, *user_ids: str) -> None:
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    for user_id in user_ids:
        source.users[:] = [u for u in source.users if u["id"] != user_id]
        for members in source.members.values():
            if user_id in members:
                members.remove(user_id)
        source.soft_deleted.add(user_id)


def test_restorable_users_outlive_a_tripped_guard_and_an_allowed_deletion_run() -> None:
    # Given three users moved to Entra's deleted items, enough membership removals to trip the guard (3 of 12,
    # above a floor lowered to this tiny tenant)
    world = delta_world(membership_removal_floor=2, max_membership_removal_percent=20.0)
    world.run()
    ids = {n: world.store.find_user(n) for n in ("u4@example.com", "u5@example.com", "u7@example.com")}
    _soft_delete(world, "e4", "e5", "e7")
    assert world.run().report.guard is not None
    # When the next (full) read follows the distrusted one, and an operator then allows deletions
    full = world.run()
    assert full.mode == "full"
    assert [op for op in full.plan.held_back if op.kind.value == "user"] == []
    world.run(allow_deletions=True)
    # Then the users are still there without memberships, and a restore brings the same ids back
    assert {n: world.store.find_user(n) for n in ids} == ids
    assert all(n not in world.store.members_of(f"Team {j}") for n in ids for j in range(3))
    base = tenant()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    source.users += [u for u in base.users if u["id"] in ("e4", "e5", "e7")]
    source.members.clear()
    source.members.update(base.members)
    source.soft_deleted.clear()
    world.run()
    assert {n: world.store.find_user(n) for n in ids} == ids
    assert "u4@example.com" in world.store.members_of("Team 1")


def test_a_soft_delete_first_seen_by_a_full_read_is_kept_for_the_grace_period() -> None:
    # Given a provisioned tenant, and a user moved to Entra's deleted items before a full read
    world = delta_world(max_deletion_percent=100.0)
    world.run()
    held = world.store.find_user("u4@example.com")
    _soft_delete(world, "e4")
    # When the full read runs
    outcome = world.run(force_full=True)
    # Then the user loses its memberships but keeps its object
    assert not [op for op in outcome.plan.operations if op.kind.value == "user" and op.action.value == "delete"]
    assert world.store.find_user("u4@example.com") == held
    assert "u4@example.com" not in world.store.members_of("Team 1")


def test_the_grace_period_counts_from_entra_deletion_time_once_a_full_read_knows_it() -> None:
    from datetime import timedelta

    # Given a user Entra soft-deleted 31 days before a delta read first reports it
    world = delta_world()
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    _soft_delete(world, "e4")
    source.deleted_at["e4"] = (world.clock.now() - timedelta(days=31)).isoformat()
    assert world.run().mode == "delta"
    assert world.store.find_user("u4@example.com") is not None
    # When the next full read lists Entra's deleted items with their deletion times
    world.run(force_full=True)
    # Then the grace period is counted from the deletion in Entra: it has passed, so the user is deleted
    assert world.store.find_user("u4@example.com") is None


def test_a_group_read_empty_costs_no_membership_and_the_next_cycle_reads_in_full_and_recovers() -> None:
    # Given 30 users in two groups of 15, provisioned
    base = tenant(users=30, groups=2)
    world = World(FakeDeltaSource(base.users, base.groups, base.members))
    world.run()
    source = world.source
    assert isinstance(source, FakeDeltaSource)
    members = list(source.members["g0"])
    # When a delta read answers Team 0 with no member while the group and every user stay (a glitch of Graph's)
    source.members["g0"] = []
    world.store.writes.clear()
    tripped = world.run()
    # Then no membership is removed, the guard names the group, and nothing the read said is kept
    assert tripped.mode == "delta"
    assert tripped.report.guard is not None
    assert tripped.report.guard.tripped == (GuardThreshold.EMPTIED_GROUPS,)
    assert tripped.report.guard.emptied_groups == ("Team 0",)
    assert len(tripped.plan.held_back) == 15
    lines = plan_lines(tripped.plan, show_all=False)
    assert lines[0] == "held back by the deletion guard (15, not applied):"
    assert lines[1].startswith("  why: 1 group(s) Entra still lists would lose all their managed members")
    assert lines[1].endswith(": Team 0")
    assert world.store.writes == []
    assert len(world.store.members_of("Team 0")) == 15
    # When Graph has recovered, the next cycle reads in full and plans no deletion
    source.members["g0"] = members
    after = world.run()
    assert after.mode == "full"
    assert after.report.guard is None
    assert after.plan.held_back == ()
    assert world.store.writes == []
    assert len(world.store.members_of("Team 0")) == 15
