"""The one place didmos makes redis clients: straight from ``redis.url``, or through Redis Sentinel.

With ``redis.sentinels`` set, every client (rq queues, the worker, the periodic tasks, the token
revocation list, the central settings store) asks the sentinels for the current primary of
``redis.sentinel_service`` (``redis.sentinel.Sentinel(...).master_for(...)``). After a failover the
next command on a broken connection fails once, and the connection after it goes to the new primary.
``redis.url`` still gives the database number, the user name and password of the primary and
replicas, and ``rediss://`` for TLS; its host and port are not used then.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from typing import Any

import redis
from redis.connection import parse_url
from redis.sentinel import Sentinel

#: ``host:port`` of one sentinel; ``[::1]:26379`` for an IPv6 address.
_ADDRESS = re.compile(r"^(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\s\[\]]+)):(?P<port>\d{1,5})$")


def sentinel_addresses(value: Any) -> list[tuple[str, int]]:
    """``redis.sentinels`` as ``(host, port)`` pairs: a list of ``"host:port"`` strings, or one string of
    them separated by spaces or commas. Raises ``ValueError`` saying which item is wrong."""
    if isinstance(value, str):
        items = [item for item in re.split(r"[\s,]+", value) if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError(f"must be a list of 'host:port' strings, got {value!r}")
    addresses = []
    for item in items:
        match = _ADDRESS.match(item) if isinstance(item, str) else None
        if not match or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"must be a list of 'host:port' strings such as '10.0.0.5:26379', got {item!r}")
        addresses.append((match["ipv6"] or match["host"], int(match["port"])))
    return addresses


def uses_sentinel(settings) -> bool:
    """Whether ``redis.sentinels`` names any sentinel."""
    return bool(sentinel_addresses(settings.redis.get("sentinels") or []))


def describe_redis(settings) -> str:
    """Where redis is, for error messages: the URL, or the Sentinel service and its sentinels."""
    cfg = settings.redis
    addresses = sentinel_addresses(cfg.get("sentinels") or [])
    if not addresses:
        return _without_password(cfg.url)
    return (f"the primary of Sentinel service {cfg.sentinel_service!r} (sentinels "
            f"{', '.join(f'{host}:{port}' for host, port in addresses)})")


def _without_password(url: str) -> str:
    """``redis://:secret@host:6379/0`` as ``redis://:********@host:6379/0``: messages must not carry it."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:********@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def _driver_options() -> dict[str, Any]:
    """What redis-py sends as ``CLIENT SETINFO``, given once: left to itself, it looks its own version up
    with ``importlib.metadata`` for every new connection (about 0.4 ms; in every work horse of a forking
    ``didmos worker``, whose connections are new)."""
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7.1 has only the (later deprecated) lib_version
        return {"lib_version": redis.__version__}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


def connect_redis(settings, *, url: str | None = None, **options: Any) -> redis.Redis:
    """A redis client (with its own connection pool) for the settings' ``redis`` namespace.

    ``options`` are redis-py connection options (``socket_timeout=...``). With ``url``, that URL is
    used instead of ``redis.url``, still through Sentinel when ``redis.sentinels`` is set (the central
    settings store gives its own URL so). Nothing is connected until the first command.
    """
    cfg = settings.redis
    url = url or cfg.url
    options = {**_driver_options(), **options}
    addresses = sentinel_addresses(cfg.get("sentinels") or [])
    if not addresses:
        return redis.Redis.from_url(url, **options)
    primary = parse_url(url)  # db, username, password; host and port come from the sentinels
    for key in ("host", "port", "path"):
        primary.pop(key, None)
    if primary.pop("connection_class", None) is redis.SSLConnection:
        primary["ssl"] = True
    primary.update(options)
    sentinel_options = {key: value for key, value in options.items()
                        if key.startswith("socket_") or key in ("driver_info", "lib_version")}
    if cfg.get("sentinel_password"):
        sentinel_options["password"] = cfg.sentinel_password
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options)
    return sentinel.master_for(cfg.sentinel_service, **primary)
