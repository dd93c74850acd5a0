"""How the User's SCIM attributes map to LDAP here: one renamed, one added (docs/scim.md, "Mappings").

* **renamed**: clients say ``callName`` where SCIM says ``nickName``; the value stays in the LDAP
  attribute ``didmosNickName``, so entries written before keep their value.
* **added**: ``badgeNumber``, stored in ``{{ cookiecutter.ldap_prefix }}BadgeNumber`` of the auxiliary class
  ``{{ cookiecutter.ldap_prefix }}Person``. Both come from this plugin's schema migration
  (``schema/0001-{{ cookiecutter.plugin_name }}-schema.ldif``); new users get the class, and a user written
  before gets it with its next change through SCIM.

Reading, writing, filters, sorting, PATCH paths, 403 messages and ``/scim/v2/Schemas`` all follow.
"""

from __future__ import annotations

from dataclasses import replace

from didmos_scim.mapping import USER, Attribute, Mapping

BADGE_ATTRIBUTE = "{{ cookiecutter.ldap_prefix }}BadgeNumber"
PERSON_CLASS = "{{ cookiecutter.ldap_prefix }}Person"

BADGE = Attribute("badgeNumber", "string", BADGE_ATTRIBUTE,
                  description="The number on the person's building badge, such as AB-1234")


def renamed(mapping: Mapping, schema_id: str, old: str, new: str) -> Mapping:
    """A copy of ``mapping`` where attribute ``old`` of schema ``schema_id`` is called ``new``."""
    schema = mapping.schema(schema_id)
    attribute = schema.attribute(old) if schema is not None else None
    if attribute is None:
        # The built-in mapping changed under us: stop at start-up rather than serve a surprise.
        raise LookupError(f"{{ cookiecutter.plugin_name }}: the User mapping has no attribute {old!r} to rename")
    changed = replace(schema, attributes=tuple(replace(a, name=new) if a is attribute else a
                                               for a in schema.attributes))
    if schema is mapping.core:
        return replace(mapping, core=changed)
    return replace(mapping, extensions=tuple(changed if s is schema else s for s in mapping.extensions))


def user_mapping(mapping: Mapping) -> Mapping:
    """The built-in User mapping with our changes."""
    mapping = renamed(mapping, USER, "nickName", "callName")
    mapping = mapping.with_attribute(USER, BADGE)
    return replace(mapping, auxiliary_classes=(*mapping.auxiliary_classes, PERSON_CLASS))
