"""The sandbox tenant and the Graph emulator speak Graph's wire format (raw HTTP, no idsync code)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.graph_emulator import GraphEmulator
from sandbox.tenant import (
    CLIENT_ID,
    CLIENT_SECRET,
    IDSYNC_PERMISSIONS,
    SERVICE_PRINCIPAL_ID,
    TENANT_ID,
    Tenant,
    sample_tenant,
    scale_tenant,
)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"


class Wire:
    """Raw HTTP against the emulator, trusting its CA explicitly (the environment's bundle is ignored)."""

    def __init__(self, emu: GraphEmulator) -> None:
        self.emu = emu
        self.session = requests.Session()
        self.bearer = ""

    def sign_in(self, client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET, scope: str = GRAPH_SCOPE) -> Any:
        return self.session.post(
            f"{self.emu.authority_host}/{TENANT_ID}/oauth2/v2.0/token",
            data={"client_id": client_id, "client_secret": secret, "scope": scope, "grant_type": "client_credentials"},
            verify=self.emu.ca_bundle,
            timeout=10,
        )

    def get(self, path_or_url: str, params: dict[str, str] | None = None, **headers: str) -> Any:
        url = path_or_url if path_or_url.startswith("https://") else f"{self.emu.graph_url}{path_or_url}"
        if self.bearer and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.bearer}"
        return self.session.get(url, params=params, headers=headers, verify=self.emu.ca_bundle, timeout=10)

    def ok(self, path_or_url: str, params: dict[str, str] | None = None, **headers: str) -> dict[str, Any]:
        response = self.get(path_or_url, params, **headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def all_pages(self, path: str, params: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], int]:
        """(every item, number of pages) following @odata.nextLink."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        pages = 0
        while url:
            body = self.ok(url, params if pages == 0 else None)
            items.extend(body["value"])
            pages += 1
            url = body.get("@odata.nextLink")
        return items, pages

    def delta(self, url: str, params: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str, int]:
        """(every item, the deltaLink, pages) of one delta round."""
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        pages = 0
        while next_url:
            body = self.ok(next_url, params if pages == 0 else None)
            items.extend(body["value"])
            pages += 1
            assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
            if "@odata.deltaLink" in body:
                return items, body["@odata.deltaLink"], pages
            next_url = body["@odata.nextLink"]
        raise AssertionError("a delta round must end with a deltaLink")


@pytest.fixture
def tenant() -> Tenant:
    return sample_tenant()


@pytest.fixture
def emu(tenant: Tenant) -> Iterator[GraphEmulator]:
    with GraphEmulator(tenant, delta_page_size=50, delta_member_chunk=10) as emulator:
        yield emulator


@pytest.fixture
def wire(emu: GraphEmulator) -> Wire:
    client = Wire(emu)
    client.bearer = client.sign_in().json()["access_token"]
    return client


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"code", "message", "innerError"} <= set(error)
    assert {"date", "request-id", "client-request-id"} <= set(error["innerError"])
    return error


# ---------------------------------------------------------------------- the sample tenant


def test_sample_tenant_has_the_promised_shape(tenant: Tenant) -> None:
    # Given the sample tenant
    users, groups = tenant.users, tenant.groups
    # Then it holds a few hundred users, a few dozen groups, some nested, some disabled users
    assert len(users) == 300
    assert 35 <= len(groups) <= 50
    nested = [g for g, members in tenant.members.items() if any(m in groups for m in members)]
    assert len(nested) >= 4
    assert 3 <= sum(1 for u in users.values() if not u["accountEnabled"]) <= 10
    assert sum(1 for u in users if u in tenant.managers) > 250
    # and one user per broken AWS IAM Identity Center rule, each in scope of the enterprise app
    rules = [rule for _, rule in tenant.expected_refusals.values()]
    for rule in ("missing", "more than one phone number"):
        assert rule in rules
    forbidden = "".join(rule for rule in rules if rule.startswith("forbidden"))
    for char in ("\\t", "\\n", "\\r", '"', "<", ">", "|", ";", ":", "%"):
        assert char in forbidden
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    for user_id, (attribute, rule) in tenant.expected_refusals.items():
        in_assigned_group = any(g in assigned for g in tenant.member_of.get(user_id, ()))
        assert user_id in assigned or in_assigned_group
        value = users[user_id].get(attribute)
        if rule == "missing":
            assert value is None
        elif attribute == "businessPhones":
            assert len(value) == 2
            assert "mobilePhone" not in users[user_id]


def test_sample_tenant_is_deterministic() -> None:
    def shape(tenant: Tenant) -> Any:
        users = [{k: v for k, v in u.items() if k != "createdDateTime"} for u in tenant.users.values()]
        return users, tenant.members, tenant.managers, list(tenant.assignments[SERVICE_PRINCIPAL_ID])

    assert shape(sample_tenant()) == shape(sample_tenant())
    assert shape(sample_tenant(seed=8)) != shape(sample_tenant())


def test_scale_tenant_has_exactly_the_asked_sizes() -> None:
    tenant = scale_tenant(users=600, groups=40, memberships=3_000)
    user_links = sum(1 for members in tenant.members.values() for m in members if m in tenant.users)
    assert (len(tenant.users), len(tenant.groups), user_links) == (600, 40, 3_000)
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    assert set(tenant.groups) <= set(assigned)
    assert 0 < sum(1 for p in assigned if p in tenant.users) < 600
    assert not tenant.expected_refusals


# ---------------------------------------------------------------------- sign-in


def test_token_endpoint_issues_a_bearer_token_for_the_right_secret(wire: Wire) -> None:
    response = wire.sign_in()
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] > 300
    assert isinstance(body["access_token"], str)
    assert body["access_token"]


def test_token_endpoint_rejects_a_wrong_secret_as_entra_does(wire: Wire) -> None:
    response = wire.sign_in(secret="not-the-secret")
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == "invalid_client"
    assert body["error_codes"] == [7000215]
    assert body["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(body)


def test_token_endpoint_rejects_unknown_clients_and_scopes(wire: Wire) -> None:
    unknown = wire.sign_in(client_id="00000000-1111-2222-3333-444444444444")
    assert (unknown.status_code, unknown.json()["error"]) == (400, "unauthorized_client")
    assert unknown.json()["error_codes"] == [700016]
    bad_scope = wire.sign_in(scope="https://graph.microsoft.com/User.Read.All")
    assert (bad_scope.status_code, bad_scope.json()["error"]) == (400, "invalid_scope")


def test_openid_metadata_points_at_the_emulator(emu: GraphEmulator, wire: Wire) -> None:
    url = f"{emu.authority_host}/{TENANT_ID}/v2.0/.well-known/openid-configuration"
    body = wire.ok(url)
    assert body["token_endpoint"] == f"{emu.authority_host}/{TENANT_ID}/oauth2/v2.0/token"
    assert body["issuer"] == f"{emu.authority_host}/{TENANT_ID}/v2.0"
    missing = wire.get(f"{emu.authority_host}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert (missing.status_code, missing.json()["error"]) == (400, "invalid_tenant")


def test_graph_requires_a_bearer_token(wire: Wire) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer made-up"}):
        response = wire.get("/users", **headers)
        assert response.status_code == 401
        assert error_of(response)["code"] == "InvalidAuthenticationToken"


def test_a_client_without_a_permission_is_denied_those_resources_only(emu: GraphEmulator, wire: Wire) -> None:
    # Given a client granted everything idsync needs except the two that read group members
    emu.tenant.register_client(
        "c0ffee00-0000-4000-8000-000000000001",
        "s3cret",
        IDSYNC_PERMISSIONS - {"GroupMember.Read.All", "Group.Read.All"},
    )
    wire.bearer = wire.sign_in("c0ffee00-0000-4000-8000-000000000001", "s3cret").json()["access_token"]
    group_id = next(iter(emu.tenant.groups))
    # When it reads users and group members
    users = wire.get("/users", {"$top": "1"})
    members = wire.get(f"/groups/{group_id}/members")
    # Then users answer and members are refused with Graph's 403
    assert users.status_code == 200
    assert members.status_code == 403
    assert error_of(members)["code"] == "Authorization_RequestDenied"


def test_organization_needs_organization_read(emu: GraphEmulator, wire: Wire) -> None:
    assert wire.get("/organization").status_code == 403
    emu.tenant.set_permissions(CLIENT_ID, IDSYNC_PERMISSIONS | {"Organization.Read.All"})
    wire.bearer = wire.sign_in().json()["access_token"]
    org = wire.ok("/organization")["value"][0]
    assert org["id"] == TENANT_ID


# ---------------------------------------------------------------------- users


def test_users_page_with_skiptoken_and_keep_the_query(wire: Wire, tenant: Tenant) -> None:
    items, pages = wire.all_pages("/users", {"$select": "id,displayName,mobilePhone", "$top": "70"})
    assert pages == 5
    assert [u["id"] for u in items] == list(tenant.users)
    assert all(set(u) == {"id", "displayName", "mobilePhone"} for u in items)
    first = wire.ok("/users", {"$select": "id,displayName", "$top": "70"})
    assert "$skiptoken=" in first["@odata.nextLink"]
    assert "$select=id,displayName" in first["@odata.nextLink"]


def test_users_default_properties_and_nulls(wire: Wire, tenant: Tenant) -> None:
    user = wire.ok("/users", {"$top": "1"})["value"][0]
    assert set(user) == {
        "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
        "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id",
    }  # fmt: skip
    no_mobile = next(u for u in tenant.users.values() if "mobilePhone" not in u)
    shown = wire.ok(f"/users/{no_mobile['id']}", {"$select": "mobilePhone,businessPhones,employeeId"})
    assert shown["mobilePhone"] is None
    assert isinstance(shown["businessPhones"], list)


def test_select_and_top_are_validated(wire: Wire) -> None:
    unknown = wire.get("/users", {"$select": "id,favouriteColour"})
    assert unknown.status_code == 400
    assert "favouriteColour" in error_of(unknown)["message"]
    too_big = wire.get("/users", {"$top": "1000"})
    assert too_big.status_code == 400
    assert "between 1 and 999" in error_of(too_big)["message"]


def test_expand_manager_gives_the_manager_id(wire: Wire, tenant: Tenant) -> None:
    items, _ = wire.all_pages("/users", {"$select": "id", "$expand": "manager($select=id)", "$top": "999"})
    for user in items:
        expected = tenant.managers.get(user["id"])
        if expected is None:
            assert "manager" not in user
        else:
            assert user["manager"] == {"@odata.type": "#microsoft.graph.user", "id": expected}


def test_filters_by_upn_and_by_ids(wire: Wire, tenant: Tenant) -> None:
    some = list(tenant.users.values())[5:9]
    upn = some[0]["userPrincipalName"].upper()
    by_upn = wire.ok("/users", {"$filter": f"userPrincipalName eq '{upn}'", "$select": "id"})["value"]
    assert [u["id"] for u in by_upn] == [some[0]["id"]]
    quoted = ",".join(f"'{u['id']}'" for u in some)
    by_ids = wire.ok("/users", {"$filter": f"id in ({quoted})", "$select": "id"})["value"]
    assert sorted(u["id"] for u in by_ids) == sorted(u["id"] for u in some)
    sixteen = ",".join(f"'{u}'" for u in list(tenant.users)[:16])
    refused = wire.get("/users", {"$filter": f"id in ({sixteen})"})
    assert (refused.status_code, error_of(refused)["code"]) == (400, "Request_UnsupportedQuery")


def test_one_user_by_id_or_upn_and_404(wire: Wire, tenant: Tenant) -> None:
    user = next(iter(tenant.users.values()))
    assert wire.ok(f"/users/{user['id']}", {"$select": "id"})["id"] == user["id"]
    assert wire.ok(f"/users/{user['userPrincipalName']}", {"$select": "id"})["id"] == user["id"]
    missing = wire.get("/users/00000000-0000-4000-8000-000000000000")
    assert (missing.status_code, error_of(missing)["code"]) == (404, "Request_ResourceNotFound")


def test_count_needs_consistency_level(wire: Wire) -> None:
    assert wire.get("/users/$count").status_code == 400
    counted = wire.get("/users/$count", ConsistencyLevel="eventual")
    assert (counted.status_code, counted.text) == (200, "300")


# ---------------------------------------------------------------------- groups, members, assignments


def _group(tenant: Tenant, name: str) -> str:
    return next(g for g, obj in tenant.groups.items() if obj["displayName"] == name)


def test_groups_filter_by_display_name(wire: Wire, tenant: Tenant) -> None:
    found = wire.ok("/groups", {"$filter": "displayName eq 'AWS Developers'", "$select": "id,displayName"})
    assert found["value"] == [{"id": _group(tenant, "AWS Developers"), "displayName": "AWS Developers"}]


def test_direct_members_carry_their_type(wire: Wire, tenant: Tenant) -> None:
    group_id = _group(tenant, "AWS Developers")
    items, _ = wire.all_pages(f"/groups/{group_id}/members", {"$select": "id,displayName", "$top": "5"})
    assert [m["id"] for m in items] == list(tenant.members[group_id])
    types = {m["id"]: m["@odata.type"] for m in items}
    assert {t for m, t in types.items() if m in tenant.groups} == {"#microsoft.graph.group"}
    assert {t for m, t in types.items() if m in tenant.users} == {"#microsoft.graph.user"}
    assert all(set(m) == {"@odata.type", "id", "displayName"} for m in items)


def test_transitive_members_flatten_and_cast_keeps_users(wire: Wire, tenant: Tenant) -> None:
    group_id = _group(tenant, "AWS Developers")
    nested = [m for m in tenant.members[group_id] if m in tenant.groups]
    expected_users = {m for m in tenant.members[group_id] if m in tenant.users}
    for child in nested:
        expected_users |= {m for m in tenant.members[child] if m in tenant.users}
    flat, _ = wire.all_pages(f"/groups/{group_id}/transitiveMembers", {"$select": "id"})
    assert {m["id"] for m in flat} == expected_users | set(nested)
    users_only, _ = wire.all_pages(f"/groups/{group_id}/transitiveMembers/microsoft.graph.user", {"$select": "id"})
    assert {m["id"] for m in users_only} == expected_users
    assert all("@odata.type" not in m for m in users_only)


def test_app_role_assignments_name_users_and_groups(wire: Wire, tenant: Tenant) -> None:
    items, pages = wire.all_pages(f"/servicePrincipals/{SERVICE_PRINCIPAL_ID}/appRoleAssignedTo", {"$top": "10"})
    assert pages == 3
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    assert {a["principalId"] for a in items} == set(assigned)
    for item in items:
        kind = "User" if item["principalId"] in tenant.users else "Group"
        assert item["principalType"] == kind
        assert item["resourceId"] == SERVICE_PRINCIPAL_ID
        assert item["principalDisplayName"] == tenant.principal_name(item["principalId"])
        assert item["appRoleId"]
    app = wire.ok(f"/servicePrincipals/{SERVICE_PRINCIPAL_ID}", {"$select": "id,displayName"})
    assert app["displayName"] == "AWS IAM Identity Center"


# ---------------------------------------------------------------------- delta


def test_users_delta_pages_then_reports_only_what_changed(wire: Wire, tenant: Tenant) -> None:
    # Given a complete initial round
    items, link, pages = wire.delta("/users/delta", {"$select": "displayName,accountEnabled,jobTitle"})
    assert pages == 6
    assert len(items) == 300
    assert "$deltatoken=" in link
    ids = list(tenant.users)
    # When an administrator changes things
    tenant.update_user(ids[1], jobTitle="Chief Cat Herder")
    tenant.disable_user(ids[2])
    tenant.soft_delete_user(ids[3])
    tenant.hard_delete_user(ids[4])
    new_id = tenant.add_user(userPrincipalName="new.joiner@contoso.example", displayName="New Joiner")
    # Then the next round reports exactly those users
    changed, next_link, _ = wire.delta(link)
    by_id = {u["id"]: u for u in changed}
    assert set(by_id) == {ids[1], ids[2], ids[3], ids[4], new_id}
    assert by_id[ids[1]]["jobTitle"] == "Chief Cat Herder"
    assert by_id[ids[2]]["accountEnabled"] is False
    assert by_id[ids[3]]["@removed"] == {"reason": "changed"}
    assert by_id[ids[4]]["@removed"] == {"reason": "deleted"}
    assert by_id[new_id]["displayName"] == "New Joiner"
    # and a restore shows the user again, without @removed
    tenant.restore_user(ids[3])
    restored, _, _ = wire.delta(next_link)
    assert [u["id"] for u in restored] == [ids[3]]
    assert "@removed" not in restored[0]


def test_delta_links_and_pages_can_be_replayed(wire: Wire, tenant: Tenant) -> None:
    first = wire.ok("/users/delta", {"$select": "displayName"})
    again = wire.ok(first["@odata.nextLink"])
    assert again["value"] == wire.ok(first["@odata.nextLink"])["value"]
    _, link, _ = wire.delta("/users/delta", {"$select": "displayName"})
    tenant.update_user(next(iter(tenant.users)), displayName="Renamed")
    once, _, _ = wire.delta(link)
    twice, _, _ = wire.delta(link)
    assert once == twice
    assert len(once) == 1


def test_manager_changes_arrive_as_manager_delta(wire: Wire, tenant: Tenant) -> None:
    _, link, _ = wire.delta("/users/delta", {"$select": "displayName,manager"})
    user_id, manager_id = next(iter(tenant.managers.items()))
    tenant.set_manager(user_id, None)
    changed, _, _ = wire.delta(link)
    assert changed[0]["manager@delta"] == [
        {"@odata.type": "#microsoft.graph.user", "id": manager_id, "@removed": {"reason": "deleted"}}
    ]


def test_groups_delta_reports_members_and_removals(wire: Wire, tenant: Tenant) -> None:
    # Given the initial round with members
    items, link, _ = wire.delta("/groups/delta", {"$select": "displayName,description,members"})
    members: dict[str, set[str]] = {}
    for item in items:
        members.setdefault(item["id"], set()).update(m["id"] for m in item["members@delta"])
        assert all(
            m["@odata.type"] in ("#microsoft.graph.user", "#microsoft.graph.group") for m in item["members@delta"]
        )
    assert members == {g: set(m) for g, m in tenant.members.items()}
    # a group with more members than a chunk comes back in several items
    big = max(tenant.members, key=lambda g: len(tenant.members[g]))
    assert sum(1 for i in items if i["id"] == big) == -(-len(tenant.members[big]) // 10)
    # When members change, a group is renamed and another deleted
    group_id, other, gone = _group(tenant, "AWS Billing"), _group(tenant, "Book Club"), _group(tenant, "Project Orion")
    leaving = next(iter(tenant.members[group_id]))
    joining = next(u for u in tenant.users if u not in tenant.members[group_id])
    tenant.remove_member(group_id, leaving)
    tenant.add_member(group_id, joining)
    tenant.rename_group(other, "Reading Circle")
    tenant.delete_group(gone)
    # Then the next round says exactly that
    changed, _, _ = wire.delta(link)
    by_id: dict[str, dict[str, Any]] = {}
    for item in changed:
        by_id.setdefault(item["id"], {}).update(item)
    assert set(by_id) == {group_id, other, gone}
    assert sorted(by_id[group_id]["members@delta"], key=lambda m: m["id"]) == sorted(
        [
            {"@odata.type": "#microsoft.graph.user", "id": leaving, "@removed": {"reason": "deleted"}},
            {"@odata.type": "#microsoft.graph.user", "id": joining},
        ],
        key=lambda m: m["id"],
    )
    assert by_id[other]["displayName"] == "Reading Circle"
    assert by_id[gone] == {"id": gone, "@removed": {"reason": "deleted"}}


def test_deltatoken_latest_starts_from_now(wire: Wire, tenant: Tenant) -> None:
    body = wire.ok("/groups/delta", {"$deltatoken": "latest", "$select": "displayName"})
    assert body["value"] == []
    assert "@odata.deltaLink" in body
    tenant.rename_group(next(iter(tenant.groups)), "Only Change")
    changed, _, _ = wire.delta(body["@odata.deltaLink"])
    assert [g["displayName"] for g in changed] == ["Only Change"]


def test_unknown_and_expired_delta_tokens_answer_410(emu: GraphEmulator, wire: Wire) -> None:
    unknown = wire.get("/users/delta", {"$deltatoken": "not-a-token"})
    assert (unknown.status_code, error_of(unknown)["code"]) == (410, "syncStateNotFound")
    _, link, _ = wire.delta("/users/delta", {"$select": "displayName"})
    emu.expire_delta_tokens()
    expired = wire.get(link)
    assert (expired.status_code, error_of(expired)["code"]) == (410, "resyncRequired")


# ---------------------------------------------------------------------- faults, counters, admin


def test_injected_429_carries_retry_after_then_clears(emu: GraphEmulator, wire: Wire) -> None:
    emu.inject(429, count=1, path_prefix="/v1.0/users", retry_after="0.2")
    assert wire.get("/groups", {"$top": "1"}).status_code == 200  # another path is not affected
    throttled = wire.get("/users", {"$top": "1"})
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "0.2"
    assert error_of(throttled)["code"] == "TooManyRequests"
    assert wire.get("/users", {"$top": "1"}).status_code == 200
    assert emu.requests["/v1.0/users"] == 2
    emu.inject(503, count=1, retry_after=None)
    unavailable = wire.get("/users", {"$top": "1"})
    assert unavailable.status_code == 503
    assert "Retry-After" not in unavailable.headers


def test_admin_api_mutates_injects_and_reports(emu: GraphEmulator, wire: Wire) -> None:
    def admin(path: str, body: dict[str, Any]) -> Any:
        return requests.post(
            f"{emu.authority_host}/_emulator/{path}", data=json.dumps(body), verify=emu.ca_bundle, timeout=10
        )

    created = admin("mutate", {"op": "add_user", "args": {"userPrincipalName": "via.admin@contoso.example"}})
    assert created.status_code == 200
    user_id = created.json()["result"]
    assert (
        wire.ok(f"/users/{user_id}", {"$select": "userPrincipalName"})["userPrincipalName"]
        == "via.admin@contoso.example"
    )
    refused = admin("mutate", {"op": "drop_tenant", "args": {}})
    assert refused.status_code == 400
    assert admin("faults", {"status": 504, "count": 1, "path_prefix": "/v1.0/groups"}).status_code == 200
    assert wire.get("/groups").status_code == 504
    stats = requests.get(f"{emu.authority_host}/_emulator/stats", verify=emu.ca_bundle, timeout=10).json()
    assert stats["requests"]["/v1.0/groups"] == 1
    assert admin("reset", {"kind": "scale", "users": 50, "groups": 5, "memberships": 100}).status_code == 200
    assert emu.tenant.users
    assert len(emu.tenant.users) == 50


def test_injected_500_is_graphs_general_exception(emu: GraphEmulator, wire: Wire) -> None:
    emu.inject(500, count=1, path_prefix="/v1.0/groups", retry_after=None)
    failed = wire.get("/groups", {"$top": "1"})
    assert failed.status_code == 500
    assert error_of(failed)["code"] == "generalException"
    assert wire.get("/groups", {"$top": "1"}).status_code == 200


def test_devices_and_service_principals_are_group_members(emu: GraphEmulator, wire: Wire, tenant: Tenant) -> None:
    # Given a group holding a user, a device and a service principal
    group = tenant.add_group("Kiosks")
    user = next(iter(tenant.users))
    device = tenant.add_device("kiosk-01")
    principal = next(iter(tenant.service_principals))
    for member in (user, device, principal):
        tenant.add_member(group, member)
    # Then members lists each with its own type, the user cast lists the user only
    listed = wire.ok(f"/groups/{group}/members")["value"]
    assert [(m["id"], m["@odata.type"]) for m in listed] == [
        (user, "#microsoft.graph.user"),
        (device, "#microsoft.graph.device"),
        (principal, "#microsoft.graph.servicePrincipal"),
    ]
    assert [m["id"] for m in wire.ok(f"/groups/{group}/members/microsoft.graph.user")["value"]] == [user]
    # and a full group delta carries the three with their types
    items, _, _ = wire.delta("/groups/delta", {"$select": "displayName,members"})
    entries = [e for i in items if i["id"] == group for e in i.get("members@delta", [])]
    assert {(e["id"], e["@odata.type"]) for e in entries} == {
        (user, "#microsoft.graph.user"),
        (device, "#microsoft.graph.device"),
        (principal, "#microsoft.graph.servicePrincipal"),
    }


def test_a_soft_deleted_microsoft_365_group_is_removed_as_changed_and_restores(
    emu: GraphEmulator, wire: Wire, tenant: Tenant
) -> None:
    group = tenant.add_group("Project Atlas", groupTypes=["Unified"])
    user = next(iter(tenant.users))
    tenant.add_member(group, user)
    _, link, _ = wire.delta("/groups/delta", {"$select": "displayName,members"})
    tenant.soft_delete_group(group)
    items, link, _ = wire.delta(link)
    assert {"id": group, "@removed": {"reason": "changed"}} in items
    tenant.restore_group(group)
    items, _, _ = wire.delta(link)
    restored = [i for i in items if i["id"] == group]
    assert restored
    assert restored[0].get("@removed") is None
    assert user in {e["id"] for i in restored for e in i.get("members@delta", [])}
