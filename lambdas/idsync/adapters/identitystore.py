"""IAM Identity Center's identity store, through the Identity Store API (boto3 ``identitystore``).

``IdentityStoreTarget`` implements ``ports.IdentityStore``. Lists are read in pages of 100 (the API's
maximum). Throttling is retried by botocore's adaptive retry mode, which also slows the client down to
the rate the service accepts; a client behind idsync's rate budget (``from_settings(budget=...)``) uses
standard retries instead, the budget slowing down on every throttled answer. botocore waits as long
as an ``x-amz-retry-after`` header asks (capped at its own backoff + 5 s) but ignores a
ThrottlingException's ``RetryAfterSeconds`` member, so the adapter copies that member into the header
before botocore decides.

Errors become idsync's: ConflictException -> TargetConflict, ResourceNotFoundException -> TargetNotFound
(the delete of an absent object returns quietly), AccessDeniedException and rejected or missing
credentials -> TargetAuthError, throttling, AWS-side faults (HTTP 5xx) and lost connections that
outlast botocore's retries -> TargetTransient (the cycle stops and resumes; not a failure), anything
else (ValidationException included, with the API's own message) -> TargetError.

Attribute documents use the API's own key names and go to CreateUser unchanged. Updates are sent as
UpdateUser operations on SCIM attribute paths: ``displayName``, ``title``, ``name.givenName`` (one
operation per changed part of the name), ``emails`` / ``addresses`` / ``phoneNumbers`` (multi-valued
attributes are always replaced whole), ``aws:identitystore:enterprise.department`` and
``aws:identitystore:enterprise.manager`` (one operation per changed extension attribute). A null value
removes the attribute.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    TokenRetrievalError,
)

from idsync.adapters.budget import attach_budget
from idsync.config import IdentityStoreSettings
from idsync.errors import (
    TargetAuthError,
    TargetConflict,
    TargetError,
    TargetNotFound,
    TargetThrottled,
    TargetTransient,
)
from idsync.model import (
    ENTERPRISE_EXTENSION,
    AttributeChange,
    JsonValue,
    TargetGroup,
    TargetUser,
    UserDoc,
    freeze_doc,
)
from idsync.ports import CallCounter, Check, RateBudget

PAGE_SIZE = 100  # MaxResults: the API's maximum page
MAX_OPERATIONS = 100  # AttributeOperations: at most 100 per UpdateUser / UpdateGroup call
EXTENSIONS = "Extensions"
RETRY_AFTER_HEADER = "x-amz-retry-after"  # milliseconds; botocore's retry modes honour it

_AUTH_ERROR_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationTokenException",
    }
)
_THROTTLING_ERROR_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_TRANSIENT_ERROR_CODES = _THROTTLING_ERROR_CODES | frozenset(
    {
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
    }
)
_CREDENTIAL_ERRORS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
)


def retry_config(max_attempts: int) -> Config:
    """botocore's adaptive retries: backoff with jitter plus a client-side rate limiter on throttling.

    ``max_attempts`` is botocore's: retries after the first attempt.
    """
    return Config(retries={"mode": "adaptive", "max_attempts": max_attempts})


JIT_CALL_SECONDS = 30  # the longest a call of ``jit_client_config``'s client takes: 2 x (3 + 10) s + a backoff


def jit_client_config() -> Config:
    """The JIT functions' bounded client: every call answers (or fails) within 2 x (3 + 10) s plus one
    backoff (``JIT_CALL_SECONDS``), well inside the PIM group's 60 s lease, which a writer holds for at least
    that long (plus a margin) before each call. Standard retries: the adaptive mode's client-side rate limiter
    may wait without bound."""
    return Config(connect_timeout=3, read_timeout=10, retries={"mode": "standard", "total_max_attempts": 2})


def _aws_client(service: str, settings: IdentityStoreSettings, config: Config | None = None) -> Any:
    return boto3.client(
        service,
        region_name=settings.region,
        endpoint_url=settings.endpoint_url,
        config=config or retry_config(settings.max_attempts),
    )


def _retry_after_header(response_dict: dict[str, Any], **_: Any) -> None:
    """Hand a throttled answer's RetryAfterSeconds to botocore, whose retries honour x-amz-retry-after."""
    headers = response_dict.get("headers")
    if response_dict.get("status_code", 200) < 400 or headers is None or RETRY_AFTER_HEADER in headers:
        return
    try:
        payload = json.loads(response_dict.get("body") or b"")
    except (TypeError, ValueError):
        return
    seconds = payload.get("RetryAfterSeconds") if isinstance(payload, dict) else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0:
        headers[RETRY_AFTER_HEADER] = str(int(seconds * 1000))


def instrument(client: Any, counter: CallCounter | None) -> None:
    """Count the client's API calls in ``counter`` and honour RetryAfterSeconds on its retries.

    A call counts once, however many times botocore retried it (``before-call`` fires once per call).
    """
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-parse.{service}", _retry_after_header, unique_id="idsync-retry-after")
    if counter is not None:

        def count(model: Any, **_: Any) -> None:
            counter.add(model.name)

        client.meta.events.register(f"before-call.{service}", count, unique_id=f"idsync-calls-{id(counter)}")


def _translate(error: ClientError, operation: str, subject: str, iam_action: str) -> TargetError:
    details = error.response.get("Error", {})
    code = str(details.get("Code") or "Unknown")
    message = str(details.get("Message") or error)
    text = f"{operation} {subject}: {code}: {message}"
    if code == "ConflictException":
        return TargetConflict(text)
    if code == "ResourceNotFoundException":
        return TargetNotFound(text)
    if code in ("AccessDeniedException", "AccessDenied"):
        return TargetAuthError(f"{text} (the caller needs the IAM action {iam_action})")
    if code in _AUTH_ERROR_CODES:
        return TargetAuthError(f"{text} (the AWS credentials were rejected: check or renew them)")
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _THROTTLING_ERROR_CODES:
        return TargetThrottled(f"{text} (still throttled after the client's retries)")
    if code in _TRANSIENT_ERROR_CODES or status >= 500:
        return TargetTransient(f"{text} (still failing after the client's retries)")
    return TargetError(text)


@contextmanager
def _translated(operation: str, subject: str, iam_action: str) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        raise _translate(error, operation, subject, iam_action) from error
    except _CREDENTIAL_ERRORS as error:
        raise TargetAuthError(f"{operation} {subject}: no usable AWS credentials: {error}") from error
    except HTTPClientError as error:
        raise TargetTransient(f"{operation} {subject}: {error}") from error
    except BotoCoreError as error:
        raise TargetError(f"{operation} {subject}: {error}") from error


def _scim_name(key: str) -> str:
    return key[:1].lower() + key[1:]


def _wire(value: JsonValue) -> JsonValue:
    """A document value as an UpdateUser AttributeValue: SCIM (camelCase) keys, empty means null."""
    if isinstance(value, Mapping):
        return {_scim_name(str(k)): _wire(v) for k, v in value.items()} or None
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value] or None
    return None if value == "" else value


def _parts(prefix: str, old: JsonValue, new: JsonValue) -> list[dict[str, Any]]:
    """One operation per changed part of a complex attribute (the name, an extension)."""
    if not isinstance(new, Mapping):
        return [{"AttributePath": prefix, "AttributeValue": _wire(new)}]
    before = old if isinstance(old, Mapping) else {}
    return [
        {"AttributePath": f"{prefix}.{_scim_name(key)}", "AttributeValue": _wire(new.get(key))}
        for key in sorted(set(before) | set(new))
        if before.get(key) != new.get(key)
    ]


def attribute_operations(change: AttributeChange) -> list[dict[str, Any]]:
    """The UpdateUser / UpdateGroup operations that carry one document change.

    ``change.attribute`` is a document key ("DisplayName", "Name", "Emails", "Extensions"), or a dotted
    path below it ("Name.GivenName", "Extensions.aws:identitystore:enterprise",
    "Extensions.aws:identitystore:enterprise.manager"). A change to "Extensions" or to one extension
    becomes one operation per changed extension attribute, so attributes it does not mention (the
    manager, for one) are left as they are.
    """
    head, _, rest = change.attribute.partition(".")
    if head == EXTENSIONS:
        extension, _, below = rest.partition(".")
        if not extension:
            old = change.old if isinstance(change.old, Mapping) else {}
            new = change.new if isinstance(change.new, Mapping) else {}
            return [
                op
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
                for op in _parts(name, old.get(name), new.get(name))
            ]
        if not below:
            return _parts(extension, change.old, change.new)
        return [{"AttributePath": f"{extension}.{below}", "AttributeValue": _wire(change.new)}]
    path = ".".join(_scim_name(segment) for segment in change.attribute.split("."))
    if not rest and (isinstance(change.new, Mapping) or isinstance(change.old, Mapping)):
        return _parts(path, change.old, change.new)
    return [{"AttributePath": path, "AttributeValue": _wire(change.new)}]


class IdentityStoreTarget:
    """``ports.IdentityStore`` over boto3's ``identitystore`` client."""

    def __init__(
        self, identity_store_id: str | Callable[[], str], client: Any = None, counter: CallCounter | None = None
    ) -> None:
        # a callable is resolved on first use: a cycle that needs no AWS call makes none, discovery included
        self._store_id = identity_store_id
        self.client = (
            client
            if client is not None
            else boto3.client("identitystore", config=retry_config(IdentityStoreSettings().max_attempts))
        )
        self.counter = counter
        instrument(self.client, counter)
        create_user = self.client.meta.service_model.operation_model("CreateUser").input_shape.members
        self._doc_keys = frozenset(create_user) - {"IdentityStoreId", "UserName"}

    @property
    def identity_store_id(self) -> str:
        if callable(self._store_id):
            self._store_id = self._store_id()
        return self._store_id

    # ------------------------------------------------------------------ plumbing

    def _call(self, operation: str, subject: str, **params: Any) -> dict[str, Any]:
        with _translated(operation, subject, f"identitystore:{operation}"):
            method = getattr(self.client, xform_name(operation))
            response: dict[str, Any] = method(IdentityStoreId=self.identity_store_id, **params)
            return response

    def _pages(self, operation: str, key: str, subject: str, **params: Any) -> Iterator[dict[str, Any]]:
        with _translated(operation, subject, f"identitystore:{operation}"):
            paginator = self.client.get_paginator(xform_name(operation))
            pages = paginator.paginate(
                IdentityStoreId=self.identity_store_id, PaginationConfig={"PageSize": PAGE_SIZE}, **params
            )
            for page in pages:
                yield from page.get(key, [])

    def _page(
        self, operation: str, key: str, subject: str, token: str | None, **params: Any
    ) -> tuple[list[Any], str | None]:
        """One page of a List operation from ``token``, and the next page's token (None after the last)."""
        extra = {"NextToken": token} if token else {}
        response = self._call(operation, subject, MaxResults=PAGE_SIZE, **extra, **params)
        return list(response.get(key) or []), response.get("NextToken") or None

    def _update(self, operation: str, subject: str, changes: Sequence[AttributeChange], **ids: str) -> None:
        operations = [op for change in changes for op in attribute_operations(change)]
        # more than 100 operations take several calls (never the case for one user's document)
        for start in range(0, len(operations), MAX_OPERATIONS):
            self._call(operation, subject, Operations=operations[start : start + MAX_OPERATIONS], **ids)

    def _target_user(self, user: Mapping[str, Any]) -> TargetUser:
        doc = {key: value for key, value in user.items() if key in self._doc_keys}
        enterprise = (user.get(EXTENSIONS) or {}).get(ENTERPRISE_EXTENSION) or {}
        manager = enterprise.get("manager")
        manager_id = manager.get("value") if isinstance(manager, Mapping) else None
        return TargetUser(str(user["UserId"]), str(user.get("UserName", "")), freeze_doc(doc), manager_id)

    # ------------------------------------------------------------------ users

    def list_users(self) -> Iterator[TargetUser]:
        """Every user, with the enterprise extension; the doc holds document keys only."""
        for user in self._pages("ListUsers", "Users", "users", Extensions=[ENTERPRISE_EXTENSION]):
            yield self._target_user(user)

    def list_users_page(self, token: str | None) -> tuple[list[TargetUser], str | None]:
        """One ListUsers page (with the enterprise extension) and the next page's token."""
        users, following = self._page("ListUsers", "Users", "users", token, Extensions=[ENTERPRISE_EXTENSION])
        return [self._target_user(user) for user in users], following

    def describe_user(self, user_id: str) -> TargetUser | None:
        """The user with the enterprise extension (DescribeUser), or None when it does not exist."""
        try:
            response = self._call("DescribeUser", f"user {user_id}", UserId=user_id, Extensions=[ENTERPRISE_EXTENSION])
        except TargetNotFound:
            return None
        return self._target_user(response)

    def find_user(self, user_name: str) -> str | None:
        """The user id holding this userName (GetUserId), or None."""
        unique = {"AttributePath": "userName", "AttributeValue": user_name}
        try:
            response = self._call("GetUserId", f"user {user_name}", AlternateIdentifier={"UniqueAttribute": unique})
        except TargetNotFound:
            return None
        return str(response["UserId"])

    def create_user(self, user_name: str, doc: UserDoc) -> str:
        """Create the user from its document. Raises TargetConflict when the userName is taken,
        TargetError naming the attribute for a key that is not an Identity Store user attribute."""
        unknown = sorted(set(doc) - self._doc_keys)
        if unknown:
            raise TargetError(
                f"user {user_name}: attribute {unknown[0]} is not an Identity Store user attribute "
                f"(expected one of {', '.join(sorted(self._doc_keys))})"
            )
        response = self._call("CreateUser", f"user {user_name}", UserName=user_name, **doc)
        return str(response["UserId"])

    def update_user(self, user_id: str, changes: Sequence[AttributeChange]) -> None:
        """Apply every change in one UpdateUser call.

        Raises TargetNotFound, TargetConflict (a userName taken), TargetError (a value the API refuses).
        """
        self._update("UpdateUser", f"user {user_id}", changes, UserId=user_id)

    def delete_user(self, user_id: str) -> None:
        """Delete; a user already gone is not an error."""
        try:
            self._call("DeleteUser", f"user {user_id}", UserId=user_id)
        except TargetNotFound:
            return

    # ------------------------------------------------------------------ groups

    def list_groups(self) -> Iterator[TargetGroup]:
        for group in self._pages("ListGroups", "Groups", "groups"):
            yield TargetGroup(str(group["GroupId"]), str(group.get("DisplayName") or ""), group.get("Description"))

    def list_groups_page(self, token: str | None) -> tuple[list[TargetGroup], str | None]:
        """One ListGroups page and the next page's token."""
        groups, following = self._page("ListGroups", "Groups", "groups", token)
        return [
            TargetGroup(str(g["GroupId"]), str(g.get("DisplayName") or ""), g.get("Description")) for g in groups
        ], following

    def describe_group(self, group_id: str) -> TargetGroup | None:
        """The group (DescribeGroup), or None when it does not exist."""
        try:
            group = self._call("DescribeGroup", f"group {group_id}", GroupId=group_id)
        except TargetNotFound:
            return None
        return TargetGroup(str(group["GroupId"]), str(group.get("DisplayName") or ""), group.get("Description"))

    def find_group(self, display_name: str) -> str | None:
        """The group id holding this displayName (GetGroupId), or None."""
        unique = {"AttributePath": "displayName", "AttributeValue": display_name}
        try:
            response = self._call(
                "GetGroupId", f"group {display_name}", AlternateIdentifier={"UniqueAttribute": unique}
            )
        except TargetNotFound:
            return None
        return str(response["GroupId"])

    def create_group(self, display_name: str, description: str | None) -> str:
        """Create and return the group id. Raises TargetConflict when the displayName is taken."""
        extra = {"Description": description} if description else {}
        response = self._call("CreateGroup", f"group {display_name}", DisplayName=display_name, **extra)
        return str(response["GroupId"])

    def update_group(self, group_id: str, changes: Sequence[AttributeChange]) -> None:
        """Apply DisplayName / Description changes (UpdateGroup). Raises TargetNotFound, TargetConflict."""
        self._update("UpdateGroup", f"group {group_id}", changes, GroupId=group_id)

    def delete_group(self, group_id: str) -> None:
        """Delete; a group already gone is not an error."""
        try:
            self._call("DeleteGroup", f"group {group_id}", GroupId=group_id)
        except TargetNotFound:
            return

    # ------------------------------------------------------------------ memberships

    def list_memberships(self, group_id: str) -> Iterator[tuple[str, str]]:
        """(membership id, user id) of each user member of the group."""
        for membership in self._pages(
            "ListGroupMemberships", "GroupMemberships", f"group {group_id}", GroupId=group_id
        ):
            user_id = (membership.get("MemberId") or {}).get("UserId")
            if user_id:
                yield str(membership["MembershipId"]), str(user_id)

    def list_memberships_page(self, group_id: str, token: str | None) -> tuple[list[tuple[str, str]], str | None]:
        """One ListGroupMemberships page of the group (user members only) and the next page's token."""
        found, following = self._page(
            "ListGroupMemberships", "GroupMemberships", f"group {group_id}", token, GroupId=group_id
        )
        pairs = [
            (str(m["MembershipId"]), str((m.get("MemberId") or {}).get("UserId")))
            for m in found
            if (m.get("MemberId") or {}).get("UserId")
        ]
        return pairs, following

    def find_membership(self, group_id: str, user_id: str) -> str | None:
        """The membership id of the user in the group (GetGroupMembershipId), or None."""
        try:
            response = self._call(
                "GetGroupMembershipId",
                f"membership {group_id} <- {user_id}",
                GroupId=group_id,
                MemberId={"UserId": user_id},
            )
        except TargetNotFound:
            return None
        return str(response["MembershipId"])

    def create_membership(self, group_id: str, user_id: str) -> str:
        """Add the user to the group. Raises TargetConflict when the membership exists already,
        TargetNotFound when the group or the user does not exist."""
        response = self._call(
            "CreateGroupMembership",
            f"membership {group_id} <- {user_id}",
            GroupId=group_id,
            MemberId={"UserId": user_id},
        )
        return str(response["MembershipId"])

    def delete_membership(self, membership_id: str) -> None:
        """Remove; a membership already gone is not an error."""
        try:
            self._call("DeleteGroupMembership", f"membership {membership_id}", MembershipId=membership_id)
        except TargetNotFound:
            return

    # ------------------------------------------------------------------ connection test

    def check(self) -> list[Check]:
        """Can idsync read users and groups? A failed line names the missing IAM action."""
        checks = []
        for operation, what in (("ListUsers", "users"), ("ListGroups", "groups")):
            name = f"IAM Identity Center: read {what}"
            try:
                self._call(operation, f"identity store {self.identity_store_id}", MaxResults=1)
            except TargetError as error:
                checks.append(Check(name, False, str(error)))
            else:
                checks.append(Check(name, True, f"identity store {self.identity_store_id} answers {operation}"))
        return checks


def discover_identity_store_id(sso_admin: Any, counter: CallCounter | None = None) -> str:
    """The identity store id of the account's IAM Identity Center instance (sso-admin ListInstances).

    Raises TargetError when there is no instance, TargetAuthError when sso:ListInstances is denied.
    """
    instrument(sso_admin, counter)
    region = sso_admin.meta.region_name
    with _translated("ListInstances", f"IAM Identity Center instances in {region}", "sso:ListInstances"):
        for page in sso_admin.get_paginator("list_instances").paginate():
            for instance in page.get("Instances", []):
                if instance.get("IdentityStoreId"):
                    return str(instance["IdentityStoreId"])
    raise TargetError(
        f"no IAM Identity Center instance in region {region} (sso-admin ListInstances returned none): "
        "enable IAM Identity Center in this region, "
        "or set identity_store.region / identity_store.identity_store_id"
    )


def budgeted_retry_config(max_attempts: int) -> Config:
    """Standard retries (backoff with jitter, no client-side limiter) for a client behind idsync's own rate
    budget, which already slows down on every throttled answer. Measured against a service throttling at
    15/s under a 20/s budget, adaptive mode took as long (126.9 s for 1,880 calls, either way): its second
    limiter on the same signal buys nothing, and it may wait without bound."""
    return Config(retries={"mode": "standard", "max_attempts": max_attempts})


def from_settings(
    settings: IdentityStoreSettings,
    counter: CallCounter | None = None,
    bounded: bool = False,
    budget: RateBudget | None = None,
) -> IdentityStoreTarget:
    """An IdentityStoreTarget built from settings; the identity store id is discovered when not set.
    ``bounded``: the JIT functions' client (``jit_client_config``), whose calls never outlive a group lease.
    ``budget``: every Identity Store request waits its turn of it, and every throttled answer slows it down.

    Raises TargetError / TargetAuthError when the discovery fails.
    """
    store_id: str | Callable[[], str] = settings.identity_store_id or (
        lambda: discover_identity_store_id(_aws_client("sso-admin", settings), counter)
    )
    if bounded:
        config: Config | None = jit_client_config()
    elif budget is not None:
        config = budgeted_retry_config(settings.max_attempts)
    else:
        config = None
    target = IdentityStoreTarget(store_id, _aws_client("identitystore", settings, config), counter)
    if budget is not None:
        attach_budget(target.client, budget)
    return target
