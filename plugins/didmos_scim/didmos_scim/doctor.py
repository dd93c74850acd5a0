"""``didmos doctor``: an index for every LDAP attribute a SCIM filter can name.

A SCIM filter becomes one LDAP search (``docs/scim.md``); on an attribute without an index slapd reads
every entry of the resource type to answer it. Which attributes clients can filter on comes from the
mappings (the ``didmos_attribute_mapping`` hook, customer changes included): every attribute stored in
LDAP except those never returned (``password``), plus ``id`` (``didmosUUID``). Whether an index exists
is read from cn=config by ``didmos_ldap`` (:func:`didmos_ldap.doctor.read_config`).
"""

from __future__ import annotations

from typing import Any

from didmos_host.errors import DidmosError
from didmos_host.records import DoctorCheck, DoctorFinding

CHECK = "scim.indexes"


def doctor_checks(host: Any) -> list[DoctorCheck]:
    return [DoctorCheck(CHECK, check_indexes, order=15)]


def filterable_attributes(host: Any) -> dict[str, list[str]]:
    """LDAP attribute -> the SCIM attributes (``User.name.givenName``) a filter reaches it by."""
    scim = host.service("scim")
    found: dict[str, list[str]] = {}
    for resource_type in sorted(host.resource_types.values(), key=lambda r: r.name):
        try:
            mapping = scim.mapping(resource_type)
        except DidmosError:
            continue  # a resource type another API serves: not filtered through SCIM
        found.setdefault(mapping.rdn_attribute, []).append(f"{resource_type.name}.id")
        for _, attribute in mapping.attributes():
            if attribute.returned == "never":
                continue  # never returned, so never filterable (docs/scim.md)
            for ldap_attribute in attribute.ldap_attributes:
                paths = found.setdefault(ldap_attribute, [])
                if f"{resource_type.name}.{attribute.name}" not in paths:
                    paths.append(f"{resource_type.name}.{attribute.name}")
    return found


def check_indexes(host: Any) -> list[DoctorFinding]:
    from didmos_ldap.doctor import ConfigUnreadable, read_config

    try:
        config = read_config(host)
    except ConfigUnreadable as exc:
        return [DoctorFinding(CHECK, "skipped", f"{exc.message}; indexes not checked", ConfigUnreadable.fix)]
    except DidmosError as exc:  # no database for directory.suffix: the directory check says what to do
        return [DoctorFinding(CHECK, "skipped", f"{exc.message}; indexes not checked")]
    attributes = filterable_attributes(host)
    missing = config.unindexed(attributes)
    if not missing:
        return [DoctorFinding(CHECK, "ok", f"all {len(attributes)} LDAP attributes SCIM filters can name are "
                                           f"indexed on {config.suffix_db}")]
    named = ", ".join(f"{name} ({', '.join(attributes[name])})" for name in missing)
    return [DoctorFinding(
        CHECK, "problem",
        f"{len(missing)} LDAP attribute(s) SCIM filters can name have no eq, pres or sub index on "
        f"{config.suffix_db}, so such a filter reads every entry of its type: {named}",
        f"add an index in a migration of your plugin (docs/hooks.md, didmos_directory_migrations), or by hand: "
        f"ldapmodify with 'dn: {config.suffix_db}', 'changetype: modify', 'add: olcDbIndex', "
        f"'olcDbIndex: {','.join(missing)} eq'")]
