"""The standard's administrative, system and review functions, on the directory.

Every change is validated against the compiled policy *before* it is written (cycles, unknown names,
static and dynamic separation of duty), written in one LDAP operation where the standard's function is
one change, and followed by :meth:`PolicyDecisionPoint.invalidate` so this process decides with it at
once (other processes within ``pdp.refresh_seconds``).

Who may call these is decided by the caller (the REST API) with :meth:`RbacAdmin.require`: each
function needs an operation on one of the administrative resource types ``Role``, ``Permission``,
``SodSet``, ``RoleAssignment`` and ``Session``; and nobody can hand out more than they have
(:meth:`RbacAdmin.require_no_escalation`).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from collections.abc import Iterable

import ldap

from didmos_host.errors import AlreadyExists, Forbidden, NotFound
from didmos_host.records import Action, Actor
from didmos_pdp.pdp import PolicyDecisionPoint, rdn_value
from didmos_pdp.policy import ANY_TYPE, OPERATIONS, ActorContext, Decision, Permission, PolicyError, Role, Scope, SodSet

ADMIN_TYPES = ("Role", "Permission", "SodSet", "RoleAssignment", "Session")


class RbacAdmin:
    """ANSI INCITS 359 functions for one tenant, as the ``actor`` who asks (interceptors see it)."""

    def __init__(self, pdp: PolicyDecisionPoint):
        self.pdp = pdp
        self.host = pdp.host

    @property
    def directory(self):
        return self.pdp.directory

    def _eq(self, attr, value):
        from didmos_ldap.filters import eq

        return eq(attr, value)

    # -- who may ---------------------------------------------------------------------------------

    def require(self, actor: Actor | None, operation: str, resource_type: str, target: str | None = None) -> Decision:
        """The actor's decision for an administrative action; :class:`Forbidden` naming it when denied."""
        action = Action(operation, resource_type, target)
        if actor is None or not self.host.authorize(actor, action):
            raise Forbidden(f"not allowed to {operation} {resource_type}" + (f" {target}" if target else ""))
        return self.pdp.decide(actor, action)

    def require_no_escalation(self, actor: Actor, roles: Iterable[str] = (), permissions: Iterable[str] = ()) -> None:
        """Refuse to hand out roles or permissions the actor does not have itself.

        An actor with every operation on every resource type of the tenant (``superadmin``) has
        everything. Anyone else may pass on only roles it is authorized for and permissions its own
        roles grant.
        """
        policy = self.pdp.policy()
        subject = self.pdp.subject(actor)
        authorized = policy.authorized_roles_of(subject.assigned)
        if all(policy.check_access(authorized, op, ANY_TYPE, None, subject.context).attributes is None
               for op in OPERATIONS):
            return
        held_permissions = frozenset().union(*(policy.roles[r].permissions for r in authorized)) if authorized else frozenset()
        missing_roles = set(roles) - authorized
        missing_permissions = set(permissions) - held_permissions
        if missing_roles or missing_permissions:
            raise Forbidden("nobody can hand out what they do not have themselves: "
                            + "; ".join(filter(None, [missing_roles and f"roles {sorted(missing_roles)}",
                                                      missing_permissions and f"permissions {sorted(missing_permissions)}"])))

    # -- helpers -----------------------------------------------------------------------------------

    def _role(self, name: str) -> Role:
        role = self.pdp.policy().roles.get(name)
        if role is None:
            raise NotFound(f"no role named {name!r}")
        return role

    def _permission(self, name: str) -> Permission:
        permission = self.pdp.policy().permissions.get(name)
        if permission is None:
            raise NotFound(f"no permission named {name!r}")
        return permission

    def _changed(self) -> None:
        self.pdp.invalidate()

    def user_dn(self, uuid: str) -> str:
        """The DN of the user whose didmosUUID is ``uuid`` in this tenant."""
        entry = self.directory.get_by_uuid(uuid, self.host.settings.ldap.base_dn, ["1.1"])
        if entry is None:
            raise NotFound(f"no user with id {uuid!r}")
        return entry.dn

    def assigned_roles(self, user_dn: str) -> frozenset[str]:
        """AssignedRoles: the roles assigned to the user directly."""
        return self._assignments(user_dn)[0]

    def _assignments(self, user_dn: str) -> tuple[frozenset[str], str]:
        """The user's assigned roles and the entry's version (entryCSN), read together."""
        entry = self.directory.get(user_dn, ["didmosRoleAssignment", "entryCSN"])
        if entry is None:
            raise NotFound(f"no entry {user_dn}")
        return frozenset(rdn_value(dn) for dn in entry.values("didmosRoleAssignment")), entry.first("entryCSN")

    def _users_holding(self, roles: Iterable[str]) -> list[str]:
        from didmos_ldap.filters import any_of

        roles = list(roles)
        if not roles:
            return []
        condition = any_of(*(self._eq("didmosRoleAssignment", self.pdp.dn("roles", r)) for r in roles))
        return [e.dn for e in self.directory.iter_search(self.host.settings.ldap.base_dn, condition, attrs=["1.1"])]

    # -- administrative functions -------------------------------------------------------------------

    def add_role(self, name: str, *, description: str = "", scope: str | None = None, actor: Actor | None = None) -> None:
        if name in self.pdp.policy().roles:
            raise AlreadyExists(f"a role named {name!r} exists already")
        attrs = {"objectClass": ["didmosRole"], "cn": [name]}
        if description:
            attrs["description"] = [description]
        if scope:
            attrs["didmosRoleScope"] = [scope]
        self.directory.add(self.pdp.dn("roles", name), attrs, actor=actor)
        self._changed()

    def delete_role(self, name: str, *, actor: Actor | None = None) -> None:
        """DeleteRole: the role and (through refint) its assignments, inheritance and set memberships."""
        self._role(name)
        self.directory.delete(self.pdp.dn("roles", name), actor=actor)
        self._changed()

    def add_permission(self, name: str, operations: Iterable[str], resource_type: str, *, scope: str = "tenant",
                       attributes: Iterable[str] = (), description: str = "", actor: Actor | None = None) -> None:
        permission = Permission(name, frozenset(op.lower() for op in operations), resource_type, Scope.parse(scope),
                                frozenset(attributes))  # validates operations and scope
        if name in self.pdp.policy().permissions:
            raise AlreadyExists(f"a permission named {name!r} exists already")
        attrs = {"objectClass": ["didmosPermission"], "cn": [name], "didmosOperation": sorted(permission.operations),
                 "didmosResourceType": [resource_type], "didmosObjectScope": [str(permission.scope)]}
        if permission.attributes:
            attrs["didmosAttributeName"] = sorted(permission.attributes)
        if description:
            attrs["description"] = [description]
        self.directory.add(self.pdp.dn("permissions", name), attrs, actor=actor)
        self._changed()

    def delete_permission(self, name: str, *, actor: Actor | None = None) -> None:
        self._permission(name)
        self.directory.delete(self.pdp.dn("permissions", name), actor=actor)
        self._changed()

    def grant_permission(self, permission: str, role: str, *, actor: Actor | None = None) -> None:
        """GrantPermission: PA of ``permission`` to ``role``."""
        self._permission(permission)
        self._role(role)
        self.directory.modify(self.pdp.dn("roles", role),
                              [(ldap.MOD_ADD, "didmosPermissionRef", [self.pdp.dn("permissions", permission)])],
                              permissive=True, actor=actor)
        self._changed()

    def revoke_permission(self, permission: str, role: str, *, actor: Actor | None = None) -> None:
        if permission not in self._role(role).permissions:
            raise NotFound(f"role {role!r} does not have permission {permission!r}")
        self.directory.modify(self.pdp.dn("roles", role),
                              [(ldap.MOD_DELETE, "didmosPermissionRef", [self.pdp.dn("permissions", permission)])],
                              actor=actor)
        self._changed()

    def assign_user(self, user_dn: str, role: str, *, actor: Actor | None = None) -> None:
        """AssignUser, refused with 409 when the user would break a static separation-of-duty set."""
        self._role(role)
        assigned, version = self._assignments(user_dn)
        if role in assigned:
            raise AlreadyExists(f"role {role!r} is assigned to {user_dn} already")
        self.pdp.policy().check_ssd(assigned | {role})
        # Checked against what was read: a concurrent assignment makes this one fail (412) instead of
        # slipping past the separation-of-duty check.
        self.directory.modify(user_dn, [(ldap.MOD_ADD, "objectClass", ["didmosRoleHolder"]),
                                        (ldap.MOD_ADD, "didmosRoleAssignment", [self.pdp.dn("roles", role)])],
                              permissive=True, if_match=str(self._eq("entryCSN", version)), actor=actor)

    def deassign_user(self, user_dn: str, role: str, *, actor: Actor | None = None) -> None:
        """DeassignUser: and, as the standard says, the role leaves the user's sessions too."""
        if role not in self.assigned_roles(user_dn):
            raise NotFound(f"role {role!r} is not assigned to {user_dn}")
        self.directory.modify(user_dn, [(ldap.MOD_DELETE, "didmosRoleAssignment", [self.pdp.dn("roles", role)])],
                              actor=actor)
        role_dn = self.pdp.dn("roles", role)
        sessions = self.directory.search(f"ou=sessions,{self.pdp.rbac_dn}",
                                         self._eq("didmosSessionUser", user_dn) & self._eq("didmosActiveRole", role_dn),
                                         attrs=["1.1"])
        for session in sessions:
            self.directory.modify(session.dn, [(ldap.MOD_DELETE, "didmosActiveRole", [role_dn])],
                                  permissive=True, actor=actor)

    def add_inheritance(self, senior: str, junior: str, *, actor: Actor | None = None) -> None:
        """AddInheritance: ``senior`` inherits ``junior``. Refused on a cycle and when a user authorized
        for ``senior`` would then break a static separation-of-duty set."""
        policy = self.pdp.policy()
        role = self._role(senior)
        self._role(junior)
        changed = policy.with_changes(roles={**policy.roles, senior: Role(
            role.name, role.juniors | {junior}, role.permissions, role.scope, role.description)})
        for user in self._users_holding(changed.seniors_of(senior) | {senior}):
            changed.check_ssd(self.assigned_roles(user))
        self.directory.modify(self.pdp.dn("roles", senior),
                              [(ldap.MOD_ADD, "didmosRoleJunior", [self.pdp.dn("roles", junior)])],
                              permissive=True, actor=actor)
        self._changed()

    def delete_inheritance(self, senior: str, junior: str, *, actor: Actor | None = None) -> None:
        if junior not in self._role(senior).juniors:
            raise NotFound(f"role {senior!r} does not inherit {junior!r}")
        self.directory.modify(self.pdp.dn("roles", senior),
                              [(ldap.MOD_DELETE, "didmosRoleJunior", [self.pdp.dn("roles", junior)])], actor=actor)
        self._changed()

    def create_sod_set(self, name: str, roles: Iterable[str], cardinality: int, *, dynamic: bool = False,
                       actor: Actor | None = None) -> None:
        """CreateSsdSet / CreateDsdSet. A static set is refused while a user already breaks it."""
        policy = self.pdp.policy()
        roles = frozenset(roles)
        for role in roles:
            self._role(role)
        if name in policy.sod_sets:
            raise AlreadyExists(f"a separation-of-duty set named {name!r} exists already")
        sod = SodSet(name, roles, cardinality, dynamic)
        if not dynamic:
            changed = policy.with_changes(sod_sets={**policy.sod_sets, name: sod})
            affected = frozenset().union(*(changed.seniors_of(r) | {r} for r in roles))
            for user in self._users_holding(affected):
                changed.check_ssd(self.assigned_roles(user))
        self.directory.add(self.pdp.dn("constraints", name), {
            "objectClass": ["didmosSodSet"], "cn": [name], "didmosRoleRef": [self.pdp.dn("roles", r) for r in sorted(roles)],
            "didmosCardinality": [cardinality], "didmosSodDynamic": [dynamic]}, actor=actor)
        self._changed()

    def delete_sod_set(self, name: str, *, actor: Actor | None = None) -> None:
        if name not in self.pdp.policy().sod_sets:
            raise NotFound(f"no separation-of-duty set named {name!r}")
        self.directory.delete(self.pdp.dn("constraints", name), actor=actor)
        self._changed()

    # -- system functions ------------------------------------------------------------------------------

    def create_session(self, user_dn: str, roles: Iterable[str] | None = None, *, actor: Actor | None = None) -> str:
        """CreateSession: a session of ``user_dn`` with ``roles`` active (default: every assigned role
        that dynamic separation of duty allows). Each role must be one the user is authorized for."""
        policy = self.pdp.policy()
        assigned = self.assigned_roles(user_dn)
        if roles is None:
            active = policy.default_active_roles(assigned)
        else:
            active = tuple(sorted(set(roles)))
            self._require_authorized(policy, assigned, active, user_dn)
            policy.check_dsd(active)
        session = secrets.token_urlsafe(18)
        attrs = {"objectClass": ["didmosSession"], "cn": [session], "didmosSessionUser": [user_dn]}
        if active:
            attrs["didmosActiveRole"] = [self.pdp.dn("roles", r) for r in active]
        self.directory.add(self.pdp.dn("sessions", session), attrs, actor=actor)
        return session

    def _require_authorized(self, policy, assigned, roles, user_dn) -> None:
        unauthorized = set(roles) - policy.authorized_roles_of(assigned)
        if unauthorized:
            raise Forbidden(f"{user_dn} is not authorized for roles {sorted(unauthorized)}")

    def session(self, session: str) -> tuple[str, frozenset[str]]:
        """The user and the active roles of a session (SessionRoles).

        A session ends when it is older than ``pdp.session_lifetime_seconds`` or its user is gone or
        deactivated (``didmosActive`` FALSE): it is deleted then, and is no longer found.
        """
        dn = self.pdp.dn("sessions", session)
        entry = self.directory.get(dn, ["didmosSessionUser", "didmosActiveRole", "createTimestamp"])
        if entry is None:
            raise NotFound(f"no session {session!r}")
        user_dn = entry.first("didmosSessionUser")
        ended = None
        created = entry.first("createTimestamp")
        lifetime = self.pdp.host.settings.pdp.session_lifetime_seconds
        if created and _age(created) > lifetime:
            ended = f"session {session!r} expired (older than {lifetime} s)"
        else:
            user = self.directory.get(user_dn, ["didmosActive"])
            if user is None or (user.first("didmosActive") or "TRUE").upper() == "FALSE":
                ended = f"session {session!r} ended: its user is gone or deactivated"
        if ended:
            try:
                self.directory.delete(dn)
            except NotFound:
                pass  # another request ended it at the same time
            raise NotFound(ended)
        return user_dn, frozenset(rdn_value(dn) for dn in entry.values("didmosActiveRole"))

    def delete_session(self, session: str, *, actor: Actor | None = None) -> None:
        self.session(session)
        self.directory.delete(self.pdp.dn("sessions", session), actor=actor)

    def add_active_role(self, session: str, role: str, *, actor: Actor | None = None) -> None:
        """AddActiveRole: the user must be authorized for the role, and DSD must allow it."""
        user, active = self.session(session)
        policy = self.pdp.policy()
        self._role(role)
        if role in active:
            raise AlreadyExists(f"role {role!r} is active in session {session!r} already")
        self._require_authorized(policy, self.assigned_roles(user), [role], user)
        policy.check_dsd(active | {role})
        self.directory.modify(self.pdp.dn("sessions", session),
                              [(ldap.MOD_ADD, "didmosActiveRole", [self.pdp.dn("roles", role)])], actor=actor)

    def drop_active_role(self, session: str, role: str, *, actor: Actor | None = None) -> None:
        _, active = self.session(session)
        if role not in active:
            raise NotFound(f"role {role!r} is not active in session {session!r}")
        self.directory.modify(self.pdp.dn("sessions", session),
                              [(ldap.MOD_DELETE, "didmosActiveRole", [self.pdp.dn("roles", role)])], actor=actor)

    def check_access(self, session: str, operation: str, resource_type: str, target: str | None) -> Decision:
        """CheckAccess for an explicit session."""
        user, active = self.session(session)
        return self.pdp.policy().check_access(active, operation, resource_type, target, ActorContext(user))

    # -- review functions --------------------------------------------------------------------------------

    def assigned_users(self, role: str) -> list[str]:
        """AssignedUsers: DNs of the users the role is assigned to directly."""
        self._role(role)
        return self._users_holding([role])

    def authorized_users(self, role: str) -> list[str]:
        """AuthorizedUsers: users assigned to the role or to any role senior to it."""
        self._role(role)
        return self._users_holding(self.pdp.policy().seniors_of(role) | {role})

    def authorized_roles(self, user_dn: str) -> frozenset[str]:
        return self.pdp.policy().authorized_roles_of(self.assigned_roles(user_dn))

    def user_permissions(self, user_dn: str) -> frozenset[str]:
        """UserPermissions: every permission of every role the user is authorized for."""
        policy = self.pdp.policy()
        return frozenset().union(*(policy.roles[r].permissions for r in self.authorized_roles(user_dn)))

    def session_permissions(self, session: str) -> frozenset[str]:
        _, active = self.session(session)
        policy = self.pdp.policy()
        closed = policy.authorized_roles_of(active)
        return frozenset().union(*(policy.roles[r].permissions for r in closed)) if closed else frozenset()


def _age(generalized_time: str) -> float:
    """Seconds since an LDAP GeneralizedTime such as ``20261123133802Z``."""
    stamp = datetime.strptime(generalized_time[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - stamp).total_seconds()


__all__ = ["ADMIN_TYPES", "PolicyError", "RbacAdmin"]
