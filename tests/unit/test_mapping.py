"""The attribute mapping: the default AWS mapping attribute by attribute, custom rules, and every
validation rule IAM Identity Center imposes, each with its exact message."""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idsync.config import MappingSettings
from idsync.mapping import (
    ENTERPRISE,
    WORK_EMAIL,
    WORK_PHONE,
    GroupMapper,
    UserMapper,
    build_mappers,
    check_text,
    describe,
)
from idsync.model import ENTERPRISE_EXTENSION, Group, Refusal, User, freeze_doc

ADDRESS = 'addresses[type eq "work"].'

ADA: dict[str, Any] = {
    "id": "6e7b768e-07e2-4810-8459-485f84f8f204",
    "userPrincipalName": "ada.lovelace@contoso.com",
    "accountEnabled": True,
    "displayName": "Ada Lovelace",
    "givenName": "Ada",
    "surname": "Lovelace",
    "mail": "ada@contoso.com",
    "jobTitle": "Analyst",
    "department": "Engines",
    "employeeId": "1815",
    "mobilePhone": "+44 20 7946 0000",
    "businessPhones": ["+44 20 7946 0001"],
    "streetAddress": "12 St James's Square",
    "city": "London",
    "state": "Greater London",
    "postalCode": "SW1Y 4JH",
    "country": "United Kingdom",
    "preferredLanguage": "en-GB",
    "usageLocation": "GB",
    "manager": {"id": "0b1c2d3e-0000-4000-8000-000000000001"},
}


def mappers(**mapping: Any) -> tuple[UserMapper, GroupMapper]:
    return build_mappers(MappingSettings.model_validate(mapping))


@functools.cache
def default_user_mapper() -> UserMapper:
    return mappers()[0]


def refusal_of(user: dict[str, Any], mapper: UserMapper | None = None) -> Refusal:
    result = (mapper or default_user_mapper()).map(user)
    assert isinstance(result, Refusal), result
    return result


def user_of(user: dict[str, Any], mapper: UserMapper | None = None) -> User:
    result = (mapper or default_user_mapper()).map(user)
    assert isinstance(result, User), result
    return result


# --------------------------------------------------------------------------- the default mapping


def test_default_mapping_of_a_full_user() -> None:
    # Given a Graph user with every property the default mapping reads
    # When it is mapped
    user = user_of(ADA)
    # Then every attribute lands where the Identity Store API expects it
    assert user.source_id == ADA["id"]
    assert user.user_name == "ada.lovelace@contoso.com"
    assert user.active is True
    assert user.manager_source_id == "0b1c2d3e-0000-4000-8000-000000000001"
    assert user.doc == {
        "Addresses": [
            {
                "StreetAddress": "12 St James's Square",
                "Locality": "London",
                "Region": "Greater London",
                "PostalCode": "SW1Y 4JH",
                "Country": "United Kingdom",
                "Type": "work",
                "Primary": True,
            }
        ],
        "DisplayName": "Ada Lovelace",
        "Emails": [{"Value": "ada@contoso.com", "Type": "work", "Primary": True}],
        "Extensions": {ENTERPRISE_EXTENSION: {"employeeNumber": "1815", "department": "Engines"}},
        "Locale": "GB",
        "Name": {"GivenName": "Ada", "FamilyName": "Lovelace", "Formatted": "Ada Lovelace"},
        "PhoneNumbers": [{"Value": "+44 20 7946 0000", "Type": "work", "Primary": True}],
        "PreferredLanguage": "en-GB",
        "Title": "Analyst",
    }
    # the manager is a reference the engine resolves; it never sits in the document
    assert "manager" not in str(user.doc).lower()


def test_every_attribute_of_the_aws_table_can_be_mapped() -> None:
    # Given rules for the table's attributes the default mapping leaves empty
    user_mapper, _ = mappers(
        users=[
            {"target": "timezone", "constant": "Europe/London"},
            {"target": ENTERPRISE + "division", "source": "employeeOrgData.division"},
            {"target": ENTERPRISE + "costCenter", "source": "employeeOrgData.costCenter"},
            {"target": "organization", "source": "companyName"},  # the URN may be left out
            {
                "target": ADDRESS + "formatted",
                "expression": 'Join(", ", [streetAddress], [city], [postalCode], [country])',
            },
        ]
    )
    graph_user = {
        **ADA,
        "companyName": "Analytical Engines Ltd",
        "employeeOrgData": {"division": "R&D", "costCenter": "CC-7"},
    }
    # When the user is mapped
    user = user_of(graph_user, user_mapper)
    # Then they land in the document too
    assert user.doc["Timezone"] == "Europe/London"
    assert user.doc["Extensions"] == {
        ENTERPRISE_EXTENSION: {
            "employeeNumber": "1815",
            "department": "Engines",
            "division": "R&D",
            "costCenter": "CC-7",
            "organization": "Analytical Engines Ltd",
        }
    }
    assert user.doc["Addresses"][0]["Formatted"] == "12 St James's Square, London, SW1Y 4JH, United Kingdom"
    assert {"employeeOrgData", "companyName"} <= user_mapper.graph_properties


def test_the_phone_falls_back_to_the_business_phone() -> None:
    user = user_of({**ADA, "mobilePhone": None})
    assert user.doc["PhoneNumbers"] == [{"Value": "+44 20 7946 0001", "Type": "work", "Primary": True}]


def test_a_minimal_user_gets_a_minimal_document() -> None:
    minimal = {"id": "u1", "userPrincipalName": "a@x", "displayName": "A B", "givenName": "A", "surname": "B"}
    user = user_of(minimal)
    assert user.doc == {"DisplayName": "A B", "Name": {"GivenName": "A", "FamilyName": "B", "Formatted": "A B"}}
    assert user.manager_source_id is None
    assert user.active is True


def test_empty_values_are_absent_values() -> None:
    user = user_of({**ADA, "jobTitle": "", "mail": None, "businessPhones": [], "mobilePhone": None, "city": ""})
    assert "Title" not in user.doc
    assert "Emails" not in user.doc
    assert "PhoneNumbers" not in user.doc
    assert "Locality" not in user.doc["Addresses"][0]


def test_documents_are_already_in_freeze_doc_form() -> None:
    user = user_of(ADA)
    assert freeze_doc(user.doc) == user.doc
    assert list(user.doc) == sorted(user.doc)


def test_what_the_default_mapper_selects_and_owns() -> None:
    user_mapper, group_mapper = mappers()
    assert user_mapper.graph_properties == {
        "id",
        "userPrincipalName",
        "accountEnabled",
        "displayName",
        "jobTitle",
        "mail",
        "preferredLanguage",
        "givenName",
        "surname",
        "streetAddress",
        "city",
        "state",
        "postalCode",
        "country",
        "mobilePhone",
        "businessPhones",
        "usageLocation",
        "employeeId",
        "department",
    }
    assert "manager" not in user_mapper.graph_properties  # read through $expand, never $select
    assert "IsSoftDeleted" not in user_mapper.graph_properties
    assert user_mapper.needs_manager is True
    assert user_mapper.managed_attributes == {
        "DisplayName",
        "Title",
        "Emails",
        "PreferredLanguage",
        "Name",
        "Addresses",
        "PhoneNumbers",
        "Locale",
        "Extensions",
    }
    assert user_mapper.create_only_attributes == frozenset()
    assert group_mapper.graph_properties == {"id", "displayName"}


def test_describe_prints_the_effective_mapping() -> None:
    user_mapper, group_mapper = mappers(users=[{"target": "title", "source": "jobTitle", "default": "Staff"}])
    rows = describe(user_mapper)
    assert rows[0] == ("userName", "userPrincipalName", "always")
    assert rows[1] == ("active", 'Switch([IsSoftDeleted], , "False", [accountEnabled], "True", "False")', "always")
    assert ("title", 'jobTitle (default "Staff")', "always") in rows
    assert (
        "externalId",
        "id (kept in idsync's state: the Identity Store API cannot set ExternalIds)",
        "always",
    ) in rows
    assert rows[-1] == (
        ENTERPRISE + "manager",
        "manager (resolved to the manager's IAM Identity Center user id)",
        "always",
    )
    assert [r[0] for r in rows] == [
        "userName",
        "active",
        "displayName",
        "title",
        WORK_EMAIL,
        "preferredLanguage",
        "name.givenName",
        "name.familyName",
        "name.formatted",
        ADDRESS + "streetAddress",
        ADDRESS + "locality",
        ADDRESS + "region",
        ADDRESS + "postalCode",
        ADDRESS + "country",
        WORK_PHONE,
        "externalId",
        "locale",
        ENTERPRISE + "employeeNumber",
        ENTERPRISE + "department",
        ENTERPRISE + "manager",
    ]
    assert describe(group_mapper) == [
        ("displayName", "displayName", "always"),
        ("externalId", "id (kept in idsync's state: the Identity Store API cannot set ExternalIds)", "always"),
    ]


# --------------------------------------------------------------------------- active and manager


@pytest.mark.parametrize(
    ("change", "active"),
    [
        ({}, True),
        ({"accountEnabled": False}, False),
        ({"IsSoftDeleted": True}, False),
        ({"IsSoftDeleted": True, "accountEnabled": True}, False),
        ({"@removed": {"reason": "changed"}}, False),
        ({"accountEnabled": None}, True),
    ],
)
def test_active_follows_account_enabled_and_soft_deletion(change: dict[str, Any], active: bool) -> None:
    assert user_of({**ADA, **change}).active is active


def test_entra_own_active_rule_end_to_end() -> None:
    # Given Entra's original rule, which ignores accountEnabled
    user_mapper, _ = mappers(
        users=[{"target": "active", "expression": 'Switch([IsSoftDeleted], , "False", "True", "True", "False")'}]
    )
    # Then only soft deletion deactivates
    assert user_of({**ADA, "accountEnabled": False}, user_mapper).active is True
    assert user_of({**ADA, "IsSoftDeleted": True}, user_mapper).active is False


def test_active_that_is_not_a_boolean_is_refused() -> None:
    user_mapper, _ = mappers(users=[{"target": "active", "source": "jobTitle"}])
    refusal = refusal_of(ADA, user_mapper)
    assert refusal == Refusal(
        "user", ADA["id"], "ada.lovelace@contoso.com", "active", "must be True or False", "Analyst"
    )


def test_active_takes_a_default_for_a_null_source() -> None:
    user_mapper, _ = mappers(users=[{"target": "active", "source": "accountEnabled", "default": "False"}])
    assert user_of({**ADA, "accountEnabled": None}, user_mapper).active is False
    assert user_of(ADA, user_mapper).active is True


def test_active_can_be_a_constant() -> None:
    user_mapper, _ = mappers(users=[{"target": "active", "constant": False}])
    assert user_of(ADA, user_mapper).active is False


@pytest.mark.parametrize(
    ("manager", "expected"), [({"id": "m-1"}, "m-1"), ("m-2", "m-2"), (None, None), ({}, None), ([], None)]
)
def test_manager_is_the_manager_graph_id(manager: Any, expected: str | None) -> None:
    assert user_of({**ADA, "manager": manager}).manager_source_id == expected


def test_removing_the_manager_rule_stops_expanding_it() -> None:
    user_mapper, _ = mappers(users=[{"target": "manager", "remove": True}])
    assert user_mapper.needs_manager is False
    assert user_of(ADA, user_mapper).manager_source_id is None


# --------------------------------------------------------------------------- custom rules


def test_rules_replace_the_default_rule_of_their_target() -> None:
    user_mapper, _ = mappers(
        users=[
            {"target": "userName", "expression": "ToLower([mail])"},
            {"target": "title", "remove": True},
            {"target": "displayName", "expression": 'Join(", ", [surname], [givenName])'},
        ]
    )
    user = user_of({**ADA, "mail": "Ada@Contoso.com"}, user_mapper)
    assert user.user_name == "ada@contoso.com"
    assert user.doc["DisplayName"] == "Lovelace, Ada"
    assert "Title" not in user.doc
    assert "jobTitle" not in user_mapper.graph_properties


def test_without_defaults_the_rules_are_the_whole_mapping() -> None:
    user_mapper, group_mapper = mappers(
        extend_defaults=False,
        users=[
            {"target": "userName", "source": "userPrincipalName"},
            {"target": "displayName", "source": "displayName"},
            {"target": "name.givenName", "source": "givenName"},
            {"target": "name.familyName", "source": "surname"},
        ],
        groups=[{"target": "displayName", "source": "displayName"}, {"target": "description", "source": "description"}],
    )
    user = user_of(ADA, user_mapper)
    assert user.doc == {"DisplayName": "Ada Lovelace", "Name": {"GivenName": "Ada", "FamilyName": "Lovelace"}}
    assert user.active is True
    assert user.manager_source_id is None
    assert user_mapper.needs_manager is False
    assert group_mapper.map({"id": "g1", "displayName": "Ops", "description": "on call"}) == Group(
        "g1", "Ops", "on call"
    )


def test_a_default_value_fills_a_null_source() -> None:
    user_mapper, _ = mappers(users=[{"target": "title", "source": "jobTitle", "default": "Staff"}])
    assert user_of({**ADA, "jobTitle": None}, user_mapper).doc["Title"] == "Staff"
    assert user_of(ADA, user_mapper).doc["Title"] == "Analyst"


def test_on_create_rules_are_create_only_attributes() -> None:
    user_mapper, _ = mappers(
        users=[
            {"target": "title", "source": "jobTitle", "apply": "on_create"},
            {"target": "name.formatted", "expression": 'Join(" ", [givenName], [surname])', "apply": "on_create"},
        ]
    )
    # Title is fed only by an on_create rule; Name also by rules applied always
    assert user_mapper.create_only_attributes == {"Title"}
    assert user_of(ADA, user_mapper).doc["Title"] == "Analyst"  # still mapped, for the create


def test_the_fingerprint_changes_with_the_mapping() -> None:
    base = mappers()[0].fingerprint
    assert mappers()[0].fingerprint == base
    assert mappers(users=[{"target": "title", "source": "department"}])[0].fingerprint != base
    assert mappers(users=[{"target": "title", "source": "jobTitle", "apply": "on_create"}])[0].fingerprint != base


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("missing", "attribute"),
    [
        ("userPrincipalName", "userName"),
        ("displayName", "displayName"),
        ("givenName", "name.givenName"),
        ("surname", "name.familyName"),
    ],
)
def test_required_attributes(missing: str, attribute: str) -> None:
    # Given a user without one of the four attributes IAM Identity Center requires
    user = {key: value for key, value in ADA.items() if key != missing}
    # When mapped / Then refused, naming the target attribute
    refusal = refusal_of(user)
    assert refusal.attribute == attribute
    assert refusal.rule == "is required by IAM Identity Center"
    assert refusal.value is None
    assert refusal.source_id == ADA["id"]


def test_a_refusal_message_names_the_user_the_attribute_and_the_rule() -> None:
    refusal = refusal_of({**ADA, "givenName": None})
    assert refusal.message == (
        "user ada.lovelace@contoso.com [6e7b768e-07e2-4810-8459-485f84f8f204]: attribute name.givenName: "
        "is required by IAM Identity Center"
    )


def test_a_user_without_upn_is_named_by_display_name() -> None:
    refusal = refusal_of({**ADA, "userPrincipalName": None})
    assert refusal.name == "Ada Lovelace"


def test_a_graph_object_without_id_is_refused() -> None:
    refusal = refusal_of({key: value for key, value in ADA.items() if key != "id"})
    assert (refusal.attribute, refusal.rule, refusal.source_id) == ("id", "has no Graph id", "")


@pytest.mark.parametrize(
    ("character", "name"),
    [
        ("\t", "tab"),
        ("\n", "line feed (new line)"),
        ("\r", "carriage return"),
        ('"', 'double quote (")'),
        ("<", "less-than sign (<)"),
        (">", "greater-than sign (>)"),
        ("|", "vertical bar (|)"),
        (";", "semicolon (;)"),
        (":", "colon (:)"),
        ("%", "percent sign (%)"),
    ],
)
def test_each_forbidden_character(character: str, name: str) -> None:
    # Given a display name holding one forbidden character
    value = f"Ada{character}Lovelace"
    # When mapped / Then refused, naming the character
    refusal = refusal_of({**ADA, "displayName": value})
    assert refusal.attribute == "displayName"
    assert refusal.rule == f"contains a forbidden character: {name}"
    assert refusal.value == value


@pytest.mark.parametrize(
    ("change", "attribute"),
    [
        ({"userPrincipalName": "ada;x@contoso.com"}, "userName"),
        ({"mail": "ada%@contoso.com"}, WORK_EMAIL),
        ({"city": "Lon|don"}, ADDRESS + "locality"),
        ({"mobilePhone": "+44 <20>"}, WORK_PHONE),
        ({"employeeId": "18:15"}, ENTERPRISE + "employeeNumber"),
        ({"surname": "Love\tlace"}, "name.familyName"),
    ],
)
def test_forbidden_characters_in_any_string_attribute(change: dict[str, Any], attribute: str) -> None:
    refusal = refusal_of({**ADA, **change})
    assert refusal.attribute == attribute
    assert refusal.rule.startswith("contains a forbidden character: ")


def test_name_formatted_inherits_the_problem_of_its_sources() -> None:
    # Join(" ", givenName, surname) carries a forbidden character in the surname into name.formatted,
    # but name.familyName comes first in the table, so it is the one named
    refusal = refusal_of({**ADA, "surname": "Love;lace"})
    assert refusal.attribute == "name.familyName"


def test_the_first_failing_rule_in_table_order_is_reported() -> None:
    # Given a user breaking three rules
    user = {**ADA, "displayName": "A<B", "givenName": None, "mail": "x;y"}
    # Then the refusal names the earliest target of the AWS table, every time
    assert refusal_of(user).attribute == "displayName"
    assert refusal_of(user) == refusal_of(dict(reversed(list(user.items()))))


def test_a_multi_valued_phone_is_refused() -> None:
    # Given no mobile phone and two business phones
    refusal = refusal_of({**ADA, "mobilePhone": None, "businessPhones": ["+1 1", "+1 2"]})
    # Then IAM Identity Center's single value is named
    assert refusal.attribute == WORK_PHONE
    assert refusal.rule == "holds 2 values; IAM Identity Center accepts one"
    assert refusal.value == "+1 1, +1 2"


def test_a_multi_valued_email_is_refused() -> None:
    user_mapper, _ = mappers(users=[{"target": WORK_EMAIL, "expression": "Coalesce([mail], [otherMails])"}])
    refusal = refusal_of({**ADA, "mail": None, "otherMails": ["a@x", "b@x", "c@x"]}, user_mapper)
    assert (refusal.attribute, refusal.rule) == (WORK_EMAIL, "holds 3 values; IAM Identity Center accepts one")
    one = user_of({**ADA, "mail": None, "otherMails": ["a@x"]}, user_mapper)
    assert one.doc["Emails"][0]["Value"] == "a@x"


def test_an_object_value_is_refused() -> None:
    refusal = refusal_of({**ADA, "jobTitle": {"en": "Analyst"}})
    assert (refusal.attribute, refusal.rule) == ("title", "holds an object, not a text value")


@pytest.mark.parametrize(
    ("length", "refused"),
    [(128, False), (129, True)],
)
def test_user_name_length(length: int, refused: bool) -> None:
    upn = "a" * (length - len("@x.io")) + "@x.io"
    result = default_user_mapper().map({**ADA, "userPrincipalName": upn})
    if refused:
        assert isinstance(result, Refusal)
        assert result.rule == f"is {length} characters long; IAM Identity Center accepts at most 128"
    else:
        assert isinstance(result, User)
        assert result.user_name == upn


@pytest.mark.parametrize(("length", "refused"), [(1024, False), (1025, True)])
def test_other_string_length(length: int, refused: bool) -> None:
    result = default_user_mapper().map({**ADA, "jobTitle": "é" * length})
    if refused:
        assert isinstance(result, Refusal)
        assert (result.attribute, result.rule) == (
            "title",
            f"is {length} characters long; IAM Identity Center accepts at most 1024",
        )
    else:
        assert isinstance(result, User)


@pytest.mark.parametrize(
    ("upn", "rule"),
    [
        (
            "ada lovelace@contoso.com",
            "contains whitespace (U+0020 SPACE); IAM Identity Center accepts none in a user name",
        ),
        (
            "ada\u00a0lovelace@contoso.com",
            "contains whitespace (U+00A0 NO-BREAK SPACE); IAM Identity Center accepts none in a user name",
        ),
        (
            "ada\u200blovelace@contoso.com",
            "contains a character IAM Identity Center does not accept: U+200B ZERO WIDTH SPACE",
        ),
        ("ada\x00@contoso.com", "contains a character IAM Identity Center does not accept: U+0000 (control character)"),
    ],
)
def test_user_name_characters(upn: str, rule: str) -> None:
    refusal = refusal_of({**ADA, "userPrincipalName": upn})
    assert (refusal.attribute, refusal.rule, refusal.value) == ("userName", rule, upn)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ("Ada\u2028Lovelace", "contains a character IAM Identity Center does not accept: U+2028 LINE SEPARATOR"),
        ("Ada\x7fLovelace", "contains a character IAM Identity Center does not accept: U+007F (control character)"),
        ("Ada\ue000", "contains a character IAM Identity Center does not accept: U+E000 (private-use character)"),
    ],
)
def test_other_string_characters(value: str, rule: str) -> None:
    refusal = refusal_of({**ADA, "displayName": value})
    assert (refusal.attribute, refusal.rule) == ("displayName", rule)


@pytest.mark.parametrize(
    "value",
    ["Zoë Ünal-Şahin", "山田 太郎", "Ada\u00a0Lovelace", "Ada\u3000Lovelace", "José 🚀", "O'Brien (Ops) & Co.", "١٢٣"],
)
def test_unicode_that_iam_identity_center_accepts(value: str) -> None:
    user = user_of({**ADA, "displayName": value})
    assert user.doc["DisplayName"] == value


@pytest.mark.parametrize(
    ("value", "user_name", "expected"),
    [
        ("fine", False, None),
        ("a" * 1025, False, "is 1025 characters long; IAM Identity Center accepts at most 1024"),
        ("a b", True, "contains whitespace (U+0020 SPACE); IAM Identity Center accepts none in a user name"),
        ("a b", False, None),
        ("a:b", True, "contains a forbidden character: colon (:)"),
    ],
)
def test_check_text(value: str, user_name: bool, expected: str | None) -> None:
    limit = 128 if user_name else 1024
    assert check_text(value, limit, user_name) == expected


# --------------------------------------------------------------------------- groups


def test_default_group_mapping() -> None:
    _, group_mapper = mappers()
    group = {"id": "g-1", "displayName": "AWS-Admins", "description": "admins"}
    # description is not in Entra's default group mapping for the AWS app
    assert group_mapper.map(group) == Group("g-1", "AWS-Admins", None)


def test_group_description_can_be_mapped() -> None:
    _, group_mapper = mappers(groups=[{"target": "description", "expression": 'Append([description], " (Entra)")'}])
    assert group_mapper.map({"id": "g-1", "displayName": "Ops", "description": "on call"}) == Group(
        "g-1", "Ops", "on call (Entra)"
    )
    assert "description" in group_mapper.graph_properties


@pytest.mark.parametrize(
    ("group", "attribute", "rule"),
    [
        ({"id": "g-1"}, "displayName", "is required by IAM Identity Center"),
        ({"id": "g-1", "displayName": "A|B"}, "displayName", "contains a forbidden character: vertical bar (|)"),
        (
            {"id": "g-1", "displayName": "x" * 1025},
            "displayName",
            "is 1025 characters long; IAM Identity Center accepts at most 1024",
        ),
        ({"displayName": "no id"}, "id", "has no Graph id"),
    ],
)
def test_group_validation(group: dict[str, Any], attribute: str, rule: str) -> None:
    _, group_mapper = mappers()
    refusal = group_mapper.map(group)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.attribute, refusal.rule) == ("group", attribute, rule)


def test_group_description_is_validated_too() -> None:
    _, group_mapper = mappers(groups=[{"target": "description", "source": "description"}])
    refusal = group_mapper.map({"id": "g-1", "displayName": "Ops", "description": "50% on call"})
    assert isinstance(refusal, Refusal)
    assert refusal.message == (
        "group Ops [g-1]: attribute description (value '50% on call'): contains a forbidden character: percent sign (%)"
    )


# --------------------------------------------------------------------------- robustness

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=5,
)
_USER_KEYS = sorted({*ADA, "IsSoftDeleted", "otherMails", "@removed", "companyName"})


@settings(max_examples=300, deadline=None)
@given(
    obj=st.dictionaries(st.sampled_from(_USER_KEYS), _values)
    | st.fixed_dictionaries({}, optional=dict.fromkeys(_USER_KEYS, _values))
)
def test_mapping_never_raises_and_users_are_valid(obj: dict[str, Any]) -> None:
    # Given any Graph-like user / When it is mapped
    result = default_user_mapper().map(obj)
    # Then it is a User whose every string IAM Identity Center accepts, or a Refusal
    assert isinstance(result, User | Refusal)
    if isinstance(result, User):
        assert freeze_doc(result.doc) == result.doc
        assert check_text(result.user_name, 128, user_name=True) is None
        strings: list[str] = []

        def collect(value: Any) -> None:
            if isinstance(value, str):
                strings.append(value)
            elif isinstance(value, dict):
                for item in value.values():
                    collect(item)
            elif isinstance(value, list):
                for item in value:
                    collect(item)

        collect(dict(result.doc))
        assert all(check_text(s) is None for s in strings)


@settings(max_examples=150, deadline=None)
@given(obj=st.dictionaries(st.sampled_from(["id", "displayName", "description", "mail"]), _values))
def test_group_mapping_never_raises(obj: dict[str, Any]) -> None:
    assert isinstance(_GROUP_MAPPER.map(obj), Group | Refusal)


_GROUP_MAPPER = mappers(groups=[{"target": "description", "source": "description"}])[1]
