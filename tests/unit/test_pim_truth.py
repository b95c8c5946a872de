"""PIM access has one truth: the worker, the expiry and the sync cycle decide a PIM group's memberships by the
same rule, one at a time. Each scenario reproduces a way two writers used to disagree and asserts what IAM
Identity Center holds, and which grants and schedules exist, afterwards."""

from __future__ import annotations

from datetime import timedelta

import pytest

from idsync.model import Status
from idsync.ports import GRANT_ACTIVE, GRANT_ENDED
from tests.pim_world import ADA, BOB, CAROL, GROUP, T0, PimWorld

HOUR = 60


@pytest.fixture
def world() -> PimWorld:
    w = PimWorld()
    w.cycle()  # provisions the PIM group (and, in scope "all", every user)
    return w


def end_of(minutes: float) -> object:
    return T0 + timedelta(minutes=minutes)


# --------------------------------------------------------------------------- access outlives the grant


def test_1_a_look_after_an_expiry_does_not_re_add_a_user_graph_still_lists(world: PimWorld) -> None:
    # Given Ada's hour-long activation applied by the worker
    world.graph.grant("i1", ADA, T0, HOUR)
    world.look()
    assert world.is_member(ADA)
    # When it ends and the expiry removes her while Graph still lists her (its member list lags)
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1", unlist=False)
    world.fire_due()
    assert not world.is_member(ADA)
    spent = world.tokens_spent()
    # and Bob's activation, a duplicate and a replayed notification make the worker look at the group
    world.graph.grant("i2", BOB, world.clock.now(), HOUR)
    world.look()
    world.look()
    world.look()

    # Then Ada stays out, with only an ended marker and no schedule, and only Bob's activation spent a token
    assert not world.is_member(ADA)
    assert world.is_member(BOB)
    assert world.phase(ADA) == GRANT_ENDED
    assert world.scheduler.of(ADA) == []
    assert world.tokens_spent() == spent + 1
    # When Graph finally drops her, the marker goes and she is still out
    world.graph.unlist(GROUP, ADA)
    world.look()
    assert world.phase(ADA) is None
    assert not world.is_member(ADA)


def test_2_a_cycle_between_the_expiry_and_graph_catching_up_does_not_re_add(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.look()
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1", unlist=False)
    world.fire_due()
    before = len(world.identity.writes)

    # When a delta and then a full cycle run while Graph still lists Ada
    world.cycle()
    world.cycle(full=True)

    # Then neither re-creates the membership the expiry removed
    assert not world.is_member(ADA)
    assert world.phase(ADA) == GRANT_ENDED
    assert world.scheduler.of(ADA) == []
    assert "CreateGroupMembership" not in world.identity.writes[before:]


def test_3_a_grant_the_cycle_applied_ends_at_its_end(world: PimWorld) -> None:
    # Given Ada activated and the notification was lost: the cycle applies it
    world.graph.grant("i1", ADA, T0, HOUR)
    world.clock.advance(10 * 60)
    world.cycle()
    grant = world.state.grant(GROUP, ADA)
    assert grant is not None
    assert (grant.phase, grant.standing, grant.end) == (GRANT_ACTIVE, False, end_of(HOUR))

    # When the grant's end comes (Graph not caught up yet), its schedule fires
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1", unlist=False)
    world.fire_due()

    # Then her access ends with it
    assert not world.is_member(ADA)
    assert world.scheduler.of(ADA) == []


def test_3_a_schedule_that_failed_after_the_membership_write_is_re_armed_by_the_cycle(world: PimWorld) -> None:
    # Given the worker applied Ada's activation but EventBridge Scheduler refused the schedule once
    world.graph.grant("i1", ADA, T0, HOUR)
    world.scheduler.fail_next = 1
    outcome = world.look()
    assert world.is_member(ADA)
    assert [user for user, _ in outcome.failed] == [ADA]
    assert world.scheduler.of(ADA) == []
    # the grant is recorded as a grant, not as a standing membership
    grant = world.state.grant(GROUP, ADA)
    assert grant is not None
    assert grant.standing is False

    # When the next cycle runs, it re-arms the schedule
    world.clock.advance(5 * 60)
    world.cycle()
    assert world.scheduler.of(ADA) == [end_of(HOUR)]

    # Then the end removes her
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1")
    world.fire_due()
    assert not world.is_member(ADA)


def test_4_an_expiry_that_fires_early_re_arms_its_schedule(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.look()

    # When the schedule fires 30 s before the end (clock skew): EventBridge deletes it once fired
    world.clock.current = T0 + timedelta(minutes=HOUR) - timedelta(seconds=30)
    [schedule] = world.scheduler.schedules
    world.jit.expire(*world.scheduler.fire(schedule))

    # Then Ada keeps her access and a schedule exists again, never before the end
    assert world.is_member(ADA)
    [(_, _, again)] = world.scheduler.schedules
    assert again >= end_of(HOUR)
    # and when it fires after the end, she is removed
    world.clock.current = again
    world.graph.end("i1")
    world.fire_due()
    assert not world.is_member(ADA)
    assert world.scheduler.schedules == set()


def test_4_a_duplicate_expiry_delivery_is_harmless(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.look()
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1")
    first = world.jit.expire(GROUP, ADA)
    writes = list(world.identity.writes)

    second = world.jit.expire(GROUP, ADA)

    assert first.removals == [ADA]
    assert second.removals == []
    assert world.identity.writes == writes
    assert world.state.grant(GROUP, ADA) is None


def test_5_a_lost_notification_is_applied_by_the_cycle_with_its_grant_and_expiry(world: PimWorld) -> None:
    # Given Ada activated and no notification arrived (the webhook was down)
    world.graph.grant("i1", ADA, T0, HOUR)

    # When the cycle runs ten minutes later
    world.clock.advance(10 * 60)
    outcome = world.cycle()

    # Then it applied the activation, spent one token, recorded the grant and scheduled its expiry
    assert outcome.report is not None
    assert world.is_member(ADA)
    assert world.tokens_spent() == 1
    assert world.phase(ADA) == GRANT_ACTIVE
    assert world.scheduler.of(ADA) == [end_of(HOUR)]
    assert ("membership", "create") in [
        (e.kind, e.action) for e in world.state.logs if e.cycle_id == outcome.report.cycle_id
    ]


# --------------------------------------------------------------------------- access cut while granted, other faults


def test_6_a_cycle_that_read_before_an_activation_deletes_neither_the_membership_nor_the_user() -> None:
    # Given only the PIM group's members are in scope, and the group is provisioned with nobody in it
    world = PimWorld(assigned=True)
    world.cycle()
    assert world.target_id(ADA) is None

    # When a cycle reads Entra just before Ada's activation, and the worker applies it before the cycle writes
    def activation_during_the_cycle() -> None:
        world.graph.grant("i1", ADA, T0, HOUR)
        world.look()

    world.source.after_read = activation_during_the_cycle
    outcome = world.cycle()

    # Then Ada and her membership survive the stale cycle, with the same UserId
    assert world.is_member(ADA)
    target = world.target_id(ADA)
    assert target is not None
    assert outcome.report is not None
    kept = [e for e in world.state.logs if e.cycle_id == outcome.report.cycle_id and e.source_id == ADA]
    assert [(e.kind, e.action, e.status) for e in kept] == [("user", "delete", Status.SKIPPED)]
    assert kept[0].error == "kept: holds an active PIM grant"
    # and the next cycle, which sees the activation, keeps her too
    world.cycle()
    assert world.is_member(ADA)
    assert world.target_id(ADA) == target


def test_6_user_deletions_wait_while_another_writer_holds_a_pim_group() -> None:
    world = PimWorld(assigned=True)
    world.graph.listed[GROUP] = {BOB}
    world.cycle()
    world.clock.advance(11 * 60)
    world.cycle()  # Bob's sighting settled: a permanent member
    assert world.is_member(BOB)
    world.graph.listed[GROUP] = set()
    # When a worker holds the group's lease while the cycle wants to delete Bob (out of scope now)
    world.state.acquire_lease(f"pim:{GROUP}", "a-worker", world.clock.now(), 60)
    world.cycle()
    # Then Bob is not deleted this cycle; the next one, with the group free, does it
    assert world.target_id(BOB) is not None
    world.state.release_lease(f"pim:{GROUP}", "a-worker")
    world.cycle()
    assert world.target_id(BOB) is None


def test_7_one_refused_user_blocks_nobody_and_burns_no_token(world: PimWorld) -> None:
    # Given Identity Store refuses Ada's user (and she is not provisioned yet), while Bob and Carol activate too
    world.identity.users.pop(world.target_id(ADA) or "")
    world.state.users.pop(ADA)
    world.identity.fail_on[world.user_name(ADA)] = "ValidationException: invalid attribute"
    for n, user in enumerate((ADA, BOB, CAROL)):
        world.graph.grant(f"i{n}", user, T0, HOUR)

    outcome = world.look()

    # Then Bob and Carol are applied, Ada's failure is logged against her user, and only two tokens are spent
    assert sorted(a.user_id for a in outcome.activations) == sorted([BOB, CAROL])
    assert world.is_member(BOB)
    assert world.is_member(CAROL)
    assert not world.is_member(ADA)
    assert [u for u, _ in outcome.failed] == [ADA]
    failures = [(e.kind, e.action, e.source_id) for e in world.state.logs if e.status is Status.FAILURE]
    assert failures == [("user", "create", ADA)]
    assert world.tokens_spent() == 2
    # and retrying her costs no token either
    world.look()
    assert world.tokens_spent() == 2


def test_7_a_refused_membership_is_logged_against_the_membership(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.identity.fail_on[""] = "AccessDenied"  # memberships carry no name: every membership write fails

    outcome = world.look()

    assert [u for u, _ in outcome.failed] == [ADA]
    failures = [(e.kind, e.action, e.source_id) for e in world.state.logs if e.status is Status.FAILURE]
    assert failures == [("membership", "create", f"{GROUP}:{ADA}")]
    assert world.tokens_spent() == 0


def test_8_two_concurrent_looks_spend_one_token_and_keep_the_user_document(world: PimWorld) -> None:
    world.identity.users.pop(world.target_id(ADA) or "")
    world.state.users.pop(ADA)
    world.graph.grant("i1", ADA, T0, HOUR)
    second: list[object] = []

    # When a second look of the group starts while the first one is reading Graph
    original = world.graph.members

    def members(group_id: str) -> set[str]:
        if not second:
            second.append(world.look())
        return original(group_id)

    world.graph.members = members  # type: ignore[method-assign]
    world.look()

    # Then the second found the group busy and comes back; one token was spent; Ada's document is the real one
    assert second[0].busy is True
    assert world.tokens_spent() == 1
    assert world.is_member(ADA)
    assert world.state.users[ADA].doc != {}
    assert world.state.users[ADA].doc == world.identity.users[world.target_id(ADA) or ""]["doc"]


def test_8_a_look_that_loses_the_lease_race_writes_nothing(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.state.lose_lease_races = 1

    outcome = world.look()

    assert outcome.busy
    assert outcome.wait_seconds is not None
    assert not world.is_member(ADA)
    assert world.tokens_spent() == 0


@pytest.mark.parametrize(
    ("change", "why"),
    [({"accountEnabled": False}, "disabled"), ({"department": "Sales"}, "out of scope")],
)
def test_9_a_provisioned_user_who_is_disabled_or_out_of_scope_gets_no_membership(
    change: dict[str, object], why: str
) -> None:
    world = PimWorld(
        scope={
            "mode": "all",
            "user_filters": [[{"attribute": "department", "operator": "EQUALS", "value": "Engineering"}]],
        }
    )
    world.cycle()
    assert world.target_id(ADA) is not None
    # Given Ada, already provisioned, is disabled (or leaves the scope) in Entra, then activates
    world.graph.users[ADA].update(change)
    world.graph.grant("i1", ADA, T0, HOUR)

    outcome = world.look()

    # Then no membership, no token, no grant, and the refusal is logged with its reason
    assert not world.is_member(ADA)
    assert world.tokens_spent() == 0
    assert world.state.grant(GROUP, ADA) is None
    assert [u for u, _ in outcome.refused] == [ADA]
    assert why in outcome.refused[0][1]


# --------------------------------------------------------------------------- permanent members


def test_a_permanent_member_is_added_once_settled_and_stays_while_listed(world: PimWorld) -> None:
    world.graph.listed[GROUP] = {BOB}
    world.cycle()
    assert not world.is_member(BOB)  # sighted: Graph's list may be lagging behind an ended activation
    world.clock.advance(10 * 60)
    world.cycle()
    assert world.is_member(BOB)
    assert world.state.grant(GROUP, BOB) is None
    assert world.tokens_spent() == 0  # not an activation
    # an activation on top, and its end, leave the permanent membership alone
    world.graph.grant("i1", BOB, world.clock.now(), HOUR)
    world.look()
    world.clock.advance(HOUR * 60 + 30)
    world.graph.end("i1", unlist=False)
    world.fire_due()
    assert world.is_member(BOB)
    # when Graph stops listing him, he goes
    world.graph.unlist(GROUP, BOB)
    world.look()
    assert not world.is_member(BOB)


def test_a_listing_explained_by_an_ended_instance_never_admits_however_long_graph_lags(world: PimWorld) -> None:
    # Given Ada's 5-minute activation that idsync never applied (its notification lost), ended while Graph
    # still shows the instance and still lists her
    world.graph.grant("i1", ADA, T0, 5)
    world.clock.advance(5 * 60)
    world.look()
    assert not world.is_member(ADA)
    assert world.phase(ADA) == GRANT_ENDED  # the ended instance explains the listing

    # When the instance disappears from Graph while its member list keeps lagging past the settle time
    world.graph.end("i1", unlist=False)
    for _ in range(3):
        world.clock.advance(10 * 60)
        world.look()
        world.cycle()

    # Then no look and no cycle admitted her, no token was spent and no expiry is scheduled
    assert not world.is_member(ADA)
    assert world.phase(ADA) == GRANT_ENDED
    assert world.tokens_spent() == 0
    assert world.scheduler.of(ADA) == []
    # When Graph catches up, the marker goes
    world.graph.unlist(GROUP, ADA)
    world.look()
    assert world.phase(ADA) is None
    # and a later permanent membership is admitted once it settles, an activation at once
    world.graph.listed[GROUP].add(ADA)
    world.look()
    world.clock.advance(10 * 60)
    world.look()
    assert world.is_member(ADA)
    assert world.state.grant(GROUP, ADA) is None
    world.graph.grant("i2", BOB, world.clock.now(), HOUR)
    world.clock.advance(HOUR * 60 + 30)  # Bob's instance ended before any look: Graph still shows it
    world.look()
    assert not world.is_member(BOB)
    world.graph.grant("i3", BOB, world.clock.now(), HOUR)
    world.look()
    assert world.is_member(BOB)
    assert world.phase(BOB) == GRANT_ACTIVE


def test_a_permanent_member_whose_own_activation_ended_stays_while_graph_shows_the_ended_instance(
    world: PimWorld,
) -> None:
    world.graph.listed[GROUP] = {BOB}
    world.cycle()
    world.clock.advance(10 * 60)
    world.cycle()
    assert world.is_member(BOB)
    # an activation on top ends; Graph keeps showing the ended instance
    world.graph.grant("i1", BOB, world.clock.now(), HOUR)
    world.look()
    world.clock.advance(HOUR * 60 + 30)
    world.fire_due()
    world.look()
    world.cycle()
    assert world.is_member(BOB)
    assert world.phase(BOB) is None


def test_a_permanent_assignment_without_end_is_never_scheduled(world: PimWorld) -> None:
    world.graph.grant("p1", ADA, T0, None, assignment_type="assigned")
    world.look()
    assert world.is_member(ADA)
    assert world.scheduler.schedules == set()
    grant = world.state.grant(GROUP, ADA)
    assert grant is not None
    assert grant.end is None


# --------------------------------------------------------------------------- outages and contention


def test_an_expiry_that_finds_the_group_busy_fires_again_a_minute_later(world: PimWorld) -> None:
    world.graph.grant("i1", ADA, T0, HOUR)
    world.look()
    world.clock.current = T0 + timedelta(minutes=HOUR, seconds=30)
    world.graph.end("i1")
    world.state.acquire_lease(f"pim:{GROUP}", "a-worker", world.clock.now(), 20)

    [busy] = world.fire_due()

    assert busy.busy
    assert world.is_member(ADA)
    assert world.scheduler.of(ADA) == [world.clock.now() + timedelta(minutes=1)]
    # a minute later the group is free and the re-armed expiry removes her
    world.clock.advance(60)
    world.fire_due()
    assert not world.is_member(ADA)


def test_graph_down_during_the_pim_pass_keeps_the_cycle_s_own_work(world: PimWorld) -> None:
    from idsync.errors import DirectoryError

    def down(group_id: str) -> set[str]:
        raise DirectoryError("Graph answered 503")

    world.graph.members = down  # type: ignore[method-assign]
    world.graph.users[BOB]["jobTitle"] = "Engineer"

    outcome = world.cycle()

    assert outcome.report is not None
    assert outcome.report.complete
    assert "UpdateUser" in world.identity.writes
