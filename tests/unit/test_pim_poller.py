"""The PIM poller with the webhook down: no notification ever arrives, and access still lands within one poll
interval and ends at the grant's end. Each scenario asserts what IAM Identity Center holds, which grants and
schedules exist, and how many Graph requests a poll made."""

from __future__ import annotations

from datetime import timedelta

import pytest

from idsync.errors import DirectoryError
from idsync.model import OwnedGroup
from idsync.pim import stale_grants
from idsync.ports import GRANT_ACTIVE, AccessGrant, AssignmentInstance, Hint
from idsync.services.jit import JitService
from idsync.services.poller import PimPoller
from idsync.services.token_bucket import Wait
from tests.pim_world import ADA, BOB, CAROL, GROUP, T0, PimWorld

POLL = timedelta(minutes=1)
HOUR = 60


class FakeRetry:
    """``ports.HintRetry``: hints sent afresh with their delay."""

    def __init__(self) -> None:
        self.resent: list[tuple[Hint, int]] = []

    def delay(self, receipt_handle: str, seconds: int) -> None:
        raise AssertionError("the poller has no received message to hide")

    def resend(self, hint: Hint, seconds: int) -> None:
        self.resent.append((hint, seconds))


@pytest.fixture
def world() -> PimWorld:
    w = PimWorld()
    w.cycle()  # provisions the PIM group
    return w


def poller(world: PimWorld) -> tuple[PimPoller, FakeRetry]:
    retry = FakeRetry()
    return PimPoller(world.jit, retry), retry


def every_minute_until(world: PimWorld, minutes: float, poll: PimPoller) -> None:
    """The poller's schedule (and EventBridge Scheduler's expiries) until ``minutes`` after T0; no notification."""
    while world.clock.now() < T0 + timedelta(minutes=minutes):
        world.clock.current += POLL
        world.fire_due()
        poll.poll()


def test_an_activation_without_any_notification_lands_at_the_next_poll_and_ends_at_its_end(world: PimWorld) -> None:
    # Given the webhook is down: Ada activates for 30 minutes and no hint is ever sent
    poll, _ = poller(world)
    start = T0 + timedelta(seconds=5)
    world.clock.current = start
    world.graph.grant("i1", ADA, start, 30)
    assert not world.is_member(ADA)

    # When the poller runs on its schedule (the next run is within one interval)
    world.clock.current = T0 + POLL
    report = poll.poll()

    # Then she is a member, her grant is recorded and her expiry scheduled
    assert report.looked == [GROUP]
    assert world.is_member(ADA)
    assert world.phase(ADA) == GRANT_ACTIVE
    assert world.scheduler.of(ADA) == [start + timedelta(minutes=30)]
    # And at the grant's end (Graph drops her) the expiry removes her, and the poller finds nothing to do
    every_minute_until(world, 31, poll)
    world.graph.end("i1")
    every_minute_until(world, 33, poll)
    assert not world.is_member(ADA)
    assert world.phase(ADA) != GRANT_ACTIVE  # an ended marker at most, until a look sees Graph dropped her
    assert world.scheduler.of(ADA) == []


def test_a_lost_expiry_is_caught_by_the_next_poll(world: PimWorld) -> None:
    # Given Ada's activation applied by the poller, and her expiry schedule lost (its attempts failed)
    poll, _ = poller(world)
    world.graph.grant("i1", ADA, T0, 10)
    every_minute_until(world, 1, poll)
    assert world.is_member(ADA)
    world.scheduler.schedules.clear()

    # When the grant ends in Entra and a minute passes
    world.clock.current = T0 + timedelta(minutes=10)
    world.graph.end("i1")
    every_minute_until(world, 11, poll)

    # Then the poller removed her
    assert not world.is_member(ADA)
    assert world.phase(ADA) is None


def test_an_early_deactivation_is_removed_within_one_poll(world: PimWorld) -> None:
    poll, _ = poller(world)
    world.graph.grant("i1", ADA, T0, HOUR)
    every_minute_until(world, 1, poll)

    world.clock.current = T0 + timedelta(minutes=5, seconds=1)
    world.graph.end("i1")
    every_minute_until(world, 6, poll)

    assert not world.is_member(ADA)
    assert world.scheduler.of(ADA) == []


def test_an_extension_moves_the_expiry_at_the_next_poll(world: PimWorld) -> None:
    poll, _ = poller(world)
    world.graph.grant("i1", ADA, T0, 30)
    every_minute_until(world, 1, poll)

    world.graph.extend("i1", 30)
    every_minute_until(world, 2, poll)

    assert world.scheduler.of(ADA) == [T0 + timedelta(minutes=60)]
    assert world.is_member(ADA)


def test_a_poll_with_nothing_changed_reads_one_graph_request_per_group_and_writes_nothing(world: PimWorld) -> None:
    # Given Ada's activation already applied
    poll, _ = poller(world)
    world.graph.grant("i1", ADA, T0, HOUR)
    every_minute_until(world, 1, poll)
    reads, writes = world.graph.reads, len(world.identity.writes)

    # When the poller runs again
    world.clock.current += POLL
    report = poll.poll()

    # Then it read the group's instances once, looked at nothing and wrote nothing
    assert world.graph.reads - reads == 1
    assert report.looked == []
    assert len(world.identity.writes) == writes


def test_an_owner_activation_grants_no_membership_and_asks_for_no_look(world: PimWorld) -> None:
    # Given Carol activates ownership (accessId owner) of the PIM group
    poll, _ = poller(world)
    world.graph.grant("o1", CAROL, T0, HOUR, access_id="owner")

    # When the poller runs, and a worker looks at the group anyway
    world.clock.current += POLL
    report = poll.poll()
    world.look()

    # Then she is not a member and holds no grant or schedule
    assert report.looked == []
    assert not world.is_member(CAROL)
    assert world.phase(CAROL) is None
    assert world.scheduler.of(CAROL) == []


def test_activations_beyond_the_tokens_are_queued_as_hints_due_at_the_next_token(world: PimWorld) -> None:
    # Given three activations and no notification, and a bucket other groups' activations just spent
    poll, retry = poller(world)
    for n, user in enumerate([ADA, BOB, CAROL]):
        world.graph.grant(f"i{n}", user, T0, HOUR)
    world.clock.current += POLL
    while not isinstance(world.bucket.try_take(), Wait):
        pass

    # When the poller runs
    report = poll.poll()

    # Then the look waits for a token, and its hint is on the queue, due when the token is
    assert report.queued == [GROUP]
    [(hint, seconds)] = retry.resent
    assert (hint.group_id, hint.reason, seconds) == (GROUP, "poll", 2)


def test_a_group_graph_cannot_read_is_retried_next_time_and_the_others_go_on(world: PimWorld) -> None:
    # Given Graph failing the first read of a poll
    poll, _ = poller(world)
    world.graph.grant("i1", ADA, T0, HOUR)
    original = world.graph.instances
    calls = {"n": 0}

    def flaky(group_id: str, user_id: str | None = None) -> list[AssignmentInstance]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise DirectoryError("Graph answered 503")
        return original(group_id, user_id)

    world.graph.instances = flaky  # type: ignore[method-assign]

    # When two polls run
    world.clock.current += POLL
    first = poll.poll()
    world.clock.current += POLL
    second = poll.poll()

    # Then the first logged the failure, the second applied the activation
    assert first.failed == {GROUP: "Graph answered 503"}
    assert second.looked == [GROUP]
    assert world.is_member(ADA)


def _instance(instance_id: str, user: str, minutes: float, access: str = "member") -> AssignmentInstance:
    return AssignmentInstance(
        instance_id, user, GROUP, access, "activated", "direct", T0, T0 + timedelta(minutes=minutes)
    )


def _grant(user: str, *ids: str, minutes: float) -> AccessGrant:
    return AccessGrant(GROUP, user, ids, T0 + timedelta(minutes=minutes), False, T0.isoformat())


@pytest.mark.parametrize(
    ("instances", "records", "stale"),
    [
        ([], {}, False),
        ([_instance("i1", ADA, 60)], {}, True),  # not applied
        ([_instance("i1", ADA, 60)], {ADA: _grant(ADA, "i1", minutes=60)}, False),  # applied
        ([_instance("i1", ADA, 90)], {ADA: _grant(ADA, "i1", minutes=60)}, True),  # extended
        ([_instance("i1", ADA, 60), _instance("i2", ADA, 60)], {ADA: _grant(ADA, "i1", minutes=60)}, True),
        ([], {ADA: _grant(ADA, "i1", minutes=60)}, True),  # ended early
        ([_instance("o1", ADA, 60, access="owner")], {}, False),  # ownership grants nothing
    ],
)
def test_stale_grants_reads_only_instances_and_grants(
    instances: list[AssignmentInstance], records: dict[str, AccessGrant], stale: bool
) -> None:
    assert bool(stale_grants(instances, records, T0 + timedelta(minutes=1))) is stale


def test_150_pim_groups_are_polled_one_request_each_and_an_activation_in_any_lands(world: PimWorld) -> None:
    # Given 150 PIM groups (past Graph's 100 subscriptions), all provisioned, and no notification at all
    groups = [GROUP] + [f"7a000000-0000-4000-8000-{n:012d}" for n in range(149)]
    for n, group in enumerate(groups[1:]):
        target = world.identity.create_group(f"AWS account {n:03d} Admin", None)
        world.state.record_group(OwnedGroup(group, target, f"AWS account {n:03d} Admin"))
    jit = world.jit
    service = JitService(
        world.graph, world.identity, world.state, world.state, jit.bucket, jit.scheduler,
        jit.user_mapper, jit.scope, world.clock, groups,
    )  # fmt: skip
    poll = PimPoller(service, FakeRetry())
    late = groups[120]
    world.graph.grant("i1", BOB, T0, 30, group=late)

    # When the poller runs once
    reads = world.graph.reads
    world.clock.current = T0 + POLL
    report = poll.poll()

    # Then it read each group's instances once, looked at the one group that changed, and Bob is a member there
    assert report.polled == 150
    assert report.looked == [late]
    assert world.graph.reads - reads == 150 + 2  # the look re-reads the group's members and instances
    assert BOB in world.state.owned_memberships(late)
    assert world.scheduler.of(BOB) == [T0 + timedelta(minutes=30)]
