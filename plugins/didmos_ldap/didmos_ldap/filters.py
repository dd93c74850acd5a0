"""LDAP search filters (RFC 4515) built from values, never from string concatenation.

A filter is a tree of small immutable nodes. Rendering escapes every assertion value with
python-ldap's own :func:`ldap.filter.escape_filter_chars`, so no value, however hostile, can
change the filter's structure; attribute names are checked against RFC 4512 for the same reason.

Build a filter in code and pass ``str(f)`` to python-ldap::

    f = eq("objectClass", "person") & (present("mail") | starts_with("uid", user_input))
    conn.search_s(base, ldap.SCOPE_SUBTREE, str(f))

Check a filter written in configuration (raises :class:`ValueError` saying where it is wrong)::

    scope = parse("(&(objectClass=didmosPerson)(didmosTenant=acme))")

Or let configuration describe the filter as data instead of text::

    from_structure({"and": [{"eq": ["objectClass", "person"]}, {"not": {"eq": ["didmosActive", False]}}]})

Values are ``str``, ``bytes`` (binary attributes, rendered as ``\\xx`` for every byte), ``bool``
(rendered ``TRUE``/``FALSE``, the LDAP Boolean syntax) or ``int``. Two filters are equal when they
send the same octets to the server, so ``eq("a", b"x") == eq("a", "x")`` and
``eq("a", True) == eq("a", "TRUE")``; that is what makes ``parse(str(f)) == f`` hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Union

from ldap.filter import escape_filter_chars

__all__ = [
    "Filter", "Equal", "Present", "Substring", "GreaterOrEqual", "LessOrEqual", "Approx", "And", "Or", "Not",
    "eq", "present", "contains", "starts_with", "ends_with", "ge", "le", "approx", "all_of", "any_of", "not_",
    "parse", "from_structure",
]

Value = Union[str, bytes, bool, int]

# RFC 4512: descr or numericoid, then ";option"s. Digits first ("1abc") is neither.
_ATTR = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+)(?:;[A-Za-z0-9-]+)*")
_MAX_DEPTH = 100  # deeper input is garbage, and would otherwise end in RecursionError


def _attr(name: Any) -> str:
    if not isinstance(name, str) or not _ATTR.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid LDAP attribute name: expected a name such as 'cn', "
                         "'cn;lang-de' or an OID such as '2.5.4.3'")
    return name


def _octets(value: Value) -> bytes:
    """The octets the server receives for ``value``."""
    if isinstance(value, bool):  # before int: bool is an int
        return b"TRUE" if value else b"FALSE"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates would only fail later, inside python-ldap
            raise ValueError(f"filter value {value!r} cannot be encoded as UTF-8") from exc
    raise TypeError(f"filter values must be str, bytes, bool or int, not {type(value).__name__}")


def _escape(value: Value) -> str:
    if isinstance(value, bytes):
        # escape_mode=2 writes "\%02x" per character, which is one "\xx" per byte only for
        # characters below 256, hence latin-1; python-ldap has no bytes-level helper.
        return escape_filter_chars(value.decode("latin-1"), escape_mode=2)
    return escape_filter_chars(_octets(value).decode("utf-8"))


def _value_back(raw: bytes) -> Value:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class Filter:
    """Base of all filter nodes: ``str(f)`` renders it; ``&``, ``|`` and ``~`` combine nodes."""

    def render(self) -> str:
        """The RFC 4515 string form."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.render()

    # Equality compares the octets sent to the server, not the Python values (see the module docstring).
    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self), self._key()))

    def __and__(self, other: Filter) -> And:
        return all_of(self, other) if isinstance(other, Filter) else NotImplemented

    def __or__(self, other: Filter) -> Or:
        return any_of(self, other) if isinstance(other, Filter) else NotImplemented

    def __invert__(self) -> Not:
        return Not(self)


@dataclass(frozen=True, eq=False)
class _Compare(Filter):
    attr: str
    value: Value
    _op = ""

    def __post_init__(self):
        _attr(self.attr)
        _octets(self.value)

    def _key(self) -> tuple:
        return self.attr, _octets(self.value)

    def render(self) -> str:
        return f"({self.attr}{self._op}{_escape(self.value)})"


class Equal(_Compare):
    """``(attr=value)``: equality match."""
    _op = "="


class GreaterOrEqual(_Compare):
    """``(attr>=value)``: ordering match."""
    _op = ">="


class LessOrEqual(_Compare):
    """``(attr<=value)``: ordering match."""
    _op = "<="


class Approx(_Compare):
    """``(attr~=value)``: approximate match (the server decides what "approximate" means)."""
    _op = "~="


@dataclass(frozen=True, eq=False)
class Present(Filter):
    """``(attr=*)``: the entry has some value of ``attr``."""
    attr: str

    def __post_init__(self):
        _attr(self.attr)

    def render(self) -> str:
        return f"({self.attr}=*)"


@dataclass(frozen=True, eq=False)
class Substring(Filter):
    """``(attr=initial*any1*any2*final)``; at least one part, and no part may be empty."""
    attr: str
    initial: Value | None = None
    any: tuple[Value, ...] = ()
    final: Value | None = None

    def __post_init__(self):
        _attr(self.attr)
        object.__setattr__(self, "any", tuple(self.any))
        if self.initial is None and not self.any and self.final is None:
            raise ValueError(f"substring filter on {self.attr!r} needs an initial, any or final part")
        # an empty part would render like a missing one, so it could not survive parse()
        if any(not _octets(p) for p in (self.initial, *self.any, self.final) if p is not None):
            raise ValueError(f"substring filter on {self.attr!r} has an empty part; leave it out instead")

    def _key(self) -> tuple:
        edges = [None if p is None else _octets(p) for p in (self.initial, self.final)]
        return self.attr, edges[0], tuple(map(_octets, self.any)), edges[1]

    def render(self) -> str:
        middle = "".join(_escape(p) + "*" for p in self.any)
        initial = "" if self.initial is None else _escape(self.initial)
        final = "" if self.final is None else _escape(self.final)
        return f"({self.attr}={initial}*{middle}{final})"


@dataclass(frozen=True, eq=False)
class _Junction(Filter):
    parts: tuple[Filter, ...] = field(default=())
    _op = ""

    def __post_init__(self):
        object.__setattr__(self, "parts", tuple(self.parts))
        for part in self.parts:
            if not isinstance(part, Filter):
                raise TypeError(f"{type(self).__name__} parts must be filters, not {type(part).__name__}")

    def render(self) -> str:
        return f"({self._op}{''.join(p.render() for p in self.parts)})"


class And(_Junction):
    """``(&...)``: all parts match. ``And(())`` renders ``(&)``, absolute true (RFC 4526)."""
    _op = "&"


class Or(_Junction):
    """``(|...)``: some part matches. ``Or(())`` renders ``(|)``, absolute false (RFC 4526)."""
    _op = "|"


@dataclass(frozen=True, eq=False)
class Not(Filter):
    """``(!part)``: negation."""
    part: Filter

    def __post_init__(self):
        if not isinstance(self.part, Filter):
            raise TypeError(f"Not needs a filter, not {type(self.part).__name__}")

    def render(self) -> str:
        return f"(!{self.part.render()})"


def eq(attr: str, value: Value) -> Equal:
    """``(attr=value)``."""
    return Equal(attr, value)


def present(attr: str) -> Present:
    """``(attr=*)``."""
    return Present(attr)


def contains(attr: str, value: Value) -> Substring:
    """``(attr=*value*)``."""
    return Substring(attr, any=(value,))


def starts_with(attr: str, value: Value) -> Substring:
    """``(attr=value*)``."""
    _octets(value)  # None would silently mean "no initial part"
    return Substring(attr, initial=value)


def ends_with(attr: str, value: Value) -> Substring:
    """``(attr=*value)``."""
    _octets(value)  # None would silently mean "no final part"
    return Substring(attr, final=value)


def ge(attr: str, value: Value) -> GreaterOrEqual:
    """``(attr>=value)``."""
    return GreaterOrEqual(attr, value)


def le(attr: str, value: Value) -> LessOrEqual:
    """``(attr<=value)``."""
    return LessOrEqual(attr, value)


def approx(attr: str, value: Value) -> Approx:
    """``(attr~=value)``."""
    return Approx(attr, value)


def _flatten(kind: type[_Junction], parts: tuple[Filter, ...]) -> tuple[Filter, ...]:
    return tuple(q for p in parts for q in (p.parts if type(p) is kind else (p,)))


def all_of(*parts: Filter) -> And:
    """``(&parts...)``, with nested ``And`` parts merged in; no parts: absolute true ``(&)``."""
    return And(_flatten(And, parts))


def any_of(*parts: Filter) -> Or:
    """``(|parts...)``, with nested ``Or`` parts merged in; no parts: absolute false ``(|)``."""
    return Or(_flatten(Or, parts))


@dataclass(frozen=True, eq=False)
class InSubtree(Filter):
    """``(entryDN:dnSubtreeMatch:=dn)``: the entry is ``dn`` or below it (OpenLDAP's extensible match on
    ``entryDN``). Lets a search span the whole tenant yet return only entries of some subtrees, as the
    policy decision point needs for lists. :func:`parse` does not read it back (it refuses extensible
    matches in general); build it with :func:`in_subtree`.
    """

    dn: str

    def __post_init__(self):
        import ldap.dn

        if not isinstance(self.dn, str) or not ldap.dn.is_dn(self.dn) or not self.dn:
            raise ValueError(f"{self.dn!r} is not a valid DN")

    def _key(self) -> tuple:
        return (_normal_dn(self.dn),)

    def render(self) -> str:
        return f"(entryDN:dnSubtreeMatch:={_escape(self.dn)})"


def _normal_dn(dn: str) -> str:
    import ldap.dn

    return ldap.dn.dn2str([[(a.lower(), v.lower(), f) for a, v, f in rdn] for rdn in ldap.dn.str2dn(dn)])


def in_subtree(dn: str) -> InSubtree:
    """Entries at or below ``dn``."""
    return InSubtree(dn)


def not_(part: Filter) -> Not:
    """``(!part)``."""
    return Not(part)


class _Parser:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def fail(self, why: str, pos: int | None = None):
        raise ValueError(f"invalid LDAP filter {self.text!r} at position {self.pos if pos is None else pos}: {why}")

    def expect(self, char: str):
        if self.text[self.pos:self.pos + 1] != char:
            self.fail(f"expected {char!r}")
        self.pos += 1

    def filter(self, depth: int = 0) -> Filter:
        if depth > _MAX_DEPTH:
            self.fail(f"nested deeper than {_MAX_DEPTH} levels")
        self.expect("(")
        head = self.text[self.pos:self.pos + 1]
        if head in ("&", "|"):
            self.pos += 1
            parts = []
            while self.text.startswith("(", self.pos):
                parts.append(self.filter(depth + 1))
            result = (And if head == "&" else Or)(tuple(parts))
        elif head == "!":
            self.pos += 1
            result = Not(self.filter(depth + 1))
        else:
            result = self.item()
        self.expect(")")
        return result

    def item(self) -> Filter:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isascii() and self.text[self.pos].isalnum()
                                             or self.text[self.pos] in ".;-"):
            self.pos += 1
        attr = self.text[start:self.pos]
        if not _ATTR.fullmatch(attr):
            self.fail(f"{attr!r} is not a valid LDAP attribute name", start)
        op = next((o for o in ("=", "~=", ">=", "<=") if self.text.startswith(o, self.pos)), None)
        if op is None:
            if self.text.startswith(":", self.pos):
                self.fail("extensible match filters (':=') are not supported")
            self.fail("expected '=', '~=', '>=' or '<='")
        self.pos += len(op)
        chunks = self.value_chunks(allow_star=op == "=")
        if op != "=":
            return {"~=": Approx, ">=": GreaterOrEqual, "<=": LessOrEqual}[op](attr, _value_back(chunks[0]))
        if len(chunks) == 1:
            return Equal(attr, _value_back(chunks[0]))
        if chunks == [b"", b""]:
            return Present(attr)
        initial, *middle, final = chunks
        return Substring(attr, _value_back(initial) if initial else None, tuple(map(_value_back, middle)),
                         _value_back(final) if final else None)

    def value_chunks(self, allow_star: bool) -> list[bytes]:
        """The raw octets of an assertion value, split at unescaped ``*``."""
        chunks, current = [], bytearray()
        while self.pos < len(self.text) and self.text[self.pos] != ")":
            char = self.text[self.pos]
            if char == "\\":
                digits = self.text[self.pos + 1:self.pos + 3]
                if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    self.fail("'\\' must be followed by two hex digits")
                current.append(int(digits, 16))
                self.pos += 3
                continue
            if char == "*" and allow_star:
                if chunks and not current:
                    self.fail("empty substring part ('**')")
                chunks.append(bytes(current))
                current = bytearray()
            elif char in "*(\x00":
                self.fail(f"{char!r} must be escaped in a value (as \\{ord(char):02x})")
            else:
                try:
                    current += char.encode("utf-8")
                except UnicodeEncodeError:
                    self.fail("not valid Unicode text")
            self.pos += 1
        return [*chunks, bytes(current)]


def parse(text: str) -> Filter:
    """Parse an RFC 4515 filter string strictly into filter nodes; ``parse(str(f)) == f``.

    Escaped values (``\\xx``) come back as ``str`` when they are valid UTF-8, else as ``bytes``.
    Rejected with a :class:`ValueError` that names the position: anything outside the grammar
    (missing parentheses, whitespace between parts, unescaped ``*``/``(``/NUL in values, empty
    substring parts such as ``a**b``) and extensible match filters (``(cn:dn:=x)``), which no
    didmos configuration needs.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() needs a str, not {type(text).__name__}")
    parser = _Parser(text)
    result = parser.filter()
    if parser.pos != len(text):
        parser.fail("unexpected text after the filter")
    return result


class _StructureError(ValueError):
    """A ValueError that already names its place in the structure."""


_PAIRS = {"eq": eq, "contains": contains, "starts_with": starts_with, "ends_with": ends_with,
          "ge": ge, "le": le, "approx": approx}


def from_structure(obj: Any, where: str = "filter") -> Filter:
    """Build a filter from JSON-like data, as written in configuration files.

    Each node is a one-key mapping: ``{"and": [node, ...]}``, ``{"or": [node, ...]}``,
    ``{"not": node}``, ``{"present": attr}``, ``{"in_subtree": dn}`` or ``{op: [attr, value]}`` with ``op`` one of
    eq, contains, starts_with, ends_with, ge, le, approx. Raises :class:`ValueError` naming the
    offending node (e.g. ``filter.and[1].or[0]``).
    """
    if not isinstance(obj, dict) or len(obj) != 1:
        raise _StructureError(f"{where} must be a mapping with exactly one key such as 'eq' or 'and', got {obj!r}")
    (key, arg), = obj.items()
    here = f"{where}.{key}"
    try:
        if key in ("and", "or"):
            if not isinstance(arg, list):
                raise _StructureError(f"{here} must be a list of filters, got {arg!r}")
            parts = [from_structure(p, f"{here}[{i}]") for i, p in enumerate(arg)]
            return (all_of if key == "and" else any_of)(*parts)
        if key == "not":
            return Not(from_structure(arg, here))
        if key == "present":
            return present(arg)
        if key == "in_subtree":
            return in_subtree(arg)
        if key in _PAIRS:
            if not isinstance(arg, list) or len(arg) != 2:
                raise _StructureError(f"{here} must be a list [attribute, value], got {arg!r}")
            return _PAIRS[key](*arg)
    except _StructureError:
        raise
    except (TypeError, ValueError) as exc:  # from the node constructors: say where in the structure
        raise _StructureError(f"{here}: {exc}") from None
    raise _StructureError(f"{where} has unknown key {key!r}; "
                          f"expected one of and, or, not, present, in_subtree, {', '.join(_PAIRS)}")
