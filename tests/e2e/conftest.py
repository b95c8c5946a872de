"""A local world: the Graph emulator over the sample tenant, moto for AWS, SQLite state, the real engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from idsync.config import Settings, parse_settings
from idsync.wiring import Engine, build_engine
from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import CLIENT_SECRET, SERVICE_PRINCIPAL_ID, Tenant, sample_tenant
from tests.fakes import FakeClock


@pytest.fixture
def tenant() -> Tenant:
    return sample_tenant()


@pytest.fixture
def emulator(tenant: Tenant) -> Iterator[GraphEmulator]:
    with GraphEmulator(tenant) as emu:
        yield emu


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


UNLIMITED = 1_000_000.0


@pytest.fixture
def make_settings(emulator: GraphEmulator, tmp_path: Path, identity_store_id: str) -> Callable[..., Settings]:
    def make(**sections: Any) -> Settings:
        data: dict[str, Any] = {
            "graph": {**emulator.graph_config(), "client_secret": CLIENT_SECRET, "max_retries": 3},
            "scope": {"mode": "assigned", "service_principal_id": SERVICE_PRINCIPAL_ID},
            # the store id is discovered (sso-admin); moto has no rate limit for the budget to keep under
            "identity_store": {"region": "us-east-1", "rate_per_second": UNLIMITED},
            "state": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        }
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value}
        return parse_settings(data)

    return make


@pytest.fixture
def engine(make_settings: Callable[..., Settings], clock: FakeClock) -> Engine:
    return build_engine(make_settings(), clock=clock)


class IdentityCenter:
    """What moto's IAM Identity Center holds, read with plain boto3 (independent of the adapter)."""

    def __init__(self, identity_store_id: str) -> None:
        self.id = identity_store_id
        self.client = boto3.client("identitystore", region_name="us-east-1")

    def users(self) -> dict[str, dict[str, Any]]:
        out = {}
        for page in self.client.get_paginator("list_users").paginate(IdentityStoreId=self.id):
            for user in page["Users"]:
                out[user["UserName"]] = user
        return out

    def groups(self) -> dict[str, dict[str, Any]]:
        out = {}
        for page in self.client.get_paginator("list_groups").paginate(IdentityStoreId=self.id):
            for group in page["Groups"]:
                out[group["DisplayName"]] = group
        return out

    def members(self, display_name: str) -> set[str]:
        group = self.groups()[display_name]
        names = {u["UserId"]: name for name, u in self.users().items()}
        found = set()
        pages = self.client.get_paginator("list_group_memberships").paginate(
            IdentityStoreId=self.id, GroupId=group["GroupId"]
        )
        for page in pages:
            for membership in page["GroupMemberships"]:
                found.add(names[membership["MemberId"]["UserId"]])
        return found

    def describe(self, user_name: str) -> dict[str, Any]:
        user = self.users()[user_name]
        return self.client.describe_user(
            IdentityStoreId=self.id, UserId=user["UserId"], Extensions=["aws:identitystore:enterprise"]
        )


@pytest.fixture
def identity_center(identity_store_id: str) -> IdentityCenter:
    return IdentityCenter(identity_store_id)
