"""The metrics the functions publish (Powertools EMF) that the alarms and the dashboard read.

Every function publishes in the ``idsync`` namespace under one Powertools service name, ``idsync``
(the default ``service`` dimension), so a metric means the same whichever function sends it.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "idsync"
SERVICE = "idsync"


@dataclass(frozen=True)
class Function:
    """One Lambda function of the stack: its key, its entry point and what it is for."""

    key: str
    handler: str
    description: str


SYNC = Function("sync", "idsync.handlers.sync.lambda_handler", "Scheduled sync cycle")
WEBHOOK = Function("webhook", "idsync.handlers.webhook.lambda_handler", "Graph change notification webhook")
JIT_WORKER = Function("jit_worker", "idsync.handlers.jit_worker.lambda_handler", "PIM for Groups activations")
JIT_EXPIRY = Function("jit_expiry", "idsync.handlers.jit_expiry.lambda_handler", "PIM for Groups grant expiry")
SUBSCRIPTIONS = Function(
    "subscriptions", "idsync.handlers.subscriptions.lambda_handler", "Graph subscription creation and renewal"
)
PIM_POLLER = Function(
    "pim_poller", "idsync.handlers.pim_poller.lambda_handler", "PIM for Groups poller (lost notifications)"
)
FUNCTIONS = (SYNC, WEBHOOK, JIT_WORKER, JIT_EXPIRY, SUBSCRIPTIONS, PIM_POLLER)

# sync cycle: one datapoint per invocation
CYCLE_COMPLETE = "CycleComplete"  # 1 when the cycle finished, 0 when it stopped at a checkpoint
CYCLES_SKIPPED = "CyclesSkipped"  # another cycle holds the lease, or quarantine
QUARANTINED = "Quarantined"  # 1 for each cycle skipped because idsync is in quarantine
FAILURES = "Failures"  # objects that failed (escrowed for a later cycle)
REFUSALS = "Refusals"  # objects refused by validation (an AWS rule broken)
DELETION_GUARD = "DeletionGuardTripped"
KINDS = ("User", "Group", "Membership")
ACTIONS = ("Create", "Update", "Delete", "Adopt")


def change_metric(kind: str, action: str) -> str:
    """The name of the count of applied ``action``s on ``kind`` objects, e.g. ``UserCreate``."""
    return f"{kind}{action}"


# JIT worker
ACTIVATIONS_APPLIED = "ActivationsApplied"
ACTIVATION_LATENCY = "ActivationLatency"  # seconds from the PIM activation starting to membership present

# webhook
NOTIFICATIONS_ACCEPTED = "NotificationsAccepted"
NOTIFICATIONS_DROPPED = "NotificationsDropped"
REQUESTS_REJECTED = "RequestsRejected"
REQUESTS_FAILED = "RequestsFailed"
