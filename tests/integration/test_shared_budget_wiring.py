"""Which budget each function's Identity Store client draws from, as ``idsync.wiring`` builds them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import boto3
import pytest

from idsync.config import Settings, parse_settings
from idsync.services.jit import LEASE_SECONDS
from idsync.services.rate_budget import TokenRateBudget
from idsync.services.shared_budget import SharedRateBudget, WriterClass
from idsync.wiring import build_jit_service, build_rate_budget
from sandbox.tenant import CLIENT_ID, CLIENT_SECRET, TENANT_ID
from tests.fakes import FakeScheduler
from tests.integration.test_bucket_dynamodb import TABLE, dynamodb  # noqa: F401 -- fixture

BUDGET_KEY = {"pk": {"S": "BUCKET#identity-center"}, "sk": {"S": "BUCKET"}}


def settings(backend: str, **identity_store: Any) -> Settings:
    state = {"backend": "dynamodb", "table_name": TABLE, "region": "us-east-1"} if backend == "dynamodb" else {}
    return parse_settings(
        {
            "graph": {"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
            "identity_store": {"region": "us-east-1", **identity_store},
            "state": state,
        }
    )


@pytest.mark.parametrize(
    ("writer", "kind"),
    [
        ("sync", WriterClass.BULK),
        ("access", WriterClass.BULK),
        ("cli", WriterClass.BULK),
        ("jit", WriterClass.JIT),
        ("expiry", WriterClass.JIT),
        ("poller", WriterClass.JIT),
    ],
)
def test_on_dynamodb_state_every_writer_shares_the_budget_in_its_class(writer: str, kind: WriterClass) -> None:
    budget = build_rate_budget(settings("dynamodb"), writer)
    assert isinstance(budget, SharedRateBudget)
    assert budget.kind is kind


def test_on_local_state_the_budget_is_the_process_s_own() -> None:
    budget = build_rate_budget(settings("sqlite", rate_per_second=7.0), "sync")
    assert isinstance(budget, TokenRateBudget)
    assert budget.rate == 7.0
    with pytest.raises(ValueError, match="unknown writer 'batch'"):
        build_rate_budget(settings("sqlite"), "batch")


@pytest.mark.parametrize("writer", ["jit", "expiry", "poller"])
def test_the_jit_functions_calls_draw_from_the_shared_budget_item(
    dynamodb: Any,  # noqa: F811 -- the fixture imported above
    writer: str,
) -> None:
    # Given a JIT service wired as the deployed function is, on the state table (the store id discovered)
    service = build_jit_service(settings("dynamodb"), writer=writer, scheduler=FakeScheduler())

    # When its Identity Store client makes two calls
    assert service.target.find_group("Nobody") is None
    assert service.target.find_user("nobody") is None

    # Then each took one token of the shared budget (a JIT writer takes one at a time) from the table's item;
    # the discovery's sso-admin call is not metered
    item = boto3.client("dynamodb").get_item(TableName=TABLE, Key=BUDGET_KEY, ConsistentRead=True)["Item"]
    assert item["version"] == {"N": "2"}
    assert int(item["micro_tokens"]["N"]) >= 7_000_000  # 9 - 2, and whatever refilled since


def test_the_jit_functions_renew_the_group_lease_before_every_external_call(
    dynamodb: Any,  # noqa: F811 -- the fixture imported above
) -> None:
    """The budget's turn is waited for inside the request, without a bound, so no call's length is known in
    advance: a lease that skipped its renewal could lapse while the request waits, and land after another
    writer decided (tests/unit/test_pim_failures.py)."""
    own = build_jit_service(settings("dynamodb"), scheduler=FakeScheduler())
    assert own.call_seconds is None
    assert own.lease("g").renew_below == timedelta(seconds=LEASE_SECONDS)
    given = build_jit_service(settings("dynamodb"), scheduler=FakeScheduler(), target=own.target)
    assert given.call_seconds is None
    assert given.lease("g").renew_below == timedelta(seconds=LEASE_SECONDS)
