"""Business rules that act on LDAP operations, authorization and user names.

The hooks in ``plugin.py`` call these functions; they are kept here so that each can be read (and
tested) on its own.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import flask
import ldap
import ldap.dn

from didmos_host.errors import OperationRejected
from {{ cookiecutter.package_name }}.mapping import BADGE_ATTRIBUTE
from {{ cookiecutter.package_name }}.settings import NAMESPACE

log = logging.getLogger("{{ cookiecutter.package_name }}")


def request_settings():
    """Our settings when called while the API serves a request; ``None`` in the worker and the CLI.

    The LDAP interceptor hooks get no ``host`` argument: inside a request the app's host is at hand;
    outside one (the worker, ``didmos`` commands) the operator acts, and our API rules do not apply.
    """
    if not flask.has_app_context():
        return None
    from didmos_host.app import current_host

    return current_host().settings[NAMESPACE]


def normalized_dn(dn: str) -> tuple:
    """A DN in a form that compares equal however it is spelt (case, spaces after commas)."""
    return tuple(tuple((attr.lower(), value.lower(), kind) for attr, value, kind in rdn) for rdn in ldap.dn.str2dn(dn))


def same_dn(a: str, b: str) -> bool:
    return normalized_dn(a) == normalized_dn(b)


def is_below(dn: str, base: str) -> bool:
    """``dn`` is ``base`` or inside it."""
    dn_parts, base_parts = normalized_dn(dn), normalized_dn(base)
    return len(dn_parts) >= len(base_parts) and dn_parts[len(dn_parts) - len(base_parts):] == base_parts


# -- pre-LDAP interceptor: change, then check, every badge number that is written --------------------

def check_badges(operation) -> None:
    """Upper-case each badge number an add or modify writes, then refuse one that breaks the pattern.

    Changes ``operation`` in place (the directory gets ``AB-1234`` for ``ab-1234 ``); raises
    :class:`OperationRejected` (HTTP 403, nothing is written) for a value that does not match
    ``{{ cookiecutter.plugin_name }}.badge_pattern``.
    """
    settings = request_settings()
    if settings is None or operation.kind not in ("add", "modify"):
        return
    pattern = re.compile(settings.badge_pattern)

    def fixed(values: list[bytes]) -> list[bytes]:
        result = []
        for raw in values:
            value = raw.decode("utf-8").strip().upper()
            if not pattern.search(value):
                raise OperationRejected(
                    f"badgeNumber {raw.decode('utf-8', 'replace')!r} does not match {pattern.pattern!r} "
                    f"(setting {NAMESPACE}.badge_pattern); write it like the badge shows it, such as 'AB-1234'")
            result.append(value.encode("utf-8"))
        return result

    if operation.kind == "add":
        for name, values in operation.attributes.items():
            if name.lower() == BADGE_ATTRIBUTE.lower():
                operation.attributes[name] = fixed(values)
    else:
        operation.changes = [
            (op, name, fixed(values) if values and name.lower() == BADGE_ATTRIBUTE.lower() and op != ldap.MOD_DELETE
             else values)
            for op, name, values in operation.changes
        ]


# -- post interceptor: a device got a new owner ------------------------------------------------------

def new_owners(operation) -> list[str]:
    """The owner DNs an add or modify of an entry wrote (empty for other operations)."""
    if operation.kind == "add":
        return [v.decode("utf-8") for name, values in operation.attributes.items() if name.lower() == "owner"
                for v in values]
    if operation.kind == "modify":
        return [v.decode("utf-8") for op, name, values in operation.changes
                if name.lower() == "owner" and op in (ldap.MOD_ADD, ldap.MOD_REPLACE) and values for v in values]
    return []


def submit_owner_notices(operation, actor) -> list[str]:
    """After a device got an owner through the API: store one task per new owner; their ids.

    The write has happened, so nothing here may fail it: errors are logged, and the task is
    stored in the directory (the outbox) before it is queued, so a redis outage loses nothing.
    """
    settings = request_settings()
    if settings is None or not settings.notify_owner or not is_below(operation.dn, settings.devices_dn):
        return []
    from didmos_host.app import current_host
    from {{ cookiecutter.package_name }}.tasks import DEVICE_ASSIGNED

    submitted = []
    for owner in new_owners(operation):
        try:
            task = current_host().service("outbox").submit(DEVICE_ASSIGNED, {"device": operation.dn, "owner": owner},
                                                           actor=actor)
            submitted.append(task.id)
        except Exception:
            log.exception("device %s: the notice to its owner %s was not submitted", operation.dn, owner)
    return submitted


# -- authorization vote ------------------------------------------------------------------------------

def vote_on_report(host, actor, action):
    """``read`` on ``Device``: deny the userTypes of ``report_denied_user_types`` (deny wins, even over
    the superadmin's role), allow members of ``managers_group_dn``; abstain on everything else."""
    if actor is None or action.resource_type != "Device" or action.operation != "read":
        return None
    settings = host.settings[NAMESPACE]
    entry = host.service("directory").get(actor.dn, ["memberOf", "didmosUserType"])
    if entry is None:
        return None
    if (entry.first("didmosUserType") or "") in settings.report_denied_user_types:
        return False
    if any(same_dn(group, settings.managers_group_dn) for group in entry.values("memberOf")):
        return True
    return None


# -- replaced default: userName from the person's name -----------------------------------------------

def _ascii_word(text: str) -> str:
    text = text.replace("ß", "ss").replace("æ", "ae").replace("ø", "o")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9-]+", "", folded.replace(" ", "-")).strip("-")


def user_name(attributes: dict, attempt: int) -> str | None:
    """``given.family`` in lowercase ASCII (``Zoë Müller`` -> ``zoe.muller``), then ``zoe.muller2``,
    ``zoe.muller3``, ... while taken; ``None`` (the built-in generator answers) without both names."""
    def first(name):
        values = attributes.get(name) or [""]
        value = values[0]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    given, family = _ascii_word(first("givenName")), _ascii_word(first("sn"))
    if not given or not family:
        return None
    return f"{given}.{family}" + (str(attempt + 1) if attempt else "")
