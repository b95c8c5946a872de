"""Access as code against moto's sso-admin and organizations (asynchronous gaps filled by sandbox.moto_sso).

Every case reads the outcome from the emulated AWS (which assignments exist), from the state store
(what idsync records as its own) and from the provisioning log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from idsync.access import AccessPolicy, How
from idsync.adapters.sso_admin import SsoAdminAccess
from idsync.config import AccessEntry
from idsync.errors import TargetNotFound
from idsync.ports import CallCounter
from idsync.services.access import AccessService, GroupRef, load_owned
from idsync.services.rate_budget import TokenRateBudget
from sandbox import moto_sso
from tests.fakes import FakeClock, FakeState

ADMINS, READERS = "g-admins", "g-readers"


@dataclass
class World:
    sso: Any
    orgs: Any
    instance: str
    sets: dict[str, str]
    ou: str
    nested_ou: str
    ou_accounts: list[str]
    other_account: str
    access: SsoAdminAccess
    counter: CallCounter

    def held(self, principal: str) -> set[tuple[str, str]]:
        pages = self.sso.get_paginator("list_account_assignments_for_principal").paginate(
            InstanceArn=self.instance, PrincipalId=principal, PrincipalType="GROUP"
        )
        return {(a["PermissionSetArn"], a["AccountId"]) for p in pages for a in p["AccountAssignments"]}

    def assign_by_hand(self, principal: str, ps: str, account: str) -> None:
        request = self.sso.create_account_assignment(
            InstanceArn=self.instance,
            TargetId=account,
            TargetType="AWS_ACCOUNT",
            PermissionSetArn=self.sets[ps],
            PrincipalType="GROUP",
            PrincipalId=principal,
        )["AccountAssignmentCreationStatus"]
        while request["Status"] == "IN_PROGRESS":
            request = self.sso.describe_account_assignment_creation_status(
                InstanceArn=self.instance, AccountAssignmentCreationRequestId=request["RequestId"]
            )["AccountAssignmentCreationStatus"]


@pytest.fixture
def world(aws: None, aws_region: str) -> Iterator[World]:
    moto_sso.install()
    moto_sso.reset(polls_in_progress=1)
    orgs = boto3.client("organizations", region_name="us-east-1")
    orgs.create_organization(FeatureSet="ALL")
    root = orgs.list_roots()["Roots"][0]["Id"]
    ou = orgs.create_organizational_unit(ParentId=root, Name="Workloads")["OrganizationalUnit"]["Id"]
    nested = orgs.create_organizational_unit(ParentId=ou, Name="Prod")["OrganizationalUnit"]["Id"]
    accounts = []
    for index, parent in enumerate([ou, ou, nested]):
        created = orgs.create_account(Email=f"a{index}@example.com", AccountName=f"acct{index}")
        account = created["CreateAccountStatus"]["AccountId"]
        orgs.move_account(AccountId=account, SourceParentId=root, DestinationParentId=parent)
        accounts.append(account)
    other = orgs.create_account(Email="other@example.com", AccountName="other")["CreateAccountStatus"]["AccountId"]
    sso = boto3.client("sso-admin", region_name=aws_region)
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    sets = {
        name: sso.create_permission_set(Name=name, InstanceArn=instance)["PermissionSet"]["PermissionSetArn"]
        for name in ("AdministratorAccess", "ViewOnlyAccess")
    }
    counter = CallCounter()
    access = SsoAdminAccess(instance, sso, orgs, TokenRateBudget(1000), counter)
    yield World(sso, orgs, instance, sets, ou, nested, accounts, other, access, counter)
    moto_sso.reset()


GROUPS = {ADMINS: GroupRef("AWS Production Admins", "p-admins"), READERS: GroupRef("AWS Readers", "p-readers")}


def service(world: World, state: FakeState, entries: list[dict[str, Any]], **kwargs: Any) -> AccessService:
    clock = FakeClock()
    return AccessService(
        world.access,
        state,
        clock,
        [AccessEntry.model_validate(e) for e in entries],
        monotonic=lambda: clock.now().timestamp(),
        sleep=clock.advance,
        **kwargs,
    )


def entries(world: World) -> list[dict[str, Any]]:
    return [
        {"group": "AWS Production Admins", "permission_set": "AdministratorAccess", "accounts": [world.other_account]},
        {
            "group": READERS,
            "permission_set": world.sets["ViewOnlyAccess"],
            "organizational_units": [world.ou],
            "exclude_accounts": [world.ou_accounts[1]],
        },
    ]


def test_creates_every_wanted_assignment_through_the_asynchronous_api_and_records_it(world: World) -> None:
    state = FakeState()
    outcome = service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c1")
    assert world.held("p-admins") == {(world.sets["AdministratorAccess"], world.other_account)}
    # the OU is read recursively; the excluded account is left out
    view = world.sets["ViewOnlyAccess"]
    assert world.held("p-readers") == {(view, world.ou_accounts[0]), (view, world.ou_accounts[2])}
    assert outcome.counts == {"create": 3}
    assert set(load_owned(state).flat().values()) == {How.CREATED}
    assert world.counter.calls["DescribeAccountAssignmentCreationStatus"] == 6  # IN_PROGRESS once, then SUCCEEDED
    names = {e.name for e in state.logs if e.status.value == "success"}
    assert f"AWS Production Admins -> AdministratorAccess @ {world.other_account}" in names


def test_a_second_cycle_makes_no_write_and_a_delta_cycle_no_call(world: World) -> None:
    state = FakeState()
    service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c1")
    writes = moto_sso.settings.writes
    again = service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c2")
    assert again.writes == 0
    assert moto_sso.settings.writes == writes
    calls = world.counter.total
    service(world, state, entries(world)).reconcile(GROUPS, False, AccessPolicy(), "c3")
    assert world.counter.total == calls


def test_an_existing_wanted_assignment_is_adopted_and_one_it_did_not_create_is_never_removed(world: World) -> None:
    state = FakeState()
    world.assign_by_hand("p-admins", "AdministratorAccess", world.other_account)
    world.assign_by_hand("p-admins", "ViewOnlyAccess", world.other_account)  # made by hand, never wanted
    outcome = service(world, state, entries(world)[:1]).reconcile(GROUPS, True, AccessPolicy(), "c1")
    assert outcome.counts == {"adopt": 1}
    owned = load_owned(state).flat()
    assert set(owned.values()) == {How.ADOPTED}
    # the file drops the entry: the adopted one goes, the hand-made one stays
    service(world, state, []).reconcile(GROUPS, True, AccessPolicy(allow_deletions=True), "c2")
    assert world.held("p-admins") == {(world.sets["ViewOnlyAccess"], world.other_account)}
    assert load_owned(state).flat() == {}


def test_removed_entries_lose_only_owned_assignments_and_ou_changes_are_followed(world: World) -> None:
    state = FakeState()
    service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c1")
    view = world.sets["ViewOnlyAccess"]
    # an account moves out of the OU, a new one arrives: the next full cycle follows both
    root = world.orgs.list_roots()["Roots"][0]["Id"]
    world.orgs.move_account(AccountId=world.ou_accounts[2], SourceParentId=world.nested_ou, DestinationParentId=root)
    world.orgs.move_account(AccountId=world.other_account, SourceParentId=root, DestinationParentId=world.nested_ou)
    outcome = service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(allow_deletions=True), "c2")
    assert world.held("p-readers") == {(view, world.ou_accounts[0]), (view, world.other_account)}
    assert outcome.counts == {"create": 1, "delete": 1}


def test_a_failed_request_is_logged_with_its_reason_escrowed_and_retried(world: World) -> None:
    state = FakeState()
    moto_sso.fail_assignment(world.ou_accounts[0], "Received a 404 status error: account is suspended")
    svc = service(world, state, entries(world))
    outcome = svc.reconcile(GROUPS, True, AccessPolicy(), "c1")
    (failure,) = outcome.failures
    assert "account is suspended" in (failure.error or "")
    assert world.ou_accounts[0] in failure.name
    assert outcome.counts == {"create": 2}  # the others went on
    assert all(a.account_id != world.ou_accounts[0] for a in load_owned(state).flat())
    # escrow, on Entra's schedule: retried next cycle, then held back 6 hours, then retried again
    assert len(svc.reconcile(GROUPS, True, AccessPolicy(), "c2").failures) == 1
    moto_sso.settings.failures.clear()
    assert svc.reconcile(GROUPS, True, AccessPolicy(), "c3").counts == {}
    assert any("in escrow after 2 failed attempt(s)" in (e.error or "") for e in state.logs if e.cycle_id == "c3")
    svc.clock.advance(7 * 3600)  # type: ignore[attr-defined]
    assert svc.reconcile(GROUPS, True, AccessPolicy(), "c4").counts == {"create": 1}
    assert (world.sets["ViewOnlyAccess"], world.ou_accounts[0]) in world.held("p-readers")


def test_never_more_than_fifteen_requests_outstanding(world: World) -> None:
    state = FakeState()
    moto_sso.reset(polls_in_progress=3)
    many = [{"group": READERS, "permission_set": "ViewOnlyAccess", "accounts": [f"{n:012d}" for n in range(1, 41)]}]
    outcome = service(world, state, many).reconcile(GROUPS, True, AccessPolicy(), "c1")
    assert outcome.counts == {"create": 40}  # an unknown account is accepted silently, as AWS does
    assert moto_sso.settings.peak == 15
    assert outcome.max_outstanding == 15


def test_the_emulator_refuses_a_sixteenth_request_in_progress(world: World) -> None:
    moto_sso.reset(polls_in_progress=5)
    for n in range(15):
        world.access.create("p", world.sets["ViewOnlyAccess"], f"{n:012d}")
    # a client that does not retry, so the refusal itself is seen
    plain = boto3.client("sso-admin", region_name=world.sso.meta.region_name, config=_no_retry())
    with pytest.raises(ClientError, match="ThrottlingException"):
        plain.create_account_assignment(
            InstanceArn=world.instance,
            TargetId="999999999999",
            TargetType="AWS_ACCOUNT",
            PermissionSetArn=world.sets["ViewOnlyAccess"],
            PrincipalType="GROUP",
            PrincipalId="p",
        )
    assert moto_sso.settings.peak == 16


def _no_retry() -> Config:
    return Config(retries={"mode": "standard", "total_max_attempts": 1})


def test_an_unknown_permission_set_is_refused_and_a_missing_assignment_cannot_be_deleted(world: World) -> None:
    bogus = world.instance.replace("instance/", "permissionSet/") + "/ps-0000000000000000"
    with pytest.raises(TargetNotFound, match="PermissionSet"):
        world.access.create("p", bogus, world.other_account)
    with pytest.raises(TargetNotFound):
        world.access.delete("p", world.sets["ViewOnlyAccess"], world.other_account)


def test_the_deletion_guard_holds_removals_back_and_names_each(world: World) -> None:
    state = FakeState()
    service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c1")
    outcome = service(world, state, entries(world)[:1]).reconcile(
        GROUPS, True, AccessPolicy(max_deletions=1, max_deletion_percent=50.0), "c2"
    )
    assert outcome.guard is not None
    assert outcome.guard.deletions == 2
    assert len(world.held("p-readers")) == 2  # nothing removed
    held = [e for e in state.logs if e.cycle_id == "c2" and e.error == "held back by the deletion guard"]
    assert sorted(e.name.split(" @ ")[1] for e in held) == sorted([world.ou_accounts[0], world.ou_accounts[2]])


def test_unknown_names_are_reported_and_keep_what_the_group_owns(world: World) -> None:
    state = FakeState()
    service(world, state, entries(world)).reconcile(GROUPS, True, AccessPolicy(), "c1")
    broken = [entries(world)[0], {**entries(world)[1], "permission_set": "NoSuchSet"}]
    outcome = service(world, state, broken).reconcile(GROUPS, True, AccessPolicy(allow_deletions=True), "c2")
    assert outcome.counts == {}
    assert len(world.held("p-readers")) == 2
    assert any("access.1.permission_set: no permission set 'NoSuchSet'" in (e.error or "") for e in state.logs)
