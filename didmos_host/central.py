"""Central settings: one settings document in redis that every node reads (the original's configserver).

With ``central.url`` set (in a settings file or ``DIDMOS_CENTRAL__URL``), :func:`load` runs as a
dynaconf loader between the settings files and the environment variables, so the layers are, lowest
first: plugin defaults, settings files, **the central document**, ``DIDMOS_*`` variables, overrides.
``didmos config show`` names such values' source ``central``.

The document lives in one redis hash (``central.key``): ``revision`` (counts pushes), ``document``
(the settings as JSON), ``pushed_at``, ``pushed_by`` and ``source`` (the file pushed). :func:`push`
builds a complete :class:`~didmos_host.host.Host` with the new document in place of the stored one,
so every plugin's validators and services check it, and stores it only when that works; both fields
change in one MULTI, so a reader sees the old document or the new one, never half of each.

Running processes follow the revision: :class:`LiveApp` (``didmos serve``, ``didmos_host.wsgi``) asks
redis for it at most every ``central.refresh_seconds`` when a request starts and, when it changed,
builds a new host and Flask app and sends new requests there; the old host's services are closed when
its last request has finished. ``didmos worker`` (:class:`RefreshBeforeJob`) does the same before
each job.

Why not ``dynaconf.loaders.redis_loader``: it has no revision to follow (a process could not tell
that anything changed without reading everything), cannot reach redis through Sentinel, and keeps
one hash field per top-level key, so a push of several namespaces is not one change. This module
keeps its loader interface (``load(obj, env, silent, key)``, listed in ``LOADERS_FOR_DYNACONF`` before
the environment loader, where dynaconf puts its own external loaders).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis
import rq
from dynaconf import Dynaconf
from dynaconf.loaders.base import SourceMetadata
from werkzeug.wsgi import ClosingIterator

from didmos_host.errors import ConfigError

log = logging.getLogger("didmos.central")

#: Settings that say where the store is; a node needs them before it can read it, so they cannot be in it.
STORE_KEYS = ("central.url", "central.key", "redis.sentinels", "redis.sentinel_service", "redis.sentinel_password")
DEFAULT_KEY = "didmos:settings"
LOADER = "didmos_host.central"
#: Where load_settings leaves the store's location for the loader, and the loader the revision it read
#: (``*_FOR_DYNACONF`` keys are dynaconf's internals: ``didmos config show`` does not list them).
_LOCATION = "DIDMOS_CENTRAL_FOR_DYNACONF"
_REVISION = "DIDMOS_CENTRAL_REVISION_FOR_DYNACONF"
#: A document being pushed: while set, the loader uses it instead of the stored one (validation).
_candidate: ContextVar[dict | None] = ContextVar("didmos_central_candidate", default=None)


# -- where the store is ---------------------------------------------------------------------------------


class _Table(dict):
    """A dict whose keys are also attributes, like a dynaconf settings table."""

    __getattr__ = dict.__getitem__


@dataclass(frozen=True)
class Location:
    """The central store: a redis URL (reached through Sentinel when ``sentinels``) and the hash's key."""

    url: str
    key: str = DEFAULT_KEY
    sentinels: Any = ()
    sentinel_service: str = "mymaster"
    sentinel_password: str = ""

    def describe(self) -> str:
        from didmos_host.sentinel import describe_redis

        where = describe_redis(self._settings())
        return f"{where} (key {self.key!r})"

    def _settings(self):
        """What :mod:`didmos_host.sentinel` reads: ``settings.redis.url``, ``.get("sentinels")``, ..."""
        return _Table(redis=_Table(url=self.url, sentinels=list(self.sentinels or ()),
                                   sentinel_service=self.sentinel_service, sentinel_password=self.sentinel_password))

    def connect(self) -> redis.Redis:
        """A client with short timeouts: a request start or a job must not wait long for it."""
        from didmos_host.sentinel import connect_redis

        return connect_redis(self._settings(), socket_connect_timeout=2, socket_timeout=2, decode_responses=True)


def _location_of(tree: Mapping[str, Any]) -> Location | None:
    central, redis_cfg = _table(tree, "central"), _table(tree, "redis")
    url = central.get("url") or ""
    if not url:
        return None
    return Location(url=str(url), key=str(central.get("key") or DEFAULT_KEY),
                    sentinels=redis_cfg.get("sentinels") or (),
                    sentinel_service=str(redis_cfg.get("sentinel_service") or "mymaster"),
                    sentinel_password=str(redis_cfg.get("sentinel_password") or ""))


def _table(tree: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    for key, value in tree.items():
        if str(key).lower() == name and isinstance(value, Mapping):
            return {str(k).lower(): v for k, v in value.items()}
    return {}


def location_of_settings(settings) -> Location | None:
    """The store a host's (loaded) settings name; None when ``central.url`` is empty."""
    return _location_of({"central": dict(settings.get("central") or {}), "redis": dict(settings.get("redis") or {})})


def location_before_loading(files: list[str], overrides: Mapping[str, Any] | None) -> Location | None:
    """The store named by the settings files, the environment and the overrides: what the loader needs
    before the settings are loaded (the central document itself cannot move the store)."""
    from didmos_host.config import flatten

    early = Dynaconf(envvar_prefix="DIDMOS", settings_files=files, environments=False, load_dotenv=False,
                     merge_enabled=True)
    tree = {"central": dict(early.get("central") or {}), "redis": dict(early.get("redis") or {})}
    for key, value in flatten(overrides or {}):
        namespace, _, rest = key.partition(".")
        if namespace in tree and rest and "." not in rest:
            tree[namespace][rest] = value
    return _location_of(tree)


def dynaconf_options(files: list[str], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Extra ``Dynaconf(...)`` options of :func:`didmos_host.config.load_settings`: none without a
    store; else this module as a loader before the environment's."""
    location = location_before_loading(files, overrides)
    if location is None:
        return {}
    return {"LOADERS_FOR_DYNACONF": [LOADER, "dynaconf.loaders.env_loader"], _LOCATION: location.__dict__}


# -- reading and writing the document ------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """What the store holds: revision 0 and no data when nothing was ever pushed."""

    revision: int = 0
    data: dict = field(default_factory=dict)
    pushed_at: str = ""
    pushed_by: str = ""
    source: str = ""


class StoreUnreachable(ConfigError):
    """The central store did not answer (at start-up this stops the process; later it is retried)."""


def _unreachable(location: Location, exc: Exception) -> ConfigError:
    return StoreUnreachable(f"the central settings store at {location.describe()} cannot be reached: {exc} "
                       f"(setting central.url; empty it to run without central settings)")


def read(location: Location, client: redis.Redis | None = None) -> Stored:
    """The stored document. Raises :class:`ConfigError` when redis cannot be reached or holds garbage."""
    client = client or location.connect()
    try:
        fields = client.hgetall(location.key)
    except redis.RedisError as exc:
        raise _unreachable(location, exc) from exc
    if not fields:
        return Stored()
    try:
        data = json.loads(fields.get("document") or "{}")
        revision = int(fields.get("revision") or 0)
    except ValueError as exc:
        raise ConfigError(f"the central settings at {location.describe()} are not a didmos settings document "
                          f"({exc}); push one with `didmos config push FILE`") from exc
    return Stored(revision=revision, data=data, pushed_at=fields.get("pushed_at", ""),
                  pushed_by=fields.get("pushed_by", ""), source=fields.get("source", ""))


def stored_revision(location: Location, client: redis.Redis) -> int:
    """Only the revision (one HGET): what running processes ask every ``central.refresh_seconds``."""
    return int(client.hget(location.key, "revision") or 0)


def load(obj, env=None, silent=True, key=None, validate=False) -> None:
    """dynaconf's loader interface: put the central document into ``obj`` as the layer ``central``."""
    where = obj.get(_LOCATION)
    if not where:
        return
    location = Location(**where)
    candidate = _candidate.get()
    stored = Stored(revision=-1, data=candidate) if candidate is not None else read(location)
    data = dict(stored.data)
    for dotted in _store_keys_in(data):  # only a document written to redis around `didmos config push`
        log.warning("ignoring %s in the central settings: it must come from a settings file or the environment",
                    dotted)
        namespace, _, rest = dotted.partition(".")
        data = {name: ({k: v for k, v in table.items() if k.lower() != rest}
                       if name.lower() == namespace and isinstance(table, Mapping) else table)
                for name, table in data.items()}
    obj.set(_REVISION, stored.revision, loader_identifier="central")
    if key is not None:
        data = {name: value for name, value in data.items() if name.upper() == key.upper()}
    if data:
        obj.update(data, loader_identifier=SourceMetadata("central", location.key), validate=validate)


def _store_keys_in(data: Mapping[str, Any]) -> list[str]:
    from didmos_host.config import flatten

    found = []
    for dotted, _ in flatten(data):
        found += [name for name in STORE_KEYS if dotted == name or dotted.startswith(name + ".")]
    return sorted(set(found))


def loaded_revision(settings) -> int | None:
    """The central revision a host's settings were built from; None without central settings."""
    revision = settings.get(_REVISION)
    return None if revision is None else int(revision)


def push(path: str, *, dry_run: bool = False) -> tuple[Stored, Location]:
    """Check the TOML file ``path`` as this node's central settings, then store it as the next revision.

    The check is a complete start-up (settings of every plugin, their validators, their services) with
    the file in place of the stored document; any :class:`ConfigError` it raises leaves the store as it
    was. The file replaces the whole stored document. Returns what is now stored (with ``dry_run``,
    what would be, with the current revision) and where.
    """
    from didmos_host.config import settings_files
    from didmos_host.host import Host

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    location = location_before_loading(settings_files(), None)
    if location is None:
        raise ConfigError("central.url is empty: set it (in a settings file or DIDMOS_CENTRAL__URL) to the redis "
                          "URL of the central settings store")
    for dotted in _store_keys_in(data):
        variable = "DIDMOS_" + "__".join(part.upper() for part in dotted.split("."))
        raise ConfigError(f"{dotted} cannot be in the central settings: every node needs it to find the store; "
                          f"set it in a settings file or {variable}")
    token = _candidate.set(data)
    try:
        candidate = Host.create()
    finally:
        _candidate.reset(token)
    retire(candidate)
    client = location.connect()
    current = read(location, client)
    if dry_run:
        return Stored(current.revision, data), location
    meta = {"document": json.dumps(data, default=str),
            "pushed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "pushed_by": f"{_user()}@{socket.gethostname()}", "source": os.path.abspath(path)}
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(location.key, "revision", 1)
            pipe.hset(location.key, mapping=meta)
            revision, _ = pipe.execute()
    except redis.RedisError as exc:
        raise _unreachable(location, exc) from exc
    return Stored(int(revision), data, meta["pushed_at"], meta["pushed_by"], meta["source"]), location


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def masked(data: Mapping[str, Any], records, prefix: str = "") -> dict[str, Any]:
    """``data`` with every secret value replaced by ``********`` (the rule of ``didmos config show``)."""
    from didmos_host.config import MASK, is_secret

    shown = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}".lower()
        if value not in (None, "") and is_secret(dotted, records):
            shown[key] = MASK
        elif isinstance(value, Mapping):
            shown[key] = masked(value, records, dotted + ".")
        else:
            shown[key] = value
    return shown


def pull(*, show_secrets: bool = False) -> tuple[Stored, Location]:
    """What the store holds, secrets masked unless ``show_secrets``. Needs no valid settings beyond
    ``central.url``, so that a document this node would refuse can still be read."""
    from didmos_host.config import namespace_records, settings_files
    from didmos_host.plugins import create_plugin_manager

    location = location_before_loading(settings_files(), None)
    if location is None:
        raise ConfigError("central.url is empty: set it (in a settings file or DIDMOS_CENTRAL__URL) to the redis "
                          "URL of the central settings store")
    stored = read(location)
    if not show_secrets:
        records = namespace_records(create_plugin_manager())
        stored = Stored(stored.revision, masked(stored.data, records), stored.pushed_at, stored.pushed_by,
                        stored.source)
    return stored, location


# -- following the revision in running processes ----------------------------------------------------


def retire(host) -> None:
    """Close what a host's services hold (directory connection pools, the entry cache's stream) once
    nothing uses the host any more. Services without ``close()`` are left to the garbage collector."""
    closed: set[int] = set()
    for name, service in list(host.services.items()):
        close = getattr(service, "close", None)
        if id(service) in closed or not callable(close):
            continue
        closed.add(id(service))
        try:
            close()
        except Exception as exc:  # a half-broken old service must not break the new one
            log.warning("closing service %s of a retired host: %s", name, exc)


class Follower:
    """Tells, at most every ``central.refresh_seconds``, whether the stored revision differs from the
    one ``host`` was built from, and builds the new host when it does."""

    def __init__(self, host):
        self.host = host
        self.location = location_of_settings(host.settings)
        self.refresh_seconds = float(host.settings.central.refresh_seconds)
        self._next = time.monotonic()  # the first request or job checks: the host may be older than this
        self._client: redis.Redis | None = None
        self._refused: int | None = None  # a revision that failed here: not tried again every interval

    @property
    def enabled(self) -> bool:
        return self.location is not None

    def due(self) -> bool:
        return self.enabled and time.monotonic() >= self._next

    def newer_host(self, build: Callable[[Any], Any] = lambda host: host):
        """``(host, built)`` for the newest revision, or None when nothing changed (or the check is not
        due, redis cannot be reached, or the new settings fail here: the process keeps what it has).
        ``build(host)`` makes what the caller swaps in (a Flask app); it may raise ConfigError too."""
        if not self.due():
            return None
        self._next = time.monotonic() + self.refresh_seconds
        current = loaded_revision(self.host.settings)
        try:
            if self._client is None:
                self._client = self.location.connect()
            stored = stored_revision(self.location, self._client)
        except (redis.RedisError, ValueError) as exc:
            log.warning("cannot check the central settings at %s: %s; keeping revision %s",
                        self.location.describe(), exc, current)
            return None
        if stored == current or stored == self._refused:
            return None
        try:
            host = self.host.recreate()
        except StoreUnreachable as exc:  # gone between the two reads: try again next time
            log.warning("%s; keeping revision %s", exc, current)
            return None
        except Exception as exc:
            self._refused = stored
            log.error("central settings revision %s not applied, keeping revision %s: %s", stored, current, exc)
            return None
        try:
            built = build(host)
        except Exception as exc:
            retire(host)
            self._refused = stored
            log.error("central settings revision %s not applied, keeping revision %s: %s", stored, current, exc)
            return None
        log.warning("central settings revision %s applied (was %s)", loaded_revision(host.settings), current)
        self.host = host
        return host, built


class LiveApp:
    """A WSGI app serving the Flask app of the newest central settings revision.

    At the start of a request, at most every ``central.refresh_seconds``, one thread asks redis for the
    revision; when it changed, that thread builds a new host and app (the request waits for it) while
    other requests keep going to the old app. Requests that started on the old app finish there; when
    the last of them has, the old host's services are closed (:func:`retire`).
    """

    def __init__(self, app):
        from didmos_host.app import _build

        self.app = app
        self._build = _build
        self._follower = Follower(app.extensions["didmos"])
        self._checking = threading.Lock()
        self._counting = threading.Lock()
        self._in_flight: dict[Any, int] = {app: 0}

    @property
    def host(self):
        return self.app.extensions["didmos"]

    def __call__(self, environ, start_response):
        if self._follower.due() and self._checking.acquire(blocking=False):
            try:
                self._refresh()
            finally:
                self._checking.release()
        with self._counting:
            app = self.app
            self._in_flight[app] += 1
        try:
            response = app(environ, start_response)
        except BaseException:
            self._finished(app)
            raise
        return ClosingIterator(response, lambda: self._finished(app))

    def _refresh(self) -> None:
        found = self._follower.newer_host(self._build)
        if found is None:
            return
        _, new_app = found
        with self._counting:
            old, self.app = self.app, new_app
            self._in_flight[new_app] = 0
            idle = self._in_flight[old] == 0
            if idle:
                del self._in_flight[old]
        if idle:
            retire(old.extensions["didmos"])

    def _finished(self, app) -> None:
        with self._counting:
            self._in_flight[app] -= 1
            idle = app is not self.app and self._in_flight[app] == 0
            if idle:
                del self._in_flight[app]
        if idle:
            retire(app.extensions["didmos"])


def live_app(app):
    """``app`` wrapped in a :class:`LiveApp` when its settings use a central store, else ``app``."""
    return LiveApp(app) if location_of_settings(app.extensions["didmos"].settings) is not None else app


class RefreshBeforeJob:
    """Mixin for an rq worker class: before each job, swap in a new host when the central settings
    changed (checked at most every ``central.refresh_seconds``; the job runs, or is forked, after the swap).

    ``didmos_follower`` follows the revision; ``didmos_use_host(host)`` makes the worker use a new host.
    """

    didmos_follower: Follower | None = None
    didmos_use_host: Callable[[Any], None] | None = None

    def execute_job(self, job, queue):
        follower = self.didmos_follower
        if follower is not None:
            old = follower.host
            found = follower.newer_host()
            if found is not None:
                if self.didmos_use_host is not None:
                    self.didmos_use_host(found[0])
                retire(old)
        return super().execute_job(job, queue)


def worker_class(host, base: type[rq.Worker], use_host: Callable[[Any], None]) -> type[rq.Worker]:
    """The rq worker class ``didmos worker`` runs for ``host``: ``base`` itself without central settings,
    else ``base`` with :class:`RefreshBeforeJob`, which calls ``use_host(new host)`` between jobs."""
    if location_of_settings(host.settings) is None:
        return base
    return type(f"Refreshing{base.__name__}", (RefreshBeforeJob, base),
                {"didmos_follower": Follower(host), "didmos_use_host": staticmethod(use_host)})
