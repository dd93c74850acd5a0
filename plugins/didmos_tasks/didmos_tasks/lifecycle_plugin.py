"""The lifecycle plugin (``didmos_tasks_lifecycle``): settings ``lifecycle.*``, the schema of what the sweep
records, the ``lifecycle`` service, the periodic sweep and role reconciliation, their tasks and the
post-operation interceptor (:mod:`didmos_tasks.lifecycle`, docs/tasks.md).

A plugin of its own, so that a deployment that manages end dates and roles some other way turns it off
by name (``DIDMOS_DISABLE_PLUGINS=didmos_tasks_lifecycle``) and keeps the other tasks.
"""

from __future__ import annotations

from pathlib import Path

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import SchemaMigration, SettingsNamespace, TaskHandler
from didmos_tasks.lifecycle import (AFTER_DEACTIVATION, DEFAULT_ANONYMISE, RECONCILE_TASK, ROLES_TASK, SWEEP_TASK,
                                    WELCOME_TASK, Lifecycle, run_reconcile, run_roles, run_sweep, run_welcome)

SCHEMA_DIR = Path(__file__).parent / "lifecycle_schema"


def _days(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                    for d in value)


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="lifecycle",
        defaults={"sweep_seconds": 300, "reconcile_seconds": 3600, "delete_after_days": 90,
                  "after_deactivation": "delete", "remind_days_before": [14, 3],
                  "anonymise_attributes": DEFAULT_ANONYMISE, "role_rules": []},
        validators=(
            Validator("lifecycle.sweep_seconds", "lifecycle.reconcile_seconds", is_type_of=(int, float), gt=0),
            Validator("lifecycle.delete_after_days", is_type_of=int, gte=0),
            Validator("lifecycle.after_deactivation", is_in=AFTER_DEACTIVATION),
            Validator("lifecycle.remind_days_before", condition=_days, messages={
                "condition": "{name} must be a list of whole days above 0, such as [14, 3], got {value!r}"}),
            Validator("lifecycle.anonymise_attributes", condition=lambda v: isinstance(v, (list, tuple)) and all(
                isinstance(a, str) and a for a in v), messages={
                "condition": "{name} must be a list of attribute names such as ['mail', 'mobile'], got {value!r}"}),
            # Each rule is checked when the service is made, so that the error can name the rule.
            Validator("lifecycle.role_rules", is_type_of=(list, tuple)),
        ),
        descriptions={
            "sweep_seconds": "How often every `didmos worker` runs the lifecycle sweep (reminders, deactivation "
                             "at `didmosEndDate`, deletion or anonymisation): an event is handled at most this late.",
            "reconcile_seconds": "How often the role rules are applied to every user that matches one and "
                                 "lacks one of its roles (only when there are rules).",
            "delete_after_days": "Days after the sweep deactivated an account (its end date passed) that it is "
                                 "deleted or anonymised; 0: never.",
            "after_deactivation": "What happens then: `delete` the entry, `anonymise` it (personal attributes "
                                  "replaced or removed, didmosUUID kept) or `keep` it.",
            "remind_days_before": "Days before `didmosEndDate` that the user gets the `account-expiring` email, "
                                  "each once per end date (needs notifications).",
            "anonymise_attributes": "Attributes an anonymised account loses (cn, sn, displayName and uid get "
                                    "placeholders in any case).",
            "role_rules": "Automatic roles: a list of `{name, filter, roles}`; users matching the LDAP `filter` "
                          "are assigned the `roles` (only added, never removed).",
        },
    )]


@hookimpl(trylast=True)
def didmos_services(host):
    service = Lifecycle(host)  # a bad rule stops the start here, naming the rule
    host.provide("lifecycle", service)
    from didmos_host import tasks

    periodically = getattr(tasks, "enqueue_periodically", None)
    if periodically is not None:
        periodically(host, SWEEP_TASK, float(host.settings.lifecycle.sweep_seconds))
        if service.rules:
            periodically(host, RECONCILE_TASK, float(host.settings.lifecycle.reconcile_seconds))


@hookimpl(trylast=True)
def didmos_task_handlers():
    return [
        TaskHandler(name=SWEEP_TASK, function=run_sweep, retries=0, timeout=600),
        TaskHandler(name=RECONCILE_TASK, function=run_reconcile, retries=0, timeout=3600),
        TaskHandler(name=ROLES_TASK, function=run_roles, retries=3, retry_intervals=(10, 60, 300)),
        TaskHandler(name=WELCOME_TASK, function=run_welcome, retries=3, retry_intervals=(10, 60, 300)),
    ]


@hookimpl(trylast=True)
def didmos_directory_migrations():
    # After didmos_tasks's outbox (40) and requests (45) schemas.
    return [SchemaMigration(name=f"didmos_tasks_lifecycle.{path.stem}", ldif=path, order=50)
            for path in sorted(SCHEMA_DIR.glob("*.ldif"))]


@hookimpl(trylast=True)
def didmos_ldap_post_operation(operation, result, actor):
    """A user added or changed through the API: submit its welcome email and role rules as tasks.

    Only writes made while serving a request are seen here (the host is the request's app's); the
    periodic reconciliation catches the rest.
    """
    if operation.kind not in ("add", "modify"):
        return
    import flask

    if not flask.has_app_context():
        return
    from didmos_host.app import current_host

    service = current_host().services.get("lifecycle")
    if service is not None:
        service.seen(operation, actor)
