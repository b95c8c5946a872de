"""`mapping`: map and scope 100,000 users with the default mapping, five expressions and three filters."""

from __future__ import annotations

import time
from typing import Any

from idsync.config import MappingSettings, ScopeSettings
from idsync.mapping import build_mappers
from idsync.model import User
from idsync.scope import build_scope

USERS = 100_000
EXPRESSIONS = [
    {"target": "displayName", "expression": 'Join(" ", [givenName], [surname])'},
    {
        "target": "timezone",
        "expression": 'Switch([usageLocation], "UTC", "FR", "Europe/Paris", "US", "America/New_York")',
    },
    {"target": "title", "expression": "ToUpper([jobTitle])"},
    {
        "target": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:organization",
        "expression": 'Coalesce([companyName], "Contoso")',
    },
    {"target": "name.formatted", "expression": 'NormalizeDiacritics(Join(" ", [givenName], [surname]))'},
]
FILTERS = [
    [
        {"attribute": "accountEnabled", "operator": "IS TRUE"},
        {"attribute": "department", "operator": "IS IN", "value": "Sales,R&D,Ops,IT"},
    ],
    [{"attribute": "userPrincipalName", "operator": "REGEX MATCH", "value": r".*@contoso\.com$"}],
    [{"attribute": "employeeId", "operator": "Greater_Than", "value": 1000}],
]


def users(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"00000000-0000-4000-8000-{i:012d}",
            "userPrincipalName": f"user{i}@contoso.com",
            "displayName": f"User {i}",
            "givenName": "Zoë" if i % 3 else "Ada",
            "surname": f"Lovelace{i}",
            "mail": f"user{i}@contoso.com",
            "accountEnabled": i % 10 != 0,
            "jobTitle": "Engineer",
            "department": ["Sales", "R&D", "Ops", "Finance"][i % 4],
            "employeeId": str(i),
            "mobilePhone": None,
            "businessPhones": ["+1 425 555 0100"],
            "streetAddress": "1 Main St",
            "city": "Redmond",
            "state": "WA",
            "postalCode": "98052",
            "country": "US",
            "preferredLanguage": "en-US",
            "usageLocation": "US",
            "companyName": None,
            "manager": {"id": "00000000-0000-4000-8000-000000000000"},
        }
        for i in range(count)
    ]


def run() -> dict[str, Any]:
    user_mapper, _ = build_mappers(MappingSettings.model_validate({"users": EXPRESSIONS}))
    scope = build_scope(ScopeSettings.model_validate({"mode": "all", "user_filters": FILTERS}))
    people = users(USERS)
    started = time.perf_counter()
    in_scope = mapped = 0
    for person in people:
        if scope.user(person).in_scope:
            in_scope += 1
            mapped += isinstance(user_mapper.map(person), User)
    seconds = time.perf_counter() - started
    return {
        "mapping": {
            "users": USERS,
            "in_scope": in_scope,
            "mapped": mapped,
            "seconds": round(seconds, 3),
            "users_per_second": round(USERS / seconds),
            "target_seconds": 5.0,
        }
    }
