"""Scoping filters: each operator with null, empty, unicode and case; OR of ANDs; group name filters."""

from __future__ import annotations

from typing import Any

import pytest

from idsync.config import ScopeSettings
from idsync.scope import Decision, Scope, build_scope, normalize_operator


def scope(**settings: Any) -> Scope:
    return build_scope(ScopeSettings.model_validate({"mode": "all", **settings}))


def one_clause(attribute: str, operator: str, value: Any = None) -> Scope:
    clause: dict[str, Any] = {"attribute": attribute, "operator": operator}
    if value is not None:
        clause["value"] = value
    return scope(user_filters=[[clause]])


# (operator, value, attribute value, in scope)
OPERATOR_CASES: list[tuple[str, Any, Any, bool]] = [
    ("EQUALS", "Sales", "Sales", True),
    ("EQUALS", "Sales", "sales", False),  # case-sensitive, as in Entra
    ("EQUALS", "Sales", None, False),
    ("EQUALS", "Sales", "", False),
    ("EQUALS", "Zoë", "Zoë", True),
    ("EQUALS", "Zoë", "Zoe", False),
    ("EQUALS", 42, "42", True),
    ("NOT EQUALS", "Sales", "Marketing", True),
    ("NOT EQUALS", "Sales", "Sales", False),
    ("NOT EQUALS", "Sales", "SALES", True),
    ("NOT EQUALS", "Sales", None, False),  # null is false for every operator but IS NULL
    ("NOT EQUALS", "Sales", "", False),
    ("IS TRUE", None, True, True),
    ("IS TRUE", None, False, False),
    ("IS TRUE", None, "true", True),  # extension attributes hold booleans as text
    ("IS TRUE", None, "TRUE", True),
    ("IS TRUE", None, None, False),
    ("IS FALSE", None, False, True),
    ("IS FALSE", None, True, False),
    ("IS FALSE", None, "False", True),
    ("IS FALSE", None, None, False),  # null is not false
    ("IS NULL", None, None, True),
    ("IS NULL", None, "", True),  # Entra: empty
    ("IS NULL", None, "x", False),
    ("IS NOT NULL", None, "x", True),
    ("IS NOT NULL", None, "", False),
    ("IS NOT NULL", None, None, False),
    ("REGEX MATCH", r".*@contoso\.com$", "ada@contoso.com", True),
    ("REGEX MATCH", r".*@contoso\.com$", "ada@fabrikam.com", False),
    ("REGEX MATCH", "([1-9][0-9])", "ab42cd", True),  # a search, like .NET's Regex.IsMatch
    ("REGEX MATCH", "^sales$", "Sales", False),  # case-sensitive
    ("REGEX MATCH", "(?i)^sales$", "Sales", True),
    ("REGEX MATCH", "^Zo.$", "Zoë", True),
    ("REGEX MATCH", "(?<dept>^S)", "Sales", True),  # .NET named groups are accepted
    ("REGEX MATCH", ".*", None, False),
    ("NOT REGEX MATCH", r".*@contoso\.com$", "ada@fabrikam.com", True),
    ("NOT REGEX MATCH", r".*@contoso\.com$", "ada@contoso.com", False),
    ("NOT REGEX MATCH", "x", None, False),  # documented by Entra: false when null / empty
    ("NOT REGEX MATCH", "x", "", False),
    ("Greater_Than", 1000000, "1500000", True),
    ("Greater_Than", 1000000, "1000000", False),
    ("Greater_Than", 1000000, 1000001, True),
    ("Greater_Than", 10, "abc", False),  # not an integer: false
    ("Greater_Than", 10, "10.5", False),
    ("Greater_Than", 10, None, False),
    ("Greater_Than", 10, True, False),
    ("Greater_Than_OR_EQUALS", 10, "10", True),
    ("Greater_Than_OR_EQUALS", 10, "9", False),
    ("Less_Than", "2000000", "1999999", True),
    ("Less_Than", 0, "-1", True),
    ("Less_Than", 5, "5", False),
    ("Less_Than_OR_EQUALS", 5, "5", True),
    ("Less_Than_OR_EQUALS", 5, " 5 ", True),
    ("Less_Than_OR_EQUALS", 5, "\u0665", False),  # integers are written in ASCII digits, as .NET parses them
    ("Includes", "Eng", "Engineering", True),
    ("Includes", "eng", "Engineering", False),  # case-sensitive
    ("Includes", "ü", "Müller", True),
    ("Includes", "x", None, False),
    ("ENDS_WITH", ".com", "contoso.com", True),
    ("ENDS_WITH", ".com", "contoso.org", False),
    ("ENDS_WITH", ".com", None, False),
    ("IS IN", "Sales, Marketing ,R&D", "Marketing", True),  # comma-separated, trimmed
    ("IS IN", ["Sales", "Marketing"], "Sales", True),
    ("IS IN", ["Sales", "Marketing"], "sales", False),
    ("IS IN", ["Sales"], None, False),
    ("IS IN", [1, 2, 3], "2", True),
    ("IS NOT IN", ["Sales", "Marketing"], "R&D", True),
    ("IS NOT IN", ["Sales", "Marketing"], "Sales", False),
    ("IS NOT IN", ["Sales"], None, False),
    ("IS NOT IN", ["Sales"], "", False),
]


@pytest.mark.parametrize(("operator", "value", "attribute", "in_scope"), OPERATOR_CASES)
def test_each_operator(operator: str, value: Any, attribute: Any, in_scope: bool) -> None:
    # Given one filter with one clause on the department / When a user is scoped
    decision = one_clause("department", operator, value).user({"department": attribute})
    # Then the clause decides
    assert decision.in_scope is in_scope, decision.reason


def test_a_missing_attribute_is_null() -> None:
    assert one_clause("department", "IS NULL").user({}).in_scope is True
    assert one_clause("department", "NOT EQUALS", "Sales").user({}).in_scope is False


@pytest.mark.parametrize("spelling", ["Greater_Than", "GREATER_THAN", "greater than", "Greater  Than", "greater_than"])
def test_operator_names_are_case_insensitive(spelling: str) -> None:
    assert normalize_operator(spelling) == "Greater_Than"
    assert one_clause("employeeId", spelling, 5).user({"employeeId": "6"}).in_scope is True


def test_nested_and_extension_attributes() -> None:
    subject = scope(
        user_filters=[
            [
                {
                    "attribute": "onPremisesExtensionAttributes.extensionAttribute1",
                    "operator": "EQUALS",
                    "value": "aws",
                },
                {"attribute": "employeeOrgData.division", "operator": "IS NOT NULL"},
                {"attribute": "extension_0123456789abcdef0123456789abcdef_badge", "operator": "IS TRUE"},
            ]
        ]
    )
    user = {
        "onPremisesExtensionAttributes": {"extensionAttribute1": "aws"},
        "employeeOrgData": {"division": "R&D"},
        "extension_0123456789abcdef0123456789abcdef_badge": True,
    }
    assert subject.user(user).in_scope is True
    assert subject.user({**user, "employeeOrgData": None}).in_scope is False
    # the Graph properties the filters need are added to the $select
    assert subject.user_properties == {
        "onPremisesExtensionAttributes",
        "employeeOrgData",
        "extension_0123456789abcdef0123456789abcdef_badge",
    }


# --------------------------------------------------------------------------- OR of ANDs, and reasons

SALES_OR_ENGINEERS = [
    [
        {"attribute": "department", "operator": "EQUALS", "value": "Sales"},
        {"attribute": "accountEnabled", "operator": "IS TRUE"},
    ],
    [{"attribute": "jobTitle", "operator": "Includes", "value": "Engineer"}],
]


def test_no_filters_put_everything_in_scope() -> None:
    subject = scope()
    assert subject.user({}) == Decision(True, "no user scoping filters: every user is in scope")
    assert subject.group({"displayName": "x"}) == Decision(True, "no group scoping filters: every group is in scope")
    assert subject.user_properties == frozenset()
    assert subject.group_properties == frozenset()


def test_clauses_are_anded_and_filters_ored() -> None:
    subject = scope(user_filters=SALES_OR_ENGINEERS)
    # all clauses of filter 1
    assert subject.user({"department": "Sales", "accountEnabled": True}) == Decision(
        True, "user filter 1 matched: department EQUALS 'Sales' AND accountEnabled IS TRUE"
    )
    # filter 2 alone
    assert subject.user({"jobTitle": "Software Engineer", "accountEnabled": False}) == Decision(
        True, "user filter 2 matched: jobTitle Includes 'Engineer'"
    )
    # one clause of filter 1 only, and not filter 2
    assert subject.user({"department": "Sales", "accountEnabled": False, "jobTitle": "Rep"}) == Decision(
        False,
        "user filter 1 clause 2: accountEnabled IS TRUE is false; "
        "user filter 2 clause 1: jobTitle Includes 'Engineer' is false",
    )
    # neither, with nulls named
    assert subject.user({"accountEnabled": True}) == Decision(
        False,
        "user filter 1 clause 1: department EQUALS 'Sales' is false (department is null); "
        "user filter 2 clause 1: jobTitle Includes 'Engineer' is false (jobTitle is null)",
    )
    assert subject.user_properties == {"department", "accountEnabled", "jobTitle"}


def test_reason_shows_numeric_and_list_values() -> None:
    subject = scope(
        user_filters=[
            [
                {"attribute": "employeeId", "operator": "greater_than", "value": "1000"},
                {"attribute": "country", "operator": "IS IN", "value": ["FR", "DE"]},
            ]
        ]
    )
    assert subject.user({"employeeId": "5", "country": "FR"}).reason == (
        "user filter 1 clause 1: employeeId Greater_Than 1000 is false"
    )
    assert subject.user({"employeeId": "5000", "country": "UK"}).reason == (
        "user filter 1 clause 2: country IS IN ['FR', 'DE'] is false"
    )


def test_group_filters_read_group_properties() -> None:
    subject = scope(group_filters=[[{"attribute": "securityEnabled", "operator": "IS TRUE"}]])
    assert subject.group({"securityEnabled": True}).in_scope is True
    assert subject.group({"securityEnabled": False}) == Decision(
        False, "group filter 1 clause 1: securityEnabled IS TRUE is false"
    )
    assert subject.group_properties == {"securityEnabled"}
    # user filters leave groups alone and the other way round
    assert subject.user({}).in_scope is True


# --------------------------------------------------------------------------- group names


def test_group_name_include_exact_and_regex() -> None:
    subject = scope(group_name_include=["Finance", "re:^AWS-"])
    assert subject.group({"displayName": "AWS-Admins"}) == Decision(
        True,
        "group name 'AWS-Admins' matches group_name_include entry 're:^AWS-'; "
        "no group scoping filters: every group is in scope",
    )
    # exact names compare case-insensitively, regular expressions as written
    assert subject.group({"displayName": "FINANCE"}).in_scope is True
    assert subject.group({"displayName": "aws-admins"}) == Decision(
        False, "group name 'aws-admins' matches no group_name_include entry"
    )
    assert subject.group({"displayName": "Finance Team"}).in_scope is False
    assert subject.group_properties == {"displayName"}


def test_group_name_exclude_wins_over_include() -> None:
    subject = scope(group_name_include=["re:^AWS-"], group_name_exclude=["re:-Temp$", "aws-legacy"])
    assert subject.group({"displayName": "AWS-Dev-Temp"}) == Decision(
        False, "group name 'AWS-Dev-Temp' matches group_name_exclude entry 're:-Temp$'"
    )
    assert subject.group({"displayName": "AWS-Legacy"}) == Decision(
        False, "group name 'AWS-Legacy' matches group_name_exclude entry 'aws-legacy'"
    )
    assert subject.group({"displayName": "AWS-Prod"}).in_scope is True


def test_exclude_alone_keeps_everything_else() -> None:
    subject = scope(group_name_exclude=["Ünïcödé Group"])
    assert subject.group({"displayName": "ünïcödé group"}).in_scope is False
    assert subject.group({"displayName": "Other"}).in_scope is True


def test_a_group_without_a_name_fails_the_name_filters() -> None:
    subject = scope(group_name_exclude=["x"])
    assert subject.group({"id": "g"}) == Decision(False, "group has no displayName for the group name filters")


def test_name_filters_and_group_filters_combine() -> None:
    subject = scope(
        group_name_include=["re:^AWS-"],
        group_filters=[[{"attribute": "description", "operator": "NOT EQUALS", "value": "retired"}]],
    )
    assert subject.group({"displayName": "AWS-A", "description": "live"}).in_scope is True
    assert subject.group({"displayName": "AWS-A", "description": "retired"}) == Decision(
        False, "group filter 1 clause 1: description NOT EQUALS 'retired' is false"
    )
    assert subject.group_properties == {"displayName", "description"}


# --------------------------------------------------------------------------- fingerprint


def test_the_fingerprint_changes_when_filters_change() -> None:
    base = scope(user_filters=SALES_OR_ENGINEERS).fingerprint
    # Given the same filters, spelled differently / Then the same fingerprint
    respelled = [[dict(c, operator=c["operator"].lower()) for c in f] for f in SALES_OR_ENGINEERS]
    assert scope(user_filters=respelled).fingerprint == base
    # Given any change in what decides scope / Then a new fingerprint
    assert scope(user_filters=SALES_OR_ENGINEERS[:1]).fingerprint != base
    assert scope(user_filters=SALES_OR_ENGINEERS, group_name_exclude=["x"]).fingerprint != base
    assert scope(user_filters=SALES_OR_ENGINEERS, mode="assigned", service_principal_id="sp").fingerprint != base
    # skipping out-of-scope deletions changes what happens, not who is in scope
    assert scope(user_filters=SALES_OR_ENGINEERS, skip_out_of_scope_deletions=True).fingerprint == base
