"""A client-side rate budget attached to a boto3 client: every request waits its turn, every throttled
answer slows the budget down.

``attach_budget(client, budget)`` registers two botocore handlers: ``before-send`` takes a turn of
``budget`` before each request leaves (retries included), and ``needs-retry`` reports every throttled
answer (ThrottlingException and its kin, each attempt) to ``budget.throttled()``. The handlers are keyed
by the budget, so attaching the same budget twice registers them once.
"""

from __future__ import annotations

from typing import Any

from idsync.ports import RateBudget

THROTTLING_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "SlowDown",
    }
)


def is_throttled(response: Any) -> bool:
    """True when a botocore ``(http response, parsed)`` pair is a throttled answer."""
    if not isinstance(response, tuple) or len(response) < 2 or not isinstance(response[1], dict):
        return False
    return str(response[1].get("Error", {}).get("Code", "")) in THROTTLING_CODES


def attach_budget(client: Any, budget: RateBudget) -> None:
    """Make every request the client sends (retries too) wait for a turn of ``budget`` first, and report
    every throttled answer to ``budget.throttled()``."""
    service = client.meta.service_model.service_id.hyphenize()

    def take(**_: Any) -> None:
        budget.acquire()

    def feedback(response: Any = None, **_: Any) -> None:
        if is_throttled(response):
            budget.throttled()

    events = client.meta.events
    events.register_first(f"before-send.{service}", take, unique_id=f"idsync-budget-{id(budget)}")
    events.register_first(f"needs-retry.{service}", feedback, unique_id=f"idsync-budget-throttled-{id(budget)}")
