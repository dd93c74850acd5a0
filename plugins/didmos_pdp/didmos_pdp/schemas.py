"""Request and response bodies of the PDP's REST API (``/pdp/v1``), see :mod:`didmos_pdp.resources`.

Only the shape is checked here (422 with per-field errors). What depends on the policy, such as
known operations, scope kinds, cycles and separation of duty, is checked by the policy itself and
answered with 400 or 409, the same whoever calls it (API, CLI, a plugin).
"""

from __future__ import annotations

import ldap.dn
from marshmallow import ValidationError, validates_schema  # didmos_host.api does not re-export these

from didmos_host.api import Schema, fields, validate

#: Names of new roles, permissions and sets: they become an RDN and a path segment of this API.
NAME = validate.Regexp(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    error="a name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit; got {input!r}",
)


def _dn(value: str) -> None:
    if not ldap.dn.is_dn(value):
        raise ValidationError(f"{value!r} is not a DN; expected something like 'ou=people,dc=example,dc=org'")


def _names(description: str) -> fields.List:
    return fields.List(fields.String(), metadata={"description": description})


# -- roles -------------------------------------------------------------------------------------------

class RoleSchema(Schema):
    name = fields.String(metadata={"description": "The role's name (its cn)"})
    description = fields.String(metadata={"description": "What the role is for"})
    juniors = _names("Roles it inherits from directly (it is their senior)")
    permissions = _names("Permissions assigned to it directly")
    scope = fields.String(allow_none=True, metadata={
        "description": "The subtree a scoped role applies to (for permissions with scope `role`), or null"})


class RoleDetailSchema(RoleSchema):
    seniors = _names("Every role senior to it, directly or through others")
    all_juniors = _names("Every role junior to it, directly or through others")
    all_permissions = _names("Every permission it grants, those of its juniors included (RolePermissions)")
    assigned_users = _names("didmosUUIDs of the users it is assigned to directly (AssignedUsers); "
                            "the DN for an entry without one")
    authorized_users = _names("didmosUUIDs of the users assigned to it or to a senior role (AuthorizedUsers); "
                              "the DN for an entry without one")


class RoleCreateSchema(Schema):
    name = fields.String(required=True, validate=NAME)
    description = fields.String(load_default="")
    scope = fields.String(load_default=None, allow_none=True, metadata={
        "description": "The subtree (a DN) a scoped role applies to"})


class PermissionRefSchema(Schema):
    permission = fields.String(required=True, metadata={"description": "Name of the permission to grant"})


class RoleRefSchema(Schema):
    role = fields.String(required=True, metadata={"description": "Name of the role"})


# -- permissions -------------------------------------------------------------------------------------

class PermissionSchema(Schema):
    name = fields.String()
    description = fields.String()
    operations = _names("read, write, create, delete, modify-add, modify-del, modify-replace")
    resource_type = fields.String(metadata={"description": "User, Groups, ..., or * for every resource type"})
    scope = fields.String(metadata={"description": "tenant, self, organization, role or subtree:<dn>"})
    attributes = _names("Attributes it is limited to; empty: every attribute")


class PermissionDetailSchema(PermissionSchema):
    roles = _names("Roles it is assigned to directly (PermissionRoles)")
    authorized_roles = _names("Roles that grant it, directly or through a junior")


class PermissionCreateSchema(Schema):
    name = fields.String(required=True, validate=NAME)
    operations = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    resource_type = fields.String(required=True, validate=validate.Length(min=1))
    scope = fields.String(load_default="tenant")
    attributes = fields.List(fields.String(), load_default=list)
    description = fields.String(load_default="")


# -- separation of duty ----------------------------------------------------------------------------

class SodSetSchema(Schema):
    name = fields.String(required=True, validate=NAME)
    roles = fields.List(fields.String(), required=True, validate=validate.Length(min=2),
                        metadata={"description": "Names of the roles of the set"})
    cardinality = fields.Integer(required=True, metadata={
        "description": "How many of the roles together are forbidden (2 to the number of roles)"})
    dynamic = fields.Boolean(load_default=False, metadata={
        "description": "true: in one session (DSD); false: assigned to one user (SSD)"})


# -- users -------------------------------------------------------------------------------------------

class UserRolesSchema(Schema):
    id = fields.String(metadata={"description": "The user's didmosUUID"})
    assigned = _names("Roles assigned to the user directly (AssignedRoles)")
    authorized = _names("Those and every role junior to them (AuthorizedRoles)")


class UserPermissionsSchema(Schema):
    id = fields.String(metadata={"description": "The user's didmosUUID"})
    permissions = _names("Every permission of every role the user is authorized for (UserPermissions)")


# -- sessions and decisions ------------------------------------------------------------------------------

class SessionCreateSchema(Schema):
    user = fields.String(load_default=None, allow_none=True,
                         metadata={"description": "didmosUUID of the session's user; default: the caller"})
    roles = fields.List(fields.String(), load_default=None, allow_none=True, metadata={
        "description": "Roles to activate; default: every assigned role that dynamic separation of duty allows"})


class SessionSchema(Schema):
    id = fields.String()
    user = fields.String(allow_none=True, metadata={"description": "didmosUUID of the session's user"})
    roles = _names("Its active roles (SessionRoles)")
    permissions = _names("Every permission its active roles grant (SessionPermissions)")


class CheckAccessSchema(Schema):
    session = fields.String(load_default=None, allow_none=True,
                            metadata={"description": "Decide for this session's active roles"})
    user = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Decide for this user (didmosUUID) with the default active roles; "
                       "without session and user: for the caller"})
    operation = fields.String(required=True, metadata={"description": "read, write, create, delete, modify-*"})
    resource_type = fields.String(required=True)
    target = fields.String(load_default=None, allow_none=True, validate=_dn,
                           metadata={"description": "DN of the entry (the parent DN for create)"})

    @validates_schema
    def _one_subject(self, data, **kwargs):
        if data.get("session") is not None and data.get("user") is not None:
            raise ValidationError("give either a session or a user, not both")


class DecisionSchema(Schema):
    allowed = fields.Boolean()
    attributes = fields.List(fields.String(), allow_none=True, metadata={
        "description": "The attributes the operation may touch; null: every attribute"})
