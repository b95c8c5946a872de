"""A local Microsoft Graph and Entra sign-in emulator over a ``Tenant``, speaking Graph's wire format.

Serves, over HTTPS on 127.0.0.1 (a throwaway CA signs its certificate; clients trust
``GraphEmulator.ca_bundle``):

* the Entra token endpoint (client credentials with a secret or a certificate assertion) and the
  OpenID metadata msal reads, at ``{authority_host}/{tenant}/...``;
* ``/v1.0`` users, groups, members, transitiveMembers, servicePrincipals/appRoleAssignedTo,
  organization, and the users/groups delta functions, with $select, $top, $filter, $expand=manager,
  ``@odata.nextLink`` paging and Graph's error envelope;
* fault injection (429 with Retry-After, 500, 503, 504), per-path request counters, and an admin API under
  ``/_emulator`` for out-of-process control;
* PIM for Groups assignment schedule instances, /subscriptions with the validation handshake, and
  change notifications delivered to subscribers (``sandbox.graph_pim``, as ``GraphApp.pim``).

Usage in tests::

    with GraphEmulator(sample_tenant()) as emu:
        emu.graph_url, emu.authority_host, emu.ca_bundle, emu.requests["/v1.0/users"]
        emu.inject(429, count=2, path_prefix="/v1.0/users", retry_after="0.1")

Standalone: ``python -m sandbox.graph_emulator --port 8443`` prints the ``graph`` settings (CA included).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlencode

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from sandbox.graph_query import (
    ASSIGNMENT_PROPERTIES,
    GROUP_COLLECTIONS,
    GROUP_FILTERABLE,
    GROUP_PROPERTIES,
    USER_COLLECTIONS,
    USER_DEFAULT,
    USER_FILTERABLE,
    USER_PROPERTIES,
    QueryError,
    option,
    parse_expand,
    parse_filter,
    parse_select,
    parse_top,
    project,
)
from sandbox.tenant import (
    CLIENT_ID,
    CLIENT_SECRET,
    GROUP_CHANGE,
    MEMBER_CHANGE,
    SERVICE_PRINCIPAL_ID,
    USER_CHANGE,
    Change,
    Tenant,
    sample_tenant,
    tenant_from_mapping,
)

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"

# Application permissions that open each family of resources (any one suffices).
READ_USERS = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
READ_GROUPS = frozenset(
    {
        "GroupMember.Read.All",
        "Group.Read.All",
        "Group.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
    }
)
READ_APPS = frozenset({"Application.Read.All", "Application.ReadWrite.All", "Directory.Read.All"})
READ_ORG = frozenset({"Organization.Read.All", "Organization.ReadWrite.All", "Directory.Read.All"})

# The tenant methods the admin API may call.
MUTATIONS = frozenset(
    {
        "add_user",
        "update_user",
        "disable_user",
        "enable_user",
        "set_manager",
        "soft_delete_user",
        "restore_user",
        "hard_delete_user",
        "add_group",
        "update_group",
        "rename_group",
        "delete_group",
        "add_member",
        "remove_member",
        "assign",
        "unassign",
        "set_permissions",
    }
)

_FAULT_BODIES = {
    429: ("TooManyRequests", "Too many requests: the application is being throttled. Please retry later."),
    500: ("generalException", "An internal server error occurred while processing the request."),
    503: ("serviceNotAvailable", "The service is temporarily unavailable. Please retry later."),
    504: ("UnknownError", "The gateway timed out waiting for the service."),
}


class GraphFault(Exception):
    """An answer in Graph's error envelope."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


class EntraFault(Exception):
    """An answer in the Entra sign-in error shape (``error``, ``error_description``, ``error_codes``)."""

    def __init__(self, status: int, error: str, aadsts: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.aadsts = aadsts
        self.description = description


@dataclass
class Fault:
    status: int
    remaining: int
    path_prefix: str | None = None
    retry_after: str | None = None


@dataclass
class _Token:
    client_id: str
    roles: frozenset[str]
    expires_at: float


@dataclass
class _DeltaState:
    """What a $deltatoken stands for: a resource, the selection, and the change-log position."""

    resource: str  # "users" | "groups"
    select: tuple[str, ...] | None
    watermark: int


@dataclass
class _Round:
    """One delta round: every object to report, computed once so that pages (and replays) agree."""

    state: _DeltaState
    items: list[dict[str, Any]]
    page_size: int


@dataclass
class _RoundPage:
    round: _Round
    offset: int


@dataclass
class _ListPage:
    offset: int


@dataclass
class _Stats:
    requests: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)


def _request_ids() -> dict[str, str]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": str(uuid.uuid4()),
        "client-request-id": str(uuid.uuid4()),
    }


def graph_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    """A response in Graph's JSON error envelope."""
    inner = _request_ids()
    body = {"error": {"code": code, "message": message, "innerError": inner}}
    response = Response(json.dumps(body), status=status, content_type="application/json")
    response.headers["request-id"] = inner["request-id"]
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _b64(value: Any) -> bytes | None:
    """Bytes of a base64 or base64url header value (clients differ on which and on padding)."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4))
    except ValueError:
        return None


def _not_found(key: str) -> GraphFault:
    return GraphFault(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def _access_token(client_id: str, tenant_id: str, roles: frozenset[str]) -> str:
    """A JWT-shaped access token like Entra's: the granted application permissions in ``roles``, unsigned."""

    def part(value: Mapping[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    claims = {"appid": client_id, "tid": tenant_id, "roles": sorted(roles), "jti": secrets.token_urlsafe(16)}
    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.{secrets.token_urlsafe(32)}"


def _json(body: Mapping[str, Any], status: int = 200) -> Response:
    response = Response(json.dumps(body, separators=(",", ":")), status=status, content_type="application/json")
    response.headers["request-id"] = str(uuid.uuid4())
    response.headers["OData-Version"] = "4.0"
    return response


class GraphApp:
    """The WSGI application: Graph, Entra sign-in, and the admin API over one ``Tenant``."""

    def __init__(
        self,
        tenant: Tenant,
        *,
        page_size: int = 100,
        delta_page_size: int = 100,
        delta_member_chunk: int = 100,
        token_lifetime: int = 3599,
    ) -> None:
        self.tenant = tenant
        self.page_size = page_size
        self.delta_page_size = delta_page_size
        self.delta_member_chunk = delta_member_chunk
        self.token_lifetime = token_lifetime
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._empty_rounds: dict[str, int] = {}
        self._access_tokens: dict[str, _Token] = {}
        self._states: dict[str, object] = {}  # opaque skip/delta token -> what it stands for
        self._expired_states: set[str] = set()
        self._url_map = Map(
            [
                Rule("/<tenant>/oauth2/v2.0/token", endpoint="token", methods=["POST"]),
                Rule("/<tenant>/v2.0/.well-known/openid-configuration", endpoint="openid", methods=["GET"]),
                Rule("/v1.0/organization", endpoint="organization", methods=["GET"]),
                Rule("/v1.0/users", endpoint="users", methods=["GET"]),
                Rule("/v1.0/users/$count", endpoint="users_count", methods=["GET"]),
                Rule("/v1.0/users/delta", endpoint="users_delta", methods=["GET"]),
                Rule("/v1.0/users/microsoft.graph.delta()", endpoint="users_delta", methods=["GET"]),
                Rule("/v1.0/users/<key>", endpoint="user", methods=["GET"]),
                Rule("/v1.0/users/<key>/manager", endpoint="user_manager", methods=["GET"]),
                Rule("/v1.0/groups", endpoint="groups", methods=["GET"]),
                Rule("/v1.0/groups/$count", endpoint="groups_count", methods=["GET"]),
                Rule("/v1.0/groups/delta", endpoint="groups_delta", methods=["GET"]),
                Rule("/v1.0/groups/microsoft.graph.delta()", endpoint="groups_delta", methods=["GET"]),
                Rule("/v1.0/groups/<key>", endpoint="group", methods=["GET"]),
                Rule(
                    "/v1.0/groups/<key>/<any(members,transitiveMembers):nav>",
                    endpoint="members",
                    methods=["GET"],
                ),
                Rule(
                    "/v1.0/groups/<key>/<any(members,transitiveMembers):nav>/<any(microsoft.graph.user,"
                    "microsoft.graph.group):cast>",
                    endpoint="members",
                    methods=["GET"],
                ),
                Rule("/v1.0/directory/deletedItems/microsoft.graph.user", endpoint="deleted_users", methods=["GET"]),
                Rule("/v1.0/directory/deletedItems/microsoft.graph.group", endpoint="deleted_groups", methods=["GET"]),
                Rule("/v1.0/servicePrincipals/<key>", endpoint="service_principal", methods=["GET"]),
                Rule("/v1.0/servicePrincipals/<key>/appRoleAssignedTo", endpoint="assigned_to", methods=["GET"]),
                Rule("/_emulator/stats", endpoint="admin_stats", methods=["GET"]),
                Rule("/_emulator/tenant", endpoint="admin_tenant", methods=["GET"]),
                Rule("/_emulator/reset", endpoint="admin_reset", methods=["POST"]),
                Rule("/_emulator/mutate", endpoint="admin_mutate", methods=["POST"]),
                Rule("/_emulator/faults", endpoint="admin_faults", methods=["POST", "DELETE"]),
                Rule("/_emulator/expire-delta-tokens", endpoint="admin_expire", methods=["POST"]),
                Rule("/_emulator/revoke-tokens", endpoint="admin_revoke", methods=["POST"]),
            ],
            strict_slashes=False,
        )
        from sandbox.graph_pim import Pim  # PIM for Groups and subscriptions (that module imports this one)

        self.pim = Pim(self)

    # ------------------------------------------------------------------ control (in-process)

    def inject(
        self, status: int = 429, count: int = 1, path_prefix: str | None = None, retry_after: str | None = "1"
    ) -> None:
        """Answer the next ``count`` requests (whose path starts with ``path_prefix``) with ``status``."""
        if status not in _FAULT_BODIES:
            raise ValueError(f"fault status must be one of {sorted(_FAULT_BODIES)}, not {status}")
        with self._lock:
            self._faults.append(Fault(status, count, path_prefix, retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._empty_rounds.clear()

    def empty_next_full_delta(self, resource: str = "users", count: int = 1) -> None:
        """Answer the next ``count`` full delta rounds of ``resource`` with no object (a Graph incident)."""
        if resource not in ("users", "groups"):
            raise ValueError(f"resource must be users or groups, not {resource}")
        with self._lock:
            self._empty_rounds[resource] = self._empty_rounds.get(resource, 0) + count

    def _take_empty(self, resource: str) -> bool:
        with self._lock:
            if self._empty_rounds.get(resource, 0) <= 0:
                return False
            self._empty_rounds[resource] -= 1
            return True

    def expire_delta_tokens(self) -> None:
        """Make every issued $deltatoken and $skiptoken invalid (answers 410 from now on)."""
        with self._lock:
            self._expired_states.update(self._states)
            self._states.clear()

    def revoke_access_tokens(self) -> None:
        """Invalidate every issued access token (Graph answers 401 until a new one is fetched)."""
        with self._lock:
            self._access_tokens.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self.stats = _Stats()

    def reset(self, tenant: Tenant) -> None:
        """Serve another tenant; tokens, faults and counters start afresh."""
        with self._lock:
            self.tenant = tenant
            self._faults.clear()
            self._empty_rounds.clear()
            self._access_tokens.clear()
            self._states.clear()
            self._expired_states.clear()
            self.stats = _Stats()
        self.pim.reset()

    # ------------------------------------------------------------------ WSGI

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        is_admin = request.path.startswith("/_emulator/")
        if not is_admin:
            with self._lock:
                self.stats.requests[request.path] += 1
                query = unquote_plus(request.query_string.decode("latin-1"))
                self.stats.log.append(f"{request.method} {request.path}{'?' if query else ''}{query}")
            fault = self._take_fault(request.path)
            if fault is not None:
                code, message = _FAULT_BODIES[fault.status]
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return graph_error(fault.status, code, message, headers)
        adapter = self._url_map.bind_to_environ(request.environ)
        try:
            endpoint, values = adapter.match()
            view = endpoint if callable(endpoint) else getattr(self, f"_{endpoint}")
            return view(request, **values)  # type: ignore[no-any-return]
        except GraphFault as fault:
            return graph_error(fault.status, fault.code, fault.message, fault.headers)
        except QueryError as error:
            return graph_error(400, error.code, error.message)
        except EntraFault as fault:
            return self._entra_error(fault)
        except NotFound:
            segment = request.path.rstrip("/").rsplit("/", 1)[-1]
            return graph_error(400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        except MethodNotAllowed:
            return graph_error(405, "Request_BadRequest", f"The request method {request.method} is not allowed.")
        except HTTPException as error:
            return graph_error(error.code or 400, "BadRequest", error.description or "Bad request.")

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path_prefix is None or path.startswith(fault.path_prefix)):
                    fault.remaining -= 1
                    return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
            return None

    # ------------------------------------------------------------------ Entra sign-in

    def _known_tenant(self, tenant: str) -> bool:
        return tenant.lower() in (self.tenant.tenant_id, self.tenant.domain.lower())

    def _openid(self, request: Request, tenant: str) -> Response:
        if not self._known_tenant(tenant):
            raise EntraFault(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )
        base = f"{request.host_url}{self.tenant.tenant_id}"
        return _json(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{request.host_url}{self.tenant.tenant_id}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{request.host_url}oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid", "roles"],
                "tenant_region_scope": "NA",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": request.host,
            }
        )

    def _token(self, request: Request, tenant: str) -> Response:
        if not self._known_tenant(tenant):
            raise EntraFault(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        form = request.form
        if form.get("grant_type") != "client_credentials":
            raise EntraFault(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form.get('grant_type')}'.",
            )
        client_id = form.get("client_id", "")
        with self.tenant.lock:
            app = self.tenant.clients.get(client_id)
            if app is None:
                raise EntraFault(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{client_id}' was not found in the directory "
                    f"'{self.tenant.display_name}'.",
                )
            if form.get("client_secret"):
                if form["client_secret"] not in app.secrets:
                    raise EntraFault(
                        401,
                        "invalid_client",
                        7000215,
                        "Invalid client secret provided. Ensure the secret being sent in the request is "
                        "the client secret value, not the client secret ID, for a secret added to app "
                        f"'{client_id}'.",
                    )
            elif form.get("client_assertion"):
                expected_audience = f"{request.host_url}{self.tenant.tenant_id}/oauth2/v2.0/token"
                self._check_assertion(form["client_assertion"], client_id, app.certificates, expected_audience)
            else:
                raise EntraFault(
                    400,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                )
            roles = frozenset(app.permissions)
        scope = form.get("scope", "")
        resources = {GRAPH_RESOURCE, request.host_url.rstrip("/"), GRAPH_APP_ID}
        if not any(part.endswith("/.default") and part[: -len("/.default")] in resources for part in scope.split()):
            raise EntraFault(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        token = _access_token(client_id, self.tenant.tenant_id, roles)
        with self._lock:
            self._access_tokens[token] = _Token(client_id, roles, time.time() + self.token_lifetime)
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": token,
            }
        )

    @staticmethod
    def _check_assertion(assertion: str, client_id: str, certificates: Mapping[str, str], audience: str) -> None:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as error:
            raise EntraFault(401, "invalid_client", 50027, f"Invalid JWT token: {error}.") from None
        for pem in certificates.values():
            certificate = x509.load_pem_x509_certificate(pem.encode())
            der = certificate.public_bytes(serialization.Encoding.DER)
            thumbprints = {"x5t": hashlib.sha1(der).digest(), "x5t#S256": hashlib.sha256(der).digest()}
            if not any(_b64(header.get(k)) == v for k, v in thumbprints.items()):
                continue
            try:
                jwt.decode(
                    assertion,
                    key=certificate.public_key(),  # type: ignore[arg-type]
                    algorithms=["RS256", "PS256", "ES256"],
                    audience=audience,
                    issuer=client_id,
                    options={"require": ["exp", "aud", "iss", "sub"]},
                )
            except jwt.PyJWTError as error:
                raise EntraFault(
                    401, "invalid_client", 700027, f"Client assertion failed signature validation: {error}."
                ) from None
            return
        raise EntraFault(
            401,
            "invalid_client",
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found., "
            f"Thumbprint of key used by client: '{header.get('x5t') or header.get('x5t#S256')}']",
        )

    def _entra_error(self, fault: EntraFault) -> Response:
        trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        body = {
            "error": fault.error,
            "error_description": f"AADSTS{fault.aadsts}: {fault.description} Trace ID: {trace} "
            f"Correlation ID: {correlation} Timestamp: {stamp}",
            "error_codes": [fault.aadsts],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"https://login.microsoftonline.com/error?code={fault.aadsts}",
        }
        return Response(json.dumps(body), status=fault.status, content_type="application/json")

    # ------------------------------------------------------------------ Graph: common parts

    def _authorize(self, request: Request, allowed: frozenset[str]) -> None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        challenge = {
            "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            f'oauth2/authorize", client_id="{GRAPH_APP_ID}"'
        }
        if scheme.lower() != "bearer" or not token:
            raise GraphFault(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        with self._lock:
            issued = self._access_tokens.get(token)
        if issued is None:
            raise GraphFault(401, "InvalidAuthenticationToken", "Access token validation failure.", challenge)
        if issued.expires_at < time.time():
            raise GraphFault(
                401,
                "InvalidAuthenticationToken",
                "Lifetime validation failed, the token is expired.",
                challenge,
            )
        if not issued.roles & allowed:
            raise GraphFault(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")

    def _base(self, request: Request) -> str:
        return f"{request.host_url}v1.0"

    def _issue(self, state: object) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._states[token] = state
        return token

    def _lookup(self, token: str) -> object | None:
        with self._lock:
            return self._states.get(token)

    def _paged(
        self, request: Request, items: list[dict[str, Any]], context: str, default_top: int | None = None
    ) -> Response:
        """One page of a plain collection, with a nextLink carrying the original options and a $skiptoken."""
        top = parse_top(option(request.args, "top"), default_top or self.page_size)
        offset = 0
        skip = option(request.args, "skiptoken")
        if skip is not None:
            state = self._lookup(skip)
            if not isinstance(state, _ListPage):
                raise GraphFault(400, "Request_BadRequest", "The specified page token value has expired.")
            offset = state.offset
        body: dict[str, Any] = {"@odata.context": f"{self._base(request)}/$metadata#{context}"}
        body["value"] = items[offset : offset + top]
        if offset + top < len(items):
            params = {k: v for k, v in request.args.items() if k not in ("$skiptoken", "skiptoken")}
            params["$skiptoken"] = self._issue(_ListPage(offset + top))
            body["@odata.nextLink"] = f"{request.base_url}?{urlencode(params, quote_via=quote, safe='$,()=')}"
        return _json(body)

    def _render_user(
        self, user: Mapping[str, Any], select: tuple[str, ...] | None, expand: tuple[str, ...] | None
    ) -> dict[str, Any]:
        out = project(user, select or USER_DEFAULT, USER_COLLECTIONS)
        if expand is not None:
            manager = self.tenant.users.get(self.tenant.managers.get(str(user["id"]), ""))
            if manager is not None:
                out["manager"] = {"@odata.type": "#microsoft.graph.user"} | project(manager, expand, USER_COLLECTIONS)
        return out

    def _render_group(self, group: Mapping[str, Any], select: tuple[str, ...] | None) -> dict[str, Any]:
        return project(group, select or tuple(sorted(GROUP_PROPERTIES)), GROUP_COLLECTIONS)

    def _user_or_404(self, key: str) -> dict[str, Any]:
        user = self.tenant.find_user(key)
        if user is None:
            raise _not_found(key)
        return user

    def _group_or_404(self, key: str) -> dict[str, Any]:
        group = self.tenant.groups.get(key)
        if group is None:
            raise _not_found(key)
        return group

    # ------------------------------------------------------------------ Graph: users and groups

    def _organization(self, request: Request) -> Response:
        self._authorize(request, READ_ORG)
        org = {
            "id": self.tenant.tenant_id,
            "displayName": self.tenant.display_name,
            "tenantType": "AAD",
            "verifiedDomains": [{"name": self.tenant.domain, "isDefault": True, "isInitial": True, "type": "Managed"}],
        }
        return _json({"@odata.context": f"{self._base(request)}/$metadata#organization", "value": [org]})

    def _users(self, request: Request) -> Response:
        self._authorize(request, READ_USERS)
        select = parse_select(option(request.args, "select"), USER_PROPERTIES, "user")
        expand = parse_expand(option(request.args, "expand"))
        matches = parse_filter(option(request.args, "filter"), USER_FILTERABLE, "User")
        with self.tenant.lock:
            users = [u for u in self.tenant.users.values() if matches is None or matches(u)]
            rendered = self._page_slice(request, users, lambda u: self._render_user(u, select, expand))
        return self._paged(request, rendered, "users")

    def _deleted_users(self, request: Request) -> Response:
        """Users in deleted items (restorable), with when they were deleted."""
        self._authorize(request, READ_USERS)
        with self.tenant.lock:
            items = [
                {"id": uid, "deletedDateTime": held.user.get("deletedDateTime")}
                for uid, held in self.tenant.deleted_users.items()
            ]
        return self._paged(request, items, "directoryObjects")

    def _deleted_groups(self, request: Request) -> Response:
        """Microsoft 365 groups in deleted items (restorable), with when they were deleted."""
        self._authorize(request, READ_GROUPS)
        with self.tenant.lock:
            items = [
                {"id": gid, "deletedDateTime": group.get("deletedDateTime")}
                for gid, (group, _) in self.tenant.deleted_groups.items()
            ]
        return self._paged(request, items, "directoryObjects")

    def _page_slice(
        self,
        request: Request,
        objects: list[dict[str, Any]],
        render: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Render only the objects of the requested page; the others stay as placeholders."""
        top = parse_top(option(request.args, "top"), self.page_size)
        skip = option(request.args, "skiptoken")
        state = self._lookup(skip) if skip is not None else _ListPage(0)
        offset = state.offset if isinstance(state, _ListPage) else 0
        return [render(o) if offset <= i < offset + top else o for i, o in enumerate(objects)]

    def _users_count(self, request: Request) -> Response:
        return self._count(request, READ_USERS, len(self.tenant.users))

    def _groups_count(self, request: Request) -> Response:
        return self._count(request, READ_GROUPS, len(self.tenant.groups))

    def _count(self, request: Request, allowed: frozenset[str], value: int) -> Response:
        self._authorize(request, allowed)
        if request.headers.get("ConsistencyLevel", "").lower() != "eventual":
            raise GraphFault(
                400,
                "Request_BadRequest",
                "Count is not currently supported: this request needs the header 'ConsistencyLevel: eventual'.",
            )
        return Response(str(value), content_type="text/plain")

    def _user(self, request: Request, key: str) -> Response:
        self._authorize(request, READ_USERS)
        select = parse_select(option(request.args, "select"), USER_PROPERTIES, "user")
        expand = parse_expand(option(request.args, "expand"))
        with self.tenant.lock:
            body = self._render_user(self._user_or_404(key), select, expand)
        return _json({"@odata.context": f"{self._base(request)}/$metadata#users/$entity"} | body)

    def _user_manager(self, request: Request, key: str) -> Response:
        self._authorize(request, READ_USERS)
        select = parse_select(option(request.args, "select"), USER_PROPERTIES, "user")
        with self.tenant.lock:
            user = self._user_or_404(key)
            manager = self.tenant.users.get(self.tenant.managers.get(user["id"], ""))
            if manager is None:
                raise GraphFault(404, "Request_ResourceNotFound", f"Resource 'manager' does not exist for '{key}'.")
            body = {"@odata.type": "#microsoft.graph.user"} | self._render_user(manager, select, None)
        return _json(body)

    def _groups(self, request: Request) -> Response:
        self._authorize(request, READ_GROUPS)
        select = parse_select(option(request.args, "select"), GROUP_PROPERTIES, "group")
        matches = parse_filter(option(request.args, "filter"), GROUP_FILTERABLE, "Group")
        with self.tenant.lock:
            groups = [g for g in self.tenant.groups.values() if matches is None or matches(g)]
            rendered = self._page_slice(request, groups, lambda g: self._render_group(g, select))
        return self._paged(request, rendered, "groups")

    def _group(self, request: Request, key: str) -> Response:
        self._authorize(request, READ_GROUPS)
        select = parse_select(option(request.args, "select"), GROUP_PROPERTIES, "group")
        with self.tenant.lock:
            body = self._render_group(self._group_or_404(key), select)
        return _json({"@odata.context": f"{self._base(request)}/$metadata#groups/$entity"} | body)

    def _members(self, request: Request, key: str, nav: str, cast: str | None = None) -> Response:
        self._authorize(request, READ_GROUPS)
        raw_select = option(request.args, "select")
        user_select = parse_select(raw_select, USER_PROPERTIES | GROUP_PROPERTIES, "directoryObject")
        with self.tenant.lock:
            self._group_or_404(key)
            ids = list(self.tenant.members[key]) if nav == "members" else self.tenant.transitive_members(key)
            if cast == "microsoft.graph.user":
                ids = [i for i in ids if i in self.tenant.users]
            elif cast == "microsoft.graph.group":
                ids = [i for i in ids if i in self.tenant.groups]

            def render(member_id: str) -> dict[str, Any]:
                user = self.tenant.users.get(member_id)
                other = self.tenant.devices.get(member_id) or self.tenant.service_principals.get(member_id)
                if user is not None:
                    body = project(user, user_select or USER_DEFAULT, USER_COLLECTIONS)
                    kind = "user"
                elif other is not None:
                    body = {"id": member_id, "displayName": other.get("displayName")}
                    kind = self.tenant.member_type(member_id)
                else:
                    group = self.tenant.groups[member_id]
                    body = project(group, user_select or tuple(sorted(GROUP_PROPERTIES)), GROUP_COLLECTIONS)
                    kind = "group"
                # A cast answers a typed collection, so its items carry no @odata.type.
                return body if cast else {"@odata.type": f"#microsoft.graph.{kind}"} | body

            placeholders: list[dict[str, Any]] = [{"id": i} for i in ids]
            rendered = self._page_slice(request, placeholders, lambda m: render(m["id"]))
        return self._paged(request, rendered, "directoryObjects")

    def _service_principal(self, request: Request, key: str) -> Response:
        self._authorize(request, READ_APPS)
        with self.tenant.lock:
            app = self.tenant.service_principals.get(key)
            if app is None:
                raise _not_found(key)
            body = dict(app)
        select = parse_select(option(request.args, "select"), frozenset(body), "servicePrincipal")
        if select is not None:
            body = {k: body.get(k) for k in select}
        return _json({"@odata.context": f"{self._base(request)}/$metadata#servicePrincipals/$entity"} | body)

    def _assigned_to(self, request: Request, key: str) -> Response:
        self._authorize(request, READ_APPS)
        select = parse_select(option(request.args, "select"), ASSIGNMENT_PROPERTIES, "appRoleAssignment")
        with self.tenant.lock:
            if key not in self.tenant.service_principals:
                raise _not_found(key)
            rows = [
                a | {"principalDisplayName": self.tenant.principal_name(a["principalId"])}
                for a in self.tenant.assignments[key].values()
            ]
        if select is not None:
            rows = [{k: row.get(k) for k in select} for row in rows]
        return self._paged(request, rows, f"servicePrincipals('{key}')/appRoleAssignedTo")

    # ------------------------------------------------------------------ Graph: delta

    def _users_delta(self, request: Request) -> Response:
        self._authorize(request, READ_USERS)
        return self._delta(request, "users")

    def _groups_delta(self, request: Request) -> Response:
        self._authorize(request, READ_GROUPS)
        return self._delta(request, "groups")

    def _delta(self, request: Request, resource: str) -> Response:
        skip = option(request.args, "skiptoken")
        delta = option(request.args, "deltatoken")
        if skip is not None:
            page = self._lookup(skip)
            if not isinstance(page, _RoundPage) or page.round.state.resource != resource:
                raise self._gone(skip)
            return self._delta_page(request, page.round, page.offset)
        if delta is not None and delta != "latest":
            state = self._lookup(delta)
            if not isinstance(state, _DeltaState) or state.resource != resource:
                raise self._gone(delta)
        else:
            if resource == "users":
                select = parse_select(option(request.args, "select"), USER_PROPERTIES, "user", frozenset({"manager"}))
            else:
                select = parse_select(option(request.args, "select"), GROUP_PROPERTIES, "group", frozenset({"members"}))
            state = _DeltaState(resource, select, -1)
            if delta == "latest":
                with self.tenant.lock:
                    state.watermark = self.tenant.seq
                round_ = _Round(state, [], self._delta_page_size(request))
                return self._delta_page(request, round_, 0)
        with self.tenant.lock:
            watermark = self.tenant.seq
            items = self._user_changes(state) if resource == "users" else self._group_changes(state)
        if state.watermark < 0 and self._take_empty(resource):
            items = []  # an incident: the full round answers nobody, yet its deltaLink is as good as any
        round_ = _Round(_DeltaState(resource, state.select, watermark), items, self._delta_page_size(request))
        return self._delta_page(request, round_, 0)

    def _gone(self, token: str) -> GraphFault:
        with self._lock:
            expired = token in self._expired_states
        if expired:
            return GraphFault(
                410,
                "resyncRequired",
                "The sync state generation is not found. The delta token is expired and data must be "
                "synchronized again.",
            )
        return GraphFault(410, "syncStateNotFound", "The sync state generation is not found.")

    def _delta_page_size(self, request: Request) -> int:
        prefer = request.headers.get("Prefer", "")
        for part in prefer.split(","):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == "odata.maxpagesize" and value.strip().isdigit():
                return max(1, min(int(value), 999))
        return self.delta_page_size

    def _delta_page(self, request: Request, round_: _Round, offset: int) -> Response:
        resource = round_.state.resource
        end = offset + round_.page_size
        body: dict[str, Any] = {
            "@odata.context": f"{self._base(request)}/$metadata#{resource}",
            "value": round_.items[offset:end],
        }
        link = f"{self._base(request)}/{resource}/delta"
        if end < len(round_.items):
            body["@odata.nextLink"] = f"{link}?$skiptoken={self._issue(_RoundPage(round_, end))}"
        else:
            body["@odata.deltaLink"] = f"{link}?$deltatoken={self._issue(round_.state)}"
        return _json(body)

    def _window(self, state: _DeltaState) -> list[Any]:
        return self.tenant.changes[state.watermark :] if state.watermark >= 0 else []

    def _delta_props(self, obj: Mapping[str, Any], select: tuple[str, ...] | None, incremental: bool) -> dict[str, Any]:
        # Unset properties are left out; on a later round a property cleared to null is reported as null.
        names = select or tuple(obj)
        out: dict[str, Any] = {"id": obj["id"]}
        for name in names:
            if name in ("manager", "members"):
                continue
            value = obj.get(name)
            if value is not None or (incremental and name in obj):
                out[name] = value
        return out

    def _user_changes(self, state: _DeltaState) -> list[dict[str, Any]]:
        tenant = self.tenant
        incremental = state.watermark >= 0
        wants_manager = state.select is not None and "manager" in state.select
        previous_managers: dict[str, str] = {}
        if incremental:
            ids: dict[str, None] = {}
            for change in self._window(state):
                if change.kind == USER_CHANGE and _tracked(change, state.select):
                    ids[change.object_id] = None
                    if change.previous_manager:
                        previous_managers[change.object_id] = change.previous_manager
        else:
            ids = dict.fromkeys(tenant.users)
        items: list[dict[str, Any]] = []
        for user_id in ids:
            user = tenant.users.get(user_id)
            if user is None:
                reason = "changed" if user_id in tenant.deleted_users else "deleted"
                items.append({"id": user_id, "@removed": {"reason": reason}})
                continue
            item = self._delta_props(user, state.select, incremental)
            if wants_manager:
                manager = tenant.managers.get(user_id)
                if manager in tenant.users:
                    item["manager@delta"] = [{"@odata.type": "#microsoft.graph.user", "id": manager}]
                elif user_id in previous_managers:
                    item["manager@delta"] = [
                        {
                            "@odata.type": "#microsoft.graph.user",
                            "id": previous_managers[user_id],
                            "@removed": {"reason": "deleted"},
                        }
                    ]
            items.append(item)
        return items

    def _group_changes(self, state: _DeltaState) -> list[dict[str, Any]]:
        tenant = self.tenant
        incremental = state.watermark >= 0
        wants_members = state.select is None or "members" in state.select
        touched: dict[str, dict[str, str]] = {}  # group id -> member id -> member type
        if incremental:
            ids: dict[str, None] = {}
            for change in self._window(state):
                if change.kind == GROUP_CHANGE and _tracked(change, state.select):
                    ids[change.object_id] = None
                elif change.kind == MEMBER_CHANGE and wants_members:
                    ids[change.object_id] = None
                    touched.setdefault(change.object_id, {})[change.member_id] = change.member_type
        else:
            ids = dict.fromkeys(tenant.groups)
        items: list[dict[str, Any]] = []
        for group_id in ids:
            group = tenant.groups.get(group_id)
            if group is None:
                reason = "changed" if group_id in tenant.deleted_groups else "deleted"
                items.append({"id": group_id, "@removed": {"reason": reason}})
                continue
            item = self._delta_props(group, state.select, incremental)
            if not wants_members:
                items.append(item)
                continue
            entries: list[dict[str, Any]] = []
            current = tenant.members[group_id]
            if incremental:
                for member_id, member_type in touched.get(group_id, {}).items():
                    entry: dict[str, Any] = {
                        "@odata.type": f"#microsoft.graph.{member_type}",
                        "id": member_id,
                    }
                    if member_id not in current:
                        entry["@removed"] = {"reason": "deleted"}
                    entries.append(entry)
            else:
                entries = [{"@odata.type": f"#microsoft.graph.{tenant.member_type(m)}", "id": m} for m in current]
            # A group with many member changes comes back several times, each with a slice of them.
            chunk = self.delta_member_chunk
            for start in range(0, max(len(entries), 1), chunk):
                items.append(item | {"members@delta": entries[start : start + chunk]})
        return items

    # ------------------------------------------------------------------ admin API

    def _admin_stats(self, _request: Request) -> Response:
        with self._lock:
            counts = dict(self.stats.requests)
        return _json({"requests": counts, "total": sum(counts.values())})

    def _admin_tenant(self, _request: Request) -> Response:
        with self.tenant.lock:
            return _json(
                {
                    "tenantId": self.tenant.tenant_id,
                    "domain": self.tenant.domain,
                    "clientId": CLIENT_ID,
                    "clientSecret": CLIENT_SECRET,
                    "servicePrincipalId": SERVICE_PRINCIPAL_ID,
                    "users": len(self.tenant.users),
                    "groups": len(self.tenant.groups),
                    "seq": self.tenant.seq,
                }
            )

    def _admin_body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data() or b"{}")
        except json.JSONDecodeError as error:
            raise GraphFault(400, "BadRequest", f"the admin request body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise GraphFault(400, "BadRequest", "the admin request body must be a JSON object")
        return body

    def _admin_reset(self, request: Request) -> Response:
        try:
            self.reset(tenant_from_mapping(self._admin_body(request)))
        except ValueError as error:
            raise GraphFault(400, "BadRequest", str(error)) from None
        return _json({"reset": True, "users": len(self.tenant.users), "groups": len(self.tenant.groups)})

    def _admin_mutate(self, request: Request) -> Response:
        body = self._admin_body(request)
        op, args = body.get("op"), body.get("args") or {}
        if op not in MUTATIONS or not isinstance(args, dict):
            raise GraphFault(400, "BadRequest", f"op must be one of {sorted(MUTATIONS)} with an object of args")
        try:
            result = getattr(self.tenant, op)(**args)
        except (KeyError, ValueError, TypeError) as error:
            raise GraphFault(400, "BadRequest", f"{op} failed: {error}") from None
        return _json({"op": op, "result": result})

    def _admin_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_faults()
            return _json({"faults": 0})
        body = self._admin_body(request)
        try:
            if body.get("empty_full_delta"):
                self.empty_next_full_delta(str(body["empty_full_delta"]), int(body.get("count", 1)))
                return _json({"injected": body})
            self.inject(
                int(body.get("status", 429)),
                int(body.get("count", 1)),
                body.get("path_prefix"),
                None if body.get("retry_after") is None else str(body["retry_after"]),
            )
        except ValueError as error:
            raise GraphFault(400, "BadRequest", str(error)) from None
        return _json({"injected": body})

    def _admin_expire(self, _request: Request) -> Response:
        self.expire_delta_tokens()
        return _json({"expired": True})

    def _admin_revoke(self, _request: Request) -> Response:
        self.revoke_access_tokens()
        return _json({"revoked": True})


def _tracked(change: Change, select: tuple[str, ...] | None) -> bool:
    """Delta rounds track only the selected properties (and an object's creation and removal)."""
    return change.properties is None or select is None or bool(set(change.properties) & set(select))


# ====================================================================== TLS and the server


def write_tls_material(directory: Path) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and a certificate it signs for 127.0.0.1 and localhost.

    Returns (ca certificate, server certificate chain, server key) paths.
    """
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idsync sandbox CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server-key.pem",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class _QuietHandler(WSGIRequestHandler):
    # Headers and body go out in separate writes; Nagle's algorithm would hold the second one back.
    disable_nagle_algorithm = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Requests are counted by the emulator, not printed."""


class GraphEmulator:
    """The Graph emulator served over HTTPS on a free local port, in a background thread."""

    def __init__(
        self,
        tenant: Tenant | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls_dir: str | Path | None = None,
        **options: Any,
    ) -> None:
        self.app = GraphApp(tenant if tenant is not None else sample_tenant(), **options)
        self._host = host
        self._port = port
        self._tls_dir = Path(tls_dir) if tls_dir else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_bundle = ""

    @property
    def tenant(self) -> Tenant:
        return self.app.tenant

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return int(self._server.server_port)

    @property
    def authority_host(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def graph_url(self) -> str:
        return f"{self.authority_host}/v1.0"

    @property
    def requests(self) -> Counter[str]:
        """Requests received, by path (faulted ones included; admin calls excluded)."""
        return self.app.stats.requests

    @property
    def log(self) -> list[str]:
        """Every request received, as ``METHOD /path?query`` (query decoded)."""
        return self.app.stats.log

    def count(self, path_prefix: str) -> int:
        """Requests received on paths starting with ``path_prefix``."""
        return sum(n for path, n in self.requests.items() if path.startswith(path_prefix))

    def inject(
        self, status: int = 429, count: int = 1, path_prefix: str | None = None, retry_after: str | None = "1"
    ) -> None:
        """Answer the next ``count`` matching requests with 429/500/503/504 and Graph's error body."""
        self.app.inject(status, count, path_prefix, retry_after)

    def empty_next_full_delta(self, resource: str = "users", count: int = 1) -> None:
        """Answer the next ``count`` full delta rounds of ``resource`` with no object (a Graph incident)."""
        self.app.empty_next_full_delta(resource, count)

    def expire_delta_tokens(self) -> None:
        self.app.expire_delta_tokens()

    def revoke_access_tokens(self) -> None:
        self.app.revoke_access_tokens()

    def reset_counters(self) -> None:
        self.app.reset_counters()

    def graph_config(self) -> dict[str, str]:
        """The ``graph`` settings that point idsync at this emulator (without the secret)."""
        return {
            "tenant_id": self.tenant.tenant_id,
            "client_id": CLIENT_ID,
            "base_url": self.graph_url,
            "authority_host": self.authority_host,
            "ca_bundle": self.ca_bundle,
        }

    def start(self) -> GraphEmulator:
        if self._tls_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="graph-emulator-")
            tls_dir = Path(self._tmp.name)
        else:
            tls_dir = self._tls_dir
        ca_path, cert_path, key_path = write_tls_material(tls_dir)
        self.ca_bundle = str(ca_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self._server = make_server(
            self._host,
            self._port,
            self.app,
            threaded=True,
            request_handler=_QuietHandler,
            ssl_context=context,
        )
        server = self._server
        # A short poll interval lets stop() return quickly.
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="graph-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.app.pim.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the emulator over the sample tenant until interrupted."""
    parser = argparse.ArgumentParser(description="Local Microsoft Graph emulator (sandbox tenant)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tls-dir", default=".idsync/emulator-tls", help="where the CA and certificate are written")
    parser.add_argument("--tenant", choices=("sample", "scale"), default="sample")
    args = parser.parse_args(argv)
    emulator = GraphEmulator(
        tenant_from_mapping({"kind": args.tenant}),
        host=args.host,
        port=args.port,
        tls_dir=Path(args.tls_dir).resolve(),
    )
    emulator.start()
    settings = {"graph": emulator.graph_config(), "scope": {"service_principal_id": SERVICE_PRINCIPAL_ID}}
    print(json.dumps(settings, indent=2), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
