"""The sample tenant end to end: Graph emulator -> idsync -> IAM Identity Center (moto)."""

from __future__ import annotations

from typing import Any

from idsync.services.cycle import CycleOptions
from idsync.wiring import Engine
from sandbox.tenant import SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter
from tests.fakes import FakeClock


def expected(tenant: Tenant) -> tuple[set[str], dict[str, set[str]]]:
    """Computed from the tenant's own data: assigned users and direct user members of assigned groups."""
    assigned = set(tenant.assignments[SERVICE_PRINCIPAL_ID])
    groups = {g for g in assigned if g in tenant.groups}
    users = {u for u in assigned if u in tenant.users}
    for group_id in groups:
        users |= {m for m in tenant.members[group_id] if m in tenant.users}
    good = {u for u in users if tenant.users[u].get("accountEnabled", True) and u not in tenant.expected_refusals}
    upn = {u: tenant.users[u]["userPrincipalName"] for u in good}
    members = {tenant.groups[g]["displayName"]: {upn[m] for m in tenant.members[g] if m in good} for g in groups}
    return set(upn.values()), members


def run(engine: Engine, **options: Any) -> Any:
    outcome = engine.cycle.run(CycleOptions(**options))
    assert outcome.report is not None, outcome.skipped
    return outcome


def test_full_sync_of_the_sample_tenant_then_a_second_sync_writes_nothing(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter
) -> None:
    want_users, want_members = expected(tenant)
    # When the first cycle runs
    first = run(engine)
    # Then IAM Identity Center holds exactly the in-scope, valid users, the assigned groups and their members
    assert first.mode == "full"
    assert set(identity_center.users()) == want_users
    assert set(identity_center.groups()) == set(want_members)
    for name, members in want_members.items():
        assert identity_center.members(name) == members, name
    # and every user that breaks an AWS rule was refused alone, with a reason naming the attribute and rule
    refused = {r.source_id: r for r in first.report.refusals}
    assert set(refused) == set(tenant.expected_refusals)
    for user_id in tenant.expected_refusals:
        refusal = refused[user_id]
        assert refusal.name == tenant.users[user_id]["userPrincipalName"]
        assert refusal.attribute
        assert refusal.rule
        assert refusal.attribute in refusal.message
        assert refusal.rule in refusal.message
    assert first.report.failures == ()
    # When a second cycle runs with no change in Entra
    engine.counters.aws.calls.clear()
    second = run(engine)
    # Then it writes nothing and, being a delta cycle, reads from AWS only its drift check's slice
    assert second.mode == "delta"
    assert second.report.writes == 0
    assert_only_the_drift_check_read(engine)


def test_attributes_and_manager_land_in_identity_center(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter
) -> None:
    run(engine)
    # pick a provisioned user who has a provisioned manager
    users, _ = expected(tenant)
    by_upn = {u["userPrincipalName"]: uid for uid, u in tenant.users.items()}
    for upn in sorted(users):
        uid = by_upn[upn]
        manager = tenant.managers.get(uid)
        if manager and tenant.users[manager]["userPrincipalName"] in users:
            break
    source = tenant.users[uid]
    held = identity_center.describe(upn)
    assert held["DisplayName"] == source["displayName"]
    assert held["Name"]["GivenName"] == source["givenName"]
    assert held["Name"]["FamilyName"] == source["surname"]
    assert held["Emails"][0]["Value"] == source["mail"]
    assert held.get("Title") == source.get("jobTitle")
    enterprise = held["Extensions"]["aws:identitystore:enterprise"]
    manager_upn = tenant.users[manager]["userPrincipalName"]
    assert enterprise["manager"]["value"] == identity_center.users()[manager_upn]["UserId"]
    assert enterprise.get("department") == source.get("department")


def test_delta_cycles_follow_entra_changes(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter, clock: FakeClock
) -> None:
    run(engine)
    users, members = expected(tenant)
    before = identity_center.users()
    by_upn = {u["userPrincipalName"]: uid for uid, u in tenant.users.items()}
    group_by_name = {g["displayName"]: gid for gid, g in tenant.groups.items()}
    ordered = sorted(users)
    changed, disabled, soft, hard = (by_upn[u] for u in ordered[:4])
    team = next(name for name, m in sorted(members.items()) if len(m) >= 2)
    leaver = sorted(members[team])[0]
    # Given changes in Entra: an attribute, a disabled user, a soft delete, a hard delete,
    # a new member, a removed member, a renamed group
    tenant.update_user(changed, jobTitle="Principal Engineer")
    tenant.disable_user(disabled)
    tenant.soft_delete_user(soft)
    tenant.hard_delete_user(hard)
    tenant.remove_member(group_by_name[team], by_upn[leaver])
    newcomer = tenant.add_user(
        userPrincipalName="new.person@contoso.example",
        displayName="New Person",
        givenName="New",
        surname="Person",
        mail="new.person@contoso.example",
        accountEnabled=True,
    )
    tenant.add_member(group_by_name[team], newcomer)
    tenant.rename_group(group_by_name[team], f"{team} (renamed)")
    engine.counters.aws.calls.clear()
    # When the next (delta) cycle runs
    outcome = run(engine)
    # Then exactly those changes reach IAM Identity Center
    assert outcome.mode == "delta"
    held = identity_center.users()
    assert identity_center.describe(ordered[0]).get("Title") == "Principal Engineer"
    assert ordered[1] not in held
    # a soft-deleted user is restorable: it keeps its Identity Store object but no membership
    assert held[ordered[2]]["UserId"] == before[ordered[2]]["UserId"]
    assert all(ordered[2] not in identity_center.members(name) for name in identity_center.groups())
    assert ordered[3] not in held
    assert "new.person@contoso.example" in held
    renamed = identity_center.members(f"{team} (renamed)")
    assert "new.person@contoso.example" in renamed
    assert leaver not in renamed
    assert team not in identity_center.groups()
    # restoring the soft-deleted user brings them back with the same id and their memberships
    tenant.restore_user(soft)
    run(engine)
    assert identity_center.users()[ordered[2]]["UserId"] == before[ordered[2]]["UserId"]
    soft_groups = {name for name, m in members.items() if ordered[2] in m and name != team}
    assert all(ordered[2] in identity_center.members(name) for name in soft_groups)
    # a second pass with no change writes nothing
    assert run(engine).report.writes == 0


def test_an_expired_delta_token_starts_a_full_reconcile_by_itself(
    engine: Engine, tenant: Tenant, emulator: Any, identity_center: IdentityCenter
) -> None:
    run(engine)
    emulator.expire_delta_tokens()
    tenant.update_user(
        next(iter(sorted(expected(tenant)[0])))
        and next(uid for uid, u in tenant.users.items() if u["userPrincipalName"] == sorted(expected(tenant)[0])[0]),
        jobTitle="After Expiry",
    )
    outcome = run(engine)
    assert outcome.mode == "full"
    assert identity_center.describe(sorted(expected(tenant)[0])[0]).get("Title") == "After Expiry"
    assert outcome.report.failures == ()


def test_a_noop_delta_cycle_costs_at_most_three_graph_requests(engine: Engine) -> None:
    run(engine)
    engine.counters.graph.calls.clear()
    engine.counters.aws.calls.clear()
    outcome = run(engine)
    assert outcome.mode == "delta"
    graph_requests = sum(n for key, n in engine.counters.graph.calls.items() if key != "token")
    assert graph_requests <= 3
    assert_only_the_drift_check_read(engine)


def assert_only_the_drift_check_read(engine: Engine) -> None:
    """A delta cycle's AWS calls are its drift check's List calls, within the slice's budget."""
    drift = engine.cycle.drift
    assert drift is not None
    assert set(engine.counters.aws.calls) <= {"ListUsers", "ListGroups", "ListGroupMemberships"}
    assert 0 < engine.counters.aws.total == drift.last.calls <= drift.last.budget


def test_a_user_deleted_by_hand_in_aws_comes_back_at_the_full_reconcile(
    make_settings: Any, tenant: Tenant, identity_center: IdentityCenter, clock: FakeClock
) -> None:
    from idsync.wiring import build_engine

    engine = build_engine(make_settings(sync={"drift_check_hours": 0}), clock=clock)  # no drift check
    assert engine.cycle.drift is None
    run(engine)
    victim = sorted(expected(tenant)[0])[0]
    user_id = identity_center.users()[victim]["UserId"]
    identity_center.client.delete_user(IdentityStoreId=identity_center.id, UserId=user_id)
    assert run(engine).mode == "delta"  # trusts its records: nothing read from AWS
    clock.advance(25 * 3600)
    outcome = run(engine)
    assert outcome.mode == "full"
    assert victim in identity_center.users()
    assert outcome.report.counts["user"]["create"] == 1


def test_with_the_drift_check_hand_edits_are_repaired_by_delta_cycles_within_drift_check_hours(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter, clock: FakeClock
) -> None:
    run(engine)
    users, members = expected(tenant)
    victim = sorted(users)[0]
    client, store = identity_center.client, identity_center.id
    client.delete_user(IdentityStoreId=store, UserId=identity_center.users()[victim]["UserId"])
    group = sorted(members)[0]
    member = sorted(members[group])[0]
    group_id = identity_center.groups()[group]["GroupId"]
    user_id = identity_center.users()[member]["UserId"]
    membership = client.get_group_membership_id(IdentityStoreId=store, GroupId=group_id, MemberId={"UserId": user_id})
    client.delete_group_membership(IdentityStoreId=store, MembershipId=membership["MembershipId"])
    # delta cycles every ten minutes, never a full reconcile, for at most drift_check_hours
    for _ in range(24 * 6):
        clock.advance(600)
        assert run(engine).mode == "delta"
        if victim in identity_center.users() and member in identity_center.members(group):
            break
    assert victim in identity_center.users()
    assert identity_center.members(group) == members[group]
    clock.advance(600)
    run(engine)  # the people a re-created user manages point at its new id
    clock.advance(600)
    assert run(engine).report.writes == 0


def test_a_deleted_group_is_removed_with_its_memberships(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter
) -> None:
    run(engine)
    _, members = expected(tenant)
    name = sorted(members)[0]
    group_id = next(gid for gid, g in tenant.groups.items() if g["displayName"] == name)
    tenant.delete_group(group_id)
    outcome = run(engine)
    assert name not in identity_center.groups()
    assert outcome.report.counts["group"]["delete"] == 1
    assert outcome.report.counts["membership"]["delete"] == len(members[name])


def test_flattening_nested_groups_makes_their_members_members(
    make_settings: Any, tenant: Tenant, identity_center: IdentityCenter, clock: FakeClock
) -> None:
    from idsync.wiring import build_engine

    engine = build_engine(make_settings(scope={"flatten_nested_groups": True}), clock=clock)
    run(engine)
    assigned = [g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups]
    parent = next(g for g in assigned if any(m in tenant.groups for m in tenant.members[g]))
    nested_users = {
        tenant.users[u]["userPrincipalName"]
        for u in tenant.transitive_members(parent)
        if u in tenant.users and tenant.users[u].get("accountEnabled", True) and u not in tenant.expected_refusals
    }
    direct_users = {m for m in tenant.members[parent] if m in tenant.users}
    assert len(nested_users) > len(direct_users)
    assert identity_center.members(tenant.groups[parent]["displayName"]) == nested_users
