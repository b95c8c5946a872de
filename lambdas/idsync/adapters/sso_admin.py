"""Account assignments in IAM Identity Center (boto3 ``sso-admin``) and the accounts of AWS Organizations.

``SsoAdminAccess`` implements ``ports.AccountAccess``. Every sso-admin request (each retry included)
first takes a turn from the shared ``RateBudget``, so idsync stays under IAM Identity Center's
collective rate (``adapters.budget.attach_budget``, re-exported here); botocore's retries handle the
throttling that remains, each throttled answer slowing the budget down. Errors become
idsync's as in the Identity Store adapter: ResourceNotFoundException -> TargetNotFound,
AccessDeniedException -> TargetAuthError (naming the IAM action), anything else -> TargetError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.exceptions import ClientError

from idsync.adapters.budget import attach_budget
from idsync.adapters.identitystore import _translated, instrument, retry_config
from idsync.config import IdentityStoreSettings
from idsync.errors import TargetError, TargetNotFound
from idsync.ports import AssignmentStatus, CallCounter, RateBudget

__all__ = ["SsoAdminAccess", "attach_budget", "discover_instance_arn", "from_settings"]

PRINCIPAL_TYPE = "GROUP"
TARGET_TYPE = "AWS_ACCOUNT"


@contextmanager
def _parent_missing(parent: str) -> Iterator[None]:
    """Organizations names an unknown OU or root ParentNotFoundException: that is a TargetNotFound."""
    try:
        yield
    except TargetError as error:
        cause = error.__cause__
        if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") == "ParentNotFoundException":
            raise TargetNotFound(f"no organizational unit or root {parent}: {error}") from error
        raise


def _status(payload: dict[str, Any]) -> AssignmentStatus:
    return AssignmentStatus(
        request_id=str(payload.get("RequestId", "")),
        status=str(payload.get("Status", "FAILED")),
        reason=payload.get("FailureReason"),
    )


class SsoAdminAccess:
    """``AccountAccess`` on boto3. The instance ARN is discovered (ListInstances) when not given."""

    def __init__(
        self,
        instance_arn: str | Callable[[], str],
        client: Any,
        organizations: Any,
        budget: RateBudget | None = None,
        counter: CallCounter | None = None,
    ) -> None:
        self._instance = instance_arn
        self._client = client
        self._orgs = organizations
        instrument(client, counter)
        instrument(organizations, counter)
        if budget is not None:
            attach_budget(client, budget)

    @property
    def instance_arn(self) -> str:
        if callable(self._instance):
            self._instance = self._instance()
        return self._instance

    def permission_sets(self) -> dict[str, str]:
        out: dict[str, str] = {}
        instance = self.instance_arn
        with _translated("ListPermissionSets", instance, "sso:ListPermissionSets"):
            arns = [
                arn
                for page in self._client.get_paginator("list_permission_sets").paginate(InstanceArn=instance)
                for arn in page.get("PermissionSets", [])
            ]
        for arn in arns:
            with _translated("DescribePermissionSet", arn, "sso:DescribePermissionSet"):
                described = self._client.describe_permission_set(InstanceArn=instance, PermissionSetArn=arn)
            out[str(described["PermissionSet"]["Name"])] = arn
        return out

    def accounts_under(self, parent_id: str) -> set[str]:
        found: set[str] = set()
        pending = [parent_id]
        while pending:
            parent = pending.pop()
            with (
                _parent_missing(parent),
                _translated("ListAccountsForParent", parent, "organizations:ListAccountsForParent"),
            ):
                for page in self._orgs.get_paginator("list_accounts_for_parent").paginate(ParentId=parent):
                    found |= {str(a["Id"]) for a in page.get("Accounts", []) if a.get("Status", "ACTIVE") == "ACTIVE"}
            with _translated(
                "ListOrganizationalUnitsForParent", parent, "organizations:ListOrganizationalUnitsForParent"
            ):
                for page in self._orgs.get_paginator("list_organizational_units_for_parent").paginate(ParentId=parent):
                    pending.extend(str(ou["Id"]) for ou in page.get("OrganizationalUnits", []))
        return found

    def accounts(self) -> set[str]:
        with _translated("ListAccounts", "the organization", "organizations:ListAccounts"):
            return {
                str(a["Id"])
                for page in self._orgs.get_paginator("list_accounts").paginate()
                for a in page.get("Accounts", [])
            }

    def assignments(self, principal_id: str) -> set[tuple[str, str]]:
        instance = self.instance_arn
        with _translated(
            "ListAccountAssignmentsForPrincipal", f"group {principal_id}", "sso:ListAccountAssignmentsForPrincipal"
        ):
            return {
                (str(a["PermissionSetArn"]), str(a["AccountId"]))
                for page in self._client.get_paginator("list_account_assignments_for_principal").paginate(
                    InstanceArn=instance, PrincipalId=principal_id, PrincipalType=PRINCIPAL_TYPE
                )
                for a in page.get("AccountAssignments", [])
            }

    def _request(self, principal_id: str, permission_set_arn: str, account_id: str) -> dict[str, str]:
        return {
            "InstanceArn": self.instance_arn,
            "TargetId": account_id,
            "TargetType": TARGET_TYPE,
            "PermissionSetArn": permission_set_arn,
            "PrincipalType": PRINCIPAL_TYPE,
            "PrincipalId": principal_id,
        }

    def create(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        subject = f"group {principal_id} / {permission_set_arn} / account {account_id}"
        with _translated("CreateAccountAssignment", subject, "sso:CreateAccountAssignment"):
            answer = self._client.create_account_assignment(
                **self._request(principal_id, permission_set_arn, account_id)
            )
        return _status(answer.get("AccountAssignmentCreationStatus", {}))

    def delete(self, principal_id: str, permission_set_arn: str, account_id: str) -> AssignmentStatus:
        subject = f"group {principal_id} / {permission_set_arn} / account {account_id}"
        with _translated("DeleteAccountAssignment", subject, "sso:DeleteAccountAssignment"):
            answer = self._client.delete_account_assignment(
                **self._request(principal_id, permission_set_arn, account_id)
            )
        return _status(answer.get("AccountAssignmentDeletionStatus", {}))

    def creation_status(self, request_id: str) -> AssignmentStatus:
        with _translated(
            "DescribeAccountAssignmentCreationStatus", request_id, "sso:DescribeAccountAssignmentCreationStatus"
        ):
            answer = self._client.describe_account_assignment_creation_status(
                InstanceArn=self.instance_arn, AccountAssignmentCreationRequestId=request_id
            )
        return _status(answer.get("AccountAssignmentCreationStatus", {}))

    def deletion_status(self, request_id: str) -> AssignmentStatus:
        with _translated(
            "DescribeAccountAssignmentDeletionStatus", request_id, "sso:DescribeAccountAssignmentDeletionStatus"
        ):
            answer = self._client.describe_account_assignment_deletion_status(
                InstanceArn=self.instance_arn, AccountAssignmentDeletionRequestId=request_id
            )
        return _status(answer.get("AccountAssignmentDeletionStatus", {}))


def discover_instance_arn(client: Any) -> str:
    """The ARN of the account's IAM Identity Center instance (ListInstances). Raises TargetError."""
    region = client.meta.region_name
    with _translated("ListInstances", f"IAM Identity Center instances in {region}", "sso:ListInstances"):
        for page in client.get_paginator("list_instances").paginate():
            for instance in page.get("Instances", []):
                if instance.get("InstanceArn"):
                    return str(instance["InstanceArn"])
    raise TargetError(
        f"no IAM Identity Center instance in region {region} (sso-admin ListInstances returned none): "
        "set identity_store.instance_arn"
    )


def from_settings(
    settings: IdentityStoreSettings, budget: RateBudget | None = None, counter: CallCounter | None = None
) -> SsoAdminAccess:
    """An SsoAdminAccess for the configured region (Organizations is global: its endpoint is us-east-1)."""
    config = retry_config(settings.max_attempts)
    client = boto3.client("sso-admin", region_name=settings.region, endpoint_url=settings.endpoint_url, config=config)
    organizations = boto3.client(
        "organizations", region_name="us-east-1", endpoint_url=settings.endpoint_url, config=config
    )
    instance: str | Callable[[], str] = settings.instance_arn or (lambda: discover_instance_arn(client))
    return SsoAdminAccess(instance, client, organizations, budget, counter)
