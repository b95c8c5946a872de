"""Microsoft Graph change and lifecycle notifications for the PIM groups: check them, turn them into hints.

A request is first checked as a whole (size, Content-Type, UTF-8, JSON, a non-empty ``value`` array);
any problem there rejects it with a 4xx naming what is wrong, and nothing is enqueued. Then each item
is checked on its own: an item of the wrong shape (a missing field, both ``changeType`` and
``lifecycleEvent``, ...) is dropped and logged naming its index and the rule, and the others go on
(only a request in which no item has a valid shape is rejected, 400). Then its clientState is
compared in constant time with the secret, its tenant with ours, and its resource must name a
configured PIM group. Items that pass become hints ("look at group G", with the configured group id,
never a string from the request), one per group per request however many items name it (a look
re-reads the whole group); one that fails is dropped and logged, and the request is still answered
202, as Graph expects. Changes of groups that are not PIM groups (a tenant-wide ``/groups``
subscription carries every group's changes) are counted and logged once per request.

Lifecycle items (``lifecycleEvent``) are handled on either path, because Graph sends them to the
notification URL when a subscription has no lifecycle URL: reauthorizationRequired renews the
subscription; missed and subscriptionRemoved mean notifications were or will be lost, so every PIM
group the item concerns (the one its resource names, else all of them) gets a hint: an immediate look;
a lifecycle event idsync does not know is ignored (logged and counted), as Microsoft asks receivers to do.

Graph adds properties to notifications over time: unknown ones are ignored, never read.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from idsync.errors import DirectoryError
from idsync.ports import Clock, Hint, HintQueue, SecretSource, SubscriptionRenewer

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_ITEMS = 1000
MAX_DEPTH = 10
MAX_TOKEN_CHARS = 1024
MAX_DETAILS = 10
HINT_REASON = "notification"
LOST_REASON = "lifecycle"  # a missed or subscriptionRemoved event: look at every group it concerns

GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_GUID = re.compile(GUID, re.ASCII)
# groups/{id}, groups('{id}') or groups({id}), each optionally followed by /members, leading slash optional
_GROUP_RESOURCE = re.compile(
    rf"/?groups(?:/(?P<path_id>{GUID})|\('?(?P<key_id>{GUID})'?\))(?:/members)?/?",
    re.IGNORECASE | re.ASCII,
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
OTHER_GROUP = "not a configured PIM group"


class Endpoint(StrEnum):
    NOTIFICATIONS = "notifications"
    LIFECYCLE = "lifecycle"


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """What the service needs from an HTTP request: the raw body and two request attributes."""

    body: bytes
    content_type: str | None = None
    validation_token: str | None = None  # already URL-decoded (API Gateway decodes query parameters)


@dataclass(frozen=True, slots=True)
class WebhookReply:
    """The HTTP answer, and the count of each outcome for the metrics."""

    status: int
    body: str = ""
    content_type: str | None = None
    metrics: Mapping[str, int] = field(default_factory=dict)


class Metric(StrEnum):
    HANDSHAKES = "ValidationHandshakes"
    ACCEPTED = "NotificationsAccepted"
    COALESCED = "NotificationsCoalesced"  # accepted items whose group already had a hint in the same request
    OTHER_GROUPS = "NotificationsOtherGroups"  # changes of groups that are not PIM groups (broad subscription)
    DROPPED = "NotificationsDropped"
    LOOKS_REQUESTED = "LooksRequested"  # hints sent for lost notifications (missed, subscriptionRemoved)
    REJECTED = "RequestsRejected"
    REAUTHORIZATION_REQUIRED = "LifecycleReauthorizationRequired"
    SUBSCRIPTION_REMOVED = "LifecycleSubscriptionRemoved"
    MISSED = "LifecycleMissed"
    LIFECYCLE_UNKNOWN = "LifecycleUnknownIgnored"
    RENEWED = "SubscriptionsRenewed"
    RENEWAL_FAILED = "SubscriptionRenewalsFailed"


_LIFECYCLE_METRICS = {
    "reauthorizationRequired": Metric.REAUTHORIZATION_REQUIRED,
    "subscriptionRemoved": Metric.SUBSCRIPTION_REMOVED,
    "missed": Metric.MISSED,
}


# --------------------------------------------------------------------------- the body's shape


def _instant(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be an ISO 8601 date and time with a time zone") from None
    if "T" not in value or parsed.tzinfo is None:
        raise ValueError("must be an ISO 8601 date and time with a time zone")
    return value


Guid = Annotated[str, Field(pattern=rf"^{GUID}$")]
Instant = Annotated[str, Field(max_length=64), AfterValidator(_instant)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class ResourceData(_Strict):
    odata_type: str | None = Field(default=None, alias="@odata.type", max_length=256)
    odata_id: str | None = Field(default=None, alias="@odata.id", max_length=1024)
    id: str | None = Field(default=None, max_length=256)


class NotificationItem(_Strict):
    """One item of ``value``: a change notification or a lifecycle notification."""

    id: str | None = Field(default=None, max_length=256)
    subscription_id: Guid = Field(alias="subscriptionId")
    subscription_expiration: Instant = Field(alias="subscriptionExpirationDateTime")
    tenant_id: Guid = Field(alias="tenantId")
    client_state: str | None = Field(default=None, alias="clientState", max_length=255)
    change_type: Literal["created", "updated", "deleted"] | None = Field(default=None, alias="changeType")
    lifecycle_event: str | None = Field(default=None, alias="lifecycleEvent", max_length=64)
    resource: str | None = Field(default=None, max_length=1024)
    resource_data: ResourceData | None = Field(default=None, alias="resourceData")

    @model_validator(mode="after")
    def _one_kind(self) -> NotificationItem:
        if (self.change_type is None) == (self.lifecycle_event is None):
            raise ValueError("an item carries exactly one of changeType and lifecycleEvent")
        if self.change_type is not None and self.resource is None:
            raise ValueError("a change notification (changeType) needs resource")
        return self


class NotificationBody(_Strict):
    value: list[NotificationItem] = Field(min_length=1)
    # items of the wrong shape, dropped one by one: (index, what is wrong)
    invalid: tuple[tuple[int, str], ...] = ()


class _Envelope(_Strict):
    value: list[Any] = Field(min_length=1)
    # sent with rich notifications; checked for shape, never used (idsync asks for no resource data)
    validation_tokens: list[str] | None = Field(default=None, alias="validationTokens")


# --------------------------------------------------------------------------- request checks


class Rejection(Exception):
    """A request refused as a whole: the HTTP status, a Graph-style error code, and what is wrong."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON value")


def _where(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def check_media_type(content_type: str | None) -> None:
    """Accept ``application/json`` with an optional UTF-8 charset. Raises Rejection (415)."""
    media, _, params = (content_type or "").partition(";")
    charset = ""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        shown = (content_type or "none")[:100]
        raise Rejection(
            415,
            "unsupportedMediaType",
            f"Content-Type must be application/json (UTF-8); got {shown!r}",
        )


def parse_json(body: bytes) -> Any:
    """Decode and parse the body: UTF-8, no duplicate keys, no NaN/Infinity. Raises Rejection (400)."""
    if not body.strip():
        raise Rejection(400, "emptyBody", "the body is empty; expected a JSON object with a value array")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(400, "invalidEncoding", f"the body is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as duplicate:
        raise Rejection(
            400, "duplicateKey", f"the body repeats the key {str(duplicate)[:64]!r} in one JSON object"
        ) from None
    except RecursionError:
        raise Rejection(400, "tooDeep", f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:
        raise Rejection(400, "invalidJson", f"the body is not valid JSON: {str(error)[:200]}") from None


def check_structure(document: Any) -> None:
    """Bound the nesting depth and refuse strings that are not valid Unicode. Raises Rejection (400)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise Rejection(400, "tooDeep", f"{_where(path)}: the body nests deeper than {MAX_DEPTH} levels")
        children: Iterable[tuple[str | int, Any]]
        if isinstance(node, dict):
            children = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        else:
            children = ()
        for key, child in children:
            where = (*path, key)
            for text in (key, child):
                if isinstance(text, str) and not _is_unicode(text):
                    raise Rejection(
                        400,
                        "invalidUnicode",
                        f"{_where(where)}: holds a lone surrogate escape, which is not Unicode text",
                    )
            if isinstance(child, dict | list):
                stack.append((child, where))


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_body(body: bytes, content_type: str | None) -> NotificationBody:
    """Check a notification request as a whole. Raises Rejection (400, 413 or 415) naming the problem."""
    if len(body) > MAX_BODY_BYTES:
        raise Rejection(413, "payloadTooLarge", f"the body is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes")
    check_media_type(content_type)
    document = parse_json(body)
    if not isinstance(document, dict):
        raise Rejection(
            400, "invalidNotification", "the body must be a JSON object with a value array of notifications"
        )
    check_structure(document)
    items = document.get("value")
    if isinstance(items, list) and len(items) > MAX_ITEMS:
        raise Rejection(
            413,
            "tooManyItems",
            f"value holds {len(items)} notifications; the limit is {MAX_ITEMS} per request",
        )
    try:
        envelope = _Envelope.model_validate(document)
    except ValidationError as error:
        raise _rejection(_details(error, ())) from None
    valid: list[Any] = []
    invalid: list[tuple[int, str]] = []
    problems: list[dict[str, str]] = []
    for index, raw in enumerate(envelope.value):
        try:
            NotificationItem.model_validate(raw)
        except ValidationError as error:
            found = _details(error, ("value", index))
            problems.extend(found)
            invalid.append((index, "; ".join(f"{d['target']}: {d['message']}" for d in found[:3])))
            continue
        valid.append(raw)
    if not valid:
        raise _rejection(problems)
    try:
        checked = NotificationBody.model_validate({**document, "value": valid})
    except ValidationError as error:
        raise _rejection(_details(error, ())) from None
    return checked.model_copy(update={"invalid": tuple(invalid)})


def _details(error: ValidationError, prefix: tuple[str | int, ...]) -> list[dict[str, str]]:
    return [
        {"target": _where((*prefix, *problem["loc"])), "message": problem["msg"].removeprefix("Value error, ")}
        for problem in error.errors(include_url=False, include_input=False)
    ]


def _rejection(details: list[dict[str, str]]) -> Rejection:
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return Rejection(400, "invalidNotification", f"{first['target']}: {first['message']}{more}", details[:MAX_DETAILS])


def group_of(resource: str) -> str | None:
    """The group object id named by a notification's resource (lower case), or None."""
    match = _GROUP_RESOURCE.fullmatch(resource)
    if match is None:
        return None
    return (match.group("path_id") or match.group("key_id")).lower()


def same_secret(expected: str, given: str | None) -> bool:
    """Constant-time comparison of a notification's clientState with the secret (absent never matches)."""
    if given is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


# --------------------------------------------------------------------------- the service


class NotificationService:
    """Answers Graph's webhook requests: the validation handshake, change and lifecycle notifications."""

    def __init__(
        self,
        queue: HintQueue,
        secrets: SecretSource,
        client_state_secret: str,
        pim_groups: Iterable[str],
        clock: Clock,
        tenant_id: str | None = None,
        renewer: SubscriptionRenewer | None = None,
    ) -> None:
        """``tenant_id``: items from any other tenant are dropped (None: not checked, e.g. when the
        configuration names the tenant by domain). ``renewer``: None leaves renewals to the
        scheduled subscriptions job."""
        self._queue = queue
        self._secrets = secrets
        self._client_state_secret = client_state_secret
        self._groups = {group.lower(): group for group in pim_groups}
        self._clock = clock
        self._tenant = tenant_id.lower() if tenant_id and _GUID.fullmatch(tenant_id) else None
        self._renewer = renewer

    def receive(self, endpoint: Endpoint, request: WebhookRequest) -> WebhookReply:
        """Answer one request. Raises SecretError or QueueError (retryable: the caller answers 503,
        and Graph delivers again)."""
        if request.validation_token is not None:
            return self._handshake(endpoint, request.validation_token)
        try:
            body = parse_body(request.body, request.content_type)
        except Rejection as rejection:
            return self._reject(endpoint, rejection)
        return self._process(endpoint, body)

    def _handshake(self, endpoint: Endpoint, token: str) -> WebhookReply:
        if not token or len(token) > MAX_TOKEN_CHARS or _CONTROL.search(token):
            return self._reject(
                endpoint,
                Rejection(
                    400,
                    "invalidValidationToken",
                    f"validationToken must be 1 to {MAX_TOKEN_CHARS} characters without control characters",
                ),
            )
        logger.info("validation handshake answered", extra={"endpoint": endpoint.value})
        return WebhookReply(200, token, "text/plain", {Metric.HANDSHAKES: 1})

    def _reject(self, endpoint: Endpoint, rejection: Rejection) -> WebhookReply:
        logger.warning(
            "request rejected",
            extra={
                "endpoint": endpoint.value,
                "status": rejection.status,
                "code": rejection.code,
                "problem": rejection.message,
            },
        )
        error: dict[str, Any] = {"code": rejection.code, "message": rejection.message}
        if rejection.details:
            error["details"] = rejection.details
        return WebhookReply(rejection.status, json.dumps({"error": error}), "application/json", {Metric.REJECTED: 1})

    def _process(self, endpoint: Endpoint, body: NotificationBody) -> WebhookReply:
        secret = self._secrets.get(self._client_state_secret)
        received_at = self._clock.now().astimezone(UTC).isoformat(timespec="milliseconds")
        counts: Counter[str] = Counter()
        hints: dict[str, Hint] = {}  # one per group: a look re-reads the whole group
        lost: set[str] = set()  # groups whose notifications a lifecycle event says were lost
        for index, problem in body.invalid:
            logger.warning(
                "notification dropped", extra={"endpoint": endpoint.value, "index": index, "reason": problem[:500]}
            )
            counts[Metric.DROPPED] += 1
        for index, item in enumerate(body.value):
            reason = self._untrusted(item, secret)
            if reason is None and item.lifecycle_event is not None:
                lost |= self._lifecycle(endpoint, index, item, counts)
                continue
            group, reason = (None, reason) if reason else self._group(item)
            if group is None:
                if reason == OTHER_GROUP:
                    counts[Metric.OTHER_GROUPS] += 1
                    continue
                logger.warning(
                    "notification dropped",
                    extra={
                        "endpoint": endpoint.value,
                        "index": index,
                        "reason": reason,
                        "subscription_id": item.subscription_id,
                        "resource": (item.resource or "")[:200],
                    },
                )
                counts[Metric.DROPPED] += 1
                continue
            counts[Metric.ACCEPTED] += 1
            if group in hints:
                counts[Metric.COALESCED] += 1
                continue
            hints[group] = Hint(group_id=group, reason=HINT_REASON, received_at=received_at)
        for group in sorted(lost - set(hints)):
            hints[group] = Hint(group_id=group, reason=LOST_REASON, received_at=received_at)
            counts[Metric.LOOKS_REQUESTED] += 1
        if hints:
            self._queue.send(list(hints.values()))
        logger.info(
            "notifications received",
            extra={
                "endpoint": endpoint.value,
                "items": len(body.value),
                "accepted": counts[Metric.ACCEPTED],
                "dropped": counts[Metric.DROPPED],
                "other_groups": counts[Metric.OTHER_GROUPS],
                "groups": sorted(hints),
            },
        )
        return WebhookReply(202, "", None, dict(counts))

    def _untrusted(self, item: NotificationItem, secret: str) -> str | None:
        """Why an item cannot be trusted, or None. The clientState is compared first and never logged."""
        if not same_secret(secret, item.client_state):
            return "clientState mismatch"
        if self._tenant is not None and item.tenant_id.lower() != self._tenant:
            return "wrong tenant"
        return None

    def _group(self, item: NotificationItem) -> tuple[str | None, str | None]:
        """(the configured group the item points at, None) or (None, why it points at none)."""
        found = group_of(item.resource or "")
        if found is None:
            return None, "resource is not a group's members"
        if found not in self._groups:
            return None, OTHER_GROUP
        return self._groups[found], None

    def _lifecycle(self, endpoint: Endpoint, index: int, item: NotificationItem, counts: Counter[str]) -> set[str]:
        """Handle one trusted lifecycle item; the PIM groups whose notifications it says were lost."""
        event = item.lifecycle_event or ""
        context = {"endpoint": endpoint.value, "index": index, "subscription_id": item.subscription_id}
        if event not in _LIFECYCLE_METRICS:
            # Microsoft may add lifecycle events; receivers are asked to ignore the ones they do not know
            counts[Metric.LIFECYCLE_UNKNOWN] += 1
            logger.info("unknown lifecycle event ignored", extra={**context, "lifecycle_event": event[:64]})
            return set()
        counts[_LIFECYCLE_METRICS[event]] += 1
        if event != "reauthorizationRequired":
            concerned = self._concerned(item)
            logger.warning(
                "lifecycle event: notifications lost, the PIM groups it concerns are looked at now",
                extra={**context, "lifecycle_event": event, "groups": len(concerned)},
            )
            return concerned
        if self._renewer is None:
            logger.warning(
                "reauthorization required; renewal left to the scheduled subscriptions job",
                extra=context,
            )
            return set()
        try:
            self._renewer.renew(item.subscription_id)
        except DirectoryError as error:
            # the scheduled subscriptions job renews it later; Graph must still get its 202 now
            counts[Metric.RENEWAL_FAILED] += 1
            logger.error("subscription renewal failed", extra={**context, "error": str(error)})
            return set()
        counts[Metric.RENEWED] += 1
        logger.info("subscription renewed", extra=context)
        return set()

    def _concerned(self, item: NotificationItem) -> set[str]:
        """The configured group a lifecycle item's resource names; every PIM group when it names none
        (lifecycle items need not carry a resource, and a tenant-wide subscription concerns them all)."""
        found = group_of(item.resource or "")
        if found is not None and found in self._groups:
            return {self._groups[found]}
        return set(self._groups.values())
