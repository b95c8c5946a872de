"""A deterministic, in-memory Microsoft Entra tenant: users, groups, one enterprise app, and a change log.

The Graph emulator serves a ``Tenant``; tests and the demo mutate it as an administrator would
(``add_user``, ``soft_delete_user``, ``add_member``, ``assign`` ...). Every mutation that Graph's
delta queries report is appended to ``Tenant.changes``, so a delta round can say what changed
since any earlier point. All methods take ``Tenant.lock``, so tests may mutate while the emulator
serves from another thread.

Objects are stored in Graph's own JSON shape (camelCase property names); navigation properties
(manager, members, app role assignments) are kept beside them.
"""

from __future__ import annotations

import base64
import random
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TENANT_ID = "6f2a3c1e-8b4d-4e59-9a7c-2d1e0f3b5a68"
TENANT_DOMAIN = "contoso.example"
TENANT_NAME = "Contoso (sandbox)"

# The app registration idsync signs in as (client credentials).
CLIENT_ID = "b5d1e7c2-0f3a-4c8e-9d6b-7a2e1c4f8b30"
CLIENT_SECRET = "sandbox-client-secret-Qm7~zX2.vN9"

# The AWS IAM Identity Center enterprise application: users and groups are assigned to it.
SERVICE_PRINCIPAL_ID = "0c9e4b7a-3d2f-4a1e-8b6c-5f0d9e2a7c41"
SERVICE_PRINCIPAL_APP_ID = "1f8a2d6c-7b3e-4f05-a9d4-3c6e8b0f2a17"
SERVICE_PRINCIPAL_NAME = "AWS IAM Identity Center"
APP_ROLE_ID = "8774f594-1d59-4279-b9d9-59ef09a23530"

# The Graph application permissions idsync needs (what an administrator grants).
IDSYNC_PERMISSIONS = frozenset(
    {
        "User.Read.All",
        "GroupMember.Read.All",
        "Application.Read.All",
        "PrivilegedAssignmentSchedule.Read.AzureADGroup",
        "Group.Read.All",  # the PIM groups' membership change subscriptions
    }
)

USER_CHANGE = "user"
GROUP_CHANGE = "group"
MEMBER_CHANGE = "member"


@dataclass
class ClientApp:
    """An app registration that may request tokens: its secrets, certificates and granted permissions."""

    client_id: str
    display_name: str
    secrets: set[str] = field(default_factory=set)
    certificates: dict[str, str] = field(default_factory=dict)  # SHA-1 thumbprint (hex, upper) -> PEM
    permissions: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of the change log: which object changed (for members: which group, which member)."""

    seq: int
    kind: str  # USER_CHANGE | GROUP_CHANGE | MEMBER_CHANGE
    object_id: str  # the user, or the group
    member_id: str | None = None  # member changes: the member
    member_type: str | None = None  # member changes: "user" | "group"
    previous_manager: str | None = None  # user changes that cleared or replaced the manager
    properties: tuple[str, ...] | None = None  # the properties an update set; None: the whole object


@dataclass
class _SoftDeleted:
    user: dict[str, Any]
    manager: str | None
    groups: list[str]
    assignments: dict[str, dict[str, Any]]  # service principal id -> assignment


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Tenant:
    """An Entra tenant held in memory. Every public method is thread-safe."""

    def __init__(
        self,
        tenant_id: str = TENANT_ID,
        domain: str = TENANT_DOMAIN,
        display_name: str = TENANT_NAME,
        seed: int = 1,
    ) -> None:
        self.tenant_id = tenant_id
        self.domain = domain
        self.display_name = display_name
        self.lock = threading.RLock()
        self.users: dict[str, dict[str, Any]] = {}
        self.managers: dict[str, str] = {}  # user id -> manager's user id
        self.deleted_users: dict[str, _SoftDeleted] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.members: dict[str, dict[str, None]] = {}  # group id -> direct member ids, in order
        self.member_of: dict[str, set[str]] = {}  # member id -> ids of the groups holding it
        self.service_principals: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}  # devices can be group members like users
        self.deleted_groups: dict[str, tuple[dict[str, Any], dict[str, None]]] = {}  # restorable M365 groups
        self.assignments: dict[str, dict[str, dict[str, Any]]] = {}  # sp id -> principal id -> assignment
        self.clients: dict[str, ClientApp] = {}
        self.changes: list[Change] = []
        # Users built to break one AWS IAM Identity Center rule: id -> (Graph property, rule).
        self.expected_refusals: dict[str, tuple[str, str]] = {}
        self._upns: dict[str, str] = {}  # lower-case userPrincipalName -> id
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------ ids and the change log

    def new_id(self) -> str:
        """A fresh GUID, deterministic for a given seed and call order."""
        with self.lock:
            return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    @property
    def seq(self) -> int:
        """The position of the newest change (0 before any)."""
        return len(self.changes)

    def _record(self, kind: str, object_id: str, **details: Any) -> None:
        self.changes.append(Change(len(self.changes) + 1, kind, object_id, **details))

    # ------------------------------------------------------------------ lookups

    def find_user(self, id_or_upn: str) -> dict[str, Any] | None:
        """A live user by object id or userPrincipalName (case-insensitive)."""
        with self.lock:
            found = self.users.get(id_or_upn)
            if found is None:
                user_id = self._upns.get(id_or_upn.lower())
                found = self.users.get(user_id) if user_id else None
            return found

    def transitive_members(self, group_id: str) -> list[str]:
        """Every user and group reachable through nested membership, once each, breadth first."""
        with self.lock:
            seen: dict[str, None] = {}
            queue = [group_id]
            while queue:
                current = queue.pop(0)
                for member in self.members.get(current, {}):
                    if member != group_id and member not in seen:
                        seen[member] = None
                        if member in self.groups:
                            queue.append(member)
            return list(seen)

    def _require_user(self, user_id: str) -> dict[str, Any]:
        user = self.users.get(user_id)
        if user is None:
            raise KeyError(f"user {user_id} does not exist in tenant {self.tenant_id}")
        return user

    def _require_group(self, group_id: str) -> dict[str, Any]:
        group = self.groups.get(group_id)
        if group is None:
            raise KeyError(f"group {group_id} does not exist in tenant {self.tenant_id}")
        return group

    # ------------------------------------------------------------------ users

    def add_user(self, **properties: Any) -> str:
        """Create a user from Graph properties (``userPrincipalName`` required). Returns its id.

        Raises ValueError when the userPrincipalName is missing or taken.
        """
        with self.lock:
            upn = properties.get("userPrincipalName")
            if not upn:
                raise ValueError("a user needs a userPrincipalName")
            if upn.lower() in self._upns:
                raise ValueError(f"userPrincipalName {upn} is already taken")
            user_id = properties.pop("id", None) or self.new_id()
            manager = properties.pop("manager", None)
            user: dict[str, Any] = {"id": user_id, "accountEnabled": True, "businessPhones": []}
            user.update(properties)
            user.setdefault("createdDateTime", _now())
            self.users[user_id] = user
            self._upns[upn.lower()] = user_id
            if manager:
                self.managers[user_id] = manager
            self._record(USER_CHANGE, user_id)
            return str(user_id)

    def update_user(self, user_id: str, **properties: Any) -> None:
        """Set Graph properties on a user; a value of None clears the property. Raises KeyError."""
        with self.lock:
            user = self._require_user(user_id)
            new_upn = properties.get("userPrincipalName")
            if new_upn and new_upn.lower() != user["userPrincipalName"].lower():
                if new_upn.lower() in self._upns:
                    raise ValueError(f"userPrincipalName {new_upn} is already taken")
                del self._upns[user["userPrincipalName"].lower()]
                self._upns[new_upn.lower()] = user_id
            user.update(properties)
            self._record(USER_CHANGE, user_id, properties=tuple(properties))

    def disable_user(self, user_id: str) -> None:
        """Block sign-in (accountEnabled false). Raises KeyError."""
        self.update_user(user_id, accountEnabled=False)

    def enable_user(self, user_id: str) -> None:
        self.update_user(user_id, accountEnabled=True)

    def set_manager(self, user_id: str, manager_id: str | None) -> None:
        """Set or clear a user's manager. Raises KeyError for an unknown user or manager."""
        with self.lock:
            self._require_user(user_id)
            previous = self.managers.pop(user_id, None)
            if manager_id is not None:
                self._require_user(manager_id)
                self.managers[user_id] = manager_id
            self._record(USER_CHANGE, user_id, previous_manager=previous, properties=("manager",))

    def soft_delete_user(self, user_id: str) -> None:
        """Move a user to deleted items (restorable): it leaves its groups and app assignments."""
        with self.lock:
            user = self._require_user(user_id)
            del self.users[user_id]
            del self._upns[user["userPrincipalName"].lower()]
            groups = sorted(self.member_of.get(user_id, set()))
            for group_id in groups:
                self._unlink(group_id, user_id)
            assignments = {sp_id: held.pop(user_id) for sp_id, held in self.assignments.items() if user_id in held}
            user["deletedDateTime"] = _now()
            self.deleted_users[user_id] = _SoftDeleted(user, self.managers.pop(user_id, None), groups, assignments)
            self._record(USER_CHANGE, user_id)
            # Reports keep the link (a restore brings it back) but no longer see a manager.
            for report in self._reports(user_id):
                self._record(USER_CHANGE, report, previous_manager=user_id, properties=("manager",))

    def restore_user(self, user_id: str) -> None:
        """Bring a soft-deleted user back with its memberships and assignments. Raises KeyError."""
        with self.lock:
            deleted = self.deleted_users.pop(user_id, None)
            if deleted is None:
                raise KeyError(f"user {user_id} is not in deleted items of tenant {self.tenant_id}")
            user = deleted.user
            user["deletedDateTime"] = None
            self.users[user_id] = user
            self._upns[user["userPrincipalName"].lower()] = user_id
            if deleted.manager and deleted.manager in self.users:
                self.managers[user_id] = deleted.manager
            self._record(USER_CHANGE, user_id)
            for report in self._reports(user_id):
                self._record(USER_CHANGE, report, properties=("manager",))
            for group_id in deleted.groups:
                if group_id in self.groups:
                    self._link(group_id, user_id)
            for sp_id, assignment in deleted.assignments.items():
                self.assignments.setdefault(sp_id, {})[user_id] = assignment

    def hard_delete_user(self, user_id: str) -> None:
        """Delete a user for good (from the directory or from deleted items). Raises KeyError."""
        with self.lock:
            if user_id in self.users:
                self.soft_delete_user(user_id)
            if self.deleted_users.pop(user_id, None) is None:
                raise KeyError(f"user {user_id} does not exist in tenant {self.tenant_id}")
            for report in self._reports(user_id):
                del self.managers[report]
            self._record(USER_CHANGE, user_id)

    def _reports(self, manager_id: str) -> list[str]:
        return [u for u, m in self.managers.items() if m == manager_id]

    # ------------------------------------------------------------------ groups

    def add_group(self, display_name: str, description: str | None = None, **properties: Any) -> str:
        """Create a security group. Returns its id."""
        with self.lock:
            group_id = properties.pop("id", None) or self.new_id()
            nickname = "".join(ch for ch in display_name.lower() if ch.isalnum() or ch in "-_.") or "group"
            group: dict[str, Any] = {
                "id": group_id,
                "displayName": display_name,
                "description": description,
                "mailNickname": nickname[:64],
                "mailEnabled": False,
                "securityEnabled": True,
                "groupTypes": [],
                "visibility": None,
                "createdDateTime": _now(),
            }
            group.update(properties)
            # Properties never set are absent (delta rounds leave them out), not null.
            group = {k: v for k, v in group.items() if v is not None}
            self.groups[group_id] = group
            self.members[group_id] = {}
            self._record(GROUP_CHANGE, group_id)
            return str(group_id)

    def update_group(self, group_id: str, **properties: Any) -> None:
        """Set Graph properties on a group. Raises KeyError."""
        with self.lock:
            self._require_group(group_id).update(properties)
            self._record(GROUP_CHANGE, group_id, properties=tuple(properties))

    def rename_group(self, group_id: str, display_name: str) -> None:
        self.update_group(group_id, displayName=display_name)

    def delete_group(self, group_id: str) -> None:
        """Delete a security group for good (security groups are not restorable). Raises KeyError."""
        with self.lock:
            self._require_group(group_id)
            for parent in sorted(self.member_of.get(group_id, set())):
                self._unlink(parent, group_id)
            for member in list(self.members[group_id]):
                self.member_of[member].discard(group_id)
            del self.members[group_id]
            del self.groups[group_id]
            for held in self.assignments.values():
                held.pop(group_id, None)
            self._record(GROUP_CHANGE, group_id)

    def add_member(self, group_id: str, member_id: str) -> None:
        """Add a user or a group as a direct member (no-op when already one).

        Raises KeyError for unknown objects and ValueError for a nesting cycle.
        """
        with self.lock:
            self._require_group(group_id)
            known = (self.users, self.groups, self.devices, self.service_principals)
            if not any(member_id in objects for objects in known):
                raise KeyError(f"object {member_id} does not exist in tenant {self.tenant_id}")
            if member_id in self.groups and (member_id == group_id or group_id in self.transitive_members(member_id)):
                raise ValueError(f"adding group {member_id} to group {group_id} would nest a group in itself")
            if member_id not in self.members[group_id]:
                self._link(group_id, member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        """Remove a direct member (no-op when not one). Raises KeyError for an unknown group."""
        with self.lock:
            self._require_group(group_id)
            if member_id in self.members[group_id]:
                self._unlink(group_id, member_id)

    def _link(self, group_id: str, member_id: str) -> None:
        self.members[group_id][member_id] = None
        self.member_of.setdefault(member_id, set()).add(group_id)
        self._record(MEMBER_CHANGE, group_id, member_id=member_id, member_type=self.member_type(member_id))

    def _unlink(self, group_id: str, member_id: str) -> None:
        del self.members[group_id][member_id]
        self.member_of[member_id].discard(group_id)
        self._record(MEMBER_CHANGE, group_id, member_id=member_id, member_type=self.member_type(member_id))

    def member_type(self, member_id: str) -> str:
        if member_id in self.groups:
            return "group"
        if member_id in self.devices:
            return "device"
        if member_id in self.service_principals:
            return "servicePrincipal"
        return "user"

    def add_device(self, display_name: str) -> str:
        """A device (Entra devices join security groups as members, as do service principals)."""
        with self.lock:
            device_id = self.new_id()
            self.devices[device_id] = {"id": device_id, "displayName": display_name, "accountEnabled": True}
            return device_id

    def soft_delete_group(self, group_id: str) -> None:
        """Move a Microsoft 365 group to deleted items (restorable for 30 days; delta says reason "changed")."""
        with self.lock:
            group = self._require_group(group_id)
            if "Unified" not in (group.get("groupTypes") or []):
                raise ValueError(f"group {group_id} is a security group: only Microsoft 365 groups are restorable")
            members = dict(self.members[group_id])
            for member in members:
                self.member_of[member].discard(group_id)
            for parent in sorted(self.member_of.get(group_id, set())):
                self._unlink(parent, group_id)
            del self.members[group_id]
            del self.groups[group_id]
            group["deletedDateTime"] = _now()
            self.deleted_groups[group_id] = (group, members)
            self._record(GROUP_CHANGE, group_id)

    def restore_group(self, group_id: str) -> None:
        """Bring a soft-deleted Microsoft 365 group back, same id and members. Raises KeyError."""
        with self.lock:
            group, members = self.deleted_groups.pop(group_id)
            self.groups[group_id] = group
            self.members[group_id] = {}
            self._record(GROUP_CHANGE, group_id)
            for member in members:
                if member in self.users or member in self.groups:
                    self._link(group_id, member)

    # ------------------------------------------------------------------ the enterprise app

    def add_service_principal(self, sp_id: str, app_id: str, display_name: str, app_role_id: str = APP_ROLE_ID) -> None:
        with self.lock:
            self.service_principals[sp_id] = {
                "id": sp_id,
                "appId": app_id,
                "displayName": display_name,
                "accountEnabled": True,
                "servicePrincipalType": "Application",
                "appRoleAssignmentRequired": True,
                "appRoles": [
                    {
                        "id": app_role_id,
                        "displayName": "User",
                        "value": None,
                        "description": "User",
                        "isEnabled": True,
                        "allowedMemberTypes": ["User"],
                        "origin": "Application",
                    }
                ],
                "tags": ["WindowsAzureActiveDirectoryIntegratedApp"],
            }
            self.assignments[sp_id] = {}

    def assign(self, principal_id: str, sp_id: str = SERVICE_PRINCIPAL_ID) -> str:
        """Assign a user or group to the enterprise app. Returns the assignment id. Raises KeyError."""
        with self.lock:
            app = self.service_principals[sp_id]
            principal = self.users.get(principal_id) or self.groups.get(principal_id)
            if principal is None:
                raise KeyError(f"object {principal_id} does not exist in tenant {self.tenant_id}")
            held = self.assignments[sp_id]
            if principal_id not in held:
                held[principal_id] = {
                    # Graph's assignment ids are opaque base64url strings.
                    "id": base64.urlsafe_b64encode(self._rng.randbytes(32)).decode().rstrip("="),
                    "appRoleId": app["appRoles"][0]["id"],
                    "createdDateTime": _now(),
                    "deletedDateTime": None,
                    "principalId": principal_id,
                    "principalType": "User" if principal_id in self.users else "Group",
                    "resourceDisplayName": app["displayName"],
                    "resourceId": sp_id,
                }
            return str(held[principal_id]["id"])

    def unassign(self, principal_id: str, sp_id: str = SERVICE_PRINCIPAL_ID) -> None:
        with self.lock:
            self.assignments[sp_id].pop(principal_id, None)

    def principal_name(self, principal_id: str) -> str | None:
        with self.lock:
            found = self.users.get(principal_id) or self.groups.get(principal_id)
            return found.get("displayName") if found else None

    # ------------------------------------------------------------------ app registrations

    def register_client(
        self,
        client_id: str,
        secret: str | None = None,
        permissions: Iterable[str] = IDSYNC_PERMISSIONS,
        display_name: str = "idsync",
    ) -> ClientApp:
        """Register an app that may request tokens (replacing one with the same id)."""
        with self.lock:
            app = ClientApp(client_id, display_name, permissions=set(permissions))
            if secret:
                app.secrets.add(secret)
            self.clients[client_id] = app
            return app

    def add_certificate(self, client_id: str, thumbprint: str, certificate_pem: str) -> None:
        """Trust a certificate (public PEM) for a client, keyed by its SHA-1 thumbprint."""
        with self.lock:
            self.clients[client_id].certificates[thumbprint.upper()] = certificate_pem

    def set_permissions(self, client_id: str, permissions: Iterable[str]) -> None:
        """Replace the application permissions granted to a client (tokens issued later carry them)."""
        with self.lock:
            self.clients[client_id].permissions = set(permissions)


# ====================================================================== generators


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "Aiden Amara Ana Anil Astrid Beatriz Bilal Carmen Chen Chloe Dario Dmitri Elena Emeka Fatima Felix "
    "Freya Gabriel Hana Hugo Ines Ivan Jana Javier Jonas Kai Kamala Kenji Lara Leon Lucia Mateo Maya "
    "Mei Mohammed Nadia Nils Noah Olga Omar Paula Pedro Priya Rafael Rania Ravi Rosa Sami Sara Sofia "
    "Tariq Thea Tomas Uma Valentina Viktor Wen Yara Yusuf Zoe"
)
_LAST = _words(
    "Abbott Almeida Andersen Baker Banerjee Becker Bianchi Brooks Castro Chen Costa Dubois Dunn Eriksson "
    "Fischer Fontaine Garcia Greene Haddad Hansen Ito Jansen Kaur Kim Kowalski Larsen Lopez Mbeki Meyer "
    "Moreau Murphy Nakamura Novak Okafor Olsen Patel Petrov Quinn Rahman Reyes Rossi Sato Schmidt Silva "
    "Singh Suzuki Tanaka Torres Urban Vargas Walsh Weber Xu Yamamoto Young Zhang Zimmermann"
)
_DEPARTMENTS = {
    "Engineering": ("Software Engineer", "Senior Software Engineer", "Staff Engineer", "Engineering Manager"),
    "Platform": ("Site Reliability Engineer", "Cloud Engineer", "Platform Lead"),
    "Data": ("Data Engineer", "Data Scientist", "Analytics Manager"),
    "Security": ("Security Engineer", "Security Analyst", "CISO"),
    "Finance": ("Accountant", "Financial Analyst", "Controller"),
    "Sales": ("Account Executive", "Sales Engineer", "Regional Sales Director"),
    "Marketing": ("Marketing Specialist", "Content Strategist", "Head of Marketing"),
    "Support": ("Support Engineer", "Support Specialist", "Support Manager"),
    "People": ("HR Business Partner", "Recruiter", "Head of People"),
    "Legal": ("Counsel", "Paralegal", "General Counsel"),
}
# (streetAddress, city, state, postalCode, country, usageLocation, preferredLanguage, office, phone prefix)
_OFFICES = (
    ("400 Pine Street", "Seattle", "WA", "98101", "United States", "US", "en-US", "SEA", "+1 206 555"),
    ("55 Water Street", "New York", "NY", "10041", "United States", "US", "en-US", "NYC", "+1 212 555"),
    ("1 Canada Square", "London", None, "E14 5AB", "United Kingdom", "GB", "en-GB", "LON", "+44 20 7946"),
    ("Friedrichstrasse 68", "Berlin", "Berlin", "10117", "Germany", "DE", "de-DE", "BER", "+49 30 901820"),
    ("12 Rue de la Paix", "Paris", "Ile-de-France", "75002", "France", "FR", "fr-FR", "PAR", "+33 1 7010"),
    ("200 George Street", "Sydney", "NSW", "2000", "Australia", "AU", "en-AU", "SYD", "+61 2 5550"),
)


def _person(tenant: Tenant, rng: random.Random, index: int, department: str, first: str, last: str) -> dict[str, Any]:
    office = _OFFICES[index % len(_OFFICES)] if rng.random() < 0.9 else rng.choice(_OFFICES)
    street, city, state, postal, country, usage, language, code, phone = office
    upn = f"{first}.{last}".lower()
    if upn + "@" + tenant.domain in tenant._upns:
        upn = f"{upn}{index}"
    user: dict[str, Any] = {
        "userPrincipalName": f"{upn}@{tenant.domain}",
        "displayName": f"{first} {last}",
        "givenName": first,
        "surname": last,
        "mail": f"{upn}@{tenant.domain}",
        "mailNickname": upn,
        "jobTitle": rng.choice(_DEPARTMENTS[department][:-1]),
        "department": department,
        "employeeId": f"E{10000 + index}",
        "employeeType": "Employee" if rng.random() < 0.85 else "Contractor",
        "companyName": "Contoso Ltd",
        "officeLocation": f"{code}-{rng.randint(1, 30):02d}/{rng.randint(100, 999)}",
        "streetAddress": street,
        "city": city,
        "postalCode": postal,
        "country": country,
        "usageLocation": usage,
        "preferredLanguage": language,
        "userType": "Member",
    }
    if state is not None:
        user["state"] = state
    if rng.random() < 0.65:
        user["mobilePhone"] = f"{phone} {rng.randint(1000, 9999)}"
    if rng.random() < 0.75:
        user["businessPhones"] = [f"{phone} {rng.randint(1000, 9999)}"]
    if rng.random() < 0.3:
        attributes: dict[str, str | None] = {f"extensionAttribute{n}": None for n in range(1, 16)}
        attributes["extensionAttribute1"] = f"CC-{rng.randint(100, 999)}"
        attributes["extensionAttribute2"] = rng.choice(("Tier1", "Tier2", "Tier3"))
        user["onPremisesExtensionAttributes"] = attributes
    return user


# (Graph property, the value that breaks an AWS IAM Identity Center rule, the rule), one user each.
_BROKEN: tuple[tuple[str, Any, str], ...] = (
    ("givenName", None, "missing"),
    ("surname", None, "missing"),
    ("displayName", None, "missing"),
    ("businessPhones", ["+1 206 555 0101", "+1 206 555 0102"], "more than one phone number"),
    ("jobTitle", "Solutions\tArchitect", "forbidden character '\\t'"),
    ("streetAddress", "400 Pine Street\nFloor 12", "forbidden character '\\n'"),
    ("department", "Finance\r", "forbidden character '\\r'"),
    ("displayName", 'Dana "DJ" Jones', "forbidden character '\"'"),
    ("jobTitle", "<Interim> Controller", "forbidden characters '<' '>'"),
    ("department", "Sales|EMEA", "forbidden character '|'"),
    ("city", "Lyon; Villeurbanne", "forbidden character ';'"),
    ("jobTitle", "Lead: Payments", "forbidden character ':'"),
    ("employeeId", "E%1042", "forbidden character '%'"),
)


def sample_tenant(seed: int = 7) -> Tenant:
    """About 300 users and 40 groups (nested), an enterprise app with user and group assignments,
    a few disabled users, and one user per AWS IAM Identity Center rule that it breaks
    (``Tenant.expected_refusals``). Deterministic for a given seed."""
    rng = random.Random(seed)
    tenant = Tenant(seed=seed)
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    tenant.add_service_principal(SERVICE_PRINCIPAL_ID, SERVICE_PRINCIPAL_APP_ID, SERVICE_PRINCIPAL_NAME)

    departments = list(_DEPARTMENTS)
    by_department: dict[str, list[str]] = {d: [] for d in departments}
    names = [(f, last) for f in _FIRST for last in _LAST]
    rng.shuffle(names)

    ceo = tenant.add_user(**_person(tenant, rng, 0, "Engineering", "Morgan", "Blake") | {"jobTitle": "CEO"})
    heads: dict[str, str] = {}
    users: list[str] = []
    for index in range(1, 300):
        department = departments[index % len(departments)]
        first, last = names[index]
        props = _person(tenant, rng, index, department, first, last)
        if department not in heads:
            props["jobTitle"] = _DEPARTMENTS[department][-1]
            user_id = tenant.add_user(**props)
            heads[department] = user_id
            tenant.set_manager(user_id, ceo)
        else:
            user_id = tenant.add_user(**props)
            if rng.random() < 0.92:  # a few users have no manager on record
                tenant.set_manager(user_id, heads[department])
        by_department[department].append(user_id)
        users.append(user_id)

    # One rule broken per user; these users are in scope (directly assigned or in an assigned group).
    broken = users[40 : 40 + len(_BROKEN)]
    for user_id, (attribute, value, rule) in zip(broken, _BROKEN, strict=True):
        if value is None:
            tenant.users[user_id].pop(attribute, None)
        else:
            tenant.users[user_id][attribute] = value
        if attribute == "businessPhones":
            tenant.users[user_id].pop("mobilePhone", None)
        tenant.expected_refusals[user_id] = (attribute, rule)

    disabled = [users[i] for i in (60, 61, 130, 200, 270)]
    for user_id in disabled:
        tenant.users[user_id]["accountEnabled"] = False

    group = {name: tenant.add_group(name, description) for name, description in _SAMPLE_GROUPS}
    for department, members in by_department.items():
        for user_id in members:
            tenant.add_member(group[f"Dept - {department}"], user_id)
        tenant.add_member(group["All Staff"], group[f"Dept - {department}"])
    tenant.add_member(group["Dept - Engineering"], ceo)

    def fill(name: str, pool: list[str], count: int) -> None:
        for user_id in rng.sample(pool, min(count, len(pool))):
            tenant.add_member(group[name], user_id)

    engineers = by_department["Engineering"] + by_department["Platform"] + by_department["Data"]
    fill("Eng - Backend", by_department["Engineering"], 12)
    fill("Eng - Frontend", by_department["Engineering"], 10)
    fill("Eng - SRE", by_department["Platform"], 12)
    fill("Eng - Data Platform", by_department["Data"], 14)
    for name in ("Eng - Backend", "Eng - Frontend"):
        tenant.add_member(group["AWS Developers"], group[name])
    fill("AWS Developers", engineers, 8)
    fill("AWS Administrators", by_department["Platform"], 5)
    tenant.add_member(group["AWS Administrators"], ceo)
    tenant.add_member(group["AWS Network Admins"], group["Eng - SRE"])
    fill("AWS Network Admins", by_department["Platform"], 3)
    fill("AWS ReadOnly", users, 25)
    tenant.add_member(group["AWS ReadOnly"], group["Dept - Finance"])
    fill("AWS Billing", by_department["Finance"], 6)
    fill("AWS Security Audit", by_department["Security"], 8)
    tenant.add_member(group["AWS Security Audit"], group["AWS Administrators"])
    tenant.add_member(group["AWS Data Platform"], group["Eng - Data Platform"])
    fill("AWS Data Platform", by_department["Data"], 4)
    fill("AWS Support Engineers", by_department["Support"], 10)
    fill("AWS Sandbox Accounts", engineers, 30)
    fill("AWS PIM Production Admin", by_department["Platform"], 2)
    fill("AWS PIM Database Admin", by_department["Data"], 1)
    for name in ("Project Falcon", "Project Orion", "Incident Commanders", "On-call Rotation"):
        fill(name, engineers, rng.randint(5, 15))
    for name in ("Social Club", "Book Club", "Mentors", "New Joiners", "Managers", "Remote Workers"):
        fill(name, users, rng.randint(8, 30))
    for city in ("Seattle", "New York", "London", "Berlin", "Paris", "Sydney"):
        fill(f"Office - {city}", [u for u in users if tenant.users[u]["city"] == city], 40)
    tenant.add_member(group["Managers"], group["Department Heads"])
    for head in heads.values():
        tenant.add_member(group["Department Heads"], head)
    fill("Contractors", [u for u in users if tenant.users[u]["employeeType"] == "Contractor"], 40)
    # The users who break a rule and some disabled users sit in assigned groups or are assigned directly.
    for user_id in broken[:6]:
        tenant.add_member(group["AWS ReadOnly"], user_id)
    for user_id in broken[6:] + disabled[:2]:
        tenant.assign(user_id)

    for name in _ASSIGNED_GROUPS:
        tenant.assign(group[name])
    for user_id in rng.sample(users[100:], 8):
        tenant.assign(user_id)

    # The generated state is the starting point: delta rounds report changes made from here on.
    tenant.changes.clear()
    return tenant


_SAMPLE_GROUPS: tuple[tuple[str, str | None], ...] = (
    *((f"Dept - {d}", f"Everyone in {d}") for d in _DEPARTMENTS),
    ("All Staff", "Every department (nested groups)"),
    ("Eng - Backend", "Backend engineering team"),
    ("Eng - Frontend", "Frontend engineering team"),
    ("Eng - SRE", "Site reliability engineering"),
    ("Eng - Data Platform", "Data platform team"),
    ("AWS Administrators", "Administrator access to every AWS account"),
    ("AWS Developers", "Developer access to non-production accounts"),
    ("AWS ReadOnly", "Read-only access to every AWS account"),
    ("AWS Billing", "Billing console access"),
    ("AWS Security Audit", "Security audit access"),
    ("AWS Network Admins", "Network administration"),
    ("AWS Data Platform", "Data platform accounts"),
    ("AWS Support Engineers", "Support access"),
    ("AWS Sandbox Accounts", "Personal sandbox accounts"),
    ("AWS PIM Production Admin", "Just-in-time production administrator (PIM for Groups)"),
    ("AWS PIM Database Admin", "Just-in-time database administrator (PIM for Groups)"),
    ("AWS PIM Break Glass", "Emergency access (PIM for Groups)"),
    ("Project Falcon", None),
    ("Project Orion", None),
    ("Incident Commanders", "People who can lead an incident"),
    ("On-call Rotation", None),
    ("Social Club", None),
    ("Book Club", None),
    ("Mentors", None),
    ("New Joiners", None),
    ("Managers", "People managers"),
    ("Department Heads", None),
    ("Remote Workers", None),
    ("Contractors", "External contractors"),
    *((f"Office - {c}", None) for c in ("Seattle", "New York", "London", "Berlin", "Paris", "Sydney")),
)

_ASSIGNED_GROUPS = (
    "AWS Administrators",
    "AWS Developers",
    "AWS ReadOnly",
    "AWS Billing",
    "AWS Security Audit",
    "AWS Network Admins",
    "AWS Data Platform",
    "AWS Support Engineers",
    "AWS Sandbox Accounts",
    "AWS PIM Production Admin",
    "AWS PIM Database Admin",
    "AWS PIM Break Glass",
)


def scale_tenant(users: int = 10_000, groups: int = 1_000, memberships: int = 50_000, seed: int = 11) -> Tenant:
    """A big tenant of valid users for benchmarks: ``memberships`` user memberships spread over
    ``groups`` groups (about one group in ten also holds a nested group); every group and about
    one user in twenty are assigned to the enterprise app. Deterministic for a given seed."""
    rng = random.Random(seed)
    tenant = Tenant(seed=seed)
    tenant.register_client(CLIENT_ID, CLIENT_SECRET)
    tenant.add_service_principal(SERVICE_PRINCIPAL_ID, SERVICE_PRINCIPAL_APP_ID, SERVICE_PRINCIPAL_NAME)
    departments = list(_DEPARTMENTS)
    user_ids: list[str] = []
    for index in range(users):
        first = _FIRST[index % len(_FIRST)]
        last = _LAST[(index // len(_FIRST)) % len(_LAST)]
        props = _person(tenant, rng, index, departments[index % len(departments)], first, last)
        upn = f"{first}.{last}.{index}".lower()
        props["userPrincipalName"] = props["mail"] = f"{upn}@{tenant.domain}"
        props["mailNickname"] = upn
        user_ids.append(tenant.add_user(**props))
    for index, user_id in enumerate(user_ids[1:], start=1):
        tenant.managers[user_id] = user_ids[rng.randrange(0, max(1, index // 10) + 1)]
    group_ids = [
        tenant.add_group(f"Team {n:04d}", f"Generated team {n}", mailNickname=f"team{n:04d}") for n in range(groups)
    ]
    pairs: set[tuple[int, int]] = set()
    limit = min(memberships, users * groups)
    while len(pairs) < limit:
        pairs.add((rng.randrange(groups), rng.randrange(users)))
    for group_index, user_index in sorted(pairs):
        tenant.members[group_ids[group_index]][user_ids[user_index]] = None
        tenant.member_of.setdefault(user_ids[user_index], set()).add(group_ids[group_index])
    for parent in range(0, groups - 1, 10):
        child = rng.randrange(parent + 1, groups)  # only later groups nest, so no cycle
        tenant.members[group_ids[parent]][group_ids[child]] = None
        tenant.member_of.setdefault(group_ids[child], set()).add(group_ids[parent])
    for group_id in group_ids:
        tenant.assign(group_id)
    for user_id in user_ids[:: max(1, 20)]:
        tenant.assign(user_id)
    tenant.changes.clear()
    return tenant


def tenant_from_mapping(spec: Mapping[str, Any]) -> Tenant:
    """Build a tenant by name for the emulator's admin API: ``{"kind": "sample"|"scale", ...}``.

    Raises ValueError for an unknown kind.
    """
    kind = spec.get("kind", "sample")
    if kind == "sample":
        return sample_tenant(int(spec.get("seed", 7)))
    if kind == "scale":
        return scale_tenant(
            int(spec.get("users", 10_000)),
            int(spec.get("groups", 1_000)),
            int(spec.get("memberships", 50_000)),
            int(spec.get("seed", 11)),
        )
    raise ValueError(f"unknown tenant kind {kind!r}: expected 'sample' or 'scale'")
