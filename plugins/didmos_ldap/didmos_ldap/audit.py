"""The audit record of every write made through the directory service, whether it succeeded or not.

One record per add, modify, modrdn and delete, on the logger ``didmos.audit``
(:func:`didmos_host.observability.audit`): the actor, the operation and its target DN, the names of
the attributes it changed (never their values: ``userPassword`` is named, not shown), the result (or
the error) and, through the log record, the request id and the time. A write an interceptor rejected
is audited as a failure too; ``didmos_ldap_post_operation`` only sees the successes.
"""

from __future__ import annotations

import functools

import ldap

from didmos_host.observability import audit

_MODIFY_OPS = {ldap.MOD_ADD: "add", ldap.MOD_DELETE: "delete", ldap.MOD_REPLACE: "replace"}


def facts(operation) -> dict:
    """What an audit record says about ``operation``, values left out."""
    if operation.kind == "add":
        return {"attributes": sorted(operation.attributes or ())}
    if operation.kind == "modify":
        changes = operation.changes or ()
        return {"attributes": sorted({attr for _, attr, _ in changes}),
                "changes": [f"{_MODIFY_OPS.get(op, op)} {attr}" for op, attr, _ in changes]}
    if operation.kind == "modrdn":
        return {"new_rdn": operation.new_rdn, "new_superior": operation.new_superior}
    return {}


def audited(write):
    """Wrap :meth:`Directory._write`: an audit record after every write, with its result."""

    @functools.wraps(write)
    def auditing(self, operation, actor, *args, **kwargs):
        try:
            result = write(self, operation, actor, *args, **kwargs)
        except BaseException as exc:
            audit(f"ldap.{operation.kind}", actor=actor, target=operation.dn, error=exc, **facts(operation))
            raise
        audit(f"ldap.{operation.kind}", actor=actor, target=operation.dn, **facts(operation))
        return result

    return auditing
