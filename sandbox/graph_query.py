"""The OData query options the Graph emulator understands: $select, $expand, $top and a $filter subset.

Each parser raises ``QueryError`` carrying Graph's error code and message, which the emulator
turns into a 400 answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


USER_PROPERTIES = _names(
    """aboutMe accountEnabled ageGroup assignedLicenses assignedPlans authorizationInfo birthday
    businessPhones city companyName consentProvidedForMinor country createdDateTime creationType
    customSecurityAttributes deletedDateTime department displayName employeeHireDate employeeId
    employeeLeaveDateTime employeeOrgData employeeType externalUserState externalUserStateChangeDateTime
    faxNumber givenName hireDate id identities imAddresses interests isManagementRestricted
    isResourceAccount jobTitle lastPasswordChangeDateTime legalAgeGroupClassification
    licenseAssignmentStates mail mailboxSettings mailNickname mobilePhone mySite officeLocation
    onPremisesDistinguishedName onPremisesDomainName onPremisesExtensionAttributes onPremisesImmutableId
    onPremisesLastSyncDateTime onPremisesProvisioningErrors onPremisesSamAccountName
    onPremisesSecurityIdentifier onPremisesSyncEnabled onPremisesUserPrincipalName otherMails
    passwordPolicies passwordProfile pastProjects postalCode preferredDataLocation preferredLanguage
    preferredName provisionedPlans proxyAddresses responsibilities schools securityIdentifier
    serviceProvisioningErrors showInAddressList signInActivity signInSessionsValidFromDateTime skills
    state streetAddress surname usageLocation userPrincipalName userType"""
)
USER_COLLECTIONS = _names(
    "businessPhones imAddresses otherMails proxyAddresses identities assignedLicenses interests "
    "pastProjects responsibilities schools skills"
)
# What Graph returns for a user when no $select is given.
USER_DEFAULT = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
GROUP_PROPERTIES = _names(
    """classification createdDateTime deletedDateTime description displayName expirationDateTime
    groupTypes id isAssignableToRole mail mailEnabled mailNickname membershipRule
    membershipRuleProcessingState onPremisesDomainName onPremisesLastSyncDateTime
    onPremisesSamAccountName onPremisesSecurityIdentifier onPremisesSyncEnabled preferredDataLocation
    preferredLanguage proxyAddresses renewedDateTime securityEnabled securityIdentifier theme
    uniqueName visibility"""
)
GROUP_COLLECTIONS = frozenset({"groupTypes", "proxyAddresses"})
ASSIGNMENT_PROPERTIES = _names(
    "id appRoleId createdDateTime deletedDateTime principalDisplayName principalId principalType "
    "resourceDisplayName resourceId"
)
USER_FILTERABLE = _names(
    "id userPrincipalName displayName givenName surname mail mailNickname accountEnabled employeeId "
    "department jobTitle userType city country state usageLocation companyName employeeType "
    "preferredLanguage officeLocation"
)
GROUP_FILTERABLE = _names("id displayName mailNickname securityEnabled mailEnabled mail")
MAX_PAGE = 999
MAX_IN_VALUES = 15


class QueryError(Exception):
    """A query option Graph would refuse: 400 with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def option(args: Mapping[str, str], name: str) -> str | None:
    """A query option given as ``$name`` or ``name`` (Graph accepts both)."""
    value = args.get(f"${name}")
    return value if value is not None else args.get(name)


def parse_select(
    raw: str | None, allowed: frozenset[str], type_name: str, extra: frozenset[str] = frozenset()
) -> tuple[str, ...] | None:
    """The selected property names (``id`` first), or None when no $select was given."""
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in allowed and name not in extra and not name.startswith("extension_"):
            raise QueryError(
                "BadRequest",
                f"Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.",
            )
    return ("id", *dict.fromkeys(n for n in names if n != "id"))


def parse_top(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        top = int(raw)
    except ValueError:
        raise QueryError("BadRequest", f"Invalid page size specified: '{raw}'.") from None
    if not 1 <= top <= MAX_PAGE:
        raise QueryError(
            "Request_BadRequest",
            f"Invalid page size specified: '{raw}'. Must be between 1 and 999 inclusive.",
        )
    return top


_EXPAND = re.compile(r"^\s*manager\s*(?:\(\s*\$?select\s*=\s*([A-Za-z0-9_,\s]+)\))?\s*$")


def parse_expand(raw: str | None) -> tuple[str, ...] | None:
    """The manager properties to expand (``$expand=manager($select=...)``), or None."""
    if raw is None:
        return None
    match = _EXPAND.match(raw)
    if match is None:
        raise QueryError("BadRequest", f"Parsing OData Select and Expand failed: unsupported $expand clause '{raw}'.")
    if match.group(1) is None:
        return USER_DEFAULT
    return parse_select(match.group(1), USER_PROPERTIES, "user") or ("id",)


_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<word>[A-Za-z_][A-Za-z0-9_./]*)|(?P<num>-?\d+)|(?P<sym>[(),]))")


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise QueryError("BadRequest", f"Invalid filter clause: syntax error at position {pos} in '{text}'.")
        pos = match.end()
        if match.group("str") is not None:
            out.append(("lit", match.group("str")[1:-1].replace("''", "'")))
        elif match.group("num") is not None:
            out.append(("lit", int(match.group("num"))))
        elif match.group("sym") is not None:
            out.append(("sym", match.group("sym")))
        else:
            word = match.group("word")
            literal = {"true": True, "false": False, "null": None}
            out.append(("lit", literal[word]) if word in literal else ("word", word))
    return out


@dataclass(frozen=True, slots=True)
class _Clause:
    prop: str
    op: str  # eq | ne | in | startswith
    values: tuple[Any, ...]


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def parse_filter(
    raw: str | None, filterable: frozenset[str], resource: str
) -> Callable[[Mapping[str, Any]], bool] | None:
    """A predicate for ``prop eq|ne lit``, ``prop in (lit, ...)`` and ``startswith(prop, 'x')``
    clauses joined by ``and``; None when no $filter was given. String comparison ignores case."""
    if raw is None:
        return None
    tokens = _tokens(raw)
    clauses: list[_Clause] = []
    pos = 0

    def take(kind: str, value: Any = None) -> Any:
        nonlocal pos
        if pos >= len(tokens) or tokens[pos][0] != kind or (value is not None and tokens[pos][1] != value):
            raise QueryError("BadRequest", f"Invalid filter clause: unexpected end or token in '{raw}'.")
        pos += 1
        return tokens[pos - 1][1]

    while True:
        word = take("word")
        if word == "startswith":
            take("sym", "(")
            prop = take("word")
            take("sym", ",")
            clause = _Clause(prop, "startswith", (take("lit"),))
            take("sym", ")")
        else:
            prop, op = word, take("word")
            if op in ("eq", "ne"):
                clause = _Clause(prop, op, (take("lit"),))
            elif op == "in":
                take("sym", "(")
                values = [take("lit")]
                while pos < len(tokens) and tokens[pos] == ("sym", ","):
                    pos += 1
                    values.append(take("lit"))
                take("sym", ")")
                if len(values) > MAX_IN_VALUES:
                    raise QueryError(
                        "Request_UnsupportedQuery",
                        f"Too many child clauses specified in search filter expression containing 'OR' "
                        f"operators: {len(values)}. Max allowed: {MAX_IN_VALUES}.",
                    )
                clause = _Clause(prop, "in", tuple(values))
            else:
                raise QueryError("BadRequest", f"Invalid filter clause: unsupported operator '{op}'.")
        if clause.prop not in filterable:
            raise QueryError(
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause specified for property '{clause.prop}' "
                f"of resource '{resource}'.",
            )
        clauses.append(clause)
        if pos == len(tokens):
            break
        take("word", "and")

    def matches(obj: Mapping[str, Any]) -> bool:
        for clause in clauses:
            actual = _norm(obj.get(clause.prop))
            wanted = [_norm(v) for v in clause.values]
            if clause.op == "eq" and actual != wanted[0]:
                return False
            if clause.op == "ne" and actual == wanted[0]:
                return False
            if clause.op == "in" and actual not in wanted:
                return False
            if clause.op == "startswith" and not (isinstance(actual, str) and actual.startswith(wanted[0])):
                return False
        return True

    return matches


def project(obj: Mapping[str, Any], select: tuple[str, ...], collections: frozenset[str]) -> dict[str, Any]:
    """Graph's answer for an object with $select: every selected property, null (or []) when unset."""
    out: dict[str, Any] = {}
    for name in select:
        value = obj.get(name)
        out[name] = ([] if name in collections else None) if value is None else value
    return out
