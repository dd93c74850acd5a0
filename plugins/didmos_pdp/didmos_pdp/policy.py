"""The compiled RBAC policy of one tenant: what every decision is made from, in memory.

The model is ANSI INCITS 359-2004 (role-based access control):

* Core RBAC: users, roles, permissions (operations on objects), user assignment (UA), permission
  assignment (PA), sessions with active roles;
* Hierarchical RBAC: a general role hierarchy; a senior role inherits every permission of its juniors
  and a user assigned to the senior is authorized for the juniors;
* Static Separation of Duty (SSD): no user may be *authorized* for ``cardinality`` or more roles of a
  set (checked on assignment and on adding inheritance);
* Dynamic Separation of Duty (DSD): no session may have ``cardinality`` or more roles of a set active.

Objects address the metadirectory: a resource type (``User``, ``Groups``, ...) with a scope (see
:class:`Scope`). A permission grants a set of operations on such an object, optionally limited to a
set of attributes.

A :class:`Policy` is immutable: it is compiled once from the directory's data (the role hierarchy
closed transitively, permissions indexed by resource type and operation) and replaced as a whole when
the policy changes, so a decision is a few dictionary lookups and never waits for a lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from didmos_host.errors import ConstraintViolation, DidmosError

#: The operations of the seeds, plus ``create``.
OPERATIONS = ("read", "write", "create", "delete", "modify-add", "modify-del", "modify-replace")
SCOPE_KINDS = ("tenant", "subtree", "self", "organization", "role")
#: A permission on this resource type applies to every resource type, those registered later included.
ANY_TYPE = "*"


class SeparationOfDutyViolation(DidmosError):
    """An assignment, inheritance or activation would break a separation-of-duty set.

    ``detail`` names the set, its roles and cardinality, and the roles that would break it.
    """

    status = 409


class PolicyError(ConstraintViolation):
    """The policy data is inconsistent (a cycle, an unknown role or permission)."""


def _dn_key(dn: str) -> tuple[str, ...]:
    """A DN as a tuple of normalised RDNs, outermost last (cheap ancestor tests on tuples)."""
    return _dn_key_cached(dn)


@lru_cache(maxsize=65536)
def _dn_key_cached(dn: str) -> tuple[str, ...]:
    import ldap.dn

    return tuple(
        "+".join(sorted(f"{attr.lower()}={value.lower()}" for attr, value, _ in rdn))
        for rdn in ldap.dn.str2dn(dn)
    )


def is_within(dn: str, ancestor: str) -> bool:
    """``dn`` is ``ancestor`` or below it."""
    inner, outer = _dn_key(dn), _dn_key(ancestor)
    return len(inner) >= len(outer) and inner[len(inner) - len(outer):] == outer


@dataclass(frozen=True)
class Scope:
    """Which entries of a resource type a permission addresses.

    ``tenant``: every entry of the tenant. ``subtree``: entries at or below ``dn``. ``self``: the
    actor's own entry. ``organization``: entries at or below the actor's organization (an
    :class:`ActorContext` field). ``role``: entries at or below the scope of the role that grants the
    permission ("secretary of department X": the role carries the subtree, the permission says
    "within my role's scope").
    """

    kind: str = "tenant"
    dn: str | None = None

    def __post_init__(self):
        if self.kind not in SCOPE_KINDS:
            raise PolicyError(f"scope kind {self.kind!r} is not one of {', '.join(SCOPE_KINDS)}")
        if (self.kind == "subtree") != (self.dn is not None):
            raise PolicyError("a subtree scope needs a DN, and only a subtree scope has one")
        if self.dn is not None:
            import ldap.dn

            if not ldap.dn.is_dn(self.dn):  # else every decision that reaches it would fail
                raise PolicyError(f"scope subtree:{self.dn} does not name a valid DN")

    @classmethod
    def parse(cls, text: str) -> Scope:
        """``tenant``, ``self``, ``organization``, ``role`` or ``subtree:<dn>``."""
        kind, _, dn = text.partition(":")
        return cls(kind.strip(), dn.strip() or None)

    def __str__(self) -> str:
        return f"subtree:{self.dn}" if self.kind == "subtree" else self.kind


@dataclass(frozen=True)
class Permission:
    """Operations on an object (resource type + scope), optionally limited to some attributes.

    ``attributes`` empty means every attribute. The standard's permission is one (operation, object)
    pair; a record here groups several operations on one object, and the review functions expand them.
    """

    name: str
    operations: frozenset[str]
    resource_type: str
    scope: Scope = Scope()
    attributes: frozenset[str] = frozenset()

    def __post_init__(self):
        unknown = set(self.operations) - set(OPERATIONS)
        if unknown:
            raise PolicyError(f"permission {self.name!r}: unknown operations {sorted(unknown)}; "
                              f"known: {', '.join(OPERATIONS)}")


@dataclass(frozen=True)
class Role:
    """A role: its juniors (it inherits their permissions), its permissions, and an optional scope DN."""

    name: str
    juniors: frozenset[str] = frozenset()
    permissions: frozenset[str] = frozenset()
    scope: str | None = None
    description: str = ""


@dataclass(frozen=True)
class SodSet:
    """A separation-of-duty set: ``cardinality`` or more of ``roles`` together are not allowed."""

    name: str
    roles: frozenset[str]
    cardinality: int
    dynamic: bool = False

    def __post_init__(self):
        if self.cardinality < 2 or self.cardinality > max(len(self.roles), 2):
            raise PolicyError(f"separation-of-duty set {self.name!r}: cardinality must be between 2 and "
                              f"the number of its roles ({len(self.roles)}), got {self.cardinality}")


@dataclass(frozen=True)
class ActorContext:
    """What scope checks need to know about the actor besides its roles."""

    dn: str
    organization: str | None = None


@dataclass(frozen=True)
class Grant:
    """One permission as it applies through one active role (the role matters for ``role`` scopes)."""

    permission: Permission
    role: Role

    def covers(self, target: str | None, actor: ActorContext) -> bool:
        scope = self.permission.scope
        if scope.kind == "tenant":
            return True
        if target is None:
            return False
        if scope.kind == "subtree":
            return is_within(target, scope.dn)
        if scope.kind == "self":
            return _dn_key(target) == _dn_key(actor.dn)
        if scope.kind == "organization":
            return actor.organization is not None and is_within(target, actor.organization)
        return self.role.scope is not None and is_within(target, self.role.scope)  # "role"


@dataclass(frozen=True)
class Decision:
    """The answer of :meth:`Policy.check_access`; ``attributes`` is ``None`` for "all of them"."""

    allowed: bool
    attributes: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return self.allowed


DENY = Decision(False, frozenset())


@dataclass
class Policy:
    """One tenant's roles, permissions and separation-of-duty sets, compiled for decisions."""

    roles: Mapping[str, Role]
    permissions: Mapping[str, Permission]
    sod_sets: Mapping[str, SodSet] = field(default_factory=dict)
    revision: str = ""

    def __post_init__(self):
        for role in self.roles.values():
            missing = (role.juniors - self.roles.keys()) | (role.permissions - self.permissions.keys())
            if missing:
                raise PolicyError(f"role {role.name!r} refers to unknown roles or permissions: {sorted(missing)}")
        for sod in self.sod_sets.values():
            if sod.roles - self.roles.keys():
                raise PolicyError(f"separation-of-duty set {sod.name!r} names unknown roles: "
                                  f"{sorted(sod.roles - self.roles.keys())}")
        self._closure = {name: self._close(name) for name in self.roles}
        self._seniors: dict[str, set[str]] = {name: set() for name in self.roles}
        for name, closed in self._closure.items():
            for junior in closed:
                self._seniors[junior].add(name)
        # (role, resource type, operation) -> grants of that role, inherited ones included
        index: dict[tuple[str, str, str], list[Grant]] = {}
        for name, closed in self._closure.items():
            role = self.roles[name]
            for source in closed:
                for permission_name in self.roles[source].permissions:
                    permission = self.permissions[permission_name]
                    for operation in permission.operations:
                        index.setdefault((name, permission.resource_type, operation), []).append(
                            Grant(permission, role))
        self._index = {key: tuple(grants) for key, grants in index.items()}
        self._effective: dict[frozenset[str], frozenset[str]] = {}
        self._activation: dict[frozenset[str], tuple[str, ...]] = {}
        self._plans: dict[tuple[tuple[str, ...], str], tuple] = {}

    def _close(self, name: str) -> frozenset[str]:
        """The role and every role below it; a cycle in the hierarchy is an error."""
        seen: set[str] = set()
        stack: list[tuple[str, tuple[str, ...]]] = [(name, (name,))]
        while stack:
            current, path = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            for junior in self.roles[current].juniors:
                if junior in path:
                    raise PolicyError(f"the role hierarchy has a cycle: {' > '.join((*path, junior))}")
                stack.append((junior, (*path, junior)))
        return frozenset(seen)

    # -- decisions -----------------------------------------------------------------------------

    def check_access(self, active_roles: Iterable[str], operation: str, resource_type: str,
                     target: str | None, actor: ActorContext) -> Decision:
        """CheckAccess: may a session with ``active_roles`` perform ``operation`` on the object?

        ``target`` is the entry's DN (for ``create``: the parent it goes under). The decision also
        says which attributes the operation may touch (``None``: all).
        """
        attributes: set[str] = set()
        allowed = False
        index = self._index
        for role in active_roles:
            for grant in (*index.get((role, resource_type, operation), ()), *index.get((role, ANY_TYPE, operation), ())):
                if grant.covers(target, actor):
                    if not grant.permission.attributes:
                        return Decision(True, None)
                    allowed = True
                    attributes |= grant.permission.attributes
        return Decision(True, frozenset(attributes)) if allowed else DENY

    def grants(self, active_roles: Iterable[str], operation: str, resource_type: str) -> tuple[Grant, ...]:
        """Every grant of ``operation`` on ``resource_type`` through the active roles (for list filters)."""
        index = self._index
        return tuple(grant for role in active_roles
                     for key in ((role, resource_type, operation), (role, ANY_TYPE, operation))
                     for grant in index.get(key, ()))

    def operations_on(self, active_roles: Iterable[str], resource_type: str, target: str | None,
                      actor: ActorContext) -> dict[str, frozenset[str] | None]:
        """Every operation allowed on one object, each with its attributes (the seeds' ``operations``).

        Same answer as :meth:`check_access` for each operation, but grants are grouped by scope so that
        each distinct scope is evaluated once per object: a list computes this for every entry of a page.
        """
        result: dict[str, frozenset[str] | None] = {}
        for probe, granted in self._operation_plan(tuple(active_roles), resource_type):
            if not probe.covers(target, actor):
                continue
            for operation, attributes in granted:
                if operation in result:
                    current = result[operation]
                    result[operation] = None if current is None or attributes is None else current | attributes
                else:
                    result[operation] = attributes
        return {operation: result[operation] for operation in OPERATIONS if operation in result}

    def _operation_plan(self, roles: tuple[str, ...], resource_type: str):
        """Per distinct scope: one grant to test it with, and what it grants ((operation, attributes), ...)."""
        key = (roles, resource_type)
        plan = self._plans.get(key)
        if plan is None:
            groups: dict[tuple, tuple[Grant, dict[str, frozenset[str] | None]]] = {}
            for operation in OPERATIONS:
                for grant in self.grants(roles, operation, resource_type):
                    scope = grant.permission.scope
                    where = (scope, grant.role.scope if scope.kind == "role" else None)
                    probe, granted = groups.setdefault(where, (grant, {}))
                    attributes = grant.permission.attributes or None
                    if operation in granted:
                        current = granted[operation]
                        attributes = None if current is None or attributes is None else current | attributes
                    granted[operation] = attributes
            plan = tuple((probe, tuple(granted.items())) for probe, granted in groups.values())
            if len(self._plans) < 10000:
                self._plans[key] = plan
        return plan

    # -- hierarchy and separation of duty ----------------------------------------------------

    def authorized_roles_of(self, assigned: Iterable[str]) -> frozenset[str]:
        """AuthorizedRoles for a user assigned to ``assigned``: those roles and all below them."""
        key = frozenset(assigned)
        found = self._effective.get(key)
        if found is None:
            unknown = key - self.roles.keys()
            found = frozenset().union(*(self._closure[r] for r in key - unknown)) if key - unknown else frozenset()
            if len(self._effective) < 10000:  # bounded: users share few distinct role sets
                self._effective[key] = found
        return found

    def check_ssd(self, assigned: Iterable[str]) -> None:
        """Raise :class:`SeparationOfDutyViolation` if these assignments break a static set."""
        authorized = self.authorized_roles_of(assigned)
        for sod in self.sod_sets.values():
            if not sod.dynamic:
                clash = sod.roles & authorized
                if len(clash) >= sod.cardinality:
                    raise _violation(sod, clash, "assigned (directly or by inheritance)")

    def check_dsd(self, active: Iterable[str]) -> None:
        """Raise :class:`SeparationOfDutyViolation` if these active roles break a dynamic set."""
        authorized = self.authorized_roles_of(active)
        for sod in self.sod_sets.values():
            if sod.dynamic:
                clash = sod.roles & authorized
                if len(clash) >= sod.cardinality:
                    raise _violation(sod, clash, "active in one session")

    def default_active_roles(self, assigned: Iterable[str]) -> tuple[str, ...]:
        """The roles an implicit session (an API request) activates: every assigned role, in name order,
        skipping those that would break a dynamic separation-of-duty set."""
        key = assigned if isinstance(assigned, frozenset) else frozenset(assigned)
        found = self._activation.get(key)
        if found is not None:
            return found
        active: list[str] = []
        for role in sorted(key & self.roles.keys()):
            try:
                self.check_dsd([*active, role])
            except SeparationOfDutyViolation:
                continue
            active.append(role)
        found = tuple(active)
        if len(self._activation) < 10000:  # bounded, like _effective: users share few role sets
            self._activation[key] = found
        return found

    def with_changes(self, *, roles: Mapping[str, Role] | None = None,
                     permissions: Mapping[str, Permission] | None = None,
                     sod_sets: Mapping[str, SodSet] | None = None) -> Policy:
        """A new policy with some parts replaced (used to validate a change before it is written)."""
        return Policy(roles if roles is not None else self.roles,
                      permissions if permissions is not None else self.permissions,
                      sod_sets if sod_sets is not None else self.sod_sets, self.revision)

    # -- review functions ----------------------------------------------------------------------

    def juniors_of(self, role: str) -> frozenset[str]:
        return self._closure[self._known(role)] - {role}

    def seniors_of(self, role: str) -> frozenset[str]:
        return frozenset(self._seniors[self._known(role)] - {role})

    def role_permissions(self, role: str, *, inherited: bool = True) -> frozenset[str]:
        """RolePermissions: the permissions a role grants (with those of its juniors)."""
        sources = self._closure[self._known(role)] if inherited else {role}
        return frozenset().union(*(self.roles[r].permissions for r in sources))

    def permission_roles(self, permission: str) -> frozenset[str]:
        """Roles that are assigned ``permission`` directly."""
        return frozenset(name for name, role in self.roles.items() if permission in role.permissions)

    def authorized_permission_roles(self, permission: str) -> frozenset[str]:
        """Roles that grant ``permission``, directly or through a junior."""
        return frozenset().union(*(self._seniors[r] for r in self.permission_roles(permission)))

    def _known(self, role: str) -> str:
        if role not in self.roles:
            raise PolicyError(f"no role named {role!r}")
        return role


def _violation(sod: SodSet, clash: frozenset[str], how: str) -> SeparationOfDutyViolation:
    kind = "dynamic" if sod.dynamic else "static"
    return SeparationOfDutyViolation(
        f"{kind} separation of duty {sod.name!r} forbids {sod.cardinality} or more of "
        f"{sorted(sod.roles)} {how}; these would be: {sorted(clash)}",
        detail={"set": sod.name, "kind": kind, "roles": sorted(sod.roles), "cardinality": sod.cardinality,
                "violating": sorted(clash)},
    )
