"""One contract for ``ports.AccountAccess``: the in-memory fake and the boto3 adapter on moto (with the
asynchronous gaps filled by sandbox.moto_sso) must answer every case the same way, as AWS does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from idsync.adapters.sso_admin import SsoAdminAccess
from idsync.errors import TargetError, TargetNotFound
from idsync.ports import AccountAccess
from sandbox import moto_sso
from tests.fakes import FakeAccountAccess


@dataclass
class Subject:
    access: AccountAccess
    ps: str
    ou: str
    nested_account: str
    fail: Any  # (account, reason) -> None: requests for the account settle FAILED with the reason


@pytest.fixture(params=["fake", "moto"])
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    if request.param == "fake":
        ps = "arn:aws:sso:::permissionSet/ssoins-0000000000000000/ps-aaaaaaaaaaaaaaaa"
        fake = FakeAccountAccess(
            permission_sets_by_name={"ReadOnly": ps},
            parents={
                "r-root": {"ou-aaaa-11111111"},
                "ou-aaaa-11111111": {"ou-bbbb-22222222"},
                "ou-bbbb-22222222": {"123456789012"},
            },
        )
        yield Subject(fake, ps, "ou-aaaa-11111111", "123456789012", fake.failures.__setitem__)
        return
    request.getfixturevalue("aws")
    moto_sso.install()
    moto_sso.reset(polls_in_progress=1)
    orgs = boto3.client("organizations", region_name="us-east-1")
    orgs.create_organization(FeatureSet="ALL")
    root = orgs.list_roots()["Roots"][0]["Id"]
    ou = orgs.create_organizational_unit(ParentId=root, Name="a")["OrganizationalUnit"]["Id"]
    nested = orgs.create_organizational_unit(ParentId=ou, Name="b")["OrganizationalUnit"]["Id"]
    account = orgs.create_account(Email="n@example.com", AccountName="n")["CreateAccountStatus"]["AccountId"]
    orgs.move_account(AccountId=account, SourceParentId=root, DestinationParentId=nested)
    sso = boto3.client("sso-admin", region_name="us-east-1")
    instance = sso.list_instances()["Instances"][0]["InstanceArn"]
    ps = sso.create_permission_set(Name="ReadOnly", InstanceArn=instance)["PermissionSet"]["PermissionSetArn"]
    yield Subject(SsoAdminAccess(instance, sso, orgs), ps, ou, account, moto_sso.fail_assignment)
    moto_sso.reset()


def settle(subject: Subject, status: Any, delete: bool = False) -> Any:
    polls = 0
    while not status.done:
        reader = subject.access.deletion_status if delete else subject.access.creation_status
        status = reader(status.request_id)
        polls += 1
    return status, polls


def test_a_create_is_asynchronous_then_listed(subject: Subject) -> None:
    started = subject.access.create("p1", subject.ps, "111111111111")
    assert started.status == "IN_PROGRESS"
    assert subject.access.assignments("p1") == set()
    done, polls = settle(subject, started)
    assert (done.status, polls) == ("SUCCEEDED", 2)
    assert subject.access.assignments("p1") == {(subject.ps, "111111111111")}


def test_creating_an_existing_assignment_succeeds_and_changes_nothing(subject: Subject) -> None:
    settle(subject, subject.access.create("p1", subject.ps, "111111111111"))
    done, _ = settle(subject, subject.access.create("p1", subject.ps, "111111111111"))
    assert done.status == "SUCCEEDED"
    assert subject.access.assignments("p1") == {(subject.ps, "111111111111")}


def test_a_delete_is_asynchronous_and_an_absent_one_is_not_found(subject: Subject) -> None:
    settle(subject, subject.access.create("p1", subject.ps, "111111111111"))
    done, _ = settle(subject, subject.access.delete("p1", subject.ps, "111111111111"), delete=True)
    assert done.status == "SUCCEEDED"
    assert subject.access.assignments("p1") == set()
    with pytest.raises(TargetNotFound):
        subject.access.delete("p1", subject.ps, "111111111111")


def test_an_unknown_permission_set_is_refused_but_an_unknown_account_is_accepted(subject: Subject) -> None:
    bogus = subject.ps.rsplit("/", 1)[0] + "/ps-0000000000000000"
    with pytest.raises(TargetNotFound):
        subject.access.create("p1", bogus, "111111111111")
    done, _ = settle(subject, subject.access.create("p1", subject.ps, "999999999999"))
    assert done.status == "SUCCEEDED"


def test_a_failed_request_carries_the_reason(subject: Subject) -> None:
    subject.fail("111111111111", "account is suspended")
    done, _ = settle(subject, subject.access.create("p1", subject.ps, "111111111111"))
    assert (done.status, done.reason) == ("FAILED", "account is suspended")
    assert subject.access.assignments("p1") == set()


def test_a_sixteenth_request_in_progress_is_refused(subject: Subject) -> None:
    for n in range(15):
        subject.access.create("p1", subject.ps, f"{n + 1:012d}")
    with pytest.raises(TargetError, match="ThrottlingException"):
        subject.access.create("p1", subject.ps, "000000000099")


def test_accounts_under_an_ou_are_found_recursively_and_an_unknown_ou_is_not_found(subject: Subject) -> None:
    assert subject.access.accounts_under(subject.ou) == {subject.nested_account}
    with pytest.raises(TargetNotFound):
        subject.access.accounts_under("ou-zzzz-99999999")
    assert subject.access.permission_sets() == {"ReadOnly": subject.ps}
