"""Access as code: the planner's laws, and the service under every interleaving of its actors.

Actors: the sync cycle (full and delta), an administrator editing assignments by hand, the file
changing, AWS failing a request, and the process dying right after a request reached AWS. After
every step: idsync owns (in its record) every assignment it made that still exists; it never
removed one made by hand that the file never wanted; never more than 15 requests were in flight;
and after a clean full cycle, AWS holds exactly what the file wants for idsync's assignments.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from idsync.access import AccessPolicy, Assignment, How, make_access_plan
from idsync.config import AccessEntry
from idsync.services.access import AccessService, GroupRef, load_owned
from tests.fakes import Crash, FakeAccountAccess, FakeClock, FakeState

PS = {
    "Admin": "arn:aws:sso:::permissionSet/ssoins-0000000000000000/ps-aaaaaaaaaaaaaaaa",
    "Read": "arn:aws:sso:::permissionSet/ssoins-0000000000000000/ps-bbbbbbbbbbbbbbbb",
}
ACCOUNTS = [f"{n:012d}" for n in range(1, 7)]
OU = "ou-abcd-12345678"
GROUPS = {"g1": GroupRef("Admins", "p1"), "g2": GroupRef("Readers", "p2")}
ENTRY_POOL = [
    {"group": "Admins", "permission_set": "Admin", "accounts": ACCOUNTS[:2]},
    {"group": "g2", "permission_set": "Read", "organizational_units": [OU], "exclude_accounts": [ACCOUNTS[3]]},
    {"group": "Readers", "permission_set": "Admin", "accounts": [ACCOUNTS[5]]},
    {"group": "Admins", "permission_set": "Read", "accounts": ACCOUNTS},
]


def make_fake() -> FakeAccountAccess:
    return FakeAccountAccess(permission_sets_by_name=dict(PS), parents={"r-root": {OU}, OU: set(ACCOUNTS[2:])})


def make_service(
    fake: FakeAccountAccess, state: FakeState, entries: list[dict[str, Any]], clock: FakeClock | None = None
) -> AccessService:
    clock = clock or FakeClock()
    return AccessService(
        fake,
        state,
        clock,
        [AccessEntry.model_validate(e) for e in entries],
        monotonic=lambda: clock.now().timestamp(),
        sleep=clock.advance,
    )


def wanted_of(entries: list[dict[str, Any]], ou_accounts: set[str]) -> set[tuple[str, str, str]]:
    out = set()
    for e in entries:
        principal = "p1" if e["group"] in ("Admins", "g1") else "p2"
        accounts = set(e.get("accounts", [])) | (ou_accounts if e.get("organizational_units") else set())
        out |= {(principal, PS[e["permission_set"]], a) for a in accounts - set(e.get("exclude_accounts", []))}
    return out


# --------------------------------------------------------------------------- planner laws

A = [Assignment(g, f"p-{g}", ps, acct) for g in ("g1", "g2") for ps in PS.values() for acct in ACCOUNTS[:3]]
subsets = st.frozensets(st.sampled_from(A))


@given(wanted=subsets, owned=st.dictionaries(st.sampled_from(A), st.sampled_from(list(How))), held=subsets)
def test_plan_never_removes_what_it_does_not_own_and_adopts_rather_than_claims(
    wanted: frozenset[Assignment], owned: dict[Assignment, How], held: frozenset[Assignment]
) -> None:
    existing = {p: frozenset(a.target for a in held if a.principal_id == p) for p in ("p-g1", "p-g2")}
    plan = make_access_plan(wanted, owned, existing, frozenset(), AccessPolicy(allow_deletions=True))
    assert set(plan.removes) <= set(owned)
    assert not set(plan.removes) & wanted
    assert set(plan.adopts) == {a for a in wanted if a not in owned and a in held}
    assert set(plan.creates) >= {a for a in wanted if a not in held}
    assert not set(plan.creates) & {a for a in wanted if a not in owned and a in held}
    # a second plan after applying this one has nothing to do
    after_held = (held | set(plan.creates)) - set(plan.removes)
    after_owned = dict.fromkeys(set(owned) | set(plan.creates) | set(plan.adopts), How.CREATED)
    for gone in set(plan.removes) | set(plan.forgets):
        after_owned.pop(gone, None)
    existing = {p: frozenset(a.target for a in after_held if a.principal_id == p) for p in ("p-g1", "p-g2")}
    again = make_access_plan(wanted, after_owned, existing, frozenset(), AccessPolicy(allow_deletions=True))
    assert again.writes == 0
    assert not again.adopts


def test_the_guard_holds_every_removal_back_above_its_limits() -> None:
    owned = dict.fromkeys(A, How.CREATED)
    existing = {p: frozenset(a.target for a in A if a.principal_id == p) for p in ("p-g1", "p-g2")}
    plan = make_access_plan(frozenset(A[:2]), owned, existing, frozenset(), AccessPolicy(max_deletion_percent=20.0))
    assert plan.removes == ()
    assert len(plan.held_back) == len(A) - 2
    assert plan.guard is not None
    assert "remove 10 of 12 managed account assignments" in plan.guard.message
    allowed = make_access_plan(frozenset(A[:2]), owned, existing, frozenset(), AccessPolicy(allow_deletions=True))
    assert len(allowed.removes) == len(A) - 2


def test_the_sync_guard_holds_assignment_removals_too() -> None:
    owned = {A[0]: How.CREATED}
    plan = make_access_plan(frozenset(), owned, {}, frozenset(), AccessPolicy(max_deletions=10, hold_removals=True))
    assert plan.removes == ()
    assert plan.held_back == (A[0],)


def test_an_unread_principal_with_an_unowned_wanted_assignment_is_an_error() -> None:
    with pytest.raises(ValueError, match="was not read"):
        make_access_plan(frozenset(A[:1]), {}, {}, frozenset(), AccessPolicy())


# --------------------------------------------------------------------------- the service, stateful


class AccessMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fake = make_fake()
        self.state = FakeState()
        self.fake.watched_state = self.state.items
        self.entries: list[dict[str, Any]] = [ENTRY_POOL[0], ENTRY_POOL[1]]
        self.ever_wanted: set[tuple[str, str, str]] = set()
        self.clean_full = False
        self.clock = FakeClock()
        self._note_wanted()

    def _ou_accounts(self) -> set[str]:
        return self.fake.accounts_under(OU)

    def _note_wanted(self) -> None:
        self.ever_wanted |= wanted_of(self.entries, self.fake.accounts_under(OU))

    @rule(choice=st.sets(st.integers(0, len(ENTRY_POOL) - 1)))
    def change_the_file(self, choice: set[int]) -> None:
        self.entries = [ENTRY_POOL[i] for i in sorted(choice)]
        self._note_wanted()
        self.clean_full = False

    @rule(principal=st.sampled_from(["p1", "p2"]), ps=st.sampled_from(sorted(PS.values())), n=st.integers(0, 5))
    def an_administrator_assigns_by_hand(self, principal: str, ps: str, n: int) -> None:
        self.fake.by_hand(principal, ps, ACCOUNTS[n])
        self.clean_full = False

    @precondition(lambda self: bool(self.fake.held))
    @rule(data=st.data())
    def an_administrator_removes_by_hand(self, data: st.DataObject) -> None:
        self.fake.by_hand(*data.draw(st.sampled_from(sorted(self.fake.held))), add=False)
        self.clean_full = False

    @rule(n=st.integers(0, 5))
    def an_account_moves_into_or_out_of_the_ou(self, n: int) -> None:
        self.fake.parents[OU] ^= {ACCOUNTS[n]}
        self._note_wanted()
        self.clean_full = False

    @rule(n=st.integers(0, 5), fail=st.booleans())
    def aws_fails_an_account(self, n: int, fail: bool) -> None:
        if fail:
            self.fake.failures[ACCOUNTS[n]] = "account is suspended"
        else:
            self.fake.failures.pop(ACCOUNTS[n], None)
        self.clean_full = False

    @rule(full=st.booleans(), crash=st.one_of(st.none(), st.integers(1, 6)), polls=st.integers(0, 3))
    def a_cycle_runs(self, full: bool, crash: int | None, polls: int) -> None:
        self.fake.polls_in_progress = polls
        self.fake.crash_after_writes = None if crash is None else self.fake.writes + crash
        # a day between cycles: whatever escrow holds back is due again (its longest wait is a day)
        self.clock.advance(86400)
        service = make_service(self.fake, self.state, self.entries, self.clock)
        try:
            service.reconcile(GROUPS, full, AccessPolicy(allow_deletions=True), "c")
        except Crash:
            # the process died: only what was written before the crash survives
            assert self.fake.state_at_crash is not None
            self.state.items.clear()
            self.state.items.update(self.fake.state_at_crash)
            self.fake.state_at_crash = None
            self.clean_full = False
            return
        self.fake.crash_after_writes = None
        self.clean_full = full and not self.fake.failures

    @invariant()
    def idsync_knows_every_assignment_it_made(self) -> None:
        owned = {(a.principal_id, a.permission_set_arn, a.account_id) for a in load_owned(self.state).flat()}
        made = {key for key in self.fake.held if self.fake.made_by.get(key) == "idsync"}
        assert made <= owned

    @invariant()
    def never_removes_a_hand_made_assignment_the_file_never_wanted(self) -> None:
        for key in self.fake.deleted_by_idsync:
            assert self.fake.made_by.get(key) == "idsync" or key in self.ever_wanted

    @invariant()
    def never_more_than_fifteen_in_flight(self) -> None:
        assert self.fake.peak <= 15

    @invariant()
    def a_clean_full_cycle_converges(self) -> None:
        if not self.clean_full:
            return
        wanted = wanted_of(self.entries, self.fake.accounts_under(OU))
        owned = {(a.principal_id, a.permission_set_arn, a.account_id) for a in load_owned(self.state).flat()}
        assert owned == wanted
        assert wanted <= self.fake.held


AccessMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAccessMachine = AccessMachine.TestCase


def test_a_crash_right_after_a_create_leaves_it_owned_and_the_next_cycle_confirms_it() -> None:
    fake, state = make_fake(), FakeState()
    fake.watched_state = state.items
    fake.crash_after_writes = 1
    with pytest.raises(Crash):
        make_service(fake, state, [ENTRY_POOL[0]]).reconcile(GROUPS, True, AccessPolicy(), "c1")
    state.items.clear()
    state.items.update(fake.state_at_crash or {})
    assert {h.value for h in load_owned(state).flat().values()} == {"pending"}
    make_service(fake, state, [ENTRY_POOL[0]]).reconcile(GROUPS, False, AccessPolicy(), "c2")
    assert set(load_owned(state).flat().values()) == {How.CREATED}
    assert {(p, a) for p, _, a in fake.held} == {("p1", ACCOUNTS[0]), ("p1", ACCOUNTS[1])}


def test_a_group_not_provisioned_yet_keeps_its_assignments_and_says_why() -> None:
    fake, state = make_fake(), FakeState()
    make_service(fake, state, [ENTRY_POOL[0]]).reconcile(GROUPS, True, AccessPolicy(), "c1")
    groups = {"g1": GroupRef("Admins", None), "g2": GROUPS["g2"]}
    outcome = make_service(fake, state, [ENTRY_POOL[0]]).reconcile(
        groups, True, AccessPolicy(allow_deletions=True), "c2"
    )
    assert outcome.writes == 0
    assert len(fake.held) == 2
    assert any("not provisioned in IAM Identity Center yet" in (e.error or "") for e in state.logs)
