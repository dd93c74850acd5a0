"""SCIM filters (RFC 7644 section 3.4.2.2): parsed into a small tree, translated into one LDAP filter.

Parsing::

    tree = parse('userName sw "J" and emails[type eq "work" and value co "@example.com"]')

gives frozen dataclasses (:class:`Comparison`, :class:`Presence`, :class:`And`, :class:`Or`,
:class:`Not`, :class:`ValuePath`, with :class:`AttrPath` for attribute paths); ``str(tree)`` writes the
filter back as text, and ``parse(str(tree)) == tree`` for every tree :func:`parse` returns (positions
aside). The grammar is the RFC's:

* ``attrPath op value`` with op ``eq ne co sw ew gt lt ge le``, and ``attrPath pr``;
* ``and`` binds tighter than ``or``; ``not (...)`` needs its parentheses; ``(...)`` groups;
* ``attrPath[valFilter]``: a value path, whose paths name sub-attributes of ``attrPath``. Value paths
  do not nest (RFC errata 4690), and ``emails[type eq "work"].value`` is a PATCH path, not a filter;
* values are JSON: a string in double quotes (JSON escapes), ``true``, ``false``, ``null`` or a number;
* an attribute path is ``[schema URN ":"] name ["." subAttribute]``; the URN has colons and dots of its
  own, so the name is what follows the last colon.

Keywords are matched case-insensitively (ABNF literals are, RFC 5234 section 2.3), so ``EQ``, ``And``
and ``TRUE`` are accepted, as clients send them. Hostile input is bounded: filters longer than
``max_length`` (:data:`MAX_LENGTH`) and nesting deeper than :data:`MAX_DEPTH` are refused before any
deep recursion, with :class:`InvalidFilter` like every other mistake.

Translating::

    ldap_filter = to_ldap(text_or_tree, DEFAULT_MAPPINGS["User"], resolve_id=directory_dn_of_id)

maps each attribute through the resource type's :class:`~didmos_scim.mapping.Mapping` and builds the
result with :mod:`didmos_ldap.filters` only, so no value can change the LDAP filter's structure. An
attribute the mapping does not know, or one that is not stored in LDAP, is a 400 ``invalidFilter``
naming the attribute, never a filter that silently matches nothing. See :func:`to_ldap` for the rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Union

from didmos_host.errors import DidmosError
from didmos_ldap import filters as ldap_filters
from didmos_scim.convert import parse_rfc3339
from didmos_scim.mapping import Attribute, Mapping, UnknownAttribute

__all__ = [
    "InvalidFilter", "MAX_LENGTH", "MAX_DEPTH", "OPERATORS",
    "AttrPath", "Comparison", "Presence", "And", "Or", "Not", "ValuePath", "Filter",
    "parse", "to_ldap",
]

#: Longest filter text accepted by default; a client needing more sends a POST .search with a
#: narrower filter, and a server can raise it per call (``max_length=``).
MAX_LENGTH = 4096
#: Deepest nesting of parentheses, ``not`` and value paths. Real filters stay below five.
MAX_DEPTH = 50
#: The comparison operators (``pr`` is a :class:`Presence`, not a comparison).
OPERATORS = ("eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le")

Value = Union[str, bool, int, Decimal, None]


class InvalidFilter(DidmosError):
    """The filter is not valid SCIM, or cannot be evaluated here (SCIM ``invalidFilter``, 400).

    ``position`` is the offset in the filter text where the problem is, when known.
    """

    status = 400
    scim_type = "invalidFilter"

    def __init__(self, message: str, *, position: int | None = None, **kwargs):
        if position is not None and position >= 0:
            message = f"{message} (at position {position} of the filter)"
            kwargs.setdefault("detail", {"position": position})
        super().__init__(message, **kwargs)
        self.position = position


# -- the tree -----------------------------------------------------------------------------------------
#
# ``position`` is where the node starts in the text it was parsed from (-1 when built in code). It takes
# no part in equality, so trees compare by meaning and tests can build them by hand.


@dataclass(frozen=True)
class AttrPath:
    """``urn:...:User:name.givenName`` -> ``AttrPath("urn:...:User", "name", "givenName")``."""

    urn: str | None
    name: str
    sub: str | None = None
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return (f"{self.urn}:" if self.urn else "") + self.name + (f".{self.sub}" if self.sub else "")


@dataclass(frozen=True)
class Comparison:
    """``path op value``; ``op`` is one of :data:`OPERATORS`, lower case."""

    path: AttrPath
    op: str
    value: Value
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path} {self.op} {_value_text(self.value)}"


@dataclass(frozen=True)
class Presence:
    """``path pr``: the attribute has a (non-empty) value."""

    path: AttrPath
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path} pr"


@dataclass(frozen=True)
class And:
    """``a and b and ...``: two or more parts."""

    parts: tuple[Filter, ...]
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return " and ".join(_operand_text(p) for p in self.parts)


@dataclass(frozen=True)
class Or:
    """``a or b or ...``: two or more parts."""

    parts: tuple[Filter, ...]
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return " or ".join(_operand_text(p) for p in self.parts)


@dataclass(frozen=True)
class Not:
    """``not (part)``."""

    part: Filter
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return f"not ({self.part})"


@dataclass(frozen=True)
class ValuePath:
    """``path[filter]``: some value of the multi-valued (or complex) ``path`` matches ``filter``, whose
    attribute paths are bare sub-attribute names (``type``, ``value``)."""

    path: AttrPath
    filter: Filter
    position: int = field(default=-1, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.path}[{self.filter}]"


Filter = Union[Comparison, Presence, And, Or, Not, ValuePath]


def _operand_text(node: Filter) -> str:
    # Nested and/or are always parenthesised, so the text parses back to the same tree.
    return f"({node})" if isinstance(node, (And, Or)) else str(node)


def _value_text(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)  # int, or Decimal (whose str is a JSON number: "1.50", "1E+3")


# -- parsing ------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")      # any escape here; json.loads decides what is valid
  | (?P<punct>[()\[\]])
  | (?P<word>[^\s()\[\]"]+)            # names, operators, keywords, numbers; interpreted by the parser
""", re.VERBOSE | re.DOTALL)

# RFC 7643 section 2.1: ATTRNAME = ALPHA *(nameChar); "$ref" is the one name outside it.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*|\$ref")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")  # a schema URN; resolving it tells whether it is known
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?P<fraction>\.[0-9]+)?(?P<exponent>[eE][+-]?[0-9]+)?")
_MAX_EXPONENT = 1000  # 1e999999999 is a short text but a billion digits once written out


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "punct", "word" or "end"
    text: str
    position: int


class _Parser:
    """Recursive descent over the tokens; ``depth`` counts groups, ``not`` and value paths."""

    def __init__(self, text: str, max_depth: int):
        self.text, self.max_depth = text, max_depth
        # Tokens are read on demand, so hostile input fails at its first excess, not after lexing it all.
        self.lookahead: list[_Token] = []
        self.scanned = 0

    def fail(self, why: str, position: int) -> InvalidFilter:
        return InvalidFilter(f"invalid filter: {why}", position=position)

    def scan(self) -> _Token:
        position = self.scanned
        while position < len(self.text):
            match = _TOKEN.match(self.text, position)
            if match is None:  # only an opening quote without its closing one gets here
                raise self.fail("string without closing '\"'", position)
            position = self.scanned = match.end()
            if match.lastgroup != "space":
                return _Token(match.lastgroup, match.group(), match.start())
        return _Token("end", "", len(self.text))

    # token helpers

    def peek(self, ahead: int = 0) -> _Token:
        while len(self.lookahead) <= ahead:
            self.lookahead.append(self.scan())
        return self.lookahead[ahead]

    @property
    def token(self) -> _Token:
        return self.peek()

    def advance(self) -> _Token:
        token = self.peek()
        if token.kind != "end":
            self.lookahead.pop(0)
        return token

    def is_word(self, *words: str) -> bool:
        return self.token.kind == "word" and self.token.text.lower() in words

    def describe(self, token: _Token) -> str:
        if token.kind == "end":
            return "the end of the filter"
        shown = token.text if len(token.text) <= 40 else token.text[:37] + "..."
        return repr(shown)

    def expect(self, punct: str, what: str) -> _Token:
        if self.token.kind != "punct" or self.token.text != punct:
            raise self.fail(f"expected {punct!r} {what}, found {self.describe(self.token)}", self.token.position)
        return self.advance()

    def deeper(self, depth: int, position: int) -> int:
        if depth + 1 > self.max_depth:
            raise self.fail(f"nested deeper than {self.max_depth} levels", position)
        return depth + 1

    # grammar

    def filter(self) -> Filter:
        if self.token.kind == "end":
            raise self.fail("the filter is empty; write e.g. userName eq \"bjensen\"", 0)
        result = self.disjunction(0, inside=None)
        if self.token.kind != "end":
            hint = ""
            if self.token.kind == "punct" and self.token.text == ")":
                hint = " (a ')' without its '(')"
            elif self.token.kind == "punct" and self.token.text == "]":
                hint = " (a ']' without its '[')"
            raise self.fail(f"unexpected {self.describe(self.token)}{hint}; expected 'and', 'or' or the end",
                            self.token.position)
        return result

    def disjunction(self, depth: int, inside: AttrPath | None) -> Filter:
        start = self.token.position
        parts = [self.conjunction(depth, inside)]
        while self.is_word("or"):
            self.advance()
            parts.append(self.conjunction(depth, inside))
        return parts[0] if len(parts) == 1 else Or(tuple(parts), start)

    def conjunction(self, depth: int, inside: AttrPath | None) -> Filter:
        start = self.token.position
        parts = [self.unary(depth, inside)]
        while self.is_word("and"):
            self.advance()
            parts.append(self.unary(depth, inside))
        return parts[0] if len(parts) == 1 else And(tuple(parts), start)

    def unary(self, depth: int, inside: AttrPath | None) -> Filter:
        token = self.token
        if token.kind == "punct" and token.text == "(":
            self.advance()
            result = self.disjunction(self.deeper(depth, token.position), inside)
            self.expect(")", f"to close the '(' at position {token.position}")
            return result
        if self.is_word("not") and self.peek(1).text == "(":
            self.advance()
            opening = self.advance()
            part = self.disjunction(self.deeper(depth, token.position), inside)
            self.expect(")", f"to close the '(' at position {opening.position}")
            return Not(part, token.position)
        return self.attribute_expression(depth, inside)

    def attribute_expression(self, depth: int, inside: AttrPath | None) -> Filter:
        token = self.advance()
        if token.kind != "word":
            raise self.fail(f"expected an attribute path such as userName or name.givenName, "
                            f"found {self.describe(token)}", token.position)
        path = self.attr_path(token, inside)
        if self.token.kind == "punct" and self.token.text == "[":
            return self.value_path(path, depth, inside)
        operator = self.advance()
        op = operator.text.lower() if operator.kind == "word" else None
        if op == "pr":
            return Presence(path, token.position)
        if op not in OPERATORS:
            hint = (" ('not' needs a filter in parentheses: not (...))" if token.text.lower() == "not" else "")
            raise self.fail(f"expected an operator (eq, ne, co, sw, ew, gt, lt, ge, le or pr) after {str(path)!r}, "
                            f"found {self.describe(operator)}{hint}", operator.position)
        return Comparison(path, op, self.comp_value(), token.position)

    def attr_path(self, token: _Token, inside: AttrPath | None) -> AttrPath:
        text = token.text
        urn, _, rest = text.rpartition(":")
        name, dot, sub = rest.partition(".")
        if inside is not None and (urn or dot):
            raise self.fail(f"inside {inside}[...] name sub-attributes of {inside} alone, such as type or value, "
                            f"not {text!r}", token.position)
        bad = (not _NAME.fullmatch(name) or (dot and not _NAME.fullmatch(sub))
               or (":" in text and not _URI.fullmatch(urn)))
        if bad:
            raise self.fail(f"{text!r} is not an attribute path; expected name, name.subAttribute or "
                            f"schemaURN:name (names start with a letter)", token.position)
        return AttrPath(urn or None, name, sub or None, token.position)

    def value_path(self, path: AttrPath, depth: int, inside: AttrPath | None) -> ValuePath:
        opening = self.advance()
        if inside is not None:
            raise self.fail(f"value paths cannot be nested: {path}[...] inside {inside}[...]", opening.position)
        if path.sub is not None:
            raise self.fail(f"a value path filters a multi-valued attribute, not the sub-attribute {path}",
                            opening.position)
        inner = self.disjunction(self.deeper(depth, opening.position), inside=path)
        closing = self.expect("]", f"to close the '[' at position {opening.position}")
        if self.text[closing.position + 1:closing.position + 2] == ".":
            raise self.fail(f"{path}[...].subAttribute is a PATCH path, not a filter; put the condition inside "
                            f"the brackets instead, e.g. {path}[type eq \"work\" and value eq \"x\"]",
                            closing.position + 1)
        return ValuePath(path, inner, path.position)

    def comp_value(self) -> Value:
        token = self.advance()
        if token.kind == "string":
            try:
                value = json.loads(token.text, strict=False)  # strict=False: raw tabs etc. are harmless
                value.encode("utf-8")
            except (ValueError, UnicodeEncodeError):  # bad escape, or a lone surrogate such as "\ud800"
                raise self.fail(f"{self.describe(token)} is not a valid JSON string", token.position) from None
            return value
        if token.kind == "word":
            word = token.text.lower()
            if word in ("true", "false", "null"):
                return {"true": True, "false": False, "null": None}[word]
            number = _NUMBER.fullmatch(token.text)
            if number:
                return self.number(token, number)
        raise self.fail(f"expected a value after the operator: a string in double quotes, true, false, null or "
                        f"a number, found {self.describe(token)}", token.position)

    def number(self, token: _Token, match: re.Match) -> int | Decimal:
        if not match["fraction"] and not match["exponent"]:
            try:
                return int(token.text)
            except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
                raise self.fail(f"number {self.describe(token)} is too long", token.position) from None
        value = Decimal(token.text)
        if abs(value.adjusted()) > _MAX_EXPONENT:
            raise self.fail(f"number {self.describe(token)} is out of range", token.position)
        return value


def parse(text: str, *, max_length: int = MAX_LENGTH, max_depth: int = MAX_DEPTH) -> Filter:
    """Parse a SCIM filter into its tree; raises :class:`InvalidFilter` saying what is wrong and where."""
    if not isinstance(text, str):
        raise TypeError(f"parse() needs the filter as str, not {type(text).__name__}")
    if len(text) > max_length:
        raise InvalidFilter(f"invalid filter: {len(text)} characters is longer than the {max_length} allowed")
    return _Parser(text, max_depth).filter()


# -- translation --------------------------------------------------------------------------------------

_TRUE = ldap_filters.all_of()   # (&): matches every entry (RFC 4526)
_FALSE = ldap_filters.any_of()  # (|): matches none

# What applies to each SCIM type (RFC 7644 3.4.2.2: ordering on booleans and binaries is an error; substring
# operators make sense on strings only). Types not listed (string, reference) take every operator.
_ORDERED = ("eq", "ne", "gt", "lt", "ge", "le")
_OPERATORS_BY_TYPE = {"boolean": ("eq", "ne"), "binary": (), "integer": _ORDERED, "decimal": _ORDERED,
                      "dateTime": _ORDERED}

# Attributes every resource has, outside the mapping (RFC 7643 section 3.1), and their LDAP homes.
_ID = "didmosUUID"
_META = {"created": "createTimestamp", "lastmodified": "modifyTimestamp"}

def _all(*parts: ldap_filters.Filter) -> ldap_filters.Filter:
    """AND with constants folded: a false part makes all false, true parts and repeats drop out, and one
    part stays bare."""
    if any(p == _FALSE for p in parts):
        return _FALSE
    kept = list(dict.fromkeys(p for p in parts if p != _TRUE))
    return kept[0] if len(kept) == 1 else ldap_filters.all_of(*kept)


def _any(*parts: ldap_filters.Filter) -> ldap_filters.Filter:
    """OR with constants folded (the dual of :func:`_all`)."""
    if any(p == _TRUE for p in parts):
        return _TRUE
    kept = list(dict.fromkeys(p for p in parts if p != _FALSE))
    return kept[0] if len(kept) == 1 else ldap_filters.any_of(*kept)


def _not(part: ldap_filters.Filter) -> ldap_filters.Filter:
    if part == _TRUE:
        return _FALSE
    if part == _FALSE:
        return _TRUE
    return ldap_filters.not_(part)


def _implies_presence(f: ldap_filters.Filter, attr: str) -> bool:
    """Whether every entry ``f`` matches has some value of ``attr`` (so ``(attr=*)`` would be redundant)."""
    if isinstance(f, (ldap_filters.Equal, ldap_filters.Substring, ldap_filters.GreaterOrEqual,
                      ldap_filters.LessOrEqual, ldap_filters.Present)):
        return f.attr.lower() == attr.lower()
    if isinstance(f, ldap_filters.And):
        return any(_implies_presence(p, attr) for p in f.parts)
    if isinstance(f, ldap_filters.Or):
        return bool(f.parts) and all(_implies_presence(p, attr) for p in f.parts)
    return False


@dataclass(frozen=True)
class _Target:
    """What an attribute path filters on.

    ``kind``:
      ``value``: the values of the LDAP attributes ``ldap`` (one for a simple attribute; one per type for
        ``emails``), of SCIM type ``type``;
      ``reference``: DNs in ``ldap`` (``members``), compared by the referenced entry's id;
      ``complex``: a complex attribute named without a sub-attribute; only ``pr`` makes sense;
      ``typed``: ``type`` or ``primary`` of a typed multi-valued attribute; ``sub`` says which.
    """

    kind: str
    name: str
    ldap: tuple[str, ...] = ()
    type: str = "string"
    attribute: Attribute | None = None
    sub: str = ""


class _Translator:
    def __init__(self, mapping: Mapping, tolerate_case: bool, resolve_id: Callable[[str], str | None] | None):
        self.mapping, self.tolerate_case, self.resolve_id = mapping, tolerate_case, resolve_id

    def fail(self, why: str, position: int) -> InvalidFilter:
        return InvalidFilter(f"invalid filter: {why}", position=position)

    # filters

    def translate(self, node: Filter) -> ldap_filters.Filter:
        if isinstance(node, And):
            return _all(*(self.translate(p) for p in node.parts))
        if isinstance(node, Or):
            return _any(*(self.translate(p) for p in node.parts))
        if isinstance(node, Not):
            return _not(self.translate(node.part))
        if isinstance(node, ValuePath):
            return self.value_path(node)
        if isinstance(node, (Comparison, Presence)):
            return self.attribute_expression(node, self.target(node.path))
        raise TypeError(f"not a SCIM filter node: {node!r}")

    def attribute_expression(self, node: Comparison | Presence, target: _Target) -> ldap_filters.Filter:
        op = "pr" if isinstance(node, Presence) else node.op
        value = None if isinstance(node, Presence) else node.value
        if target.kind == "typed":  # emails.type eq "work" means emails[type eq "work"]
            sub = AttrPath(None, target.sub, position=node.path.position)
            inner = Presence(sub) if op == "pr" else Comparison(sub, op, value)
            return self.typed_value_path(target.attribute, inner, node.path)
        if target.kind == "complex":
            if op != "pr":
                subs = [s.name for s in target.attribute.sub_attributes if s.ldap]
                raise self.fail(f"{target.name} is complex; compare one of its sub-attributes instead, such as "
                                f"{target.name}.{subs[0] if subs else 'value'}", node.path.position)
            return _any(*(ldap_filters.present(a) for a in target.ldap))
        if target.kind == "reference":
            return self.reference(op, value, target, node.path.position)
        return self.assertion(op, value, target.ldap, target.type, target.name, node.path.position)

    def value_path(self, node: ValuePath) -> ldap_filters.Filter:
        target = self.target(node.path)
        if target.attribute is not None and target.attribute.by_type:
            return self.typed_value_path(target.attribute, node.filter, node.path)
        if target.kind not in ("complex", "reference"):
            raise self.fail(f"{node.path} is not a complex attribute, so it has no [...] value filter; "
                            f"compare it directly", node.path.position)
        # Other complex attributes keep each sub-attribute in its own LDAP attribute, so the condition on
        # "the same value" becomes a condition on the entry: exact for single-valued ones (name) and for
        # an entry with one address; the directory cannot tell which parts belong together beyond that.
        return self.translate(_rebase(node.filter, node.path))

    def typed_value_path(self, attribute: Attribute, inner: Filter, path: AttrPath) -> ldap_filters.Filter:
        """``emails[...]``: evaluated once per type, on that type's LDAP attribute, then OR-ed.

        Within one type, ``type`` comparisons are constants, ``primary`` is true for the first type only
        (the primary value is the first value of the first type), and ``value`` comparisons apply to the
        type's LDAP attribute. That keeps any mix of and/or/not exact with respect to types. The value
        conditions are about the attribute, not one value: ``emails[value co "a" and value co "b"]``
        matches an entry with one address containing "a" and another containing "b", and ``primary`` is
        taken to hold for every value of the first type.
        """
        parts = []
        for index, (type_name, ldap_attr) in enumerate(attribute.by_type):
            condition = self.typed_condition(inner, attribute, path, type_name, ldap_attr, index == 0)
            if condition != _FALSE and not _implies_presence(condition, ldap_attr):
                # "some value of this type satisfies": there must be a value at all
                condition = _all(ldap_filters.present(ldap_attr), condition)
            parts.append(condition)
        return _any(*parts)

    def typed_condition(self, node: Filter, attribute: Attribute, path: AttrPath, type_name: str,
                        ldap_attr: str, first: bool) -> ldap_filters.Filter:
        recurse = lambda n: self.typed_condition(n, attribute, path, type_name, ldap_attr, first)  # noqa: E731
        if isinstance(node, And):
            return _all(*map(recurse, node.parts))
        if isinstance(node, Or):
            return _any(*map(recurse, node.parts))
        if isinstance(node, Not):
            return _not(recurse(node.part))
        if isinstance(node, ValuePath):  # only in trees built in code: the parser refuses them
            raise self.fail(f"value paths cannot be nested inside {path}[...]", node.position)
        sub = attribute.sub(node.path.name)
        where = f"{attribute.name}.{node.path.name}"
        if sub is None:
            raise self.fail(f"unknown attribute {where!r}: {attribute.name} has no sub-attribute "
                            f"{node.path.name!r}", node.path.position)
        op = "pr" if isinstance(node, Presence) else node.op
        value = None if isinstance(node, Presence) else node.value
        name = sub.name.lower()
        if name == "value":
            if op == "pr" or (op == "eq" and value is None):  # about one existing value: it has a value
                return _TRUE if op == "pr" else _FALSE
            return self.assertion(op, value, (ldap_attr,), "string", where, node.path.position)
        if name == "type":
            return _TRUE if self.type_matches(op, value, type_name, where, node.path.position) else _FALSE
        if name == "primary":
            return _TRUE if self.primary_matches(op, value, first, where, node.path.position) else _FALSE
        raise self.unmapped(where, node.path.position)

    def type_matches(self, op: str, wanted: Value, actual: str, where: str, position: int) -> bool:
        """``type op wanted`` for values of type ``actual``: SCIM types are caseExact false."""
        if op == "pr":
            return True
        if wanted is None:
            if op == "eq":
                return False  # every value has a type here
            raise self.null_with(op, where, position)
        if not isinstance(wanted, str):
            raise self.fail(f"{where} is a string; write the value in double quotes", position)
        a, w = actual.lower(), wanted.lower()
        return {"eq": a == w, "ne": a != w, "co": w in a, "sw": a.startswith(w), "ew": a.endswith(w),
                "gt": a > w, "ge": a >= w, "lt": a < w, "le": a <= w}[op]

    def primary_matches(self, op: str, wanted: Value, first: bool, where: str, position: int) -> bool:
        if op == "pr":
            return first
        if wanted is None and op == "eq":
            return not first
        if op not in ("eq", "ne"):
            raise self.fail(f"{where} is a boolean; only eq, ne and pr apply to it, not {op}", position)
        wanted = self.boolean(wanted, where, position)
        return (first == wanted) == (op == "eq")

    # assertions on LDAP attributes

    def assertion(self, op: str, value: Value, attrs: tuple[str, ...], scim_type: str, where: str,
                  position: int) -> ldap_filters.Filter:
        """``op value`` on attributes ``attrs`` (any of them, for a typed multi-valued attribute)."""
        if op == "pr":
            return _any(*(ldap_filters.present(a) for a in attrs))
        if value is None:
            if op == "eq":
                return _not(_any(*(ldap_filters.present(a) for a in attrs)))
            raise self.null_with(op, where, position)
        allowed = _OPERATORS_BY_TYPE.get(scim_type, OPERATORS)
        if op not in allowed:
            raise self.fail(f"{where} is of type {scim_type}; {op} does not apply to it (use "
                            f"{', '.join((*allowed, 'pr'))})", position)
        if op == "ne":  # "no value equals": also true without any value, as (!(a=v)) is in LDAP
            return _not(self.assertion("eq", value, attrs, scim_type, where, position))
        text = self.ldap_value(value, scim_type, where, position)
        return _any(*(self.compare(op, a, text) for a in attrs))

    @staticmethod
    def compare(op: str, attr: str, text: str) -> ldap_filters.Filter:
        if op in ("co", "sw", "ew") and not text:
            return ldap_filters.present(attr)  # every value contains, starts and ends with ""
        if op == "gt":  # LDAP has only >= and <=
            return ldap_filters.all_of(ldap_filters.ge(attr, text), ldap_filters.not_(ldap_filters.eq(attr, text)))
        if op == "lt":
            return ldap_filters.all_of(ldap_filters.le(attr, text), ldap_filters.not_(ldap_filters.eq(attr, text)))
        build = {"eq": ldap_filters.eq, "co": ldap_filters.contains, "sw": ldap_filters.starts_with,
                 "ew": ldap_filters.ends_with, "ge": ldap_filters.ge, "le": ldap_filters.le}[op]
        return build(attr, text)

    def ldap_value(self, value: Value, scim_type: str, where: str, position: int) -> str:
        """The value as the directory stores it, after checking it fits the attribute's SCIM type."""
        if scim_type == "boolean":
            return "TRUE" if self.boolean(value, where, position) else "FALSE"
        if scim_type == "integer":
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            raise self.fail(f"{where} is an integer; write a whole number without quotes, not "
                            f"{_value_text(value)}", position)
        if scim_type == "decimal":
            if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
                return format(Decimal(value).normalize(), "f")  # 1.50 and 1.5E+1 as stored: 1.5, 15
            raise self.fail(f"{where} is a decimal; write a number without quotes, not {_value_text(value)}",
                            position)
        if not isinstance(value, str):
            raise self.fail(f"{where} is a {scim_type}; write the value in double quotes, not "
                            f"{_value_text(value)}", position)
        if scim_type == "dateTime":
            stamp = parse_rfc3339(value)
            if stamp is None:
                raise self.fail(f"{where} is a dateTime; {_value_text(value)} is not an RFC 3339 date and time "
                                f"with time zone such as \"2011-05-13T04:42:34Z\"", position)
            return stamp
        return value

    def boolean(self, value: Value, where: str, position: int) -> bool:
        if isinstance(value, bool):
            return value
        # Big provisioning clients send "True"/"False" in quotes; accept them unless told to be strict.
        if self.tolerate_case and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(f"{where} is a boolean; compare it with true or false, not {_value_text(value)}", position)

    def reference(self, op: str, value: Value, target: _Target, position: int) -> ldap_filters.Filter:
        if op == "pr":
            return _any(*(ldap_filters.present(a) for a in target.ldap))
        if value is None:
            if op == "eq":
                return _not(_any(*(ldap_filters.present(a) for a in target.ldap)))
            raise self.null_with(op, f"{target.name}.value", position)
        if op not in ("eq", "ne"):
            raise self.fail(f"{target.name}.value holds ids of other entries; only eq, ne and pr apply to it, "
                            f"not {op}", position)
        if not isinstance(value, str):
            raise self.fail(f"{target.name}.value is an id; write it in double quotes", position)
        if self.resolve_id is None:
            raise self.fail(f"filtering on {target.name}.value is not supported here", position)
        # The directory stores DNs; only the caller can look up which DN an id belongs to.
        dn = self.resolve_id(value)
        found = _FALSE if dn is None else _any(*(ldap_filters.eq(a, dn) for a in target.ldap))
        return found if op == "eq" else _not(found)

    # attribute paths

    def target(self, path: AttrPath) -> _Target:
        common = self.common_attribute(path)
        if common is not None:
            return common
        try:
            resolved = self.mapping.resolve(str(path))
        except UnknownAttribute:
            raise self.fail(f"unknown attribute {str(path)!r}; a filter may only name attributes of "
                            f"{self.mapping.core.name} resources that are stored in the directory",
                            path.position) from None
        attribute, sub = resolved.attribute, resolved.sub
        name = attribute.name + (f".{sub.name}" if sub else "")
        if attribute.returned == "never":  # filtering would tell which resources have a password
            raise self.fail(f"{name} is never returned, so it cannot be filtered on", path.position)
        if attribute.by_type:  # emails, phoneNumbers
            if sub is None or sub.name.lower() == "value":
                return _Target("value", name, tuple(a for _, a in attribute.by_type), "string", attribute)
            if sub.name.lower() in ("type", "primary"):
                return _Target("typed", name, attribute=attribute, sub=sub.name.lower())
            raise self.unmapped(name, path.position)
        if attribute.ldap and attribute.type == "complex":  # a reference: members, manager, groups
            if sub is None or sub.name.lower() == "value":
                return _Target("reference", attribute.name, (attribute.ldap,), attribute=attribute)
            raise self.unmapped(name, path.position)
        if sub is not None:
            if not sub.ldap:
                raise self.unmapped(name, path.position)
            return _Target("value", name, (sub.ldap,), sub.type)
        if attribute.type == "complex":
            stored = tuple(s.ldap for s in attribute.sub_attributes if s.ldap)
            if not stored:
                raise self.unmapped(name, path.position)
            return _Target("complex", name, stored, attribute=attribute)
        if not attribute.ldap:
            raise self.unmapped(name, path.position)
        return _Target("value", name, (attribute.ldap,), attribute.type)

    def common_attribute(self, path: AttrPath) -> _Target | None:
        """``id``, ``meta.created`` and ``meta.lastModified``: in every resource, outside the mapping."""
        if path.urn is not None and path.urn.lower() != self.mapping.core.id.lower():
            return None
        name = path.name.lower()
        if name == "id" and path.sub is None:
            return _Target("value", "id", (_ID,), "string")
        if name == "meta":
            sub = (path.sub or "").lower()
            if sub in _META:
                return _Target("value", f"meta.{path.sub}", (_META[sub],), "dateTime")
            raise self.fail(f"{path} is not stored in the directory; of meta, filter on meta.created or "
                            f"meta.lastModified", path.position)
        return None

    def unmapped(self, name: str, position: int) -> InvalidFilter:
        return self.fail(f"{name} is not stored in the directory, so it cannot be filtered on", position)

    def null_with(self, op: str, where: str, position: int) -> InvalidFilter:
        return self.fail(f"null compares only with eq ({where} eq null: has no value); for {op} null use "
                         f"'{where} pr' or 'not ({where} pr)'", position)


def _rebase(node: Filter, parent: AttrPath) -> Filter:
    """The inner filter of ``parent[...]`` with each bare ``sub`` turned into ``parent.sub``."""
    if isinstance(node, (And, Or)):
        return type(node)(tuple(_rebase(p, parent) for p in node.parts), node.position)
    if isinstance(node, Not):
        return Not(_rebase(node.part, parent), node.position)
    if isinstance(node, ValuePath):
        raise InvalidFilter(f"invalid filter: value paths cannot be nested inside {parent}[...]",
                            position=node.position)
    path = AttrPath(parent.urn, parent.name, node.path.name, node.path.position)
    if isinstance(node, Presence):
        return Presence(path, node.position)
    return Comparison(path, node.op, node.value, node.position)


def to_ldap(scim_filter: str | Filter, mapping: Mapping, *, tolerate_case: bool = True,
            resolve_id: Callable[[str], str | None] | None = None,
            max_length: int = MAX_LENGTH) -> ldap_filters.Filter:
    """Translate a SCIM filter (text or tree) into one LDAP filter over ``mapping``'s attributes.

    Attributes: each path is resolved with ``mapping.resolve``; unknown attributes and attributes not
    stored in LDAP (``meta.version``, ``schemas``, ``groups.display``, ``externalId`` unless the mapping
    has it) raise :class:`InvalidFilter` naming them. ``id`` is ``didmosUUID``; ``meta.created`` and
    ``meta.lastModified`` are ``createTimestamp`` and ``modifyTimestamp``, compared as GeneralizedTime.
    A complex attribute is compared through a sub-attribute (``name.givenName``); ``name pr`` means some
    sub-attribute has a value.

    Operators: ``eq`` -> ``(a=v)``; ``ne`` -> ``(!(a=v))``, which also matches entries without ``a``;
    ``co``/``sw``/``ew`` -> substring filters (strings only); ``ge``/``le`` -> ``>=``/``<=``;
    ``gt``/``lt`` -> ``(&(a>=v)(!(a=v)))``, as LDAP has no strict ordering (strings, numbers, dateTime);
    ``pr`` -> ``(a=*)``; ``eq null`` -> ``(!(a=*))``, other operators with null are refused.
    Whether ``>=`` works at all depends on the LDAP attribute having an ORDERING rule; without one the
    server evaluates it to Undefined and nothing matches.

    Values are checked against the attribute's SCIM type: booleans are ``TRUE``/``FALSE`` (with
    ``tolerate_case``, also the strings ``"True"``, ``"false"``...), integers and decimals are written
    out, dateTimes must be RFC 3339 with a time zone and become UTC GeneralizedTime.

    Case: the directory's matching rules decide, not the filter. ``userName`` (``uid``) and most mapped
    attributes use caseIgnore matching in LDAP, so ``userName eq "Alice"`` finds ``alice``, as clients
    expect; the filter does not try to emulate ``caseExact``.

    Typed multi-valued attributes (``emails``, ``phoneNumbers``): ``emails co "x"`` and
    ``emails.value co "x"`` test every type's LDAP attribute; ``emails.type eq "work"`` means "has a
    value of type work", i.e. presence of that type's attribute (an unknown type matches nothing:
    ``(|)``); value paths ``phoneNumbers[type eq "mobile" and value sw "+49"]`` are evaluated per type
    (see ``typed_value_path``). References (``members``, ``manager``, ``groups``): the directory holds
    DNs, so ``members.value eq "<id>"`` needs ``resolve_id(id) -> DN`` (``None``: no such entry, the
    comparison matches nothing); without it such filters are refused.

    The result may be the absolute filters ``(&)`` (all) or ``(|)`` (none) of RFC 4526, which OpenLDAP
    supports. It is never built from text, so values cannot change its structure.
    """
    tree = parse(scim_filter, max_length=max_length) if isinstance(scim_filter, str) else scim_filter
    return _Translator(mapping, tolerate_case, resolve_id).translate(tree)
