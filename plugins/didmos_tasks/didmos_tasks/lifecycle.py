"""Lifecycle events and automatic roles: what happens to an account because time passed or it changed.

Time-based, by the periodic task ``didmos.lifecycle.sweep`` (:meth:`Lifecycle.sweep`), one LDAP search
per kind of event, each filtered so that only the accounts that event is due for are read:

reminders     ``didmosEndDate`` within the largest of ``lifecycle.remind_days_before`` days: the email
              ``account-expiring``, once per reminder and end date (recorded in ``didmosReminderSent``
              as ``<days>:<end date>`` *before* it is queued: a reminder is sent at most once);
deactivation  ``didmosEndDate`` passed and the account not deactivated: ``didmosActive`` FALSE and
              ``didmosDeactivatedAt`` the time it happened;
retirement    deactivated by the sweep more than ``lifecycle.delete_after_days`` days ago (and the end
              date still passed): deleted or anonymised, after ``lifecycle.after_deactivation``.

Every write is made with an assertion (LDAP assertion control) that the entry is still in the state
the search found it in, so two sweeps running at once (a slow one overlapping the next period) act
once; the loser's write fails with :class:`PreconditionFailed` and is skipped.

Change-based, by the ``didmos_ldap_post_operation`` interceptor (:meth:`Lifecycle.seen`): a user added
through the API gets the task ``didmos.lifecycle.welcome`` (when notifications are on), and a user added
or changed in an attribute a role rule looks at gets the task ``didmos.lifecycle.roles``. Both are
submitted through the outbox and any error is logged: the write happened, the request must not fail.

Automatic roles (``lifecycle.role_rules``): a user matching a rule's filter is assigned all of its roles
it lacks, in one modify checked against the entry's ``entryCSN``; when holding them would break a static
separation-of-duty set none is assigned and the conflict is logged and returned. Rules only add roles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import ldap

from didmos_host.errors import ConfigError, NotFound, PreconditionFailed

log = logging.getLogger("didmos.lifecycle")

SWEEP_TASK = "didmos.lifecycle.sweep"
RECONCILE_TASK = "didmos.lifecycle.reconcile"
ROLES_TASK = "didmos.lifecycle.roles"
WELCOME_TASK = "didmos.lifecycle.welcome"
AFTER_DEACTIVATION = ("delete", "anonymise", "keep")
#: The object class of the attributes the sweep records (lifecycle_schema/0001-lifecycle-schema.ldif).
LIFECYCLE_CLASS = "didmosLifecycle"
#: Placeholders an anonymised account gets; ``{uuid}`` is its didmosUUID (uid stays unique).
PLACEHOLDERS = {"cn": "anonymised", "sn": "anonymised", "displayName": "anonymised", "uid": "anonymised-{uuid}"}
#: Personal attributes an anonymised account loses (setting ``lifecycle.anonymise_attributes``).
DEFAULT_ANONYMISE = ["givenName", "initials", "mail", "telephoneNumber", "mobile", "homePhone", "pager",
                     "facsimileTelephoneNumber", "homePostalAddress", "postalAddress", "street", "l", "st",
                     "postalCode", "title", "employeeNumber", "manager", "jpegPhoto", "photo", "labeledURI",
                     "preferredLanguage", "description", "userPassword"]


def generalized(moment: datetime) -> str:
    """``moment`` as LDAP GeneralizedTime in UTC, e.g. ``20310131000000Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


def parse_generalized(value: str) -> datetime:
    """GeneralizedTime (``YYYYmmddHHMMSS[.f]Z``) as an aware datetime."""
    return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RoleRule:
    """Users matching ``filter`` get ``roles``."""

    name: str
    filter: Any  # didmos_ldap.filters.Filter
    roles: tuple[str, ...]

    @property
    def attributes(self) -> set[str]:
        """The attribute names (lower case) the filter looks at."""
        names, todo = set(), [self.filter]
        while todo:
            node = todo.pop()
            if getattr(node, "attr", None):
                names.add(node.attr.lower())
            todo.extend(getattr(node, "parts", ()))
            if getattr(node, "part", None) is not None:
                todo.append(node.part)
        return names


def parse_rules(raw: Any) -> list[RoleRule]:
    """The rules of ``lifecycle.role_rules``; :class:`ConfigError` names the rule that is wrong and why."""
    from didmos_ldap.filters import parse

    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"lifecycle.role_rules must be a list of rules, got {raw!r}")
    rules, names = [], set()
    for index, item in enumerate(raw):
        where = f"lifecycle.role_rules[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} must be a table {{name, filter, roles}}, got {item!r}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where} needs a name, e.g. name = \"teachers\"")
        where = f"lifecycle.role_rules[{index}] ({name!r})"
        if name in names:
            raise ConfigError(f"{where}: another rule is named {name!r} already; names must be unique")
        names.add(name)
        unknown = set(item) - {"name", "filter", "roles"}
        if unknown:
            raise ConfigError(f"{where} has no fields {sorted(unknown)}; a rule has name, filter and roles")
        text = item.get("filter")
        if not isinstance(text, str):
            raise ConfigError(f"{where} needs a filter, an LDAP filter such as \"(title=Teacher)\"")
        try:
            condition = parse(text)
        except ValueError as exc:
            raise ConfigError(f"{where} has a filter that is not an LDAP filter: {text!r}: {exc}; "
                              f"write one such as \"(title=Teacher)\"") from None
        roles = item.get("roles")
        if (not isinstance(roles, (list, tuple)) or not roles
                or not all(isinstance(r, str) and r.strip() for r in roles)):
            raise ConfigError(f"{where} needs roles, a list of role names such as [\"teacher\"], got {roles!r}")
        rules.append(RoleRule(name=name, filter=condition, roles=tuple(dict.fromkeys(r.strip() for r in roles))))
    return rules


class Lifecycle:
    """The service ``lifecycle``: the sweep, the role rules and the interceptor's decisions."""

    def __init__(self, host):
        self.host = host
        self.settings = host.settings.lifecycle
        self.rules = parse_rules(self.settings.role_rules)
        self.rule_attributes = set().union(*(rule.attributes for rule in self.rules)) if self.rules else set()

    @property
    def directory(self):
        return self.host.service("directory")

    @property
    def base(self) -> str:
        return self.host.settings.ldap.base_dn

    @staticmethod
    def users():
        from didmos_ldap.filters import eq

        return eq("objectClass", "didmosPerson")

    def notifications(self):
        """The notifications service when it is there and enabled, else ``None``."""
        service = self.host.services.get("notifications")
        settings = getattr(service, "settings", None)
        if service is None or (settings is not None and not settings.get("enabled", False)):
            return None
        return service

    # -- time-based ------------------------------------------------------------------------------------
    def sweep(self, now: datetime | None = None) -> dict[str, Any]:
        """Remind, deactivate and retire what is due at ``now`` (default: the current time)."""
        now = now or datetime.now(timezone.utc)
        return {"reminded": self.remind(now), "deactivated": self.deactivate(now), "retired": self.retire(now)}

    def remind(self, now: datetime) -> list[str]:
        """Send the reminders due: for each account the smallest ``remind_days_before`` its end is within."""
        from didmos_ldap.filters import all_of, eq, ge, le, not_

        days = sorted(int(d) for d in self.settings.remind_days_before)
        notifications = self.notifications()
        if not days or notifications is None:
            return []
        condition = all_of(self.users(), ge("didmosEndDate", generalized(now)),
                           le("didmosEndDate", generalized(now + timedelta(days=days[-1]))),
                           not_(eq("didmosActive", "FALSE")))
        reminded = []
        for entry in self.directory.iter_search(self.base, condition, attrs=[
                "didmosEndDate", "didmosReminderSent", "mail", "uid", "displayName", "cn"]):
            end_text = entry.first("didmosEndDate")
            end = parse_generalized(end_text)
            tier = next(d for d in days if end - now <= timedelta(days=d))
            record = f"{tier}:{generalized(end)}"
            if record.lower() in {v.lower() for v in entry.values("didmosReminderSent")}:
                continue
            mail = entry.first("mail")
            if not mail:
                continue
            try:  # recorded first: whoever records it sends it, once
                self.directory.modify(entry.dn, [(ldap.MOD_ADD, "objectClass", [LIFECYCLE_CLASS]),
                                                 (ldap.MOD_ADD, "didmosReminderSent", [record])],
                                      permissive=True, if_match=str(not_(eq("didmosReminderSent", record))))
            except (PreconditionFailed, NotFound):
                continue
            try:
                notifications.send("account-expiring", mail,
                                   {"user_name": entry.first("uid") or entry.first("displayName") or entry.first("cn"),
                                    "expires": end.strftime("%Y-%m-%d")}, key=f"reminder:{entry.dn}:{record}")
                reminded.append(entry.dn)
            except Exception:  # noqa: BLE001 - one bad address must not stop the sweep
                log.exception("reminder %s to %s for %s failed", record, mail, entry.dn)
        return reminded

    def deactivate(self, now: datetime) -> list[str]:
        """Deactivate every account whose end date has passed."""
        from didmos_ldap.filters import all_of, eq, le, not_

        active = not_(eq("didmosActive", "FALSE"))
        condition = all_of(self.users(), le("didmosEndDate", generalized(now)), active)
        done = []
        for entry in self.directory.iter_search(self.base, condition, attrs=["1.1"]):
            try:
                self.directory.modify(entry.dn, [(ldap.MOD_ADD, "objectClass", [LIFECYCLE_CLASS]),
                                                 (ldap.MOD_REPLACE, "didmosActive", ["FALSE"]),
                                                 (ldap.MOD_REPLACE, "didmosDeactivatedAt", [generalized(now)])],
                                      permissive=True, if_match=str(active))
            except (PreconditionFailed, NotFound):
                continue
            log.info("account %s deactivated: its end date has passed", entry.dn)
            done.append(entry.dn)
        return done

    def retire(self, now: datetime) -> list[str]:
        """Delete or anonymise the accounts deactivated more than ``delete_after_days`` days ago."""
        from didmos_ldap.filters import all_of, eq, le, not_, present

        mode, days = self.settings.after_deactivation, int(self.settings.delete_after_days)
        if mode == "keep" or days == 0:
            return []
        due = all_of(eq("didmosActive", "FALSE"), le("didmosDeactivatedAt", generalized(now - timedelta(days=days))),
                     not_(present("didmosAnonymisedAt")))
        condition = all_of(self.users(), due, le("didmosEndDate", generalized(now)))
        done = []
        for entry in self.directory.iter_search(self.base, condition, attrs=["didmosUUID"]):
            try:
                if mode == "delete":
                    self.directory.delete(entry.dn, if_match=str(due))
                else:
                    self.anonymise(entry.dn, entry.first("didmosUUID") or "", now, if_match=str(due))
            except (PreconditionFailed, NotFound):
                continue
            log.info("account %s %s: deactivated more than %s days ago", entry.dn,
                     "deleted" if mode == "delete" else "anonymised", days)
            done.append(entry.dn)
        return done

    def anonymise(self, dn: str, uuid: str, now: datetime, *, if_match: str | None = None) -> None:
        """Replace the personal attributes of ``dn`` with placeholders; didmosUUID stays."""
        changes = [(ldap.MOD_REPLACE, attr, [value.format(uuid=uuid)]) for attr, value in PLACEHOLDERS.items()]
        changes += [(ldap.MOD_DELETE, attr, None) for attr in self.settings.anonymise_attributes
                    if attr.lower() not in {a.lower() for a in PLACEHOLDERS}]
        changes += [(ldap.MOD_ADD, "objectClass", [LIFECYCLE_CLASS]),
                    (ldap.MOD_REPLACE, "didmosAnonymisedAt", [generalized(now)])]
        self.directory.modify(dn, changes, permissive=True, if_match=if_match)

    # -- automatic roles -------------------------------------------------------------------------------
    def apply_rules(self, dn: str) -> list[dict[str, Any]]:
        """Apply every rule ``dn`` matches; one outcome per matching rule."""
        from didmos_ldap.filters import all_of

        outcomes = []
        for rule in self.rules:
            try:
                if not self.directory.search(dn, all_of(self.users(), rule.filter), ldap.SCOPE_BASE, ["1.1"]):
                    continue
            except NotFound:
                return outcomes
            outcomes.append(self.grant(dn, rule))
        return outcomes

    def grant(self, dn: str, rule: RoleRule) -> dict[str, Any]:
        """Give ``dn`` every role of ``rule`` it lacks, all in one modify, or none of them."""
        from didmos_ldap.filters import eq
        from didmos_pdp.pdp import rdn_value
        from didmos_pdp.policy import SeparationOfDutyViolation

        pdp = self.host.service("rbac_admin").pdp
        outcome: dict[str, Any] = {"rule": rule.name, "entry": dn}
        for _ in range(3):
            entry = self.directory.get(dn, ["didmosRoleAssignment", "entryCSN"])
            if entry is None:
                return {**outcome, "skipped": "the entry is gone"}
            assigned = {rdn_value(value) for value in entry.values("didmosRoleAssignment")}
            missing = [role for role in rule.roles if role not in assigned]
            if not missing:
                return {**outcome, "assigned": []}
            policy = pdp.policy()
            unknown = [role for role in missing if role not in policy.roles]
            if unknown:
                log.warning("role rule %r not applied to %s: no roles named %s", rule.name, dn, unknown)
                return {**outcome, "unknown_roles": unknown}
            try:
                policy.check_ssd(assigned | set(rule.roles))
            except SeparationOfDutyViolation as exc:
                log.warning("role rule %r not applied to %s: static separation of duty set %r: %s",
                            rule.name, dn, (exc.detail or {}).get("set"), exc.message)
                return {**outcome, "violation": exc.detail, "error": exc.message}
            try:
                self.directory.modify(dn, [(ldap.MOD_ADD, "objectClass", ["didmosRoleHolder"]),
                                           (ldap.MOD_ADD, "didmosRoleAssignment", [pdp.dn("roles", r) for r in missing])],
                                      permissive=True, if_match=str(eq("entryCSN", entry.first("entryCSN"))))
            except PreconditionFailed:  # changed meanwhile: read the roles and check the sets again
                continue
            log.info("role rule %r assigned %s to %s", rule.name, missing, dn)
            return {**outcome, "assigned": missing}
        return {**outcome, "skipped": "the entry kept changing"}

    def reconcile(self) -> list[dict[str, Any]]:
        """Apply every rule to the users that match it and lack one of its roles (paged searches)."""
        from didmos_ldap.filters import all_of, any_of, eq, not_

        pdp = self.host.service("rbac_admin").pdp
        outcomes = []
        for rule in self.rules:
            lacking = any_of(*(not_(eq("didmosRoleAssignment", pdp.dn("roles", role))) for role in rule.roles))
            condition = all_of(self.users(), rule.filter, lacking)
            for entry in self.directory.iter_search(self.base, condition, attrs=["1.1"]):
                outcomes.append(self.grant(entry.dn, rule))
        return outcomes

    # -- change-based ----------------------------------------------------------------------------------
    def seen(self, operation, actor) -> None:
        """An LDAP write went through: submit the tasks it calls for. Never raises."""
        try:
            if operation.kind == "add":
                attributes = {str(k).lower(): v for k, v in (operation.attributes or {}).items()}
                classes = {(c.decode() if isinstance(c, bytes) else str(c)).lower()
                           for c in attributes.get("objectclass", [])}
                if "didmosperson" not in classes:
                    return
                if self.notifications() is not None and attributes.get("mail"):
                    self.submit(WELCOME_TASK, {"dn": operation.dn}, key=f"welcome:{operation.dn.lower()}", actor=actor)
                if self.rules:
                    self.submit(ROLES_TASK, {"dn": operation.dn}, actor=actor)
            elif operation.kind == "modify" and self.rules:
                touched = {str(change[1]).lower() for change in operation.changes}
                if touched & self.rule_attributes:
                    self.submit(ROLES_TASK, {"dn": operation.dn}, actor=actor)
        except Exception:  # noqa: BLE001 - the write happened; failing the request would not undo it
            log.exception("lifecycle tasks for %s %s not submitted", operation.kind, operation.dn)

    def submit(self, name: str, payload: dict[str, Any], *, key: str | None = None, actor=None) -> str:
        """Through the outbox when it is there (stored before it is queued), else straight to rq."""
        outbox = self.host.services.get("outbox")
        if outbox is not None:
            return outbox.submit(name, payload, key=key, actor=actor).id
        from didmos_host.tasks import enqueue

        return enqueue(self.host, name, payload)

    def welcome(self, dn: str) -> dict[str, Any]:
        """Send the ``welcome`` email to the user at ``dn``."""
        notifications = self.notifications()
        if notifications is None:
            return {"skipped": "notifications are off"}
        entry = self.directory.get(dn, ["mail", "uid", "displayName", "cn"])
        if entry is None or not entry.first("mail"):
            return {"skipped": "no such user or no mail address"}
        # Keyed: a welcome task that runs again (its worker died) submits no second mail.
        job = notifications.send("welcome", entry.first("mail"),
                                 {"user_name": entry.first("uid") or entry.first("displayName") or entry.first("cn")},
                                 key=f"welcome:{dn}")
        return {"notified": entry.first("mail"), "job": job}


# -- task handlers ---------------------------------------------------------------------------------------

def run_sweep(payload: dict[str, Any], context) -> dict[str, Any]:
    """The periodic task ``didmos.lifecycle.sweep``."""
    return context.host.service("lifecycle").sweep()


def run_reconcile(payload: dict[str, Any], context) -> dict[str, Any]:
    """The periodic task ``didmos.lifecycle.reconcile``."""
    return {"outcomes": context.host.service("lifecycle").reconcile()}


def run_roles(payload: dict[str, Any], context) -> dict[str, Any]:
    """The task ``didmos.lifecycle.roles``: apply the rules to one entry (``{"dn": ...}``)."""
    return {"outcomes": context.host.service("lifecycle").apply_rules(payload["dn"])}


def run_welcome(payload: dict[str, Any], context) -> dict[str, Any]:
    """The task ``didmos.lifecycle.welcome``: the welcome email of one user (``{"dn": ...}``)."""
    return context.host.service("lifecycle").welcome(payload["dn"])

