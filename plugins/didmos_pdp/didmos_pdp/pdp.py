"""The policy decision point: the tenant's RBAC data read from the directory, compiled, kept fresh.

Layout below ``pdp.rbac_dn`` (default ``ou=rbac,ou=default-tenant,dc=didmos,dc=de``)::

    ou=roles          cn=<role>        didmosRole: didmosRoleJunior, didmosPermissionRef, didmosRoleScope
    ou=permissions    cn=<permission>  didmosPermission: didmosOperation, didmosResourceType,
                                       didmosObjectScope, didmosAttributeName
    ou=constraints    cn=<set>         didmosSodSet: didmosRoleRef, didmosCardinality, didmosSodDynamic
    ou=sessions       cn=<id>          didmosSession: didmosSessionUser, didmosActiveRole

Users carry their assignments (UA) as ``didmosRoleAssignment`` (DNs of roles), so "the roles of a user"
is one attribute of the entry the request reads anyway, and "the users of a role" is an indexed search.

Freshness: the compiled policy is checked against the directory at most every
``pdp.refresh_seconds`` (one search of the entries' ``entryCSN`` below ``pdp.rbac_dn``); a change made
on any node, or directly in LDAP, is in effect after at most that long. Changes made through this
process take effect at once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, replace

import ldap.dn

from didmos_host.records import Action, Actor
from didmos_pdp.policy import ActorContext, Decision, Permission, Policy, PolicyError, Role, Scope, SodSet

log = logging.getLogger("didmos.pdp")

ROLE, PERMISSION, SOD = "didmosRole", "didmosPermission", "didmosSodSet"
_RBAC_ATTRS = ["objectClass", "cn", "description", "didmosRoleJunior", "didmosPermissionRef", "didmosRoleScope",
               "didmosOperation", "didmosResourceType", "didmosObjectScope", "didmosAttributeName",
               "didmosRoleRef", "didmosCardinality", "didmosSodDynamic", "entryCSN"]


def rdn_value(dn: str) -> str:
    """The value of a DN's first RDN: a role's, permission's or set's name."""
    return ldap.dn.str2dn(dn)[0][0][1]


@dataclass(frozen=True)
class Subject:
    """Who a decision is for: the actor's entry DN, its assigned roles, and scope context."""

    context: ActorContext
    assigned: frozenset[str]


class PolicyDecisionPoint:
    """Decisions for one tenant, from a compiled :class:`Policy` refreshed within a bounded time."""

    def __init__(self, host):
        self.host = host
        cfg = host.settings.pdp
        self.rbac_dn = cfg.rbac_dn
        self.refresh_seconds = float(cfg.refresh_seconds)
        self._policy: Policy | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    @property
    def directory(self):
        return self.host.service("directory")

    def dn(self, kind: str, name: str) -> str:
        """The DN of a role (``roles``), permission (``permissions``) or set (``constraints``)."""
        return f"cn={ldap.dn.escape_dn_chars(name)},ou={kind},{self.rbac_dn}"

    # -- the compiled policy ---------------------------------------------------------------------

    def policy(self) -> Policy:
        """The current policy, re-read when the directory's copy changed (checked at most every
        ``refresh_seconds``; one thread checks while the others keep deciding with the current one)."""
        policy = self._policy
        if policy is not None and time.monotonic() - self._checked < self.refresh_seconds:
            return policy
        if policy is not None and not self._lock.acquire(blocking=False):
            return policy
        if policy is None:
            self._lock.acquire()
        try:
            if self._policy is None or time.monotonic() - self._checked >= self.refresh_seconds:
                self._refresh()
            return self._policy
        finally:
            self._lock.release()

    def invalidate(self) -> None:
        """Re-read the policy before the next decision (after a change made through this process)."""
        self._checked = 0.0

    def _refresh(self) -> None:
        rbac = f"(|(objectClass={ROLE})(objectClass={PERMISSION})(objectClass={SOD}))"
        # The check reads only the versions; the whole policy is read again only when one changed.
        versions = self.directory.search(self.rbac_dn, rbac, attrs=["entryCSN"])
        revision = hashlib.sha256("".join(sorted(f"{e.dn}\0{e.first('entryCSN')}" for e in versions)).encode()).hexdigest()
        if self._policy is None or revision != self._policy.revision:
            entries = self.directory.search(self.rbac_dn, rbac, attrs=_RBAC_ATTRS)
            try:
                self._policy = compile_policy(entries, revision)
            except PolicyError:
                if self._policy is None:
                    raise
                # Keep deciding with the last good policy rather than deny everything; say why.
                log.exception("the RBAC policy below %s is inconsistent; still using the previous one", self.rbac_dn)
        self._checked = time.monotonic()

    # -- decisions ---------------------------------------------------------------------------------

    def new_entry_attributes(self, resource_type: str) -> dict[str, list[str]]:
        """What a new entry of ``resource_type`` gets from the PDP: users their ``pdp.new_user_roles``."""
        roles = self.host.settings.pdp.new_user_roles if resource_type == "User" else []
        if not roles:
            return {}
        return {"objectClass": ["didmosRoleHolder"], "didmosRoleAssignment": [self.dn("roles", r) for r in roles]}

    def role_summary(self, assignments) -> tuple[list[str], bool]:
        """For an entry's ``didmosRoleAssignment`` DNs: its authorized roles (assigned and inherited,
        sorted) and whether any of them grants more than the holder's own entry (the LUI extension's
        ``roles`` and ``adminAccess``)."""
        policy = self.policy()
        roles = sorted(policy.authorized_roles_of(rdn_value(dn) for dn in assignments))
        admin = any(policy.permissions[name].scope.kind != "self"
                    for role in roles for name in policy.roles[role].permissions if name in policy.permissions)
        return roles, admin

    def subject(self, actor: Actor) -> Subject:
        """The actor's assigned roles, read from its entry (from the entry cache when enabled)."""
        entry = self.directory.get(actor.dn, ["didmosRoleAssignment"])
        assigned = frozenset(rdn_value(dn) for dn in (entry.values("didmosRoleAssignment") if entry else ()))
        return Subject(ActorContext(actor.dn, self.organization_of(actor.dn)), assigned)

    def organization_of(self, dn: str) -> str | None:
        """The organization an entry belongs to: the one it is stored under (``ldap.organizations_dn``
        holds the organizations; their users are created below them, e.g. with the LUI mount's
        ``POST /User/<organization DN>/``). No directory read: it is in the DN."""
        container = self.host.settings.get("ldap.organizations_dn")
        if not container:
            return None
        try:
            rdns, base = ldap.dn.str2dn(dn), ldap.dn.str2dn(container)
        except ldap.DECODING_ERROR:
            return None

        def folded(part):
            return [[(attr.lower(), value.lower()) for attr, value, _ in rdn] for rdn in part]

        # an organization's users are at least two levels below the container: org RDN, user RDN
        if len(rdns) <= len(base) + 1 or folded(rdns[-len(base):]) != folded(base):
            return None
        return ldap.dn.dn2str(rdns[-len(base) - 1:])

    def active_roles(self, subject: Subject) -> tuple[str, ...]:
        """The roles of an implicit session (one API request): every assigned role DSD allows."""
        return self.policy().default_active_roles(subject.assigned)

    def decide(self, actor: Actor | None, action: Action, subject: Subject | None = None) -> Decision:
        """CheckAccess for one action of an implicit session. Anonymous actors have no roles."""
        policy = self.policy()
        if actor is None:
            return Decision(False, frozenset())
        subject = subject or self.subject(actor)
        return policy.check_access(policy.default_active_roles(subject.assigned), action.operation,
                                   action.resource_type or "", action.target, subject.context)

    def read_filter(self, actor: Actor | None, resource_type: str, subject: Subject | None = None):
        """Which entries of ``resource_type`` the actor may read, as one LDAP filter to AND into a list's
        search; ``None`` when it may read them all. Nothing readable gives ``(|)``, which matches nothing,
        so a list is still one search and never returns an entry the actor may not read.
        """
        from didmos_ldap.filters import any_of, eq, in_subtree

        if actor is None:
            return any_of()
        policy = self.policy()
        subject = subject or self.subject(actor)
        parts = []
        for grant in policy.grants(policy.default_active_roles(subject.assigned), "read", resource_type):
            scope = grant.permission.scope
            if scope.kind == "tenant":
                return None
            if scope.kind == "subtree":
                parts.append(in_subtree(scope.dn))
            elif scope.kind == "self":
                parts.append(eq("entryDN", subject.context.dn))
            elif scope.kind == "organization" and subject.context.organization:
                parts.append(in_subtree(subject.context.organization))
            elif scope.kind == "role" and grant.role.scope:
                parts.append(in_subtree(grant.role.scope))
        return any_of(*dict.fromkeys(parts))  # the same scope through several roles once

    def operations(self, actor: Actor, resource_type: str, target: str,
                   subject: Subject | None = None) -> dict[str, frozenset[str] | None]:
        """Every operation ``actor`` may perform on ``target``, with its attributes (``None``: all)."""
        policy = self.policy()
        subject = subject or self.subject(actor)
        return policy.operations_on(policy.default_active_roles(subject.assigned), resource_type, target,
                                    subject.context)


def compile_policy(entries, revision: str = "") -> Policy:
    """A :class:`Policy` from the RBAC entries of one tenant.

    Names are the entries' RDN values (what references point to). A reference to an entry that does
    not exist (deleted, and refint has not removed the reference yet: it works in the background) is
    dropped with a warning; a cycle in the hierarchy is a :class:`PolicyError`.
    """
    roles, permissions, sod_sets = {}, {}, {}
    for entry in entries:
        classes = {value.lower() for value in entry.values("objectClass")}
        name = rdn_value(entry.dn)
        if ROLE.lower() in classes:
            roles[name] = Role(
                name,
                juniors=frozenset(rdn_value(dn) for dn in entry.values("didmosRoleJunior")),
                permissions=frozenset(rdn_value(dn) for dn in entry.values("didmosPermissionRef")),
                scope=entry.first("didmosRoleScope"),
                description=entry.first("description") or "",
            )
        elif PERMISSION.lower() in classes:
            try:
                permissions[name] = Permission(
                    name,
                    operations=frozenset(op.lower() for op in entry.values("didmosOperation")),
                    resource_type=entry.first("didmosResourceType"),
                    scope=Scope.parse(entry.first("didmosObjectScope") or "tenant"),
                    attributes=frozenset(entry.values("didmosAttributeName")),
                )
            except PolicyError as exc:  # written around didmos (LDAP tools): it grants nothing
                log.warning("permission %s ignored: %s", entry.dn, exc)
        elif SOD.lower() in classes:
            sod_sets[name] = SodSet(
                name,
                roles=frozenset(rdn_value(dn) for dn in entry.values("didmosRoleRef")),
                cardinality=int(entry.first("didmosCardinality")),
                dynamic=(entry.first("didmosSodDynamic") or "FALSE").upper() == "TRUE",
            )
    dangling = []
    for name, role in list(roles.items()):
        known_juniors, known_permissions = role.juniors & roles.keys(), role.permissions & permissions.keys()
        if known_juniors != role.juniors or known_permissions != role.permissions:
            dangling.append(f"role {name}: {sorted((role.juniors - roles.keys()) | (role.permissions - permissions.keys()))}")
            roles[name] = replace(role, juniors=known_juniors, permissions=known_permissions)
    for name, sod in list(sod_sets.items()):
        if sod.roles - roles.keys():
            dangling.append(f"set {name}: {sorted(sod.roles - roles.keys())}")
            if len(sod.roles & roles.keys()) < sod.cardinality:
                del sod_sets[name]  # it can no longer be violated
            else:
                sod_sets[name] = replace(sod, roles=sod.roles & roles.keys())
    if dangling:
        log.warning("RBAC references to missing entries ignored: %s", "; ".join(dangling))
    return Policy(roles, permissions, sod_sets, revision)
