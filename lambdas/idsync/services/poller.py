"""The PIM poller: what makes PIM for Groups certain when notifications are lost, late or never sent.

Graph's delivery latency for group notifications is undocumented, and whether an activation raises one at all
is too; a notification is a hint that makes idsync fast, the poller is what makes it right. On its own
schedule (``pim.poll_interval_minutes``, default every minute) it reads each PIM group's assignment schedule
instances, one Graph request per group: Graph's list requires ``$filter`` with ``eq`` on exactly one groupId or
principalId, so no broader query is documented. It compares them with the recorded grants
(``idsync.pim.stale_grants``) and, for a group whose grants no longer match, runs the worker's own
``JitService.look``: the same rule, under the same group lease, with the same token line. A look that must
wait for a token (or for the group's lease) is handed to the queue as a hint due when the wait ends, so the
worker finishes it in line order. A group that cannot be read is logged and retried at the next poll; the
others go on.

Invariant: an activation whose notification never arrives is applied within one poll interval (plus a
look), and a grant that ends is removed within one poll interval even if its expiry schedule failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from idsync.errors import DirectoryAuthError, DirectoryError, QueueError, StateError
from idsync.pim import stale_grants
from idsync.ports import Hint, HintRetry
from idsync.services.control import load_pause
from idsync.services.jit import JitOutcome, JitService

logger = logging.getLogger(__name__)

POLL_REASON = "poll"


@dataclass
class PollReport:
    """What one poll did: groups read, groups looked at (with their outcomes), hints queued, failures."""

    polled: int = 0
    looked: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)  # looks that wait for a token or a lease: hint sent
    failed: dict[str, str] = field(default_factory=dict)  # group id -> error
    outcomes: list[JitOutcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "polled": self.polled,
            "looked": list(self.looked),
            "queued": list(self.queued),
            "failed": dict(self.failed),
            "activations": sum(len(o.activations) for o in self.outcomes),
            "removals": sum(len(o.removals) for o in self.outcomes),
        }


class PimPoller:
    """Reads every PIM group's instances and looks at the groups whose grants no longer match them."""

    def __init__(self, service: JitService, retry: HintRetry) -> None:
        self.service = service
        self.retry = retry

    def poll(self) -> PollReport:
        """One poll of every configured PIM group. Raises DirectoryAuthError (Graph refuses the credentials:
        nothing can be read) and QueueError (a waiting look cannot be handed to the queue)."""
        report = PollReport()
        paused = load_pause(self.service.state) is not None  # held activations: looked at again next poll
        for group in self.service.groups:
            report.polled += 1
            try:
                instances = self.service.directory.instances(group)
                records = self.service.grants.grants(group)
            except DirectoryAuthError:
                raise
            except (DirectoryError, StateError) as error:
                report.failed[group] = str(error)
                logger.error(
                    "PIM group not polled; the next poll retries it", extra={"group_id": group, "error": str(error)}
                )
                continue
            reasons = stale_grants(instances, records, self.service.clock.now())
            if reasons:
                self._look(group, reasons, report, paused)
        logger.info("PIM groups polled", extra=report.summary())
        return report

    def look_now(self, groups: Iterable[str], why: str) -> PollReport:
        """Look at ``groups`` at once, whatever their grants say (notifications for them were lost).

        Raises DirectoryAuthError, QueueError."""
        report = PollReport()
        paused = load_pause(self.service.state) is not None
        for group in groups:
            report.polled += 1
            self._look(group, [why], report, paused)
        return report

    def _look(self, group: str, reasons: list[str], report: PollReport, paused: bool = False) -> None:
        """The worker's look (removals always; activations held while ``paused``). Raises DirectoryAuthError,
        QueueError."""
        try:
            outcome = self.service.look(group, paused=paused)
        except DirectoryAuthError:
            raise
        except (DirectoryError, StateError) as error:
            report.failed[group] = str(error)
            logger.error(
                "PIM group not looked at; the next poll retries it", extra={"group_id": group, "error": str(error)}
            )
            return
        report.looked.append(group)
        report.outcomes.append(outcome)
        logger.info("PIM group looked at by the poller", extra={"group_id": group, "reasons": reasons[:10]})
        if outcome.wait_seconds is None or paused:  # while paused, the next poll looks again
            return
        now = self.service.clock.now().astimezone(UTC).isoformat(timespec="milliseconds")
        seconds = max(1, math.ceil(outcome.wait_seconds))
        try:
            self.retry.resend(Hint(group_id=group, reason=POLL_REASON, received_at=now), seconds)
        except QueueError:
            logger.exception("waiting look not queued; the next poll looks again", extra={"group_id": group})
            raise
        report.queued.append(group)
