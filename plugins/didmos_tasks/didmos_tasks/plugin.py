"""The didmos_tasks plugin's hook implementations: the task outbox (docs/tasks.md).

Settings ``tasks.*``, the schema and container of the outbox's entries, the outbox service, the
dispatcher as a periodic task of every ``didmos worker``, the ``/tasks/v1`` API and ``didmos tasks``.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import click
import ldap.dn
from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.cli import fail_cleanly
from didmos_host.records import DirectoryEntry, SchemaMigration, SettingsNamespace, TaskHandler

SCHEMA_DIR = Path(__file__).parent / "schema"
DISPATCH_TASK = "didmos_tasks.dispatch"

log = logging.getLogger("didmos.tasks.outbox")


def _is_dn(value) -> bool:
    return isinstance(value, str) and bool(value) and ldap.dn.is_dn(value)


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="tasks",
        defaults={"base_dn": "ou=tasks,ou=system,dc=didmos,dc=de", "dispatch_seconds": 10.0,
                  "lease_seconds": 30.0, "keep_done_seconds": 604800, "list_limit": 1000},
        validators=(
            Validator("tasks.base_dn", condition=_is_dn, messages={
                "condition": "{name} must be a DN such as 'ou=tasks,ou=system,dc=didmos,dc=de', got {value!r}"}),
            Validator("tasks.dispatch_seconds", "tasks.lease_seconds", is_type_of=(int, float), gt=0),
            Validator("tasks.keep_done_seconds", is_type_of=int, gte=0),
            Validator("tasks.list_limit", is_type_of=int, gte=1),
        ),
        descriptions={
            "base_dn": "Where the outbox keeps one entry per task (below ou=system: only the service account "
                       "may read it).",
            "dispatch_seconds": "How often every `didmos worker` has the dispatcher queue pending tasks and "
                                "deliver again those whose worker died or whose queue entry redis lost.",
            "lease_seconds": "How long a running task's lease lasts without its worker's heartbeat (sent every "
                             "third of it): a task whose worker died runs again after at most this long plus "
                             "`dispatch_seconds`.",
            "keep_done_seconds": "How long the entries of done tasks are kept (the dispatcher deletes older "
                                 "ones); 0 keeps them. Failed tasks are kept until retried.",
            "list_limit": "Most tasks `GET /tasks/v1/tasks` and `didmos tasks failed` return at once.",
        },
    )]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_host.tasks import enqueue_periodically
    from didmos_tasks.outbox import Outbox

    host.provide("outbox", Outbox(host))
    enqueue_periodically(host, DISPATCH_TASK, host.settings.tasks.dispatch_seconds)


def _dispatch(payload, context):
    report = context.host.service("outbox").dispatch()
    return report.as_dict()


@hookimpl(trylast=True)
def didmos_task_handlers():
    # The dispatcher is a plain rq job, not an outbox task: it is what delivers them.
    return [TaskHandler(name=DISPATCH_TASK, function=_dispatch, retries=0, timeout=300)]


@hookimpl(trylast=True)
def didmos_startup(app):
    """Queue the dispatcher once when an API process starts, in the background: redis may be down."""
    from didmos_host.errors import DidmosError
    from didmos_host.tasks import enqueue

    host = app.extensions["didmos"]

    def kick():
        try:
            enqueue(host, DISPATCH_TASK, {})
        except DidmosError as exc:
            log.info("dispatcher not queued at start-up: %s", exc.message)

    threading.Thread(target=kick, name="didmos-tasks-kick", daemon=True).start()


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_tasks.resources import blueprint

    return [blueprint]


@hookimpl(trylast=True)
def didmos_directory_migrations():
    # After didmos_ldap (10), didmos_pdp (20) and didmos_auth (30).
    return [SchemaMigration(name=f"didmos_tasks.{path.stem}", ldif=path, order=40)
            for path in sorted(SCHEMA_DIR.glob("*.ldif"))]


def container_entries(dn: str, description: str) -> list[DirectoryEntry]:
    """The organizational unit ``dn`` as an entry for `didmos directory init`; none when its RDN is not
    ``ou=`` (a container of another kind, which the operator provides)."""
    (attr, value, _), = ldap.dn.str2dn(dn)[0]
    if attr.lower() != "ou":
        return []
    return [DirectoryEntry(dn=dn, attributes={"objectClass": ["organizationalUnit"], "ou": [value],
                                              "description": [description]})]


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    return container_entries(settings.tasks.base_dn, "the task outbox (didmos_tasks)")


# -- didmos tasks ... -------------------------------------------------------------------------------------


def _outbox():
    from didmos_host.host import Host

    return Host.create().service("outbox")


def _line(task) -> str:
    error = f"  error: {task.error}" if task.error else ""
    return f"{task.id}  {task.state:<7}  {task.name}  attempts={task.attempts}  submitted={task.submitted}{error}"


@click.group("tasks")
def tasks() -> None:
    """The task outbox: failed tasks, retries, the dispatcher (docs/tasks.md)."""


@tasks.command("failed")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def failed(as_json: bool) -> None:
    """List the tasks that failed for good (retries exhausted), oldest first."""
    found = _outbox().list(state="failed")
    if as_json:
        click.echo(json.dumps([task.as_dict() for task in found], indent=2))
        return
    for task in found:
        click.echo(_line(task))
    if not found:
        click.echo("no failed tasks", err=True)


@tasks.command("show")
@click.argument("task_id")
@fail_cleanly
def show(task_id: str) -> None:
    """Print one task as JSON."""
    click.echo(json.dumps(_outbox().get(task_id).as_dict(), indent=2))


@tasks.command("retry")
@click.argument("task_id")
@fail_cleanly
def retry(task_id: str) -> None:
    """Run a failed task again, with a fresh set of attempts."""
    task = _outbox().retry(task_id)
    click.echo(f"task {task.id} is {task.state} again")


@tasks.command("dispatch")
@fail_cleanly
def dispatch() -> None:
    """Run the dispatcher once, here: queue pending tasks, deliver lost ones again."""
    report = _outbox().dispatch()
    click.echo(" ".join(f"{key}={value}" for key, value in report.as_dict().items()))


@hookimpl(trylast=True)
def didmos_cli_commands():
    return [tasks]


@hookimpl(trylast=True)
def didmos_metrics_collectors(host):
    from didmos_tasks.metrics import OutboxCollector

    return [OutboxCollector(host.service("outbox"))]
