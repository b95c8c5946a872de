"""Microsoft Graph for PIM for Groups: a group's members and assignment schedule instances, users read one
at a time for provisioning (``ports.PimDirectory``), and /subscriptions (``ports.SubscriptionApi``).

Both go through ``GraphClient`` (msal tokens, retries honouring Retry-After, error mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from idsync.adapters.graph import GraphClient, GraphRequestError
from idsync.errors import DirectoryError, SubscriptionGone
from idsync.ports import AssignmentInstance, GraphObject, GraphSubscription

INSTANCES = "/identityGovernance/privilegedAccess/group/assignmentScheduleInstances"
INSTANCE_FIELDS = "id,principalId,groupId,accessId,assignmentType,memberType,startDateTime,endDateTime"
SUBSCRIPTIONS = "/subscriptions"


def graph_time(value: datetime) -> str:
    """A UTC instant as Graph writes it: ``2030-01-01T12:00:00.000Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(value: Any, where: str, attribute: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise DirectoryError(f"{where}: attribute {attribute} ({value!r}) is not an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _optional_instant(value: Any, where: str, attribute: str) -> datetime | None:
    return None if value is None else _instant(value, where, attribute)


def _text(item: Mapping[str, Any], attribute: str, where: str) -> str:
    value = item.get(attribute)
    if not isinstance(value, str) or not value:
        raise DirectoryError(f"{where}: attribute {attribute} is missing or not text")
    return value


def parse_instance(item: Mapping[str, Any]) -> AssignmentInstance:
    """One ``privilegedAccessGroupAssignmentScheduleInstance``. Raises DirectoryError naming a bad attribute."""
    where = f"assignment schedule instance {item.get('id')!r}"
    return AssignmentInstance(
        id=_text(item, "id", where),
        principal_id=_text(item, "principalId", where),
        group_id=_text(item, "groupId", where),
        access_id=_text(item, "accessId", where),
        assignment_type=str(item.get("assignmentType") or ""),
        member_type=str(item.get("memberType") or ""),
        start=_optional_instant(item.get("startDateTime"), where, "startDateTime"),
        end=_optional_instant(item.get("endDateTime"), where, "endDateTime"),
    )


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class GraphPim:
    """``ports.PimDirectory`` over Graph. Users are read with ``user_properties`` (and their manager's id)."""

    def __init__(self, client: GraphClient, user_properties: frozenset[str], expand_manager: bool) -> None:
        self.client = client
        self._select = ",".join(["id", *sorted(user_properties - {"id", "manager"})])
        self._expand_manager = expand_manager
        self._page = str(client.settings.page_size)

    def members(self, group_id: str) -> set[str]:
        """Ids of the group's direct user members. Raises DirectoryError."""
        path = f"/groups/{group_id}/members/microsoft.graph.user"
        return {str(m["id"]) for m in self.client.pages(path, {"$select": "id", "$top": self._page})}

    def instances(self, group_id: str, user_id: str | None = None) -> list[AssignmentInstance]:
        """The group's current instances (Graph requires the groupId or principalId filter). Raises DirectoryError."""
        condition = f"groupId eq {_quoted(group_id)}"
        if user_id is not None:
            condition += f" and principalId eq {_quoted(user_id)}"
        params = {"$filter": condition, "$select": INSTANCE_FIELDS}
        return [parse_instance(item) for item in self.client.pages(INSTANCES, params)]

    def user(self, user_id: str) -> GraphObject | None:
        """The user (manager reduced to its id), or None when Graph no longer has it. Raises DirectoryError."""
        params = {"$select": self._select}
        if self._expand_manager:
            params["$expand"] = "manager($select=id)"
        try:
            found = self.client.get(f"/users/{user_id}", params)
        except GraphRequestError as error:
            if error.status == 404:
                return None
            raise
        manager = found.get("manager")
        if isinstance(manager, Mapping) and "id" in manager:
            found["manager"] = {"id": manager["id"]}
        return {k: v for k, v in found.items() if not k.startswith("@odata.")}


def parse_subscription(item: Mapping[str, Any]) -> GraphSubscription:
    """One Graph ``subscription``. Raises DirectoryError naming a bad attribute."""
    where = f"subscription {item.get('id')!r}"
    expiration = _instant(_text(item, "expirationDateTime", where), where, "expirationDateTime")
    return GraphSubscription(
        id=_text(item, "id", where),
        resource=_text(item, "resource", where),
        change_type=str(item.get("changeType") or ""),
        notification_url=_text(item, "notificationUrl", where),
        lifecycle_url=item.get("lifecycleNotificationUrl") or None,
        expiration=expiration,
    )


class GraphSubscriptions:
    """``ports.SubscriptionApi`` over Graph's /subscriptions."""

    def __init__(self, client: GraphClient) -> None:
        self.client = client

    def list(self) -> list[GraphSubscription]:
        return [parse_subscription(item) for item in self.client.pages(SUBSCRIPTIONS)]

    def create(
        self,
        resource: str,
        change_type: str,
        notification_url: str,
        lifecycle_url: str | None,
        client_state: str,
        expiration: datetime,
    ) -> GraphSubscription:
        """Create a subscription; Graph first validates the URLs (the handshake). Raises DirectoryError."""
        body: dict[str, Any] = {
            "changeType": change_type,
            "notificationUrl": notification_url,
            "resource": resource,
            "expirationDateTime": graph_time(expiration),
            "clientState": client_state,
        }
        if lifecycle_url:
            body["lifecycleNotificationUrl"] = lifecycle_url
        return parse_subscription(self.client.call("POST", SUBSCRIPTIONS, json=body).json())

    def renew(self, subscription_id: str, expiration: datetime) -> GraphSubscription:
        """PATCH the expiration. Raises SubscriptionGone (404), DirectoryError."""
        body = {"expirationDateTime": graph_time(expiration)}
        try:
            response = self.client.call("PATCH", f"{SUBSCRIPTIONS}/{subscription_id}", json=body)
        except GraphRequestError as error:
            if error.status == 404:
                raise SubscriptionGone(f"subscription {subscription_id} no longer exists in Graph") from None
            raise
        return parse_subscription(response.json())

    def delete(self, subscription_id: str) -> None:
        try:
            self.client.call("DELETE", f"{SUBSCRIPTIONS}/{subscription_id}")
        except GraphRequestError as error:
            if error.status != 404:
                raise
