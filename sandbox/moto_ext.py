"""Fill the gaps in moto's Identity Store emulation, so that tests and the demo meet the real API.

moto 5.2.5 serves most of the Identity Store API, but it lacks UpdateUser and UpdateGroup, drops
CreateUser's Extensions, Photos, Website, Birthdate and Roles, never answers Extensions, UserStatus,
UserArn or Revision, accepts the same membership twice, deletes absent objects without a word, and
leaves the memberships of a deleted user or group behind. The real service answers ConflictException
to a duplicate membership and ResourceNotFoundException to the delete of an absent user, group or
membership; memberships go with their user or group.

``install()`` patches moto's ``IdentityStoreBackend`` and ``IdentityStoreResponse`` in place (it is
idempotent), which serves ``mock_aws`` in-process and a moto server running in the same process alike.
``fail_next()`` makes the next calls of one operation fail with an error of the caller's choice
(ThrottlingException with RetryAfterSeconds, AccessDeniedException, ...), to exercise retries and error
handling; each fault comes back with the HTTP status AWS's service model gives its error shape
(InternalServerException 500, ThrottlingException 400, ...), so botocore retries it the way it
retries the real one. botocore's client-side validation is left alone: the service model is the real one.
Requests from several threads are answered one at a time, each atomically, as the service answers them
(moto's own backend would fail or corrupt its maps under concurrent requests).

userName uniqueness: AWS's API reference says only that UserName is "a unique string used to identify
the user" (and that Administrator and AWSAdministrators are reserved); it does not say whether case
counts. The emulator takes the strict reading, which no client can be hurt by assuming: two userNames
that differ only in case collide (ConflictException), and GetUserId finds a user by its userName
without regard to case.

Lists page in constant time per page, as the service does: moto builds the whole list on every page, finds
the page's start by a linear search, and scans every membership of the store for each group's members, so a
full listing of 100,000 users, 10,000 groups and 500,000 memberships would be quadratic. NextToken is opaque
(the position and the id found there); one that names nothing the store holds is a ValidationException.
Writes cost constant time too (moto scans every group for a duplicate displayName and every membership when
a user or group is deleted; the emulator keeps indexes instead: see ``_Index``), so a benchmark at 500,000
memberships measures idsync, not the emulator; errors are the service's, index or no index.

UpdateUser follows the documented semantics: each operation sets the attribute at ``AttributePath`` to
``AttributeValue``, a null or absent value removes it, and the operations of one call apply together or
not at all. Paths are SCIM attribute names, matched without regard to case (``displayName``,
``name.givenName``, ``emails``, ``aws:identitystore:enterprise.department``,
``aws:identitystore:enterprise.manager``); a multi-valued attribute (emails, addresses, phoneNumbers,
photos, roles) is only ever replaced whole. Values are checked against the service model's shapes
(names, lengths, counts) but not against its character patterns.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import botocore.session
from botocore.model import Shape
from moto.core.responses import BaseResponse
from moto.core.utils import unix_time
from moto.identitystore.exceptions import ConflictException, ResourceNotFoundException, ValidationException
from moto.identitystore.models import Group as MotoGroup
from moto.identitystore.models import IdentityStoreBackend, IdentityStoreData
from moto.identitystore.responses import IdentityStoreResponse
from moto.moto_api._internal import mock_random

from sandbox import moto_dynamodb, moto_transactions

ENTERPRISE = "aws:identitystore:enterprise"
# The SCIM enterprise user attributes the extension carries; manager is {"value": <user id>}.
ENTERPRISE_ATTRIBUTES = ("employeeNumber", "costCenter", "organization", "division", "department", "manager")
REQUIRED_USER_ATTRIBUTES = ("UserName", "DisplayName")
REQUIRED_NAME_PARTS = ("GivenName", "FamilyName")
MULTI_VALUE_MESSAGE = (
    "Unsupported update operation on multi-value attribute {name}, "
    "please provide full replacement of Multi-Value attribute types"
)

_MODEL = botocore.session.get_session().get_service_model("identitystore")
_USER_INPUT = _MODEL.operation_model("CreateUser").input_shape
# lower-case name -> (model name, shape) of every user attribute a caller may write
_USER_ATTRIBUTES: dict[str, tuple[str, Shape]] = {
    name.lower(): (name, shape)
    for name, shape in _USER_INPUT.members.items()
    if name not in ("IdentityStoreId", "Extensions")
}
_GROUP_ATTRIBUTES: dict[str, tuple[str, Shape]] = {
    name.lower(): (name, _MODEL.operation_model("CreateGroup").input_shape.members[name])
    for name in ("DisplayName", "Description")
}
_ENTERPRISE_NAMES = {name.lower(): name for name in ENTERPRISE_ATTRIBUTES}
_EXTENSION_PATH = re.compile(r"^(aws:identitystore:[A-Za-z]+)(?:\.(.+))?$")

_lock = threading.Lock()
# moto's backend is not thread-safe (it iterates dicts other requests change); idsync's pool calls from threads
_answering = threading.RLock()


# --------------------------------------------------------------------------- injected faults


@dataclass
class _Fault:
    code: str
    message: str
    remaining: int
    retry_after: int | None


_faults: dict[str, list[_Fault]] = {}


def fail_next(
    operation: str,
    code: str = "ThrottlingException",
    *,
    times: int = 1,
    message: str | None = None,
    retry_after: int | None = None,
) -> None:
    """Make the next ``times`` calls of ``operation`` (e.g. "CreateUser") fail with error ``code``.

    ``retry_after`` adds the ``RetryAfterSeconds`` member that a real ThrottlingException may carry.
    """
    if times < 1:
        raise ValueError("times must be at least 1")
    text = message or ("Rate exceeded" if code == "ThrottlingException" else f"{code} injected by the emulator")
    with _lock:
        _faults.setdefault(operation, []).append(_Fault(code, text, times, retry_after))


def clear_faults() -> None:
    """Forget every fault still waiting to fire."""
    with _lock:
        _faults.clear()


def _take_fault(operation: str) -> _Fault | None:
    with _lock:
        queue = _faults.get(operation)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining == 0:
            queue.pop(0)
        return fault


def _error_status(code: str) -> int:
    """The HTTP status AWS answers an error with: the model marks InternalServerException retryable but
    not throttling (a server fault, 500); every other Identity Store error is a client error (400)."""
    if code in _SERVER_FAULTS:
        return _SERVER_FAULTS[code]
    for shape in _MODEL.error_shapes:
        retryable = shape.metadata.get("retryable")
        if shape.name == code and retryable is not None and not retryable.get("throttling"):
            return 500
    return 400


_SERVER_FAULTS = {"InternalFailure": 500, "ServiceUnavailable": 503, "ServiceUnavailableException": 503}


# --------------------------------------------------------------------------- value checks


def _check_value(label: str, shape: Shape, value: Any) -> Any:
    """``value`` checked against ``shape``, with structure keys spelled as the model spells them."""
    kind = shape.type_name
    if kind == "string":
        if not isinstance(value, str):
            raise ValidationException(message=f"{label}: expected a string")
        low, high = shape.metadata.get("min", 0), shape.metadata.get("max")
        if len(value) < low or (high is not None and len(value) > high):
            raise ValidationException(message=f"{label}: length must be between {low} and {high}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValidationException(message=f"{label}: expected true or false")
        return value
    if kind == "structure":
        if not isinstance(value, dict):
            raise ValidationException(message=f"{label}: expected an object")
        members = {name.lower(): name for name in shape.members}
        out: dict[str, Any] = {}
        for key, item in value.items():
            member = members.get(str(key).lower())
            if member is None:
                allowed = ", ".join(shape.members)
                raise ValidationException(message=f"{label}: unknown attribute {key} (allowed: {allowed})")
            if item is not None:
                out[member] = _check_value(f"{label}.{member}", shape.members[member], item)
        return out
    if kind == "list":
        if not isinstance(value, list):
            raise ValidationException(message=f"{label}: expected a list")
        high = shape.metadata.get("max")
        if high is not None and len(value) > high:
            raise ValidationException(message=f"{label}: at most {high} value(s) allowed, got {len(value)}")
        return [_check_value(f"{label}[{i}]", shape.member, item) for i, item in enumerate(value)]
    raise ValidationException(message=f"{label}: attribute of type {kind} cannot be written")


def _enterprise_value(label: str, name: str, value: Any) -> Any:
    if name == "manager":
        if not isinstance(value, dict) or [k for k in value if str(k).lower() != "value"]:
            raise ValidationException(message=f'{label}: expected an object {{"value": <user id>}}')
        reference = next((v for k, v in value.items() if str(k).lower() == "value"), None)
        if not isinstance(reference, str) or not reference:
            raise ValidationException(message=f"{label}.value: expected a non-empty string")
        return {"value": reference}
    if not isinstance(value, str) or not value:
        raise ValidationException(message=f"{label}: expected a non-empty string")
    return value


def _enterprise(label: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationException(message=f"{label}: expected an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _ENTERPRISE_NAMES.get(str(key).lower())
        if name is None:
            allowed = ", ".join(ENTERPRISE_ATTRIBUTES)
            raise ValidationException(message=f"{label}: unknown attribute {key} (allowed: {allowed})")
        if item is not None:
            out[name] = _enterprise_value(f"{label}.{name}", name, item)
    return out


def _extension_name(name: str) -> str:
    if name != ENTERPRISE:
        raise ValidationException(
            message=f"Extension {name} is not supported: {ENTERPRISE} is the only supported extension name"
        )
    return name


def _check_extensions(value: Any) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationException(message="Extensions: expected a map of extension name to object")
    out = {_extension_name(str(name)): _enterprise(str(name), item) for name, item in value.items()}
    return {name: item for name, item in out.items() if item}


def _check_required(attributes: dict[str, Any]) -> None:
    missing = [name for name in REQUIRED_USER_ATTRIBUTES if not attributes.get(name)]
    name = attributes.get("Name") or {}
    missing += [f"Name.{part}" for part in REQUIRED_NAME_PARTS if not name.get(part)]
    if missing:
        raise ValidationException(
            message="; ".join(f"{attribute}: the attribute {attribute} is required" for attribute in missing)
        )


# --------------------------------------------------------------------------- the stored user


@dataclass
class StoredUser:
    """A user as the emulator keeps it: attributes in the model's spelling, extensions apart."""

    UserId: str
    IdentityStoreId: str
    attributes: dict[str, Any]
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: int = 1
    created_at: float = field(default_factory=unix_time)
    updated_at: float = field(default_factory=unix_time)

    # moto's own GetUserId reads these two
    @property
    def UserName(self) -> str:
        return str(self.attributes["UserName"])

    @property
    def Emails(self) -> list[dict[str, Any]]:
        return list(self.attributes.get("Emails") or [])

    def view(self, extensions: list[str] | None) -> dict[str, Any]:
        """The user as DescribeUser and ListUsers answer it; Extensions only when asked for."""
        out: dict[str, Any] = {
            "IdentityStoreId": self.IdentityStoreId,
            "UserId": self.UserId,
            "UserArn": f"arn:aws:identitystore:::user/{self.UserId}",
            "Revision": str(self.revision),
            **copy.deepcopy(self.attributes),
            "UserStatus": "ENABLED",
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
        }
        wanted = [_extension_name(name) for name in extensions or []]
        selected = {name: copy.deepcopy(self.extensions[name]) for name in wanted if self.extensions.get(name)}
        if selected:
            out["Extensions"] = selected
        return out


def _apply_extension_operation(
    extensions: dict[str, dict[str, Any]], name: str, sub_path: str | None, value: Any, path: str
) -> None:
    _extension_name(name)
    if sub_path is None:
        if value is None:
            extensions.pop(name, None)
        else:
            extensions[name] = _enterprise(path, value)
        return
    parts = sub_path.split(".")
    attribute = _ENTERPRISE_NAMES.get(parts[0].lower())
    valid_manager_value = attribute == "manager" and len(parts) == 2 and parts[1].lower() == "value"
    if attribute is None or (len(parts) > 1 and not valid_manager_value):
        raise ValidationException(message=f"Invalid attribute path {path}")
    current = dict(extensions.get(name) or {})
    if value is None:
        current.pop(attribute, None)
    elif valid_manager_value:
        current[attribute] = _enterprise_value(path, attribute, {"value": value})
    else:
        current[attribute] = _enterprise_value(path, attribute, value)
    if current:
        extensions[name] = current
    else:
        extensions.pop(name, None)


def _apply_user_operation(
    attributes: dict[str, Any], extensions: dict[str, dict[str, Any]], operation: dict[str, Any]
) -> None:
    path = str(operation.get("AttributePath") or "")
    value = operation.get("AttributeValue")  # null or absent removes the attribute
    extension = _EXTENSION_PATH.match(path)
    if extension:
        _apply_extension_operation(extensions, extension.group(1), extension.group(2), value, path)
        return
    segments = path.split(".")
    head = segments[0].split("[", 1)[0]
    found = _USER_ATTRIBUTES.get(head.lower())
    if found is None:
        raise ValidationException(message=f"Invalid attribute path {path}: {head} is not a writable user attribute")
    name, shape = found
    if shape.type_name == "list" and (len(segments) > 1 or "[" in segments[0]):
        raise ValidationException(message=MULTI_VALUE_MESSAGE.format(name=head))
    if "[" in segments[0] or len(segments) > 2 or (len(segments) == 2 and shape.type_name != "structure"):
        raise ValidationException(message=f"Invalid attribute path {path}")
    if len(segments) == 1:
        if value is None:
            attributes.pop(name, None)
        else:
            attributes[name] = _check_value(path, shape, value)
        return
    members = {member.lower(): member for member in shape.members}
    member = members.get(segments[1].lower())
    if member is None:
        raise ValidationException(message=f"Invalid attribute path {path}: {name} has no {segments[1]}")
    parts = dict(attributes.get(name) or {})
    if value is None:
        parts.pop(member, None)
    else:
        parts[member] = _check_value(path, shape.members[member], value)
    if parts:
        attributes[name] = parts
    else:
        attributes.pop(name, None)


class _Index:
    """The lookups the service answers in constant time: userName (case-folded) and group displayName to id,
    (group, user) to membership id, a group's and a user's memberships.

    Every write through the gap-fill updates it in place and seals it with the store's sizes; a store whose
    sizes differ from the seal was changed behind its back (a benchmark seeds moto's dicts directly) and the
    index is rebuilt from it, once."""

    def __init__(self, store: IdentityStoreData) -> None:
        self.names = {u.UserName.casefold(): u.UserId for u in store.users.values() if isinstance(u, StoredUser)}
        self.group_names = {g.DisplayName: g.GroupId for g in store.groups.values()}
        self.pairs: dict[tuple[str, str], str] = {}
        self.by_group: dict[str, dict[str, dict[str, Any]]] = {}
        self.by_user: dict[str, set[str]] = {}
        for membership in store.group_memberships.values():
            self.remember(membership)
        self.seal(store)

    def seal(self, store: IdentityStoreData) -> None:
        self.sizes = (len(store.users), len(store.groups), len(store.group_memberships))

    def remember(self, membership: dict[str, Any]) -> None:
        key, group_id, user_id = (
            membership["MembershipId"],
            membership["GroupId"],
            membership["MemberId"].get("UserId", ""),
        )
        self.pairs[(group_id, user_id)] = key
        self.by_group.setdefault(group_id, {})[key] = membership
        self.by_user.setdefault(user_id, set()).add(key)

    def forget(self, membership: dict[str, Any]) -> None:
        key, group_id, user_id = (
            membership["MembershipId"],
            membership["GroupId"],
            membership["MemberId"].get("UserId", ""),
        )
        if self.pairs.get((group_id, user_id)) == key:
            del self.pairs[(group_id, user_id)]
        self.by_group.get(group_id, {}).pop(key, None)
        self.by_user.get(user_id, set()).discard(key)


def _index(store: IdentityStoreData) -> _Index:
    """The store's index, rebuilt when the store was changed behind the gap-fill's back."""
    index: _Index | None = getattr(store, "_idsync_index", None)
    if index is None or index.sizes != (len(store.users), len(store.groups), len(store.group_memberships)):
        index = _Index(store)
        store._idsync_index = index  # type: ignore[attr-defined]
    return index


# --------------------------------------------------------------------------- backend


class _BackendGaps:
    """Methods installed on moto's IdentityStoreBackend."""

    identity_stores: dict[str, IdentityStoreData]

    def _store(self, identity_store_id: str) -> IdentityStoreData:
        return self.identity_stores.setdefault(identity_store_id, IdentityStoreData())

    def _user(self, identity_store_id: str, user_id: str) -> StoredUser:
        user = self._store(identity_store_id).users.get(user_id)
        if not isinstance(user, StoredUser):
            raise ResourceNotFoundException(message="USER not found.", resource_type="USER")
        return user

    @staticmethod
    def _unique_user_name(store: IdentityStoreData, user_name: str, user_id: str | None) -> None:
        holder = _index(store).names.get(user_name.casefold())
        if holder is not None and holder != user_id and holder in store.users:
            raise ConflictException(message="Duplicate UserName", reason="UNIQUENESS_CONSTRAINT_VIOLATION")

    @staticmethod
    def _unique_group_name(store: IdentityStoreData, display_name: str, group_id: str | None) -> None:
        holder = _index(store).group_names.get(display_name)
        if holder is not None and holder != group_id and holder in store.groups:
            raise ConflictException(message="Duplicate GroupDisplayName", reason="UNIQUENESS_CONSTRAINT_VIOLATION")

    def list_groups(
        self,
        identity_store_id: str,
        filters: list[dict[str, str]] | None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> tuple[list[Any], str | None]:
        groups = list(self._store(identity_store_id).groups.values())
        for item in filters or []:
            if item.get("AttributePath", "").lower() != "displayname":
                raise ValidationException(message=f"Filtering groups by {item.get('AttributePath')} is not supported")
            groups = [g for g in groups if g.DisplayName == item.get("AttributeValue")]
        return _page(groups, lambda g: str(g.GroupId), max_results, next_token)

    def list_group_memberships(
        self, identity_store_id: str, group_id: str, max_results: int | None = None, next_token: str | None = None
    ) -> tuple[list[Any], str | None]:
        members = list(_index(self._store(identity_store_id)).by_group.get(group_id, {}).values())
        return _page(members, lambda m: str(m["MembershipId"]), max_results, next_token)

    def create_user(self, identity_store_id: str, attributes: dict[str, Any], extensions: Any) -> tuple[str, str]:
        checked = {
            name: _check_value(name, shape, attributes[name])
            for name, shape in _USER_INPUT.members.items()
            if name in attributes and attributes[name] is not None
        }
        _check_required(checked)
        checked_extensions = _check_extensions(extensions)
        store = self._store(identity_store_id)
        self._unique_user_name(store, checked["UserName"], None)
        user_id = str(mock_random.uuid4())
        index = _index(store)
        store.users[user_id] = StoredUser(user_id, identity_store_id, checked, checked_extensions)
        index.names[checked["UserName"].casefold()] = user_id
        index.seal(store)
        return user_id, identity_store_id

    def create_group(self, identity_store_id: str, display_name: str, description: str | None) -> tuple[str, str]:
        store = self._store(identity_store_id)
        self._unique_group_name(store, display_name, None)
        index = _index(store)
        group_id = str(mock_random.uuid4())
        store.groups[group_id] = MotoGroup(group_id, display_name, [], description, identity_store_id)
        index.group_names[display_name] = group_id
        index.seal(store)
        return group_id, identity_store_id

    def get_user_id(self, identity_store_id: str, alternate_identifier: dict[str, Any]) -> tuple[str, str]:
        unique = alternate_identifier.get("UniqueAttribute") or {}
        if str(unique.get("AttributePath", "")).lower() == "username" and unique.get("AttributeValue"):
            store = self._store(identity_store_id)
            user_id = _index(store).names.get(str(unique["AttributeValue"]).casefold())
            if user_id is not None and isinstance(store.users.get(user_id), StoredUser):
                return user_id, identity_store_id
            raise ResourceNotFoundException(message="USER not found.", resource_type="USER")
        return IdentityStoreBackend.get_user_id(self, identity_store_id, alternate_identifier)  # type: ignore[arg-type]

    def list_users(
        self,
        identity_store_id: str,
        filters: list[dict[str, str]] | None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> tuple[list[StoredUser], str | None]:
        users = [u for u in self._store(identity_store_id).users.values() if isinstance(u, StoredUser)]
        for item in filters or []:
            if item.get("AttributePath", "").lower() != "username":
                raise ValidationException(message=f"Filtering users by {item.get('AttributePath')} is not supported")
            users = [u for u in users if u.UserName.casefold() == str(item.get("AttributeValue")).casefold()]
        return _page(users, lambda u: u.UserId, max_results, next_token)

    def update_user(
        self, identity_store_id: str, user_id: str, operations: list[dict[str, Any]], revision: str | None
    ) -> StoredUser:
        user = self._user(identity_store_id, user_id)
        if revision is not None and revision != str(user.revision):
            raise ConflictException(
                message=f"Revision {revision} does not match the current revision {user.revision}",
                reason="CONCURRENT_MODIFICATION",
            )
        attributes = copy.deepcopy(user.attributes)
        extensions = copy.deepcopy(user.extensions)
        for operation in operations:
            _apply_user_operation(attributes, extensions, operation)
        _check_required(attributes)
        store = self._store(identity_store_id)
        self._unique_user_name(store, attributes["UserName"], user_id)
        index = _index(store)
        if attributes["UserName"].casefold() != user.UserName.casefold():
            index.names.pop(user.UserName.casefold(), None)
            index.names[attributes["UserName"].casefold()] = user_id
        user.attributes, user.extensions = attributes, extensions
        user.revision += 1
        user.updated_at = unix_time()
        return user

    def delete_user(self, identity_store_id: str, user_id: str) -> None:
        store = self._store(identity_store_id)
        index = _index(store)
        user = store.users.pop(user_id, None)
        if user is None:
            raise ResourceNotFoundException(message="USER not found.", resource_type="USER")
        index.names.pop(user.UserName.casefold(), None)
        for membership_id in list(index.by_user.get(user_id, ())):
            index.forget(store.group_memberships.pop(membership_id))
        index.seal(store)

    def update_group(self, identity_store_id: str, group_id: str, operations: list[dict[str, Any]]) -> None:
        store = self._store(identity_store_id)
        group = store.groups.get(group_id)
        if group is None:
            raise ResourceNotFoundException(message="GROUP not found.", resource_type="GROUP")
        changes: dict[str, Any] = {}
        for operation in operations:
            path = str(operation.get("AttributePath") or "")
            found = _GROUP_ATTRIBUTES.get(path.lower())
            if found is None:
                raise ValidationException(
                    message=f"Invalid attribute path {path}: a group has displayName and description"
                )
            name, shape = found
            value = operation.get("AttributeValue")
            if value is None and name == "DisplayName":
                raise ValidationException(message="displayName: the attribute displayName is required")
            changes[name] = None if value is None else _check_value(path, shape, value)
        new_name = changes.get("DisplayName", group.DisplayName)
        self._unique_group_name(store, new_name, group_id)
        index = _index(store)
        index.group_names.pop(group.DisplayName, None)
        index.group_names[new_name] = group_id
        store.groups[group_id] = group._replace(**changes)

    def delete_group(self, identity_store_id: str, group_id: str) -> None:
        store = self._store(identity_store_id)
        index = _index(store)
        group = store.groups.pop(group_id, None)
        if group is None:
            raise ResourceNotFoundException(message="GROUP not found.", resource_type="GROUP")
        if index.group_names.get(group.DisplayName) == group_id:
            del index.group_names[group.DisplayName]
        for membership_id in list(index.by_group.get(group_id, {})):
            index.forget(store.group_memberships.pop(membership_id))
        index.by_group.pop(group_id, None)
        index.seal(store)

    def create_group_membership(
        self, identity_store_id: str, group_id: str, member_id: dict[str, str]
    ) -> tuple[str, str]:
        store = self._store(identity_store_id)
        user_id = member_id.get("UserId", "")
        if user_id not in store.users:
            raise ResourceNotFoundException(message="Member does not exist", resource_type="USER")
        if group_id not in store.groups:
            raise ResourceNotFoundException(message="Group does not exist", resource_type="GROUP")
        index = _index(store)
        if index.pairs.get((group_id, user_id)) in store.group_memberships:
            raise ConflictException(
                message="Member and Group relationship already exists",
                reason="UNIQUENESS_CONSTRAINT_VIOLATION",
            )
        membership_id = str(mock_random.uuid4())
        membership = {
            "IdentityStoreId": identity_store_id,
            "MembershipId": membership_id,
            "GroupId": group_id,
            "MemberId": {"UserId": user_id},
        }
        store.group_memberships[membership_id] = membership
        index.remember(membership)
        index.seal(store)
        return membership_id, identity_store_id

    def delete_group_membership(self, identity_store_id: str, membership_id: str) -> None:
        store = self._store(identity_store_id)
        index = _index(store)
        removed = store.group_memberships.pop(membership_id, None)
        if removed is None:
            raise ResourceNotFoundException(message="GROUP_MEMBERSHIP not found.", resource_type="GROUP_MEMBERSHIP")
        index.forget(removed)
        index.seal(store)


def _page(
    items: list[Any], key: Callable[[Any], str], max_results: int | None, next_token: str | None
) -> tuple[list[Any], str | None]:
    """One page of ``items`` from ``next_token`` and the token of the next page (None after the last).

    The token holds the position and the id expected there: found there (the store did not change) in constant
    time, else searched for. Raises ValidationException for a token that names nothing the list holds."""
    start = 0
    if next_token:
        try:
            position, expected = json.loads(base64.urlsafe_b64decode(next_token.encode()))
            start = int(position)
        except (ValueError, TypeError):
            raise ValidationException(message="The NextToken is not valid") from None
        if not (start < len(items) and key(items[start]) == expected):
            start = next((i for i, item in enumerate(items) if key(item) == expected), -1)
            if start < 0:
                raise ValidationException(message="The NextToken is not valid")
    end = start + (max_results or 100)
    if end >= len(items):
        return items[start:], None
    token = base64.urlsafe_b64encode(json.dumps([end, key(items[end])]).encode()).decode()
    return items[start:end], token


# --------------------------------------------------------------------------- responses


class _ResponseGaps:
    """Methods installed on moto's IdentityStoreResponse."""

    identitystore_backend: Any
    _get_param: Any
    _get_action: Any

    def call_action(self) -> Any:
        fault = _take_fault(self._get_action())
        if fault is None:
            with _answering:  # one request at a time, each atomic, as the service answers them
                return BaseResponse.call_action(self)
        body: dict[str, Any] = {"__type": fault.code, "Message": fault.message}
        if fault.retry_after is not None:
            body["RetryAfterSeconds"] = fault.retry_after
        headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amzn-ErrorType": fault.code}
        return _error_status(fault.code), headers, json.dumps(body)

    def create_user(self) -> str:
        attributes = {name: self._get_param(name) for name in _USER_INPUT.members}
        attributes.pop("IdentityStoreId")
        extensions = attributes.pop("Extensions")
        user_id, store_id = self.identitystore_backend.create_user(
            self._get_param("IdentityStoreId"), attributes, extensions
        )
        user = self.identitystore_backend._user(store_id, user_id)
        return json.dumps(
            {
                "IdentityStoreId": store_id,
                "UserId": user_id,
                "UserArn": f"arn:aws:identitystore:::user/{user_id}",
                "Revision": str(user.revision),
            }
        )

    def describe_user(self) -> str:
        user = self.identitystore_backend._user(self._get_param("IdentityStoreId"), self._get_param("UserId"))
        return json.dumps(user.view(self._get_param("Extensions")))

    def list_users(self) -> str:
        users, next_token = self.identitystore_backend.list_users(
            identity_store_id=self._get_param("IdentityStoreId"),
            filters=self._get_param("Filters"),
            max_results=self._get_param("MaxResults"),
            next_token=self._get_param("NextToken"),
        )
        extensions = self._get_param("Extensions")
        return json.dumps({"Users": [u.view(extensions) for u in users], "NextToken": next_token})

    def update_user(self) -> str:
        user = self.identitystore_backend.update_user(
            self._get_param("IdentityStoreId"),
            self._get_param("UserId"),
            self._get_param("Operations") or [],
            self._get_param("Revision"),
        )
        return json.dumps(
            {
                "IdentityStoreId": user.IdentityStoreId,
                "UserId": user.UserId,
                "UserArn": f"arn:aws:identitystore:::user/{user.UserId}",
                "Revision": str(user.revision),
            }
        )

    def update_group(self) -> str:
        store_id, group_id = self._get_param("IdentityStoreId"), self._get_param("GroupId")
        self.identitystore_backend.update_group(store_id, group_id, self._get_param("Operations") or [])
        return json.dumps(
            {
                "IdentityStoreId": store_id,
                "GroupId": group_id,
                "GroupArn": f"arn:aws:identitystore:::group/{group_id}",
            }
        )


def install() -> None:
    """Install the gap-fill on moto's Identity Store classes, and DynamoDB's Query and transactions at the cost
    of what they read and write (``sandbox.moto_dynamodb``, ``sandbox.moto_transactions``). Idempotent;
    in-process and server mode."""
    moto_dynamodb.install()
    moto_transactions.install()
    with _lock:
        for target, gaps in ((IdentityStoreBackend, _BackendGaps), (IdentityStoreResponse, _ResponseGaps)):
            for name, member in vars(gaps).items():
                if not name.startswith("__") and target.__dict__.get(name) is not member:
                    setattr(target, name, member)


def fire_due_schedules(client: Any, group_name: str, now: datetime) -> list[dict[str, Any]]:
    """EventBridge Scheduler's firing, which moto does not do: every one-time ``at()`` schedule of the group due
    at ``now`` fires once, and is deleted when its ActionAfterCompletion is DELETE. Returns the fired inputs."""
    fired: list[dict[str, Any]] = []
    names = [
        item["Name"]
        for page in client.get_paginator("list_schedules").paginate(GroupName=group_name)
        for item in page["Schedules"]
    ]
    for name in sorted(names):
        schedule = client.get_schedule(Name=name, GroupName=group_name)
        match = re.match(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$", schedule["ScheduleExpression"])
        if match is None or datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC) > now:
            continue
        fired.append(json.loads(schedule["Target"]["Input"]))
        if schedule.get("ActionAfterCompletion") == "DELETE":
            client.delete_schedule(Name=name, GroupName=group_name)
    return fired
