"""The Identity Store gap-fill behaves as the API documents, through a real boto3 client (botocore
validates every request against the service model), in-process and over HTTP."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from sandbox import moto_ext

ENTERPRISE = "aws:identitystore:enterprise"
NAME = {"GivenName": "A", "FamilyName": "B"}


def _create(client: Any, store: str, user_name: str = "ada@example.com", **extra: Any) -> str:
    params: dict[str, Any] = {
        "DisplayName": "Ada Lovelace",
        "Name": {"GivenName": "Ada", "FamilyName": "Lovelace"},
        "Emails": [{"Value": user_name, "Type": "work", "Primary": True}],
        "Title": "Analyst",
    }
    params.update(extra)
    return str(client.create_user(IdentityStoreId=store, UserName=user_name, **params)["UserId"])


def _describe(client: Any, store: str, user_id: str) -> dict[str, Any]:
    user: dict[str, Any] = client.describe_user(IdentityStoreId=store, UserId=user_id, Extensions=[ENTERPRISE])
    return user


def _update(client: Any, store: str, user_id: str, *operations: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = client.update_user(IdentityStoreId=store, UserId=user_id, Operations=list(operations))
    return response


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error["Message"]


def test_update_display_name_and_revision(identitystore_client: Any, identity_store_id: str) -> None:
    # Given a user at revision 1
    user_id = _create(identitystore_client, identity_store_id)
    # When its display name is replaced
    answer = _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "displayName", "AttributeValue": "Ada L."},
    )
    # Then the store holds the new name at a new revision, and the answer names it
    user = _describe(identitystore_client, identity_store_id, user_id)
    assert user["DisplayName"] == "Ada L."
    assert answer["Revision"] == user["Revision"] == "2"
    assert answer["UserArn"] == f"arn:aws:identitystore:::user/{user_id}"


def test_name_parts_are_updated_one_by_one(identitystore_client: Any, identity_store_id: str) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "name.givenName", "AttributeValue": "Augusta"},
        {"AttributePath": "NAME.MIDDLENAME", "AttributeValue": "Ada"},  # SCIM paths ignore case
    )
    assert _describe(identitystore_client, identity_store_id, user_id)["Name"] == {
        "GivenName": "Augusta",
        "MiddleName": "Ada",
        "FamilyName": "Lovelace",
    }


def test_multi_valued_attributes_are_replaced_whole(identitystore_client: Any, identity_store_id: str) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    new_email = [{"value": "ada@new.example.com", "type": "work", "primary": True}]
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "emails", "AttributeValue": new_email},
    )
    assert _describe(identitystore_client, identity_store_id, user_id)["Emails"] == [
        {"Value": "ada@new.example.com", "Type": "work", "Primary": True}
    ]


@pytest.mark.parametrize("path", ["emails[0].value", "emails.value", 'phoneNumbers[type eq "work"].value'])
def test_partial_update_of_a_multi_valued_attribute_is_refused(
    identitystore_client: Any, identity_store_id: str, path: str
) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    with pytest.raises(ClientError) as excinfo:
        _update(identitystore_client, identity_store_id, user_id, {"AttributePath": path, "AttributeValue": "x"})
    code, message = _error(excinfo)
    assert code == "ValidationException"
    assert "full replacement of Multi-Value attribute" in message


def test_a_second_email_is_refused(identitystore_client: Any, identity_store_id: str) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    two = [{"value": "a@example.com"}, {"value": "b@example.com"}]
    with pytest.raises(ClientError) as excinfo:
        _update(
            identitystore_client,
            identity_store_id,
            user_id,
            {"AttributePath": "emails", "AttributeValue": two},
        )
    assert _error(excinfo) == ("ValidationException", "emails: at most 1 value(s) allowed, got 2")


@pytest.mark.parametrize(
    "operation",
    [{"AttributePath": "title", "AttributeValue": None}, {"AttributePath": "title"}],
    ids=["null", "absent"],
)
def test_a_null_or_absent_value_clears_the_attribute(
    identitystore_client: Any, identity_store_id: str, operation: dict[str, Any]
) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    _update(identitystore_client, identity_store_id, user_id, operation)
    assert "Title" not in _describe(identitystore_client, identity_store_id, user_id)


def test_operations_apply_together_or_not_at_all(identitystore_client: Any, identity_store_id: str) -> None:
    # Given a user; When one call sets a title and clears the required display name
    user_id = _create(identitystore_client, identity_store_id)
    with pytest.raises(ClientError) as excinfo:
        _update(
            identitystore_client,
            identity_store_id,
            user_id,
            {"AttributePath": "title", "AttributeValue": "Countess"},
            {"AttributePath": "displayName", "AttributeValue": None},
        )
    # Then the call is refused and nothing changed
    assert _error(excinfo) == ("ValidationException", "DisplayName: the attribute DisplayName is required")
    user = _describe(identitystore_client, identity_store_id, user_id)
    assert (user["Title"], user["DisplayName"], user["Revision"]) == ("Analyst", "Ada Lovelace", "1")


def test_enterprise_extension_on_create_describe_and_list(identitystore_client: Any, identity_store_id: str) -> None:
    # Given a user created with the enterprise extension
    enterprise = {"employeeNumber": "1815", "costCenter": "CC-7", "department": "Analytics"}
    user_id = _create(identitystore_client, identity_store_id, Extensions={ENTERPRISE: enterprise})
    # Then it is answered only when asked for, on DescribeUser and ListUsers alike
    plain = identitystore_client.describe_user(IdentityStoreId=identity_store_id, UserId=user_id)
    assert "Extensions" not in plain
    assert _describe(identitystore_client, identity_store_id, user_id)["Extensions"] == {ENTERPRISE: enterprise}
    listed = identitystore_client.list_users(IdentityStoreId=identity_store_id, Extensions=[ENTERPRISE])["Users"]
    assert [u["Extensions"] for u in listed] == [{ENTERPRISE: enterprise}]


def test_enterprise_extension_attributes_are_updated_one_by_one(
    identitystore_client: Any, identity_store_id: str
) -> None:
    manager_id = _create(identitystore_client, identity_store_id, "grace@example.com")
    user_id = _create(
        identitystore_client,
        identity_store_id,
        Extensions={ENTERPRISE: {"department": "Analytics", "division": "Science"}},
    )
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": f"{ENTERPRISE}.department", "AttributeValue": "Engines"},
        {"AttributePath": f"{ENTERPRISE}.division", "AttributeValue": None},
        {"AttributePath": f"{ENTERPRISE}.manager", "AttributeValue": {"value": manager_id}},
        {"AttributePath": f"{ENTERPRISE}.costCenter", "AttributeValue": "CC-1"},
    )
    assert _describe(identitystore_client, identity_store_id, user_id)["Extensions"] == {
        ENTERPRISE: {"department": "Engines", "manager": {"value": manager_id}, "costCenter": "CC-1"}
    }
    # the whole extension can also be cleared
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": ENTERPRISE, "AttributeValue": None},
    )
    assert "Extensions" not in _describe(identitystore_client, identity_store_id, user_id)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("favouriteColour", "blue", "Invalid attribute path favouriteColour"),
        ("name.nickname", "Ada", "Invalid attribute path name.nickname"),
        ("title.value", "Countess", "Invalid attribute path title.value"),
        ("userId", "x", "Invalid attribute path userId"),
        ("aws:identitystore:custom.colour", "blue", "Extension aws:identitystore:custom is not supported"),
        (f"{ENTERPRISE}.shoeSize", "42", f"Invalid attribute path {ENTERPRISE}.shoeSize"),
        (f"{ENTERPRISE}.manager", "not-an-object", f"{ENTERPRISE}.manager: expected an object"),
        ("title", 42, "title: expected a string"),
        ("title", "", "title: length must be between 1 and 1024"),
    ],
)
def test_a_bad_path_or_value_is_a_validation_error(
    identitystore_client: Any, identity_store_id: str, path: str, value: Any, message: str
) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    with pytest.raises(ClientError) as excinfo:
        _update(identitystore_client, identity_store_id, user_id, {"AttributePath": path, "AttributeValue": value})
    code, text = _error(excinfo)
    assert code == "ValidationException"
    assert text.startswith(message)


def test_update_of_an_unknown_user_is_not_found(identitystore_client: Any, identity_store_id: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        _update(
            identitystore_client,
            identity_store_id,
            "a1b2c3d4-5678-90ab-cdef-000000000000",
            {"AttributePath": "title", "AttributeValue": "x"},
        )
    assert _error(excinfo) == ("ResourceNotFoundException", "USER not found.")


def test_user_names_are_unique_on_create_and_update(identitystore_client: Any, identity_store_id: str) -> None:
    _create(identitystore_client, identity_store_id, "ada@example.com")
    other = _create(identitystore_client, identity_store_id, "grace@example.com")
    with pytest.raises(ClientError) as on_create:
        _create(identitystore_client, identity_store_id, "ada@example.com")
    with pytest.raises(ClientError) as on_update:
        _update(
            identitystore_client,
            identity_store_id,
            other,
            {"AttributePath": "userName", "AttributeValue": "ada@example.com"},
        )
    assert _error(on_create) == _error(on_update) == ("ConflictException", "Duplicate UserName")


def test_a_stale_revision_is_a_conflict(identitystore_client: Any, identity_store_id: str) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "title", "AttributeValue": "Countess"},
    )
    with pytest.raises(ClientError) as excinfo:
        identitystore_client.update_user(
            IdentityStoreId=identity_store_id,
            UserId=user_id,
            Revision="1",
            Operations=[{"AttributePath": "title", "AttributeValue": "Mathematician"}],
        )
    assert _error(excinfo)[0] == "ConflictException"
    assert _describe(identitystore_client, identity_store_id, user_id)["Title"] == "Countess"


def test_update_group(identitystore_client: Any, identity_store_id: str) -> None:
    group_id = identitystore_client.create_group(IdentityStoreId=identity_store_id, DisplayName="engineers")["GroupId"]
    identitystore_client.create_group(IdentityStoreId=identity_store_id, DisplayName="admins")
    identitystore_client.update_group(
        IdentityStoreId=identity_store_id,
        GroupId=group_id,
        Operations=[
            {"AttributePath": "displayName", "AttributeValue": "engineering"},
            {"AttributePath": "description", "AttributeValue": "people who build"},
        ],
    )
    group = identitystore_client.describe_group(IdentityStoreId=identity_store_id, GroupId=group_id)
    assert (group["DisplayName"], group["Description"]) == ("engineering", "people who build")

    def refused(*operations: dict[str, Any], group: str = group_id) -> tuple[str, str]:
        with pytest.raises(ClientError) as excinfo:
            identitystore_client.update_group(
                IdentityStoreId=identity_store_id, GroupId=group, Operations=list(operations)
            )
        return _error(excinfo)

    assert refused({"AttributePath": "displayName", "AttributeValue": "admins"})[0] == "ConflictException"
    assert refused({"AttributePath": "displayName"})[0] == "ValidationException"
    assert refused({"AttributePath": "members", "AttributeValue": []})[0] == "ValidationException"
    unknown = "a1b2c3d4-5678-90ab-cdef-000000000000"
    assert refused({"AttributePath": "description"}, group=unknown)[0] == "ResourceNotFoundException"


def test_a_duplicate_membership_is_a_conflict(identitystore_client: Any, identity_store_id: str) -> None:
    user_id = _create(identitystore_client, identity_store_id)
    group_id = identitystore_client.create_group(IdentityStoreId=identity_store_id, DisplayName="engineers")["GroupId"]
    identitystore_client.create_group_membership(
        IdentityStoreId=identity_store_id, GroupId=group_id, MemberId={"UserId": user_id}
    )
    with pytest.raises(ClientError) as excinfo:
        identitystore_client.create_group_membership(
            IdentityStoreId=identity_store_id, GroupId=group_id, MemberId={"UserId": user_id}
        )
    assert _error(excinfo)[0] == "ConflictException"


def test_deletes_of_absent_objects_are_not_found_and_memberships_follow_their_user(
    identitystore_client: Any, identity_store_id: str
) -> None:
    # Given a user in a group
    user_id = _create(identitystore_client, identity_store_id)
    group_id = identitystore_client.create_group(IdentityStoreId=identity_store_id, DisplayName="engineers")["GroupId"]
    membership = identitystore_client.create_group_membership(
        IdentityStoreId=identity_store_id, GroupId=group_id, MemberId={"UserId": user_id}
    )["MembershipId"]
    # When the user is deleted, Then its membership is gone too
    identitystore_client.delete_user(IdentityStoreId=identity_store_id, UserId=user_id)
    memberships = identitystore_client.list_group_memberships(IdentityStoreId=identity_store_id, GroupId=group_id)
    assert memberships["GroupMemberships"] == []
    # And deleting what is gone is ResourceNotFoundException, as the real service answers
    for call, params in [
        (identitystore_client.delete_user, {"UserId": user_id}),
        (identitystore_client.delete_group_membership, {"MembershipId": membership}),
    ]:
        with pytest.raises(ClientError) as excinfo:
            call(IdentityStoreId=identity_store_id, **params)
        assert _error(excinfo)[0] == "ResourceNotFoundException"
    identitystore_client.delete_group(IdentityStoreId=identity_store_id, GroupId=group_id)
    with pytest.raises(ClientError) as excinfo:
        identitystore_client.delete_group(IdentityStoreId=identity_store_id, GroupId=group_id)
    assert _error(excinfo)[0] == "ResourceNotFoundException"


def test_injected_throttling_fails_the_next_calls_then_clears(aws: None, identity_store_id: str) -> None:
    # Given a client that never retries, and two throttles waiting on ListGroups
    client = boto3.client("identitystore", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    moto_ext.fail_next("ListGroups", times=2, retry_after=7)
    # Then the next two calls are throttled with RetryAfterSeconds, and the third one passes
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            client.list_groups(IdentityStoreId=identity_store_id)
        assert excinfo.value.response["Error"]["Code"] == "ThrottlingException"
        assert excinfo.value.response["RetryAfterSeconds"] == 7
    assert client.list_groups(IdentityStoreId=identity_store_id)["Groups"] == []


def test_install_is_idempotent(identitystore_client: Any, identity_store_id: str) -> None:
    moto_ext.install()
    moto_ext.install()
    user_id = _create(identitystore_client, identity_store_id)
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "title", "AttributeValue": "Countess"},
    )
    assert _describe(identitystore_client, identity_store_id, user_id)["Title"] == "Countess"


def test_gap_fill_over_http(moto_endpoint: str, aws_region: str) -> None:
    # Given clients talking HTTP to the moto server
    sso_admin = boto3.client("sso-admin", region_name=aws_region, endpoint_url=moto_endpoint)
    store = sso_admin.list_instances()["Instances"][0]["IdentityStoreId"]
    client = boto3.client("identitystore", region_name=aws_region, endpoint_url=moto_endpoint)
    user_id = _create(client, store, Extensions={ENTERPRISE: {"department": "Analytics"}})
    group_id = client.create_group(IdentityStoreId=store, DisplayName="engineers")["GroupId"]
    # When the filled calls are made
    _update(
        client,
        store,
        user_id,
        {"AttributePath": "displayName", "AttributeValue": "Ada L."},
        {"AttributePath": f"{ENTERPRISE}.department", "AttributeValue": "Engines"},
    )
    client.update_group(
        IdentityStoreId=store,
        GroupId=group_id,
        Operations=[{"AttributePath": "displayName", "AttributeValue": "eng"}],
    )
    client.create_group_membership(IdentityStoreId=store, GroupId=group_id, MemberId={"UserId": user_id})
    # Then the server holds the result and answers the real error codes
    user = _describe(client, store, user_id)
    assert (user["DisplayName"], user["Extensions"]) == ("Ada L.", {ENTERPRISE: {"department": "Engines"}})
    assert client.describe_group(IdentityStoreId=store, GroupId=group_id)["DisplayName"] == "eng"
    with pytest.raises(ClientError) as excinfo:
        client.create_group_membership(IdentityStoreId=store, GroupId=group_id, MemberId={"UserId": user_id})
    assert _error(excinfo)[0] == "ConflictException"


def test_injected_server_faults_answer_http_500_and_throttling_400(aws: None, identity_store_id: str) -> None:
    # Given a client that never retries, a server fault and a throttle waiting on ListUsers
    client = boto3.client("identitystore", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
    moto_ext.fail_next("ListUsers", "InternalServerException")
    moto_ext.fail_next("ListUsers", "ThrottlingException")
    # Then the server fault is an HTTP 500 and the throttle an HTTP 400, as AWS answers them
    statuses = []
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            client.list_users(IdentityStoreId=identity_store_id)
        statuses.append(
            (excinfo.value.response["Error"]["Code"], excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"])
        )
    assert statuses == [("InternalServerException", 500), ("ThrottlingException", 400)]


def test_a_retrying_client_rides_out_one_server_fault(aws: None, identity_store_id: str) -> None:
    # Given botocore's standard retries and one InternalServerException on CreateUser
    client = boto3.client("identitystore", config=Config(retries={"mode": "standard", "total_max_attempts": 3}))
    moto_ext.fail_next("CreateUser", "InternalServerException")
    # Then the create succeeds on the retry, once
    user_id = _create(client, identity_store_id)
    assert [u["UserId"] for u in client.list_users(IdentityStoreId=identity_store_id)["Users"]] == [user_id]


def test_user_names_differing_only_in_case_collide_and_are_found(
    identitystore_client: Any, identity_store_id: str
) -> None:
    # Given a user Ada@Example.com
    user_id = _create(identitystore_client, identity_store_id, "Ada@Example.com")
    # Then a second user whose userName differs only in case is refused, on create and on rename
    with pytest.raises(ClientError) as excinfo:
        _create(identitystore_client, identity_store_id, "ada@example.com")
    assert _error(excinfo)[0] == "ConflictException"
    other = _create(identitystore_client, identity_store_id, "bo@example.com")
    with pytest.raises(ClientError) as excinfo:
        _update(
            identitystore_client,
            identity_store_id,
            other,
            {"AttributePath": "userName", "AttributeValue": "ADA@example.com"},
        )
    assert _error(excinfo)[0] == "ConflictException"
    # and GetUserId finds it whatever the case
    found = identitystore_client.get_user_id(
        IdentityStoreId=identity_store_id,
        AlternateIdentifier={"UniqueAttribute": {"AttributePath": "userName", "AttributeValue": "ADA@EXAMPLE.COM"}},
    )
    assert found["UserId"] == user_id
    # and a user may change the case of its own userName
    _update(
        identitystore_client,
        identity_store_id,
        user_id,
        {"AttributePath": "userName", "AttributeValue": "ada@example.com"},
    )
    assert _describe(identitystore_client, identity_store_id, user_id)["UserName"] == "ada@example.com"


def test_requests_from_many_threads_are_answered_one_at_a_time(
    identitystore_client: Any, identity_store_id: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    # Given 8 threads creating 600 groups and users at once (moto's own backend iterates maps others change)
    def create(index: int) -> None:
        identitystore_client.create_group(IdentityStoreId=identity_store_id, DisplayName=f"Team {index}")
        identitystore_client.create_user(
            IdentityStoreId=identity_store_id,
            UserName=f"u{index}@example.com",
            DisplayName=f"User {index}",
            Name={"GivenName": "U", "FamilyName": str(index)},
        )

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(600)))
    # Then every one landed, once
    groups = identitystore_client.get_paginator("list_groups").paginate(IdentityStoreId=identity_store_id)
    users = identitystore_client.get_paginator("list_users").paginate(IdentityStoreId=identity_store_id)
    assert len({g["DisplayName"] for page in groups for g in page["Groups"]}) == 600
    assert len({u["UserName"] for page in users for u in page["Users"]}) == 600


class _NoScan(dict[str, Any]):
    """A store map that fails any write which walks it whole (the service answers writes in constant time)."""

    def _scan(self, *_: Any) -> Any:
        raise AssertionError("a write walked every item of the store")

    __iter__ = values = items = keys = _scan  # type: ignore[assignment]


def _data(identity_store_id: str, aws_region: str) -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.identitystore.models import identitystore_backends

    return identitystore_backends[DEFAULT_ACCOUNT_ID][aws_region]._store(identity_store_id)


def test_writes_never_walk_the_whole_store_and_answer_as_the_service_does(
    identitystore_client: Any, identity_store_id: str, aws_region: str
) -> None:
    # Given two users in two groups, and a store whose maps refuse to be walked from now on
    client, store = identitystore_client, identity_store_id
    ada, bo = _create(client, store, "ada@example.com"), _create(client, store, "bo@example.com")
    ops, admins = (client.create_group(IdentityStoreId=store, DisplayName=n)["GroupId"] for n in ("ops", "admins"))
    for group in (ops, admins):
        for user in (ada, bo):
            client.create_group_membership(IdentityStoreId=store, GroupId=group, MemberId={"UserId": user})
    data = _data(identity_store_id, aws_region)
    data.users, data.groups, data.group_memberships = (
        _NoScan(data.users),
        _NoScan(data.groups),
        _NoScan(data.group_memberships),
    )

    def refused(call: Any, **params: Any) -> str:
        with pytest.raises(ClientError) as excinfo:
            call(IdentityStoreId=store, **params)
        return _error(excinfo)[0]

    # Then every write is answered as the service answers it, without a walk over the store
    assert refused(client.create_group, DisplayName="ops") == "ConflictException"
    assert refused(client.create_group_membership, GroupId=ops, MemberId={"UserId": ada}) == "ConflictException"
    rename = {"AttributePath": "displayName", "AttributeValue": "admins"}
    assert refused(client.update_group, GroupId=ops, Operations=[rename]) == "ConflictException"
    client.update_group(IdentityStoreId=store, GroupId=ops, Operations=[{**rename, "AttributeValue": "operators"}])
    # the freed name can be taken, the new one cannot
    client.create_group(IdentityStoreId=store, DisplayName="ops")
    assert refused(client.create_group, DisplayName="operators") == "ConflictException"
    _update(client, store, ada, {"AttributePath": "userName", "AttributeValue": "ada.l@example.com"})
    assert refused(client.create_user, UserName="ADA.L@example.com", DisplayName="A", Name=NAME) == "ConflictException"
    carol = _create(client, store, "ada@example.com")
    # deleting a user takes its memberships, and only its own
    client.delete_user(IdentityStoreId=store, UserId=bo)
    assert refused(client.delete_user, UserId=bo) == "ResourceNotFoundException"
    assert refused(client.create_group_membership, GroupId=ops, MemberId={"UserId": bo}) == "ResourceNotFoundException"
    _create(client, store, "bo@example.com")
    membership = client.create_group_membership(IdentityStoreId=store, GroupId=admins, MemberId={"UserId": carol})
    client.delete_group_membership(IdentityStoreId=store, MembershipId=membership["MembershipId"])
    assert refused(client.delete_group_membership, MembershipId=membership["MembershipId"]) == (
        "ResourceNotFoundException"
    )
    client.delete_group(IdentityStoreId=store, GroupId=admins)
    assert refused(client.delete_group, GroupId=admins) == "ResourceNotFoundException"
    listed = client.list_group_memberships(IdentityStoreId=store, GroupId=ops)["GroupMemberships"]
    # And what is left is exactly what the service would hold
    assert [m["MemberId"]["UserId"] for m in listed] == [ada]
    assert {m["GroupId"] for m in dict.values(data.group_memberships)} == {ops}
    found = client.get_user_id(
        IdentityStoreId=store,
        AlternateIdentifier={"UniqueAttribute": {"AttributePath": "userName", "AttributeValue": "ADA.L@example.com"}},
    )
    assert found["UserId"] == ada


def test_objects_seeded_behind_the_emulators_back_are_seen_by_every_write(
    identitystore_client: Any, identity_store_id: str, aws_region: str
) -> None:
    from moto.identitystore.models import Group

    # Given a user, a group and their membership written straight into moto's maps (as a benchmark seeds them)
    client, store = identitystore_client, identity_store_id
    _create(client, store, "first@example.com")
    data = _data(identity_store_id, aws_region)
    data.users["u-1"] = moto_ext.StoredUser(
        "u-1",
        store,
        {"UserName": "Seeded@example.com", "DisplayName": "S", "Name": {"GivenName": "S", "FamilyName": "S"}},
    )
    data.groups["g-1"] = Group("g-1", "seeded", [], "", store)
    data.group_memberships["m-1"] = {
        "IdentityStoreId": store,
        "MembershipId": "m-1",
        "GroupId": "g-1",
        "MemberId": {"UserId": "u-1"},
    }
    # Then the writes see them: duplicates are conflicts, and the seeded user's delete takes its membership
    with pytest.raises(ClientError) as excinfo:
        _create(client, store, "seeded@example.com")
    assert _error(excinfo)[0] == "ConflictException"
    with pytest.raises(ClientError) as excinfo:
        client.create_group(IdentityStoreId=store, DisplayName="seeded")
    assert _error(excinfo)[0] == "ConflictException"
    with pytest.raises(ClientError) as excinfo:
        client.create_group_membership(IdentityStoreId=store, GroupId="g-1", MemberId={"UserId": "u-1"})
    assert _error(excinfo)[0] == "ConflictException"
    client.delete_user(IdentityStoreId=store, UserId="u-1")
    assert client.list_group_memberships(IdentityStoreId=store, GroupId="g-1")["GroupMemberships"] == []
    assert "m-1" not in data.group_memberships
