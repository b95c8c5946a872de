"""IdentityStoreTarget against moto's Identity Store (gap-filled): what IAM Identity Center holds after
each call, the errors idsync sees, and the calls it makes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import boto3
import botocore.endpoint
import pytest
from botocore.config import Config
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ssoadmin.models import ssoadmin_backends

from idsync.adapters.identitystore import IdentityStoreTarget, from_settings
from idsync.config import IdentityStoreSettings
from idsync.errors import TargetAuthError, TargetConflict, TargetError, TargetNotFound, TargetThrottled, TargetTransient
from idsync.model import ENTERPRISE_EXTENSION, AttributeChange, freeze_doc
from idsync.ports import CallCounter
from sandbox import moto_ext


def full_doc(email: str = "ada@example.com", manager_id: str | None = None) -> dict[str, Any]:
    """Every attribute of the AWS IAM Identity Center attribute table, in the API's own key names."""
    enterprise: dict[str, Any] = {
        "employeeNumber": "1815",
        "costCenter": "CC-7",
        "organization": "Analytical Engines",
        "division": "Science",
        "department": "Mathematics",
    }
    if manager_id:
        enterprise["manager"] = {"value": manager_id}
    return {
        "DisplayName": "Ada Lovelace",
        "Name": {"GivenName": "Ada", "FamilyName": "Lovelace", "Formatted": "Ada Lovelace", "MiddleName": "Augusta"},
        "Emails": [{"Value": email, "Type": "work", "Primary": True}],
        "Addresses": [
            {
                "StreetAddress": "12 St James's Square",
                "Locality": "London",
                "Region": "Greater London",
                "PostalCode": "SW1Y 4JH",
                "Country": "GB",
                "Formatted": "12 St James's Square, London SW1Y 4JH, GB",
                "Type": "work",
                "Primary": True,
            }
        ],
        "PhoneNumbers": [{"Value": "+44 20 7946 0000", "Type": "work", "Primary": True}],
        "Title": "Analyst",
        "PreferredLanguage": "en-GB",
        "Locale": "GB",
        "Timezone": "Europe/London",
        "NickName": "Ada",
        "ProfileUrl": "https://example.com/ada",
        "UserType": "Employee",
        "Extensions": {ENTERPRISE_EXTENSION: enterprise},
    }


def minimal_doc(name: str) -> dict[str, Any]:
    return {"DisplayName": name, "Name": {"GivenName": name, "FamilyName": "Tester"}}


@pytest.fixture
def retry_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays botocore's retries ask for, recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.fixture
def manager(identity_store: IdentityStoreTarget) -> str:
    return identity_store.create_user("grace@example.com", minimal_doc("Grace"))


def users_by_name(store: IdentityStoreTarget) -> dict[str, Any]:
    return {user.user_name: user for user in store.list_users()}


# --------------------------------------------------------------------------- users


def test_a_user_with_every_attribute_round_trips(identity_store: IdentityStoreTarget, manager: str) -> None:
    # Given a document with every attribute of the AWS table, the enterprise extension and a manager
    doc = full_doc(manager_id=manager)
    # When the user is created and read back
    user_id = identity_store.create_user("ada@example.com", doc)
    listed = users_by_name(identity_store)["ada@example.com"]
    # Then Identity Center holds exactly that document, and the manager is surfaced
    assert listed.target_id == user_id
    assert listed.doc == freeze_doc(doc)
    assert listed.manager_target_id == manager
    assert users_by_name(identity_store)["grace@example.com"].manager_target_id is None


def test_listing_pages_past_100(identity_store: IdentityStoreTarget, call_counter: CallCounter) -> None:
    # Given 230 users, 101 of them in one group, and 101 groups
    user_ids = [identity_store.create_user(f"user{i:03}@example.com", minimal_doc(f"U{i}")) for i in range(230)]
    group_ids = [identity_store.create_group(f"group-{i:03}", None) for i in range(101)]
    for user_id in user_ids[:101]:
        identity_store.create_membership(group_ids[0], user_id)
    call_counter.calls.clear()
    # When everything is listed
    users = list(identity_store.list_users())
    groups = list(identity_store.list_groups())
    members = list(identity_store.list_memberships(group_ids[0]))
    # Then nothing is missed, in pages of 100
    assert sorted(u.target_id for u in users) == sorted(user_ids)
    assert sorted(g.target_id for g in groups) == sorted(group_ids)
    assert sorted(user for _, user in members) == sorted(user_ids[:101])
    assert call_counter.calls == {"ListUsers": 3, "ListGroups": 2, "ListGroupMemberships": 2}


def test_many_changes_go_in_one_update_user_call(
    identity_store: IdentityStoreTarget, call_counter: CallCounter, manager: str
) -> None:
    # Given a user with every attribute
    old = full_doc()
    user_id = identity_store.create_user("ada@example.com", old)
    new_manager = identity_store.create_user("charles@example.com", minimal_doc("Charles"))
    call_counter.calls.clear()
    # When names, email, title, address and the extension change (some attributes cleared)
    new_enterprise = dict(old["Extensions"][ENTERPRISE_EXTENSION])
    new_enterprise.update(department="Engines", manager={"value": new_manager})
    del new_enterprise["division"]
    changes = [
        AttributeChange("DisplayName", old["DisplayName"], "Ada King"),
        AttributeChange("Name", old["Name"], {"GivenName": "Ada", "FamilyName": "King", "Formatted": "Ada King"}),
        AttributeChange("Emails", old["Emails"], [{"Value": "ada@king.example.com", "Type": "work", "Primary": True}]),
        AttributeChange("Title", old["Title"], None),
        AttributeChange("Addresses", old["Addresses"], None),
        AttributeChange("Extensions", old["Extensions"], {ENTERPRISE_EXTENSION: new_enterprise}),
    ]
    identity_store.update_user(user_id, changes)
    # Then one UpdateUser call did it all, and Identity Center holds the new document
    assert call_counter.calls == {"UpdateUser": 1}
    expected = dict(old)
    expected.update(
        DisplayName="Ada King",
        Name={"GivenName": "Ada", "FamilyName": "King", "Formatted": "Ada King"},
        Emails=[{"Value": "ada@king.example.com", "Type": "work", "Primary": True}],
        Extensions={ENTERPRISE_EXTENSION: new_enterprise},
    )
    del expected["Title"], expected["Addresses"]
    listed = users_by_name(identity_store)["ada@example.com"]
    assert listed.doc == freeze_doc(expected)
    assert listed.manager_target_id == new_manager


def test_an_extension_change_leaves_unmentioned_attributes_alone(
    identity_store: IdentityStoreTarget, manager: str
) -> None:
    # Given a user with a manager and a department
    doc = minimal_doc("Ada") | {
        "Extensions": {ENTERPRISE_EXTENSION: {"department": "Maths", "manager": {"value": manager}}}
    }
    user_id = identity_store.create_user("ada@example.com", doc)
    # When only the department changes, then only the manager is removed
    identity_store.update_user(
        user_id,
        [AttributeChange(f"Extensions.{ENTERPRISE_EXTENSION}", {"department": "Maths"}, {"department": "Engines"})],
    )
    after_department = users_by_name(identity_store)["ada@example.com"]
    identity_store.update_user(
        user_id, [AttributeChange(f"Extensions.{ENTERPRISE_EXTENSION}.manager", {"value": manager}, None)]
    )
    after_manager = users_by_name(identity_store)["ada@example.com"]
    # Then the manager survived the first change, and the department the second
    assert after_department.manager_target_id == manager
    assert after_department.doc["Extensions"][ENTERPRISE_EXTENSION]["department"] == "Engines"
    assert after_manager.manager_target_id is None
    assert after_manager.doc["Extensions"] == {ENTERPRISE_EXTENSION: {"department": "Engines"}}


def test_user_name_can_change(identity_store: IdentityStoreTarget) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    identity_store.update_user(user_id, [AttributeChange("UserName", "ada@example.com", "ada.king@example.com")])
    assert identity_store.find_user("ada.king@example.com") == user_id
    assert identity_store.find_user("ada@example.com") is None


def test_more_than_100_operations_are_split(identity_store: IdentityStoreTarget, call_counter: CallCounter) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    call_counter.calls.clear()
    identity_store.update_user(user_id, [AttributeChange("Title", None, f"title {i}") for i in range(101)])
    assert call_counter.calls == {"UpdateUser": 2}
    assert users_by_name(identity_store)["ada@example.com"].doc["Title"] == "title 100"


def test_find_user(identity_store: IdentityStoreTarget) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    assert identity_store.find_user("ada@example.com") == user_id
    assert identity_store.find_user("nobody@example.com") is None


def test_a_taken_user_name_is_a_conflict(identity_store: IdentityStoreTarget) -> None:
    identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    with pytest.raises(TargetConflict, match=r"CreateUser user ada@example.com: ConflictException: Duplicate UserName"):
        identity_store.create_user("ada@example.com", minimal_doc("Ada"))


def test_a_value_the_api_refuses_is_a_target_error_with_its_message(identity_store: IdentityStoreTarget) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    with pytest.raises(TargetError) as on_create:
        identity_store.create_user("grace@example.com", {"DisplayName": "Grace"})
    with pytest.raises(TargetError) as on_update:
        identity_store.update_user(user_id, [AttributeChange("FavouriteColour", None, "blue")])
    assert type(on_create.value) is TargetError
    assert "CreateUser user grace@example.com: ValidationException: Name.GivenName" in str(on_create.value)
    assert type(on_update.value) is TargetError
    assert f"UpdateUser user {user_id}: ValidationException: Invalid attribute path favouriteColour" in str(
        on_update.value
    )


def test_a_document_key_outside_the_api_is_refused_before_any_call(
    identity_store: IdentityStoreTarget, call_counter: CallCounter
) -> None:
    with pytest.raises(TargetError, match=r"user ada@example.com: attribute Department is not an Identity Store"):
        identity_store.create_user("ada@example.com", minimal_doc("Ada") | {"Department": "Maths"})
    assert call_counter.calls == {}


def test_update_of_a_user_that_is_gone_is_not_found(identity_store: IdentityStoreTarget) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    identity_store.delete_user(user_id)
    with pytest.raises(TargetNotFound, match=r"UpdateUser user .*ResourceNotFoundException"):
        identity_store.update_user(user_id, [AttributeChange("Title", None, "Countess")])


def test_deletes_of_absent_objects_return_quietly(
    identity_store: IdentityStoreTarget, call_counter: CallCounter
) -> None:
    # Given a user in a group, deleted once
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    group_id = identity_store.create_group("engineers", None)
    membership_id = identity_store.create_membership(group_id, user_id)
    for _ in range(2):
        # When each is deleted twice, Then the second delete is quiet too
        identity_store.delete_membership(membership_id)
        identity_store.delete_user(user_id)
        identity_store.delete_group(group_id)
    assert list(identity_store.list_users()) == []
    assert list(identity_store.list_groups()) == []
    assert call_counter.calls["DeleteUser"] == call_counter.calls["DeleteGroup"] == 2


# --------------------------------------------------------------------------- groups and memberships


def test_groups(identity_store: IdentityStoreTarget) -> None:
    group_id = identity_store.create_group("engineers", "people who build")
    other_id = identity_store.create_group("admins", None)
    identity_store.update_group(
        group_id,
        [
            AttributeChange("DisplayName", "engineers", "engineering"),
            AttributeChange("Description", "people who build", None),
        ],
    )
    assert {(g.target_id, g.display_name, g.description) for g in identity_store.list_groups()} == {
        (group_id, "engineering", None),
        (other_id, "admins", None),
    }
    assert identity_store.find_group("engineering") == group_id
    assert identity_store.find_group("engineers") is None
    with pytest.raises(TargetConflict, match="CreateGroup group admins"):
        identity_store.create_group("admins", None)
    with pytest.raises(TargetConflict, match=f"UpdateGroup group {group_id}"):
        identity_store.update_group(group_id, [AttributeChange("DisplayName", "engineering", "admins")])


def test_memberships(identity_store: IdentityStoreTarget) -> None:
    ada = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    grace = identity_store.create_user("grace@example.com", minimal_doc("Grace"))
    group_id = identity_store.create_group("engineers", None)
    first = identity_store.create_membership(group_id, ada)
    second = identity_store.create_membership(group_id, grace)
    assert sorted(identity_store.list_memberships(group_id)) == sorted([(first, ada), (second, grace)])
    assert identity_store.find_membership(group_id, ada) == first
    with pytest.raises(TargetConflict, match="CreateGroupMembership"):
        identity_store.create_membership(group_id, ada)
    identity_store.delete_membership(first)
    assert identity_store.find_membership(group_id, ada) is None
    assert list(identity_store.list_memberships(group_id)) == [(second, grace)]
    with pytest.raises(TargetNotFound, match="Group does not exist"):
        identity_store.create_membership("a1b2c3d4-5678-90ab-cdef-000000000000", ada)


# --------------------------------------------------------------------------- calls, retries, errors


def test_the_counter_counts_each_call_exactly(identity_store: IdentityStoreTarget, call_counter: CallCounter) -> None:
    user_id = identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    identity_store.find_user("ada@example.com")
    identity_store.find_user("nobody@example.com")
    group_id = identity_store.create_group("engineers", None)
    membership_id = identity_store.create_membership(group_id, user_id)
    list(identity_store.list_memberships(group_id))
    identity_store.update_user(user_id, [])  # nothing to change: no call
    identity_store.delete_membership(membership_id)
    identity_store.delete_group(group_id)
    identity_store.delete_user(user_id)
    assert call_counter.calls == {
        "CreateUser": 1,
        "GetUserId": 2,
        "CreateGroup": 1,
        "CreateGroupMembership": 1,
        "ListGroupMemberships": 1,
        "DeleteGroupMembership": 1,
        "DeleteGroup": 1,
        "DeleteUser": 1,
    }
    assert call_counter.total == 9


def test_throttling_is_retried_until_the_call_succeeds(
    identity_store: IdentityStoreTarget, call_counter: CallCounter, retry_sleeps: list[float]
) -> None:
    # Given a group, and the service throttling the next two ListGroups requests
    group_id = identity_store.create_group("engineers", None)
    moto_ext.fail_next("ListGroups", "ThrottlingException", times=2)
    # When the groups are listed
    groups = list(identity_store.list_groups())
    # Then botocore retried twice and the call succeeded; the counter saw one call
    assert [g.target_id for g in groups] == [group_id]
    assert len(retry_sleeps) == 2
    assert call_counter.calls["ListGroups"] == 1


def test_retry_after_seconds_is_honoured(aws: None, identity_store_id: str, retry_sleeps: list[float]) -> None:
    # Given a throttle that asks the caller to wait 4 seconds (botocore's own first backoff is <= 1 s);
    # standard mode retries as adaptive mode does, without the rate limiter's real-time pause
    standard = Config(retries={"mode": "standard", "max_attempts": 3})
    store = IdentityStoreTarget(identity_store_id, boto3.client("identitystore", config=standard))
    moto_ext.fail_next("CreateGroup", "ThrottlingException", retry_after=4)
    # When a group is created
    group_id = store.create_group("engineers", None)
    # Then the retry waited at least the 4 seconds asked for, and succeeded
    assert store.find_group("engineers") == group_id
    assert len(retry_sleeps) == 1
    assert retry_sleeps[0] >= 4


@pytest.mark.parametrize(
    ("code", "kind"), [("ThrottlingException", TargetThrottled), ("InternalServerException", TargetTransient)]
)
def test_throttling_or_a_server_fault_past_the_attempts_is_transient(
    aws: None, identity_store_id: str, retry_sleeps: list[float], code: str, kind: type[TargetTransient]
) -> None:
    client = boto3.client("identitystore", config=Config(retries={"mode": "standard", "max_attempts": 1}))
    store = IdentityStoreTarget(identity_store_id, client)
    moto_ext.fail_next("ListUsers", code, times=5)
    with pytest.raises(TargetTransient, match=rf"ListUsers users: {code}: ") as excinfo:
        list(store.list_users())
    assert type(excinfo.value) is kind
    assert len(retry_sleeps) == 1


def test_a_server_fault_is_retried_like_throttling(
    identity_store: IdentityStoreTarget, call_counter: CallCounter, retry_sleeps: list[float]
) -> None:
    # Given the service failing on its side (HTTP 500) for the next CreateUser
    moto_ext.fail_next("CreateUser", "InternalServerException")
    # When a user is created
    doc = {"DisplayName": "Ada", "Name": {"GivenName": "Ada", "FamilyName": "Lovelace"}}
    user_id = identity_store.create_user("ada@example.com", doc)
    # Then botocore retried once and the user exists once
    assert identity_store.find_user("ada@example.com") == user_id
    assert len(retry_sleeps) == 1
    assert call_counter.calls["CreateUser"] == 1


def test_a_validation_error_is_not_transient(identity_store: IdentityStoreTarget) -> None:
    moto_ext.fail_next("CreateUser", "ValidationException", message="bad value")
    with pytest.raises(TargetError) as excinfo:
        identity_store.create_user("ada@example.com", {"DisplayName": "Ada"})
    assert type(excinfo.value) is TargetError


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("AccessDeniedException", "the caller needs the IAM action identitystore:CreateUser"),
        ("UnrecognizedClientException", "the AWS credentials were rejected: check or renew them"),
        ("ExpiredTokenException", "the AWS credentials were rejected: check or renew them"),
    ],
)
def test_rejected_credentials_and_permissions_are_auth_errors(
    identity_store: IdentityStoreTarget, code: str, hint: str
) -> None:
    moto_ext.fail_next("CreateUser", code, message="denied by the test")
    with pytest.raises(TargetAuthError) as excinfo:
        identity_store.create_user("ada@example.com", minimal_doc("Ada"))
    assert str(excinfo.value) == f"CreateUser user ada@example.com: {code}: denied by the test ({hint})"
    assert identity_store.find_user("ada@example.com") is None


def test_check_passes_on_a_reachable_store(identity_store: IdentityStoreTarget) -> None:
    checks = identity_store.check()
    assert [(c.name, c.ok) for c in checks] == [
        ("IAM Identity Center: read users", True),
        ("IAM Identity Center: read groups", True),
    ]


def test_check_names_the_missing_iam_action(identity_store: IdentityStoreTarget) -> None:
    moto_ext.fail_next("ListUsers", "AccessDeniedException", message="not authorized")
    users, groups = identity_store.check()
    assert not users.ok
    assert "identitystore:ListUsers" in users.detail
    assert groups.ok


def test_check_without_credentials(aws: None, monkeypatch: pytest.MonkeyPatch, identity_store_id: str) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = IdentityStoreTarget(identity_store_id, boto3.session.Session().client("identitystore"))
    checks = store.check()
    assert [c.ok for c in checks] == [False, False]
    assert "no usable AWS credentials" in checks[0].detail


# --------------------------------------------------------------------------- from settings


def test_from_settings_discovers_the_identity_store(aws: None, identity_store_id: str, aws_region: str) -> None:
    counter = CallCounter()
    store = from_settings(IdentityStoreSettings(region=aws_region, max_attempts=7), counter)
    assert store.identity_store_id == identity_store_id
    assert counter.calls == {"ListInstances": 1}
    # adaptive retries, botocore's max_attempts counting the retries after the first attempt
    assert store.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 8}
    assert store.client.meta.region_name == aws_region


def test_a_configured_identity_store_is_not_discovered(aws: None, aws_region: str) -> None:
    counter = CallCounter()
    store = from_settings(IdentityStoreSettings(identity_store_id="d-0123456789", region=aws_region), counter)
    assert store.identity_store_id == "d-0123456789"
    assert counter.calls == {}


def test_no_instance_is_a_clear_error(aws: None, aws_region: str) -> None:
    ssoadmin_backends[DEFAULT_ACCOUNT_ID][aws_region].instances.clear()
    store = from_settings(IdentityStoreSettings(region=aws_region))  # discovery waits for the first call
    with pytest.raises(TargetError, match=f"no IAM Identity Center instance in region {aws_region}"):
        list(store.list_users())


@pytest.fixture
def http_store(moto_endpoint: str, aws_region: str) -> IdentityStoreTarget:
    return from_settings(IdentityStoreSettings(region=aws_region, endpoint_url=moto_endpoint))


def test_from_settings_over_http(http_store: IdentityStoreTarget) -> None:
    user_id = http_store.create_user("ada@example.com", full_doc())
    http_store.update_user(user_id, [AttributeChange("Title", "Analyst", "Countess")])
    (user,) = http_store.list_users()
    assert user.doc == freeze_doc(full_doc() | {"Title": "Countess"})


def test_a_listing_goes_on_from_its_token_in_another_invocation(
    identity_store_id: str, identity_store: IdentityStoreTarget, call_counter: CallCounter
) -> None:
    # Given 230 users and a group of 150 of them
    user_ids = [identity_store.create_user(f"user{i:03}@example.com", minimal_doc(f"U{i}")) for i in range(230)]
    group_id = identity_store.create_group("big", None)
    for user_id in user_ids[:150]:
        identity_store.create_membership(group_id, user_id)
    call_counter.calls.clear()
    # When each page is read by a new client from the token the previous one stopped at
    users, token, pages = [], None, 0
    while True:
        fresh = IdentityStoreTarget(identity_store_id, boto3.client("identitystore", region_name="us-east-1"))
        page, token = fresh.list_users_page(token)
        users += page
        pages += 1
        if token is None:
            break
    first, token = identity_store.list_memberships_page(group_id, None)
    rest, last = identity_store.list_memberships_page(group_id, token)
    # Then nothing is missed nor repeated, in pages of 100
    assert pages == 3
    assert sorted(u.target_id for u in users) == sorted(user_ids)
    assert (len(first), len(rest), last) == (100, 50, None)
    assert sorted(user for _, user in first + rest) == sorted(user_ids[:150])
    # and a token the store does not know is refused as the API refuses it (not transient)
    with pytest.raises(TargetError, match="ValidationException") as refused:
        identity_store.list_groups_page("bm90LWEtdG9rZW4=")
    assert not isinstance(refused.value, TargetTransient)
