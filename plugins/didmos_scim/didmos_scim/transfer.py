"""The file formats of ``didmos import`` and ``didmos export``: LDIF, CSV and SCIM JSON.

Reading turns each record of a file into a :class:`Row`: a SCIM resource body for
:meth:`~didmos_scim.service.ScimService.create`, the record's number and line, and the id (and, for
LDIF, the DN) it had where it came from, so that references between records of one file (a group's
``members``, a user's ``manager``) can point at what the import created. A record that cannot be read
becomes a row with a ``problem`` and is rejected without touching the directory.

Writing turns SCIM resources (as the actor may read them) back into the same formats, so an export
re-imports.

CSV columns are SCIM attribute paths (``docs/import-export.md`` has the table):

* ``userName``, ``title``, ``active``, ``externalId``, ``password``: simple attributes;
* ``name.givenName``, ``addresses.locality``: a sub-attribute of a complex attribute;
* ``emails[type eq "work"].value`` (``.value`` optional): the values of one type of a typed attribute;
  ``emails`` alone: values of the attribute's first type;
* ``members``, ``manager`` (or ``manager.value``): ids of referenced resources;
* ``urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department``: an extension's attribute
  (the short name ``department`` works too);
* ``id``: the resource's id where it came from (for references within the file; never written).

A cell of a multi-valued column holds values separated by ``;`` (``\\;`` is a literal semicolon,
``\\\\`` a backslash); an empty cell leaves the attribute out.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import ldif

from didmos_ldap.directory import Entry, normalize_dn
from didmos_scim.convert import to_scim
from didmos_scim.mapping import Attribute, Mapping, Schema, UnknownAttribute

FORMATS = ("ldif", "csv", "scim")
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
#: Marks a reference that names an LDAP DN (LDIF) instead of an id; resolved by the import.
DN_REFERENCE = "\0dn:"

#: LDAP attributes an LDIF record may carry that the import does not write: the directory makes them
#: (operational attributes, the RDN's didmosUUID, memberOf) or the SCIM create sets them.
LDIF_IGNORED = {
    "objectclass", "didmosuuid", "didmostenant", "memberof", "structuralobjectclass", "entryuuid", "entrycsn",
    "entrydn", "creatorsname", "createtimestamp", "modifiersname", "modifytimestamp", "hassubordinates",
    "subschemasubentry", "contextcsn", "didmosroleassignment",
    "pwdchangedtime", "pwdaccountlockedtime", "pwdfailuretime", "pwdhistory", "pwdgraceusetime", "pwdreset",
    "pwdpolicysubentry", "pwdlastsuccess",
}


class UsageError(Exception):
    """The input as a whole cannot be used (a bad CSV header, a file that is not JSON): exit status 2."""


@dataclass
class Row:
    """One record of an input file, ready to be created."""

    number: int                   # 1-based position among the file's records
    line: int                     # the line it starts on
    type_name: str | None = None
    body: dict[str, Any] | None = None
    old_id: str | None = None     # its id where it came from (references in the file point to it)
    old_dn: str | None = None     # its DN where it came from (LDIF references point to it)
    problem: str | None = None    # why it cannot be imported; nothing is sent for it then

    @property
    def key(self) -> str | None:
        """What identifies it to a person reading the report: userName, externalId, displayName or name."""
        body = self.body or {}
        for name in ("userName", "externalId", "displayName", "name"):
            value = body.get(name)
            if isinstance(value, str) and value:
                return value
        return self.old_id


def detect_format(path: str) -> str | None:
    """``ldif``, ``csv`` or ``scim`` from a file name's extension; None when it does not say."""
    lowered = path.lower()
    if lowered.endswith(".ldif"):
        return "ldif"
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".json", ".jsonl", ".ndjson", ".scim")):
        return "scim"
    return None


def count_records(path: str, fmt: str) -> int:
    """How many records the file has, for the progress bar (a scan of the file; 0 when it cannot tell)."""
    with open(path, encoding="utf-8", errors="replace", newline="" if fmt == "csv" else None) as stream:
        if fmt == "ldif":
            return sum(1 for line in stream if line.lower().startswith("dn:"))
        if fmt == "csv":
            try:
                return max(0, sum(1 for cells in csv.reader(stream) if any(c.strip() for c in cells)) - 1)
            except csv.Error:
                return 0
        lines = [line for line in stream if line.strip()]
    if len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines[:2]) and \
            not lines[0].rstrip().endswith(","):
        try:
            json.loads(lines[0])
            return len(lines)  # JSON lines
        except json.JSONDecodeError:
            pass
    try:
        document = json.loads("".join(lines))
    except json.JSONDecodeError:
        return len(lines)
    if isinstance(document, dict) and isinstance(document.get("Resources"), list):
        return len(document["Resources"])
    return len(document) if isinstance(document, list) else 1


# -- references in resource bodies ----------------------------------------------------------------------


def reference_attributes(mapping: Mapping) -> list[tuple[Schema, Attribute]]:
    """The writable reference attributes (``members``, ``manager``): their values are ids of resources."""
    return [(schema, attribute) for schema, attribute in mapping.attributes()
            if attribute.type == "complex" and attribute.ldap and attribute.mutability != "readOnly"]


def _find(container: dict, name: str) -> str | None:
    return next((k for k in container if isinstance(k, str) and k.lower() == name.lower()), None)


def reference_values(body: dict[str, Any], mapping: Mapping) -> Iterator[tuple[dict, str]]:
    """Every reference in ``body`` as (the object holding ``value``, where, for messages)."""
    for schema, attribute in reference_attributes(mapping):
        container = body
        if schema is not mapping.core:
            key = _find(body, schema.id)
            container = body.get(key) if key else None
            if not isinstance(container, dict):
                continue
        key = _find(container, attribute.name)
        if key is None:
            continue
        value = container[key]
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            if isinstance(item, dict) and isinstance(item.get("value"), str):
                yield item, f"{attribute.name}[{index}]" if isinstance(value, list) else attribute.name


# -- LDIF -------------------------------------------------------------------------------------------------


def _ldif_records(stream: TextIO) -> Iterator[tuple[int, str]]:
    """The records of an LDIF stream as (first line number, text), one at a time."""
    lines: list[str] = []
    start = 0
    for number, line in enumerate(stream, 1):
        if line.strip() == "":
            if lines:
                yield start, "".join(lines)
                lines = []
            continue
        if not lines:
            if line.startswith("#") or line.lower().startswith("version:"):
                continue
            start = number
        lines.append(line)
    if lines:
        yield start, "".join(lines)


def resource_type_of(object_classes: list[str], types: dict[str, tuple[Any, Mapping]]) -> str | None:
    """The resource type whose object classes the entry has all of (the most specific one)."""
    have = {oc.lower() for oc in object_classes}
    best = None
    for name, (resource_type, _) in types.items():
        wanted = {oc.lower() for oc in resource_type.object_classes}
        if wanted <= have and (best is None or len(wanted) > best[1]):
            best = (name, len(wanted))
    return best[0] if best else None


def read_ldif(stream: TextIO, types: dict[str, tuple[Any, Mapping]], default_type: str | None) -> Iterator[Row]:
    """Rows from LDIF content records (``changetype: add`` or none); the type from the object classes."""
    for number, (line, text) in enumerate(_ldif_records(stream), 1):
        row = Row(number, line)
        try:
            parsed = ldif.LDIFRecordList(io.StringIO(text), process_url_schemes=[])
            parsed.parse()
        except Exception as exc:  # noqa: BLE001 - python-ldap's parser raises several kinds for bad input
            row.problem = f"not an LDIF record: {exc}"
            yield row
            continue
        if not parsed.all_records:
            row.problem = "not an LDIF content record (changetype other than add?)"
            yield row
            continue
        dn, attrs = parsed.all_records[0]
        row.old_dn = dn
        attrs = {k: v for k, v in attrs.items() if k.lower() != "changetype"}
        yield ldif_row(row, dn, attrs, types, default_type)


def ldif_row(row: Row, dn: str, attrs: dict[str, list[bytes]], types, default_type: str | None) -> Row:
    """An LDIF entry as a SCIM body: mapped attributes only; any other attribute rejects the row."""
    entry = Entry(dn, attrs)
    type_name = resource_type_of(entry.values("objectClass"), types) if "objectClass" in entry else default_type
    if type_name is None:
        row.problem = (f"{dn}: no resource type has the object classes {', '.join(entry.values('objectClass'))} "
                       f"({', '.join(f'{n}: {sorted(t[0].object_classes)}' for n, t in types.items())})")
        return row
    resource_type, mapping = types[type_name]
    row.type_name = type_name
    row.old_id = entry.first("didmosUUID")
    known = {a.lower() for a in mapping.ldap_attributes()}
    unknown = sorted(a for a in attrs if a.lower() not in known and a.lower() not in LDIF_IGNORED)
    if unknown:
        row.problem = (f"{dn}: attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                       f"{'have' if len(unknown) > 1 else 'has'} no SCIM mapping for {type_name}; remove "
                       f"{'them' if len(unknown) > 1 else 'it'} or map {'them' if len(unknown) > 1 else 'it'} "
                       f"(didmos_attribute_mapping)")
        return row
    references = {}
    for _, attribute in reference_attributes(mapping):
        for ref_dn in entry.values(attribute.ldap):
            references[ref_dn.lower()] = (DN_REFERENCE + ref_dn, None, "User")
    body = to_scim(entry, mapping, resource_type=type_name, base_url="", references=references)
    body.pop("meta", None)
    body.pop("id", None)
    password = mapping.core.attribute("password")
    if password is not None and password.ldap and entry.first(password.ldap):
        body[password.name] = entry.first(password.ldap)
    row.body = body
    return row


# -- CSV ----------------------------------------------------------------------------------------------------


def split_values(cell: str) -> list[str]:
    """``a;b\\;c`` -> ``["a", "b;c"]``: the values of a multi-valued cell."""
    values, current, escaped = [], [], False
    for char in cell:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ";":
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    values.append("".join(current))
    return [v.strip() for v in values if v.strip()]


def join_values(values: list[str]) -> str:
    return ";".join(v.replace("\\", "\\\\").replace(";", "\\;") for v in values)


_TYPED = re.compile(r'^(?P<path>[^\[]+)\[\s*type\s+eq\s+"(?P<type>[^"]*)"\s*\](?:\.(?P<sub>\w+))?$', re.I)


@dataclass(frozen=True)
class Column:
    """One CSV column: where its cells go in a resource body and come from in a resource."""

    header: str
    kind: str                      # id, simple, sub, typed, reference
    schema: Schema | None = None
    attribute: Attribute | None = None
    sub: Attribute | None = None
    value_type: str | None = None  # typed: the SCIM type; None: the attribute's first type
    core: bool = True

    def _container(self, resource: dict, create: bool) -> dict | None:
        if self.core:
            return resource
        key = _find(resource, self.schema.id)
        if key is None:
            if not create:
                return None
            resource[self.schema.id] = {}
            key = self.schema.id
        return resource[key]

    def put(self, body: dict[str, Any], cell: str) -> None:
        """Set the cell's values in ``body``; ValueError naming the column for a bad value."""
        attribute = self.attribute
        if self.kind == "id":
            return
        container = self._container(body, create=True)
        name = attribute.name
        if self.kind == "typed":
            items = [{"value": v} if self.value_type is None else {"type": self.value_type, "value": v}
                     for v in split_values(cell)]
            container.setdefault(name, []).extend(items)
        elif self.kind == "reference":
            ids = split_values(cell) if attribute.multi_valued else [cell.strip()]
            if attribute.multi_valued:
                container.setdefault(name, []).extend({"value": v} for v in ids)
            else:
                container[name] = {"value": ids[0]}
        elif self.kind == "sub":
            value = _typed_value(self.sub, cell, self.header)
            if attribute.multi_valued:
                items = container.setdefault(name, [{}])
                items[0][self.sub.name] = value
            else:
                container.setdefault(name, {})[self.sub.name] = value
        elif attribute.multi_valued:
            container[name] = [_typed_value(attribute, v, self.header) for v in split_values(cell)]
        else:
            container[name] = _typed_value(attribute, cell, self.header)

    def get(self, resource: dict[str, Any]) -> str:
        """The cell of ``resource`` for this column ("" when it has no value)."""
        if self.kind == "id":
            return resource.get("id") or ""
        container = self._container(resource, create=False)
        if not container:
            return ""
        key = _find(container, self.attribute.name)
        value = container.get(key) if key else None
        if value is None:
            return ""
        if self.kind == "typed":
            wanted = (self.value_type or self.attribute.by_type[0][0]).lower()
            return join_values([str(item.get("value")) for item in value
                                if isinstance(item, dict) and str(item.get("type", "")).lower() == wanted])
        if self.kind == "reference":
            items = value if isinstance(value, list) else [value]
            return join_values([item["value"] for item in items if isinstance(item, dict) and item.get("value")])
        if self.kind == "sub":
            item = value[0] if isinstance(value, list) and value else value
            if not isinstance(item, dict):
                return ""
            sub_key = _find(item, self.sub.name)
            return _cell(item[sub_key]) if sub_key else ""
        if isinstance(value, list):
            return join_values([_cell(v) for v in value])
        return _cell(value)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed_value(attribute: Attribute, cell: str, header: str) -> Any:
    text = cell.strip() if attribute.type != "string" else cell
    if attribute.type == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"column {header!r}: {cell!r} is not an integer") from None
    if attribute.type == "decimal":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"column {header!r}: {cell!r} is not a number") from None
    if attribute.type == "boolean":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"column {header!r}: {cell!r} is not a boolean; use true or false")
        return text.lower() == "true"
    return cell


def parse_column(header: str, mapping: Mapping) -> Column:
    """A CSV header cell as a :class:`Column`; :class:`UsageError` naming it when it is no usable path."""
    text = header.strip()
    if text.lower() == "id":
        return Column(text, "id")
    typed = _TYPED.match(text)
    path_text = typed.group("path") if typed else text
    try:
        path = mapping.resolve(path_text)
    except UnknownAttribute as exc:
        raise UsageError(f"CSV column {header!r}: {exc}; columns are SCIM attribute paths such as userName, "
                         f"name.givenName, emails[type eq \"work\"].value (docs/import-export.md)") from None
    schema, attribute, sub = path.schema, path.attribute, path.sub
    core = schema is mapping.core
    if attribute.mutability == "readOnly":
        raise UsageError(f"CSV column {header!r}: {attribute.name} is read-only; remove the column")
    if typed:
        if not attribute.by_type:
            raise UsageError(f"CSV column {header!r}: {attribute.name} has no types; write {attribute.name}")
        if typed.group("sub") and typed.group("sub").lower() != "value":
            raise UsageError(f"CSV column {header!r}: only the value of a typed attribute can be a column "
                             f"({attribute.name}[type eq \"...\"].value)")
        value_type = typed.group("type")
        if attribute.ldap_for_type(value_type) is None:
            known = ", ".join(t for t, _ in attribute.by_type)
            raise UsageError(f"CSV column {header!r}: type {value_type!r} is not stored; use one of {known}")
        return Column(text, "typed", schema, attribute, value_type=value_type, core=core)
    if attribute.by_type:
        if sub is not None and sub.name != "value":
            raise UsageError(f"CSV column {header!r}: write {attribute.name}[type eq \"...\"].value")
        return Column(text, "typed", schema, attribute, core=core)
    if attribute.type == "complex" and attribute.ldap:
        if sub is not None and sub.name != "value":
            raise UsageError(f"CSV column {header!r}: a reference column holds ids: {attribute.name} or "
                             f"{attribute.name}.value")
        return Column(text, "reference", schema, attribute, core=core)
    if attribute.type == "complex":
        if sub is None:
            names = ", ".join(f"{attribute.name}.{s.name}" for s in attribute.sub_attributes if s.ldap)
            raise UsageError(f"CSV column {header!r}: {attribute.name} is complex; use its parts: {names}")
        if sub.mutability == "readOnly" or not sub.ldap:
            raise UsageError(f"CSV column {header!r}: {attribute.name}.{sub.name} is not stored")
        return Column(text, "sub", schema, attribute, sub=sub, core=core)
    return Column(text, "simple", schema, attribute, core=core)


def export_columns(mapping: Mapping) -> list[Column]:
    """The columns of a CSV export of a type: every writable, readable attribute; extension ones by URN."""
    columns = [Column("id", "id")]
    for schema, attribute in mapping.attributes():
        core = schema is mapping.core
        prefix = "" if core else f"{schema.id}:"
        if attribute.mutability in ("readOnly",) or attribute.returned == "never":
            continue
        if attribute.by_type:
            for value_type, _ in attribute.by_type:
                columns.append(Column(f'{prefix}{attribute.name}[type eq "{value_type}"].value', "typed", schema,
                                      attribute, value_type=value_type, core=core))
        elif attribute.type == "complex" and attribute.ldap:
            header = f"{prefix}{attribute.name}" + ("" if attribute.multi_valued else ".value")
            columns.append(Column(header, "reference", schema, attribute, core=core))
        elif attribute.type == "complex":
            for sub in attribute.sub_attributes:
                if sub.ldap:
                    columns.append(Column(f"{prefix}{attribute.name}.{sub.name}", "sub", schema, attribute, sub=sub,
                                          core=core))
        elif attribute.ldap:
            columns.append(Column(f"{prefix}{attribute.name}", "simple", schema, attribute, core=core))
    return columns


def read_csv(stream: TextIO, type_name: str, mapping: Mapping) -> Iterator[Row]:
    """Rows of a CSV file whose header names SCIM attribute paths; every row is of ``type_name``."""
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise UsageError(f"CSV header: {exc}") from None
    columns = [parse_column(cell, mapping) for cell in header]
    seen: dict[str, str] = {}
    for column in columns:
        if column.kind in ("simple", "sub", "reference") or (column.kind == "typed" and column.value_type):
            key = column.header.lower()
            if key in seen:
                raise UsageError(f"CSV column {column.header!r} appears twice")
            seen[key] = column.header
    number = 0
    line = reader.line_num
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            number += 1
            yield Row(number, line + 1, type_name, problem=f"not a CSV row: {exc}")
            line = reader.line_num
            continue
        number += 1
        start, line = line + 1, reader.line_num
        if not any(cell.strip() for cell in cells):
            number -= 1
            continue
        row = Row(number, start, type_name)
        if len(cells) != len(columns):
            row.problem = f"has {len(cells)} cells, the header has {len(columns)} columns"
            yield row
            continue
        body: dict[str, Any] = {}
        try:
            for column, cell in zip(columns, cells):
                if column.kind == "id":
                    row.old_id = cell.strip() or None
                elif cell != "":
                    column.put(body, cell)
        except ValueError as exc:
            row.problem = str(exc)
        row.body = body
        yield row


def write_csv_header(out: TextIO, columns: list[Column]) -> csv.writer:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.header for c in columns])
    return writer


# -- SCIM JSON ------------------------------------------------------------------------------------------------


def _type_of_resource(resource: dict, types: dict[str, tuple[Any, Mapping]], default_type: str | None) -> str | None:
    meta = resource.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("resourceType"), str):
        named = meta["resourceType"]
        for name in types:
            if name.lower() == named.lower():
                return name
    schemas = resource.get("schemas")
    if isinstance(schemas, list):
        for name, (resource_type, _) in types.items():
            if any(isinstance(s, str) and s.lower() == resource_type.schema.lower() for s in schemas):
                return name
    return default_type


def scim_row(number: int, line: int, resource: Any, types, default_type: str | None) -> Row:
    row = Row(number, line)
    if not isinstance(resource, dict):
        row.problem = f"a resource must be a JSON object, got {type(resource).__name__}"
        return row
    row.type_name = _type_of_resource(resource, types, default_type)
    if row.type_name is None:
        row.problem = "says neither meta.resourceType nor a known core schema; pass --type"
        return row
    body = dict(resource)
    old_id = body.pop("id", None)
    row.old_id = old_id if isinstance(old_id, str) else None
    body.pop("meta", None)
    body.pop("location", None)
    row.body = body
    return row


def read_scim(stream: TextIO, types, default_type: str | None) -> Iterator[Row]:
    """Rows of a SCIM ListResponse, a JSON array of resources, or JSON lines (one resource per line)."""
    first = stream.read(1)
    while first and first.isspace():
        first = stream.read(1)
    if not first:
        return
    rest = stream.readline()
    head = first + rest
    if first == "{":
        try:
            single = json.loads(head)
        except json.JSONDecodeError:
            single = None
        if isinstance(single, dict) and "Resources" not in single:
            # JSON lines: one resource per line
            yield scim_row(1, 1, single, types, default_type)
            number = 1
            for line_number, line in enumerate(stream, 2):
                if not line.strip():
                    continue
                number += 1
                try:
                    resource = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Row(number, line_number, problem=f"not JSON: {exc.msg} at column {exc.colno}")
                    continue
                yield scim_row(number, line_number, resource, types, default_type)
            return
    text = head + stream.read()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if isinstance(document, dict):
        resources = document.get("Resources")
        if not isinstance(resources, list):
            raise UsageError("a JSON object must be a SCIM ListResponse with a \"Resources\" list "
                             "(or write one resource per line: JSON lines)")
    elif isinstance(document, list):
        resources = document
    else:
        raise UsageError("SCIM JSON must be a ListResponse, an array of resources, or one resource per line")
    for number, resource in enumerate(resources, 1):
        yield scim_row(number, number, resource, types, default_type)


def read_rows(path: str, fmt: str, types: dict[str, tuple[Any, Mapping]], default_type: str | None) -> Iterator[Row]:
    """The rows of ``path`` read as ``fmt``, one at a time (a SCIM ListResponse or array is read whole)."""
    # utf-8-sig: a byte order mark (spreadsheets write one) is not part of the first column's name
    with open(path, encoding="utf-8-sig", newline="" if fmt == "csv" else None) as stream:
        if fmt == "ldif":
            yield from read_ldif(stream, types, default_type)
        elif fmt == "csv":
            type_name = default_type or "User"
            yield from read_csv(stream, type_name, types[type_name][1])
        else:
            yield from read_scim(stream, types, default_type or "User")


def normalized_dn(dn: str) -> str:
    try:
        return normalize_dn(dn)
    except Exception:  # noqa: BLE001 - a malformed DN is compared as it is
        return dn.lower()
