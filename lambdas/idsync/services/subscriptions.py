"""The Graph subscriptions that feed the webhook: one per configured PIM group.

Each subscribes to ``/groups/{id}/members`` for ``updated,deleted`` with the webhook's notification and
lifecycle URLs and the clientState secret. Graph keeps a directory subscription at most 41,760 minutes
(29 days), so ``ensure`` (daily, and ``idsync subscriptions ensure``) creates what is missing, renews
what ends within a week, recreates what Graph deleted, and deletes duplicates and subscriptions of
groups no longer configured. Only subscriptions pointing at this deployment's notification URL are
ever touched. ``renew`` serves the webhook's reauthorizationRequired (``ports.SubscriptionRenewer``).

The subscription ids are recorded in the state store, so a subscription that disappeared is reported
as recreated (notifications may have been missed meanwhile: the sync cycle is the safety net).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from idsync.errors import ConfigError, DirectoryError, SubscriptionGone
from idsync.ports import Clock, GraphSubscription, SecretSource, StateStore, SubscriptionApi
from idsync.services.notifications import group_of

logger = logging.getLogger(__name__)

CHANGE_TYPE = "updated,deleted"
MAX_LIFETIME = timedelta(minutes=41_760)  # Graph's limit for users and groups
LIFETIME_MARGIN = timedelta(minutes=10)  # clock skew between idsync and Graph
RENEW_WITHIN = timedelta(days=7)
RECORD_KEY = "subscriptions"  # state item: group id -> subscription id


def members_resource(group_id: str) -> str:
    return f"/groups/{group_id}/members"


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
    ) -> None:
        self.api = api
        self.secrets = secrets
        self.client_state_secret = client_state_secret
        self.groups = list(dict.fromkeys(pim_groups))
        self.notification_url = notification_url
        self.lifecycle_url = lifecycle_url
        self.clock = clock
        self.state = state

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

    def _ours(self) -> dict[str, list[GraphSubscription]]:
        """This deployment's subscriptions by group id (lower case); others' are left alone."""
        url = self._url()
        found: dict[str, list[GraphSubscription]] = {}
        for sub in self.api.list():
            group = group_of(sub.resource)
            if sub.notification_url == url and group is not None:
                found.setdefault(group, []).append(sub)
        return found

    def status(self) -> list[GroupSubscription]:
        """Each configured group with its subscription (the one expiring last). Raises DirectoryError."""
        ours = self._ours()
        now = self.clock.now()
        out = []
        for group in self.groups:
            subs = ours.get(group.lower(), [])
            keep = max(subs, key=lambda s: s.expiration) if subs else None
            out.append(GroupSubscription(group, keep, keep is None or keep.expiration - now <= RENEW_WITHIN))
        return out

    def ensure(self) -> EnsureReport:
        """Create, renew, recreate and clean up, group by group; one group's failure does not stop the others.

        Raises ConfigError (no notification URL or clientState), DirectoryError when the list cannot be read.
        """
        ours = self._ours()
        recorded = self._recorded()
        report = EnsureReport()
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
                    created = self._create(group)
                    gone = recorded.get(group)
                    (report.recreated if gone else report.created).append(group)
                    if gone:
                        logger.warning(
                            "subscription had disappeared and was recreated; the sync cycle covers missed changes",
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
        self._record({g: s for g, s in recorded.items() if g in self.groups})
        logger.info("subscriptions ensured", extra={"report": report.as_dict()})
        return report

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
            return self._create(group).id
        report.renewed.append(group)
        return sub.id

    def _create(self, group: str) -> GraphSubscription:
        client_state = self.secrets.get(self.client_state_secret)
        created = self.api.create(
            members_resource(group), CHANGE_TYPE, self._url(), self.lifecycle_url, client_state, self.expiration()
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
        if self.state is not None:
            self.state.put_item(RECORD_KEY, {"groups": groups})
