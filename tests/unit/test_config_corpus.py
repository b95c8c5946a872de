"""The bad-configuration corpus: each broken mapping or scope is answered by one precise message that
names the rule or field and what is wrong with it, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from idsync.config import MappingRule, MappingSettings, ScopeSettings, load_settings, parse_settings
from idsync.errors import ConfigError
from idsync.mapping import WORK_EMAIL, WORK_PHONE, build_mappers
from idsync.scope import build_scope

GRAPH = {"graph": {"tenant_id": "contoso.onmicrosoft.com", "client_id": "app"}}


def users(*rules: dict[str, Any], **mapping: Any) -> dict[str, Any]:
    return {"mapping": {"users": list(rules), **mapping}}


def user_filter(*clauses: dict[str, Any]) -> dict[str, Any]:
    return {"scope": {"mode": "all", "user_filters": [list(clauses)]}}


CORPUS: list[tuple[str, dict[str, Any], str]] = [
    # --- mapping: targets
    (
        "unknown target",
        users({"target": "jobTitle", "source": "jobTitle"}),
        "mapping: users[0] (jobTitle): unknown user target attribute 'jobTitle'; did you mean 'title'?",
    ),
    (
        "target outside the AWS table",
        users({"target": "nickName", "source": "mailNickname"}),
        "mapping: users[0] (nickName): target 'nickName' is not in Entra's attribute table for AWS IAM Identity "
        "Center, which idsync synchronises",
    ),
    (
        "a second email type",
        users({"target": 'emails[type eq "home"].value', "source": "mail"}),
        'mapping: users[0] (emails[type eq "home"].value): unknown target \'emails[type eq "home"].value\': '
        f"IAM Identity Center holds one of emails, the work one: {WORK_EMAIL}",
    ),
    (
        "members as a group mapping",
        {"mapping": {"groups": [{"target": "members", "source": "id"}]}},
        "mapping: groups[0] (members): members are synchronised from group membership, not through a mapping rule",
    ),
    (
        "two rules for one target",
        users({"target": "title", "source": "jobTitle"}, {"target": "title", "source": "department"}),
        "mapping: users[1] (title): a second rule for title (the first is mapping.users[0])",
    ),
    (
        "two rules for one target, one spelled without the URN",
        users(
            {"target": "department", "source": "department"},
            {"target": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "source": "city"},
        ),
        "mapping: users[1] (urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department): a second rule "
        "for urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department (the first is mapping.users[0])",
    ),
    (
        "removing a required target",
        users({"target": "name.givenName", "remove": True}),
        "mapping: users[0] (name.givenName): name.givenName is required by IAM Identity Center and cannot be removed",
    ),
    (
        "a whole mapping without a required target",
        users(
            {"target": "userName", "source": "userPrincipalName"},
            {"target": "displayName", "source": "displayName"},
            {"target": "name.givenName", "source": "givenName"},
            extend_defaults=False,
        ),
        "mapping: users: no rule maps name.familyName, which IAM Identity Center requires",
    ),
    (
        "on_create for userName",
        users({"target": "userName", "source": "mail", "apply": "on_create"}),
        "mapping: users[0] (userName): apply: on_create is not supported for userName, which idsync keeps in step",
    ),
    # --- mapping: sources
    (
        "unknown Graph property",
        users({"target": "title", "source": "jobTitel"}),
        "mapping: users[0] (title): unknown Graph user property 'jobTitel'; did you mean 'jobTitle'?",
    ),
    (
        "an Entra attribute name instead of Graph's",
        users({"target": WORK_PHONE, "source": "telephoneNumber"}),
        f"mapping: users[0] ({WORK_PHONE}): unknown Graph user property 'telephoneNumber'; "
        "Entra's 'telephoneNumber' is Graph's 'businessPhones'",
    ),
    (
        "a multi-valued source into a single-valued target",
        users({"target": WORK_EMAIL, "source": "otherMails"}),
        f"mapping: users[0] ({WORK_EMAIL}): otherMails is multi-valued and {WORK_EMAIL} takes one value; "
        "pick one with an expression such as Item([otherMails], 1)",
    ),
    (
        "an object as a source",
        users({"target": "title", "source": "employeeOrgData"}),
        "mapping: users[0] (title): employeeOrgData is an object; name one of its fields, such as "
        "employeeOrgData.costCenter, employeeOrgData.division",
    ),
    (
        "the manager reference into a text target",
        users({"target": "title", "source": "manager"}),
        "mapping: users[0] (title): manager is a reference to another object; it can only feed the manager target",
    ),
    (
        "the manager target from a text property",
        users({"target": "manager", "source": "mail"}),
        "mapping: users[0] (manager): the manager target takes only source: manager (a reference to another user)",
    ),
    (
        "externalId from anything but the object id",
        users({"target": "externalId", "source": "employeeId"}),
        "mapping: users[0] (externalId): the Identity Store API cannot set ExternalIds; idsync keeps the Entra "
        "object id in its state instead, so externalId takes only source: id",
    ),
    (
        "a group rule reading a user property",
        {"mapping": {"groups": [{"target": "description", "source": "surname"}]}},
        "mapping: groups[0] (description): unknown Graph group property 'surname'",
    ),
    # --- mapping: rule shape
    (
        "no source at all",
        users({"target": "title"}),
        "mapping.users.0: rule for title: give exactly one of source, expression or constant (found none)",
    ),
    (
        "a source and an expression",
        users({"target": "title", "source": "jobTitle", "expression": "[jobTitle]"}),
        "mapping.users.0: rule for title: give exactly one of source, expression or constant "
        "(found source and expression)",
    ),
    (
        "remove with a source",
        users({"target": "title", "source": "jobTitle", "remove": True}),
        "mapping.users.0: rule for title: remove: true takes no source",
    ),
    (
        "an unknown apply mode",
        users({"target": "title", "source": "jobTitle", "apply": "sometimes"}),
        "mapping.users.0.apply: Input should be 'always' or 'on_create'",
    ),
    (
        "a misspelt rule field",
        users({"target": "title", "source": "jobTitle", "aply": "on_create"}),
        "mapping.users.0.aply: Extra inputs are not permitted; did you mean 'apply'?",
    ),
    (
        "a constant that is an object",
        users({"target": "title", "constant": {"en": "Analyst"}}),
        "mapping.users.0.constant: must be text, a number or a boolean",
    ),
    (
        "a constant with a forbidden character",
        users({"target": "timezone", "constant": "UTC;Europe/Paris"}),
        "mapping: users[0] (timezone): constant 'UTC;Europe/Paris' contains a forbidden character: semicolon (;)",
    ),
    (
        "a constant for active that is not a boolean",
        users({"target": "active", "constant": "yes"}),
        "mapping: users[0] (active): constant 'yes' must be True or False",
    ),
    (
        "a default for active that is not a boolean",
        users({"target": "active", "source": "accountEnabled", "default": "maybe"}),
        "mapping: users[0] (active): default 'maybe' must be True or False",
    ),
    (
        "a default value too long for IAM Identity Center",
        users({"target": "title", "source": "jobTitle", "default": "x" * 1025}),
        "mapping: users[0] (title): default '" + "x" * 1025 + "' is 1025 characters long; IAM Identity Center "
        "accepts at most 1024",
    ),
    # --- mapping: expressions
    (
        "an expression with a syntax error",
        users({"target": "displayName", "expression": 'Join(" " [givenName])'}),
        "mapping: users[0] (displayName): expression error at position 10: expected ',' or ')', found attribute "
        '[givenName] in Join(" " [givenName])',
    ),
    (
        "an unknown function",
        users({"target": "title", "expression": "Upper([jobTitle])"}),
        "mapping: users[0] (title): expression error at position 1: unknown function Upper; did you mean ToUpper? "
        "in Upper([jobTitle])",
    ),
    (
        "a function with the wrong number of arguments",
        users({"target": "title", "expression": "Left([jobTitle])"}),
        "mapping: users[0] (title): expression error at position 1: Left takes 2 arguments (source, numChars), "
        "found 1 in Left([jobTitle])",
    ),
    (
        "an expression reading an unknown attribute",
        users({"target": "title", "expression": "ToUpper([title])"}),
        "mapping: users[0] (title): expression error at position 9: unknown Graph user property 'title'; "
        "did you mean 'jobTitle'? in ToUpper([title])",
    ),
    (
        "an invalid regular expression",
        users({"target": "title", "expression": 'Replace([jobTitle], , "[a-", , "", , )'}),
        "mapping: users[0] (title): expression error at position 23: invalid regular expression '[a-': "
        'unterminated character set at position 0 in Replace([jobTitle], , "[a-", , "", , )',
    ),
    # --- mapping: matching
    (
        "a matching attribute the planner does not match on",
        users(user_matching=WORK_EMAIL),
        f"mapping: user_matching: '{WORK_EMAIL}' cannot be used for matching; idsync matches users by 'userName'",
    ),
    (
        "a group matching attribute other than displayName",
        {"mapping": {"group_matching": "mail"}},
        "mapping: group_matching: 'mail' cannot be used for matching; idsync matches groups by 'displayName'",
    ),
    # --- scope: filters
    (
        "a filter on an unknown attribute",
        user_filter({"attribute": "departmnt", "operator": "EQUALS", "value": "Sales"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): unknown Graph user property 'departmnt'; "
        "did you mean 'department'?",
    ),
    (
        "an unknown operator",
        user_filter({"attribute": "department", "operator": "STARTS_WITH", "value": "S"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): unknown operator 'STARTS_WITH'; use one of ENDS_WITH, "
        "EQUALS, Greater_Than, Greater_Than_OR_EQUALS, IS FALSE, IS IN, IS NOT IN, IS NOT NULL, IS NULL, IS TRUE, "
        "Includes, Less_Than, Less_Than_OR_EQUALS, NOT EQUALS, NOT REGEX MATCH, REGEX MATCH",
    ),
    (
        "a filter on a multi-valued attribute",
        user_filter({"attribute": "proxyAddresses", "operator": "Includes", "value": "smtp:"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): proxyAddresses is multi-valued; scoping filters cannot "
        "test multi-valued attributes",
    ),
    (
        "a filter on the manager reference",
        user_filter({"attribute": "manager", "operator": "IS NOT NULL"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): manager is a reference to another object; scoping "
        "filters cannot test it",
    ),
    (
        "a filter on the virtual soft-delete flag",
        user_filter({"attribute": "IsSoftDeleted", "operator": "IS FALSE"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): IsSoftDeleted is computed by idsync, not a Graph "
        "property a filter can test",
    ),
    (
        "a comparison without a value",
        user_filter({"attribute": "department", "operator": "EQUALS"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator EQUALS needs a value",
    ),
    (
        "EQUALS with an empty value",
        user_filter({"attribute": "department", "operator": "EQUALS", "value": ""}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator EQUALS needs a non-empty value; to test for "
        "no value use IS NULL",
    ),
    (
        "IS NULL with a value",
        user_filter({"attribute": "department", "operator": "is null", "value": "x"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator IS NULL takes no value (found 'x')",
    ),
    (
        "a numeric comparison with text",
        user_filter({"attribute": "employeeId", "operator": "Greater_Than", "value": "ten"}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator Greater_Than needs an integer value, found 'ten'",
    ),
    (
        "an invalid regular expression in a filter",
        user_filter({"attribute": "userPrincipalName", "operator": "REGEX MATCH", "value": "(["}),
        "scope: user_filters[0][0] (user filter 1 clause 1): invalid regular expression '([': unterminated "
        "character set at position 1",
    ),
    (
        "EQUALS with a list",
        user_filter({"attribute": "department", "operator": "EQUALS", "value": ["a", "b"]}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator EQUALS takes one value, not a list",
    ),
    (
        "IS IN with nothing in it",
        user_filter({"attribute": "department", "operator": "IS IN", "value": " , "}),
        "scope: user_filters[0][0] (user filter 1 clause 1): operator IS IN needs at least one value",
    ),
    (
        "an empty filter",
        {"scope": {"mode": "all", "user_filters": [[{"attribute": "city", "operator": "IS NOT NULL"}], []]}},
        "scope: user_filters[1]: a filter needs at least one clause",
    ),
    (
        "a clause without an operator",
        user_filter({"attribute": "department", "value": "Sales"}),
        "scope.user_filters.0.0.operator: Field required",
    ),
    (
        "a clause value that is an object",
        user_filter({"attribute": "department", "operator": "EQUALS", "value": {"a": 1}}),
        "scope.user_filters.0.0.value: must be text, an integer, a boolean, or a list of text or integers",
    ),
    (
        "a group filter on a user property",
        {"scope": {"mode": "all", "group_filters": [[{"attribute": "surname", "operator": "IS NULL"}]]}},
        "scope: group_filters[0][0] (group filter 1 clause 1): unknown Graph group property 'surname'",
    ),
    # --- scope: group names
    (
        "an invalid group name regular expression",
        {"scope": {"mode": "all", "group_name_include": ["AWS-Admins", "re:(AWS"]}},
        "scope: group_name_include[1]: invalid regular expression '(AWS': missing ), unterminated subpattern at "
        "position 0",
    ),
    (
        "an empty group name",
        {"scope": {"mode": "all", "group_name_exclude": [" "]}},
        "scope: group_name_exclude[0]: an empty group name matches nothing",
    ),
]


@pytest.mark.parametrize(("case", "config", "message"), CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_configuration_gets_one_precise_message(case: str, config: dict[str, Any], message: str) -> None:
    # Given a configuration with one mistake
    # When it is loaded
    with pytest.raises(ConfigError) as caught:
        parse_settings({**GRAPH, **config}, "idsync.yaml")
    # Then exactly one message names the rule or field and the problem
    assert str(caught.value) == f"invalid configuration in idsync.yaml:\n  {message}"


def test_the_corpus_is_large_enough_and_distinct() -> None:
    assert len(CORPUS) >= 30
    assert len({message for _, _, message in CORPUS}) == len(CORPUS)


def test_build_functions_raise_the_same_errors_directly() -> None:
    # settings built without validation (model_construct) still meet the checks when compiled
    mapping = MappingSettings.model_construct(
        users=[MappingRule(target="title", source="jobTitel")],
        groups=[],
        extend_defaults=True,
        user_matching="userName",
        group_matching="displayName",
    )
    with pytest.raises(ConfigError) as caught:
        build_mappers(mapping)
    assert (
        str(caught.value)
        == "mapping.users[0] (title): unknown Graph user property 'jobTitel'; did you mean 'jobTitle'?"
    )
    scope = ScopeSettings.model_construct(
        mode="all",
        service_principal_id=None,
        flatten_nested_groups=False,
        user_filters=[[]],
        group_filters=[],
        group_name_include=[],
        group_name_exclude=[],
        skip_out_of_scope_deletions=False,
    )
    with pytest.raises(ConfigError, match=r"^scope\.user_filters\[0\]: a filter needs at least one clause$"):
        build_scope(scope)


def test_a_good_yaml_file_loads(tmp_path: Path) -> None:
    # Given a configuration file with custom rules and filters
    file = tmp_path / "idsync.yaml"
    file.write_text(
        """
graph: {tenant_id: contoso.onmicrosoft.com, client_id: app}
scope:
  mode: all
  user_filters:
    - - {attribute: department, operator: EQUALS, value: Sales}
      - {attribute: accountEnabled, operator: IS TRUE}
    - - {attribute: employeeId, operator: Greater_Than, value: 1000}
  group_name_include: ["re:^AWS-"]
mapping:
  users:
    - {target: displayName, expression: 'Join(" ", [givenName], [surname])'}
    - {target: timezone, constant: Europe/Paris}
    - {target: title, remove: true}
""",
        encoding="utf-8",
    )
    # When it is loaded
    settings = load_settings(file, environ={})
    # Then both parts compile
    user_mapper, _ = build_mappers(settings.mapping)
    scope = build_scope(settings.scope)
    assert "jobTitle" not in user_mapper.graph_properties
    assert scope.user({"employeeId": "1001"}).in_scope is True
