"""Entra's attribute-mapping expression language: a tokenizer, a parser and a compiler to closures.

Pure: no I/O. An expression such as ``Join(" ", [givenName], [surname])`` is parsed once (no
``eval``) and compiled into a Python closure that takes a Graph object and returns a value.

Values flowing through expressions are ``None`` (null), ``str``, ``bool``, ``int`` or lists
(multi-valued Graph properties such as ``businessPhones``). Booleans read as text are ``"True"`` and
``"False"``, as in Entra. A function of null usually yields null; the exceptions follow Entra's
reference (``Left`` and ``Word`` of null give ``""``; ``Not`` of null gives ``True``; ``Switch``
compares a null source as ``""``).

Attribute references name Microsoft Graph properties (``[givenName]``, ``[employeeOrgData.division]``,
``[onPremisesExtensionAttributes.extensionAttribute1]``, ``[extension_<appId>_<name>]``) plus the
virtual ``[IsSoftDeleted]``. Unknown functions, wrong arities, unknown attributes and bad regular
expressions are reported when the expression is compiled, with the position of the offending token.
"""

from __future__ import annotations

import difflib
import operator
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from idsync.errors import ConfigError

GraphObject = Mapping[str, Any]
Evaluator = Callable[[GraphObject], Any]

# --------------------------------------------------------------------------- Graph property catalogs

STRING: Final = "string"
BOOLEAN: Final = "boolean"
COLLECTION: Final = "collection"  # multi-valued: a list of strings
COMPLEX: Final = "complex"  # an object: only its named fields can be read
REFERENCE: Final = "reference"  # another directory object (manager)
VIRTUAL: Final = "virtual"  # computed by idsync, never selected from Graph

SOFT_DELETED = "IsSoftDeleted"

_EXTENSION_PROPERTY = re.compile(r"extension_[0-9a-fA-F]{32}_[A-Za-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Property:
    """One readable source attribute: its name in configurations and the Graph property to select."""

    name: str
    select: str | None  # top-level Graph property for $select; None for virtual ones
    kind: str


class Catalog:
    """The Graph properties of one object type that mappings, expressions and filters may read."""

    def __init__(
        self,
        kind: str,
        properties: Mapping[str, str],
        complex_fields: Mapping[str, Sequence[str]],
        aliases: Mapping[str, str],
    ) -> None:
        self.kind = kind
        self._properties: dict[str, Property] = {}
        for name, prop_kind in properties.items():
            self._properties[name] = Property(name, None if prop_kind == VIRTUAL else name, prop_kind)
        for parent, fields in complex_fields.items():
            self._properties[parent] = Property(parent, parent, COMPLEX)
            for child in fields:
                path = f"{parent}.{child}"
                self._properties[path] = Property(path, parent, STRING)
        self._aliases = dict(aliases)
        self._folded = {name.casefold(): name for name in self._properties}

    def lookup(self, name: str) -> Property | None:
        """The property named exactly ``name`` (Graph names are case-sensitive here), or None."""
        found = self._properties.get(name)
        if found is not None:
            return found
        if _EXTENSION_PROPERTY.fullmatch(name):
            return Property(name, name, STRING)
        return None

    def complex_fields(self, name: str) -> list[str]:
        prefix = name + "."
        return sorted(p for p in self._properties if p.startswith(prefix))

    def unknown(self, name: str) -> str:
        """A one-line explanation for an unknown attribute name, with a suggestion when one fits."""
        message = f"unknown Graph {self.kind} property {name!r}"
        alias = self._aliases.get(name)
        if alias is not None:
            return f"{message}; Entra's {name!r} is Graph's {alias!r}"
        folded = self._folded.get(name.casefold())
        if folded is not None:
            return f"{message}; did you mean {folded!r}? (names are case-sensitive)"
        close = difflib.get_close_matches(name, list(self._properties), n=1)
        if close:
            return f"{message}; did you mean {close[0]!r}?"
        return message


_USER_PROPERTIES: Final[Mapping[str, str]] = {
    "id": STRING,
    "accountEnabled": BOOLEAN,
    "ageGroup": STRING,
    "businessPhones": COLLECTION,
    "city": STRING,
    "companyName": STRING,
    "consentProvidedForMinor": STRING,
    "country": STRING,
    "createdDateTime": STRING,
    "creationType": STRING,
    "department": STRING,
    "displayName": STRING,
    "employeeHireDate": STRING,
    "employeeId": STRING,
    "employeeLeaveDateTime": STRING,
    "employeeType": STRING,
    "externalUserState": STRING,
    "externalUserStateChangeDateTime": STRING,
    "faxNumber": STRING,
    "givenName": STRING,
    "imAddresses": COLLECTION,
    "isResourceAccount": BOOLEAN,
    "jobTitle": STRING,
    "lastPasswordChangeDateTime": STRING,
    "legalAgeGroupClassification": STRING,
    "mail": STRING,
    "mailNickname": STRING,
    "mobilePhone": STRING,
    "officeLocation": STRING,
    "onPremisesDistinguishedName": STRING,
    "onPremisesDomainName": STRING,
    "onPremisesImmutableId": STRING,
    "onPremisesLastSyncDateTime": STRING,
    "onPremisesSamAccountName": STRING,
    "onPremisesSecurityIdentifier": STRING,
    "onPremisesSyncEnabled": BOOLEAN,
    "onPremisesUserPrincipalName": STRING,
    "otherMails": COLLECTION,
    "passwordPolicies": STRING,
    "postalCode": STRING,
    "preferredDataLocation": STRING,
    "preferredLanguage": STRING,
    "proxyAddresses": COLLECTION,
    "securityIdentifier": STRING,
    "showInAddressList": BOOLEAN,
    "signInSessionsValidFromDateTime": STRING,
    "state": STRING,
    "streetAddress": STRING,
    "surname": STRING,
    "usageLocation": STRING,
    "userPrincipalName": STRING,
    "userType": STRING,
    "manager": REFERENCE,
    SOFT_DELETED: VIRTUAL,
}

_GROUP_PROPERTIES: Final[Mapping[str, str]] = {
    "id": STRING,
    "classification": STRING,
    "createdDateTime": STRING,
    "description": STRING,
    "displayName": STRING,
    "expirationDateTime": STRING,
    "groupTypes": COLLECTION,
    "isAssignableToRole": BOOLEAN,
    "mail": STRING,
    "mailEnabled": BOOLEAN,
    "mailNickname": STRING,
    "membershipRule": STRING,
    "membershipRuleProcessingState": STRING,
    "onPremisesDomainName": STRING,
    "onPremisesLastSyncDateTime": STRING,
    "onPremisesNetBiosName": STRING,
    "onPremisesSamAccountName": STRING,
    "onPremisesSecurityIdentifier": STRING,
    "onPremisesSyncEnabled": BOOLEAN,
    "preferredDataLocation": STRING,
    "preferredLanguage": STRING,
    "proxyAddresses": COLLECTION,
    "renewedDateTime": STRING,
    "securityEnabled": BOOLEAN,
    "securityIdentifier": STRING,
    "theme": STRING,
    "visibility": STRING,
}

# Entra's source attribute names that differ from Graph's, so a pasted Entra rule gets a precise hint.
_USER_ALIASES: Final[Mapping[str, str]] = {
    "objectId": "id",
    "telephoneNumber": "businessPhones",
    "mobile": "mobilePhone",
    "facsimileTelephoneNumber": "faxNumber",
    "physicalDeliveryOfficeName": "officeLocation",
    "userPrincipalname": "userPrincipalName",
    **{f"extensionAttribute{n}": f"onPremisesExtensionAttributes.extensionAttribute{n}" for n in range(1, 16)},
}

USER_CATALOG: Final = Catalog(
    "user",
    _USER_PROPERTIES,
    {
        "employeeOrgData": ("division", "costCenter"),
        "onPremisesExtensionAttributes": tuple(f"extensionAttribute{n}" for n in range(1, 16)),
    },
    _USER_ALIASES,
)
GROUP_CATALOG: Final = Catalog("group", _GROUP_PROPERTIES, {}, {"objectId": "id"})


def is_soft_deleted(obj: GraphObject) -> bool:
    """True when the engine marked the object soft-deleted, or Graph's delta says it was removed."""
    return bool(obj.get(SOFT_DELETED)) or "@removed" in obj or obj.get("deletedDateTime") is not None


def attribute_getter(prop: Property) -> Evaluator:
    """A closure reading one property (a dotted path reads a field of a complex property)."""
    if prop.kind == VIRTUAL:
        return is_soft_deleted
    name = prop.name
    if prop.select is not None and prop.select != name:
        parent, child = prop.select, name[len(prop.select) + 1 :]

        def nested(obj: GraphObject) -> Any:
            value = obj.get(parent)
            return value.get(child) if isinstance(value, Mapping) else None

        return nested

    def direct(obj: GraphObject) -> Any:
        return obj.get(name)

    return direct


# --------------------------------------------------------------------------- value helpers


def text(value: Any) -> str | None:
    """A scalar as Entra text: booleans are "True"/"False"; objects and lists have no text (None)."""
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int | float):
        return str(value)
    return None


def is_absent(value: Any) -> bool:
    """Null, the empty string and the empty list all mean "no value"."""
    return value is None or value == "" or (isinstance(value, list) and not value)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().casefold() == "true"


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only, like .NET's int.Parse


def _lift(fn: Callable[[str], Any]) -> Callable[[Any], Any]:
    """Apply a text function to a value, element by element for a multi-valued one."""

    def apply(value: Any) -> Any:
        if isinstance(value, list):
            out = [fn(t) for t in (text(v) for v in value) if t is not None]
            return out or None
        t = text(value)
        return None if t is None else fn(t)

    return apply


# --------------------------------------------------------------------------- .NET regular expressions

_NAMED_GROUP = re.compile(r"\(\?<(?![=!])|\(\?'|\\k<([A-Za-z_][A-Za-z0-9_]*)>")


def translate_regex(pattern: str) -> str:
    """Rewrite .NET-only syntax (named groups ``(?<n>...)``, ``(?'n'...)``, ``\\k<n>``) for Python."""
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            backref = _NAMED_GROUP.match(pattern, i)
            if backref is not None and backref.group(1) and not in_class:
                out.append(f"(?P={backref.group(1)})")
                i = backref.end()
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            out.append(ch)
            # a leading "]" (or "^]") is a literal inside a class
            for lead in ("^]", "]"):
                if pattern.startswith(lead, i + 1):
                    out.append(lead)
                    i += len(lead)
                    break
            i += 1
            continue
        group = _NAMED_GROUP.match(pattern, i)
        if group is not None and not group.group(1):
            if group.group(0) == "(?'":
                end = pattern.find("'", group.end())
                if end == -1:
                    out.append(pattern[i:])
                    break
                out.append(f"(?P<{pattern[group.end() : end]}>")
                i = end + 1
                continue
            out.append("(?P<")
            i = group.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile an Entra (.NET) regular expression. Raises re.error when it is invalid."""
    return re.compile(translate_regex(pattern))


_SUBSTITUTION = re.compile(r"\$(?:\$|&|\{([A-Za-z_][A-Za-z0-9_]*|\d+)\}|(\d+))")


@dataclass(frozen=True, slots=True)
class _GroupRef:
    ref: int | str
    written: str


def substitution(template: str) -> Callable[[re.Match[str]], str]:
    """A .NET replacement template (``$1``, ``${name}``, ``$&``, ``$$``) as a match -> text function."""
    parts: list[str | _GroupRef] = []
    last = 0
    for m in _SUBSTITUTION.finditer(template):
        parts.append(template[last : m.start()])
        token = m.group(0)
        if token == "$$":
            parts.append("$")
        elif token == "$&":
            parts.append(_GroupRef(0, token))
        else:
            ref = m.group(1) or m.group(2)
            parts.append(_GroupRef(int(ref) if ref.isdigit() else ref, token))
        last = m.end()
    parts.append(template[last:])
    if all(isinstance(p, str) for p in parts):
        literal = "".join(p for p in parts if isinstance(p, str))
        return lambda _match: literal

    def expand(match: re.Match[str]) -> str:
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
                continue
            try:
                out.append(match.group(part.ref) or "")
            except IndexError:
                out.append(part.written)  # .NET leaves a reference to a missing group as written
        return "".join(out)

    return expand


# --------------------------------------------------------------------------- errors


class ExpressionError(ConfigError):
    """An expression that cannot be parsed or compiled; ``position`` is 1-based."""

    def __init__(self, problem: str, position: int, expression: str) -> None:
        self.problem = problem
        self.position = position
        self.expression = expression
        super().__init__(f"expression error at position {position}: {problem}")


# --------------------------------------------------------------------------- tokenizer

_IDENT_START = re.compile(r"[A-Za-z_]")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+")
_OPERATORS = ("<>", ">=", "<=", "=", ">", "<")
_ORDER: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # attr | string | number | name | ( | ) | , | op | end
    value: str
    position: int  # 1-based

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind == "attr":
            return f"attribute [{self.value}]"
        if self.kind == "string":
            return f'string "{self.value}"'
        if self.kind == "number":
            return f"number {self.value}"
        if self.kind == "name":
            return f"name {self.value}"
        return f"'{self.value}'"


def tokenize(source: str) -> list[Token]:
    """Split an expression into tokens. Raises ExpressionError on a malformed token."""
    tokens: list[Token] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
            continue
        pos = i + 1
        if ch == "[":
            end = source.find("]", i + 1)
            if end == -1:
                raise ExpressionError("unterminated attribute reference: expected ']'", pos, source)
            name = source[i + 1 : end].strip()
            if not name:
                raise ExpressionError("empty attribute reference '[]'", pos, source)
            tokens.append(Token("attr", name, pos))
            i = end + 1
        elif ch == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    raise ExpressionError("unterminated string: expected a closing '\"'", pos, source)
                c = source[i]
                if c == "\\" and i + 1 < n and source[i + 1] in '"\\':
                    chars.append(source[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
            tokens.append(Token("string", "".join(chars), pos))
        elif ch in "(),":
            tokens.append(Token(ch, ch, pos))
            i += 1
        elif ch in _DIGITS or (ch == "-" and i + 1 < n and source[i + 1] in _DIGITS):
            m = _NUMBER.match(source, i)
            assert m is not None  # the branch condition guarantees a digit
            tokens.append(Token("number", m.group(0), pos))
            i = m.end()
        elif _IDENT_START.match(ch):
            m = _IDENT.match(source, i)
            assert m is not None
            tokens.append(Token("name", m.group(0), pos))
            i = m.end()
        else:
            op = next((o for o in _OPERATORS if source.startswith(o, i)), None)
            if op is None:
                raise ExpressionError(f"unexpected character {ch!r}", pos, source)
            tokens.append(Token("op", op, pos))
            i += len(op)
    tokens.append(Token("end", "", n + 1))
    return tokens


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class Node:
    kind: str  # attr | string | number | empty | call | compare
    value: str
    position: int
    args: tuple[Node, ...] = ()


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def fail(self, expected: str, token: Token | None = None) -> ExpressionError:
        found = token or self.current
        return ExpressionError(f"expected {expected}, found {found.describe()}", found.position, self.source)

    def parse(self) -> Node:
        node = self.primary()
        if self.current.kind != "end":
            raise self.fail("end of expression")
        return node

    def primary(self) -> Node:
        token = self.current
        if token.kind in ("attr", "string", "number"):
            self.index += 1
            return Node(token.kind, token.value, token.position)
        if token.kind == "name":
            self.index += 1
            if self.current.kind != "(":
                raise self.fail(f"'(' after function name {token.value}")
            self.index += 1
            return Node("call", token.value, token.position, self.arguments())
        raise self.fail("an attribute, a string, a number or a function call")

    def arguments(self) -> tuple[Node, ...]:
        if self.current.kind == ")":
            self.index += 1
            return ()
        args = [self.argument()]
        while self.current.kind == ",":
            self.index += 1
            args.append(self.argument())
        if self.current.kind != ")":
            raise self.fail("',' or ')'")
        self.index += 1
        return tuple(args)

    def argument(self) -> Node:
        if self.current.kind in (",", ")"):
            return Node("empty", "", self.current.position)
        left = self.primary()
        if self.current.kind != "op":
            return left
        op = self.current
        self.index += 1
        right = self.primary()
        return Node("compare", op.value, op.position, (left, right))


def parse(source: str) -> Node:
    """Parse an expression into a syntax tree. Raises ExpressionError with the position."""
    return _Parser(source).parse()


# --------------------------------------------------------------------------- compiler


@dataclass(frozen=True, slots=True)
class Compiled:
    """A compiled expression: its text, the closure, and what it reads."""

    source: str
    evaluate: Evaluator
    properties: frozenset[str]  # top-level Graph properties to $select
    attributes: frozenset[str]  # attribute names as written


@dataclass(frozen=True, slots=True)
class _Function:
    min_args: int
    max_args: int | None
    signature: str
    build: Callable[[_Compiler, Node, list[Evaluator]], Evaluator]


def _always(value: Any) -> Evaluator:
    return lambda _obj: value


class _Compiler:
    def __init__(self, source: str, catalog: Catalog) -> None:
        self.source = source
        self.catalog = catalog
        self.properties: set[str] = set()
        self.attributes: set[str] = set()

    def error(self, problem: str, node: Node) -> ExpressionError:
        return ExpressionError(problem, node.position, self.source)

    def compile(self, node: Node) -> Evaluator:
        if node.kind == "string":
            return _always(node.value)
        if node.kind == "number":
            return _always(int(node.value))
        if node.kind == "empty":
            return _always(None)
        if node.kind == "attr":
            return self.attribute(node)
        if node.kind == "compare":
            return self.compare(node)
        return self.call(node)

    def attribute(self, node: Node) -> Evaluator:
        prop = self.catalog.lookup(node.value)
        if prop is None:
            raise self.error(self.catalog.unknown(node.value), node)
        if prop.kind == REFERENCE:
            raise self.error(
                f"{prop.name} is a reference to another object and cannot be read in an expression; "
                f"map it directly (source: {prop.name})",
                node,
            )
        if prop.kind == COMPLEX:
            fields = ", ".join(self.catalog.complex_fields(prop.name)[:3])
            raise self.error(f"{prop.name} is an object; name one of its fields, such as {fields}", node)
        self.attributes.add(prop.name)
        if prop.select is not None:
            self.properties.add(prop.select)
        return attribute_getter(prop)

    def compare(self, node: Node) -> Evaluator:
        left, right = (self.compile(a) for a in node.args)
        op = node.value

        def evaluate(obj: GraphObject) -> bool:
            a, b = text(left(obj)), text(right(obj))
            if a is None or b is None:
                return False  # Entra: a condition on a null value fails
            if op == "=":
                return a == b
            if op == "<>":
                return a != b
            order = _ORDER[op]
            x, y = as_int(a), as_int(b)
            # integers compare as numbers (DateDiff(...) > 5), anything else as text
            return bool(order(x, y)) if x is not None and y is not None else bool(order(a, b))

        return evaluate

    def call(self, node: Node) -> Evaluator:
        function = FUNCTIONS.get(node.value)
        if function is None:
            folded = {name.casefold(): name for name in FUNCTIONS}
            hint = folded.get(node.value.casefold())
            if hint is not None:
                raise self.error(
                    f"unknown function {node.value}; did you mean {hint}? (names are case-sensitive)", node
                )
            close = difflib.get_close_matches(node.value, list(FUNCTIONS), n=1)
            suggestion = f"; did you mean {close[0]}?" if close else ""
            raise self.error(f"unknown function {node.value}{suggestion}", node)
        count = len(node.args)
        if count < function.min_args or (function.max_args is not None and count > function.max_args):
            if function.max_args is None:
                wanted = f"at least {function.min_args}"
            elif function.min_args == function.max_args:
                wanted = str(function.min_args)
            else:
                wanted = f"{function.min_args} to {function.max_args}"
            plural = "" if wanted == "1" else "s"
            raise self.error(
                f"{node.value} takes {wanted} argument{plural} ({function.signature}), found {count}", node
            )
        for index, arg in enumerate(node.args):
            if arg.kind == "compare" and not (node.value == "IIF" and index == 0):
                raise self.error(f"a comparison ('{arg.value}') is only allowed as the condition of IIF", arg)
        args = [self.compile(a) for a in node.args]
        return function.build(self, node, args)

    # helpers used by the builders ---------------------------------------------------------------

    def literal_int(self, node: Node, name: str, minimum: int | None = None) -> int | None:
        """The value of an integer literal argument (validated now), or None for a computed one."""
        if node.kind == "number":
            value = int(node.value)
        elif node.kind == "string" and (parsed := as_int(node.value)) is not None:
            value = parsed
        elif node.kind in ("string", "empty"):
            found = f"string {node.value!r}" if node.kind == "string" else "an empty argument"
            raise self.error(f"{name} must be an integer, found {found}", node)
        else:
            return None
        if minimum is not None and value < minimum:
            raise self.error(f"{name} must be at least {minimum}, found {value}", node)
        return value

    def literal_string(self, node: Node, name: str) -> str:
        if node.kind != "string":
            raise self.error(f"{name} must be a string constant in double quotes", node)
        return node.value


def _integer_arg(value: int | None, evaluator: Evaluator) -> Callable[[GraphObject], int | None]:
    if value is not None:
        fixed = value
        return lambda _obj: fixed
    return lambda obj: as_int(evaluator(obj))


# --------------------------------------------------------------------------- functions


def _append(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source, suffix = args

    def evaluate(obj: GraphObject) -> Any:
        tail = text(suffix(obj)) or ""
        return _lift(lambda s: s + tail)(source(obj))

    return evaluate


def _coalesce(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    def evaluate(obj: GraphObject) -> Any:
        for arg in args:
            value = arg(obj)
            if not is_absent(value):
                return value
        return None

    return evaluate


def _join(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    separator, sources = args[0], args[1:]

    def evaluate(obj: GraphObject) -> Any:
        parts: list[str] = []
        for source in sources:
            value = source(obj)
            for item in value if isinstance(value, list) else (value,):
                t = text(item)
                if t:
                    parts.append(t)
        return (text(separator(obj)) or "").join(parts) if parts else None

    return evaluate


def _left(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    count = _integer_arg(c.literal_int(node.args[1], "Left's numChars"), args[1])

    def cut(s: str, n: int | None) -> str | None:
        if n is None:
            return None
        return s if n < 0 else s[:n]

    def evaluate(obj: GraphObject) -> Any:
        value = source(obj)
        n = count(obj)
        if value is None:
            return ""  # Entra: Left of null is the empty string
        return _lift(lambda s: cut(s, n))(value)

    return evaluate


def _mid(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    start = _integer_arg(c.literal_int(node.args[1], "Mid's start", minimum=1), args[1])
    length = _integer_arg(c.literal_int(node.args[2], "Mid's length", minimum=0), args[2])

    def evaluate(obj: GraphObject) -> Any:
        s0, n = start(obj), length(obj)
        if s0 is None or n is None or s0 < 1 or n < 0:
            return None
        return _lift(lambda s: s[s0 - 1 : s0 - 1 + n])(source(obj))

    return evaluate


# Entra's NormalizeDiacritics table: letters that are not "base letter + combining mark" in Unicode.
_DIACRITIC_SPECIALS: Final = str.maketrans(
    {
        "æ": "ae",
        "Æ": "AE",
        "ǣ": "ae",
        "Ǣ": "AE",
        "ø": "oe",
        "Ø": "OE",
        "œ": "oe",
        "Œ": "OE",
        "ß": "ss",
        "ł": "l",
        "Ł": "L",
        "\u0131": "i",  # dotless i
        "đ": "d",
        "Đ": "D",
    }
)


def normalize_diacritics(s: str) -> str:
    """Replace letters with diacritics by their plain equivalents (Entra's NormalizeDiacritics)."""
    if s.isascii():
        return s
    decomposed = unicodedata.normalize("NFD", s.translate(_DIACRITIC_SPECIALS))
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return unicodedata.normalize("NFC", stripped)


def _normalize(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    apply = _lift(normalize_diacritics)
    return lambda obj: apply(source(obj))


def _not(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    return lambda obj: not is_true(source(obj))


def _is_null(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]

    def evaluate(obj: GraphObject) -> bool:
        value = source(obj)
        return value is None or (isinstance(value, list) and not value)

    return evaluate


def _is_null_or_empty(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    return lambda obj: is_absent(source(obj))


def _is_present(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    return lambda obj: not is_absent(source(obj))


def _item(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    index = _integer_arg(c.literal_int(node.args[1], "Item's index", minimum=1), args[1])

    def evaluate(obj: GraphObject) -> Any:
        value, i = source(obj), index(obj)
        if i is None or i < 1 or value is None:
            return None
        items = value if isinstance(value, list) else [value]
        return items[i - 1] if i <= len(items) else None

    return evaluate


def _iif(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    condition, if_true, if_false = args
    return lambda obj: if_true(obj) if is_true(condition(obj)) else if_false(obj)


def _replace(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    source, old_value, _, _, replacement, replacement_attr, template = args
    given = [a.kind != "empty" for a in node.args]
    _, has_old, has_regex, has_group, has_replacement, has_attr, has_template = given
    pattern: re.Pattern[str] | None = None
    group: str | None = None
    if has_regex:
        regex_node = node.args[2]
        raw = c.literal_string(regex_node, "Replace's regexPattern")
        try:
            pattern = compile_regex(raw)
        except re.error as error:
            raise c.error(f"invalid regular expression {raw!r}: {error}", regex_node) from None
    if has_group:
        group_node = node.args[3]
        group = c.literal_string(group_node, "Replace's regexGroupName")
        if pattern is None:
            raise c.error("regexGroupName needs a regexPattern", group_node)
        if group not in pattern.groupindex:
            raise c.error(f"regexGroupName {group!r} is not a named group of the regexPattern", group_node)
    if has_old and has_regex:
        raise c.error("Replace takes oldValue or regexPattern, not both", node)

    if pattern is not None and group is not None and has_attr:
        rx, name = pattern, group

        def fallback(obj: GraphObject) -> Any:
            value = source(obj)
            if not is_absent(value):
                return value
            other = text(replacement_attr(obj))
            match = rx.search(other) if other is not None else None
            return match.group(name) if match is not None else None

        return fallback

    if pattern is not None and group is not None and has_replacement:
        rx, name = pattern, group

        def replace_group(s: str, new: str) -> str:
            out: list[str] = []
            last = 0
            for match in rx.finditer(s):
                start, end = match.span(name)
                if start < 0:
                    continue
                out.append(s[last:start])
                out.append(new)
                last = end
            out.append(s[last:])
            return "".join(out)

        def regex_group(obj: GraphObject) -> Any:
            new = text(replacement(obj)) or ""
            return _lift(lambda s: replace_group(s, new))(source(obj))

        return regex_group

    if pattern is not None and has_replacement:
        rx = pattern
        repl_node = node.args[4]
        fixed = substitution(repl_node.value) if repl_node.kind == "string" else None

        def regex_replace(obj: GraphObject) -> Any:
            expand = fixed or substitution(text(replacement(obj)) or "")
            return _lift(lambda s: rx.sub(expand, s))(source(obj))

        return regex_replace

    if has_old and has_template:

        def templated(obj: GraphObject) -> Any:
            value, old, frame = text(source(obj)), text(old_value(obj)), text(template(obj))
            if value is None or frame is None:
                return None
            return frame.replace(old, value) if old else frame

        return templated

    if has_old and has_replacement:

        def plain(obj: GraphObject) -> Any:
            old = text(old_value(obj))
            new = text(replacement(obj)) or ""
            if not old:
                return source(obj)
            return _lift(lambda s: s.replace(old, new))(source(obj))

        return plain

    raise c.error(
        "Replace needs oldValue with replacementValue or template, or regexPattern with "
        "replacementValue, or regexPattern and regexGroupName with replacementAttributeName",
        node,
    )


def _strip_spaces(_c: _Compiler, _node: Node, args: list[Evaluator]) -> Evaluator:
    source = args[0]
    apply = _lift(lambda s: s.replace(" ", ""))
    return lambda obj: apply(source(obj))


def _switch(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    if len(args) % 2:
        raise c.error(
            f"Switch takes a source, a default and key/value pairs, found {len(args)} arguments "
            "(a key without its value)",
            node,
        )
    source, default = args[0], args[1]
    pairs = [(args[i], args[i + 1]) for i in range(2, len(args), 2)]
    constant_keys = all(node.args[i].kind in ("string", "number") for i in range(2, len(args), 2))
    if constant_keys:
        table: dict[str, Evaluator] = {}
        for i in range(2, len(args), 2):
            table.setdefault(node.args[i].value, args[i + 1])

        def lookup(obj: GraphObject) -> Any:
            key = text(source(obj))
            chosen = table.get("" if key is None else key, default)
            return chosen(obj)

        return lookup

    def scan(obj: GraphObject) -> Any:
        key = text(source(obj))
        key = "" if key is None else key
        for candidate, value in pairs:
            if text(candidate(obj)) == key:
                return value(obj)
        return default(obj)

    return scan


_CULTURE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_TURKIC = ("tr", "az")
# Turkish and Azerbaijani pair dotted and dotless i differently from every other culture
_TURKIC_UPPER: Final = str.maketrans({"i": "\u0130", "\u0131": "I"})
_TURKIC_LOWER: Final = str.maketrans({"I": "\u0131", "\u0130": "i"})


def _upper_simple(s: str) -> str:
    # .NET maps case one character to one character ("ß" stays "ß"); Python would give "SS"
    if s.isascii():
        return s.upper()
    return "".join(u if len(u := ch.upper()) == 1 else ch for ch in s)


def _lower_simple(s: str) -> str:
    if s.isascii():
        return s.lower()
    return "".join(lo if len(lo := ch.lower()) == 1 else ch for ch in s)


def _case(upper: bool) -> Callable[[_Compiler, Node, list[Evaluator]], Evaluator]:
    def build(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
        source = args[0]
        turkic = False
        if len(node.args) == 2 and node.args[1].kind != "empty":
            culture = c.literal_string(node.args[1], f"{node.value}'s culture")
            if not _CULTURE.fullmatch(culture):
                raise c.error(f'culture {culture!r} is not a culture name such as "en-US"', node.args[1])
            turkic = culture.split("-")[0].casefold() in _TURKIC

        def convert(s: str) -> str:
            if turkic:
                s = s.translate(_TURKIC_UPPER if upper else _TURKIC_LOWER)
            return _upper_simple(s) if upper else _lower_simple(s)

        apply = _lift(convert)
        return lambda obj: apply(source(obj))

    return build


def _word(c: _Compiler, node: Node, args: list[Evaluator]) -> Evaluator:
    source, _, delimiters = args
    number = _integer_arg(c.literal_int(node.args[1], "Word's wordNumber"), args[1])

    def evaluate(obj: GraphObject) -> Any:
        s, n, delims = text(source(obj)), number(obj), text(delimiters(obj)) or ""
        if s is None or n is None or n < 1:
            return ""
        words = [w for w in re.split("[" + re.escape(delims) + "]", s) if w] if delims else [s]
        return words[n - 1] if n <= len(words) else ""

    return evaluate


FUNCTIONS: Final[Mapping[str, _Function]] = {
    "Append": _Function(2, 2, "source, suffix", _append),
    "Coalesce": _Function(1, None, "source1, source2, ...", _coalesce),
    "IIF": _Function(3, 3, "condition, valueIfTrue, valueIfFalse", _iif),
    "IsNull": _Function(1, 1, "expression", _is_null),
    "IsNullOrEmpty": _Function(1, 1, "expression", _is_null_or_empty),
    "IsPresent": _Function(1, 1, "expression", _is_present),
    "Item": _Function(2, 2, "attribute, index", _item),
    "Join": _Function(2, None, "separator, source1, source2, ...", _join),
    "Left": _Function(2, 2, "source, numChars", _left),
    "Mid": _Function(3, 3, "source, start, length", _mid),
    "NormalizeDiacritics": _Function(1, 1, "source", _normalize),
    "Not": _Function(1, 1, "source", _not),
    "Replace": _Function(
        7,
        7,
        "source, oldValue, regexPattern, regexGroupName, replacementValue, replacementAttributeName, "
        "template; leave unused ones empty",
        _replace,
    ),
    "StripSpaces": _Function(1, 1, "source", _strip_spaces),
    "Switch": _Function(4, None, "source, defaultValue, key1, value1, key2, value2, ...", _switch),
    "ToLower": _Function(1, 2, "source, culture", _case(upper=False)),
    "ToUpper": _Function(1, 2, "source, culture", _case(upper=True)),
    "Word": _Function(3, 3, "source, wordNumber, delimiters", _word),
}


def compile_expression(source: str, catalog: Catalog) -> Compiled:
    """Parse and compile an expression against a property catalog. Raises ExpressionError."""
    tree = parse(source)
    compiler = _Compiler(source, catalog)
    evaluate = compiler.compile(tree)
    return Compiled(source, evaluate, frozenset(compiler.properties), frozenset(compiler.attributes))
