"""The drift check over the product's Identity Store adapter against moto (gap-filled) and SQLite state: hand
edits made through the API are repaired by the next delta cycles, objects made by hand are left alone, and a
world without drift costs List calls only."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from bench.full_reconcile import (
    CYCLE_KEY,
    Everything,
    GraphDeltaRound,
    GroupMapper,
    UserMapper,
    VirtualTime,
    directory,
    seed,
)
from bench.world import REGION, fake_aws
from idsync.adapters.identitystore import IdentityStoreTarget
from idsync.adapters.sqlite_state import SqliteStateStore
from idsync.model import PlanPolicy
from idsync.ports import CallCounter
from idsync.services.cycle import CycleOptions, CycleService, Scoping
from idsync.services.drift import DriftCheck


class MotoWorld:
    def __init__(self, folder: str) -> None:
        self.store_id = boto3.client("sso-admin", region_name=REGION).list_instances()["Instances"][0][
            "IdentityStoreId"
        ]
        self.client = boto3.client("identitystore", region_name=REGION)
        self.counter = CallCounter()
        self.target = IdentityStoreTarget(self.store_id, self.client, self.counter)
        self.state = SqliteStateStore(Path(folder) / "state.db")
        self.clock = VirtualTime()
        users, groups, members = directory(300, 6)  # each user in one group of 50
        self.source = GraphDeltaRound(self.clock, users, groups)
        self.source.members = members
        self.service = CycleService(
            self.source,
            self.target,
            self.state,
            UserMapper(),
            GroupMapper(),
            Everything(),
            Scoping("all", False),
            PlanPolicy(),
            self.clock,
            full_reconcile=timedelta(days=30),
        )
        seed(self.store_id, self.state, self.service, self.clock, self.source)
        record = self.state.get_item(CYCLE_KEY) or {}
        self.state.put_item(CYCLE_KEY, {**record, "last_full": self.clock.now().isoformat()})  # delta cycles next
        self.drift = DriftCheck(
            self.target, self.state, self.clock, timedelta(minutes=1), self.service.policy.managed_attributes
        )
        self.service.drift = self.drift

    def cycle(self) -> Any:
        self.clock.seconds += 600
        outcome = self.service.run(CycleOptions())
        assert outcome.mode == "delta"
        assert outcome.report.complete
        return outcome

    def user(self, source_id: str) -> str:
        return self.state.load_ownership().users[source_id].target_id

    def group(self, source_id: str) -> str:
        return self.state.load_ownership().groups[source_id].target_id

    def members(self, group_id: str) -> set[str]:
        pages = self.client.get_paginator("list_group_memberships").paginate(
            IdentityStoreId=self.store_id, GroupId=group_id
        )
        return {m["MemberId"]["UserId"] for page in pages for m in page["GroupMemberships"]}

    def describe(self, user_id: str) -> dict[str, Any]:
        return self.client.describe_user(IdentityStoreId=self.store_id, UserId=user_id)


@pytest.fixture
def world() -> Iterator[MotoWorld]:
    with tempfile.TemporaryDirectory(prefix="idsync-drift-") as folder, fake_aws():
        yield MotoWorld(folder)


def test_a_world_without_drift_costs_list_calls_only(world: MotoWorld) -> None:
    for _ in range(3):
        outcome = world.cycle()
        assert outcome.report.writes == 0
        assert world.drift.last.drifts == ()
    assert set(world.counter.calls) <= {"ListUsers", "ListGroups", "ListGroupMemberships"}
    assert world.counter.total == sum(world.counter.calls.values()) > 0


def test_hand_edits_through_the_api_are_repaired(world: MotoWorld) -> None:
    store, client = world.store_id, world.client
    team0, team1, team5 = world.group("g00000"), world.group("g00001"), world.group("g00005")
    ada, bob = world.user("e000000"), world.user("e000001")  # both in Team 00000 only among these
    # a member removed, a managed user added to another managed group, a user edited, a group renamed
    removed = client.get_group_membership_id(IdentityStoreId=store, GroupId=team0, MemberId={"UserId": ada})
    client.delete_group_membership(IdentityStoreId=store, MembershipId=removed["MembershipId"])
    client.create_group_membership(IdentityStoreId=store, GroupId=team1, MemberId={"UserId": bob})
    client.update_user(
        IdentityStoreId=store,
        UserId=bob,
        Operations=[{"AttributePath": "displayName", "AttributeValue": "Edited by hand"}],
    )
    client.update_group(
        IdentityStoreId=store,
        GroupId=team5,
        Operations=[{"AttributePath": "displayName", "AttributeValue": "Renamed by hand"}],
    )
    # and objects made by hand: a user in a managed group, a group holding a managed user
    stranger = client.create_user(
        IdentityStoreId=store,
        UserName="stranger@example.com",
        DisplayName="Stranger",
        Name={"GivenName": "S", "FamilyName": "T"},
    )["UserId"]
    client.create_group_membership(IdentityStoreId=store, GroupId=team0, MemberId={"UserId": stranger})
    own = client.create_group(IdentityStoreId=store, DisplayName="Made by hand")["GroupId"]
    client.create_group_membership(IdentityStoreId=store, GroupId=own, MemberId={"UserId": ada})
    outcome = world.cycle()
    assert len(world.drift.last.drifts) == 4
    assert outcome.report.writes == 4
    assert ada in world.members(team0)
    assert bob not in world.members(team1)
    assert world.describe(bob)["DisplayName"] == "User 1"
    assert client.describe_group(IdentityStoreId=store, GroupId=team5)["DisplayName"] == "Team 00005"
    assert stranger in world.members(team0)
    assert world.members(own) == {ada}
    assert world.cycle().report.writes == 0


def test_a_user_deleted_through_the_api_is_created_again_with_its_memberships(world: MotoWorld) -> None:
    gone = world.user("e000007")
    groups = {g for g in (world.group(f"g{j:05d}") for j in range(6)) if gone in world.members(g)}
    assert groups
    world.client.delete_user(IdentityStoreId=world.store_id, UserId=gone)
    assert world.target.describe_user(gone) is None
    world.cycle()
    again = world.user("e000007")
    assert again != gone
    assert world.describe(again)["UserName"] == "user000007@contoso.example"
    assert {g for g in groups if again in world.members(g)} == groups
    # the next cycle points the people it manages at its new id, as after any re-creation; then all is settled
    assert world.cycle().report.counts == {"user": {"update": 10}}
    assert world.target.describe_user(world.user("e000071")).manager_target_id == again
    assert world.cycle().report.writes == 0


def test_describe_answers_none_for_what_does_not_exist(world: MotoWorld) -> None:
    user, group = world.user("e000003"), world.group("g00002")
    assert world.target.describe_user(user).user_name == "user000003@contoso.example"
    assert world.target.describe_group(group).display_name == "Team 00002"
    world.client.delete_group(IdentityStoreId=world.store_id, GroupId=group)
    assert world.target.describe_group(group) is None
    assert world.target.describe_user("00000000-0000-4000-8000-00000000dead") is None
