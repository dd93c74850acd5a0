"""Directory entries to SCIM resources and back (RFC 7643), through a :class:`~didmos_scim.mapping.Mapping`.

Reading: :func:`to_scim` builds the resource from one entry. References (``manager``, ``members``,
``groups``) need the referenced entries' ids and names; the caller looks them up for a whole page at
once (``Directory.get_many``) and passes them in as ``references``, so converting costs no round trip.

Writing: :func:`to_ldap` turns a resource body into LDAP attribute values. It ignores read-only
attributes (RFC 7644 3.5.1) and refuses wrong types, unknown attributes (with ``strict``) and
references it cannot resolve.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping as MappingABC
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from didmos_host.errors import DidmosError
from didmos_scim.mapping import Attribute, Mapping, Schema

#: Attributes every resource has and the mapping does not describe.
COMMON = {"id", "schemas", "meta"}


class InvalidValue(DidmosError):
    """A value of the wrong type or shape (SCIM ``invalidValue``, 400)."""

    status = 400
    scim_type = "invalidValue"


class Mutability(DidmosError):
    """A value for an attribute the client may not set (SCIM ``mutability``, 400)."""

    status = 400
    scim_type = "mutability"


def generalized_to_rfc3339(value: str | None) -> str | None:
    """``20190731093903Z`` (LDAP GeneralizedTime) -> ``2019-07-31T09:39:03Z``."""
    if not value:
        return None
    stamp = datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


_GENERALIZED_INPUT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))")


def parse_rfc3339(text: str) -> str | None:
    """RFC 3339 ``2011-05-13T04:42:34+02:00`` -> LDAP GeneralizedTime ``20110513024234Z`` (UTC).

    Fractions of a second are kept (``...34.5Z``): OpenLDAP orders ``20110513024234Z`` before
    ``20110513024234.5Z``, so ``gt``/``lt`` with a fraction stay exact. No time zone: ``None``, as RFC
    3339 requires one and guessing could shift the result by hours.
    """
    match = _GENERALIZED_INPUT.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_hour, off_minute = match.groups()
    try:
        stamp = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        if not zulu:
            offset = timedelta(hours=int(off_hour), minutes=int(off_minute))
            if offset >= timedelta(hours=24):
                return None
            stamp -= offset if sign == "+" else -offset
    except (ValueError, OverflowError):  # 2011-02-30, hour 25, or shifted out of the years 1..9999
        return None
    fraction = (fraction or "").rstrip("0")
    # not strftime: it writes year 800 as "800" on some platforms, GeneralizedTime needs four digits
    return (f"{stamp.year:04d}{stamp.month:02d}{stamp.day:02d}{stamp.hour:02d}{stamp.minute:02d}"
            f"{stamp.second:02d}" + (f".{fraction}" if fraction else "") + "Z")


def rfc3339_to_generalized(value: str) -> str:
    """``2019-07-31T11:39:03+02:00`` -> ``20190731093903Z``; :class:`InvalidValue` for anything else."""
    converted = parse_rfc3339(value) if isinstance(value, str) else None
    if converted is None:
        raise InvalidValue(f"{value!r} is not an RFC 3339 dateTime with a time zone, such as 2019-07-31T09:39:03Z")
    return converted


# -- reading ------------------------------------------------------------------------------------------


def _read_value(attribute: Attribute, raw: str) -> Any:
    if attribute.type == "boolean":
        return raw.upper() == "TRUE"
    if attribute.type == "integer":
        return int(raw)
    if attribute.type == "decimal":
        return float(raw)
    if attribute.type == "dateTime":
        return generalized_to_rfc3339(raw)
    return raw


def _reference(dn: str, references: MappingABC[str, tuple[str, str, str]], base_url: str) -> dict | None:
    """``{"value", "display", "$ref", "type"}`` of a referenced entry, or None when it is unknown."""
    found = references.get(dn.lower())
    if found is None:
        return None
    ref_id, display, ref_type = found
    reference = {"value": ref_id, "display": display, "$ref": f"{base_url}/{ref_type}s/{ref_id}", "type": ref_type}
    if display is None:  # not looked up: nobody asked for it
        del reference["display"]
    return reference


def _read_attribute(entry, attribute: Attribute, references, base_url: str) -> Any:
    if attribute.by_type:
        values = []
        for value_type, ldap_attr in attribute.by_type:
            for raw in entry.values(ldap_attr):
                values.append({"value": raw, "type": value_type})
        if values:
            values[0]["primary"] = True
        return values or None
    if attribute.type == "complex" and attribute.ldap:  # a reference by DN
        found = [ref for dn in entry.values(attribute.ldap) if (ref := _reference(dn, references, base_url))]
        if attribute.multi_valued:
            return found or None
        if not found:
            return None
        single = {"value": found[0]["value"], "$ref": found[0]["$ref"]}
        if found[0].get("display") is not None:
            single["displayName"] = found[0]["display"]
        return single
    if attribute.type == "complex":
        parts = {}
        for sub in attribute.sub_attributes:
            if sub.ldap and (raw := entry.first(sub.ldap)) is not None:
                parts[sub.name] = _read_value(sub, raw)
        if not parts:
            return None
        return [parts] if attribute.multi_valued else parts
    if not attribute.ldap:
        return None
    values = entry.values(attribute.ldap)
    if not values:
        return None
    converted = [_read_value(attribute, raw) for raw in values]
    return converted if attribute.multi_valued else converted[0]


def to_scim(entry, mapping: Mapping, *, resource_type: str, base_url: str,
            references: MappingABC[str, tuple[str, str, str]] | None = None) -> dict[str, Any]:
    """The SCIM resource of ``entry``. ``references`` maps lower-cased DNs to (id, display, type)."""
    references = references or {}
    resource: dict[str, Any] = {"schemas": [mapping.core.id], "id": entry.first("didmosUUID")}
    for schema in mapping.schemas:
        target = resource if schema is mapping.core else {}
        for attribute in schema.attributes:
            if attribute.returned == "never":
                continue
            value = _read_attribute(entry, attribute, references, base_url)
            if value is not None:
                target[attribute.name] = value
        if schema is not mapping.core and target:
            resource[schema.id] = target
            resource["schemas"].append(schema.id)
    external = mapping.external_attribute
    if external is not None and entry.first(external.ldap) is not None:
        resource["externalId"] = entry.first(external.ldap)
    resource["meta"] = {
        "resourceType": resource_type,
        "created": generalized_to_rfc3339(entry.first("createTimestamp")),
        "lastModified": generalized_to_rfc3339(entry.first("modifyTimestamp")),
        "location": f"{base_url}/{resource_type}s/{resource['id']}",
        "version": f'W/"{entry.first("entryCSN")}"' if entry.first("entryCSN") else None,
    }
    resource["meta"] = {k: v for k, v in resource["meta"].items() if v is not None}
    return resource


# -- writing -------------------------------------------------------------------------------------------


def coerce(attribute: Attribute, value: Any, where: str) -> str:
    """One SCIM value as the LDAP string it is stored as; tolerant of what big clients send."""
    if attribute.type == "boolean":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"  # "False" as a string: Azure AD and others send that
        if not isinstance(value, bool):
            raise InvalidValue(f"{where} must be a boolean, got {value!r}")
        return "TRUE" if value else "FALSE"
    if attribute.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"{where} must be an integer, got {value!r}")
        return str(value)
    if attribute.type == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidValue(f"{where} must be a number, got {value!r}")
        return str(value)
    if attribute.type == "dateTime":
        if not isinstance(value, str):
            raise InvalidValue(f"{where} must be a dateTime string, got {value!r}")
        return rfc3339_to_generalized(value)
    if not isinstance(value, str):
        raise InvalidValue(f"{where} must be a string, got {value!r}")
    if not value:
        raise InvalidValue(f"{where} must not be empty; leave it out (or remove it) instead")
    return value


def _write_attribute(attribute: Attribute, value: Any, where: str, out: dict[str, list[str]],
                     resolve_reference: Callable[[str, str], str]) -> None:
    if value is None:
        return
    if attribute.by_type:
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            item_where = f"{where}[{index}]"
            if not isinstance(item, dict) or "value" not in item:
                raise InvalidValue(f"{item_where} must be an object with a 'value'")
            ldap_attr = attribute.ldap_for_type(item.get("type"))
            if ldap_attr is None:
                known = ", ".join(t for t, _ in attribute.by_type)
                raise InvalidValue(f"{item_where}.type {item.get('type')!r} is not supported; use one of {known}")
            out.setdefault(ldap_attr, []).append(coerce(attribute.sub("value") or attribute, item["value"],
                                                        f"{item_where}.value"))
        return
    if attribute.type == "complex" and attribute.ldap:  # references by id
        items = value if isinstance(value, list) else [value]
        if not attribute.multi_valued and isinstance(value, list):
            raise InvalidValue(f"{where} takes one value, not a list")
        for index, item in enumerate(items):
            item_where = f"{where}[{index}]" if attribute.multi_valued else where
            ref_id = item.get("value") if isinstance(item, dict) else None
            if not isinstance(ref_id, str) or not ref_id:
                raise InvalidValue(f"{item_where} must be an object with the 'value' of the referenced resource's id")
            out.setdefault(attribute.ldap, []).append(resolve_reference(ref_id, item_where))
        return
    if attribute.type == "complex":
        items = value if attribute.multi_valued and isinstance(value, list) else [value]
        if len(items) > 1:
            raise InvalidValue(f"{where}: this server keeps one value of {attribute.name}, got {len(items)}")
        for index, item in enumerate(items[:1]):  # LDAP keeps one value per sub-attribute
            if not isinstance(item, dict):
                raise InvalidValue(f"{where} must be an object")
            for key, sub_value in item.items():
                sub = attribute.sub(key)
                if sub is None:
                    raise InvalidValue(f"{where} has no sub-attribute {key!r}")
                if sub.ldap and sub_value is not None:
                    out.setdefault(sub.ldap, []).append(coerce(sub, sub_value, f"{where}.{sub.name}"))
        return
    if not attribute.ldap:
        return
    if attribute.multi_valued:
        if not isinstance(value, list):
            value = [value]
        out.setdefault(attribute.ldap, []).extend(coerce(attribute, v, f"{where}[{i}]") for i, v in enumerate(value))
    else:
        if isinstance(value, list):
            raise InvalidValue(f"{where} takes one value, not a list")
        out.setdefault(attribute.ldap, []).append(coerce(attribute, value, where))


def to_ldap(body: MappingABC[str, Any], mapping: Mapping, *, strict: bool,
            resolve_reference: Callable[[str, str], str] | None = None) -> dict[str, list[str]]:
    """LDAP attribute values for a resource body (create or replace).

    ``strict``: unknown attributes are a 400 (``/scim/v2``); otherwise they are ignored, as the original
    LUI backend documents ("if there is no mapping defined for a given attribute, it will be ignored").
    ``resolve_reference(id, where)`` returns the DN of a referenced resource or raises.
    """
    if not isinstance(body, MappingABC):
        raise InvalidValue("the request body must be a JSON object")

    def no_references(ref_id: str, where: str) -> str:
        raise InvalidValue(f"{where}: references cannot be resolved here")

    resolve = resolve_reference or no_references
    out: dict[str, list[str]] = {}
    extension_ids = {s.id.lower(): s for s in mapping.extensions}
    external = mapping.external_attribute
    for key, value in body.items():
        if key.lower() in COMMON:
            continue
        if key.lower() == "externalid" and external is not None:
            _write_attribute(external, value, key, out, resolve)
            continue
        schema: Schema | None = extension_ids.get(key.lower())
        if schema is not None:
            if not isinstance(value, MappingABC):
                raise InvalidValue(f"{key} must be an object of that extension's attributes")
            for sub_key, sub_value in value.items():
                _write_one(schema, sub_key, sub_value, f"{schema.name}.{sub_key}", out, resolve, strict)
            continue
        _write_one(mapping.core, key, value, key, out, resolve, strict)
    return out


def _write_one(schema: Schema, key: str, value: Any, where: str, out, resolve, strict: bool) -> None:
    attribute = schema.attribute(key)
    if attribute is None:
        if strict:
            raise InvalidValue(f"unknown attribute {where!r} for schema {schema.id}")
        return
    if attribute.mutability == "readOnly":
        return  # RFC 7644 3.5.1: values of read-only attributes in a create or replace are ignored
    _write_attribute(attribute, value, where, out, resolve)
