"""Fill the gaps in moto's IAM Identity Center (sso-admin) account assignments.

moto 5.2.5 names a permission set ``<instance ARN>/ps-...`` (AWS: ``arn:aws:sso:::permissionSet/ssoins-.../ps-...``),
answers CreateAccountAssignment and DeleteAccountAssignment SUCCEEDED at once, accepts a
permission set that does not exist, and records the same assignment twice. The real service works
asynchronously: a request answers IN_PROGRESS, and DescribeAccountAssignmentCreationStatus /
DeletionStatus later report SUCCEEDED or FAILED with a FailureReason; at most 15 requests may be in
progress at once; an unknown permission set is refused (ResourceNotFoundException) while an unknown
account is accepted silently; creating an assignment that exists already succeeds and changes nothing.

``install()`` patches moto's ``SSOAdminResponse`` in place (idempotent). A request stays IN_PROGRESS
for ``settings.polls_in_progress`` status reads, then settles: the assignment is created or deleted,
unless ``fail_assignment`` named its account, in which case the request FAILED with that reason.
``settings.peak`` is the most requests ever in progress at once (counting a refused one), so a test
can assert the bound held.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from moto.core.exceptions import JsonRESTError
from moto.core.utils import unix_time
from moto.moto_api._internal import mock_random
from moto.ssoadmin.exceptions import ResourceNotFoundException
from moto.ssoadmin.models import AccountAssignment, PermissionSet, SSOAdminBackend
from moto.ssoadmin.responses import SSOAdminResponse

OUTSTANDING_LIMIT = 15


class ThrottlingException(JsonRESTError):
    """HTTP 400 ThrottlingException, as the service answers a request over its limits."""

    code = 400

    def __init__(self, message: str) -> None:
        super().__init__(error_type="ThrottlingException", message=message)


@dataclass
class _Request:
    action: str  # "create" | "delete"
    assignment: AccountAssignment
    polls_left: int
    status: str = "IN_PROGRESS"
    reason: str | None = None


@dataclass
class EmulatorSettings:
    polls_in_progress: int = 1
    limit: int = OUTSTANDING_LIMIT
    failures: dict[str, str] = field(default_factory=dict)  # account id -> FailureReason
    requests: dict[str, _Request] = field(default_factory=dict)
    peak: int = 0
    writes: int = 0  # Create/DeleteAccountAssignment requests accepted

    def in_progress(self) -> int:
        return sum(1 for r in self.requests.values() if r.status == "IN_PROGRESS")


settings = EmulatorSettings()
_lock = threading.Lock()


def reset(polls_in_progress: int = 1) -> EmulatorSettings:
    """Forget every request and failure; requests then stay IN_PROGRESS for ``polls_in_progress`` reads."""
    with _lock:
        fresh = EmulatorSettings(polls_in_progress=polls_in_progress)
        for name in ("polls_in_progress", "limit", "failures", "requests", "peak", "writes"):
            setattr(settings, name, getattr(fresh, name))
    return settings


def fail_assignment(account_id: str, reason: str) -> None:
    """Requests for ``account_id`` settle FAILED with ``reason`` (as AWS reports an account it cannot reach)."""
    with _lock:
        settings.failures[account_id] = reason


def _same(a: AccountAssignment, b: AccountAssignment) -> bool:
    return (a.instance_arn, a.target_id, a.permission_set_arn, a.principal_type, a.principal_id) == (
        b.instance_arn,
        b.target_id,
        b.permission_set_arn,
        b.principal_type,
        b.principal_id,
    )


def _settle(backend: SSOAdminBackend, request: _Request) -> None:
    reason = settings.failures.get(request.assignment.target_id)
    if reason is not None:
        request.status, request.reason = "FAILED", reason
        return
    request.status = "SUCCEEDED"
    present = [a for a in backend.account_assignments if _same(a, request.assignment)]
    if request.action == "create" and not present:
        backend.account_assignments.append(request.assignment)
    if request.action == "delete":
        for found in present:
            backend.account_assignments.remove(found)
            backend.deleted_account_assignments.append(found)


def _document(request_id: str, request: _Request) -> dict[str, Any]:
    a = request.assignment
    out: dict[str, Any] = {
        "Status": request.status,
        "RequestId": request_id,
        "TargetId": a.target_id,
        "TargetType": a.target_type,
        "PermissionSetArn": a.permission_set_arn,
        "PrincipalType": a.principal_type,
        "PrincipalId": a.principal_id,
        "CreatedDate": unix_time(),
    }
    if request.reason:
        out["FailureReason"] = request.reason
    return out


class _ResponseGaps:
    """Replacement handlers, installed onto ``SSOAdminResponse``."""

    ssoadmin_backend: SSOAdminBackend
    body: Any

    def _start(self, action: str) -> tuple[str, _Request]:
        params = json.loads(self.body)
        backend = self.ssoadmin_backend
        instance = params["InstanceArn"]
        if not any(i.instance_arn == instance for i in backend.instances):
            raise ResourceNotFoundException(f"Instance {instance} does not exist")
        arn = params["PermissionSetArn"]
        if not any(p.permission_set_arn == arn and p.instance_arn == instance for p in backend.permission_sets):
            raise ResourceNotFoundException(f"Could not find PermissionSet with PermissionSetArn {arn}")
        assignment = AccountAssignment(
            instance, params["TargetId"], params["TargetType"], arn, params["PrincipalType"], params["PrincipalId"]
        )
        if action == "delete" and not any(_same(a, assignment) for a in backend.account_assignments):
            raise ResourceNotFoundException("The specified account assignment does not exist")
        with _lock:
            busy = settings.in_progress() + 1
            settings.peak = max(settings.peak, busy)
            if busy > settings.limit:
                raise ThrottlingException(
                    f"Too many requests in progress: at most {settings.limit} asynchronous account "
                    "assignment operations may be outstanding"
                )
            request_id = str(mock_random.uuid4())
            request = _Request(action, assignment, settings.polls_in_progress)
            settings.requests[request_id] = request
            settings.writes += 1
            if request.polls_left <= 0:
                _settle(backend, request)
        return request_id, request

    def _describe(self, action: str, id_param: str) -> dict[str, Any]:
        params = json.loads(self.body)
        request_id = params[id_param]
        with _lock:
            request = settings.requests.get(request_id)
            if request is None or request.action != action:
                raise ResourceNotFoundException(f"Request {request_id} not found")
            if request.status == "IN_PROGRESS":
                if request.polls_left <= 0:
                    _settle(self.ssoadmin_backend, request)
                else:
                    request.polls_left -= 1
        return _document(request_id, request)

    def create_account_assignment(self) -> str:
        request_id, request = self._start("create")
        return json.dumps({"AccountAssignmentCreationStatus": _document(request_id, request)})

    def delete_account_assignment(self) -> str:
        request_id, request = self._start("delete")
        return json.dumps({"AccountAssignmentDeletionStatus": _document(request_id, request)})

    def describe_account_assignment_creation_status(self) -> str:
        status = self._describe("create", "AccountAssignmentCreationRequestId")
        return json.dumps({"AccountAssignmentCreationStatus": status})

    def describe_account_assignment_deletion_status(self) -> str:
        status = self._describe("delete", "AccountAssignmentDeletionRequestId")
        return json.dumps({"AccountAssignmentDeletionStatus": status})


def _permission_set_arn(instance_arn: str) -> str:
    return instance_arn.replace(":instance/", ":permissionSet/") + "/ps-" + mock_random.get_random_hex(16)


def install() -> None:
    """Patch moto's sso-admin responses with the asynchronous behaviour above (idempotent)."""
    PermissionSet.generate_id = staticmethod(_permission_set_arn)  # type: ignore[method-assign]
    for name in (
        "_start",
        "_describe",
        "create_account_assignment",
        "delete_account_assignment",
        "describe_account_assignment_creation_status",
        "describe_account_assignment_deletion_status",
    ):
        setattr(SSOAdminResponse, name, getattr(_ResponseGaps, name))
