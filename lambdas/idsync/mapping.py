"""Entra object -> IAM Identity Center object: the attribute mapping, and the validation of its result.

Pure: no I/O. Rules (``target <- source | expression | constant``) are compiled once into closures by
``build_mappers``; ``UserMapper.map`` then turns one Graph user into a ``model.User`` in the Identity
Store API's shapes, or into a ``model.Refusal`` naming the first rule IAM Identity Center would break.

Targets are named as in Entra's attribute table for the AWS IAM Identity Center app (SCIM names).
The checks come from the Entra tutorial's troubleshooting section (required attributes, single
values, forbidden characters) and from the Identity Store API's service model (lengths, characters).
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from idsync.config import MappingRule, MappingSettings
from idsync.errors import ConfigError
from idsync.expressions import (
    COLLECTION,
    COMPLEX,
    GROUP_CATALOG,
    REFERENCE,
    USER_CATALOG,
    Catalog,
    Evaluator,
    ExpressionError,
    attribute_getter,
    compile_expression,
    text,
)
from idsync.model import ENTERPRISE_EXTENSION, Group, JsonValue, Refusal, User, content_hash

# --------------------------------------------------------------------------- targets

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:"
WORK_EMAIL = 'emails[type eq "work"].value'
WORK_PHONE = 'phoneNumbers[type eq "work"].value'
WORK_ADDRESS = 'addresses[type eq "work"].'

USER_NAME_MAX = 128  # botocore identitystore model: UserName min 1, max 128
STRING_MAX = 1024  # botocore identitystore model: every other string, min 1, max 1024

# shapes: where a target's value goes
_USER_NAME = "userName"
_ACTIVE = "active"
_MANAGER = "manager"
_EXTERNAL_ID = "externalId"
_VALUE = "value"  # doc[key] = value
_OBJECT = "object"  # doc[key][field] = value
_LIST = "list"  # doc[key] = [{field: value, Type: "work", Primary: True}]
_EXTENSION = "extension"  # doc["Extensions"][enterprise][field] = value
_GROUP_NAME = "groupName"
_DESCRIPTION = "description"


@dataclass(frozen=True, slots=True)
class Target:
    """A target attribute: its SCIM name and where its value lands in the Identity Store document."""

    name: str
    shape: str
    key: str | None = None
    field: str | None = None
    required: bool = False
    max_length: int = STRING_MAX


USER_TARGETS: Final[tuple[Target, ...]] = (
    Target("userName", _USER_NAME, required=True, max_length=USER_NAME_MAX),
    Target("active", _ACTIVE),
    Target("displayName", _VALUE, "DisplayName", required=True),
    Target("title", _VALUE, "Title"),
    Target(WORK_EMAIL, _LIST, "Emails", "Value"),
    Target("preferredLanguage", _VALUE, "PreferredLanguage"),
    Target("name.givenName", _OBJECT, "Name", "GivenName", required=True),
    Target("name.familyName", _OBJECT, "Name", "FamilyName", required=True),
    Target("name.formatted", _OBJECT, "Name", "Formatted"),
    Target(WORK_ADDRESS + "formatted", _LIST, "Addresses", "Formatted"),
    Target(WORK_ADDRESS + "streetAddress", _LIST, "Addresses", "StreetAddress"),
    Target(WORK_ADDRESS + "locality", _LIST, "Addresses", "Locality"),
    Target(WORK_ADDRESS + "region", _LIST, "Addresses", "Region"),
    Target(WORK_ADDRESS + "postalCode", _LIST, "Addresses", "PostalCode"),
    Target(WORK_ADDRESS + "country", _LIST, "Addresses", "Country"),
    Target(WORK_PHONE, _LIST, "PhoneNumbers", "Value"),
    Target("externalId", _EXTERNAL_ID),
    Target("locale", _VALUE, "Locale"),
    Target("timezone", _VALUE, "Timezone"),
    Target(ENTERPRISE + "employeeNumber", _EXTENSION, "Extensions", "employeeNumber"),
    Target(ENTERPRISE + "department", _EXTENSION, "Extensions", "department"),
    Target(ENTERPRISE + "division", _EXTENSION, "Extensions", "division"),
    Target(ENTERPRISE + "costCenter", _EXTENSION, "Extensions", "costCenter"),
    Target(ENTERPRISE + "organization", _EXTENSION, "Extensions", "organization"),
    Target(ENTERPRISE + "manager", _MANAGER),
)

GROUP_TARGETS: Final[tuple[Target, ...]] = (
    Target("displayName", _GROUP_NAME, required=True),
    Target("externalId", _EXTERNAL_ID),
    Target("description", _DESCRIPTION),
)

_USER_TARGETS_BY_NAME: Final = {t.name: t for t in USER_TARGETS}
# the enterprise extension's attributes may also be named without the URN
_USER_TARGET_ALIASES: Final = {t.name.removeprefix(ENTERPRISE): t.name for t in USER_TARGETS if ENTERPRISE in t.name}
_GROUP_TARGETS_BY_NAME: Final = {t.name: t for t in GROUP_TARGETS}

# in the Identity Store API, but not in Entra's attribute table for the AWS app that idsync follows
_UNSUPPORTED_USER_TARGETS: Final = frozenset(
    {
        "nickName",
        "profileUrl",
        "userType",
        "name.middleName",
        "name.honorificPrefix",
        "name.honorificSuffix",
        "photos",
        "website",
        "birthdate",
        "roles",
    }
)

# what the planner matches on first sight (GetUserId could also look up emails.value; the planner does not)
USER_MATCHING: Final = ("userName",)
GROUP_MATCHING: Final = ("displayName",)

# --------------------------------------------------------------------------- the default mapping (data)

DEFAULT_USER_RULES: Final[tuple[Mapping[str, str], ...]] = (
    {"target": "userName", "source": "userPrincipalName"},
    {
        "target": "active",
        "expression": 'Switch([IsSoftDeleted], , "False", [accountEnabled], "True", "False")',
    },
    {"target": "displayName", "source": "displayName"},
    {"target": "title", "source": "jobTitle"},
    {"target": WORK_EMAIL, "source": "mail"},
    {"target": "preferredLanguage", "source": "preferredLanguage"},
    {"target": "name.givenName", "source": "givenName"},
    {"target": "name.familyName", "source": "surname"},
    {"target": "name.formatted", "expression": 'Join(" ", [givenName], [surname])'},
    {"target": WORK_ADDRESS + "streetAddress", "source": "streetAddress"},
    {"target": WORK_ADDRESS + "locality", "source": "city"},
    {"target": WORK_ADDRESS + "region", "source": "state"},
    {"target": WORK_ADDRESS + "postalCode", "source": "postalCode"},
    {"target": WORK_ADDRESS + "country", "source": "country"},
    {"target": WORK_PHONE, "expression": "Coalesce([mobilePhone], [businessPhones])"},
    {"target": "externalId", "source": "id"},
    {"target": "locale", "source": "usageLocation"},
    {"target": ENTERPRISE + "employeeNumber", "source": "employeeId"},
    {"target": ENTERPRISE + "department", "source": "department"},
    {"target": ENTERPRISE + "manager", "source": "manager"},
)

DEFAULT_GROUP_RULES: Final[tuple[Mapping[str, str], ...]] = (
    {"target": "displayName", "source": "displayName"},
    {"target": "externalId", "source": "id"},
)


def default_user_rules() -> list[MappingRule]:
    """The default user mapping of Entra's AWS IAM Identity Center app (accountEnabled folded into active)."""
    return [MappingRule.model_validate(rule) for rule in DEFAULT_USER_RULES]


def default_group_rules() -> list[MappingRule]:
    """The default group mapping: displayName, and the object id kept as externalId."""
    return [MappingRule.model_validate(rule) for rule in DEFAULT_GROUP_RULES]


# --------------------------------------------------------------------------- value checks

_FORBIDDEN = re.compile('[\t\n\r"<>|;:%]')
_FORBIDDEN_NAMES: Final = {
    "\t": "tab",
    "\n": "line feed (new line)",
    "\r": "carriage return",
    '"': 'double quote (")',
    "<": "less-than sign (<)",
    ">": "greater-than sign (>)",
    "|": "vertical bar (|)",
    ";": "semicolon (;)",
    ":": "colon (:)",
    "%": "percent sign (%)",
}
# the service model's string pattern allows letters, marks, symbols, numbers, punctuation and these
_ALLOWED_SPACES: Final = frozenset(" \u00a0\u3000")


_UNNAMED: Final = {
    "Cc": "control character",
    "Cf": "format character",
    "Co": "private-use character",
    "Cs": "surrogate",
}


def _describe_char(ch: str) -> str:
    name = unicodedata.name(ch, "") or f"({_UNNAMED.get(unicodedata.category(ch), 'unassigned character')})"
    return f"U+{ord(ch):04X} {name}"


def check_text(value: str, max_length: int = STRING_MAX, user_name: bool = False) -> str | None:
    """The first rule of IAM Identity Center that a non-empty text value breaks, or None."""
    forbidden = _FORBIDDEN.search(value)
    if forbidden is not None:
        return f"contains a forbidden character: {_FORBIDDEN_NAMES[forbidden.group()]}"
    if len(value) > max_length:
        return f"is {len(value)} characters long; IAM Identity Center accepts at most {max_length}"
    # str.isprintable() is True exactly when every character is a letter, mark, number,
    # punctuation, symbol or the ASCII space: the service model's classes, checked in C
    if value.isprintable() and not (user_name and " " in value):
        return None
    for ch in value:
        if user_name and ch.isspace():
            return f"contains whitespace ({_describe_char(ch)}); IAM Identity Center accepts none in a user name"
        if not ch.isprintable() and (user_name or ch not in _ALLOWED_SPACES):
            return f"contains a character IAM Identity Center does not accept: {_describe_char(ch)}"
    return None


class _Problem(Exception):
    """A value that IAM Identity Center cannot hold (internal: becomes a Refusal)."""


def _single_text(value: Any) -> str | None:
    """One text value, or None; raises _Problem for several values or an object."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        texts = [t for t in (text(v) for v in value) if t]
        if len(texts) > 1:
            raise _Problem(f"holds {len(texts)} values; IAM Identity Center accepts one")
        return texts[0] if texts else None
    if isinstance(value, Mapping):
        raise _Problem("holds an object, not a text value")
    return text(value)


def _boolean(value: Any) -> bool:
    """active: True, False, "True" or "False" (any case); no value means active."""
    if value is None or value == "":
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().casefold() in ("true", "false"):
        return value.strip().casefold() == "true"
    raise _Problem("must be True or False")


def _reference_id(value: Any) -> str | None:
    if isinstance(value, Mapping):
        ref = value.get("id")
        return ref if isinstance(ref, str) and ref else None
    return value if isinstance(value, str) and value else None


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ", ".join(t for t in (text(v) for v in value) if t is not None)
    return text(value) if not isinstance(value, Mapping) else str(dict(value))


# --------------------------------------------------------------------------- compiled rules


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run: the target, the closure, and how ``idsync config check`` shows it."""

    target: Target
    evaluate: Evaluator
    source: str  # as shown: a property, an expression, or a quoted constant
    apply: str
    default: str | None
    properties: frozenset[str]


def _location(section: str, index: int | None, rule: MappingRule) -> str:
    where = f"mapping.{section}" if index is None else f"mapping.{section}[{index}]"
    return f"{where} ({rule.target})"


def _constant(value: Any) -> Evaluator:
    return lambda _obj: value


def _resolve_target(name: str, kind: str) -> Target:
    if kind == "user":
        canonical = _USER_TARGET_ALIASES.get(name, name)
        found = _USER_TARGETS_BY_NAME.get(canonical)
        known = list(_USER_TARGETS_BY_NAME)
    else:
        found = _GROUP_TARGETS_BY_NAME.get(name)
        known = list(_GROUP_TARGETS_BY_NAME)
    if found is not None:
        return found
    if kind == "group" and name == "members":
        raise ConfigError("members are synchronised from group membership, not through a mapping rule")
    if kind == "user" and name in _UNSUPPORTED_USER_TARGETS:
        raise ConfigError(
            f"target {name!r} is not in Entra's attribute table for AWS IAM Identity Center, which idsync synchronises"
        )
    if kind == "user" and name.split("[", 1)[0] in ("emails", "phoneNumbers", "addresses"):
        one = {"emails": WORK_EMAIL, "phoneNumbers": WORK_PHONE, "addresses": WORK_ADDRESS + "<field>"}
        base = name.split("[", 1)[0]
        raise ConfigError(
            f"unknown target {name!r}: IAM Identity Center holds one of {base}, the work one: {one[base]}"
        )
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {kind} target attribute {name!r}{hint}")


def _compile_rule(rule: MappingRule, target: Target, catalog: Catalog) -> CompiledRule:
    """Compile one rule. Raises ConfigError with the problem (the caller adds the location)."""
    if rule.apply == "on_create" and target.shape in (_USER_NAME, _ACTIVE, _MANAGER, _GROUP_NAME):
        raise ConfigError(f"apply: on_create is not supported for {target.name}, which idsync keeps in step")
    if target.shape == _EXTERNAL_ID and rule.source != "id":
        raise ConfigError(
            "the Identity Store API cannot set ExternalIds; idsync keeps the Entra object id in its "
            "state instead, so externalId takes only source: id"
        )
    if target.shape == _MANAGER and rule.source != "manager":
        raise ConfigError("the manager target takes only source: manager (a reference to another user)")
    if target.shape == _MANAGER and rule.default is not None:
        raise ConfigError("the manager target takes no default")

    properties: frozenset[str] = frozenset()
    if rule.source is not None:
        prop = catalog.lookup(rule.source)
        if prop is None:
            raise ConfigError(catalog.unknown(rule.source))
        if prop.kind == REFERENCE and target.shape != _MANAGER:
            raise ConfigError(f"{prop.name} is a reference to another object; it can only feed the manager target")
        if prop.kind == COLLECTION:
            raise ConfigError(
                f"{prop.name} is multi-valued and {target.name} takes one value; pick one with an "
                f"expression such as Item([{prop.name}], 1)"
            )
        if prop.kind == COMPLEX:
            fields = ", ".join(catalog.complex_fields(prop.name)[:3])
            raise ConfigError(f"{prop.name} is an object; name one of its fields, such as {fields}")
        evaluate = attribute_getter(prop)
        shown = prop.name
        if prop.select is not None and prop.kind != REFERENCE:
            properties = frozenset({prop.select})
    elif rule.expression is not None:
        try:
            compiled = compile_expression(rule.expression, catalog)
        except ExpressionError as error:
            raise ConfigError(f"{error} in {rule.expression}") from None
        evaluate = compiled.evaluate
        shown = rule.expression
        properties = compiled.properties
    else:
        constant = rule.constant
        if target.shape == _ACTIVE:
            try:
                constant = _boolean(constant)
            except _Problem:
                raise ConfigError(f"constant {constant!r} must be True or False") from None
        else:
            constant = text(constant)
            problem = check_text(constant, target.max_length, target.shape == _USER_NAME) if constant else None
            if problem is not None:
                raise ConfigError(f"constant {constant!r} {problem}")
        evaluate = _constant(constant)
        shown = f'"{text(rule.constant)}"'
    if rule.default and target.shape == _ACTIVE:
        try:
            _boolean(rule.default)
        except _Problem:
            raise ConfigError(f"default {rule.default!r} must be True or False") from None
    elif rule.default:
        problem = check_text(rule.default, target.max_length, target.shape == _USER_NAME)
        if problem is not None:
            raise ConfigError(f"default {rule.default!r} {problem}")
    if target.shape == _EXTERNAL_ID:
        shown += " (kept in idsync's state: the Identity Store API cannot set ExternalIds)"
    elif target.shape == _MANAGER:
        shown += " (resolved to the manager's IAM Identity Center user id)"
    return CompiledRule(target, evaluate, shown, rule.apply, rule.default or None, properties)


def _effective_rules(
    section: str, rules: Sequence[MappingRule], defaults: Sequence[MappingRule], kind: str
) -> list[CompiledRule]:
    """Lay the configured rules over the defaults (by target), compile and order them by target."""
    catalog = USER_CATALOG if kind == "user" else GROUP_CATALOG
    chosen: dict[str, tuple[int | None, MappingRule, Target]] = {}
    for rule in defaults:
        target = _resolve_target(rule.target, kind)
        chosen[target.name] = (None, rule, target)
    seen: dict[str, int] = {}
    for index, rule in enumerate(rules):
        where = _location(section, index, rule)
        try:
            target = _resolve_target(rule.target, kind)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        if target.name in seen:
            first = f"mapping.{section}[{seen[target.name]}]"
            raise ConfigError(f"{where}: a second rule for {target.name} (the first is {first})")
        seen[target.name] = index
        if rule.remove:
            if target.required:
                raise ConfigError(f"{where}: {target.name} is required by IAM Identity Center and cannot be removed")
            chosen.pop(target.name, None)
        else:
            chosen[target.name] = (index, rule, target)
    compiled: list[CompiledRule] = []
    for position, rule, target in chosen.values():
        try:
            compiled.append(_compile_rule(rule, target, catalog))
        except ConfigError as error:
            raise ConfigError(f"{_location(section, position, rule)}: {error}") from None
    order = USER_TARGETS if kind == "user" else GROUP_TARGETS
    rank = {t.name: i for i, t in enumerate(order)}
    compiled.sort(key=lambda r: rank[r.target.name])
    mapped = {r.target.name for r in compiled}
    for target in order:
        if target.required and target.name not in mapped:
            raise ConfigError(f"mapping.{section}: no rule maps {target.name}, which IAM Identity Center requires")
    return compiled


# --------------------------------------------------------------------------- mappers


def _name_of(obj: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    source_id = obj.get("id")
    return source_id if isinstance(source_id, str) else "(no id)"


def _fingerprint(rules: Sequence[CompiledRule], matching: str) -> str:
    return content_hash({"rules": [[r.target.name, r.source, r.apply, r.default] for r in rules], "matching": matching})


class UserMapper:
    """Maps Graph users to ``model.User`` with the compiled rules; never raises on odd input."""

    def __init__(self, rules: Sequence[CompiledRule], matching: str = "userName") -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.matching = matching
        properties: set[str] = {"id", "userPrincipalName"}
        for rule in self.rules:
            properties |= rule.properties
        properties.discard("manager")
        self.graph_properties: frozenset[str] = frozenset(properties)
        self.needs_manager: bool = any(r.target.shape == _MANAGER for r in self.rules)
        fed: dict[str, set[str]] = {}
        for rule in self.rules:
            if rule.target.key is not None:
                fed.setdefault(rule.target.key, set()).add(rule.apply)
        self.managed_attributes: frozenset[str] = frozenset(fed)
        self.create_only_attributes: frozenset[str] = frozenset(k for k, a in fed.items() if a == {"on_create"})
        self.fingerprint: str = _fingerprint(self.rules, matching)
        self._slots = tuple(
            (r.evaluate, r.target, r.target.shape, r.target.key or "", r.target.field or "", r.default)
            for r in self.rules
        )

    def map(self, obj: Mapping[str, Any]) -> User | Refusal:
        """Map one Graph user. Returns the User, or a Refusal naming the first broken rule."""
        source_id = obj.get("id")
        if not isinstance(source_id, str) or not source_id:
            return Refusal("user", "", _name_of(obj, "userPrincipalName", "displayName"), "id", "has no Graph id")
        doc: dict[str, JsonValue] = {}
        name: dict[str, str] = {}
        lists: dict[str, dict[str, JsonValue]] = {}
        extension: dict[str, str] = {}
        user_name = ""
        active = True
        manager: str | None = None
        for evaluate, target, shape, key, field, default in self._slots:
            raw = evaluate(obj)
            try:
                if shape is _ACTIVE:
                    active = _boolean(default if default and (raw is None or raw == "") else raw)
                    continue
                if shape is _MANAGER:
                    manager = _reference_id(raw)
                    continue
                if shape is _EXTERNAL_ID:
                    continue
                value = raw if raw.__class__ is str else _single_text(raw)
            except _Problem as problem:
                return self._refuse(obj, source_id, target, str(problem), _shown(raw))
            if not value:
                value = default
                if not value:
                    if target.required:
                        return self._refuse(obj, source_id, target, "is required by IAM Identity Center", None)
                    continue
            problem_text = check_text(value, target.max_length, shape is _USER_NAME)
            if problem_text is not None:
                return self._refuse(obj, source_id, target, problem_text, value)
            if shape is _VALUE:
                doc[key] = value
            elif shape is _OBJECT:
                name[field] = value
            elif shape is _LIST:
                lists.setdefault(key, {})[field] = value
            elif shape is _EXTENSION:
                extension[field] = value
            else:
                user_name = value
        if name:
            doc["Name"] = name
        for key, item in lists.items():
            item["Type"] = "work"
            item["Primary"] = True
            doc[key] = [item]
        if extension:
            doc["Extensions"] = {ENTERPRISE_EXTENSION: extension}
        # built without empty values, so freeze_doc's form is just the sorted keys (a test holds this)
        return User(source_id, user_name, {key: doc[key] for key in sorted(doc)}, manager, active)

    @staticmethod
    def _refuse(obj: Mapping[str, Any], source_id: str, target: Target, rule: str, value: str | None) -> Refusal:
        name = _name_of(obj, "userPrincipalName", "displayName")
        return Refusal("user", source_id, name, target.name, rule, value)


class GroupMapper:
    """Maps Graph groups to ``model.Group``; never raises on odd input."""

    def __init__(self, rules: Sequence[CompiledRule], matching: str = "displayName") -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.matching = matching
        properties: set[str] = {"id", "displayName"}
        for rule in self.rules:
            properties |= rule.properties
        self.graph_properties: frozenset[str] = frozenset(properties)
        self.fingerprint: str = _fingerprint(self.rules, matching)
        self._slots = tuple((r.evaluate, r.target, r.default) for r in self.rules if r.target.shape != _EXTERNAL_ID)

    def map(self, obj: Mapping[str, Any]) -> Group | Refusal:
        """Map one Graph group. Returns the Group, or a Refusal naming the first broken rule."""
        source_id = obj.get("id")
        if not isinstance(source_id, str) or not source_id:
            return Refusal("group", "", _name_of(obj, "displayName"), "id", "has no Graph id")
        values: dict[str, str] = {}
        for evaluate, target, default in self._slots:
            raw = evaluate(obj)
            try:
                value = raw if raw.__class__ is str else _single_text(raw)
            except _Problem as problem:
                return Refusal("group", source_id, _name_of(obj, "displayName"), target.name, str(problem), _shown(raw))
            value = value or default
            if not value:
                if target.required:
                    rule = "is required by IAM Identity Center"
                    return Refusal("group", source_id, _name_of(obj, "displayName"), target.name, rule)
                continue
            problem_text = check_text(value, target.max_length)
            if problem_text is not None:
                return Refusal("group", source_id, _name_of(obj, "displayName"), target.name, problem_text, value)
            values[target.shape] = value
        return Group(source_id, values[_GROUP_NAME], values.get(_DESCRIPTION))


def build_mappers(settings: MappingSettings) -> tuple[UserMapper, GroupMapper]:
    """Compile the user and group mappings. Raises ConfigError naming the rule and what is wrong."""
    use_defaults = settings.extend_defaults
    user_rules = _effective_rules("users", settings.users, default_user_rules() if use_defaults else [], "user")
    group_rules = _effective_rules("groups", settings.groups, default_group_rules() if use_defaults else [], "group")
    _check_matching(settings.user_matching, USER_MATCHING, "user_matching", "users")
    _check_matching(settings.group_matching, GROUP_MATCHING, "group_matching", "groups")
    return UserMapper(user_rules, settings.user_matching), GroupMapper(group_rules, settings.group_matching)


def _check_matching(matching: str, allowed: Sequence[str], field: str, kind: str) -> None:
    if matching not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ConfigError(
            f"mapping.{field}: {matching!r} cannot be used for matching; idsync matches {kind} by {choices}"
        )


def describe(mapper: UserMapper | GroupMapper) -> list[tuple[str, str, str]]:
    """The effective mapping as rows of (target, source or expression, apply), in table order."""
    rows: list[tuple[str, str, str]] = []
    for rule in mapper.rules:
        source = rule.source if rule.default is None else f'{rule.source} (default "{rule.default}")'
        rows.append((rule.target.name, source, rule.apply))
    return rows
