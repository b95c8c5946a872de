"""On-demand provisioning: one user or one group now, with the same rules, and nothing else touched."""

from __future__ import annotations

import pytest

from idsync.services.cycle import CycleOptions
from idsync.wiring import Engine
from sandbox.tenant import SERVICE_PRINCIPAL_ID, Tenant
from tests.e2e.conftest import IdentityCenter


def assigned_groups(tenant: Tenant) -> list[str]:
    return sorted(g for g in tenant.assignments[SERVICE_PRINCIPAL_ID] if g in tenant.groups)


def test_provision_a_new_hire_now_without_applying_other_pending_changes(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter
) -> None:
    engine.cycle.run(CycleOptions())
    group = assigned_groups(tenant)[0]
    group_name = tenant.groups[group]["displayName"]
    someone = sorted(identity_center.members(group_name))[0]
    someone_id = next(uid for uid, u in tenant.users.items() if u["userPrincipalName"] == someone)
    # Given a new hire in an assigned group, and an unrelated pending change
    hire = tenant.add_user(
        userPrincipalName="asha.verma@contoso.example",
        displayName="Asha Verma",
        givenName="Asha",
        surname="Verma",
        mail="asha.verma@contoso.example",
        accountEnabled=True,
    )
    tenant.add_member(group, hire)
    tenant.update_user(someone_id, jobTitle="Pending Change")
    # When the new hire is provisioned on demand
    outcome = engine.cycle.provision("user", "Asha.Verma@contoso.example")
    # Then the user and the membership exist now, and the unrelated change waits for the cycle
    assert outcome.report is not None
    assert outcome.report.counts["user"]["create"] == 1
    assert "asha.verma@contoso.example" in identity_center.members(group_name)
    assert identity_center.describe(someone).get("Title") != "Pending Change"
    # and the next cycle applies the rest without redoing the user
    report = engine.cycle.run(CycleOptions()).report
    assert report is not None
    assert report.counts.get("user", {}).get("create", 0) == 0
    assert identity_center.describe(someone).get("Title") == "Pending Change"


def test_provision_a_group_and_its_members_before_any_cycle(
    engine: Engine, tenant: Tenant, identity_center: IdentityCenter
) -> None:
    group = assigned_groups(tenant)[1]
    name = tenant.groups[group]["displayName"]
    outcome = engine.cycle.provision("group", name)
    assert outcome.report is not None
    assert set(identity_center.groups()) == {name}
    expected = {
        tenant.users[m]["userPrincipalName"]
        for m in tenant.members[group]
        if m in tenant.users and tenant.users[m].get("accountEnabled", True) and m not in tenant.expected_refusals
    }
    assert identity_center.members(name) == expected
    assert set(identity_center.users()) == expected


def test_out_of_scope_and_unknown_objects_are_refused_with_the_reason(engine: Engine, tenant: Tenant) -> None:
    outsider = tenant.add_user(
        userPrincipalName="not.assigned@contoso.example",
        displayName="Not Assigned",
        givenName="Not",
        surname="Assigned",
        accountEnabled=True,
    )
    outcome = engine.cycle.provision("user", outsider)
    assert outcome.report is None
    assert "not in scope" in (outcome.skipped or "")
    with pytest.raises(LookupError, match=r"no user 'nobody@contoso\.example'"):
        engine.cycle.provision("user", "nobody@contoso.example")
