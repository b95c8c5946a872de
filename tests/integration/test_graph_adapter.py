"""The Graph adapter against the Graph emulator over HTTPS: real msal, real requests/urllib3 retries."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from idsync.adapters.graph import GraphClient, GraphDirectory, GraphRequestError, GraphRetry, resource_key
from idsync.config import GraphSettings, ScopeSettings
from idsync.errors import ConfigError, DeltaExpired, DirectoryAuthError, DirectoryError
from idsync.mirror import MemberChange, Mirror
from idsync.ports import CallCounter, FullRead
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

USER_PROPERTIES = frozenset({"userPrincipalName", "displayName", "givenName", "surname", "accountEnabled", "jobTitle"})
GROUP_PROPERTIES = frozenset({"displayName", "description"})


@pytest.fixture
def tenant() -> Tenant:
    return sample_tenant()


@pytest.fixture
def emu(tenant: Tenant) -> Iterator[GraphEmulator]:
    with GraphEmulator(tenant, delta_page_size=40, delta_member_chunk=25) as emulator:
        yield emulator


def settings(emu: GraphEmulator, **overrides: Any) -> GraphSettings:
    return GraphSettings(**(emu.graph_config() | {"max_retries": 3} | overrides))


@pytest.fixture
def counter() -> CallCounter:
    return CallCounter()


@pytest.fixture
def client(emu: GraphEmulator, counter: CallCounter) -> GraphClient:
    return GraphClient(settings(emu), CLIENT_SECRET, counter)


def directory(client: GraphClient, mode: str = "assigned", flatten: bool = False) -> GraphDirectory:
    scope = ScopeSettings(mode=mode, service_principal_id=SERVICE_PRINCIPAL_ID, flatten_nested_groups=flatten)
    return GraphDirectory(client, scope, USER_PROPERTIES, GROUP_PROPERTIES, expand_manager=True)


def token_requests(emu: GraphEmulator) -> int:
    return emu.count(f"/{TENANT_ID}/oauth2/v2.0/token")


def user_members(tenant: Tenant, group_id: str, transitive: bool) -> set[str]:
    """The tenant's own answer, computed independently of the emulator and the adapter."""
    found: set[str] = set()
    seen = {group_id}
    stack = [group_id]
    while stack:
        for member in tenant.members[stack.pop()]:
            if member in tenant.users:
                found.add(member)
            elif transitive and member not in seen:
                seen.add(member)
                stack.append(member)
    return found


def expected_assigned(tenant: Tenant, transitive: bool) -> tuple[set[str], set[str], dict[str, set[str]]]:
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    groups = {p for p in assigned if p in tenant.groups}
    members = {g: user_members(tenant, g, transitive) for g in groups}
    users = {p for p in assigned if p in tenant.users}.union(*members.values())
    return users, groups, members


# ---------------------------------------------------------------------- the client


def test_msal_signs_in_over_http_and_caches_the_token(emu: GraphEmulator, client: GraphClient) -> None:
    first, second = client.token(), client.token()
    assert first == second
    assert token_requests(emu) == 1
    assert client.counter.calls["token"] == 1
    assert client.counter.calls["openid-configuration"] == 1


def test_a_token_near_expiry_is_renewed(tenant: Tenant, counter: CallCounter) -> None:
    # Given tokens that live four minutes (msal renews those within five minutes of expiry)
    with GraphEmulator(tenant, token_lifetime=240) as emu:
        client = GraphClient(settings(emu), CLIENT_SECRET, counter)
        # When three requests are made
        for _ in range(3):
            client.get("/users", {"$top": "1"})
        # Then each one signed in afresh
        assert token_requests(emu) == 3


def test_a_wrong_secret_is_an_auth_error_with_entras_reason(emu: GraphEmulator) -> None:
    client = GraphClient(settings(emu), "not-the-secret")
    with pytest.raises(DirectoryAuthError, match=r"invalid_client: AADSTS7000215: Invalid client secret"):
        client.get("/users")


def _certificate(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """(a PEM file holding key and certificate, the certificate PEM, its SHA-1 thumbprint in hex)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path = tmp_path / f"{name}.pem"
    path.write_text(key_pem + cert_pem)
    return path, cert_pem, cert.fingerprint(hashes.SHA1()).hex().upper()


def test_certificate_credentials_sign_in(emu: GraphEmulator, tmp_path: Path) -> None:
    # Given an app registration trusting one certificate
    path, cert_pem, thumbprint = _certificate(tmp_path, "idsync")
    emu.tenant.add_certificate(CLIENT_ID, thumbprint, cert_pem)
    # When idsync signs in with its key, by thumbprint or by the certificate in the file
    by_thumbprint = GraphClient(settings(emu, certificate_path=str(path), certificate_thumbprint=thumbprint))
    by_certificate = GraphClient(settings(emu, certificate_path=str(path)))
    # Then both are served
    assert by_thumbprint.get("/users", {"$top": "1"})["value"]
    assert by_certificate.get("/users", {"$top": "1"})["value"]
    # and a key the app does not trust is refused
    other, _, other_thumbprint = _certificate(tmp_path, "stranger")
    stranger = GraphClient(settings(emu, certificate_path=str(other), certificate_thumbprint=other_thumbprint))
    with pytest.raises(DirectoryAuthError, match="AADSTS700027"):
        stranger.token()


def test_pages_follow_next_links(emu: GraphEmulator, client: GraphClient, tenant: Tenant) -> None:
    users = list(client.pages("/users", {"$select": "id", "$top": "7"}))
    assert [u["id"] for u in users] == list(tenant.users)
    assert client.counter.calls["users"] == math.ceil(300 / 7)
    assert emu.requests["/v1.0/users"] == math.ceil(300 / 7)


def test_429_with_retry_after_is_waited_out_and_counted(emu: GraphEmulator, client: GraphClient) -> None:
    # Given Graph throttles the next two requests for users, asking for 0.1 s
    client.token()
    emu.inject(429, count=2, path_prefix="/v1.0/users", retry_after="0.1")
    # When idsync reads users
    body = client.get("/users", {"$select": "id", "$top": "3"})
    # Then the read succeeds after two retries, and every attempt is counted
    assert len(body["value"]) == 3
    assert emu.requests["/v1.0/users"] == 3
    assert client.counter.calls["users"] == 3


def test_retry_after_may_be_fractional_or_a_date() -> None:
    retry = GraphRetry(total=1)
    assert retry.parse_retry_after("2.128") == pytest.approx(2.128)
    assert retry.parse_retry_after("3") == 3
    assert retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # a date in the past: no wait


def test_500_503_and_504_are_retried(emu: GraphEmulator, client: GraphClient) -> None:
    client.token()
    for status in (500, 503, 504):
        emu.inject(status, count=1, path_prefix="/v1.0/groups", retry_after=None)
        assert client.get("/groups", {"$top": "1"})["value"]
    assert emu.requests["/v1.0/groups"] == 6


def test_throttling_beyond_the_retry_budget_fails_clearly(emu: GraphEmulator) -> None:
    client = GraphClient(settings(emu, max_retries=1), CLIENT_SECRET)
    client.token()
    emu.inject(429, count=5, path_prefix="/v1.0/users", retry_after="0.05")
    with pytest.raises(GraphRequestError, match="still throttled after 1 retries") as caught:
        client.get("/users")
    assert (caught.value.status, caught.value.code) == (429, "TooManyRequests")
    assert emu.requests["/v1.0/users"] == 2


def test_a_revoked_token_is_renewed_once(emu: GraphEmulator, client: GraphClient) -> None:
    client.get("/users", {"$top": "1"})
    emu.revoke_access_tokens()
    assert client.get("/users", {"$top": "1"})["value"]
    assert token_requests(emu) == 2


def test_graph_errors_are_mapped(emu: GraphEmulator, client: GraphClient, tenant: Tenant) -> None:
    with pytest.raises(GraphRequestError, match="HTTP 404 Request_ResourceNotFound") as missing:
        client.get("/groups/00000000-0000-4000-8000-000000000000")
    assert missing.value.status == 404
    tenant.set_permissions(CLIENT_ID, IDSYNC_PERMISSIONS - {"GroupMember.Read.All", "Group.Read.All"})
    denied = GraphClient(settings(emu), CLIENT_SECRET)
    group_id = next(iter(tenant.groups))
    with pytest.raises(DirectoryAuthError, match=r"403 Authorization_RequestDenied.*permission GroupMember.Read.All"):
        denied.get(f"/groups/{group_id}/members")


def test_links_to_other_hosts_are_refused(client: GraphClient) -> None:
    with pytest.raises(DirectoryError, match="refusing to follow a link outside"):
        client.get("https://example.com/v1.0/users?$skiptoken=x")


def test_resource_keys_are_short_and_id_free() -> None:
    group = "https://graph.microsoft.com/v1.0/groups/133e6153-2962-49c8-a4a9-15d02ad64ce9"
    assert resource_key(f"{group}/members/microsoft.graph.user?$top=999") == "groups.members.user"
    assert resource_key("https://graph.microsoft.com/v1.0/users/a.b@contoso.example") == "users"
    assert resource_key("https://graph.microsoft.com/v1.0/users/delta?$deltatoken=x") == "users.delta"
    assert resource_key("https://login.microsoftonline.com/t/oauth2/v2.0/token") == "token"


# ---------------------------------------------------------------------- snapshots


def test_assigned_scope_gives_exactly_the_assigned_view(client: GraphClient, tenant: Tenant) -> None:
    # When the assigned scope is read with direct members
    snapshot = directory(client).snapshot()
    # Then it holds exactly the assigned groups, their direct user members, and every user in scope
    users, groups, members = expected_assigned(tenant, transitive=False)
    assert {u["id"] for u in snapshot.users} == users
    assert {g["id"] for g in snapshot.groups} == groups
    assert {g: set(m) for g, m in snapshot.members.items()} == members
    # with only the properties asked for, and the manager reduced to its id
    for user in snapshot.users:
        assert set(user) - {"manager"} == USER_PROPERTIES | {"id"}
        if user["id"] in tenant.managers:
            assert user["manager"] == {"id": tenant.managers[user["id"]]}
    assert all(set(g) == GROUP_PROPERTIES | {"id"} for g in snapshot.groups)
    # and the users who break a rule are in it, for the mapping to refuse them
    assert set(tenant.expected_refusals) <= users


def test_flattening_adds_the_members_of_nested_groups(client: GraphClient, tenant: Tenant) -> None:
    snapshot = directory(client, flatten=True).snapshot()
    users, groups, members = expected_assigned(tenant, transitive=True)
    direct_users, _, _ = expected_assigned(tenant, transitive=False)
    assert users - direct_users  # the sample nests groups with users of their own
    assert {u["id"] for u in snapshot.users} == users
    assert {g: set(m) for g, m in snapshot.members.items()} == members
    assert client.counter.calls["groups.transitiveMembers.user"] == len(groups)


def test_all_scope_reads_everything_with_direct_user_members(
    emu: GraphEmulator, client: GraphClient, tenant: Tenant
) -> None:
    reader = directory(client, mode="all")
    snapshot = reader.snapshot()
    assert [u["id"] for u in snapshot.users] == list(tenant.users)
    assert {g["id"] for g in snapshot.groups} == set(tenant.groups)
    assert {g: set(m) for g, m in snapshot.members.items()} == {
        g: user_members(tenant, g, transitive=False) for g in tenant.groups
    }
    # groups and their members came through the delta function, which left a link to continue from
    assert emu.requests["/v1.0/groups/delta"] == math.ceil(
        sum(max(1, math.ceil(len(m) / 25)) for m in tenant.members.values()) / 40
    )
    assert "$deltatoken=" in reader.delta_links["groups"]


def test_a_small_scope_reads_users_by_id(emu: GraphEmulator, client: GraphClient, tenant: Tenant) -> None:
    # Given only a dozen users assigned directly
    assigned = list(tenant.assignments[SERVICE_PRINCIPAL_ID])
    for principal in assigned:
        if principal in tenant.groups:
            tenant.unassign(principal)
    for principal in [p for p in assigned if p in tenant.users][12:]:
        tenant.unassign(principal)
    # When the scope is read
    snapshot = directory(client).snapshot()
    # Then one filtered request fetched them, rather than a listing of the whole directory
    assert len(snapshot.users) == 12
    assert client.counter.calls["users"] == 1
    assert "users.count" not in client.counter.calls
    assert sum("$filter=id in (" in line for line in emu.log) == 1


def test_many_assigned_groups_are_read_through_group_delta(counter: CallCounter) -> None:
    # Given a tenant where every one of 60 groups is assigned
    tenant = scale_tenant(users=400, groups=60, memberships=1_500)
    with GraphEmulator(tenant) as emu:
        client = GraphClient(settings(emu), CLIENT_SECRET, counter)
        # When the assigned scope is read
        snapshot = directory(client).snapshot()
    # Then it is complete, read in a handful of delta pages instead of one members read per group
    users, _, members = expected_assigned(tenant, transitive=False)
    assert {u["id"] for u in snapshot.users} == users
    assert {g: set(m) for g, m in snapshot.members.items()} == members
    assert "groups.members.user" not in counter.calls
    assert counter.calls["groups.delta"] <= 3


# ---------------------------------------------------------------------- delta


def test_a_full_read_through_delta_returns_everything_and_links(client: GraphClient, tenant: Tenant) -> None:
    changes = directory(client).read_changes(None)
    assert changes.full
    assert {u["id"] for u in changes.users} == set(tenant.users)
    assert {g["id"] for g in changes.groups} == set(tenant.groups)
    assert not changes.removed_users
    assert not changes.removed_groups
    expected = {
        MemberChange(g, m, "group" if m in tenant.groups else "user", True)
        for g, members in tenant.members.items()
        for m in members
    }
    assert set(changes.member_changes) == expected
    assert set(changes.links) == {"users", "groups"}
    managed = next(u for u in changes.users if u["id"] in tenant.managers)
    assert managed["manager"] == {"id": tenant.managers[managed["id"]]}


def test_delta_reports_each_kind_of_change(client: GraphClient, tenant: Tenant) -> None:
    # Given a full read
    reader = directory(client)
    links = reader.read_changes(None).links
    ids = [u for u in tenant.users if u in tenant.managers and u not in tenant.managers.values()]
    soft, hard, restored, disabled, renamed, moved = ids[10:16]
    tenant.soft_delete_user(restored)
    links = reader.read_changes(links).links
    # When an administrator makes one change of each kind
    new_user = tenant.add_user(userPrincipalName="ada.lovelace@contoso.example", displayName="Ada Lovelace")
    tenant.update_user(renamed, displayName="Grace Hopper")
    tenant.disable_user(disabled)
    tenant.soft_delete_user(soft)
    tenant.hard_delete_user(hard)
    tenant.restore_user(restored)
    tenant.set_manager(moved, None)
    group = next(g for g, obj in tenant.groups.items() if obj["displayName"] == "AWS Billing")
    leaving = next(m for m in tenant.members[group] if m in tenant.users and m not in (soft, hard))
    tenant.remove_member(group, leaving)
    tenant.add_member(group, new_user)
    rename = next(g for g, obj in tenant.groups.items() if obj["displayName"] == "Book Club")
    tenant.rename_group(rename, "Reading Circle")
    gone = next(g for g, obj in tenant.groups.items() if obj["displayName"] == "Project Orion")
    tenant.delete_group(gone)
    changes = reader.read_changes(links)
    # Then the delta says exactly what happened
    assert not changes.full
    users = {u["id"]: u for u in changes.users}
    assert set(users) == {new_user, renamed, disabled, restored, moved}
    assert users[new_user]["displayName"] == "Ada Lovelace"
    assert users[renamed]["displayName"] == "Grace Hopper"
    assert users[disabled]["accountEnabled"] is False
    assert users[moved]["manager"] is None
    assert changes.removed_users == {soft: "changed", hard: "deleted"}
    assert {g["id"]: g["displayName"] for g in changes.groups if g["id"] == rename} == {rename: "Reading Circle"}
    assert changes.removed_groups == {gone: "deleted"}
    assert MemberChange(group, leaving, "user", False) in changes.member_changes
    assert MemberChange(group, new_user, "user", True) in changes.member_changes
    left = tenant.deleted_users[soft].groups
    assert left
    assert all(MemberChange(g, soft, "user", False) in changes.member_changes for g in left)
    # and replaying the same links gives the same changes
    assert replace(reader.read_changes(links), links={}) == replace(changes, links={})


def test_folding_deltas_converges_with_a_fresh_full_read(
    emu: GraphEmulator, client: GraphClient, tenant: Tenant
) -> None:
    # Given a mirror built from a full read, then kept up to date with a delta
    reader = directory(client)
    full = reader.read_changes(None)
    mirror = Mirror()
    mirror.merge_users(full.users, full.removed_users)
    mirror.merge_groups(full.groups, full.removed_groups, full.member_changes, full=True)
    ids = list(tenant.users)
    tenant.update_user(ids[20], jobTitle=None)
    tenant.soft_delete_user(ids[21])
    tenant.hard_delete_user(ids[22])
    tenant.add_member(next(iter(tenant.groups)), ids[23])
    tenant.delete_group(list(tenant.groups)[5])
    delta = reader.read_changes(full.links)
    mirror.merge_users(delta.users, delta.removed_users)
    mirror.merge_groups(delta.groups, delta.removed_groups, delta.member_changes)
    # When the same directory is read from scratch
    fresh = Mirror()
    again = directory(GraphClient(settings(emu), CLIENT_SECRET)).read_changes(None)
    fresh.merge_users(again.users, again.removed_users)
    fresh.merge_groups(again.groups, again.removed_groups, again.member_changes, full=True)

    # Then both give the same view (a soft-deleted user is kept by the mirror, marked)
    def live(view: Mirror) -> dict[str, dict[str, Any]]:
        return {
            u: {k: v for k, v in obj.items() if v is not None}
            for u, obj in view.users.items()
            if not obj.get("IsSoftDeleted")
        }

    assert live(mirror) == live(fresh)
    assert mirror.groups == fresh.groups
    assert {g: m for g, m in mirror.members.items() if m} == {g: m for g, m in fresh.members.items() if m}


def test_expired_or_unknown_links_raise_delta_expired(emu: GraphEmulator, client: GraphClient) -> None:
    reader = directory(client)
    links = reader.read_changes(None).links
    emu.expire_delta_tokens()
    with pytest.raises(DeltaExpired, match="410 resyncRequired"):
        reader.read_changes(links)
    forged = {"users": f"{emu.graph_url}/users/delta?$deltatoken=forged", "groups": links["groups"]}
    with pytest.raises(DeltaExpired, match="syncStateNotFound"):
        reader.read_changes(forged)
    with pytest.raises(DeltaExpired, match="both users and groups"):
        reader.read_changes({"users": links["users"]})


def test_a_full_read_stopped_between_pages_resumes_in_another_invocation_from_graphs_own_links(
    emu: GraphEmulator, tenant: Tenant
) -> None:
    # Given a full read stopped after every page, each part carried on by a new client (a new invocation)
    expected = directory(GraphClient(settings(emu), CLIENT_SECRET)).read_changes(None)
    emu.reset_counters()
    progress = None
    invocations = 0
    while progress is None or not progress.done:
        invocations += 1
        counter = CallCounter()
        reader = directory(GraphClient(settings(emu), CLIENT_SECRET, counter))
        stored = None if progress is None else FullRead.from_bytes(progress.to_bytes())
        progress = reader.read_full(stored, lambda: True)
        # one Graph request per invocation (besides signing in)
        assert sum(n for key, n in counter.calls.items() if key not in ("token", "openid-configuration")) == 1
        if not progress.done:
            links = [progress.users.next_link, progress.groups.next_link]
            # the links kept are Graph's own, to the same host
            assert any(link and link.startswith(emu.graph_url) for link in links) or progress.users.done
    # Then the resumed read is the same directory, with delta links, as one uninterrupted read
    changes = progress.changes()
    assert {u["id"]: u for u in changes.users} == {u["id"]: u for u in expected.users}
    assert {g["id"]: g for g in changes.groups} == {g["id"]: g for g in expected.groups}
    assert sorted(changes.member_changes, key=str) == sorted(expected.member_changes, key=str)
    assert changes.deleted_items == expected.deleted_items
    user_pages = math.ceil(len(tenant.users) / 40)
    assert invocations > user_pages + 1
    # and its delta links work: nothing changed since
    assert directory(GraphClient(settings(emu), CLIENT_SECRET)).read_changes(changes.links).users == []


def test_an_unfinished_read_refuses_to_be_the_directory_and_an_expired_next_link_is_410(
    emu: GraphEmulator, client: GraphClient
) -> None:
    reader = directory(client)
    progress = reader.read_full(None, lambda: True)
    assert not progress.done
    with pytest.raises(ValueError, match="unfinished"):
        progress.changes()
    # When Graph forgets its links before the read is carried on
    emu.expire_delta_tokens()
    with pytest.raises(DeltaExpired, match="410 resyncRequired"):
        reader.read_full(progress, lambda: False)


def test_read_assignments_splits_users_and_groups(client: GraphClient, tenant: Tenant) -> None:
    users, groups = directory(client).read_assignments()
    assigned = tenant.assignments[SERVICE_PRINCIPAL_ID]
    assert users == {p for p in assigned if p in tenant.users}
    assert groups == {p for p in assigned if p in tenant.groups}


# ---------------------------------------------------------------------- connection test


def test_check_passes_with_every_permission(client: GraphClient) -> None:
    checks = directory(client).check()
    assert [c.name for c in checks] == [
        "token",
        "permissions granted",
        "users readable",
        "group members readable",
        "app assignments readable",
    ]
    assert all(c.ok for c in checks), checks
    assert checks[1].detail == "User.Read.All, GroupMember.Read.All, Application.Read.All"


@pytest.mark.parametrize(
    ("missing", "failing"),
    [
        ({"GroupMember.Read.All", "Group.Read.All"}, "group members readable"),
        ({"Application.Read.All"}, "app assignments readable"),
    ],
)
def test_check_names_the_missing_permission(
    emu: GraphEmulator, tenant: Tenant, missing: set[str], failing: str
) -> None:
    tenant.set_permissions(CLIENT_ID, IDSYNC_PERMISSIONS - missing)
    checks = {c.name: c for c in directory(GraphClient(settings(emu), CLIENT_SECRET)).check()}
    assert checks["token"].ok
    assert checks["users readable"].ok
    assert not checks[failing].ok
    assert not checks["permissions granted"].ok
    named = "GroupMember.Read.All" if "GroupMember.Read.All" in missing else "Application.Read.All"
    assert f"application permission {named}" in checks[failing].detail
    assert f"missing application permission(s) {named} " in checks["permissions granted"].detail


@pytest.mark.parametrize(
    ("missing", "probe_fails"),
    [("PrivilegedAssignmentSchedule.Read.AzureADGroup", True), ("Group.Read.All", False)],
)
def test_check_with_pim_groups_needs_the_pim_and_subscription_permissions(
    emu: GraphEmulator, tenant: Tenant, missing: str, probe_fails: bool
) -> None:
    group_id = next(iter(tenant.groups))
    every = {c.name: c for c in directory(GraphClient(settings(emu), CLIENT_SECRET)).check([group_id])}
    assert every["permissions granted"].detail == (
        "User.Read.All, GroupMember.Read.All, Application.Read.All, "
        "PrivilegedAssignmentSchedule.Read.AzureADGroup, Group.Read.All"
    )
    assert all(c.ok for c in every.values()), every
    tenant.set_permissions(CLIENT_ID, IDSYNC_PERMISSIONS - {missing})
    checks = {c.name: c for c in directory(GraphClient(settings(emu), CLIENT_SECRET)).check([group_id])}
    assert checks["permissions granted"].detail.startswith(f"missing application permission(s) {missing} ")
    assert checks[f"PIM schedules of group {group_id} readable"].ok is not probe_fails
    assert checks["group members readable"].ok  # GroupMember.Read.All still granted


def test_a_missing_ca_bundle_is_a_configuration_error(emu: GraphEmulator, tmp_path: Any) -> None:
    missing = tmp_path / "gone.pem"
    with pytest.raises(ConfigError, match=f"graph.ca_bundle: {missing} is not a readable file"):
        GraphClient(settings(emu, ca_bundle=str(missing)), CLIENT_SECRET)


def test_check_reports_a_refused_secret_and_a_wrong_app(emu: GraphEmulator, client: GraphClient) -> None:
    refused = directory(GraphClient(settings(emu), "wrong")).check()
    assert len(refused) == 1
    assert not refused[0].ok
    assert "AADSTS7000215" in refused[0].detail
    scope = ScopeSettings(mode="assigned", service_principal_id="00000000-0000-4000-8000-00000000abcd")
    wrong_app = GraphDirectory(client, scope, USER_PROPERTIES, GROUP_PROPERTIES, expand_manager=False).check()
    assert not wrong_app[-1].ok
    assert "scope.service_principal_id" in wrong_app[-1].detail


def test_devices_and_service_principals_in_groups_are_not_read_as_users(client: GraphClient, tenant: Tenant) -> None:
    # Given a group holding a user, a device and a service principal
    group = tenant.add_group("Kiosks")
    user = next(iter(tenant.users))
    device = tenant.add_device("kiosk-01")
    principal = next(iter(tenant.service_principals))
    reader = directory(client)
    links = reader.read_changes(None).links
    for member in (user, device, principal):
        tenant.add_member(group, member)
    # Then full and delta reads report the user member only
    full = directory(client).read_changes(None)
    assert {(c.member_id, c.member_type) for c in full.member_changes if c.group_id == group} == {(user, "user")}
    delta = reader.read_changes(links)
    assert {(c.member_id, c.member_type) for c in delta.member_changes if c.group_id == group} == {(user, "user")}


def test_a_soft_deleted_microsoft_365_group_is_read_as_changed(client: GraphClient, tenant: Tenant) -> None:
    group = tenant.add_group("Project Atlas", groupTypes=["Unified"])
    reader = directory(client)
    links = reader.read_changes(None).links
    tenant.soft_delete_group(group)
    assert reader.read_changes(links).removed_groups == {group: "changed"}


def test_a_delta_item_without_an_id_is_a_directory_error_naming_the_page(
    client: GraphClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = [
        {"value": [{"id": "g1", "displayName": "Fine"}], "@odata.nextLink": "next"},
        {"value": [{"displayName": "No id"}], "@odata.deltaLink": "done"},
    ]
    users = [{"value": [], "@odata.deltaLink": "users-done"}]
    monkeypatch.setattr(client, "documents", lambda url, params=None: iter(pages if url == "g" else users))
    with pytest.raises(DirectoryError, match=r"the groups delta page 2 holds an item without an id"):
        directory(client).read_changes({"users": "u", "groups": "g"})


def test_a_full_read_lists_what_is_in_entra_deleted_items_with_when_it_was_deleted(
    client: GraphClient, tenant: Tenant
) -> None:
    # Given a user moved to Entra's deleted items (restorable), and one deleted for good
    ids = [u for u in tenant.users if u in tenant.managers and u not in tenant.managers.values()]
    soft, hard = ids[3], ids[4]
    tenant.soft_delete_user(soft)
    tenant.hard_delete_user(hard)
    # When idsync reads everything
    changes = directory(client).read_changes(None)
    # Then the restorable user is named with its deletion time, and the other is not there at all
    assert set(changes.deleted_items) == {soft}
    assert changes.deleted_items[soft] == tenant.deleted_users[soft].user["deletedDateTime"]
    assert soft not in {u["id"] for u in changes.users}
