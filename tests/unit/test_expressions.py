"""Entra's expression language: parser errors with positions, every function with its edge cases."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idsync.errors import ConfigError
from idsync.expressions import (
    GROUP_CATALOG,
    USER_CATALOG,
    ExpressionError,
    compile_expression,
    translate_regex,
)


def run(expression: str, **user: Any) -> Any:
    """Compile against the user catalog and evaluate on one Graph user."""
    return compile_expression(expression, USER_CATALOG).evaluate(user)


# --------------------------------------------------------------------------- syntax and errors


@pytest.mark.parametrize(
    ("expression", "position", "problem"),
    [
        ('Join(" " [givenName])', 10, "expected ',' or ')', found attribute [givenName]"),
        ("ToLower([mail]", 15, "expected ',' or ')', found end of expression"),
        ("ToLower", 8, "expected '(' after function name ToLower, found end of expression"),
        ("[mail] [surname]", 8, "expected end of expression, found attribute [surname]"),
        ("", 1, "expected an attribute, a string, a number or a function call, found end of expression"),
        ("ToLower(=)", 9, "expected an attribute, a string, a number or a function call, found '='"),
        ('ToLower("abc', 9, "unterminated string: expected a closing '\"'"),
        ("ToLower([mail", 9, "unterminated attribute reference: expected ']'"),
        ("ToLower([])", 9, "empty attribute reference '[]'"),
        ("ToLower(#)", 9, "unexpected character '#'"),
        ("Frobnicate([mail])", 1, "unknown function Frobnicate"),
        ("tolower([mail])", 1, "unknown function tolower; did you mean ToLower? (names are case-sensitive)"),
        ("ToLowr([mail])", 1, "unknown function ToLowr; did you mean ToLower?"),
        ("Left([mail])", 1, "Left takes 2 arguments (source, numChars), found 1"),
        ("Not()", 1, "Not takes 1 argument (source), found 0"),
        ('ToUpper([mail], "en-US", 1)', 1, "ToUpper takes 1 to 2 arguments (source, culture), found 3"),
        (
            'Switch([state], "d", "k")',
            1,
            "Switch takes at least 4 arguments (source, defaultValue, key1, value1, key2, value2, ...), found 3",
        ),
        (
            'Switch([state], "d", "k", "v", "k2")',
            1,
            "Switch takes a source, a default and key/value pairs, found 5 arguments (a key without its value)",
        ),
        ("ToLower([jobTitel])", 9, "unknown Graph user property 'jobTitel'; did you mean 'jobTitle'?"),
        ("[objectId]", 1, "unknown Graph user property 'objectId'; Entra's 'objectId' is Graph's 'id'"),
        (
            "[extensionAttribute3]",
            1,
            "unknown Graph user property 'extensionAttribute3'; Entra's 'extensionAttribute3' is Graph's "
            "'onPremisesExtensionAttributes.extensionAttribute3'",
        ),
        (
            "[GivenName]",
            1,
            "unknown Graph user property 'GivenName'; did you mean 'givenName'? (names are case-sensitive)",
        ),
        (
            "ToLower([manager])",
            9,
            "manager is a reference to another object and cannot be read in an expression; map it directly "
            "(source: manager)",
        ),
        (
            "[employeeOrgData]",
            1,
            "employeeOrgData is an object; name one of its fields, such as employeeOrgData.costCenter, "
            "employeeOrgData.division",
        ),
        (
            'Replace([mail], , "(", , "x", , )',
            19,
            "invalid regular expression '(': missing ), unterminated subpattern at position 0",
        ),
        (
            'Replace([mail], , "(?<a>x)", "b", "y", , )',
            30,
            "regexGroupName 'b' is not a named group of the regexPattern",
        ),
        (
            'Replace([mail], , [surname], , "y", , )',
            19,
            "Replace's regexPattern must be a string constant in double quotes",
        ),
        (
            'Replace([mail], "a", , , , , )',
            1,
            "Replace needs oldValue with replacementValue or template, or regexPattern with replacementValue, "
            "or regexPattern and regexGroupName with replacementAttributeName",
        ),
        ('Replace([mail], "a", "b", , "c", , )', 1, "Replace takes oldValue or regexPattern, not both"),
        (
            'Replace([mail], "a", , , "b")',
            1,
            "Replace takes 7 arguments (source, oldValue, regexPattern, regexGroupName, replacementValue, "
            "replacementAttributeName, template; leave unused ones empty), found 5",
        ),
        ("Mid([mail], 0, 2)", 13, "Mid's start must be at least 1, found 0"),
        ("Mid([mail], 1, -2)", 16, "Mid's length must be at least 0, found -2"),
        ('Left([mail], "x")', 14, "Left's numChars must be an integer, found string 'x'"),
        ("Left([mail], )", 14, "Left's numChars must be an integer, found an empty argument"),
        ("Item([otherMails], 0)", 20, "Item's index must be at least 1, found 0"),
        ('ToUpper([mail], "english!")', 17, "culture 'english!' is not a culture name such as \"en-US\""),
        ('Join(",", [mail]="x")', 17, "a comparison ('=') is only allowed as the condition of IIF"),
        ('IIF("a", [mail]="x", "b")', 16, "a comparison ('=') is only allowed as the condition of IIF"),
    ],
)
def test_errors_name_the_position_and_the_problem(expression: str, position: int, problem: str) -> None:
    # Given a malformed or meaningless expression / When it is compiled
    with pytest.raises(ExpressionError) as caught:
        compile_expression(expression, USER_CATALOG)
    # Then the error says where and what
    assert caught.value.position == position
    assert caught.value.problem == problem
    assert str(caught.value) == f"expression error at position {position}: {problem}"


def test_expression_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="position 1: unknown function Nope"):
        compile_expression("Nope()", USER_CATALOG)


def test_group_catalog_knows_group_properties_only() -> None:
    assert compile_expression("ToUpper([description])", GROUP_CATALOG).evaluate({"description": "ops"}) == "OPS"
    with pytest.raises(ExpressionError, match="unknown Graph group property 'surname'"):
        compile_expression("[surname]", GROUP_CATALOG)


def test_compiled_expression_lists_what_it_reads() -> None:
    compiled = compile_expression(
        'Join(" ", [givenName], [employeeOrgData.division], [IsSoftDeleted], '
        "[onPremisesExtensionAttributes.extensionAttribute7], [extension_0123456789abcdef0123456789abcdef_badge])",
        USER_CATALOG,
    )
    # the virtual IsSoftDeleted is never selected from Graph; nested paths select their parent
    assert compiled.properties == {
        "givenName",
        "employeeOrgData",
        "onPremisesExtensionAttributes",
        "extension_0123456789abcdef0123456789abcdef_badge",
    }
    assert "IsSoftDeleted" in compiled.attributes


def test_string_escapes_follow_entra() -> None:
    assert run(r'"Company name: \"Contoso\""') == 'Company name: "Contoso"'
    assert run(r'"a\\b"') == "a\\b"
    # a backslash before anything else stays, so regular expressions can be written either way
    assert run(r'"\d+"') == r"\d+"


def test_whitespace_and_newlines_between_tokens_are_ignored() -> None:
    assert run('Join( " " ,\n  [givenName] ,\t[surname] )', givenName="Ada", surname="Lovelace") == "Ada Lovelace"


def test_a_bare_attribute_or_constant_is_an_expression() -> None:
    assert run("[givenName]", givenName="Ada") == "Ada"
    assert run('"constant"') == "constant"
    assert run("42") == 42


# --------------------------------------------------------------------------- functions


@pytest.mark.parametrize(
    ("expression", "user", "expected"),
    [
        (
            'Append([userPrincipalName], ".test")',
            {"userPrincipalName": "John.Doe@contoso.com"},
            "John.Doe@contoso.com.test",
        ),
        ('Append([userPrincipalName], ".test")', {}, None),
        ("Append([givenName], [surname])", {"givenName": "Zoë"}, "Zoë"),
        ('Append([otherMails], "!")', {"otherMails": ["a", "b"]}, ["a!", "b!"]),
        ('Append([accountEnabled], "?")', {"accountEnabled": True}, "True?"),
    ],
)
def test_append(expression: str, user: dict[str, Any], expected: Any) -> None:
    assert run(expression, **user) == expected


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"mail": "ada@contoso.com", "userPrincipalName": "ada@upn"}, "ada@contoso.com"),
        ({"mail": None, "userPrincipalName": "ada@upn"}, "ada@upn"),
        ({"mail": "", "userPrincipalName": "ada@upn"}, "ada@upn"),
        ({"otherMails": [], "userPrincipalName": "ada@upn"}, "ada@upn"),
        ({}, "fallback"),
    ],
)
def test_coalesce_takes_the_first_value(user: dict[str, Any], expected: Any) -> None:
    assert run('Coalesce([mail], [otherMails], [userPrincipalName], "fallback")', **user) == expected


def test_coalesce_of_nothing_is_null() -> None:
    assert run("Coalesce([mail], [mobilePhone])") is None


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"givenName": "Ada", "surname": "Lovelace"}, "Ada Lovelace"),
        ({"givenName": "Ada"}, "Ada"),
        ({"givenName": "", "surname": "Lovelace"}, "Lovelace"),
        ({}, None),
        ({"givenName": "山田", "surname": "太郎"}, "山田 太郎"),
    ],
)
def test_join_skips_null_and_empty(user: dict[str, Any], expected: Any) -> None:
    assert run('Join(" ", [givenName], [surname])', **user) == expected


def test_join_flattens_multi_valued_attributes() -> None:
    assert run('Join("; ", [otherMails], [mail])', otherMails=["a@x", "b@x"], mail="c@x") == "a@x; b@x; c@x"
    assert run('Join("", "1000", [id])', id="42") == "100042"


@pytest.mark.parametrize(
    ("expression", "user", "expected"),
    [
        ('Left("John Doe", 3)', {}, "Joh"),
        ('Left("John Doe", 0)', {}, ""),
        ('Left("John Doe", -1)', {}, "John Doe"),
        ('Left("Jo", 5)', {}, "Jo"),
        ("Left([givenName], 2)", {}, ""),  # Entra: Left of null is ""
        ("Left([givenName], 2)", {"givenName": "Éloïse"}, "Él"),
        ('Left([givenName], "3")', {"givenName": "Ada Lovelace"}, "Ada"),
        ("Mid([givenName], 1, 3)", {"givenName": "John Doe"}, "Joh"),
        ("Mid([givenName], 6, 10)", {"givenName": "John Doe"}, "Doe"),
        ("Mid([givenName], 20, 3)", {"givenName": "John Doe"}, ""),
        ("Mid([givenName], 2, 0)", {"givenName": "John Doe"}, ""),
        ("Mid([givenName], 1, 1)", {}, None),
        ("Mid([givenName], 2, 2)", {"givenName": "Zoë"}, "oë"),
    ],
)
def test_left_and_mid(expression: str, user: dict[str, Any], expected: Any) -> None:
    assert run(expression, **user) == expected


@pytest.mark.parametrize(
    ("expression", "user", "expected"),
    [
        ("ToLower([mail])", {"mail": "Ada@Contoso.COM"}, "ada@contoso.com"),
        ("ToUpper([mail])", {"mail": "Ada@Contoso.com"}, "ADA@CONTOSO.COM"),
        ("ToLower([mail])", {}, None),
        ("ToLower([surname])", {"surname": "ÉCOLE"}, "école"),
        # .NET maps case one character to one: "ß" has no single upper-case letter and stays
        ("ToUpper([streetAddress])", {"streetAddress": "Hauptstraße"}, "HAUPTSTRAßE"),
        ('ToUpper([city], "tr-TR")', {"city": "istanbul"}, "İSTANBUL"),
        ('ToLower([city], "tr-TR")', {"city": "ISPARTA"}, "\u0131sparta"),
        ('ToUpper([city], "en-US")', {"city": "istanbul"}, "ISTANBUL"),
        ("ToLower([accountEnabled])", {"accountEnabled": True}, "true"),
        ("ToLower([otherMails])", {"otherMails": ["A@X", "B@X"]}, ["a@x", "b@x"]),
    ],
)
def test_case_conversion(expression: str, user: dict[str, Any], expected: Any) -> None:
    assert run(expression, **user) == expected


@pytest.mark.parametrize(
    ("expression", "user", "expected"),
    [
        # oldValue + replacementValue
        (
            'Replace([jobTitle], "Product Developer", , , "Software Engineer", , )',
            {"jobTitle": "Product Developer"},
            "Software Engineer",
        ),
        ('Replace([mail], "@contoso.com", , , "", , )', {"mail": "john.doe@contoso.com"}, "john.doe"),
        ('Replace([jobTitle], "dev", , , "X", , )', {"jobTitle": "Dev dev"}, "Dev X"),  # case-sensitive
        ('Replace([jobTitle], "a", , , "b", , )', {}, None),
        # oldValue + template
        (
            'Replace([mailNickname], "<username>", , , , , "<username>@contoso.com")',
            {"mailNickname": "jsmith"},
            "jsmith@contoso.com",
        ),
        # regexPattern + replacementValue with a named group
        (
            r'Replace([mobilePhone], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", , "${phoneNumber}", , )',
            {"mobilePhone": "+91 9998887777"},
            "9998887777",
        ),
        (r'Replace([mobilePhone], , "[()\\s-]+", , "", , )', {"mobilePhone": "+1 (999) 888-7777"}, "+19998887777"),
        (r'Replace([mailNickname], , "[a-zA-Z_]*", , "", , )', {"mailNickname": "john_doe72"}, "72"),
        (
            r'Replace([mailNickname], , "(\\w+)_(\\w+)", , "$2.$1 $$ $&", , )',
            {"mailNickname": "john_doe"},
            "doe.john $ john_doe",
        ),
        # regexPattern + regexGroupName + replacementValue
        (
            r'Replace([streetAddress], , "(?<streetNumber>^\\d*)", "streetNumber", "888", , )',
            {"streetAddress": "545 Tremont Street"},
            "888 Tremont Street",
        ),
        (
            'Replace([userPrincipalName], , "(?<Suffix>@(.)*)", "Suffix", "", , )',
            {"userPrincipalName": "jsmith@contoso.com"},
            "jsmith",
        ),
        # regexPattern + regexGroupName + replacementAttributeName: a fallback for an empty source
        (
            r'Replace([faxNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", "phoneNumber", , [mobilePhone], )',
            {"faxNumber": "", "mobilePhone": "+91 8887779999"},
            "8887779999",
        ),
        (
            r'Replace([faxNumber], , "\\+(?<isdCode>\\d* )(?<phoneNumber>\\d{10})", "phoneNumber", , [mobilePhone], )',
            {"faxNumber": "+1 555", "mobilePhone": "+91 8887779999"},
            "+1 555",
        ),
        ('Replace([surname], "ü", , , "ue", , )', {"surname": "Müller"}, "Mueller"),
        # a reference to a group the pattern does not have stays as written, as in .NET
        (r'Replace([mailNickname], , "(\\w+)", , "<$9>", , )', {"mailNickname": "ab"}, "<$9>"),
    ],
)
def test_replace_forms(expression: str, user: dict[str, Any], expected: Any) -> None:
    assert run(expression, **user) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("a b  c", "abc"), ("Ada\u00a0Lovelace", "Ada\u00a0Lovelace"), ("", ""), (None, None)],
)
def test_strip_spaces_removes_only_the_space_character(value: str | None, expected: str | None) -> None:
    assert run("StripSpaces([displayName])", displayName=value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Zoë", "Zoe"),
        ("Ærøskøbing", "AEroeskoebing"),
        ("Straße", "Strasse"),
        ("Łódź", "Lodz"),
        ("Ångström Çelik", "Angstrom Celik"),
        ("plain ascii", "plain ascii"),
        ("山田", "山田"),
        (None, None),
    ],
)
def test_normalize_diacritics(value: str | None, expected: str | None) -> None:
    assert run("NormalizeDiacritics([surname])", surname=value) == expected


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({"state": "QLD"}, "Australia/Brisbane"),
        ({"state": "NSW"}, "Australia/Sydney"),
        ({"state": "WA"}, "Australia/Sydney"),  # no key matches: the default
        ({"state": "qld"}, "Australia/Sydney"),  # keys are case-sensitive
        ({}, "Australia/Sydney"),
    ],
)
def test_switch(user: dict[str, Any], expected: str) -> None:
    expression = 'Switch([state], "Australia/Sydney", "NSW", "Australia/Sydney", "QLD", "Australia/Brisbane")'
    assert run(expression, **user) == expected


def test_switch_matches_a_null_source_with_the_empty_key() -> None:
    expression = 'Switch([jobTitle], "Default", "true", "1", "", "0")'
    assert run(expression) == "0"
    assert run(expression, jobTitle="true") == "1"
    assert run(expression, jobTitle="x") == "Default"


def test_switch_with_an_empty_default_gives_null() -> None:
    assert run('Switch([state], , "A", "1")', state="B") is None


def test_switch_with_computed_keys() -> None:
    expression = 'Switch([mail], "other", [userPrincipalName], "same")'
    assert run(expression, mail="a@x", userPrincipalName="a@x") == "same"
    assert run(expression, mail="a@x", userPrincipalName="b@x") == "other"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, "True"),  # IsSoftDeleted is false unless Graph or the engine says otherwise
        ({"IsSoftDeleted": False}, "True"),
        ({"IsSoftDeleted": True}, "False"),
        ({"@removed": {"reason": "changed"}}, "False"),
        ({"deletedDateTime": "2024-01-01T00:00:00Z"}, "False"),
    ],
)
def test_entra_soft_delete_rule(user: dict[str, Any], expected: str) -> None:
    # Given Entra's own active rule for the AWS app
    expression = 'Switch([IsSoftDeleted], , "False", "True", "True", "False")'
    # Then a soft-deleted user maps to "False" and everyone else to "True"
    assert run(expression, **user) == expected


@pytest.mark.parametrize(
    ("expression", "user", "expected"),
    [
        ('Not("True")', {}, False),
        ('Not("False")', {}, True),
        ("Not([accountEnabled])", {"accountEnabled": True}, False),
        ("Not([accountEnabled])", {}, True),  # Entra: anything but True gives True
        ("IsNull([mail])", {}, True),
        ("IsNull([mail])", {"mail": ""}, False),
        ("IsNull([otherMails])", {"otherMails": []}, True),
        ("IsNullOrEmpty([mail])", {"mail": ""}, True),
        ("IsNullOrEmpty([mail])", {"mail": "a"}, False),
        ("IsPresent([mail])", {"mail": "a"}, True),
        ("IsPresent([mail])", {"mail": ""}, False),
        ("Item([otherMails], 2)", {"otherMails": ["a", "b", "c"]}, "b"),
        ("Item([otherMails], 4)", {"otherMails": ["a", "b", "c"]}, None),
        ("Item([otherMails], 1)", {}, None),
        ("Item([mail], 1)", {"mail": "a"}, "a"),
        ('IIF([country]="USA", [country], [department])', {"country": "USA", "department": "R&D"}, "USA"),
        ('IIF([country]="USA", [country], [department])', {"country": "UK", "department": "R&D"}, "R&D"),
        ('IIF([country]<>"USA", "abroad", "home")', {"country": "UK"}, "abroad"),
        ('IIF([employeeId]>"999", "big", "small")', {"employeeId": "1000"}, "big"),  # integers compare as numbers
        ('IIF([employeeId]<=5, "small", "big")', {"employeeId": "5"}, "small"),
        ('IIF([city]>="M", "second half", "first half")', {"city": "Oslo"}, "second half"),
        ('IIF([country]="USA", "yes", "no")', {}, "no"),  # Entra: a condition on null fails
        ('IIF([accountEnabled], "on", "off")', {"accountEnabled": True}, "on"),
        ('Word("The quick brown fox", 3, " ")', {}, "brown"),
        ('Word("This,string!has&many separators", 3, ",!&#")', {}, "has"),
        ('Word("one two", 5, " ")', {}, ""),
        ('Word([jobTitle], 1, " ")', {}, ""),
    ],
)
def test_logic_and_lookup_functions(expression: str, user: dict[str, Any], expected: Any) -> None:
    assert run(expression, **user) == expected


def test_nested_functions_as_in_entra_examples() -> None:
    expression = (
        'ToLower(Join("@", NormalizeDiacritics(StripSpaces(Join(".", [givenName], [surname]))), "contoso.com"))'
    )
    assert run(expression, givenName="Zoë Ann", surname="Müller") == "zoeann.muller@contoso.com"
    assert run("Append(Mid([givenName], 1, 3), Mid([surname], 1, 5))", givenName="John", surname="Doe") == "JohDoe"


# --------------------------------------------------------------------------- .NET regular expressions


@pytest.mark.parametrize(
    ("dotnet", "python"),
    [
        ("(?<name>x)", "(?P<name>x)"),
        ("(?'name'x)", "(?P<name>x)"),
        (r"(?<a>x)\k<a>", r"(?P<a>x)(?P=a)"),
        ("(?<=a)b(?<!c)", "(?<=a)b(?<!c)"),  # look-behinds are the same in both
        (r"\(?<x", r"\(?<x"),  # an escaped parenthesis is not a group
        ("[(?<]x", "[(?<]x"),  # nor is one inside a character class
        ("[]a](?<n>b)", "[]a](?P<n>b)"),
    ],
)
def test_translate_regex(dotnet: str, python: str) -> None:
    assert translate_regex(dotnet) == python


# --------------------------------------------------------------------------- robustness

_graph_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

_EXPRESSIONS = [
    'Switch([IsSoftDeleted], , "False", [accountEnabled], "True", "False")',
    'Join(" ", [givenName], [surname], [otherMails])',
    "Coalesce([mobilePhone], [businessPhones])",
    'ToUpper(Replace([mail], , "(?<local>[^@]*)@.*", , "${local}", , ), "tr-TR")',
    "Append(Left([givenName], 1), Mid([surname], 2, 3))",
    "NormalizeDiacritics(StripSpaces([displayName]))",
    'IIF([employeeId]>=10, Item([proxyAddresses], 1), Word([jobTitle], 2, " -"))',
    'Replace([department], "a", , , [city], , )',
    'Replace([faxNumber], , "(?<n>\\d+)", "n", , [mobilePhone], )',
]


@settings(max_examples=150, deadline=None)
@given(
    user=st.dictionaries(
        st.sampled_from(
            [
                "IsSoftDeleted",
                "accountEnabled",
                "givenName",
                "surname",
                "otherMails",
                "mobilePhone",
                "businessPhones",
                "mail",
                "displayName",
                "employeeId",
                "proxyAddresses",
                "jobTitle",
                "department",
                "city",
                "faxNumber",
                "@removed",
            ]
        ),
        _graph_values,
    )
)
def test_evaluation_never_raises_on_graph_like_input(user: dict[str, Any]) -> None:
    for compiled in _COMPILED:
        compiled.evaluate(user)


_COMPILED = [compile_expression(expression, USER_CATALOG) for expression in _EXPRESSIONS]


@settings(max_examples=300, deadline=None)
@given(source=st.text(alphabet='[]()",\\ aA1-=<>_.Join[givenName]ToLowerSwitch', max_size=40))
def test_the_parser_only_ever_raises_expression_errors(source: str) -> None:
    # Given any text / When it is compiled / Then it compiles, or fails with a positioned ExpressionError
    position = None
    try:
        compile_expression(source, USER_CATALOG)
    except ExpressionError as error:
        position = error.position
    assert position is None or 1 <= position <= len(source) + 1
