"""The PDP's REST API, ``/pdp/v1``: the standard's review, administrative and system functions.

Every route authenticates first (401 without credentials, before the body is even read), then
authorizes with :meth:`RbacAdmin.require` before it reads or changes anything else: an operation on
one of the administrative resource types, with the entry concerned as the target, so that a
permission scoped to a subtree delegates exactly that subtree:

* ``Role``, ``Permission``, ``SodSet``: the entry below ``pdp.rbac_dn`` (its container
  ``ou=roles|permissions|constraints`` for lists and creation);
* ``RoleAssignment`` and ``Session``: the user's entry.

Whoever hands out a role or a permission must have it (:meth:`RbacAdmin.require_no_escalation`).
A user may always read its own roles and permissions, manage its own sessions and ask CheckAccess for
itself. Whether a user id or session exists is told only to callers who may act on it tenant-wide;
others get 403 for an unknown one, as for a known one they may not touch.

Failures are the host's errors: 404 unknown, 409 exists already or breaks a separation-of-duty set,
400 an inconsistent policy (a cycle, an unknown operation or scope), 403 not allowed, 422 a body of
the wrong shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask
import ldap
import ldap.dn

from didmos_host.api import Blueprint, MethodView
from didmos_host.app import current_actor, current_host
from didmos_host.errors import NotFound
from didmos_host.records import Action, Actor
from didmos_pdp.admin import RbacAdmin
from didmos_pdp.pdp import rdn_value
from didmos_pdp.policy import OPERATIONS, Permission, Policy, PolicyError, Scope
from didmos_pdp.schemas import (
    CheckAccessSchema, DecisionSchema, PermissionCreateSchema, PermissionDetailSchema, PermissionRefSchema,
    PermissionSchema, RoleCreateSchema, RoleDetailSchema, RoleRefSchema, RoleSchema, SessionCreateSchema,
    SessionSchema, SodSetSchema, UserPermissionsSchema, UserRolesSchema,
)

blueprint = Blueprint("pdp", __name__, url_prefix="/pdp/v1",
                      description="Role-based access control (ANSI INCITS 359): roles, permissions, separation "
                                  "of duty, user assignment, sessions and CheckAccess")


@blueprint.before_request
def _authenticate() -> None:
    """Every route needs an actor; asked before the body is parsed, so anonymous callers get 401, not 422."""
    if flask.request.method != "OPTIONS":
        current_actor()


# -- who may -------------------------------------------------------------------------------------------

def _admin() -> RbacAdmin:
    return current_host().service("rbac_admin")


def _container(kind: str) -> str:
    return f"ou={kind},{_admin().pdp.rbac_dn}"


def _same_entry(a: str, b: str) -> bool:
    def key(dn):
        return [sorted((attr.lower(), value.lower()) for attr, value, _ in rdn) for rdn in ldap.dn.str2dn(dn)]

    return key(a) == key(b)


def _is_self(actor: Actor, uuid: str) -> bool:
    return actor.uuid.lower() == uuid.lower()


def _user_dn(actor: Actor, uuid: str) -> str:
    """The DN of user ``uuid`` (looked up once per request)."""
    if _is_self(actor, uuid):
        return actor.dn
    known = flask.g.setdefault("didmos_pdp_users", {})
    if uuid not in known:
        known[uuid] = _admin().user_dn(uuid)
    return known[uuid]


def _require_on_user(actor: Actor, operation: str, resource_type: str, uuid: str, *, own: bool = False) -> str:
    """``operation`` on ``resource_type`` with user ``uuid``'s entry as target (``own``: a user may on itself).

    Returns the user's DN. An unknown id is 404 only for a caller allowed the operation tenant-wide.
    """
    admin = _admin()
    try:
        dn = _user_dn(actor, uuid)
    except NotFound:
        admin.require(actor, operation, resource_type)
        raise
    if not (own and _same_entry(dn, actor.dn)):
        admin.require(actor, operation, resource_type, dn)
    return dn


def _require_on_session(actor: Actor, operation: str, session_id: str) -> tuple[str, frozenset[str]]:
    """The session's own user may; anyone else needs ``operation`` on ``Session`` for that user.

    Returns the session's user DN and active roles.
    """
    admin = _admin()
    try:
        user, active = admin.session(session_id)
    except NotFound:
        admin.require(actor, operation, "Session")
        raise
    if not _same_entry(user, actor.dn):
        admin.require(actor, operation, "Session", user)
    return user, active


def authorize(check: Callable[..., object]):
    """Run ``check(actor, **path parameters)`` before the view and before its body is parsed, so that a
    caller who may not do something learns that (403) before whether its body was right (422)."""

    def decorate(view):
        @functools.wraps(view)
        def guarded(self, *args, **path):
            check(current_actor(), **path)
            return view(self, *args, **path)

        return guarded

    return decorate


def may(operation: str, resource_type: str, target: Callable[..., str]):
    """A check: ``operation`` on ``resource_type``, the target DN computed from the path parameters."""

    def check(actor, **path):
        _admin().require(actor, operation, resource_type, target(**path))

    return check


def on_user(operation: str, resource_type: str, *, own: bool = False):
    """A check on the user of the path (``uuid``), its entry as target."""

    def check(actor, uuid, **_):
        _require_on_user(actor, operation, resource_type, uuid, own=own)

    return check


def on_session(operation: str):
    """A check on the session of the path: its own user, or ``operation`` on ``Session`` for its user."""

    def check(actor, session_id, **_):
        _require_on_session(actor, operation, session_id)

    return check


def _role_dn(name: str, **_) -> str:
    return _admin().pdp.dn("roles", name)


def _check_scope_dn(dn: str | None, what: str) -> None:
    # The policy compares DNs on every decision; one that cannot be parsed must never get into it.
    if dn is not None and not ldap.dn.is_dn(dn):
        raise PolicyError(f"{what} {dn!r} is not a DN; expected something like 'ou=dept-x,ou=people,...'")


# -- what is answered ----------------------------------------------------------------------------------

def _known_role(policy: Policy, name: str):
    role = policy.roles.get(name)
    if role is None:
        raise NotFound(f"no role named {name!r}")
    return role


def _role_body(role) -> dict:
    return {"name": role.name, "description": role.description, "juniors": sorted(role.juniors),
            "permissions": sorted(role.permissions), "scope": role.scope}


def _permission_body(permission: Permission, description: str) -> dict:
    return {"name": permission.name, "description": description,
            "operations": [op for op in OPERATIONS if op in permission.operations],
            "resource_type": permission.resource_type, "scope": str(permission.scope),
            "attributes": sorted(permission.attributes)}


def _descriptions(kind: str) -> dict[str, str]:
    """Descriptions of the entries of one container (the compiled policy keeps those of roles only)."""
    entries = current_host().service("directory").search(_container(kind), "(objectClass=*)", ldap.SCOPE_ONELEVEL,
                                                         ["description"])
    return {rdn_value(entry.dn): entry.first("description") or "" for entry in entries}


def _user_ids(dns: list[str]) -> list[str]:
    """didmosUUIDs of the entries (the DN of one without); entries deleted meanwhile are left out."""
    if not dns:
        return []
    found = current_host().service("directory").get_many(dns, ["didmosUUID"])
    return sorted(entry.first("didmosUUID") or entry.dn for entry in found.values())


def _uuid_of(actor: Actor, dn: str) -> str | None:
    if _same_entry(dn, actor.dn):
        return actor.uuid
    entry = current_host().service("directory").get(dn, ["didmosUUID"])
    return entry.first("didmosUUID") if entry is not None else None


def _session_body(actor: Actor, session_id: str, user: str, active) -> dict:
    policy = _admin().pdp.policy()
    closed = policy.authorized_roles_of(active)
    permissions = frozenset().union(*(policy.roles[r].permissions for r in closed)) if closed else frozenset()
    return {"id": session_id, "user": _uuid_of(actor, user), "roles": sorted(active),
            "permissions": sorted(permissions)}


# -- roles -----------------------------------------------------------------------------------------------

@blueprint.route("/roles")
class Roles(MethodView):
    @blueprint.response(200, RoleSchema(many=True))
    @authorize(may("read", "Role", lambda: _container("roles")))
    def get(self):
        """Every role.

        Needs `read` on `Role`.
        """
        policy = _admin().pdp.policy()
        return [_role_body(policy.roles[name]) for name in sorted(policy.roles)]

    @blueprint.response(201, RoleSchema)
    @authorize(may("create", "Role", lambda: _container("roles")))
    @blueprint.arguments(RoleCreateSchema)
    def post(self, body):
        """AddRole.

        Needs `create` on `Role`.
        """
        _check_scope_dn(body["scope"], "scope")
        _admin().add_role(body["name"], description=body["description"], scope=body["scope"], actor=current_actor())
        return {"name": body["name"], "description": body["description"], "juniors": [], "permissions": [],
                "scope": body["scope"]}


@blueprint.route("/roles/<name>")
class RoleItem(MethodView):
    @blueprint.response(200, RoleDetailSchema)
    @authorize(may("read", "Role", _role_dn))
    def get(self, name):
        """One role with its hierarchy, permissions and users.

        Needs `read` on `Role`.
        """
        admin = _admin()
        policy = admin.pdp.policy()
        role = _known_role(policy, name)
        return {**_role_body(role), "seniors": sorted(policy.seniors_of(name)),
                "all_juniors": sorted(policy.juniors_of(name)),
                "all_permissions": sorted(policy.role_permissions(name)),
                "assigned_users": _user_ids(admin.assigned_users(name)),
                "authorized_users": _user_ids(admin.authorized_users(name))}

    @blueprint.response(204)
    @authorize(may("delete", "Role", _role_dn))
    def delete(self, name):
        """DeleteRole: also its assignments, inheritance and set memberships.

        Needs `delete` on `Role`.
        """
        _admin().delete_role(name, actor=current_actor())


@blueprint.route("/roles/<name>/permissions")
class RolePermissions(MethodView):
    @blueprint.response(201, RoleSchema)
    @authorize(may("write", "Role", _role_dn))
    @blueprint.arguments(PermissionRefSchema)
    def post(self, body, name):
        """GrantPermission.

        Needs `write` on `Role` and the permission itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, permissions=[body["permission"]])
        admin.grant_permission(body["permission"], name, actor=actor)
        role = _known_role(admin.pdp.policy(), name)
        return {**_role_body(role), "permissions": sorted(role.permissions | {body["permission"]})}


@blueprint.route("/roles/<name>/permissions/<permission>")
class RolePermission(MethodView):
    @blueprint.response(204)
    @authorize(may("write", "Role", _role_dn))
    def delete(self, name, permission):
        """RevokePermission.

        Needs `write` on `Role` and the permission itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, permissions=[permission])
        admin.revoke_permission(permission, name, actor=actor)


@blueprint.route("/roles/<name>/juniors")
class RoleJuniors(MethodView):
    @blueprint.response(201, RoleSchema)
    @authorize(may("write", "Role", _role_dn))
    @blueprint.arguments(RoleRefSchema)
    def post(self, body, name):
        """AddInheritance: the role inherits `role` (400 on a cycle, 409 if a user would break a static set).

        Needs `write` on `Role` and the junior role itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, roles=[body["role"]])
        admin.add_inheritance(name, body["role"], actor=actor)
        role = _known_role(admin.pdp.policy(), name)
        return {**_role_body(role), "juniors": sorted(role.juniors | {body["role"]})}


@blueprint.route("/roles/<name>/juniors/<junior>")
class RoleJunior(MethodView):
    @blueprint.response(204)
    @authorize(may("write", "Role", _role_dn))
    def delete(self, name, junior):
        """DeleteInheritance.

        Needs `write` on `Role` and the junior role itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, roles=[junior])
        admin.delete_inheritance(name, junior, actor=actor)


# -- permissions ---------------------------------------------------------------------------------------

@blueprint.route("/permissions")
class Permissions(MethodView):
    @blueprint.response(200, PermissionSchema(many=True))
    @authorize(may("read", "Permission", lambda: _container("permissions")))
    def get(self):
        """Every permission.

        Needs `read` on `Permission`.
        """
        policy = _admin().pdp.policy()
        descriptions = _descriptions("permissions")
        return [_permission_body(policy.permissions[name], descriptions.get(name, ""))
                for name in sorted(policy.permissions)]

    @blueprint.response(201, PermissionSchema)
    @authorize(may("create", "Permission", lambda: _container("permissions")))
    @blueprint.arguments(PermissionCreateSchema)
    def post(self, body):
        """Add a permission (400 for an unknown operation or scope).

        Needs `create` on `Permission`.
        """
        scope = Scope.parse(body["scope"])
        _check_scope_dn(scope.dn, "the subtree of scope")
        _admin().add_permission(body["name"], body["operations"], body["resource_type"], scope=body["scope"],
                                attributes=body["attributes"], description=body["description"],
                                actor=current_actor())
        permission = Permission(body["name"], frozenset(op.lower() for op in body["operations"]),
                                body["resource_type"], scope, frozenset(body["attributes"]))
        return _permission_body(permission, body["description"])


@blueprint.route("/permissions/<name>")
class PermissionItem(MethodView):
    @blueprint.response(200, PermissionDetailSchema)
    @authorize(may("read", "Permission", lambda name: _admin().pdp.dn("permissions", name)))
    def get(self, name):
        """One permission and the roles that grant it.

        Needs `read` on `Permission`.
        """
        admin = _admin()
        policy = admin.pdp.policy()
        permission = policy.permissions.get(name)
        if permission is None:
            raise NotFound(f"no permission named {name!r}")
        entry = current_host().service("directory").get(admin.pdp.dn("permissions", name), ["description"])
        return {**_permission_body(permission, (entry.first("description") if entry else None) or ""),
                "roles": sorted(policy.permission_roles(name)),
                "authorized_roles": sorted(policy.authorized_permission_roles(name))}

    @blueprint.response(204)
    @authorize(may("delete", "Permission", lambda name: _admin().pdp.dn("permissions", name)))
    def delete(self, name):
        """DeletePermission: also every role's reference to it.

        Needs `delete` on `Permission`.
        """
        _admin().delete_permission(name, actor=current_actor())


# -- separation of duty ----------------------------------------------------------------------------------

def _sod_body(sod) -> dict:
    return {"name": sod.name, "roles": sorted(sod.roles), "cardinality": sod.cardinality, "dynamic": sod.dynamic}


@blueprint.route("/sod-sets")
class SodSets(MethodView):
    @blueprint.response(200, SodSetSchema(many=True))
    @authorize(may("read", "SodSet", lambda: _container("constraints")))
    def get(self):
        """Every static and dynamic separation-of-duty set.

        Needs `read` on `SodSet`.
        """
        policy = _admin().pdp.policy()
        return [_sod_body(policy.sod_sets[name]) for name in sorted(policy.sod_sets)]

    @blueprint.response(201, SodSetSchema)
    @authorize(may("create", "SodSet", lambda: _container("constraints")))
    @blueprint.arguments(SodSetSchema)
    def post(self, body):
        """CreateSsdSet / CreateDsdSet (409 when a user already breaks a new static set).

        Needs `create` on `SodSet`.
        """
        _admin().create_sod_set(body["name"], body["roles"], body["cardinality"], dynamic=body["dynamic"],
                                actor=current_actor())
        return {**body, "roles": sorted(set(body["roles"]))}


@blueprint.route("/sod-sets/<name>")
class SodSetItem(MethodView):
    @blueprint.response(200, SodSetSchema)
    @authorize(may("read", "SodSet", lambda name: _admin().pdp.dn("constraints", name)))
    def get(self, name):
        """One separation-of-duty set.

        Needs `read` on `SodSet`.
        """
        sod = _admin().pdp.policy().sod_sets.get(name)
        if sod is None:
            raise NotFound(f"no separation-of-duty set named {name!r}")
        return _sod_body(sod)

    @blueprint.response(204)
    @authorize(may("delete", "SodSet", lambda name: _admin().pdp.dn("constraints", name)))
    def delete(self, name):
        """DeleteSsdSet / DeleteDsdSet.

        Needs `delete` on `SodSet`.
        """
        _admin().delete_sod_set(name, actor=current_actor())


# -- users -----------------------------------------------------------------------------------------------

@blueprint.route("/users/<uuid>/roles")
class UserRoles(MethodView):
    @blueprint.response(200, UserRolesSchema)
    @authorize(on_user("read", "RoleAssignment", own=True))
    def get(self, uuid):
        """AssignedRoles and AuthorizedRoles of a user.

        Needs `read` on `RoleAssignment` for the user, except for one's own.
        """
        admin = _admin()
        assigned = admin.assigned_roles(_user_dn(current_actor(), uuid))
        return {"id": uuid, "assigned": sorted(assigned),
                "authorized": sorted(admin.pdp.policy().authorized_roles_of(assigned))}

    @blueprint.response(201, UserRolesSchema)
    @authorize(on_user("write", "RoleAssignment"))
    @blueprint.arguments(RoleRefSchema)
    def post(self, body, uuid):
        """AssignUser (409 when it would break a static separation-of-duty set).

        Needs `write` on `RoleAssignment` for the user, and the role itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, roles=[body["role"]])
        dn = _user_dn(actor, uuid)
        admin.assign_user(dn, body["role"], actor=actor)
        assigned = admin.assigned_roles(dn)
        return {"id": uuid, "assigned": sorted(assigned),
                "authorized": sorted(admin.pdp.policy().authorized_roles_of(assigned))}


@blueprint.route("/users/<uuid>/roles/<role>")
class UserRole(MethodView):
    @blueprint.response(204)
    @authorize(on_user("write", "RoleAssignment"))
    def delete(self, uuid, role):
        """DeassignUser.

        Needs `write` on `RoleAssignment` for the user, and the role itself.
        """
        actor, admin = current_actor(), _admin()
        admin.require_no_escalation(actor, roles=[role])
        admin.deassign_user(_user_dn(actor, uuid), role, actor=actor)


@blueprint.route("/users/<uuid>/permissions")
class UserPermissions(MethodView):
    @blueprint.response(200, UserPermissionsSchema)
    @authorize(on_user("read", "RoleAssignment", own=True))
    def get(self, uuid):
        """UserPermissions.

        Needs `read` on `RoleAssignment` for the user, except for one's own.
        """
        return {"id": uuid, "permissions": sorted(_admin().user_permissions(_user_dn(current_actor(), uuid)))}


# -- sessions and decisions --------------------------------------------------------------------------------

@blueprint.route("/sessions")
class Sessions(MethodView):
    @blueprint.response(201, SessionSchema)
    @blueprint.arguments(SessionCreateSchema)
    def post(self, body):
        """CreateSession, with the given roles or the default ones.

        Each role must be one the user is authorized for, and dynamic separation of duty applies. For
        oneself always; for another user needs `create` on `Session` for that user.
        """
        actor, admin = current_actor(), _admin()
        uuid = body["user"] if body["user"] is not None else actor.uuid
        dn = actor.dn if _is_self(actor, uuid) else _require_on_user(actor, "create", "Session", uuid)
        session_id = admin.create_session(dn, body["roles"], actor=actor)
        return _session_body(actor, session_id, *admin.session(session_id))


@blueprint.route("/sessions/<session_id>")
class SessionItem(MethodView):
    @blueprint.response(200, SessionSchema)
    def get(self, session_id):
        """SessionRoles and SessionPermissions.

        The session's user, or `read` on `Session` for that user.
        """
        actor = current_actor()
        user, active = _require_on_session(actor, "read", session_id)
        return _session_body(actor, session_id, user, active)

    @blueprint.response(204)
    @authorize(on_session("delete"))
    def delete(self, session_id):
        """DeleteSession.

        The session's user, or `delete` on `Session` for that user.
        """
        _admin().delete_session(session_id, actor=current_actor())


@blueprint.route("/sessions/<session_id>/roles")
class SessionRoles(MethodView):
    @blueprint.response(201, SessionSchema)
    @authorize(on_session("write"))
    @blueprint.arguments(RoleRefSchema)
    def post(self, body, session_id):
        """AddActiveRole (the user must be authorized for it; dynamic separation of duty applies).

        The session's user, or `write` on `Session` for that user.
        """
        actor, admin = current_actor(), _admin()
        admin.add_active_role(session_id, body["role"], actor=actor)
        return _session_body(actor, session_id, *admin.session(session_id))


@blueprint.route("/sessions/<session_id>/roles/<role>")
class SessionRole(MethodView):
    @blueprint.response(204)
    @authorize(on_session("write"))
    def delete(self, session_id, role):
        """DropActiveRole.

        The session's user, or `write` on `Session` for that user.
        """
        _admin().drop_active_role(session_id, role, actor=current_actor())


@blueprint.route("/check-access")
class CheckAccess(MethodView):
    @blueprint.response(200, DecisionSchema)
    @blueprint.arguments(CheckAccessSchema)
    def post(self, body):
        """CheckAccess for a session, or for a user with the default active roles (without either: for the caller).

        For one's own session or oneself always; otherwise needs `read` on `Session` for the user.
        """
        actor, admin = current_actor(), _admin()
        operation, resource_type, target = body["operation"], body["resource_type"], body["target"]
        if body["session"] is not None:
            _require_on_session(actor, "read", body["session"])
            decision = admin.check_access(body["session"], operation, resource_type, target)
        else:
            uuid = body["user"]
            subject = actor
            if uuid is not None and not _is_self(actor, uuid):
                subject = Actor(dn=_require_on_user(actor, "read", "Session", uuid), uuid=uuid)
            decision = admin.pdp.decide(subject, Action(operation, resource_type, target))
        return {"allowed": decision.allowed,
                "attributes": None if decision.attributes is None else sorted(decision.attributes)}
