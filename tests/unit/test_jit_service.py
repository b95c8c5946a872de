"""The JIT service over in-memory ports: activations, early deactivation, expiry, extension, overlapping
grants, duplicate and forged hints, refusals. Graph's truth is set explicitly in each test."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from idsync.config import MappingSettings, ScopeSettings
from idsync.mapping import build_mappers
from idsync.model import OwnedGroup, OwnedMembership, OwnedUser, User, freeze_doc
from idsync.pim import Facts, grant_terms, judge, judge_group
from idsync.plan import desired_doc_for_create
from idsync.ports import GRANT_ACTIVE, GRANT_ENDED, GRANT_SIGHTED, AccessGrant, AssignmentInstance
from idsync.scope import build_scope
from idsync.services.jit import JitService
from idsync.services.token_bucket import BucketPolicy, TokenBucket, Wait
from sandbox.jit_local import MemoryBucketStore
from tests.fakes import FakeClock, FakeIdentityStore, FakePimGraph, FakeScheduler, JitState

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GROUP = "0e6a1f3c-8d2b-4a7e-b5c9-2f4d6e8a0b1c"
OTHER_GROUP = "9b2c4d6e-1f3a-4b5c-8d7e-6f5a4b3c2d1e"
ADA = "6d1e3f5a-7b9c-4d2e-8f0a-3c5e7a9b1d2f"
BOB = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


# --------------------------------------------------------------------------- fakes


FakeGraph = FakePimGraph


@dataclass
class World:
    graph: FakeGraph
    identity: FakeIdentityStore
    state: JitState
    scheduler: FakeScheduler
    clock: FakeClock
    bucket_store: MemoryBucketStore
    service: JitService
    group_target: str

    def members_in_identity_center(self) -> set[str]:
        return self.identity.members_of("AWS PIM Production Admin")

    def writes(self) -> list[str]:
        return list(self.identity.writes)

    def drain_bucket(self) -> None:
        while not isinstance(self.service.bucket.try_take(), Wait):
            pass


def make_world(scope: dict[str, Any] | None = None, groups: tuple[str, ...] = (GROUP,)) -> World:
    graph = FakeGraph(GROUP)
    graph.add_user(ADA, "Ada Lovelace", department="Engineering")
    graph.add_user(BOB, "Bob Dylan", department="Engineering")
    identity = FakeIdentityStore()
    group_target = identity.create_group("AWS PIM Production Admin", None)
    identity.writes.clear()
    state = JitState()
    state.record_group(OwnedGroup(GROUP, group_target, "AWS PIM Production Admin", None, ""))
    clock = FakeClock(T0)
    user_mapper, _ = build_mappers(MappingSettings())
    store = MemoryBucketStore()
    scheduler = FakeScheduler()
    service = JitService(
        graph,
        identity,
        state,
        state,
        TokenBucket(store, clock, BucketPolicy()),
        scheduler,
        user_mapper,
        build_scope(ScopeSettings.model_validate(scope or {"mode": "all"})),
        clock,
        groups,
    )
    return World(graph, identity, state, scheduler, clock, store, service, group_target)


@pytest.fixture
def world() -> World:
    return make_world()


def present(world: World, user_id: str) -> bool:
    return (GROUP, user_id) in world.state.memberships and world.graph.users[user_id][
        "userPrincipalName"
    ] in world.members_in_identity_center()


# --------------------------------------------------------------------------- decide (pure)


def instance(instance_id: str, user_id: str, minutes: float | None) -> AssignmentInstance:
    end = T0 + timedelta(minutes=minutes) if minutes is not None else None
    return AssignmentInstance(instance_id, user_id, GROUP, "member", "activated", "direct", T0, end)


def grant_of(*ids: str, end_minutes: float | None = 60, standing: bool = False) -> AccessGrant:
    end = T0 + timedelta(minutes=end_minutes) if end_minutes is not None else None
    return AccessGrant(GROUP, ADA, tuple(ids), end, standing, T0.isoformat())


def ended(*ids: str) -> AccessGrant:
    return replace(grant_of(*ids), phase=GRANT_ENDED)


def sighted(minutes_ago: float) -> AccessGrant:
    return AccessGrant(GROUP, ADA, (), None, True, (T0 - timedelta(minutes=minutes_ago)).isoformat(), GRANT_SIGHTED)


@pytest.mark.parametrize(
    ("listed", "active", "record", "member", "be_member", "keeps"),
    [
        # a new activation: a member, and an active grant
        (True, [instance("i1", ADA, 60)], None, False, True, GRANT_ACTIVE),
        # an activation Graph does not list yet: the instance is enough
        (False, [instance("i1", ADA, 60)], None, False, True, GRANT_ACTIVE),
        # an activation after an ended one: the marker gives way to a new grant
        (True, [instance("i2", ADA, 60)], ended("i1"), False, True, GRANT_ACTIVE),
        # held and unchanged, or extended: stays a member
        (True, [instance("i1", ADA, 60)], grant_of("i1"), True, True, GRANT_ACTIVE),
        (True, [instance("i1", ADA, 90)], grant_of("i1"), True, True, GRANT_ACTIVE),
        # the instances ended: out, even while Graph still lists her (an ended marker), forgotten once unlisted
        (True, [], grant_of("i1"), True, False, GRANT_ENDED),
        (False, [], grant_of("i1"), True, False, None),
        # an ended marker while Graph lags: never re-added; dropped once Graph stops listing
        (True, [], ended("i1"), False, False, GRANT_ENDED),
        (False, [], ended("i1"), False, False, None),
        # a standing (permanent) member whose activation ended: stays while listed
        (True, [], grant_of("i1", standing=True), True, True, None),
        (False, [], grant_of("i1", standing=True), True, False, None),
        # a permanent member idsync holds: kept while listed, removed when not
        (True, [], None, True, True, None),
        (False, [], None, True, False, None),
        # a new permanent member: sighted first, a member once the sighting settled
        (True, [], None, False, False, GRANT_SIGHTED),
        (True, [], sighted(5), False, False, GRANT_SIGHTED),
        (True, [], sighted(10), False, True, None),
        (False, [], sighted(5), False, False, None),
        # nothing at all
        (False, [], None, False, False, None),
    ],
)
def test_the_rule(
    listed: bool,
    active: list[AssignmentInstance],
    record: AccessGrant | None,
    member: bool,
    be_member: bool,
    keeps: str | None,
) -> None:
    verdict = judge(GROUP, Facts(ADA, listed, tuple(active), record, member), T0)
    assert verdict.member is be_member
    assert (verdict.record.phase if verdict.record else None) == keeps


def test_a_listed_user_whose_only_visible_instances_ended_is_never_admitted() -> None:
    late = T0 + timedelta(minutes=90)
    gone = instance("i1", ADA, 60)  # ended at T0+60, Graph still shows it
    # no record, a sighting, or nothing but the listing left: an ended marker, not a member, at any lag
    for record in (None, sighted(5), sighted(60)):
        [(facts, verdict)] = judge_group(GROUP, {ADA}, [gone], {ADA: record} if record else {}, set(), late)
        assert facts.ended == (gone,)
        assert verdict.member is False
        assert verdict.record is not None
        assert (verdict.record.phase, verdict.record.instance_ids) == (GRANT_ENDED, ("i1",))
        assert verdict.record.end == T0 + timedelta(minutes=60)
        assert verdict.record.active is False
    # the marker keeps her out once the instance disappears while Graph still lists her
    marker = judge(GROUP, Facts(ADA, True, (), None, False, ended=(gone,)), late).record
    assert marker is not None
    kept = judge(GROUP, Facts(ADA, True, (), marker, False), late + timedelta(hours=5))
    assert (kept.member, kept.record) == (False, marker)
    # a membership idsync holds (a permanent member whose activation ended) stays; a new activation gets in
    assert judge(GROUP, Facts(ADA, True, (), None, True, ended=(gone,)), late).member is True
    fresh = AssignmentInstance("i2", ADA, GROUP, "member", "activated", "direct", late, late + timedelta(hours=1))
    again = judge_group(GROUP, {ADA}, [gone, fresh], {ADA: marker}, set(), late)[0][1]
    assert again.member is True
    assert again.record is not None
    assert again.record.phase == GRANT_ACTIVE
    # an ended owner instance explains nothing: the listing is a sighting
    owner = replace(gone, access_id="owner")
    assert judge_group(GROUP, {ADA}, [owner], {}, set(), late)[0][1].why == "sighted"


def test_an_owner_instance_grants_nothing() -> None:
    owner = AssignmentInstance("o1", ADA, GROUP, "owner", "activated", "direct", T0, T0 + timedelta(hours=1))
    assert judge_group(GROUP, set(), [owner], {}, set(), T0) == []
    [(facts, verdict)] = judge_group(GROUP, {ADA}, [owner], {}, {ADA}, T0)
    assert facts.active == ()
    assert verdict.record is None  # a permanent member: the owner instance made no grant


def test_a_user_who_cannot_be_provisioned_never_gets_in_but_keeps_a_held_membership() -> None:
    refused = judge(GROUP, Facts(ADA, True, (instance("i1", ADA, 60),), None, False, "disabled"), T0)
    assert refused.member is False
    assert refused.record is None
    held = judge(GROUP, Facts(ADA, True, (instance("i1", ADA, 60),), None, True, None), T0)
    assert held.member is True
    assert held.record is not None
    assert held.record.standing is True  # she was a member before idsync saw an instance


def test_a_grant_ends_with_its_last_instance_and_never_when_one_is_permanent() -> None:
    two = grant_terms(GROUP, ADA, [instance("b", ADA, 90), instance("a", ADA, 30)], False, T0.isoformat())
    assert two.instance_ids == ("a", "b")
    assert two.end == T0 + timedelta(minutes=90)
    permanent = grant_terms(GROUP, ADA, [instance("a", ADA, 30), instance("p", ADA, None)], False, T0.isoformat())
    assert permanent.end is None


# --------------------------------------------------------------------------- activations


def test_an_activation_provisions_the_user_adds_the_membership_and_schedules_the_expiry(world: World) -> None:
    # Given Ada activated for an hour 3 seconds ago and is not in IAM Identity Center
    world.graph.grant("i1", ADA, T0 - timedelta(seconds=3), 60)

    # When the worker looks at the group
    outcome = world.service.look(GROUP)

    # Then Ada exists and is a member, recorded exactly as a sync cycle records a created user
    assert world.writes() == ["CreateUser", "CreateGroupMembership"]
    assert present(world, ADA)
    owned = world.state.users[ADA]
    user = world.service.user_mapper.map(world.graph.users[ADA])
    assert isinstance(user, User)
    assert owned.doc == freeze_doc(desired_doc_for_create(user, {}))
    assert owned.fingerprint == user.fingerprint()
    assert owned.user_name == "ada@contoso.example"
    # and the grant and its expiry (at the instance's end) are recorded
    end = T0 - timedelta(seconds=3) + timedelta(minutes=60)
    assert world.state.granted[(GROUP, ADA)].instance_ids == ("i1",)
    assert world.state.granted[(GROUP, ADA)].end == end
    assert world.state.granted[(GROUP, ADA)].standing is False
    assert world.scheduler.of(ADA) == [end]
    # and the outcome and the provisioning log say so, under a jit cycle id
    assert [a.user_id for a in outcome.activations] == [ADA]
    assert outcome.activations[0].latency_seconds == pytest.approx(3.0)
    assert outcome.activations[0].provisioned_user
    logged = [(e.kind, e.action, e.cycle_id) for e in world.state.logs]
    assert logged == [("user", "create", outcome.cycle_id), ("membership", "create", outcome.cycle_id)]
    assert outcome.cycle_id.startswith("jit-")
    assert world.state.logs[1].name == "AWS PIM Production Admin <- ada@contoso.example"


def test_a_user_already_provisioned_only_gets_the_membership(world: World) -> None:
    # Given Bob is already provisioned by the sync cycle
    bob_target = world.identity.create_user("bob@contoso.example", {"DisplayName": "Bob Dylan"})
    world.identity.writes.clear()
    world.state.record_user(OwnedUser(BOB, bob_target, "bob@contoso.example", {"DisplayName": "Bob Dylan"}))
    world.graph.grant("i1", BOB, T0, 30)

    world.service.look(GROUP)

    assert world.writes() == ["CreateGroupMembership"]
    assert present(world, BOB)


def test_a_user_holding_the_username_is_adopted_and_left_for_the_cycle_to_update(world: World) -> None:
    # Given IAM Identity Center already holds Ada's userName (made by hand), and the membership too
    existing = world.identity.create_user("ada@contoso.example", {"DisplayName": "Old Name"})
    world.identity.create_membership(world.group_target, existing)
    world.identity.writes.clear()
    world.graph.grant("i1", ADA, T0, 30)

    world.service.look(GROUP)

    # Then both are adopted without a write; the user's document is recorded empty so the next cycle rewrites it
    assert world.writes() == []
    assert world.state.users[ADA].target_id == existing
    assert world.state.users[ADA].doc == {}
    assert [(e.kind, e.action) for e in world.state.logs] == [("user", "adopt"), ("membership", "adopt")]
    assert (GROUP, ADA) in world.state.memberships


@pytest.mark.parametrize(
    ("change", "scope", "reason"),
    [
        ({"accountEnabled": False}, None, "the account is disabled in Entra"),
        ({"givenName": None}, None, "attribute name.givenName: is required by IAM Identity Center"),
        (
            {},
            {"mode": "all", "user_filters": [[{"attribute": "department", "operator": "EQUALS", "value": "Sales"}]]},
            "out of scope",
        ),
    ],
)
def test_a_user_who_cannot_be_provisioned_is_refused_without_spending_a_token(
    change: dict[str, Any], scope: dict[str, Any] | None, reason: str
) -> None:
    world = make_world(scope)
    world.graph.users[ADA].update(change)
    world.graph.grant("i1", ADA, T0, 30)

    outcome = world.service.look(GROUP)

    # Then nothing is written, the refusal is logged with its reason, and every token is still there
    assert world.writes() == []
    assert outcome.refused[0][0] == ADA
    assert reason in outcome.refused[0][1]
    assert [(e.kind, e.action, e.status.value) for e in world.state.logs] == [("user", "skip", "skipped")]
    assert world.state.logs[0].error is not None
    assert reason in world.state.logs[0].error
    assert world.bucket_store.load("activations") is None  # never taken from


def test_a_group_not_provisioned_yet_is_left_to_the_sync_cycle() -> None:
    world = make_world()
    world.state.groups.clear()
    world.graph.grant("i1", ADA, T0, 30)

    outcome = world.service.look(GROUP)

    assert outcome.ignored is not None
    assert "not provisioned" in outcome.ignored
    assert world.writes() == []
    assert world.bucket_store.load("activations") is None


def test_a_hint_for_a_group_that_is_not_a_pim_group_is_ignored(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 30, group=OTHER_GROUP)

    outcome = world.service.look(OTHER_GROUP)

    assert outcome.ignored == "not a configured PIM group"
    assert world.graph.reads == 0
    assert world.writes() == []


def test_without_a_token_the_activation_waits_exactly_until_the_next_one(world: World) -> None:
    # Given every token was spent just now
    world.drain_bucket()
    world.graph.grant("i1", ADA, T0, 30)

    # When the worker looks
    outcome = world.service.look(GROUP)

    # Then nothing is written and the hint must come back when the next token is due (2 s at 5 per 10 s)
    assert world.writes() == []
    assert outcome.wait_seconds == pytest.approx(2.0)
    # and two seconds later the same look applies it
    world.clock.advance(2.0)
    assert [a.user_id for a in world.service.look(GROUP).activations] == [ADA]
    assert present(world, ADA)


# --------------------------------------------------------------------------- duplicates and forgeries


def test_a_duplicate_notification_applies_once(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 30)
    world.service.look(GROUP)
    writes, logs, grant_writes, calls = (
        world.writes(),
        len(world.state.logs),
        world.state.grant_writes,
        world.scheduler.calls[:],
    )

    # When the same notification arrives again
    second = world.service.look(GROUP)

    # Then it finds nothing to do: no write anywhere
    assert second.activations == []
    assert second.moved == 0
    assert world.writes() == writes
    assert len(world.state.logs) == logs
    assert world.state.grant_writes == grant_writes
    assert world.scheduler.calls == calls


def test_a_forged_notification_only_causes_a_re_read(world: World) -> None:
    # Given a group with an applied activation and a permanent member the cycle manages
    world.graph.grant("i1", ADA, T0, 30)
    world.service.look(GROUP)
    bob_target = world.identity.create_user("bob@contoso.example", {"DisplayName": "Bob Dylan"})
    membership = world.identity.create_membership(world.group_target, bob_target)
    world.state.record_user(OwnedUser(BOB, bob_target, "bob@contoso.example", {}))
    world.state.record_membership(OwnedMembership(GROUP, BOB, membership))
    world.graph.listed[GROUP].add(BOB)
    world.identity.writes.clear()
    reads, logs, grant_writes = world.graph.reads, len(world.state.logs), world.state.grant_writes

    # When a forged hint for the group arrives (nothing changed in Entra)
    outcome = world.service.look(GROUP)

    # Then Graph was read again, and nothing was written
    assert world.graph.reads > reads
    assert outcome.activations == outcome.removals == []
    assert world.writes() == []
    assert len(world.state.logs) == logs
    assert world.state.grant_writes == grant_writes


# --------------------------------------------------------------------------- removals


def test_an_early_deactivation_is_removed_at_once_without_a_token(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    world.drain_bucket()

    # When Ada deactivates after ten minutes (Graph drops the instance and the member)
    world.clock.advance(600)
    world.graph.end("i1")
    outcome = world.service.look(GROUP)

    # Then the membership is gone at once, its expiry cancelled and the grant forgotten
    assert outcome.removals == [ADA]
    assert not present(world, ADA)
    assert world.writes()[-1] == "DeleteGroupMembership"
    assert world.scheduler.of(ADA) == []
    assert (GROUP, ADA) not in world.state.granted
    assert [(e.kind, e.action) for e in world.state.logs][-1] == ("membership", "delete")


def test_an_expiry_on_time_removes_the_membership(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    end = T0 + timedelta(minutes=60)

    # When the schedule fires at the end (Graph has not even dropped the member yet)
    world.clock.current = end
    outcome = world.service.expire(GROUP, ADA)

    # Then the membership is removed, logged under an expiry cycle id, and nothing is left scheduled
    assert outcome.removals == [ADA]
    assert not present(world, ADA)
    assert outcome.cycle_id.startswith("jit-expiry-")
    assert world.state.logs[-1].cycle_id == outcome.cycle_id
    assert world.scheduler.of(ADA) == []
    # and, while Graph still lists her, an ended marker keeps any later look from adding her back
    assert world.state.granted[(GROUP, ADA)].phase == GRANT_ENDED
    world.graph.grant("i9", BOB, T0 + timedelta(minutes=60), 30)
    world.service.look(GROUP)
    assert not present(world, ADA)
    # until Graph catches up: then the marker goes
    world.graph.unlist(GROUP, ADA)
    world.service.look(GROUP)
    assert (GROUP, ADA) not in world.state.granted


def test_an_expiry_that_fires_early_removes_nothing(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    world.clock.advance(59 * 60)

    outcome = world.service.expire(GROUP, ADA)

    assert outcome.removals == []
    assert present(world, ADA)
    assert world.scheduler.of(ADA) == [T0 + timedelta(minutes=60)]


def test_an_extension_moves_the_expiry_and_access_ends_at_the_new_end(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    # Given the activation was extended by 30 minutes (no member change, so no notification)
    world.graph.extend("i1", 30)

    # When the original expiry fires
    world.clock.advance(60 * 60)
    first = world.service.expire(GROUP, ADA)

    # Then access stays and the expiry moved to the new end
    assert first.removals == []
    assert first.moved == 1
    assert present(world, ADA)
    assert world.scheduler.of(ADA) == [T0 + timedelta(minutes=90)]
    assert world.state.granted[(GROUP, ADA)].end == T0 + timedelta(minutes=90)

    # When the moved expiry fires
    world.clock.advance(30 * 60)
    assert world.service.expire(GROUP, ADA).removals == [ADA]
    assert not present(world, ADA)


def test_two_overlapping_activations_keep_access_until_the_last_one_ends(world: World) -> None:
    # Given Ada activated for 60 minutes, then again (an admin assignment) for 120
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    world.graph.grant("i2", ADA, T0 + timedelta(minutes=5), 115)
    world.clock.advance(5 * 60)
    world.service.look(GROUP)
    assert world.state.granted[(GROUP, ADA)].instance_ids == ("i1", "i2")

    # When the first instance ends
    world.clock.current = T0 + timedelta(minutes=60)
    world.graph.end("i1")
    assert world.service.look(GROUP).removals == []
    assert world.service.expire(GROUP, ADA).removals == []

    # Then access stays until the second ends
    assert present(world, ADA)
    assert world.state.granted[(GROUP, ADA)].instance_ids == ("i2",)
    world.clock.current = T0 + timedelta(minutes=120)
    world.graph.end("i2")
    assert world.service.expire(GROUP, ADA).removals == [ADA]
    assert not present(world, ADA)


def test_an_activation_by_a_permanent_member_never_removes_the_permanent_membership(world: World) -> None:
    # Given Bob is a permanent member the sync cycle provisioned
    bob_target = world.identity.create_user("bob@contoso.example", {"DisplayName": "Bob Dylan"})
    membership = world.identity.create_membership(world.group_target, bob_target)
    world.state.record_user(OwnedUser(BOB, bob_target, "bob@contoso.example", {}))
    world.state.record_membership(OwnedMembership(GROUP, BOB, membership))
    world.graph.listed[GROUP] = {BOB}
    world.identity.writes.clear()

    # When he also activates for an hour
    world.graph.grant("i1", BOB, T0, 60)
    world.service.look(GROUP)

    # Then the grant is recorded as standing, with its expiry, without a write
    assert world.writes() == []
    assert world.state.granted[(GROUP, BOB)].standing is True
    assert world.scheduler.of(BOB) == [T0 + timedelta(minutes=60)]

    # When the activation ends and Graph still lists him (his permanent membership)
    world.clock.advance(60 * 60)
    world.graph.end("i1", unlist=False)
    outcome = world.service.expire(GROUP, BOB)

    # Then he keeps the membership and the grant is forgotten
    assert outcome.removals == []
    assert (GROUP, BOB) in world.state.memberships
    assert world.writes() == []
    assert (GROUP, BOB) not in world.state.granted


def test_removals_are_applied_even_when_activations_must_wait(world: World) -> None:
    world.graph.grant("i1", ADA, T0, 60)
    world.service.look(GROUP)
    world.drain_bucket()
    # Ada deactivates while Bob activates, with no token left
    world.graph.end("i1")
    world.graph.grant("i2", BOB, T0, 60)

    outcome = world.service.look(GROUP)

    assert outcome.removals == [ADA]
    assert outcome.activations == []
    assert outcome.wait_seconds is not None
    assert not present(world, ADA)


def test_the_jit_create_is_intended_before_it_is_sent_and_settled_after_a_crash(world: World) -> None:
    from idsync.errors import StateError
    from idsync.services.sync import jit_intent_key

    # Given Ada activated, and the state store failing once right after CreateUser answered
    world.graph.grant("i1", ADA, T0, 30)
    intents: list[Any] = []
    create = world.identity.create_user

    def create_user(user_name: str, doc: Any) -> str:
        intents.append(world.state.get_item(jit_intent_key(GROUP)))
        return create(user_name, doc)

    world.identity.create_user = create_user  # type: ignore[method-assign]
    record = world.state.record_user
    world.state.record_user = lambda owned: (_ for _ in ()).throw(StateError("DynamoDB: 500"))  # type: ignore[method-assign]
    outcome = world.service.look(GROUP)
    # Then the failure costs Ada's activation alone (logged against her), the create was intended before it
    # was sent, and the intent outlived the failure
    assert [user for user, _ in outcome.failed] == [ADA]
    assert [(i or {}).get("source_id") for i in intents] == [ADA]
    created = world.identity.find_user("ada@contoso.example")
    assert world.state.get_item(jit_intent_key(GROUP)) is not None
    # When the state store is back and the hint comes again, the intent is settled: same object, one create
    world.state.record_user = record  # type: ignore[method-assign]
    world.service.look(GROUP)
    assert world.state.users[ADA].target_id == created
    assert world.writes().count("CreateUser") == 1
    assert world.state.get_item(jit_intent_key(GROUP)) is None
    assert present(world, ADA)


def test_a_user_name_held_by_another_managed_user_is_not_adopted_by_an_activation(world: World) -> None:
    # Given IAM Identity Center's "ada@contoso.example" is the object idsync manages for Bob (renamed in Entra since)
    bob_target = world.identity.create_user("ada@contoso.example", {"DisplayName": "Bob Dylan"})
    world.state.record_user(OwnedUser(BOB, bob_target, "ada@contoso.example", {"DisplayName": "Bob Dylan"}))
    world.identity.writes.clear()
    world.graph.grant("i1", ADA, T0, 30)
    # When Ada's activation is applied
    world.service.look(GROUP)
    # Then Bob's object is not taken for Ada: the failure names both, and nothing was added
    assert ADA not in world.state.users
    assert world.state.users[BOB].target_id == bob_target
    assert world.members_in_identity_center() == set()
    failure = next(e for e in world.state.logs if e.kind == "user" and e.status.value == "failure")
    assert BOB in (failure.error or "")
    assert bob_target in (failure.error or "")
