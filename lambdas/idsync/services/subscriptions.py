"""The Graph subscriptions that feed the webhook: one per PIM group, or one for every group past Graph's quota.

Graph allows 100 group subscriptions per app and tenant (1,000 per tenant across apps). Up to
``pim.max_group_subscriptions`` PIM groups (default 90, room left for a renewal that must recreate),
each gets its own subscription to ``/groups/{id}/members``: the webhook hears only about PIM groups.
Beyond that, one tenant-wide ``/groups`` subscription serves them all (it carries every group's
changes, members included) and the webhook drops the changes of other groups; the per-group ones are
deleted once it exists. Either way with ``updated,deleted``, the webhook's notification and lifecycle
URLs and the clientState secret. Graph keeps a directory subscription at most 41,760 minutes (29 days),
so ``ensure`` (daily, and ``idsync subscriptions ensure``) creates what is missing, renews what ends
within a week, recreates what Graph deleted, and deletes duplicates and subscriptions of groups no
longer configured. Only subscriptions pointing at this deployment's notification URL are ever touched.
``renew`` serves the webhook's reauthorizationRequired (``ports.SubscriptionRenewer``).

The subscription ids are recorded in the state store, so a subscription that disappeared is reported as
recreated; notifications may have been missed meanwhile, so every PIM group it served gets a hint (an
immediate look) when a hint queue is wired, and the PIM poller covers the gap in any case.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from idsync.errors import ConfigError, DirectoryError, SubscriptionGone
from idsync.ports import Clock, GraphSubscription, Hint, HintQueue, SecretSource, StateStore, SubscriptionApi
from idsync.services.notifications import group_of

logger = logging.getLogger(__name__)

CHANGE_TYPE = "updated,deleted"
MAX_LIFETIME = timedelta(minutes=41_760)  # Graph's limit for users and groups
LIFETIME_MARGIN = timedelta(minutes=10)  # clock skew between idsync and Graph
RENEW_WITHIN = timedelta(days=7)
RECORD_KEY = "subscriptions"  # state item: group id -> subscription id, and the tenant-wide one
GROUPS_RESOURCE = "/groups"  # every group's changes, members included
GROUP_QUOTA = 100  # Graph's group subscriptions per app and tenant
LOST_REASON = "subscription"  # hint reason: a subscription had disappeared
_GROUPS = re.compile(r"^/?groups/?$", re.IGNORECASE)
WIDE_KEY = "*"  # the recorded id of the /groups subscription


def members_resource(group_id: str) -> str:
    return f"/groups/{group_id}/members"


def is_groups_resource(resource: str) -> bool:
    """True for the tenant-wide ``/groups`` resource (any spelling Graph gives back)."""
    return _GROUPS.fullmatch(resource) is not None


@dataclass(frozen=True, slots=True)
class GroupSubscription:
    """One configured PIM group and the subscription that serves it (None: it has none)."""

    group_id: str
    subscription: GraphSubscription | None
    renew_due: bool

    def as_dict(self) -> dict[str, Any]:
        sub = self.subscription
        return {
            "groupId": self.group_id,
            "subscriptionId": sub.id if sub else None,
            "expiration": sub.expiration.isoformat() if sub else None,
            "renewDue": self.renew_due,
        }


@dataclass
class EnsureReport:
    """What ``ensure`` did, by group id (and subscription id for deletions)."""

    created: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # subscription ids
    failed: dict[str, str] = field(default_factory=dict)  # group id -> error

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "recreated": self.recreated,
            "renewed": self.renewed,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "failed": self.failed,
        }


def subscription_expiration(now: datetime) -> datetime:
    """The longest expiration Graph accepts for a directory subscription made at ``now``, less a margin."""
    return now + MAX_LIFETIME - LIFETIME_MARGIN


class SubscriptionsService:
    """Keeps one Graph subscription per configured PIM group alive; implements ``ports.SubscriptionRenewer``."""

    def __init__(
        self,
        api: SubscriptionApi,
        secrets: SecretSource,
        client_state_secret: str,
        pim_groups: Iterable[str],
        notification_url: str | None,
        lifecycle_url: str | None,
        clock: Clock,
        state: StateStore | None = None,
        max_group_subscriptions: int = 90,
        looks: HintQueue | None = None,
    ) -> None:
        """``max_group_subscriptions``: more PIM groups than this are served by one ``/groups`` subscription.
        ``looks``: where the groups of a subscription found missing are sent as hints (None: left to the poller)."""
        self.api = api
        self.secrets = secrets
        self.client_state_secret = client_state_secret
        self.groups = list(dict.fromkeys(pim_groups))
        self.notification_url = notification_url
        self.lifecycle_url = lifecycle_url
        self.clock = clock
        self.state = state
        self.max_group_subscriptions = min(max_group_subscriptions, GROUP_QUOTA)
        self.looks = looks

    @property
    def tenant_wide(self) -> bool:
        """True when the PIM groups outnumber the per-group subscriptions allowed: one ``/groups`` serves all."""
        return len(self.groups) > self.max_group_subscriptions

    def expiration(self) -> datetime:
        """The longest expiration Graph accepts now, less a margin for clock skew."""
        return subscription_expiration(self.clock.now())

    def _url(self) -> str:
        if not self.notification_url:
            raise ConfigError(
                "pim.notification_url is required to subscribe to the PIM groups (the webhook's public URL, "
                "POST /graph/notifications)"
            )
        return self.notification_url

    def _ours(self) -> tuple[dict[str, list[GraphSubscription]], list[GraphSubscription]]:
        """This deployment's per-group subscriptions by group id (lower case), and its ``/groups`` ones;
        others' are left alone."""
        url = self._url()
        found: dict[str, list[GraphSubscription]] = {}
        wide: list[GraphSubscription] = []
        for sub in self.api.list():
            if sub.notification_url != url:
                continue
            if is_groups_resource(sub.resource):
                wide.append(sub)
                continue
            group = group_of(sub.resource)
            if group is not None:
                found.setdefault(group, []).append(sub)
        return found, wide

    def status(self) -> list[GroupSubscription]:
        """Each configured group with the subscription serving it (the one expiring last). Raises DirectoryError."""
        ours, wide = self._ours()
        now = self.clock.now()
        out = []
        for group in self.groups:
            subs = wide if self.tenant_wide else ours.get(group.lower(), [])
            keep = max(subs, key=lambda s: s.expiration) if subs else None
            out.append(GroupSubscription(group, keep, keep is None or keep.expiration - now <= RENEW_WITHIN))
        return out

    def ensure(self) -> EnsureReport:
        """Create, renew, recreate and clean up; one group's failure does not stop the others. The groups of a
        subscription found missing get a hint (an immediate look). The subscriptions of the other mode are
        deleted only once this mode's are in place.

        Raises ConfigError (no notification URL or clientState), DirectoryError when the list cannot be read,
        QueueError when the hints for missing subscriptions cannot be sent.
        """
        ours, wide = self._ours()
        recorded = self._recorded()
        report = EnsureReport()
        if self.tenant_wide:
            served = self._ensure_wide(wide, recorded, report)
            if served:
                for subs in ours.values():
                    for sub in subs:
                        self._delete(sub, report, "the PIM groups are served by one /groups subscription")
        else:
            self._ensure_groups(ours, recorded, report)
            if not report.failed:
                for sub in wide:
                    self._delete(sub, report, "the PIM groups fit per-group subscriptions")
        self._record(recorded)
        self._look_at(report.recreated)
        logger.info("subscriptions ensured", extra={"report": report.as_dict()})
        return report

    def _ensure_groups(
        self, ours: dict[str, list[GraphSubscription]], recorded: dict[str, str], report: EnsureReport
    ) -> None:
        wanted = {group.lower() for group in self.groups}
        for group, subs in ours.items():
            if group not in wanted:
                for sub in subs:
                    self._delete(sub, report, "its group is no longer a configured PIM group")
        now = self.clock.now()
        for group in self.groups:
            subs = sorted(ours.get(group.lower(), []), key=lambda s: s.expiration, reverse=True)
            for extra in subs[1:]:
                self._delete(extra, report, "a second subscription for the same group")
            try:
                if not subs:
                    created = self._create(group, members_resource(group))
                    gone = recorded.get(group)
                    (report.recreated if gone else report.created).append(group)
                    if gone:
                        logger.warning(
                            "subscription had disappeared and was recreated; its group is looked at now",
                            extra={"group_id": group, "old_subscription_id": gone},
                        )
                    recorded[group] = created.id
                elif subs[0].expiration - now <= RENEW_WITHIN:
                    recorded[group] = self._renew_or_recreate(group, subs[0], report)
                else:
                    report.unchanged.append(group)
                    recorded[group] = subs[0].id
            except DirectoryError as error:
                report.failed[group] = str(error)
                logger.error("subscription not ensured", extra={"group_id": group, "error": str(error)})
        for group in [g for g in recorded if g != WIDE_KEY and g not in self.groups]:
            del recorded[group]
        recorded.pop(WIDE_KEY, None)

    def _ensure_wide(self, wide: list[GraphSubscription], recorded: dict[str, str], report: EnsureReport) -> bool:
        """One ``/groups`` subscription for every PIM group; the groups are reported as one. True when it exists."""
        subs = sorted(wide, key=lambda s: s.expiration, reverse=True)
        for extra in subs[1:]:
            self._delete(extra, report, "a second /groups subscription")
        groups = list(self.groups)
        try:
            if not subs:
                created = self._create(GROUPS_RESOURCE, GROUPS_RESOURCE)
                gone = recorded.get(WIDE_KEY)
                (report.recreated if gone else report.created).extend(groups)
                if gone:
                    logger.warning(
                        "the /groups subscription had disappeared and was recreated; every PIM group is looked at now",
                        extra={"old_subscription_id": gone},
                    )
                sub_id = created.id
            elif subs[0].expiration - self.clock.now() <= RENEW_WITHIN:
                try:
                    self.api.renew(subs[0].id, self.expiration())
                    report.renewed.extend(groups)
                    sub_id = subs[0].id
                except SubscriptionGone:
                    sub_id = self._create(GROUPS_RESOURCE, GROUPS_RESOURCE).id
                    report.recreated.extend(groups)
            else:
                report.unchanged.extend(groups)
                sub_id = subs[0].id
        except DirectoryError as error:
            report.failed[GROUPS_RESOURCE] = str(error)
            logger.error("the /groups subscription not ensured", extra={"error": str(error)})
            return False
        recorded.clear()
        recorded[WIDE_KEY] = sub_id
        return True

    def _look_at(self, groups: list[str]) -> None:
        """Hints for the groups whose subscription had disappeared: their notifications may have been lost."""
        if not groups or self.looks is None:
            return
        now = self.clock.now().isoformat()
        self.looks.send([Hint(group_id=g, reason=LOST_REASON, received_at=now) for g in dict.fromkeys(groups)])

    def renew(self, subscription_id: str) -> None:
        """Renew (so reauthorize) one subscription to the longest expiration. Raises DirectoryError
        (SubscriptionGone when Graph no longer has it: the next ``ensure`` recreates it)."""
        renewed = self.api.renew(subscription_id, self.expiration())
        logger.info(
            "subscription renewed", extra={"subscription_id": subscription_id, "expiration": renewed.expiration}
        )

    def _renew_or_recreate(self, group: str, sub: GraphSubscription, report: EnsureReport) -> str:
        try:
            self.api.renew(sub.id, self.expiration())
        except SubscriptionGone:
            report.recreated.append(group)
            return self._create(group, members_resource(group)).id
        report.renewed.append(group)
        return sub.id

    def _create(self, group: str, resource: str) -> GraphSubscription:
        client_state = self.secrets.get(self.client_state_secret)
        created = self.api.create(
            resource, CHANGE_TYPE, self._url(), self.lifecycle_url, client_state, self.expiration()
        )
        logger.info("subscription created", extra={"group_id": group, "subscription_id": created.id})
        return created

    def _delete(self, sub: GraphSubscription, report: EnsureReport, why: str) -> None:
        try:
            self.api.delete(sub.id)
        except DirectoryError as error:
            report.failed[sub.id] = str(error)
            return
        report.deleted.append(sub.id)
        logger.info("subscription deleted", extra={"subscription_id": sub.id, "resource": sub.resource, "why": why})

    def _recorded(self) -> dict[str, str]:
        if self.state is None:
            return {}
        return dict((self.state.get_item(RECORD_KEY) or {}).get("groups", {}))

    def _record(self, groups: dict[str, str]) -> None:
        """Group id (or ``WIDE_KEY``) -> subscription id."""
        if self.state is not None:
            self.state.put_item(RECORD_KEY, {"groups": groups})
