"""PIM for Groups, /subscriptions and change-notification delivery for the Graph emulator.

``Pim`` hangs off a ``GraphApp`` (``emulator.app.pim``) and adds, in Graph's wire format:

* ``GET /v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances`` with the
  ``$filter`` Graph requires (``groupId eq '...'``, optionally ``and principalId eq '...'``);
* ``POST/GET/PATCH/DELETE /v1.0/subscriptions``: creating a subscription first runs Graph's validation
  handshake (a POST of ``?validationToken=...`` to the notification and lifecycle URLs, which must
  echo the token as ``text/plain`` with 200 within 10 s, else 400); expirationDateTime is bounded by
  Graph's 41,760 minutes for directory resources; resources ``/groups/{id}/members`` and ``/groups``
  (every group), at most 100 group subscriptions per app (then 403, as Graph answers);
* delivery, from a background thread, of a change notification to every subscription on a group's
  members whenever the tenant's change log shows a member added or removed (Graph's body: clientState,
  subscriptionId, resource ``Groups/{id}/members``, resourceData), and to every ``/groups``
  subscription for any group's change (resource ``Groups/{id}``); lifecycle notifications on demand.

Tests and the demo act as Entra's PIM would: ``activate`` (a member for ``minutes``), ``assign`` (an
active assignment, permanent when no minutes), ``deactivate``, ``extend``. Time comes from ``clock``
(inject a fake one); ``expire_due`` ends what is due and removes members nothing else grants (the
delivery thread runs it on every tick unless ``auto_expire`` is off, which models Entra removing the
member some time after the end). A user who was a member before an activation stays one.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import requests
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from sandbox.graph_emulator import GraphFault, graph_error
from sandbox.graph_emulator import _json as json_response
from sandbox.graph_query import option, parse_filter, parse_select
from sandbox.tenant import CLIENT_ID, GROUP_CHANGE, MEMBER_CHANGE

if TYPE_CHECKING:
    from sandbox.graph_emulator import GraphApp

READ_PIM = frozenset(
    {
        "PrivilegedAssignmentSchedule.Read.AzureADGroup",
        "PrivilegedAssignmentSchedule.ReadWrite.AzureADGroup",
        "PrivilegedAccess.Read.AzureADGroup",
        "PrivilegedAccess.ReadWrite.AzureADGroup",
    }
)
# Graph's subscription reference: change notifications on a group's members need Group.Read.All (or broader)
SUBSCRIBE = frozenset({"Group.Read.All", "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
INSTANCES_PATH = "/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances"
INSTANCE_TYPE = "privilegedAccessGroupAssignmentScheduleInstance"
INSTANCE_PROPERTIES = frozenset(
    {
        "id",
        "principalId",
        "groupId",
        "accessId",
        "assignmentType",
        "memberType",
        "startDateTime",
        "endDateTime",
        "assignmentScheduleId",
    }
)
INSTANCE_FILTERABLE = frozenset({"groupId", "principalId", "accessId", "assignmentType", "memberType"})
_REQUIRED_FILTER = re.compile(r"\b(groupId|principalId)\s+eq\b")
MAX_LIFETIME = timedelta(minutes=41_760)  # users and groups
VALIDATION_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 3.0
DELIVERY_ATTEMPTS = 3
TICK_SECONDS = 0.02
CHANGE_TYPES = frozenset({"created", "updated", "deleted"})
_MEMBERS_RESOURCE = re.compile(r"^/?groups/([0-9a-fA-F-]{36})/members$", re.IGNORECASE)
_GROUPS_RESOURCE = re.compile(r"^/?groups$", re.IGNORECASE)  # every group of the tenant, members included
GROUP_SUBSCRIPTION_QUOTA = 100  # group subscriptions per app and tenant
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class Clock(Protocol):
    def now(self) -> datetime: ...


class _WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def graph_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Instance:
    """One assignment schedule instance (Graph's fields)."""

    id: str
    group_id: str
    principal_id: str
    assignment_type: str  # activated | assigned
    start: datetime
    end: datetime | None
    access_id: str = "member"
    schedule_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def active_at(self, now: datetime) -> bool:
        return self.start <= now and (self.end is None or self.end > now)

    def graph(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principalId": self.principal_id,
            "groupId": self.group_id,
            "accessId": self.access_id,
            "assignmentType": self.assignment_type,
            "memberType": "direct",
            "startDateTime": graph_time(self.start),
            "endDateTime": graph_time(self.end) if self.end is not None else None,
            "assignmentScheduleId": self.schedule_id,
        }


@dataclass
class Delivery:
    """One POST the emulator made to a subscriber: what, where, when, and the answer."""

    kind: str  # "notification" | "lifecycle"
    url: str
    items: list[dict[str, Any]]
    sent_at: float  # time.time() when the POST started
    status: int | None = None
    seconds: float = 0.0
    error: str | None = None


class Pim:
    """PIM for Groups, subscriptions and notification delivery over one ``GraphApp``'s tenant."""

    def __init__(self, app: GraphApp) -> None:
        self.app = app
        self.clock: Clock = _WallClock()
        self.auto_expire = True
        self.lock = threading.RLock()
        self.instances: dict[str, Instance] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.deliveries: list[Delivery] = []
        self._added: set[tuple[str, str]] = set()  # memberships PIM made, removed when nothing grants them
        self._seen = app.tenant.seq
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = requests.Session()
        for path, view, methods in (
            (INSTANCES_PATH, self._instances_view, ["GET"]),
            ("/v1.0/subscriptions", self._subscriptions_view, ["GET", "POST"]),
            ("/v1.0/subscriptions/<key>", self._subscription_view, ["GET", "PATCH", "DELETE"]),
        ):
            app._url_map.add(Rule(path, endpoint=view, methods=methods))

    # ------------------------------------------------------------------ lifecycle of the emulator

    def reset(self) -> None:
        """Forget every instance and subscription (the emulator now serves another tenant)."""
        with self.lock:
            self.instances.clear()
            self.subscriptions.clear()
            self.deliveries.clear()
            self._added.clear()
            self._seen = self.app.tenant.seq

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._http.close()

    def _running(self) -> None:
        with self.lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="graph-emulator-pim", daemon=True)
                self._thread.start()
        self._wake.set()

    # ------------------------------------------------------------------ PIM, as Entra's administrators and users

    def activate(self, group_id: str, user_id: str, minutes: float = 60.0) -> dict[str, Any]:
        """An eligible user activates membership for ``minutes``: an ``activated`` instance, and the user
        joins the group's members. Raises KeyError for an unknown group or user."""
        return self._grant(group_id, user_id, "activated", minutes)

    def assign(self, group_id: str, user_id: str, minutes: float | None = None) -> dict[str, Any]:
        """An active ``assigned`` membership (permanent when ``minutes`` is None). Raises KeyError."""
        return self._grant(group_id, user_id, "assigned", minutes)

    def _grant(self, group_id: str, user_id: str, kind: str, minutes: float | None) -> dict[str, Any]:
        tenant = self.app.tenant
        with self.lock:
            if group_id not in tenant.groups or user_id not in tenant.users:
                raise KeyError(f"group {group_id} or user {user_id} does not exist in tenant {tenant.tenant_id}")
            now = self.clock.now()
            end = now + timedelta(minutes=minutes) if minutes is not None else None
            instance = Instance(str(uuid.uuid4()), group_id, user_id, kind, now, end)
            self.instances[instance.id] = instance
            if user_id not in tenant.members[group_id]:
                self._added.add((group_id, user_id))
                tenant.add_member(group_id, user_id)
        self._running()
        return instance.graph()

    def extend(self, group_id: str, user_id: str, minutes: float) -> dict[str, Any]:
        """Extend the user's latest activation by ``minutes`` (adminExtend). Raises KeyError when none is active."""
        with self.lock:
            now = self.clock.now()
            mine = [i for i in self._active(group_id, user_id, now) if i.end is not None]
            if not mine:
                raise KeyError(f"user {user_id} has no time-bound active membership of group {group_id}")
            latest = max(mine, key=lambda i: i.start)
            assert latest.end is not None
            latest.end += timedelta(minutes=minutes)
            return latest.graph()

    def deactivate(self, group_id: str, user_id: str, instance_id: str | None = None) -> list[dict[str, Any]]:
        """End the user's activations (or the one given) now (selfDeactivate); the member leaves the group
        unless something else grants it. Returns the ended instances."""
        with self.lock:
            ended = [
                i
                for i in self.instances.values()
                if i.group_id == group_id
                and i.principal_id == user_id
                and (i.id == instance_id if instance_id else i.assignment_type == "activated")
            ]
            for instance in ended:
                del self.instances[instance.id]
            self._settle(group_id, user_id, self.clock.now())
        self._wake.set()
        return [i.graph() for i in ended]

    def expire_due(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """End every instance whose endDateTime has passed; remove the members nothing grants any more."""
        with self.lock:
            moment = now or self.clock.now()
            ended = [i for i in self.instances.values() if i.end is not None and i.end <= moment]
            for instance in ended:
                del self.instances[instance.id]
            for pair in {(i.group_id, i.principal_id) for i in ended}:
                self._settle(*pair, moment)
        return [i.graph() for i in ended]

    def active(self, group_id: str | None = None, user_id: str | None = None) -> list[dict[str, Any]]:
        """The instances active now, as Graph returns them."""
        with self.lock:
            return [i.graph() for i in self._active(group_id, user_id, self.clock.now())]

    def _active(self, group_id: str | None, user_id: str | None, now: datetime) -> list[Instance]:
        return [
            i
            for i in self.instances.values()
            if (group_id is None or i.group_id == group_id)
            and (user_id is None or i.principal_id == user_id)
            and i.active_at(now)
        ]

    def _settle(self, group_id: str, user_id: str, now: datetime) -> None:
        if (group_id, user_id) in self._added and not self._active(group_id, user_id, now):
            self._added.discard((group_id, user_id))
            if group_id in self.app.tenant.groups:
                self.app.tenant.remove_member(group_id, user_id)

    # ------------------------------------------------------------------ Graph: PIM

    def _instances_view(self, request: Request) -> Response:
        self.app._authorize(request, READ_PIM)
        raw = option(request.args, "filter")
        if raw is None or not _REQUIRED_FILTER.search(raw):
            raise GraphFault(
                400,
                "BadRequest",
                "The request requires a filter on groupId or principalId, for example $filter=groupId eq '{id}'.",
            )
        matches = parse_filter(raw, INSTANCE_FILTERABLE, INSTANCE_TYPE)
        select = parse_select(option(request.args, "select"), INSTANCE_PROPERTIES, INSTANCE_TYPE)
        if self.auto_expire:
            self.expire_due()
        rows = [row for row in self.active() if matches is None or matches(row)]
        if select is not None:
            rows = [{name: row.get(name) for name in select} for row in rows]
        return self.app._paged(request, rows, "identityGovernance/privilegedAccess/group/assignmentScheduleInstances")

    # ------------------------------------------------------------------ Graph: subscriptions

    def _subscriptions_view(self, request: Request) -> Response:
        self.app._authorize(request, SUBSCRIBE)
        if request.method == "POST":
            return self._create(request)
        with self.lock:
            self._drop_expired()
            rows = [self._render(sub) for sub in self.subscriptions.values()]
        return self.app._paged(request, rows, "subscriptions")

    def _subscription_view(self, request: Request, key: str) -> Response:
        self.app._authorize(request, SUBSCRIBE)
        with self.lock:
            self._drop_expired()
            sub = self.subscriptions.get(key)
            if sub is None:
                return _gone(key)
            if request.method == "DELETE":
                del self.subscriptions[key]
                return Response(status=204)
            if request.method == "PATCH":
                body = _body(request)
                if "expirationDateTime" in body:
                    sub["expiration"] = self._expiration(body["expirationDateTime"])
                if "notificationUrl" in body:
                    sub["notificationUrl"] = self._url(body["notificationUrl"], "notificationUrl")
            return json_response(self._render(sub))

    def _create(self, request: Request) -> Response:
        body = _body(request)
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise GraphFault(400, "InvalidRequest", f"The property '{name}' is required.")
        change_types = {part.strip() for part in body["changeType"].split(",")}
        if not change_types <= CHANGE_TYPES:
            raise GraphFault(400, "InvalidRequest", f"'{body['changeType']}' is not a valid changeType.")
        resource = body["resource"]
        match = _MEMBERS_RESOURCE.match(resource)
        if match is None and not _GROUPS_RESOURCE.match(resource):
            raise GraphFault(400, "InvalidRequest", f"Resource '{resource}' is not supported for subscriptions.")
        if match is not None and match.group(1).lower() not in self.app.tenant.groups:
            raise GraphFault(404, "ResourceNotFound", f"Resource '{match.group(1)}' does not exist.")
        with self.lock:
            self._drop_expired()
            full = len(self.subscriptions) >= GROUP_SUBSCRIPTION_QUOTA
        if full:
            raise GraphFault(
                403,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Maximum number of subscriptions "
                "has been reached]",
            )
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > 128):
            raise GraphFault(400, "InvalidRequest", "clientState must be text of at most 128 characters.")
        expiration = self._expiration(body["expirationDateTime"])
        notification_url = self._url(body["notificationUrl"], "notificationUrl")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        if lifecycle_url is not None:
            lifecycle_url = self._url(lifecycle_url, "lifecycleNotificationUrl")
        for url in filter(None, (notification_url, lifecycle_url)):
            self._handshake(url)
        sub = {
            "id": str(uuid.uuid4()),
            "resource": resource,
            "group": match.group(1).lower() if match is not None else None,  # None: every group
            "changeType": body["changeType"],
            "clientState": client_state,
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "expiration": expiration,
            "since": self.app.tenant.seq,  # changes before the subscription are not notified
        }
        with self.lock:
            self.subscriptions[sub["id"]] = sub
        self._running()
        response = json_response(self._render(sub), status=201)
        response.headers["Location"] = f"{request.host_url}v1.0/subscriptions/{sub['id']}"
        return response

    def _expiration(self, raw: Any) -> datetime:
        try:
            moment = datetime.fromisoformat(str(raw))
        except ValueError:
            raise GraphFault(400, "InvalidRequest", f"expirationDateTime '{raw}' is not a date and time.") from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        now = self.clock.now()
        if moment <= now:
            raise GraphFault(400, "InvalidRequest", "Subscription expiration must be in the future.")
        if moment > now + MAX_LIFETIME:
            raise GraphFault(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {int(MAX_LIFETIME.total_seconds() // 60)} minutes in the future.",
            )
        return moment

    @staticmethod
    def _url(raw: Any, name: str) -> str:
        parts = urlsplit(str(raw))
        # Graph requires HTTPS; the emulator also takes plain HTTP on this machine (the local webhook)
        if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
            raise GraphFault(400, "InvalidRequest", f"The {name} must be an HTTPS URL.")
        return str(raw)

    def _handshake(self, url: str) -> None:
        """Graph's validation request: the endpoint must echo the token in plain text within 10 s."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        try:
            # a request of its own: the delivery thread owns the session
            answer = requests.post(
                url,
                params={"validationToken": token},
                data=b"",
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=VALIDATION_TIMEOUT,
            )
        except requests.Timeout:
            raise GraphFault(
                400, "ValidationError", "Subscription validation request timed out (the endpoint took over 10 s)."
            ) from None
        except requests.RequestException as error:
            raise GraphFault(
                400, "ValidationError", f"Subscription validation request failed: the endpoint is unreachable: {error}"
            ) from None
        media = answer.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if answer.status_code != 200 or media != "text/plain" or answer.text != token:
            raise GraphFault(
                400,
                "ValidationError",
                "Subscription validation request failed. Response must exactly match validationToken query "
                f"parameter (got HTTP {answer.status_code}, {media or 'no content type'}).",
            )

    def _render(self, sub: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": sub["id"],
            "resource": sub["resource"],
            "applicationId": CLIENT_ID,
            "changeType": sub["changeType"],
            "clientState": sub["clientState"],
            "notificationUrl": sub["notificationUrl"],
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": sub["lifecycleNotificationUrl"],
            "expirationDateTime": graph_time(sub["expiration"]),
            "creatorId": CLIENT_ID,
            "includeResourceData": False,
            "latestSupportedTlsVersion": "v1_2",
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }

    def _drop_expired(self) -> None:
        now = self.clock.now()
        for key in [k for k, sub in self.subscriptions.items() if sub["expiration"] <= now]:
            del self.subscriptions[key]

    # ------------------------------------------------------------------ delivery

    def send_lifecycle(self, subscription_id: str, event: str = "reauthorizationRequired") -> Delivery:
        """POST a lifecycle notification for one subscription (to its lifecycle URL, else its notification URL)."""
        with self.lock:
            sub = self.subscriptions[subscription_id]
            item = {
                "subscriptionId": sub["id"],
                "subscriptionExpirationDateTime": graph_time(sub["expiration"]),
                "tenantId": self.app.tenant.tenant_id,
                "clientState": sub["clientState"],
                "lifecycleEvent": event,
            }
            url = sub["lifecycleNotificationUrl"] or sub["notificationUrl"]
        return self._post("lifecycle", url, [item])

    def wait_for(self, predicate: Callable[[Delivery], bool], timeout: float = 5.0) -> Delivery:
        """The first delivery matching ``predicate``, waiting up to ``timeout`` s. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = next((d for d in self.deliveries if predicate(d)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError("no matching delivery")
            time.sleep(0.005)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self.auto_expire:
                self.expire_due()
            for url, items in self._pending().items():
                self._post("notification", url, items)

    def _pending(self) -> dict[str, list[dict[str, Any]]]:
        """Notification items for the member changes logged since the last tick, by notification URL."""
        tenant = self.app.tenant
        with tenant.lock:
            changes = tenant.changes[self._seen :]
            self._seen = tenant.seq
            members = {c.object_id: set(tenant.members.get(c.object_id, {})) for c in changes}
        out: dict[str, list[dict[str, Any]]] = {}
        with self.lock:
            self._drop_expired()
            for change in changes:
                if change.kind not in (MEMBER_CHANGE, GROUP_CHANGE):
                    continue
                for sub in self.subscriptions.values():
                    if "updated" not in sub["changeType"] or change.seq <= sub["since"]:
                        continue
                    if sub["group"] is None:  # /groups: every change of every group, members included
                        member = self._member(change, members) if change.kind == MEMBER_CHANGE else None
                        item = self._notification(sub, change.object_id, member, f"Groups/{change.object_id}")
                    elif sub["group"] == change.object_id.lower() and change.kind == MEMBER_CHANGE:
                        member = self._member(change, members)
                        item = self._notification(sub, change.object_id, member, f"Groups/{change.object_id}/members")
                    else:
                        continue
                    out.setdefault(sub["notificationUrl"], []).append(item)
        return out

    @staticmethod
    def _member(change: Any, members: dict[str, set[str]]) -> dict[str, Any]:
        member: dict[str, Any] = {"id": change.member_id}
        if change.member_id not in members[change.object_id]:
            member["@removed"] = {"reason": "deleted"}
        return member

    def _notification(
        self, sub: dict[str, Any], group_id: str, member: dict[str, Any] | None, resource: str
    ) -> dict[str, Any]:
        tenant_id = self.app.tenant.tenant_id
        data: dict[str, Any] = {
            "@odata.type": "#Microsoft.Graph.Group",
            "@odata.id": f"Groups/{group_id}",
            "id": group_id,
            "organizationId": tenant_id,
        }
        if member is not None:
            data["members@delta"] = [member]
        item = {
            "id": secrets.token_urlsafe(12),
            "subscriptionId": sub["id"],
            "subscriptionExpirationDateTime": graph_time(sub["expiration"]),
            "changeType": "updated",
            "resource": resource,
            "resourceData": data,
            "tenantId": tenant_id,
        }
        if sub["clientState"] is not None:
            item["clientState"] = sub["clientState"]
        return item

    def _post(self, kind: str, url: str, items: list[dict[str, Any]]) -> Delivery:
        """POST ``{"value": items}``; Graph retries a failed delivery, so does the emulator (a few times)."""
        body = json.dumps({"value": items})
        delivery = Delivery(kind, url, items, time.time())
        for attempt in range(DELIVERY_ATTEMPTS):
            started = time.perf_counter()
            try:
                answer = self._http.post(
                    url,
                    data=body.encode(),
                    headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=DELIVERY_TIMEOUT,
                )
                delivery.status, delivery.error = answer.status_code, None
            except requests.RequestException as error:
                delivery.status, delivery.error = None, str(error)
            delivery.seconds = time.perf_counter() - started
            if delivery.status is not None and 200 <= delivery.status < 300:
                break
            time.sleep(0.1 * 2**attempt)
        with self.lock:
            self.deliveries.append(delivery)
        return delivery


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.get_data() or b"{}")
    except json.JSONDecodeError:
        raise GraphFault(400, "BadRequest", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise GraphFault(400, "BadRequest", "The request body must be a JSON object.")
    return body


def _gone(key: str) -> Response:
    return graph_error(404, "ResourceNotFound", f"The subscription '{key}' was not found.")
