"""The small typed records that hooks exchange."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class SettingsNamespace:
    """Defaults (and, for the owner, validators) of one settings namespace.

    ``name`` is the namespace (``ldap`` -> ``settings.ldap.*``, ``DIDMOS_LDAP__URI``).
    ``defaults`` is a nested dict of default values. ``validators`` are ``dynaconf.Validator`` objects
    with keys written relative to the namespace (``"uri"``, not ``"ldap.uri"``); only the plugin that
    owns the namespace declares them. ``secrets`` lists the keys whose values ``didmos config show``
    masks; keys named like passwords, secrets and tokens are masked anyway.
    ``descriptions`` maps each key to one line, for ``docs/settings.md`` (a test checks every key is there).
    """

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)
    validators: tuple[Any, ...] = ()
    secrets: tuple[str, ...] = ()
    descriptions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Actor:
    """Who a request is made for, as established by the authentication hook."""

    dn: str
    uuid: str
    tenant: str | None = None
    method: str = "basic"
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Action:
    """One thing a request wants to do, for the authorization hook to vote on.

    ``operation`` is one of ``read``, ``write``, ``create``, ``delete``, ``modify-add``,
    ``modify-del``, ``modify-replace`` or one a plugin added. ``resource_type`` is a registered
    resource type name, ``target`` the DN it applies to (or the parent DN for ``create``), and
    ``attributes`` the attributes involved, where that matters.
    """

    operation: str
    resource_type: str | None = None
    target: str | None = None
    attributes: tuple[str, ...] = ()


@dataclass
class LdapOperation:
    """One LDAP operation on its way to the directory; pre-interceptors may change its fields.

    ``kind`` says which operation it is; ``dn`` is the entry (or the search base). For a search,
    ``scope``, ``filter`` and ``attributes`` apply; for add, ``attributes`` holds the entry; for modify,
    ``changes`` holds python-ldap modlist tuples; for modrdn, ``new_rdn`` and ``new_superior``.
    ``controls`` are python-ldap request controls to send along.
    """

    kind: Literal["search", "add", "modify", "modrdn", "delete", "bind"]
    dn: str
    scope: int | None = None
    filter: str | None = None
    attributes: Any = None
    changes: list[tuple[Any, ...]] = field(default_factory=list)
    new_rdn: str | None = None
    new_superior: str | None = None
    controls: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class ResourceType:
    """A kind of directory object managed through the APIs.

    ``name`` is the SCIM resource type name (``User``), ``endpoint`` its path (``/Users``),
    ``schema`` its core schema URN, ``extensions`` the URNs of schema extensions it supports,
    ``object_classes`` the LDAP object classes of its entries, and ``base`` the settings key (or DN)
    of the subtree where new entries go by default.
    """

    name: str
    endpoint: str
    schema: str
    object_classes: tuple[str, ...]
    base: str
    extensions: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class TaskHandler:
    """An asynchronous task that plugins can enqueue by ``name``.

    ``function(payload: dict, context: TaskContext)`` does the work; it must be idempotent because a
    task may run again after a worker dies. ``queue`` is the rq queue; ``retries`` and
    ``retry_intervals`` (seconds) say how often and how long after a failure it runs again.
    """

    name: str
    function: Callable[..., Any]
    queue: str = "default"
    retries: int = 3
    retry_intervals: tuple[int, ...] = (10, 60, 300)
    timeout: int = 600


@dataclass(frozen=True)
class SchemaMigration:
    """A versioned change to the directory configuration, applied once.

    ``name`` is unique and stable (``didmos_ldap.0001-schema``); migrations run sorted by
    ``(order, name)``. ``ldif`` is an LDIF file of records to add (with or without ``changetype: add``)
    and ``changetype: modify`` records, applied to cn=config; lines starting with ``#`` are comments. Placeholders: ``{suffix_db}`` is the DN of the suffix's database entry (for
    example ``olcDatabase={2}mdb,cn=config``), ``{overlay:NAME}`` the DN of overlay NAME on it, and
    ``{setting:KEY}`` the value of a setting (``{setting:ldap.base_dn}``).
    """

    name: str
    ldif: Path
    order: int = 100


@dataclass(frozen=True)
class DirectoryEntry:
    """An entry the directory must contain; created when missing, never changed when present.

    ``attributes`` maps attribute names to lists of str values. ``announce`` is printed by
    ``didmos dev`` and ``didmos directory init`` when the entry is created now (for example
    "superadmin created"); a generated superadmin password is reported separately, once.
    """

    dn: str
    attributes: dict[str, list[str]]
    announce: str | None = None


@dataclass(frozen=True)
class ReadinessCheck:
    """One thing ``/readyz`` asks before it answers "ready": a server didmos cannot work without.

    ``function(timeout)`` checks it within ``timeout`` seconds (use it for the socket timeouts) and
    returns normally when it answers, optionally with a short detail string; it raises with a message
    saying what does not answer. The message is sent to the probe, so it must hold no secrets.
    """

    name: str
    function: Callable[[float], str | None]


@dataclass(frozen=True)
class DoctorFinding:
    """One result of ``didmos doctor``: ``status`` ``ok``, ``problem`` or ``skipped``.

    ``check`` names what was looked at (``directory.migrations``), ``message`` what was found, and
    ``fix``, for a problem, what the operator should do (``run `didmos directory init```).
    """

    check: str
    status: Literal["ok", "problem", "skipped"]
    message: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorCheck:
    """A group of ``didmos doctor`` checks a plugin contributes.

    ``function(host)`` returns a list of :class:`DoctorFinding`; an exception it raises is reported as
    a problem of the check ``name``. Checks run in ``(order, name)`` order; the host's configuration
    check is 0, the directory's 10, redis 20, the worker 30.
    """

    name: str
    function: Callable[[Any], list[DoctorFinding]]
    order: int = 100
