"""SCIM PATCH (RFC 7644 3.5.2) and PUT (3.5.1) as one LDAP modify.

A :class:`Changes` starts from the entry as read and takes SCIM operations one after the other, at the
level of SCIM values: ``emails[type eq "work"].value`` selects items of the ``emails`` attribute as they
are rendered from the entry, changes them, and writes the result back to the LDAP attributes the items
are stored in. At the end, :meth:`Changes.modlist` compares each touched LDAP attribute with what was
read and returns only the differences: single values as a replace, multi-valued attributes as the
values deleted and added. The whole PATCH therefore becomes one LDAP modify, which LDAP applies
atomically or not at all.

Multi-valued references that may be huge (a group's ``member``) are not read: their changes are sent as
they come (add these DNs, delete those), so adding one member to a group of 100,000 sends one value.
The :class:`~didmos_ldap.directory.Directory` modify is permissive, so adding a present member or
deleting an absent one changes nothing rather than failing.

The tolerance the big provisioning clients need is here: op names in any case (``Replace``), booleans
as strings (``"False"``, in :func:`~didmos_scim.convert.coerce`), path-less operations whose keys are
paths (``{"name.givenName": "x"}``), ``remove`` with a ``value`` naming the members to remove, and
``add`` with a value filter that matches nothing creating the value it describes (Azure AD's
``addresses[type eq "work"].streetAddress``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping as MappingABC
from dataclasses import dataclass
from typing import Any

import ldap

from didmos_host.errors import DidmosError
from didmos_scim import filters as scim_filters
from didmos_scim.convert import COMMON, InvalidValue, Mutability, coerce
from didmos_scim.evaluate import select
from didmos_scim.mapping import Attribute, Mapping, Path, UnknownAttribute

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
#: Most operations one PATCH may carry; more is a 400 ``tooMany``.
MAX_OPERATIONS = 1000


class InvalidPath(DidmosError):
    """A PATCH path that does not name an attribute the resource has (SCIM ``invalidPath``, 400)."""

    status = 400
    scim_type = "invalidPath"


class NoTarget(DidmosError):
    """A value filter in a PATCH path matched no value (SCIM ``noTarget``, 400)."""

    status = 400
    scim_type = "noTarget"


class InvalidSyntax(DidmosError):
    """The request body is not a PATCH request (SCIM ``invalidSyntax``, 400)."""

    status = 400
    scim_type = "invalidSyntax"


class TooMany(DidmosError):
    """More operations than the server takes in one request (SCIM ``tooMany``, 400)."""

    status = 400
    scim_type = "tooMany"


@dataclass(frozen=True)
class PatchPath:
    """``emails[type eq "work"].value`` -> the attribute ``emails``, the filter, and the sub-attribute."""

    path: Path
    filter: scim_filters.Filter | None = None

    @property
    def attribute(self) -> Attribute:
        return self.path.attribute

    @property
    def sub(self) -> Attribute | None:
        return self.path.sub


def parse_path(text: Any, mapping: Mapping) -> PatchPath:
    """Resolve a PATCH ``path`` (RFC 7644 3.5.2: ``attrPath`` or ``valuePath [subAttr]``)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidPath(f"path must be a non-empty string, got {text!r}")
    text = text.strip()
    condition = None
    head, bracket, rest = text.partition("[")
    tail = ""
    if bracket:
        inner, closing, tail = rest.rpartition("]")
        if not closing:
            raise InvalidPath(f"path {text!r}: '[' without its ']'")
        if tail and (not tail.startswith(".") or not tail[1:]):
            raise InvalidPath(f"path {text!r}: after ']' only '.subAttribute' may follow")
        try:
            condition = scim_filters.parse(inner)
        except scim_filters.InvalidFilter as exc:
            raise InvalidPath(f"path {text!r}: {exc.message}") from None
    try:
        path = mapping.resolve(head + tail)
    except UnknownAttribute as exc:
        raise InvalidPath(f"path {text!r}: {exc}") from None
    if condition is not None and not path.attribute.multi_valued:
        raise InvalidPath(f"path {text!r}: a value filter needs a multi-valued attribute, "
                          f"{path.attribute.name} is single-valued")
    return PatchPath(path, condition)


def _op_name(operation: Any, index: int) -> str:
    if not isinstance(operation, MappingABC):
        raise InvalidSyntax(f"Operations[{index}] must be an object with 'op', 'path' and 'value'")
    name = operation.get("op")
    if not isinstance(name, str) or name.lower() not in ("add", "replace", "remove"):
        raise InvalidSyntax(f"Operations[{index}].op must be add, replace or remove, got {name!r}")
    return name.lower()


def operations_of(body: Any) -> list[MappingABC[str, Any]]:
    """The ``Operations`` of a PatchOp body, checked for shape."""
    if not isinstance(body, MappingABC):
        raise InvalidSyntax("the request body must be a JSON object (a PatchOp)")
    schemas = body.get("schemas")
    if schemas is not None:
        listed = schemas if isinstance(schemas, list) else [schemas]
        if PATCH_OP not in listed:
            raise InvalidSyntax(f"schemas must contain {PATCH_OP}")
    operations = next((v for k, v in body.items() if k.lower() == "operations"), None)
    if not isinstance(operations, list) or not operations:
        raise InvalidSyntax("Operations must be a non-empty list")
    if len(operations) > MAX_OPERATIONS:
        raise TooMany(f"{len(operations)} operations in one PATCH; at most {MAX_OPERATIONS}")
    for index, operation in enumerate(operations):
        _op_name(operation, index)
    return operations


class Changes:
    """The LDAP changes of a PATCH or PUT on one entry, gathered at the level of SCIM values.

    ``entry`` is the entry as read, with every attribute in ``loaded`` (lower case): those are known and
    changed by comparison. ``resolve_reference(id, where)`` gives the DN of a referenced resource;
    ``reference_items(attribute)`` renders the current values of a multi-valued reference attribute
    (for value filters on ``members`` beyond ``value eq``). ``strict``: unknown attributes are an
    error (``/scim/v2``) rather than ignored (``/lui2_backend/v2``).
    """

    def __init__(self, entry, mapping: Mapping, *, loaded: set[str], strict: bool,
                 resolve_reference: Callable[[str, str], str],
                 reference_items: Callable[[Attribute], list[tuple[str, dict]]] | None = None):
        self.entry, self.mapping, self.strict = entry, mapping, strict
        self.loaded = {a.lower() for a in loaded}
        self.resolve_reference = resolve_reference
        self.reference_items = reference_items
        self.values: dict[str, list[str]] = {}  # lower-cased LDAP attribute -> its new values
        self.names: dict[str, str] = {}
        self.multi: dict[str, bool] = {}
        self.log: list[tuple[int, str, list[str] | None]] = []  # changes to attributes not read

    # -- LDAP values -------------------------------------------------------------------------------

    def current(self, attr: str) -> list[str]:
        key = attr.lower()
        if key in self.values:
            return list(self.values[key])
        return self.entry.values(attr) if self.entry is not None else []

    def set(self, attr: str, values: list[str], *, multi: bool) -> None:
        key = attr.lower()
        self.names.setdefault(key, attr)
        self.multi[key] = multi
        self.values[key] = list(dict.fromkeys(values))

    def modlist(self) -> list[tuple[int, str, list[str] | None]]:
        """The differences to what was read, then the changes to attributes that were not read."""
        changes: list[tuple[int, str, list[str] | None]] = []
        for key, new in self.values.items():
            attr = self.names[key]
            old = self.entry.values(attr) if self.entry is not None else []
            if new == old or (self.multi[key] and set(new) == set(old)):
                continue
            if not new:
                changes.append((ldap.MOD_REPLACE, attr, []))
            elif not self.multi[key] or not old:
                changes.append((ldap.MOD_REPLACE, attr, new))
            else:
                gone = [v for v in old if v not in new]
                added = [v for v in new if v not in old]
                if gone:
                    changes.append((ldap.MOD_DELETE, attr, gone))
                if added:
                    changes.append((ldap.MOD_ADD, attr, added))
        return changes + self.log

    # -- PATCH -------------------------------------------------------------------------------------

    def patch(self, operations: list[MappingABC[str, Any]]) -> None:
        for index, operation in enumerate(operations):
            op = _op_name(operation, index)
            where = f"Operations[{index}]"
            path = next((v for k, v in operation.items() if k.lower() == "path"), None)
            value = next((v for k, v in operation.items() if k.lower() == "value"), None)
            if path is None:
                if op == "remove":
                    raise NoTarget(f"{where}: remove needs a path")
                self._pathless(op, value, where)
                continue
            schema = self.mapping.schema(path) if isinstance(path, str) else None
            if schema is not None and schema is not self.mapping.core:
                # the path is an extension's URN: its value holds that extension's attributes
                if op == "remove":
                    for attribute in schema.attributes:
                        if attribute.mutability not in ("readOnly",) and not attribute.required:
                            self.apply(op, PatchPath(Path(schema, attribute)), None, f"{where} ({path})")
                    continue
                self._pathless(op, {schema.id: value}, where)
                continue
            try:
                target = parse_path(path, self.mapping)
            except InvalidPath:
                if self.strict or "[" in str(path):
                    raise
                continue  # the LUI backend ignores attributes it has no mapping for
            if op != "remove" and value is None:
                raise InvalidValue(f"{where}: {op} needs a value")
            self.apply(op, target, value, f"{where} ({path})")

    def _pathless(self, op: str, value: Any, where: str) -> None:
        """``{"op": "replace", "value": {"active": false, "name.givenName": "x", "urn:...:User": {...}}}``."""
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, MappingABC):
                raise InvalidValue(f"{where}: without a path, value must be an object of attributes")
            for key, sub_value in item.items():
                if not isinstance(key, str) or key.lower() in COMMON:
                    continue
                schema = self.mapping.schema(key)
                if schema is not None and schema is not self.mapping.core:
                    if not isinstance(sub_value, MappingABC):
                        raise InvalidValue(f"{where}: {key} must be an object of that extension's attributes")
                    pairs = [(f"{schema.id}:{name}", v) for name, v in sub_value.items()
                             if name.lower() not in COMMON]
                else:
                    pairs = [(key, sub_value)]
                for name, attribute_value in pairs:
                    try:
                        target = parse_path(name, self.mapping)
                    except InvalidPath:
                        if self.strict:
                            raise InvalidPath(f"{where}: unknown attribute {name!r}") from None
                        continue
                    self.apply(op, target, attribute_value, f"{where} ({name})")

    def apply(self, op: str, target: PatchPath, value: Any, where: str) -> None:
        attribute = target.attribute
        leaf = target.sub or attribute
        if attribute.mutability == "readOnly" or leaf.mutability == "readOnly":
            raise Mutability(f"{where}: {target.path} is read-only")
        if op == "remove" and attribute.required and target.sub is None and target.filter is None:
            raise Mutability(f"{where}: {attribute.name} is required and cannot be removed")
        if attribute.by_type:
            self._typed(op, target, value, where)
        elif attribute.type == "complex" and attribute.ldap:
            self._reference(op, target, value, where)
        elif attribute.type == "complex":
            self._complex(op, target, value, where)
        elif attribute.ldap:
            self._simple(op, attribute, value, where)
        elif self.strict:
            raise InvalidPath(f"{where}: {target.path} is not stored by this server")

    def _simple(self, op: str, attribute: Attribute, value: Any, where: str) -> None:
        if op == "remove":
            self.set(attribute.ldap, [], multi=attribute.multi_valued)
            return
        if attribute.multi_valued:
            items = value if isinstance(value, list) else [value]
            new = [coerce(attribute, v, f"{where}[{i}]") for i, v in enumerate(items)]
            if op == "add":
                new = self.current(attribute.ldap) + new
            self.set(attribute.ldap, new, multi=True)
        else:
            if isinstance(value, list):
                raise InvalidValue(f"{where}: {attribute.name} takes one value, not a list")
            self.set(attribute.ldap, [coerce(attribute, value, where)], multi=False)

    # complex attributes stored as one value per sub-attribute (name, addresses)

    def _complex_item(self, attribute: Attribute) -> dict[str, Any]:
        return {sub.name: value for sub in attribute.sub_attributes
                if sub.ldap and (value := (self.current(sub.ldap) or [None])[0]) is not None}

    def _write_complex_item(self, attribute: Attribute, item: MappingABC[str, Any] | None, where: str,
                            merge: bool) -> None:
        item = item or {}
        for key in item:
            if attribute.sub(key) is None:
                raise InvalidValue(f"{where}: {attribute.name} has no sub-attribute {key!r}")
        for sub in attribute.sub_attributes:
            given = next((v for k, v in item.items() if k.lower() == sub.name.lower()), None)
            if given is None and merge:
                continue
            if not sub.ldap:
                if given is not None and self.strict and sub.name not in ("type", "primary"):
                    raise InvalidValue(f"{where}: {attribute.name}.{sub.name} is not stored by this server")
                continue
            self.set(sub.ldap, [] if given is None else [coerce(sub, given, f"{where}.{sub.name}")], multi=False)

    def _complex(self, op: str, target: PatchPath, value: Any, where: str) -> None:
        attribute = target.attribute
        if target.filter is not None:
            current = self._complex_item(attribute)
            try:
                matched = bool(current) and bool(select(target.filter, [current], attribute))
            except scim_filters.InvalidFilter:
                if not _about_type_or_primary(target.filter):
                    raise
                # addresses[type eq "work"]: one address is kept, untyped; it is the one meant (Azure AD)
                matched = bool(current)
            if not matched and op != "add":
                raise NoTarget(f"{where}: no value of {attribute.name} matches the filter")
        if target.sub is not None:
            sub = target.sub
            if not sub.ldap:
                if self.strict:
                    raise InvalidPath(f"{where}: {target.path} is not stored by this server")
                return
            self.set(sub.ldap, [] if op == "remove" else [coerce(sub, value, where)], multi=False)
            return
        if op == "remove":
            self._write_complex_item(attribute, None, where, merge=False)
            return
        if attribute.multi_valued and isinstance(value, list):
            if len(value) > 1:
                raise InvalidValue(f"{where}: this server keeps one value of {attribute.name}")
            value = value[0] if value else {}
        if not isinstance(value, MappingABC):
            raise InvalidValue(f"{where}: {attribute.name} must be an object")
        # RFC 7644 3.5.2.3: replacing a complex attribute leaves the sub-attributes not given unchanged,
        # unless it is multi-valued, where the value replaces the whole value.
        self._write_complex_item(attribute, value, where, merge=not (op == "replace" and attribute.multi_valued
                                                                    and target.filter is None))

    # multi-valued attributes whose type says where a value is stored (emails, phoneNumbers)

    def _typed_items(self, attribute: Attribute) -> list[dict[str, Any]]:
        items = [{"value": raw, "type": value_type}
                 for value_type, ldap_attr in attribute.by_type for raw in self.current(ldap_attr)]
        if items:
            items[0]["primary"] = True
        return items

    def _typed_item(self, attribute: Attribute, item: Any, where: str) -> dict[str, Any]:
        if not isinstance(item, MappingABC) or item.get("value") is None:
            raise InvalidValue(f"{where}: each value of {attribute.name} must be an object with a 'value'")
        for key in item:
            if attribute.sub(key) is None:
                raise InvalidValue(f"{where}: {attribute.name} has no sub-attribute {key!r}")
        return {k: v for k, v in item.items()}

    def _write_typed(self, attribute: Attribute, items: list[dict[str, Any]], where: str) -> None:
        stored: dict[str, list[str]] = {ldap_attr: [] for _, ldap_attr in attribute.by_type}
        value_attribute = attribute.sub("value") or attribute
        for index, item in enumerate(items):
            ldap_attr = attribute.ldap_for_type(item.get("type"))
            if ldap_attr is None:
                known = ", ".join(t for t, _ in attribute.by_type)
                raise InvalidValue(f"{where}: {attribute.name} type {item.get('type')!r} is not supported; "
                                   f"use one of {known}")
            stored[ldap_attr].append(coerce(value_attribute, item.get("value"), f"{where}[{index}].value"))
        for ldap_attr, values in stored.items():
            self.set(ldap_attr, values, multi=True)

    def _typed(self, op: str, target: PatchPath, value: Any, where: str) -> None:
        attribute = target.attribute
        items = self._typed_items(attribute)
        given = None
        if op != "remove" or value is not None:
            if target.sub is None:
                raw = value if isinstance(value, list) else [value]
                given = [self._typed_item(attribute, item, f"{where}[{i}]") for i, item in enumerate(raw)]
        if target.filter is None:
            if target.sub is not None:
                raise InvalidPath(f"{where}: say which {attribute.name} to change with a filter, "
                                  f"e.g. {attribute.name}[type eq \"work\"].{target.sub.name}")
            if op == "remove" and given is None:
                items = []
            elif op == "remove":
                gone = {str(item["value"]).lower() for item in given}
                items = [item for item in items if str(item["value"]).lower() not in gone]
            elif op == "replace":
                items = given
            else:
                known = {(str(i["value"]).lower(), str(i.get("type")).lower()) for i in items}
                items += [i for i in given if (str(i["value"]).lower(), str(i.get("type")).lower()) not in known]
            self._write_typed(attribute, items, where)
            return
        chosen = select(target.filter, items, attribute)
        if not chosen:
            if op != "add":
                raise NoTarget(f"{where}: no value of {attribute.name} matches the filter")
            items.append(self._described_item(target, value, where))
            self._write_typed(attribute, items, where)
            return
        if op == "remove":
            if target.sub is not None:
                raise Mutability(f"{where}: {target.path} cannot be removed from a value; remove the value")
            items = [item for index, item in enumerate(items) if index not in chosen]
        elif target.sub is not None:
            for index in chosen:
                items[index][target.sub.name] = value
        else:
            replacement = given[0] if given else {}
            for index in chosen:
                items[index] = {**items[index], **replacement}
        self._write_typed(attribute, items, where)

    def _described_item(self, target: PatchPath, value: Any, where: str) -> dict[str, Any]:
        """The value an ``add`` to ``emails[type eq "work"].value`` creates when none matches."""
        item: dict[str, Any] = {}
        for condition in _equalities(target.filter):
            item[condition.path.name] = condition.value
        if target.sub is not None:
            item[target.sub.name] = value
        elif isinstance(value, MappingABC):
            item.update(value)
        if item.get("value") is None:
            raise NoTarget(f"{where}: no value of {target.attribute.name} matches the filter")
        return item

    # references by id (manager, members)

    def _reference(self, op: str, target: PatchPath, value: Any, where: str) -> None:
        attribute = target.attribute
        if target.sub is not None and target.sub.name.lower() != "value":
            raise Mutability(f"{where}: {target.path} cannot be changed; change {attribute.name}.value")
        if not attribute.multi_valued:
            if op == "remove":
                self.set(attribute.ldap, [], multi=False)
                return
            ref_id = value if target.sub is not None else (value.get("value") if isinstance(value, MappingABC)
                                                             else None)
            if not isinstance(ref_id, str) or not ref_id:
                raise InvalidValue(f"{where}: {attribute.name} must be an object with the 'value' of the "
                                   f"referenced resource's id")
            self.set(attribute.ldap, [self.resolve_reference(ref_id, where)], multi=False)
            return
        if target.sub is not None:
            raise Mutability(f"{where}: {target.path} cannot be changed; remove the member and add another")
        dns = None
        if value is not None:
            raw = value if isinstance(value, list) else [value]
            dns = []
            for index, item in enumerate(raw):
                ref_id = item.get("value") if isinstance(item, MappingABC) else None
                if not isinstance(ref_id, str) or not ref_id:
                    raise InvalidValue(f"{where}[{index}] must be an object with the 'value' of the referenced "
                                       f"resource's id")
                dns.append(self.resolve_reference(ref_id, f"{where}[{index}]"))
        known = attribute.ldap.lower() in self.loaded
        if target.filter is not None:
            chosen = self._chosen_references(target, where)
            if op == "remove" or op == "replace":
                self._members(ldap.MOD_DELETE, attribute, chosen, known)
            if op != "remove" and dns:
                self._members(ldap.MOD_ADD, attribute, dns, known)
            return
        if op == "add":
            self._members(ldap.MOD_ADD, attribute, dns or [], known)
        elif op == "replace":
            self._members(ldap.MOD_REPLACE, attribute, dns or [], known)
        elif dns is not None:
            self._members(ldap.MOD_DELETE, attribute, dns, known)
        else:
            self._members(ldap.MOD_REPLACE, attribute, [], known)

    def _members(self, mod: int, attribute: Attribute, dns: list[str], known: bool) -> None:
        if not known:
            if dns or mod == ldap.MOD_REPLACE:
                self.log.append((mod, attribute.ldap, dns))
            return
        current = self.current(attribute.ldap)
        if mod == ldap.MOD_REPLACE:
            new = dns
        elif mod == ldap.MOD_ADD:
            new = current + dns
        else:
            gone = {dn.lower() for dn in dns}
            new = [dn for dn in current if dn.lower() not in gone]
        self.set(attribute.ldap, new, multi=True)

    def _chosen_references(self, target: PatchPath, where: str) -> list[str]:
        """DNs of the values a filter on ``members`` selects; ``value eq "id"`` needs no read."""
        ids = _value_ids(target.filter)
        if ids is not None:
            return [self.resolve_reference(ref_id, where) for ref_id in ids]
        if self.reference_items is None:
            raise InvalidPath(f"{where}: filter {target.filter} on {target.attribute.name} is not supported; "
                              f"use value eq \"<id>\"")
        pairs = self.reference_items(target.attribute)
        chosen = select(target.filter, [item for _, item in pairs], target.attribute)
        if not chosen:
            raise NoTarget(f"{where}: no value of {target.attribute.name} matches the filter")
        return [pairs[index][0] for index in chosen]

    # -- PUT ---------------------------------------------------------------------------------------

    def replace_all(self, desired: dict[str, list[str]], body: MappingABC[str, Any]) -> None:
        """PUT: every writable mapped attribute takes its value from ``desired`` (``to_ldap`` of the body);
        what the body leaves out is cleared, except the password (write-only: kept unless given) and
        LDAP attributes no mapping names (never touched)."""
        wanted = {k.lower(): v for k, v in desired.items()}
        for _, attribute in self.mapping.attributes():
            if attribute.mutability in ("readOnly", "writeOnly") and attribute.type != "complex":
                if attribute.mutability == "writeOnly" and attribute.ldap and attribute.ldap.lower() in wanted:
                    self.set(attribute.ldap, wanted[attribute.ldap.lower()], multi=False)
                continue
            if attribute.mutability == "readOnly":
                continue
            if attribute.mutability == "immutable":
                for ldap_attr in attribute.ldap_attributes:
                    new = wanted.get(ldap_attr.lower())
                    if new is not None and self.entry.values(ldap_attr) and new != self.entry.values(ldap_attr):
                        raise Mutability(f"{attribute.name} is immutable")
                continue
            multi = attribute.multi_valued and (bool(attribute.by_type) or attribute.type != "complex"
                                                or bool(attribute.ldap))
            for ldap_attr in attribute.ldap_attributes:
                self.set(ldap_attr, wanted.get(ldap_attr.lower(), []), multi=multi)


def _about_type_or_primary(node) -> bool:
    """Whether a value filter only compares ``type`` and ``primary``."""
    if isinstance(node, (scim_filters.Comparison, scim_filters.Presence)):
        return node.path.name.lower() in ("type", "primary") and node.path.sub is None
    if isinstance(node, (scim_filters.And, scim_filters.Or)):
        return all(_about_type_or_primary(part) for part in node.parts)
    if isinstance(node, scim_filters.Not):
        return _about_type_or_primary(node.part)
    return False


def _equalities(node) -> list[scim_filters.Comparison]:
    """The ``eq`` comparisons an ``and`` of conditions requires (what a created value must have)."""
    if isinstance(node, scim_filters.Comparison) and node.op == "eq":
        return [node]
    if isinstance(node, scim_filters.And):
        return [c for part in node.parts for c in _equalities(part)]
    return []


def _value_ids(node) -> list[str] | None:
    """``value eq "a" or value eq "b"`` -> ["a", "b"]; anything else -> None."""
    if isinstance(node, scim_filters.Comparison) and node.op == "eq" and node.path.name.lower() == "value" \
            and node.path.sub is None and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, scim_filters.Or):
        found = [_value_ids(part) for part in node.parts]
        if all(f is not None for f in found):
            return [ref_id for f in found for ref_id in f]
    return None
