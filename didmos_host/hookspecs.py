"""Every hook a didmos plugin can implement.

A plugin is any module or object registered under the entry-point group ``didmos``. It implements
hooks by defining functions with these names, decorated with :data:`didmos_host.hookimpl`.

Conventions (see ``docs/hooks.md``):

* Built-in implementations are ``@hookimpl(trylast=True)``; customer overrides are
  ``@hookimpl(tryfirst=True)``, so the outcome never depends on entry-point load order.
* Hooks marked *first result wins* stop at the first implementation that returns something other
  than ``None``. A customer plugin that wants to adjust rather than replace the built-in answer
  implements the hook with ``@hookimpl(wrapper=True)`` and edits the result of ``yield``.
* Hooks that register things return lists of small records (defined in :mod:`didmos_host.records`)
  with a ``name``; the host rejects two records of one kind with the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    import click
    import flask
    from flask_smorest import Blueprint

    from didmos_host.host import Host
    from didmos_host.records import (
        Action,
        Actor,
        DirectoryEntry,
        DoctorCheck,
        LdapOperation,
        ReadinessCheck,
        ResourceType,
        SchemaMigration,
        SettingsNamespace,
        TaskHandler,
    )

hookspec = pluggy.HookspecMarker("didmos")


@hookspec
def didmos_settings() -> list[SettingsNamespace]:
    """Declare configuration: defaults and validators, each plugin in its own namespace.

    Called once, while the settings are built, before anything else runs.
    Returns a list of :class:`~didmos_host.records.SettingsNamespace`. A namespace is owned by the
    record that declares ``validators`` for it (exactly one plugin); other plugins, such as customer
    plugins, may return a record with only ``defaults`` for a namespace they do not own, to change its
    defaults. Defaults of ``tryfirst`` implementations win over those of ``trylast`` ones; settings
    files and ``DIDMOS_*`` environment variables win over every default.
    """


@hookspec
def didmos_services(host: Host) -> None:
    """Offer services to other plugins: ``host.provide("directory", Directory(...))``.

    Called once when a :class:`~didmos_host.host.Host` is created (API process, worker and CLI alike),
    after the settings are loaded and validated. Services must connect lazily, on first use, so that
    commands which do not need them work without their servers. Every implementation runs; returns
    nothing.
    """


@hookspec
def didmos_startup(app: flask.Flask) -> None:
    """Run once after the Flask app and all blueprints exist, before the first request.

    ``app.extensions["didmos"]`` is the :class:`~didmos_host.host.Host`. Every implementation runs;
    an exception stops start-up. Returns nothing.
    """


@hookspec
def didmos_blueprints(app: flask.Flask) -> list[Blueprint]:
    """Contribute HTTP routes: a list of flask-smorest ``Blueprint`` objects.

    Called once while the app is built. The host registers each one with the app's ``Api`` (so it
    appears in the OpenAPI document); two blueprints with the same name stop start-up.
    """


@hookspec
def didmos_cli_commands() -> list[click.Command]:
    """Contribute commands (or command groups) to the ``didmos`` command line.

    Called once when the CLI starts. Returns a list of ``click`` commands; a name that is already taken
    (by the host or another plugin) stops the CLI with a message naming both.
    """


@hookspec
def didmos_resource_types() -> list[ResourceType]:
    """Declare the kinds of directory objects the APIs manage (User, Groups, Organization, ...).

    Called once whenever a :class:`~didmos_host.host.Host` is created (API, worker and CLI alike).
    Returns :class:`~didmos_host.records.ResourceType` records;
    the host indexes them by ``name`` and rejects duplicates.
    """


@hookspec(firstresult=True)
def didmos_attribute_mapping(resource_type: ResourceType) -> dict[str, Any] | None:
    """Return the SCIM attribute <-> LDAP attribute mapping of one resource type.

    Called once per resource type while the app is built. *First result wins*: the built-in mapping is
    ``trylast``; a customer plugin replaces it with ``tryfirst``, or edits it with ``wrapper=True``
    (``mapping = yield``, change it, ``return mapping``). The mapping format is defined by the plugin
    that owns the resource type (``didmos_scim`` documents its own).
    """


@hookspec(firstresult=True)
def didmos_user_name(resource_type: ResourceType, attributes: dict[str, list[str]], attempt: int) -> str | None:
    """Make up the ``userName`` of a resource created without one (the seeds' ``user167i``).

    Called by the SCIM plugin for each create that lacks a ``userName``, with the LDAP attributes about
    to be written. *First result wins*: the built-in generator is ``trylast``. ``attempt`` counts from
    0; when the name is taken already, the hook is called again with the next attempt (at most 10).
    """


@hookspec
def didmos_ldap_pre_operation(operation: LdapOperation, actor: Actor | None) -> None:
    """See (and possibly change or reject) an LDAP operation before it is sent to the directory.

    Called for every search, add, modify, modrdn, delete and bind that goes through ``didmos_ldap``.
    ``operation`` is mutable: an implementation may change its fields in place. To reject it, raise
    :class:`didmos_host.errors.OperationRejected` with a reason; nothing is sent then. ``actor`` is who
    the request is made for, or ``None`` for the system itself. Every implementation runs, ``tryfirst``
    ones first. Returns nothing.
    """


@hookspec
def didmos_ldap_post_operation(operation: LdapOperation, result: Any, actor: Actor | None) -> None:
    """See an LDAP operation and its result after the directory answered.

    Called after every operation that went through ``didmos_ldap`` and succeeded. ``result`` is what
    the operation returned: the list of entries of a search (the number of entries of a paged,
    streamed search), the post-read entry of a write (``None`` without read-back), the new entry or
    new DN of a modrdn, and a ``BindResult`` for a bind.
    Implementations must not raise to undo anything: the write already happened. Returns nothing.
    """


@hookspec(firstresult=True)
def didmos_authenticate(request: flask.Request) -> Actor | None:
    """Find out who is asking.

    Called for every API request that needs an actor. *First result wins*: the first implementation
    that recognises the request's credentials returns an :class:`~didmos_host.records.Actor`. To
    refuse credentials that it recognises but that are wrong, an implementation raises
    :class:`didmos_host.errors.AuthenticationFailed`. ``None`` from all means anonymous.
    """


@hookspec
def didmos_auth_challenges() -> list[str]:
    """The ``WWW-Authenticate`` challenges of the authentication schemes a plugin accepts.

    Called when a request without valid credentials is answered with 401; every implementation's
    challenges are sent (for example ``'Basic realm="didmos", charset="UTF-8"'``).
    """


@hookspec
def didmos_authorize(host: Host, actor: Actor | None, action: Action) -> bool | None:
    """Vote on whether ``actor`` may perform ``action``.

    Called for every action a request needs, by :meth:`didmos_host.host.Host.authorize`; ``host``
    gives access to settings and services (an implementation may leave the argument out). Every
    implementation votes: ``True`` allows, ``False`` denies, ``None`` abstains. Deny wins over allow;
    when nobody votes, the answer is deny.
    """


@hookspec
def didmos_task_handlers() -> list[TaskHandler]:
    """Register asynchronous task handlers: :class:`~didmos_host.records.TaskHandler` records.

    Called once when the host starts (API and worker alike). Tasks are enqueued by handler name; two
    handlers with the same name stop start-up.
    """


@hookspec
def didmos_notification_template_dirs() -> list[Path]:
    """Offer folders of notification (email) templates, to add templates or replace built-in ones.

    Called once when the notification service is built (``Host.create``, when the plugin that sends
    notifications is loaded). Returns a list of folders; each sub-folder not starting with ``_`` is one
    template named after it, holding ``subject.txt`` and ``body.txt`` and optionally ``body.html``
    (Jinja2; ``.html`` autoescaped). Other files are shared (``_layout.html``) and found by
    ``{% extends %}`` and ``{% include %}``. Every implementation runs; for each template and each shared
    file the first folder in call order that has it wins, whole, so a ``tryfirst`` implementation
    replaces a built-in (``trylast``) template. Two plugins giving the same one at the same priority stop
    start-up.
    """


@hookspec(firstresult=True)
def didmos_handle_exception(error: Exception, request: flask.Request) -> flask.Response | None:
    """Turn an exception raised while handling an API request into a response.

    *First result wins*. API plugins answer for their own routes (the SCIM plugin with SCIM error
    bodies); the host's built-in implementation (``trylast``) answers every other error with a JSON
    body and the status of the error, 500 for errors that are not :class:`didmos_host.errors.DidmosError`.
    """


@hookspec
def didmos_directory_migrations() -> list[SchemaMigration]:
    """Declare versioned changes to the directory's configuration (schema, indexes).

    Called by ``didmos directory init`` and ``didmos dev``. Returns
    :class:`~didmos_host.records.SchemaMigration` records; each is applied once, in ``(order, name)``
    order, and recorded in the directory so an upgrade applies only the new ones.
    """


@hookspec
def didmos_directory_entries(settings: Any) -> list[DirectoryEntry]:
    """Declare the entries a directory must contain (base tree, system accounts, default roles, ...).

    Called by ``didmos directory init`` and ``didmos dev`` after the migrations. Returns
    :class:`~didmos_host.records.DirectoryEntry` records; the host adds those that are missing, parents
    before children, and never changes an entry that exists. ``settings`` are the effective settings.
    """


@hookspec
def didmos_readiness_checks(host: Host) -> list[ReadinessCheck]:
    """Name what ``GET /readyz`` must reach before the process counts as ready to serve.

    Called on every ``/readyz`` request. Returns :class:`~didmos_host.records.ReadinessCheck` records
    (two with the same name stop the request with an error); every implementation runs. ``/readyz`` runs
    all checks at once and answers 200 when each returned within ``api.readiness_timeout`` seconds, else
    503 naming those that failed or did not answer. The host checks redis, ``didmos_ldap`` the directory.
    """


@hookspec
def didmos_doctor_checks(host: Host) -> list[DoctorCheck]:
    """Contribute checks to ``didmos doctor``: :class:`~didmos_host.records.DoctorCheck` records.

    Called once per ``didmos doctor`` run, after the settings loaded and validated. Every implementation
    runs; each check's function returns :class:`~didmos_host.records.DoctorFinding` records, each saying
    what is wrong and what to do about it. The host checks the configuration, redis and the worker;
    ``didmos_ldap`` the directory (connection, service account, migrations, overlays); ``didmos_scim``
    the indexes of the attributes its mappings make filterable.
    """


@hookspec
def didmos_metrics_collectors(host: Host) -> list[Any]:
    """Contribute figures read at scrape time to ``GET /metrics`` (queue lengths, counts in the directory).

    Called on every scrape, inside the request. Returns prometheus_client custom collectors: objects
    whose ``collect()`` yields metric families (``prometheus_client.core.GaugeMetricFamily``, ...).
    Every implementation runs. A collector should be cheap (one indexed search, one redis call) and
    should yield nothing, not raise, when what it reads is unreachable. Counters and histograms that a
    plugin updates as things happen need no hook: every prometheus_client metric is exposed.
    ``didmos_tasks`` reports the outbox's failed tasks.
    """
