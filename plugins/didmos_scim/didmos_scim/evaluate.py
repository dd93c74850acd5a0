"""SCIM value filters (RFC 7644 section 3.4.2.2) evaluated in Python, on the values of one attribute.

PATCH paths select values of a multi-valued complex attribute with a filter:
``emails[type eq "work" and value co "@example.com"].value`` or ``members[value eq "2819c223"]``. The
directory cannot answer "which of these values", so the filter is evaluated here, on the resource as read::

    node = parse('type eq "work" and value co "@example.com"')
    matches(node, {"value": "a@example.com", "type": "work"}, USER_SCHEMA.attribute("emails"))  # True
    select(node, resource["emails"], USER_SCHEMA.attribute("emails"))                        # [0, 2]

The filter's paths name sub-attributes of ``attribute``. Three spellings are accepted, as the parser
gives them: bare (``type``: parse just the text between the brackets, as above), prefixed
(``emails.type``: what ``parse('emails.type eq "work"')`` and ``filters._rebase`` give, also with a
schema URN, which is not checked: an :class:`~didmos_scim.mapping.Attribute` does not know its schema),
and a whole value path (``parse('emails[type eq "work"]')``), which is unwrapped when its attribute is
``attribute``. Value paths inside a value filter do not exist in SCIM (RFC errata 4690) and are refused.

The whole filter is checked before any value is looked at, so a mistake is reported with no values or
when an ``or`` would not reach it. Mistakes raise :class:`~didmos_scim.filters.InvalidFilter` (400
``invalidFilter``), with the same rules and words as :func:`didmos_scim.filters.to_ldap`:

* a sub-attribute ``attribute`` does not have (the caller makes that ``invalidPath`` where needed);
* an operator that does not apply to the sub-attribute's type: only ``eq``, ``ne`` and ``pr`` on
  booleans; no ``co``/``sw``/``ew`` on integers, decimals and dateTimes; only ``pr`` on binaries;
* a value that does not fit the type (a string for an integer, a dateTime without a time zone...);
* ``null`` with any operator but ``eq``.

How values compare, by the sub-attribute's SCIM type:

* strings and references: case-folded (:meth:`str.casefold`) unless ``case_exact``, for every operator;
  ``gt``/``ge``/``lt``/``le`` order by code point; ``co``, ``sw`` and ``ew`` with ``""`` are true for any
  present value;
* booleans: as booleans; with ``tolerate_case`` (the default, as in ``to_ldap``) the strings ``"true"``
  and ``"False"`` stand for them too, as big provisioning clients send them;
* integers and decimals: numerically (``1.50 eq 1.5``);
* dateTimes: as instants, so ``"2011-05-13T04:42:34Z" eq "2011-05-13T06:42:34+02:00"``; fractions of
  a second count;
* ``pr``: the key is there and its value is not ``null``, ``""``, ``[]`` or ``{}``;
* ``eq null``: the opposite of ``pr`` (RFC 7644 3.4.2.2 treats an unassigned attribute and ``null``
  alike);
* ``ne``: "not ``eq``", so it is also true when the sub-attribute has no value, as ``to_ldap``'s
  ``(!(a=v))`` is.

A value that does not fit its own declared type (an item's ``primary`` of ``"yes"``) equals nothing and
orders against nothing. A list value (a multi-valued sub-attribute) matches when one of its elements does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from didmos_scim.convert import parse_rfc3339
from didmos_scim.filters import (
    OPERATORS, And, AttrPath, Comparison, Filter, InvalidFilter, Not, Or, Presence, ValuePath, Value,
    _OPERATORS_BY_TYPE, _value_text,
)
from didmos_scim.mapping import Attribute

__all__ = ["matches", "select"]

Item = Mapping[str, Any]
_Predicate = Callable[[Item], bool]


def matches(node: Filter, item: Item, attribute: Attribute, *, tolerate_case: bool = True) -> bool:
    """Whether ``item``, one value of the complex attribute ``attribute``, satisfies the filter ``node``.

    ``item`` is a dict such as ``{"value": "a@x", "type": "work", "primary": True}``; its keys are found
    case-insensitively, as SCIM attribute names are. ``tolerate_case`` accepts ``"true"``/``"false"`` in
    quotes for boolean sub-attributes. Raises :class:`~didmos_scim.filters.InvalidFilter` for a filter
    that does not fit ``attribute`` (see the module documentation), and :class:`TypeError` for an item
    that is not a mapping.
    """
    return _compile(node, attribute, tolerate_case)(item)


def select(node: Filter, items: Iterable[Item], attribute: Attribute, *, tolerate_case: bool = True) -> list[int]:
    """The indexes, in order, of the ``items`` that satisfy ``node`` (see :func:`matches`).

    The filter is checked once, before the items, so a bad filter raises even when ``items`` is empty.
    """
    test = _compile(node, attribute, tolerate_case)
    return [index for index, item in enumerate(items) if test(item)]


# -- checking the filter once, into a predicate ----------------------------------------------------------


def _fail(why: str, position: int) -> InvalidFilter:
    return InvalidFilter(f"invalid filter: {why}", position=position)


def _compile(node: Filter, attribute: Attribute, tolerate_case: bool) -> _Predicate:
    if not attribute.sub_attributes:
        raise _fail(f"{attribute.name} has no sub-attributes, so it has no [...] value filter", -1)
    if isinstance(node, ValuePath):  # the caller parsed "emails[...]" whole; the filter is what is inside
        if node.path.sub is not None or node.path.name.lower() != attribute.name.lower():
            raise _fail(f"{node.path}[...] does not filter values of {attribute.name}; write "
                        f"{attribute.name}[...] or just the filter inside the brackets", node.position)
        node = node.filter
    return _Compiler(attribute, tolerate_case).compile(node)


class _Compiler:
    def __init__(self, attribute: Attribute, tolerate_case: bool):
        self.attribute, self.tolerate_case = attribute, tolerate_case

    def compile(self, node: Filter) -> _Predicate:
        if isinstance(node, And):
            parts = [self.compile(p) for p in node.parts]
            return lambda item: all(p(item) for p in parts)
        if isinstance(node, Or):
            parts = [self.compile(p) for p in node.parts]
            return lambda item: any(p(item) for p in parts)
        if isinstance(node, Not):
            part = self.compile(node.part)
            return lambda item: not part(item)
        if isinstance(node, ValuePath):
            raise _fail(f"value paths cannot be nested inside {self.attribute.name}[...]: {node.path}[...]",
                        node.position)
        if isinstance(node, (Comparison, Presence)):
            return self.attribute_expression(node)
        raise TypeError(f"not a SCIM filter node: {node!r}")

    def sub_attribute(self, path: AttrPath) -> Attribute:
        """The sub-attribute ``path`` names: ``type``, ``emails.type`` or ``urn:...:emails.type``."""
        name = self.attribute.name
        if path.sub is not None:
            if path.name.lower() != name.lower():
                raise _fail(f"{str(path)!r} is not a sub-attribute of {name}; inside {name}[...] name "
                            f"{name}'s sub-attributes, such as {self.examples()}", path.position)
            wanted = path.sub
        elif path.urn is not None:  # urn:...:User:type is a top-level attribute "type", not emails.type
            raise _fail(f"{str(path)!r} is not a sub-attribute of {name}; inside {name}[...] name "
                        f"{name}'s sub-attributes, such as {self.examples()}", path.position)
        else:
            wanted = path.name
        sub = self.attribute.sub(wanted)
        if sub is None:
            raise _fail(f"unknown attribute {f'{name}.{wanted}'!r}: {name} has no sub-attribute {wanted!r} "
                        f"(it has {', '.join(s.name for s in self.attribute.sub_attributes)})", path.position)
        return sub

    def examples(self) -> str:
        return " or ".join(s.name for s in self.attribute.sub_attributes[:2])

    def attribute_expression(self, node: Comparison | Presence) -> _Predicate:
        sub = self.sub_attribute(node.path)
        where, position = f"{self.attribute.name}.{sub.name}", node.path.position

        def read(item: Item) -> Any:
            return _lookup(item, sub.name)

        if isinstance(node, Presence):
            return lambda item: _present(read(item))
        op, wanted = node.op, node.value
        if op not in OPERATORS:
            raise _fail(f"unknown operator {op!r}; use one of {', '.join(OPERATORS)} or pr", node.position)
        if wanted is None:
            if op == "eq":
                return lambda item: not _present(read(item))
            raise _fail(f"null compares only with eq ({where} eq null: has no value); for {op} null use "
                        f"'{where} pr' or 'not ({where} pr)'", position)
        if sub.type == "complex":  # RFC 7643 2.3.8 forbids it; a customer mapping might still define one
            raise _fail(f"{where} is complex; only pr applies to it, not {op}", position)
        allowed = _OPERATORS_BY_TYPE.get(sub.type, OPERATORS)
        if op not in allowed:
            raise _fail(f"{where} is of type {sub.type}; {op} does not apply to it (use "
                        f"{', '.join((*allowed, 'pr'))})", position)
        key = self.filter_key(wanted, sub, where, position)

        def keys(item: Item) -> Iterable[Any]:
            value = read(item)
            values = value if isinstance(value, list) else [value]
            found = (_key(v, sub, self.tolerate_case) for v in values if v is not None)
            return (k for k in found if k is not _UNCOMPARABLE)

        if op == "ne":
            return lambda item: not any(k == key for k in keys(item))
        test = _TESTS[op]
        return lambda item: any(test(k, key) for k in keys(item))

    def filter_key(self, value: Value, sub: Attribute, where: str, position: int) -> Any:
        """The filter's value, checked against the sub-attribute's type, in the form values compare in."""
        if sub.type == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
            # checked here, as _key also takes 5.0 for an integer: stored values are not the client's text
            raise _fail(f"{where} is an integer; write a whole number without quotes, not {_value_text(value)}",
                        position)
        key = _key(value, sub, self.tolerate_case)
        if key is not _UNCOMPARABLE:
            return key
        if sub.type == "boolean":
            raise _fail(f"{where} is a boolean; compare it with true or false, not {_value_text(value)}", position)
        if sub.type == "decimal":
            raise _fail(f"{where} is a decimal; write a number without quotes, not {_value_text(value)}", position)
        if sub.type == "dateTime" and isinstance(value, str):
            raise _fail(f"{where} is a dateTime; {_value_text(value)} is not an RFC 3339 date and time with "
                        f"time zone such as \"2011-05-13T04:42:34Z\"", position)
        raise _fail(f"{where} is a {sub.type}; write the value in double quotes, not {_value_text(value)}",
                    position)


# -- values ----------------------------------------------------------------------------------------------

_UNCOMPARABLE = object()

_TESTS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, w: a == w,
    "co": lambda a, w: w in a,
    "sw": lambda a, w: a.startswith(w),
    "ew": lambda a, w: a.endswith(w),
    "gt": lambda a, w: a > w,
    "ge": lambda a, w: a >= w,
    "lt": lambda a, w: a < w,
    "le": lambda a, w: a <= w,
}


def _lookup(item: Item, name: str) -> Any:
    """``item[name]``, with the name matched case-insensitively; ``None`` when it is not there."""
    if not isinstance(item, Mapping):
        raise TypeError(f"a value of a complex attribute is a mapping of sub-attributes, not {type(item).__name__}")
    if name in item:
        return item[name]
    wanted = name.lower()
    return next((v for k, v in item.items() if isinstance(k, str) and k.lower() == wanted), None)


def _present(value: Any) -> bool:
    if isinstance(value, list):
        return any(_present(v) for v in value)
    return value is not None and not (isinstance(value, (str, dict)) and not value)


def _key(value: Any, sub: Attribute, tolerate_case: bool) -> Any:
    """``value`` in the form it compares in for ``sub``'s type, or ``_UNCOMPARABLE`` if it does not fit."""
    kind = sub.type
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if tolerate_case and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        return _UNCOMPARABLE
    if kind in ("integer", "decimal"):
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            return _UNCOMPARABLE
        # via str: Decimal(1.1) is 1.100000000000000088..., not the 1.1 the client wrote
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        return number if number.is_finite() else _UNCOMPARABLE
    if not isinstance(value, str):
        return _UNCOMPARABLE
    if kind == "dateTime":
        stamp = parse_rfc3339(value)
        if stamp is None:
            return _UNCOMPARABLE
        # Not the GeneralizedTime string itself: "...34.5Z" < "...34Z" as strings ("." sorts before "Z").
        # parse_rfc3339 drops trailing zeros of the fraction, so fraction digits order as text.
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        return whole, fraction
    return value if sub.case_exact else value.casefold()
