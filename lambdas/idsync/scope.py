"""Which Entra users and groups are in scope: Entra's scoping filters, plus group name filters.

Pure: no I/O. Each object type takes a list of filters; the clauses of one filter are ANDed, the
filters are ORed, and no filter at all puts everything in scope. As in Entra, a clause on a null
or empty attribute is false for every operator but IS NULL: ``NOT EQUALS``, ``NOT REGEX MATCH`` and
``IS NOT IN`` are false too when the attribute has no value. Comparisons are case-sensitive, regular
expressions search (like .NET's ``Regex.IsMatch``), and the ``Greater_Than`` family compares integers.

Groups can also be narrowed by name: ``group_name_include`` (when given, a group must match one
entry) and ``group_name_exclude`` (a match drops the group). An entry is an exact name (compared
case-insensitively) or, with the prefix ``re:``, a regular expression.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from idsync.config import FilterClause, ScopeSettings
from idsync.errors import ConfigError
from idsync.expressions import (
    COLLECTION,
    COMPLEX,
    GROUP_CATALOG,
    REFERENCE,
    USER_CATALOG,
    VIRTUAL,
    Catalog,
    as_int,
    attribute_getter,
    compile_regex,
    text,
)
from idsync.model import content_hash

GraphObject = Mapping[str, Any]
Test = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Decision:
    """In scope or not, and the filter, clause or name rule that decided it."""

    in_scope: bool
    reason: str


# --------------------------------------------------------------------------- operators

# canonical spelling (Entra's) by normalised name: upper case, "_" and runs of spaces as one space
_OPERATORS: Final = {
    "EQUALS": "EQUALS",
    "NOT EQUALS": "NOT EQUALS",
    "IS TRUE": "IS TRUE",
    "IS FALSE": "IS FALSE",
    "IS NULL": "IS NULL",
    "IS NOT NULL": "IS NOT NULL",
    "REGEX MATCH": "REGEX MATCH",
    "NOT REGEX MATCH": "NOT REGEX MATCH",
    "GREATER THAN": "Greater_Than",
    "GREATER THAN OR EQUALS": "Greater_Than_OR_EQUALS",
    "LESS THAN": "Less_Than",
    "LESS THAN OR EQUALS": "Less_Than_OR_EQUALS",
    "INCLUDES": "Includes",
    "ENDS WITH": "ENDS_WITH",
    "IS IN": "IS IN",
    "IS NOT IN": "IS NOT IN",
}
_NO_VALUE: Final = frozenset({"IS TRUE", "IS FALSE", "IS NULL", "IS NOT NULL"})
_NUMERIC: Final = frozenset({"Greater_Than", "Greater_Than_OR_EQUALS", "Less_Than", "Less_Than_OR_EQUALS"})
_REGEX: Final = frozenset({"REGEX MATCH", "NOT REGEX MATCH"})
_SETS: Final = frozenset({"IS IN", "IS NOT IN"})


def normalize_operator(name: str) -> str | None:
    """Entra's spelling of an operator given in any case, with spaces or underscores; None if unknown."""
    return _OPERATORS.get(re.sub(r"[\s_]+", " ", name.strip()).upper())


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().casefold() == "true")


def _is_false(value: Any) -> bool:
    return value is False or (isinstance(value, str) and value.strip().casefold() == "false")


def _value_test(operator: str, value: Any) -> Test:
    """The test a clause applies to the attribute's raw value. Raises ConfigError on a bad value."""
    if operator in _NO_VALUE:
        if value is not None:
            raise ConfigError(f"operator {operator} takes no value (found {value!r})")
        if operator == "IS TRUE":
            return _is_true
        if operator == "IS FALSE":
            return _is_false
        if operator == "IS NULL":
            return lambda raw: not text(raw)
        return lambda raw: bool(text(raw))
    if value is None:
        raise ConfigError(f"operator {operator} needs a value")
    if operator in _SETS:
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
        members = frozenset(t.strip() for t in (text(i) for i in items) if t is not None and t.strip())
        if not members:
            raise ConfigError(f"operator {operator} needs at least one value")
        if operator == "IS IN":
            return lambda raw: text(raw) in members
        return lambda raw: (t := text(raw)) is not None and t != "" and t not in members
    if isinstance(value, list):
        raise ConfigError(f"operator {operator} takes one value, not a list")
    if operator in _NUMERIC:
        number = as_int(value)
        if number is None:
            raise ConfigError(f"operator {operator} needs an integer value, found {value!r}")
        return _numeric(operator, number)
    wanted = text(value) or ""
    if not wanted:
        raise ConfigError(f"operator {operator} needs a non-empty value; to test for no value use IS NULL")
    if operator in _REGEX:
        if not isinstance(value, str):
            raise ConfigError(f"operator {operator} needs a regular expression as text, found {value!r}")
        try:
            pattern = compile_regex(value)
        except re.error as error:
            raise ConfigError(f"invalid regular expression {value!r}: {error}") from None
        search = pattern.search
        if operator == "REGEX MATCH":
            return lambda raw: bool((t := text(raw)) and search(t))
        return lambda raw: bool((t := text(raw)) and not search(t))
    if operator == "EQUALS":
        return lambda raw: text(raw) == wanted
    if operator == "NOT EQUALS":
        return lambda raw: bool(t := text(raw)) and t != wanted
    if operator == "Includes":
        return lambda raw: bool((t := text(raw)) and wanted in t)
    return lambda raw: bool((t := text(raw)) and t.endswith(wanted))


def _numeric(operator: str, number: int) -> Test:
    def read(raw: Any) -> int | None:
        return as_int(raw) if isinstance(raw, str | int) else None

    if operator == "Greater_Than":
        return lambda raw: (n := read(raw)) is not None and n > number
    if operator == "Greater_Than_OR_EQUALS":
        return lambda raw: (n := read(raw)) is not None and n >= number
    if operator == "Less_Than":
        return lambda raw: (n := read(raw)) is not None and n < number
    return lambda raw: (n := read(raw)) is not None and n <= number


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class _Clause:
    read: Callable[[GraphObject], Any]
    test: Test
    attribute: str
    select: str
    shown: str  # e.g. "department EQUALS 'Sales'"
    canonical: tuple[str, str, Any]


def _shown_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(repr(text(v)) for v in value) + "]"
    return repr(text(value))


def _compile_clause(clause: FilterClause, catalog: Catalog) -> _Clause:
    """Compile one clause. Raises ConfigError with the problem (the caller adds the location)."""
    prop = catalog.lookup(clause.attribute)
    if prop is None:
        raise ConfigError(catalog.unknown(clause.attribute))
    if prop.kind == COLLECTION:
        raise ConfigError(f"{prop.name} is multi-valued; scoping filters cannot test multi-valued attributes")
    if prop.kind == COMPLEX:
        fields = ", ".join(catalog.complex_fields(prop.name)[:3])
        raise ConfigError(f"{prop.name} is an object; name one of its fields, such as {fields}")
    if prop.kind == REFERENCE:
        raise ConfigError(f"{prop.name} is a reference to another object; scoping filters cannot test it")
    if prop.kind == VIRTUAL or prop.select is None:
        raise ConfigError(f"{prop.name} is computed by idsync, not a Graph property a filter can test")
    operator = normalize_operator(clause.operator)
    if operator is None:
        choices = ", ".join(sorted(set(_OPERATORS.values())))
        raise ConfigError(f"unknown operator {clause.operator!r}; use one of {choices}")
    test = _value_test(operator, clause.value)
    if operator in _NO_VALUE:
        shown = f"{prop.name} {operator}"
    elif operator in _NUMERIC:
        shown = f"{prop.name} {operator} {as_int(clause.value)}"
    else:
        shown = f"{prop.name} {operator} {_shown_value(clause.value)}"
    return _Clause(attribute_getter(prop), test, prop.name, prop.select, shown, (prop.name, operator, clause.value))


@dataclass(frozen=True, slots=True)
class _Filter:
    number: int  # 1-based, as shown in reasons
    clauses: tuple[_Clause, ...]
    matched: Decision


class _Filters:
    """One object type's filters: ORed filters of ANDed clauses."""

    def __init__(self, kind: str, filters: Sequence[_Filter]) -> None:
        self.kind = kind
        self.filters = tuple(filters)
        self.everything = Decision(True, f"no {kind} scoping filters: every {kind} is in scope")

    def decide(self, obj: GraphObject) -> Decision:
        if not self.filters:
            return self.everything
        failures: list[str] = []
        for flt in self.filters:
            for number, clause in enumerate(flt.clauses, start=1):
                raw = clause.read(obj)
                if not clause.test(raw):
                    null = "" if text(raw) else f" ({clause.attribute} is null)"
                    failures.append(f"{self.kind} filter {flt.number} clause {number}: {clause.shown} is false{null}")
                    break
            else:
                return flt.matched
        return Decision(False, "; ".join(failures))

    @property
    def properties(self) -> frozenset[str]:
        return frozenset(c.select for f in self.filters for c in f.clauses)

    def canonical(self) -> list[list[tuple[str, str, Any]]]:
        return [[c.canonical for c in f.clauses] for f in self.filters]


def _compile_filters(kind: str, field: str, filters: Sequence[Sequence[FilterClause]], catalog: Catalog) -> _Filters:
    compiled: list[_Filter] = []
    for i, clauses in enumerate(filters):
        if not clauses:
            raise ConfigError(f"scope.{field}[{i}]: a filter needs at least one clause")
        parts: list[_Clause] = []
        for j, clause in enumerate(clauses):
            try:
                parts.append(_compile_clause(clause, catalog))
            except ConfigError as error:
                where = f"scope.{field}[{i}][{j}] ({kind} filter {i + 1} clause {j + 1})"
                raise ConfigError(f"{where}: {error}") from None
        matched = Decision(True, f"{kind} filter {i + 1} matched: " + " AND ".join(c.shown for c in parts))
        compiled.append(_Filter(i + 1, tuple(parts), matched))
    return _Filters(kind, compiled)


# --------------------------------------------------------------------------- group names


@dataclass(frozen=True, slots=True)
class _NameRule:
    entry: str
    matches: Callable[[str], bool]


def _searches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda name: pattern.search(name) is not None


def _equals_folded(entry: str) -> Callable[[str], bool]:
    folded = entry.casefold()
    return lambda name: name.casefold() == folded


def _name_rules(field: str, entries: Sequence[str]) -> tuple[_NameRule, ...]:
    rules: list[_NameRule] = []
    for i, entry in enumerate(entries):
        if entry.startswith("re:"):
            try:
                pattern = compile_regex(entry[3:])
            except re.error as error:
                raise ConfigError(f"scope.{field}[{i}]: invalid regular expression {entry[3:]!r}: {error}") from None
            rules.append(_NameRule(entry, _searches(pattern)))
        elif entry.strip():
            rules.append(_NameRule(entry, _equals_folded(entry)))
        else:
            raise ConfigError(f"scope.{field}[{i}]: an empty group name matches nothing")
    return tuple(rules)


# --------------------------------------------------------------------------- scope


class Scope:
    """Decides, per Graph object, whether it is in scope, and says why."""

    def __init__(
        self,
        users: _Filters,
        groups: _Filters,
        include: Sequence[_NameRule],
        exclude: Sequence[_NameRule],
        fingerprint: str,
    ) -> None:
        self._users = users
        self._groups = groups
        self._include = tuple(include)
        self._exclude = tuple(exclude)
        self.fingerprint = fingerprint
        self.user_properties: frozenset[str] = users.properties
        names = frozenset({"displayName"}) if self._include or self._exclude else frozenset()
        self.group_properties: frozenset[str] = groups.properties | names

    def user(self, obj: GraphObject) -> Decision:
        """Whether a Graph user passes the user scoping filters."""
        return self._users.decide(obj)

    def group(self, obj: GraphObject) -> Decision:
        """Whether a Graph group passes the group name filters, then the group scoping filters."""
        name_reason = ""
        if self._include or self._exclude:
            name = obj.get("displayName")
            if not isinstance(name, str) or not name:
                return Decision(False, "group has no displayName for the group name filters")
            if self._include:
                entry = next((r.entry for r in self._include if r.matches(name)), None)
                if entry is None:
                    return Decision(False, f"group name {name!r} matches no group_name_include entry")
                name_reason = f"group name {name!r} matches group_name_include entry {entry!r}; "
            excluded = next((r.entry for r in self._exclude if r.matches(name)), None)
            if excluded is not None:
                return Decision(False, f"group name {name!r} matches group_name_exclude entry {excluded!r}")
        decision = self._groups.decide(obj)
        if name_reason and decision.in_scope:
            return Decision(True, name_reason + decision.reason)
        return decision


def build_scope(settings: ScopeSettings) -> Scope:
    """Compile the scoping filters and group name filters. Raises ConfigError naming the clause."""
    users = _compile_filters("user", "user_filters", settings.user_filters, USER_CATALOG)
    groups = _compile_filters("group", "group_filters", settings.group_filters, GROUP_CATALOG)
    include = _name_rules("group_name_include", settings.group_name_include)
    exclude = _name_rules("group_name_exclude", settings.group_name_exclude)
    fingerprint = content_hash(
        {
            "mode": settings.mode,
            "app": settings.service_principal_id,
            "flatten": settings.flatten_nested_groups,
            "users": users.canonical(),
            "groups": groups.canonical(),
            "include": list(settings.group_name_include),
            "exclude": list(settings.group_name_exclude),
        }
    )
    return Scope(users, groups, include, exclude, fingerprint)
