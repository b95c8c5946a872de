"""A full reconcile that spans invocations: every read phase stops at the time budget and resumes where it
stopped, an unfinished read is never taken for the directory (no plan, no deletion, no baseline), kill points
at every request lose nothing, and no blob chunk is ever left without a manifest naming it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from idsync.services.cycle import CHECKPOINT_KEY, CYCLE_KEY, FULL_READ_KEY, MIRROR_KEY
from tests.fakes import Crash, FakeIdentityStore, FakeState, PagedSource
from tests.unit.test_cycle import World, tenant

CHUNK = re.compile(r"^(?P<key>.+)@(?P<generation>[0-9a-f]+)#(?P<index>\d+)$")


def paged_world(**policy: Any) -> World:
    """12 users (3 delta pages), 3 groups (1 page), deleted items (1 request): 5 Graph requests; in AWS,
    pages of 2: 6 ListUsers, 2 ListGroups and 2 ListGroupMemberships per group once provisioned."""
    base = tenant()
    world = World(PagedSource(base.users, base.groups, base.members, page_size=4), **policy)
    world.store = FakeIdentityStore(page_size=2)
    return world


def one_step_each(world: World) -> int:
    """Run invocations whose budget allows one step past the first request (two reads, or one write) until a
    cycle completes; returns how many."""
    invocations = 0
    while True:
        invocations += 1
        budget = iter(range(1))
        outcome = world.run(should_stop=lambda b=budget: next(b, None) is None)
        if outcome.report.complete:
            return invocations
        assert invocations < 300


def reading(world: World) -> bool:
    return str(world.state.get_item("run:last")["status"]).startswith("stopped (time budget while reading")


def run_until_crash(world: World) -> None:
    """A forced full reconcile, carried on one request per invocation, until the process dies."""
    forced = True
    for _ in range(60):
        world.run(force_full=forced, should_stop=lambda: True)
        forced = False


def orphans(state: FakeState) -> list[str]:
    """Blob chunks that no manifest names as its generation (or as the one it is writing)."""
    found = []
    for key in state.items:
        match = CHUNK.match(key)
        if match is None:
            continue
        manifest = state.items.get(match["key"]) or {}
        named = {manifest.get("generation"), (manifest.get("pending") or [None])[0]}
        pieces = [*(manifest.get("shards") or ()), *(manifest.get("journal") or ())]  # the sharded mirror
        named |= {piece.get("generation") for piece in pieces}
        named |= {g for key in ("pending_shards", "replaced_shards") for g, _ in manifest.get(key) or ()}
        if match["generation"] not in named:
            found.append(key)
    return found


def delete_by_hand(store: FakeIdentityStore, user_name: str) -> None:
    """An administrator deletes the user in the AWS console (not one of idsync's writes)."""
    user_id = store.find_user(user_name)
    if user_id is not None:
        del store.users[user_id]
        for membership in [m for m, (_, member) in store.memberships.items() if member == user_id]:
            del store.memberships[membership]


def expected_world() -> tuple[tuple[Any, ...], int]:
    world = paged_world()
    world.run()
    return world.snapshot(), len(world.store.writes)


def test_a_first_full_cycle_spent_one_request_at_a_time_ends_as_one_uninterrupted_run() -> None:
    expected, writes = expected_world()
    world = paged_world()
    source = world.source
    assert isinstance(source, PagedSource)
    # When every invocation's budget is spent after its first request
    invocations = 0
    while True:
        invocations += 1
        outcome = world.run(should_stop=lambda: True)
        if not reading(world):
            break
        # Then an unfinished read plans nothing, writes nothing and stores no baseline
        assert outcome.report.writes == 0
        assert world.store.writes == []
        assert world.state.get_item(MIRROR_KEY) is None
        assert "links" not in (world.state.get_item(CYCLE_KEY) or {})
    # 5 Graph requests, then 1 ListUsers and 1 ListGroups on an empty store, one per invocation; the last
    # invocation finished the read and stopped before its first write
    assert source.requests == 5
    assert world.store.list_calls == {"ListUsers": 1, "ListGroups": 1}
    assert invocations == 5 + 2
    assert world.store.writes == []
    # and the next invocation writes without listing IAM Identity Center again (nothing was written since)
    budget = iter(range(1))
    world.run(should_stop=lambda: next(budget, None) is None)
    assert world.store.list_calls == {"ListUsers": 1, "ListGroups": 1}
    assert len(world.store.writes) == 1
    one_step_each(world)
    assert world.snapshot() == expected
    assert len(world.store.writes) == writes
    assert orphans(world.state) == []
    assert world.state.get_item(FULL_READ_KEY) is None
    assert world.state.get_item(CHECKPOINT_KEY) is None


def provisioned() -> World:
    world = paged_world()
    world.run()
    world.store.writes.clear()
    world.store.list_calls.clear()
    return world


def test_a_forced_full_reconcile_with_nothing_to_change_resumes_across_invocations_and_writes_nothing() -> None:
    world = provisioned()
    source = world.source
    assert isinstance(source, PagedSource)
    before = world.state.get_item(CYCLE_KEY)
    requests = source.requests
    invocations = 0
    forced = True
    while True:
        invocations += 1
        outcome = world.run(should_stop=lambda: True, force_full=forced)
        forced = False
        if outcome.report.complete:
            break
        # the stored delta links stay the last finished cycle's while the read is unfinished
        assert world.state.get_item(CYCLE_KEY) == before
    assert world.store.writes == []
    # Graph: 5 requests; AWS: 6 ListUsers, 2 ListGroups, 2 ListGroupMemberships for each of 3 groups
    assert source.requests - requests == 5
    assert world.store.list_calls == {"ListUsers": 6, "ListGroups": 2, "ListGroupMemberships": 6}
    assert invocations == 5 + 14
    record = world.state.get_item(CYCLE_KEY)
    assert record is not None
    assert record["links"] != before["links"]
    assert orphans(world.state) == []


@pytest.mark.parametrize("allowed", range(0, 22))
def test_a_budget_stop_after_any_request_resumes_there(allowed: int) -> None:
    # Given drift made by hand (a user deleted, a membership removed) and a full reconcile whose budget ends
    # after ``allowed`` requests (Graph pages, deleted items, List calls, then writes)
    expected, _ = expected_world()
    world = provisioned()
    delete_by_hand(world.store, "u5@example.com")
    membership = next(iter(world.store.memberships))
    del world.store.memberships[membership]
    budget = iter(range(allowed))
    first = world.run(force_full=True, should_stop=lambda: next(budget, None) is None)
    # When later invocations carry on, each with a budget of one request
    if not first.report.complete:
        one_step_each(world)
    # Then IAM Identity Center ends as one uninterrupted run leaves it, and nothing is left behind
    assert world.snapshot() == expected
    assert orphans(world.state) == []
    assert world.state.get_item(FULL_READ_KEY) is None
    assert world.state.get_item(CHECKPOINT_KEY) is None


@pytest.mark.parametrize(("graph", "at"), [(True, k) for k in range(5)] + [(False, k) for k in range(14)])
def test_a_crash_before_any_read_request_is_carried_on_by_the_next_run(graph: bool, at: int) -> None:
    expected, _ = expected_world()
    world = provisioned()
    delete_by_hand(world.store, "u7@example.com")
    source = world.source
    assert isinstance(source, PagedSource)
    # Given a forced full reconcile stopping after every request, whose process dies before a Graph page or a
    # List call
    if graph:
        source.crash_at_request = source.requests + at
    else:
        world.store.crash_at_list = at
    with pytest.raises(Crash):
        run_until_crash(world)
    source.crash_at_request, world.store.crash_at_list = None, None
    world.clock.advance(901)  # the dead process's lease expires
    # When the next runs carry on
    one_step_each(world)
    # Then the drift is repaired, nobody live was deleted, and no blob is left behind
    assert world.snapshot() == expected
    assert "DeleteUser" not in world.store.writes
    assert orphans(world.state) == []


def test_an_unfinished_read_plans_no_deletion_even_when_the_pages_read_so_far_miss_everyone() -> None:
    world = provisioned()
    # Given a full reconcile stopped after the first page of users (4 of 12) and no group yet
    world.run(force_full=True, should_stop=lambda: True)
    world.run(should_stop=lambda: True)
    # Then nothing was planned from it: no deletion, no write at all
    assert world.store.writes == []
    assert len(world.store.users) == 12
    assert world.state.get_item(FULL_READ_KEY) is not None


def test_an_expired_next_link_begins_the_read_again_and_the_cycle_still_completes() -> None:
    expected, _ = expected_world()
    world = provisioned()
    source = world.source
    assert isinstance(source, PagedSource)
    world.run(force_full=True, should_stop=lambda: True)
    world.run(should_stop=lambda: True)
    # When Graph forgets the nextLinks it handed out (410 resyncRequired)
    source.expire_links()
    requests = source.requests
    outcome = world.run()
    # Then the read begins again from the start (5 requests) and the cycle completes
    assert outcome.report.complete
    assert source.requests - requests == 5
    assert world.snapshot() == expected
    assert orphans(world.state) == []


def test_a_refused_list_token_restarts_that_listing_only() -> None:
    expected, _ = expected_world()
    world = provisioned()
    delete_by_hand(world.store, "u10@example.com")
    # Given a full reconcile stopped in the middle of ListUsers, whose token AWS then refuses
    budget = iter(range(5 + 2))
    world.run(force_full=True, should_stop=lambda: next(budget, None) is None)
    assert world.store.list_calls == {"ListUsers": 3}
    world.store.refused_tokens = 1
    outcome = world.run()
    # Then ListUsers begins again (1 refused + 6 pages of 11 users) and the cycle repairs the drift
    assert outcome.report.complete
    assert world.store.list_calls["ListUsers"] == 3 + 1 + 6
    assert world.snapshot() == expected


def test_no_blob_chunk_outlives_its_manifest_across_full_stopped_resumed_guarded_and_delta_cycles() -> None:
    world = paged_world(max_deletions=3)
    source = world.source
    assert isinstance(source, PagedSource)
    steps = []

    def check(step: str) -> None:
        steps.append(step)
        assert orphans(world.state) == [], step

    world.run()  # full, finished
    check("full")
    world.run(force_full=True, should_stop=lambda: True)  # stopped while reading Entra
    check("stopped reading Entra")
    for _ in range(6):
        world.run(should_stop=lambda: True)  # reading AWS: a checkpoint with its mirror and listing
    check("stopped reading AWS")
    assert world.state.get_item(CHECKPOINT_KEY) is not None
    one_step_each(world)  # resumed, finished
    check("resumed and finished")
    assert world.state.get_item(CHECKPOINT_KEY) is None
    for user in source.users:
        user["jobTitle"] = "Staff"
    budget = iter(range(5 + 14 + 2))
    world.run(force_full=True, should_stop=lambda: next(budget, None) is None)  # stopped while writing
    check("stopped writing")
    world.run()
    check("resumed writing, finished")
    source.outage = True
    tripped = world.run(force_full=True)  # an empty directory: the deletion guard trips
    assert tripped.report.guard is not None
    check("guard tripped")
    world.run()  # full again (the tripped read was not kept), then delta
    world.run()
    check("delta")
    assert world.state.get_item(CHECKPOINT_KEY) is None
    assert world.state.get_item(FULL_READ_KEY) is None
    blobs = {m["key"] for k in world.state.items if (m := CHUNK.match(k))}
    assert blobs == {MIRROR_KEY}, steps


class StopAnywhere(RuleBasedStateMachine):
    """Invocations stopped at random requests, dying at random points, while Entra and AWS change; after
    every step no blob chunk is orphaned and an unfinished read has written nothing; at the end, carried on
    to completion, IAM Identity Center holds what one uninterrupted run over the final directory makes."""

    def __init__(self) -> None:
        super().__init__()
        self.world = provisioned()
        self.hires = 0
        self.writes_before = 0

    def _invoke(self, budget: int, force_full: bool = False) -> None:
        steps = iter(range(budget))
        before = len(self.world.store.writes)
        try:
            outcome = self.world.run(force_full=force_full, should_stop=lambda: next(steps, None) is None)
        except Crash:
            self.world.clock.advance(901)
            return
        finally:
            source = self.world.source
            assert isinstance(source, PagedSource)
            source.crash_at_request, self.world.store.crash_at_list = None, None
        if not outcome.report.complete and outcome.report.writes == 0 and outcome.report.counts == {}:
            # stopped while reading: not one write
            assert len(self.world.store.writes) == before

    @rule(budget=st.integers(0, 12))
    def invocation(self, budget: int) -> None:
        self._invoke(budget)

    @rule(budget=st.integers(0, 12))
    def forced_full(self, budget: int) -> None:
        self._invoke(budget, force_full=True)

    @rule(budget=st.integers(0, 12), at=st.integers(0, 8), graph=st.booleans())
    def dies(self, budget: int, at: int, graph: bool) -> None:
        source = self.world.source
        assert isinstance(source, PagedSource)
        if graph:
            source.crash_at_request = source.requests + at
        else:
            self.world.store.crash_at_list = sum(self.world.store.list_calls.values()) + at
        self._invoke(budget)

    @rule()
    def links_expire(self) -> None:
        source = self.world.source
        assert isinstance(source, PagedSource)
        source.expire_links()

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours: int) -> None:
        self.world.clock.advance(hours * 3600)

    @rule()
    def hire(self) -> None:
        self.hires += 1
        person = {
            "id": f"h{self.hires}",
            "userPrincipalName": f"h{self.hires}@example.com",
            "displayName": f"Hire {self.hires}",
            "jobTitle": "Engineer",
            "accountEnabled": True,
            "manager": None,
        }
        self.world.source.users.append(person)
        self.world.source.members["g1"].append(person["id"])

    @rule(index=st.integers(0, 11), title=st.sampled_from(["Engineer", "Lead", "Staff"]))
    def retitle(self, index: int, title: str) -> None:
        self.world.source.users[index]["jobTitle"] = title

    @rule(index=st.integers(4, 11))  # users who manage nobody (a recreated manager is the planner's concern)
    def delete_by_hand(self, index: int) -> None:
        delete_by_hand(self.world.store, f"u{index}@example.com")

    @invariant()
    def no_orphaned_chunk(self) -> None:
        assert orphans(self.world.state) == []

    @invariant()
    def nobody_in_entra_was_deleted_from_aws_by_idsync(self) -> None:
        assert "DeleteUser" not in self.world.store.writes

    def teardown(self) -> None:
        world = self.world
        # the read under way finishes (its pages are Graph's snapshot of when it began), then a fresh full
        # reconcile reads the directory as it is now and repairs the drift made by hand
        assert world.run(force_full=True).report.complete
        assert world.run(force_full=True).report.complete
        fresh = World(PagedSource(world.source.users, world.source.groups, world.source.members, page_size=4))
        fresh.store = FakeIdentityStore(page_size=2)
        fresh.run()
        assert world.snapshot() == fresh.snapshot()
        assert world.state.get_item(FULL_READ_KEY) is None
        assert world.state.get_item(CHECKPOINT_KEY) is None
        assert orphans(world.state) == []


TestStopAnywhere = StopAnywhere.TestCase
TestStopAnywhere.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


@pytest.mark.parametrize(
    "change",
    ["configuration", "age", "damage"],
)
def test_a_read_under_way_for_another_configuration_too_old_or_damaged_begins_again(change: str) -> None:
    expected, _ = expected_world()
    world = provisioned()
    source = world.source
    assert isinstance(source, PagedSource)
    world.run(force_full=True, should_stop=lambda: True)
    world.run(should_stop=lambda: True)
    record = world.state.get_item(FULL_READ_KEY)
    assert record is not None
    if change == "configuration":
        world.state.put_item(FULL_READ_KEY, {**record, "fingerprint": "another mapping"})
    elif change == "age":
        world.clock.advance(25 * 3600)
    else:
        world.state.put_item(FULL_READ_KEY, {**record, "started": "not a time"})
    requests = source.requests
    outcome = world.run()
    # Then the stored pages are dropped, never carried on: past the full-reconcile interval a new full read
    # begins (all 5 requests); otherwise the last finished cycle's links still serve a delta cycle
    assert outcome.report.complete
    assert outcome.mode == ("full" if change == "age" else "delta")
    assert source.requests - requests == (5 if change == "age" else 0)
    assert world.state.get_item(FULL_READ_KEY) is None
    assert world.snapshot() == expected
    assert orphans(world.state) == []


def test_a_full_reconcile_stopped_while_reading_still_ends_pim_access_on_time() -> None:
    from datetime import timedelta

    from idsync.services.cycle import CycleOptions
    from tests.pim_world import ADA, PimWorld

    # Given an activation whose expiry schedule was lost, which has ended
    world = PimWorld()
    world.cycle()
    start = world.clock.now()
    world.graph.grant("i1", ADA, start, 30)
    world.look()
    world.scheduler.schedules.clear()
    world.graph.end("i1", unlist=True)
    world.clock.current = start + timedelta(minutes=31)
    # When a forced full reconcile stops at its time budget while listing IAM Identity Center
    outcome = world.cycle_service.run(CycleOptions(force_full=True, should_stop=lambda: True))
    assert outcome.report is not None
    assert not outcome.report.complete
    assert str(world.state.get_item("run:last")["status"]).startswith("stopped (time budget while reading")
    # Then the PIM safety net ran all the same: her access ended
    assert not world.is_member(ADA)
