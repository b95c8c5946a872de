"""Microsoft Graph: an HTTP client (msal tokens, retries that honour Retry-After, paging, error
mapping) and the Entra directory read through it (full snapshots, delta changes, app assignments).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msal
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from idsync.config import GraphSettings, ScopeSettings
from idsync.errors import ConfigError, DeltaExpired, DirectoryAuthError, DirectoryError
from idsync.mirror import GROUP, USER, MemberChange
from idsync.ports import (
    CallCounter,
    Check,
    Credential,
    DeltaRound,
    DirectoryChanges,
    DirectorySnapshot,
    FullRead,
    GraphObject,
)

logger = logging.getLogger(__name__)

USERS, GROUPS = "users", "groups"  # the keys of delta links
MAX_IN_FILTER = 15  # Graph's limit of values in one `id in (...)` filter
# Delta pages hold far fewer objects than list pages; used only to choose the cheaper read.
DELTA_PAGE_ESTIMATE = 100
# Entra's sign-in hosts; for any other host (a proxy, a local emulator) msal's instance discovery is off.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "login.microsoftonline.us",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
    }
)
# The application permission that opens each family of Graph resources (by counter key prefix).
PERMISSIONS = (
    ("users", "User.Read.All"),
    ("groups", "GroupMember.Read.All"),
    ("servicePrincipals", "Application.Read.All"),
    ("identityGovernance", "PrivilegedAssignmentSchedule.Read.AzureADGroup"),
    ("subscriptions", "Group.Read.All"),
    ("organization", "Organization.Read.All"),
)
# Every application permission idsync may need, and the grants that satisfy each (a broader one will do).
_DIRECTORY_READ = frozenset({"Directory.Read.All", "Directory.ReadWrite.All"})
SATISFIED_BY = {
    "User.Read.All": frozenset({"User.Read.All", "User.ReadWrite.All"}) | _DIRECTORY_READ,
    "GroupMember.Read.All": frozenset(
        {"GroupMember.Read.All", "GroupMember.ReadWrite.All", "Group.Read.All", "Group.ReadWrite.All"}
    )
    | _DIRECTORY_READ,
    "Application.Read.All": frozenset({"Application.Read.All", "Application.ReadWrite.All"}) | _DIRECTORY_READ,
    "PrivilegedAssignmentSchedule.Read.AzureADGroup": frozenset(
        {
            "PrivilegedAssignmentSchedule.Read.AzureADGroup",
            "PrivilegedAssignmentSchedule.ReadWrite.AzureADGroup",
            "PrivilegedAccess.Read.AzureADGroup",
            "PrivilegedAccess.ReadWrite.AzureADGroup",
        }
    ),
    # Graph's subscription reference asks Group.Read.All for change notifications on a group's members
    "Group.Read.All": frozenset({"Group.Read.All", "Group.ReadWrite.All"}) | _DIRECTORY_READ,
}


def required_permissions(scope_mode: str, pim_groups: bool) -> list[str]:
    """The exact application permissions idsync needs for this configuration, in the README's order."""
    needed = ["User.Read.All", "GroupMember.Read.All"]
    if scope_mode == "assigned":
        needed.append("Application.Read.All")
    if pim_groups:
        needed += ["PrivilegedAssignmentSchedule.Read.AzureADGroup", "Group.Read.All"]
    return needed


def token_roles(access_token: str) -> frozenset[str] | None:
    """The ``roles`` claim (granted application permissions) of a JWT access token, read without verifying it
    (for a diagnosis only: Graph verifies it); None when the token is not a readable JWT."""
    parts = access_token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return frozenset(str(r) for r in roles) if isinstance(roles, list) else None


_ID_SEGMENT = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$|@")
_DECIMAL = re.compile(r"^\s*\d+(\.\d+)?\s*$")
_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)
_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_EXPIRED_CODES = frozenset({"syncStateNotFound", "resyncRequired"})


class GraphRequestError(DirectoryError):
    """Graph answered with an error other than an authentication or delta-expiry one."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def resource_key(url: str) -> str:
    """A short name for the resource a URL addresses, e.g. ``groups.members`` or ``users.delta``."""
    path = urlsplit(url).path
    if path.endswith("/oauth2/v2.0/token"):
        return "token"
    if path.endswith("/.well-known/openid-configuration"):
        return "openid-configuration"
    parts = [p for p in path.split("/") if p][1:]  # drop the version segment
    names = []
    for part in parts:
        if _ID_SEGMENT.search(part):
            continue
        names.append(part.removeprefix("microsoft.graph.").replace("$count", "count"))
    return ".".join(names) or "root"


def permission_for(url: str) -> str | None:
    """The Graph application permission that reading this URL needs, when known."""
    key = resource_key(url)
    return next((perm for prefix, perm in PERMISSIONS if key.startswith(prefix)), None)


class GraphRetry(Retry):
    """urllib3's Retry, accepting Graph's fractional Retry-After ("2.128") and reporting each retry."""

    def __init__(self, *args: Any, on_retry: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_retry = on_retry

    def new(self, **kw: Any) -> GraphRetry:
        retry = super().new(**kw)
        retry.on_retry = self.on_retry
        return retry

    def parse_retry_after(self, retry_after: str) -> float:
        if _DECIMAL.match(retry_after):
            return min(max(float(retry_after), 0.0), self.retry_after_max)
        return super().parse_retry_after(retry_after)

    def increment(self, method: str | None = None, url: str | None = None, *args: Any, **kwargs: Any) -> Any:
        retry = super().increment(method, url, *args, **kwargs)
        response = kwargs.get("response")
        logger.info(
            "graph request retried",
            extra={"url": url, "status": getattr(response, "status", None), "attempt": len(retry.history)},
        )
        if self.on_retry is not None:
            self.on_retry(url or "")
        return retry


class _TokenTransport:
    """msal's HTTP client: the Graph session, so sign-in gets the same retries, timeout and CA bundle."""

    def __init__(self, client: GraphClient) -> None:
        self._client = client

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self._client.send("GET", url, params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._client.send("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        """The session belongs to the Graph client."""


class GraphClient:
    """Authenticated, retrying, counting access to Microsoft Graph.

    Tokens come from msal (client secret, or a certificate: private key PEM file plus thumbprint)
    and are cached and renewed by it. 429/500/502/503/504 are retried by urllib3, waiting what
    ``Retry-After`` asks. Every HTTP request, retries included, is counted in ``counter`` under
    ``resource_key``.
    """

    def __init__(
        self,
        settings: GraphSettings,
        secret: str | Credential | None = None,
        counter: CallCounter | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = settings
        self.counter = counter if counter is not None else CallCounter()
        self._source: Credential | None = None if secret is None or isinstance(secret, str) else secret
        self._secret: str | None = secret if isinstance(secret, str) else None
        self._origin = _origin(settings.base_url)
        self._scope = f"{self._origin}/.default"
        if settings.ca_bundle and not Path(settings.ca_bundle).is_file():
            raise ConfigError(
                f"graph.ca_bundle: {settings.ca_bundle} is not a readable file (a PEM bundle of the CAs to trust); "
                "fix the path or remove the setting to trust the system's CAs"
            )
        self._verify: str | bool = settings.ca_bundle or True
        self._session = session or requests.Session()
        retry = GraphRetry(
            total=settings.max_retries,
            connect=settings.max_retries,
            read=settings.max_retries,
            status=settings.max_retries,
            other=0,
            backoff_factor=0.5,
            backoff_max=30,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=frozenset({"GET", "POST", "PATCH", "DELETE"}),
            respect_retry_after_header=True,
            raise_on_status=False,
            on_retry=lambda url: self.counter.add(resource_key(url)),
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._app: Any = None
        self._app_lock = threading.Lock()

    # ------------------------------------------------------------------ tokens

    def _credential(self) -> str | dict[str, str]:
        path = self.settings.certificate_path
        if path:
            try:
                pem = Path(path).read_text(encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"graph.certificate_path {path} cannot be read: {error.strerror}") from None
            key = _PRIVATE_KEY.search(pem)
            if key is None:
                raise ConfigError(f"graph.certificate_path {path} holds no PEM private key")
            if self.settings.certificate_thumbprint:
                return {"private_key": key.group(0), "thumbprint": self.settings.certificate_thumbprint}
            certificate = _CERTIFICATE.search(pem)
            if certificate is None:
                raise ConfigError(
                    f"graph.certificate_thumbprint is required: {path} holds no certificate to compute it from"
                )
            return {"private_key": key.group(0), "public_certificate": certificate.group(0)}
        if self._secret:
            return self._secret
        raise ConfigError(
            "no Graph credential: set IDSYNC_CLIENT_SECRET, graph.client_secret_arn, or graph.certificate_path"
        )

    def _refresh_secret(self, fresh: bool) -> bool:
        """Read the secret from its source; True when it changed (the msal app is then dropped)."""
        if self._source is None:
            return False
        value = self._source.current(fresh=fresh)
        if value == self._secret:
            return False
        with self._app_lock:
            self._secret, self._app = value, None
        return True

    def _msal(self) -> Any:
        self._refresh_secret(fresh=False)
        with self._app_lock:
            if self._app is None:
                host = urlsplit(self.settings.authority_host).hostname or ""
                authority = f"{self.settings.authority_host}/{self.settings.tenant_id}"
                try:
                    self._app = msal.ConfidentialClientApplication(
                        self.settings.client_id,
                        client_credential=self._credential(),
                        authority=authority,
                        http_client=_TokenTransport(self),
                        instance_discovery=host in MICROSOFT_AUTHORITY_HOSTS,
                    )
                except requests.RequestException as error:
                    raise DirectoryError(
                        f"Entra sign-in at {self.settings.authority_host} is unreachable: {error}"
                    ) from None
                except ValueError as error:
                    raise DirectoryAuthError(
                        f"Entra sign-in authority {authority} is not usable (check graph.tenant_id and "
                        f"graph.authority_host): {error}"
                    ) from None
            return self._app

    def token(self) -> str:
        """A valid access token (cached by msal).

        Raises DirectoryAuthError when Entra refuses (after one fresh read of a rotated secret),
        NotConfigured while the secret holds no real value, SecretError when it cannot be read.
        """
        result = self._acquire()
        if result.get("error") == "invalid_client" and self._refresh_secret(fresh=True):
            # the cached secret was rotated away in Entra: sign in again with the value stored now
            result = self._acquire()
        if "access_token" not in result:
            description = str(result.get("error_description", "")).split(" Trace ID:")[0].strip()
            hint = (
                f" (the token is asked for {self._scope}: is graph.base_url a Microsoft Graph host?)"
                if result.get("error") in ("invalid_scope", "invalid_resource")
                else ""
            )
            raise DirectoryAuthError(
                f"Entra refused a token to client {self.settings.client_id} in tenant "
                f"{self.settings.tenant_id}: {result.get('error')}: {description}{hint}"
            )
        return str(result["access_token"])

    def _acquire(self) -> dict[str, Any]:
        try:
            result: dict[str, Any] = self._msal().acquire_token_for_client(scopes=[self._scope])
        except requests.RequestException as error:
            raise DirectoryError(f"Entra sign-in at {self.settings.authority_host} is unreachable: {error}") from None
        return result

    # ------------------------------------------------------------------ requests

    def send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request through the retrying session, counted. Raises requests.RequestException."""
        kwargs.setdefault("timeout", self.settings.timeout_seconds)
        kwargs.setdefault("verify", self._verify)  # explicit, so REQUESTS_CA_BUNDLE cannot override it
        self.counter.add(resource_key(url))
        return self._session.request(method, url, **kwargs)

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("https://", "http://")):
            # A link from Graph (nextLink, deltaLink) must not carry the token to another host.
            if _origin(path_or_url) != self._origin:
                raise DirectoryError(f"refusing to follow a link outside {self._origin}: {path_or_url}")
            return path_or_url
        return f"{self.settings.base_url}/{path_or_url.lstrip('/')}"

    def call(
        self,
        method: str,
        path_or_url: str,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """An authenticated Graph request; a rejected token is renewed once.

        Raises DirectoryAuthError (401/403, naming the permission), DeltaExpired (410 or
        syncStateNotFound), GraphRequestError (other errors), DirectoryError (unreachable).
        """
        url = self._url(path_or_url)
        for attempt in (1, 2):
            sent = {"Authorization": f"Bearer {self.token()}", "Accept": "application/json", **(headers or {})}
            try:
                response = self.send(method, url, params=params, json=json, headers=sent)
            except requests.ConnectionError as error:
                raise DirectoryError(
                    f"{method} {_short(url)} failed: Microsoft Graph at {_origin(url)} (graph.base_url) is "
                    f"unreachable: {error}"
                ) from None
            except requests.RequestException as error:
                raise DirectoryError(f"{method} {_short(url)} failed: {error}") from None
            if response.status_code == 401 and attempt == 1:
                # Revoked or expired early: drop msal's cached token and sign in again, once.
                self._msal().remove_tokens_for_client()
                continue
            if response.status_code >= 400:
                raise self._error(method, url, response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, path_or_url: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET one Graph document (a path under ``base_url`` or a full link). Raises as ``call``."""
        body = self.call("GET", path_or_url, params).json()
        return body if isinstance(body, dict) else {"value": body}

    def documents(self, path_or_url: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every page of a collection, following ``@odata.nextLink``. Raises as ``call``."""
        url: str | None = path_or_url
        query = params
        while url:
            page = self.get(url, query)
            yield page
            url, query = page.get("@odata.nextLink"), None

    def pages(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a collection's ``value`` across pages. Raises as ``call``."""
        for page in self.documents(path, params):
            yield from page.get("value", [])

    def count(self, collection: str) -> int:
        """How many objects a collection holds (``/$count``, an advanced query). Raises as ``call``."""
        response = self.call("GET", f"/{collection}/$count", headers={"ConsistencyLevel": "eventual"})
        return int(response.text.strip().lstrip("\ufeff"))

    def _error(self, method: str, url: str, response: requests.Response) -> DirectoryError:
        code, message = "", response.text[:300]
        where = f"{method} {_short(url)}"
        try:
            error = response.json().get("error", {})
            if isinstance(error, dict):
                code, message = str(error.get("code", "")), str(error.get("message", message))
        except (ValueError, AttributeError):
            return GraphRequestError(
                f"{where} failed: {_origin(url)} (graph.base_url) does not answer like Microsoft Graph "
                f"(HTTP {response.status_code}, {response.headers.get('Content-Type') or 'no content type'}); "
                "check the host",
                response.status_code,
                "",
            )
        what = f"HTTP {response.status_code} {code}: {message}".replace(" :", ":")
        if response.status_code == 410 or code in _EXPIRED_CODES:
            return DeltaExpired(f"{where}: the delta link is no longer valid ({what}); a full read is needed")
        if response.status_code == 401:
            return DirectoryAuthError(f"{where}: Microsoft Graph rejected the access token ({what})")
        if response.status_code == 403:
            permission = permission_for(url)
            needed = (
                f"; the app registration {self.settings.client_id} needs the Microsoft Graph application "
                f"permission {permission}, granted with admin consent"
                if permission
                else ""
            )
            return DirectoryAuthError(f"{where}: Microsoft Graph denied access ({what}){needed}")
        if response.status_code == 429:
            what += f" (still throttled after {self.settings.max_retries} retries)"
        return GraphRequestError(f"{where} failed: {what}", response.status_code, code)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _short(url: str) -> str:
    return urlsplit(url).path


# ====================================================================== the directory


class GraphDirectory:
    """Entra ID read through Graph: ``ports.Directory`` (snapshot, check) and ``ports.ChangeSource``
    (delta changes, app assignments).

    Only the properties asked for (plus ``id``) are selected. With ``expand_manager`` users carry
    ``manager: {"id": ...}`` (``None`` in a delta when the manager was removed).
    """

    def __init__(
        self,
        client: GraphClient,
        scope: ScopeSettings,
        user_properties: frozenset[str],
        group_properties: frozenset[str],
        expand_manager: bool,
    ) -> None:
        self.client = client
        self.scope = scope
        self.expand_manager = expand_manager
        self._user_select = _select(user_properties - {"manager"})
        self._group_select = _select(group_properties - {"members"})
        self._page = str(client.settings.page_size)
        self.delta_links: dict[str, str] = {}  # links left by the last read that went through delta

    # ------------------------------------------------------------------ ports.Directory

    def snapshot(self) -> DirectorySnapshot:
        """Every in-scope user and group and each group's user members. Raises DirectoryError."""
        if self.scope.mode == "assigned":
            user_ids, group_ids = self.read_assignments()
            groups, members = self._assigned_groups(sorted(group_ids))
            for member_ids in members.values():
                user_ids.update(member_ids)
            users = self._by_id(USERS, sorted(user_ids), self._user_params())
        else:
            users = list(self.client.pages(f"/{USERS}", self._user_params() | {"$top": self._page}))
            groups, members = self._all_groups()
        return DirectorySnapshot([_user(u) for u in users], groups, members)

    def check(self, pim_groups: Sequence[str] = ()) -> list[Check]:
        """Entra's "Test Connection": token, the granted permissions against the exact set this configuration
        needs, users, group members, (assigned scope) app assignments, and (PIM groups) their schedules."""
        try:
            token = self.client.token()
        except (DirectoryError, ConfigError) as error:
            return [Check("token", False, str(error))]
        checks = [Check("token", True, f"access token issued for client {self.client.settings.client_id}")]
        checks.append(self._permissions_check(token, bool(pim_groups)))
        checks.append(self._probe("users readable", lambda: self.client.get(f"/{USERS}", _probe_params())))

        def members() -> None:
            first = self.client.get(f"/{GROUPS}", _probe_params()).get("value", [])
            if first:
                self.client.get(f"/{GROUPS}/{first[0]['id']}/members", _probe_params())

        checks.append(self._probe("group members readable", members))
        if self.scope.mode == "assigned":
            sp_id = self._service_principal()
            checks.append(
                self._probe(
                    "app assignments readable",
                    lambda: self.client.get(f"/servicePrincipals/{sp_id}/appRoleAssignedTo", _probe_params()),
                    "scope.service_principal_id must be the object id of the enterprise application",
                )
            )
        for group_id in pim_groups:
            checks.append(
                self._probe(
                    f"PIM schedules of group {group_id} readable",
                    functools.partial(
                        self.client.get,
                        "/identityGovernance/privilegedAccess/group/assignmentScheduleInstances",
                        {"$filter": f"groupId eq '{group_id}'", "$top": "1"},
                    ),
                    "pim.groups must hold object ids of PIM-enabled groups",
                )
            )
        return checks

    def _permissions_check(self, token: str, pim: bool) -> Check:
        needed = required_permissions(self.scope.mode, pim)
        roles = token_roles(token)
        if roles is None:
            return Check("permissions granted", True, "the token does not list its roles; the reads below decide")
        missing = [name for name in needed if not roles & SATISFIED_BY[name]]
        if missing:
            return Check(
                "permissions granted",
                False,
                f"missing application permission(s) {', '.join(missing)} (Entra admin center > App registrations > "
                "API permissions, then grant admin consent)",
            )
        return Check("permissions granted", True, ", ".join(needed))

    @staticmethod
    def _probe(name: str, read: Callable[[], object], not_found: str = "") -> Check:
        try:
            read()
        except GraphRequestError as error:
            hint = f" ({not_found})" if error.status == 404 and not_found else ""
            return Check(name, False, f"{error}{hint}")
        except DirectoryError as error:
            return Check(name, False, str(error))
        return Check(name, True, "ok")

    # ------------------------------------------------------------------ ports.ChangeSource

    def read_changes(self, links: Mapping[str, str] | None) -> DirectoryChanges:
        """Everything (links None or empty) or what changed since ``links``, through delta queries.

        Raises DeltaExpired when a link is no longer valid (or one is missing), DirectoryAuthError,
        DirectoryError.
        """
        full = not links
        if links and not (links.get(USERS) and links.get(GROUPS)):
            raise DeltaExpired(f"delta links for both {USERS} and {GROUPS} are needed, found {sorted(links)}")
        users = self._delta(USERS, links[USERS] if links else None)
        groups = self._delta(GROUPS, links[GROUPS] if links else None)
        self.delta_links = {USERS: str(users.delta_link), GROUPS: str(groups.delta_link)}
        return DirectoryChanges(
            list(users.objects.values()),
            users.removed,
            list(groups.objects.values()),
            groups.removed,
            groups.member_changes,
            dict(self.delta_links),
            full,
            self._deleted_items() if full else {},
        )

    def _deleted_items(self) -> dict[str, str]:
        """Users in Entra's deleted items -> when deleted (a full delta round does not list them).

        Groups' deleted items need Group.Read.All, beyond the permissions a cycle asks for: restorable
        groups are known from delta reads only."""
        path = "/directory/deletedItems/microsoft.graph.user"
        params = {"$select": "id,deletedDateTime", "$top": self._page}
        return {str(item["id"]): str(item.get("deletedDateTime") or "") for item in self.client.pages(path, params)}

    def read_assignments(self) -> tuple[set[str], set[str]]:
        """(user ids, group ids) assigned to the enterprise application. Raises DirectoryError."""
        users: set[str] = set()
        groups: set[str] = set()
        path = f"/servicePrincipals/{self._service_principal()}/appRoleAssignedTo"
        for assignment in self.client.pages(path, {"$select": "principalId,principalType", "$top": self._page}):
            kind = assignment.get("principalType")
            if kind == "User":
                users.add(str(assignment["principalId"]))
            elif kind == "Group":
                groups.add(str(assignment["principalId"]))
        return users, groups

    # ------------------------------------------------------------------ reading

    def _service_principal(self) -> str:
        if not self.scope.service_principal_id:
            raise ConfigError("scope.service_principal_id is required to read the enterprise app's assignments")
        return self.scope.service_principal_id

    def _user_params(self) -> dict[str, str]:
        params = {"$select": self._user_select}
        if self.expand_manager:
            params["$expand"] = "manager($select=id)"
        return params

    def _by_id(self, collection: str, ids: list[str], params: dict[str, str]) -> list[GraphObject]:
        """The objects with these ids: `id in (...)` filters when few, one full listing when many."""
        if not ids:
            return []
        filter_calls = math.ceil(len(ids) / MAX_IN_FILTER)
        if filter_calls > 1:
            list_calls = math.ceil(self.client.count(collection) / self.client.settings.page_size)
            if list_calls <= filter_calls:
                wanted = set(ids)
                listed = self.client.pages(f"/{collection}", params | {"$top": self._page})
                return [obj for obj in listed if obj["id"] in wanted]
        found: list[GraphObject] = []
        for start in range(0, len(ids), MAX_IN_FILTER):
            quoted = ",".join(f"'{i}'" for i in ids[start : start + MAX_IN_FILTER])
            found.extend(self.client.pages(f"/{collection}", params | {"$filter": f"id in ({quoted})"}))
        return found

    def _user_members(self, group_id: str, transitive: bool) -> list[str]:
        nav = "transitiveMembers" if transitive else "members"
        path = f"/{GROUPS}/{group_id}/{nav}/microsoft.graph.user"
        return [str(m["id"]) for m in self.client.pages(path, {"$select": "id", "$top": self._page})]

    def _assigned_groups(self, group_ids: list[str]) -> tuple[list[GraphObject], dict[str, list[str]]]:
        transitive = self.scope.flatten_nested_groups
        if not transitive and self._delta_is_cheaper(len(group_ids)):
            wanted = set(group_ids)
            groups, members = self._groups_through_delta()
            return [g for g in groups if g["id"] in wanted], {g: m for g, m in members.items() if g in wanted}
        groups = self._by_id(GROUPS, group_ids, {"$select": self._group_select})
        return groups, {str(g["id"]): self._user_members(str(g["id"]), transitive) for g in groups}

    def _delta_is_cheaper(self, assigned: int) -> bool:
        # One members read per assigned group, against one delta pass over every group in the tenant.
        if assigned <= MAX_IN_FILTER:
            return False
        return math.ceil(self.client.count(GROUPS) / DELTA_PAGE_ESTIMATE) < assigned

    def _all_groups(self) -> tuple[list[GraphObject], dict[str, list[str]]]:
        if not self.scope.flatten_nested_groups:
            return self._groups_through_delta()
        params = {"$select": self._group_select, "$top": self._page}
        groups: list[GraphObject] = list(self.client.pages(f"/{GROUPS}", params))
        return groups, {str(g["id"]): self._user_members(str(g["id"]), True) for g in groups}

    def _groups_through_delta(self) -> tuple[list[GraphObject], dict[str, list[str]]]:
        read = self._delta(GROUPS, None)
        self.delta_links[GROUPS] = str(read.delta_link)
        members: dict[str, list[str]] = {g: [] for g in read.objects}
        for change in read.member_changes:
            if change.member_type == USER and change.added and change.group_id in members:
                members[change.group_id].append(change.member_id)
        groups: list[GraphObject] = list(read.objects.values())
        return groups, members

    def _delta_params(self, resource: str) -> dict[str, str]:
        """The selection of a delta round begun from the start (later pages carry it in their links)."""
        if resource == USERS:
            return {"$select": self._user_select + (",manager" if self.expand_manager else "")}
        return {"$select": self._group_select + ",members"}

    def _delta(self, resource: str, link: str | None) -> DeltaRound:
        """One delta round from ``link`` (or from the start), followed to its deltaLink."""
        params = self._delta_params(resource) if link is None else None
        read = DeltaRound()
        for page in self.client.documents(link or f"/{resource}/delta", params):
            _fold(read, resource, page)
        if not read.delta_link:
            raise DirectoryError(f"the {resource} delta round ended without an @odata.deltaLink")
        return read

    def read_full(self, progress: FullRead | None, should_stop: Callable[[], bool]) -> FullRead:
        """Begin or carry on a full read: users' delta round, groups' delta round (with members), then the
        deleted users, one Graph request at a time, stopping between two when ``should_stop()`` says so (never
        before the first of this call). Links are Graph's own nextLink / deltaLink, kept as Graph wrote them.

        Raises DeltaExpired (Graph no longer knows a nextLink: begin again), DirectoryAuthError, DirectoryError.
        """
        read = progress if progress is not None else FullRead()
        requests_made = 0
        for resource, part in ((USERS, read.users), (GROUPS, read.groups)):
            while not part.done:
                if requests_made and should_stop():
                    return read
                if part.pages and not part.next_link:
                    raise DirectoryError(f"the {resource} delta round stopped without a nextLink or a deltaLink")
                url = part.next_link or f"/{resource}/delta"
                page = self.client.get(url, None if part.next_link else self._delta_params(resource))
                requests_made += 1
                _fold(part, resource, page)
                if not part.next_link and not part.delta_link:
                    raise DirectoryError(f"the {resource} delta round ended without an @odata.deltaLink")
        if read.deleted_items is None:
            if requests_made and should_stop():
                return read
            read.deleted_items = self._deleted_items()
        return read


def _fold(read: DeltaRound, resource: str, page: Mapping[str, Any]) -> None:
    """Fold one delta page into the round: later pages win, removals undo earlier objects."""
    read.pages += 1
    for position, item in enumerate(page.get("value", [])):
        if not isinstance(item, Mapping) or not item.get("id"):
            raise DirectoryError(
                f"the {resource} delta page {read.pages} holds an item without an id (item {position}): "
                f"{json.dumps(item)[:200]}"
            )
        object_id = str(item["id"])
        removed = item.get("@removed")
        if removed is not None:
            read.objects.pop(object_id, None)
            read.removed[object_id] = str(removed.get("reason", "deleted"))
            continue
        read.removed.pop(object_id, None)
        merged = read.objects.setdefault(object_id, {})
        merged.update({k: v for k, v in item.items() if "@" not in k})
        if resource == USERS and "manager@delta" in item:
            merged["manager"] = _delta_manager(item["manager@delta"])
        for member in item.get("members@delta", ()):
            kind = _MEMBER_KINDS.get(str(member.get("@odata.type", "#microsoft.graph.user")))
            if kind is None or not member.get("id"):
                continue  # devices, service principals, contacts: not provisioned
            added = "@removed" not in member
            read.member_changes.append(MemberChange(object_id, str(member["id"]), kind, added))
    read.next_link = page.get("@odata.nextLink")
    read.delta_link = page.get("@odata.deltaLink", read.delta_link)


_MEMBER_KINDS = {"#microsoft.graph.user": USER, "#microsoft.graph.group": GROUP}


def _select(properties: frozenset[str]) -> str:
    return ",".join(["id", *sorted(properties - {"id"})])


def _probe_params() -> dict[str, str]:
    return {"$select": "id", "$top": "1"}


def _user(obj: GraphObject) -> GraphObject:
    """A user as the mapping reads it: ``manager`` reduced to ``{"id": ...}``."""
    manager = obj.get("manager")
    if isinstance(manager, Mapping) and "id" in manager:
        return {**obj, "manager": {"id": manager["id"]}}
    return obj


def _delta_manager(entries: Any) -> dict[str, str] | None:
    for entry in entries or ():
        if "@removed" not in entry and entry.get("id"):
            return {"id": str(entry["id"])}
    return None
