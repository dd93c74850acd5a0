"""SCIM attributes (RFC 7643) and where their values live in LDAP.

A resource type's mapping is a :class:`Mapping`: its core schema and extension schemas, each a list
of :class:`Attribute` definitions. An attribute is one of:

* **simple**: ``ldap`` names the LDAP attribute (``userName`` -> ``uid``);
* **complex, single-valued** (``name``): its sub-attributes are simple;
* **multi-valued with types** (``emails``, ``phoneNumbers``): ``by_type`` maps each SCIM ``type`` to
  the LDAP attribute holding values of that type (``phoneNumbers``: work -> ``telephoneNumber``,
  mobile -> ``mobile``). The ``value`` sub-attribute is the LDAP value; ``type`` is where it is stored;
  ``primary`` marks the first value of the first type;
* **a reference** (complex with ``ldap`` set: ``manager`` -> ``manager``, ``members`` -> ``member``,
  ``groups`` -> ``memberOf``): the LDAP values are DNs; ``value`` is the referenced entry's id
  (``didmosUUID``) and ``display`` its display name, looked up by the SCIM plugin in one bundled read;
* **computed** (``ldap`` and ``by_type`` both empty, e.g. ``meta``): filled by the SCIM plugin.

The built-in mappings are returned by the ``didmos_attribute_mapping`` hook (``trylast``); a customer
plugin replaces one with ``tryfirst`` or edits it with ``wrapper=True`` (``docs/scim.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ORGANIZATION = "urn:didmos:params:scim:schemas:core:2.0:Organization"
LUI = "urn:scim:schemas:custom:daasi:lui:2.0"

TYPES = ("string", "boolean", "decimal", "integer", "dateTime", "reference", "binary", "complex")


@dataclass(frozen=True)
class Attribute:
    """One SCIM attribute definition (RFC 7643 section 7) and its place in LDAP."""

    name: str
    type: str = "string"
    ldap: str | None = None
    by_type: tuple[tuple[str, str], ...] = ()
    multi_valued: bool = False
    case_exact: bool = False
    required: bool = False
    mutability: str = "readWrite"
    returned: str = "default"
    uniqueness: str = "none"
    description: str = ""
    sub_attributes: tuple[Attribute, ...] = ()
    reference_types: tuple[str, ...] = ()
    #: The values a client should use (RFC 7643 2.3.1), e.g. ("User", "Group") for members.type.
    canonical_values: tuple[str, ...] = ()

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"attribute {self.name!r}: type {self.type!r} is not one of {', '.join(TYPES)}")

    def sub(self, name: str) -> Attribute | None:
        """The sub-attribute called ``name`` (case-insensitive, as SCIM attribute names are)."""
        wanted = name.lower()
        return next((a for a in self.sub_attributes if a.name.lower() == wanted), None)

    @cached_property  # frozen: computed once (conversions ask for it for every attribute of every row)
    def ldap_attributes(self) -> tuple[str, ...]:
        """Every LDAP attribute this attribute (with its sub-attributes) reads and writes."""
        found = [self.ldap] if self.ldap else []
        found += [attr for _, attr in self.by_type]
        for sub in self.sub_attributes:
            found += sub.ldap_attributes
        return tuple(dict.fromkeys(found))

    def type_of(self, ldap_attribute: str) -> str | None:
        """The SCIM ``type`` of values stored in ``ldap_attribute`` (for ``by_type`` attributes)."""
        return next((t for t, attr in self.by_type if attr.lower() == ldap_attribute.lower()), None)

    def ldap_for_type(self, value_type: str | None) -> str | None:
        """Where values of SCIM type ``value_type`` go; no type: the first mapped type."""
        if not self.by_type:
            return None
        if value_type is None:
            return self.by_type[0][1]
        return next((attr for t, attr in self.by_type if t.lower() == value_type.lower()), None)


@dataclass(frozen=True)
class Schema:
    """A SCIM schema: core or extension, with its attributes."""

    id: str
    name: str
    description: str
    attributes: tuple[Attribute, ...]

    def attribute(self, name: str) -> Attribute | None:
        wanted = name.lower()
        return next((a for a in self.attributes if a.name.lower() == wanted), None)


@dataclass(frozen=True)
class Path:
    """A resolved attribute path: ``emails.value`` -> (User schema, emails, value)."""

    schema: Schema
    attribute: Attribute
    sub: Attribute | None = None

    @property
    def leaf(self) -> Attribute:
        return self.sub or self.attribute

    def __str__(self) -> str:
        return f"{self.schema.id}:{self.attribute.name}" + (f".{self.sub.name}" if self.sub else "")


class UnknownAttribute(ValueError):
    """A path names no attribute of the resource type's schemas."""


@dataclass(frozen=True)
class Mapping:
    """The SCIM view of one resource type: core schema, extensions, LDAP object classes."""

    core: Schema
    extensions: tuple[Schema, ...] = ()
    object_classes: tuple[str, ...] = ()
    rdn_attribute: str = "didmosUUID"
    #: LDAP values a new entry gets when the created resource does not say: ``(("didmosActive", "TRUE"),)``.
    defaults: tuple[tuple[str, str], ...] = ()
    #: Auxiliary object classes every entry of the type should have: new entries get them, and a
    #: modify of an entry that lacks one adds it in the same operation.
    auxiliary_classes: tuple[str, ...] = ("didmosScimObject",)
    #: Where ``externalId`` (RFC 7643 3.1, a common attribute outside the schemas) is stored; None: nowhere.
    external_id: str | None = "didmosExternalId"

    @property
    def external_attribute(self) -> Attribute | None:
        """``externalId`` as an attribute definition (caseExact, set by the provisioning client)."""
        if not self.external_id:
            return None
        return Attribute("externalId", "string", self.external_id, case_exact=True,
                         description="The identifier the provisioning client knows the resource by")

    @property
    def schemas(self) -> tuple[Schema, ...]:
        return (self.core, *self.extensions)

    def schema(self, urn: str) -> Schema | None:
        return next((s for s in self.schemas if s.id.lower() == urn.lower()), None)

    def resolve(self, path: str) -> Path:
        """``userName``, ``name.givenName``, ``urn:...:User:name.givenName``, ``urn:...:enterprise:2.0:User:manager``.

        Names are case-insensitive; a schema URN prefix selects the schema, otherwise the core schema
        (then the extensions) is searched. Raises :class:`UnknownAttribute` naming the path.
        """
        external = self.external_attribute
        if external is not None and path.lower() in ("externalid", f"{self.core.id.lower()}:externalid"):
            return Path(self.core, external)
        schemas: tuple[Schema, ...] = self.schemas
        rest = path
        for schema in sorted(self.schemas, key=lambda s: -len(s.id)):  # longest URN first
            if path.lower().startswith(schema.id.lower() + ":"):
                schemas, rest = (schema,), path[len(schema.id) + 1:]
                break
        name, _, sub_name = rest.partition(".")
        for schema in schemas:
            attribute = schema.attribute(name)
            if attribute is None:
                continue
            if not sub_name:
                return Path(schema, attribute)
            sub = attribute.sub(sub_name)
            if sub is None:
                raise UnknownAttribute(f"{attribute.name} has no sub-attribute {sub_name!r}")
            return Path(schema, attribute, sub)
        raise UnknownAttribute(f"unknown attribute {path!r}")

    def attributes(self) -> Iterator[tuple[Schema, Attribute]]:
        """Every attribute of every schema, then ``externalId`` (as if in the core schema)."""
        for schema in self.schemas:
            for attribute in schema.attributes:
                yield schema, attribute
        if self.external_attribute is not None:
            yield self.core, self.external_attribute

    def ldap_attributes(self) -> tuple[str, ...]:
        """Every LDAP attribute the mapping reads (the attribute list of its searches)."""
        return self._ldap_attributes

    @cached_property  # frozen: computed once
    def _ldap_attributes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a for _, attribute in self.attributes() for a in attribute.ldap_attributes))

    def with_attribute(self, schema_id: str, attribute: Attribute) -> Mapping:
        """A copy with ``attribute`` added to (or replacing the one of that name in) a schema."""
        def update(schema: Schema) -> Schema:
            if schema.id != schema_id:
                return schema
            kept = tuple(a for a in schema.attributes if a.name.lower() != attribute.name.lower())
            return replace(schema, attributes=(*kept, attribute))

        if self.schema(schema_id) is None:
            raise UnknownAttribute(f"no schema {schema_id!r} in this mapping")
        return replace(self, core=update(self.core), extensions=tuple(update(s) for s in self.extensions))


def _s(name, ldap=None, **kw) -> Attribute:
    return Attribute(name, "string", ldap, **kw)


# ``primary`` is computed (the first value of the first type) and ``display`` is not stored: both are
# read-only and returned on request only, so a client that writes a list reads back what it wrote.
_TYPED_VALUE = (
    Attribute("value", "string"),
    Attribute("type", "string"),
    Attribute("primary", "boolean", mutability="readOnly", returned="request"),
    Attribute("display", "string", mutability="readOnly", returned="request"),
)

USER_SCHEMA = Schema(USER, "User", "User Account", (
    _s("userName", "uid", required=True, uniqueness="server",
       description="Unique identifier for the user; generated when absent"),
    # required: LDAP persons must have cn and sn; a create without a name derives them from userName
    Attribute("name", "complex", required=True, sub_attributes=(
        _s("formatted", "cn"), _s("familyName", "sn"), _s("givenName", "givenName"),
        _s("middleName", "didmosMiddleName"), _s("honorificPrefix", "didmosHonorificPrefix"),
        _s("honorificSuffix", "didmosHonorificSuffix"),
    ), description="The components of the user's name"),
    _s("displayName", "displayName"),
    _s("nickName", "didmosNickName"),
    Attribute("profileUrl", "reference", "labeledURI", reference_types=("external",)),
    _s("title", "title"),
    _s("userType", "didmosUserType"),
    _s("preferredLanguage", "preferredLanguage"),
    _s("locale", "didmosLocale"),
    _s("timezone", "didmosTimezone"),
    Attribute("active", "boolean", "didmosActive"),
    Attribute("password", "string", "userPassword", mutability="writeOnly", returned="never"),
    Attribute("emails", "complex", multi_valued=True, by_type=(("work", "mail"),), sub_attributes=_TYPED_VALUE),
    Attribute("phoneNumbers", "complex", multi_valued=True,
              by_type=(("work", "telephoneNumber"), ("mobile", "mobile"), ("home", "homePhone"),
                       ("fax", "facsimileTelephoneNumber"), ("pager", "pager")), sub_attributes=_TYPED_VALUE),
    # one address is kept (LDAP has one set of postal attributes per entry)
    Attribute("addresses", "complex", multi_valued=True, sub_attributes=(
        _s("formatted", "postalAddress"), _s("streetAddress", "street"), _s("locality", "l"),
        _s("region", "st"), _s("postalCode", "postalCode"), _s("country", "didmosCountry"),
    )),
    Attribute("groups", "complex", "memberOf", multi_valued=True, mutability="readOnly", sub_attributes=(
        Attribute("value", "string", mutability="readOnly"),
        Attribute("$ref", "reference", mutability="readOnly", reference_types=("Group",)),
        Attribute("display", "string", mutability="readOnly"),
        Attribute("type", "string", mutability="readOnly"),
    ), description="Groups the user is a member of (computed, read-only)"),
))

ENTERPRISE_SCHEMA = Schema(ENTERPRISE, "EnterpriseUser", "Enterprise User", (
    _s("employeeNumber", "employeeNumber"),
    _s("costCenter", "didmosCostCenter"),
    _s("organization", "o"),
    _s("division", "businessCategory"),
    _s("department", "ou"),
    Attribute("manager", "complex", "manager", sub_attributes=(
        Attribute("value", "string"),
        Attribute("$ref", "reference", reference_types=("User",)),
        Attribute("displayName", "string", mutability="readOnly", returned="request"),
    ), description="The user's manager (LDAP manager, a DN)"),
))

LUI_SCHEMA = Schema(LUI, "LUI", "didmos LUI extension: the roles the entry holds and whether they reach beyond its own entry", (
    Attribute("adminAccess", "boolean", mutability="readOnly"),
    Attribute("roles", "string", multi_valued=True, mutability="readOnly"),
))

GROUP_SCHEMA = Schema(GROUP, "Group", "Group", (
    _s("displayName", "cn", required=True),
    Attribute("members", "complex", "member", multi_valued=True, sub_attributes=(
        Attribute("value", "string", mutability="immutable"),
        Attribute("$ref", "reference", mutability="immutable", reference_types=("User", "Group")),
        Attribute("display", "string", mutability="readOnly", returned="request"),
        Attribute("type", "string", mutability="immutable", canonical_values=("User", "Group")),
    ), description="Members: users and nested groups (LDAP member DNs)"),
    _s("description", "description"),
))

ORGANIZATION_SCHEMA = Schema(ORGANIZATION, "Organization", "An organization of the tenant", (
    _s("name", "o", required=True),
    _s("displayName", "displayName"),
    _s("description", "description"),
    Attribute("phoneNumbers", "complex", multi_valued=True, by_type=(("work", "telephoneNumber"),),
              sub_attributes=_TYPED_VALUE),
    Attribute("addresses", "complex", multi_valued=True, sub_attributes=(
        _s("formatted", "postalAddress"), _s("streetAddress", "street"), _s("locality", "l"),
        _s("postalCode", "postalCode"),
    )),
))

DEFAULT_MAPPINGS = {
    "User": Mapping(USER_SCHEMA, (ENTERPRISE_SCHEMA, LUI_SCHEMA),
                    ("inetOrgPerson", "didmosObject", "didmosPerson"),
                    defaults=(("didmosActive", "TRUE"), ("didmosUserType", "local"))),
    # didmosGroup, not groupOfNames: a SCIM group may have no members (didmos_ldap schema 0004)
    "Group": Mapping(GROUP_SCHEMA, (LUI_SCHEMA,), ("didmosGroup", "didmosObject")),
    "Organization": Mapping(ORGANIZATION_SCHEMA, (LUI_SCHEMA,), ("organization", "didmosObject")),
}
