"""The requests-and-approvals plugin (``didmos_tasks_requests``): settings ``requests.*``, the schema and
container of request entries, the ``requests`` service with the built-in kinds ``assign-role`` and
``join-group``, their tasks, the sweep, and the ``/tasks/v1/requests`` API (docs/tasks.md).
"""

from __future__ import annotations

from pathlib import Path

import ldap
import ldap.dn
from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.errors import AlreadyExists, PreconditionFailed
from didmos_host.records import SchemaMigration, SettingsNamespace, TaskHandler
from didmos_tasks.requests import ACT_TASK, SWEEP_TASK, Conflict, InvalidRequest, Requests, run_action, run_sweep

SCHEMA_DIR = Path(__file__).parent / "requests_schema"
ASSIGN_ROLE_TASK = "didmos.requests.assign-role"
JOIN_GROUP_TASK = "didmos.requests.join-group"

#: The approval levels of the built-in kinds, unless ``requests.workflows`` says otherwise.
DEFAULT_WORKFLOWS = {
    "assign-role": [
        {"approvers": {"attribute": "manager"}, "fallback": {"role": "superadmin"}, "rule": "any"},
        {"approvers": {"role": "superadmin"}, "rule": "any"},
    ],
    "join-group": [{"approvers": {"role": "superadmin"}, "rule": "any"}],
}


def _is_dn(value) -> bool:
    return isinstance(value, str) and bool(value) and ldap.dn.is_dn(value)


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="requests",
        defaults={"base_dn": "ou=requests,ou=default-tenant,dc=didmos,dc=de", "workflows": DEFAULT_WORKFLOWS,
                  "allow_self_approval": False, "action_retry_seconds": 600, "sweep_seconds": 60},
        validators=(
            Validator("requests.base_dn", condition=_is_dn, messages={
                "condition": "{name} must be a DN such as 'ou=requests,ou=default-tenant,dc=didmos,dc=de', "
                             "got {value!r}"}),
            Validator("requests.workflows", is_type_of=dict),
            Validator("requests.allow_self_approval", is_type_of=bool),
            Validator("requests.action_retry_seconds", "requests.sweep_seconds", is_type_of=(int, float), gt=0),
        ),
        descriptions={
            "base_dn": "Where requests are stored, one entry each (`cn=<id>`).",
            "workflows.assign-role": "Approval levels of `assign-role` requests: a list of levels (approvers, "
                                     "rule, expire_seconds, escalate_to, fallback; see docs/tasks.md).",
            "workflows.join-group": "Approval levels of `join-group` requests.",
            "allow_self_approval": "Let the requester and the user a request is about approve it (when they "
                                   "are among a level's approvers); false leaves them out.",
            "action_retry_seconds": "An approved request whose action has not reported back after this long "
                                    "is queued again by the sweep.",
            "sweep_seconds": "How often every `didmos worker` runs the sweep that expires and escalates levels "
                             "and re-queues actions: an expiry is handled at most this late.",
        },
    )]


@hookimpl(wrapper=True)
def didmos_services(host):
    """Provide ``requests`` before any plugin's ``didmos_services`` runs (a wrapper runs first, whatever
    the plugins' order), so that every plugin can register its request kinds there."""
    service = Requests(host)
    host.provide("requests", service)
    _register_builtin_kinds(service)
    from didmos_host import tasks

    periodically = getattr(tasks, "enqueue_periodically", None)
    if periodically is not None:
        periodically(host, SWEEP_TASK, float(host.settings.requests.sweep_seconds))
    return (yield)


@hookimpl(trylast=True)
def didmos_task_handlers():
    return [
        TaskHandler(name=ACT_TASK, function=run_action, retries=3, retry_intervals=(10, 60, 300)),
        TaskHandler(name=SWEEP_TASK, function=run_sweep, retries=0, timeout=300),
        TaskHandler(name=ASSIGN_ROLE_TASK, function=assign_role, retries=0),
        TaskHandler(name=JOIN_GROUP_TASK, function=join_group, retries=0),
    ]


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_tasks.requests_resources import blueprint

    return [blueprint]


@hookimpl(trylast=True)
def didmos_directory_migrations():
    # After didmos_tasks's own outbox schema (40).
    return [SchemaMigration(name=f"didmos_tasks_requests.{path.stem}", ldif=path, order=45)
            for path in sorted(SCHEMA_DIR.glob("*.ldif"))]


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    from didmos_tasks.plugin import container_entries

    return container_entries(settings.requests.base_dn, "requests and approvals (didmos_tasks)")


# -- the built-in kinds ------------------------------------------------------------------------------------

def _only(payload: dict, kind: str, allowed: set[str]) -> None:
    unknown = set(payload) - allowed
    if unknown:
        raise InvalidRequest(f"a {kind!r} payload has no fields {sorted(unknown)}; it has {sorted(allowed)}")


def _name(payload: dict, field: str, kind: str, example: str) -> str:
    value = payload.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"payload.{field} of a {kind!r} request is required: {example}")
    return value.strip()


def validate_assign_role(host, payload: dict, target: str) -> dict:
    """``{"user"?, "role"}``: the role exists, the user lacks it, and holding it would break no static
    separation-of-duty set now (it is checked again when the role is assigned)."""
    _only(payload, "assign-role", {"user", "role"})
    role = _name(payload, "role", "assign-role", 'the name of a role, e.g. {"role": "auditor"}')
    admin = host.service("rbac_admin")
    policy = admin.pdp.policy()
    if role not in policy.roles:
        raise InvalidRequest(f"no role named {role!r}")
    assigned = admin.assigned_roles(target)
    if role in assigned:
        raise Conflict(f"role {role!r} is assigned to {target} already")
    policy.check_ssd(assigned | {role})  # 409 naming the set
    return {"user": payload["user"], "role": role}


def assign_role(job: dict, context) -> dict:
    """Assign the role (``rbac_admin.assign_user``, which enforces static separation of duty) as the
    service account. The user is found again by id: it may have moved since the request was filed."""
    admin = context.host.service("rbac_admin")
    user = admin.user_dn(job["payload"]["user"])
    role = job["payload"]["role"]
    for _ in range(3):
        try:
            admin.assign_user(user, role)
            return {"assigned": role, "user": user}
        except AlreadyExists:
            return {"assigned": role, "user": user, "already": True}
        except PreconditionFailed:  # the user's roles changed meanwhile: check the sets again
            continue
    raise Conflict(f"the roles of {user} kept changing; role {role!r} was not assigned")


def _group(host, group_id: str):
    entry = host.service("directory").get_by_uuid(group_id, host.settings.ldap.data_dn,
                                                  ["objectClass", "cn", "displayName"])
    classes = {value.lower() for value in entry.values("objectClass")} if entry is not None else set()
    if not classes & {"didmosgroup", "groupofnames"}:
        raise InvalidRequest(f"no group with id {group_id!r}")
    return entry


def validate_join_group(host, payload: dict, target: str) -> dict:
    """``{"user"?, "group"}``: the group (its id) exists and the user is not a member yet."""
    from didmos_ldap.filters import eq

    _only(payload, "join-group", {"user", "group"})
    group_id = _name(payload, "group", "join-group", 'the id of a group, e.g. {"group": "<didmosUUID>"}')
    group = _group(host, group_id)
    if host.service("directory").search(group.dn, eq("member", target), ldap.SCOPE_BASE, ["1.1"]):
        raise Conflict(f"{target} is a member of group {group_id} already")
    return {"user": payload["user"], "group": group_id,
            "group_name": group.first("displayName") or group.first("cn") or group_id}


def join_group(job: dict, context) -> dict:
    """Add the user to the group as the service account (a member already: done all the same)."""
    host = context.host
    user = host.service("rbac_admin").user_dn(job["payload"]["user"])
    group = _group(host, job["payload"]["group"])
    host.service("directory").modify(group.dn, [(ldap.MOD_ADD, "member", [user])], permissive=True)
    return {"group": group.dn, "member": user}


def _register_builtin_kinds(service: Requests) -> None:
    service.register_kind(
        "assign-role", validate=validate_assign_role, action=ASSIGN_ROLE_TASK,
        levels=DEFAULT_WORKFLOWS["assign-role"],
        description="Give a user a role (payload: user id, default the requester; role name)",
        summary=lambda payload, target: f"assign role {payload['role']!r} to {target}")
    service.register_kind(
        "join-group", validate=validate_join_group, action=JOIN_GROUP_TASK,
        levels=DEFAULT_WORKFLOWS["join-group"],
        description="Add a user to a group (payload: user id, default the requester; group id)",
        summary=lambda payload, target: f"add {target} to group {payload['group_name']!r}")
