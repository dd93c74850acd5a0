"""pytest fixtures for didmos and its plugins, published as the pytest plugin ``didmos``.

Any project with ``didmos-host`` installed gets them (entry point ``pytest11``):

``didmos_slapd``
    a real slapd with the didmos schema and base tree (session-scoped, private port and directory,
    stopped at the end). The superadmin's password is :data:`SUPERADMIN_PASSWORD`.
``didmos_redis``
    a real redis-server without persistence (session-scoped).
``didmos_overrides``
    the settings overrides that point didmos at those two servers.
``didmos_own_overrides``
    the same with a slapd of the test module's own (module-scoped), for tests that must see only
    what they wrote.
``wait_for(condition, timeout, what)``
    polls ``condition`` until it is true (replication, workers); AssertionError naming ``what``.
``running_providers(path, count)``, ``providers_overrides(servers, first)``
    a context manager (not a fixture) starting ``count`` slapd providers that replicate each other,
    and the settings overrides of a node that writes to ``servers[first]`` first.
``running_dev(data_dir, port, password)``
    a context manager (not a fixture) running ``didmos dev`` in a subprocess, for end-to-end tests.
``make_app``
    ``make_app(*plugins, **overrides)`` builds an app with throwaway ``plugins`` registered for this
    test only (objects or modules with ``@hookimpl`` functions) and extra settings ``overrides``.
``app``, ``client``
    ``make_app()`` and its Flask test client.

Servers start only when a test asks for them, so loading this plugin costs nothing otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

SUPERADMIN_PASSWORD = "superadmin-test-password"
#: The didmosUUID of the superadmin ``didmos directory init`` creates (setting ``ldap.superadmin.uuid``).
SUPERADMIN_ID = "00000000-0000-0000-0000-000000000002"


def basic_auth(user: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP Basic credentials, for a test client's ``headers=``."""
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@contextmanager
def running_slapd(path) -> Iterator[Any]:
    """A started :class:`~didmos_host.servers.SlapdServer` in ``path`` with migrations and base entries
    applied, stopped on exit."""
    from didmos_host.directory import init_directory
    from didmos_host.host import Host
    from didmos_host.servers import SlapdServer, free_port

    server = SlapdServer(path, port=free_port(), rootpw=secrets.token_urlsafe(16), password_hash="{SSHA}",
                         nosync=True)
    server.start()
    server.service_password = secrets.token_urlsafe(16)
    try:
        host = Host.create(_directory_overrides(server))
        server.init_report = init_directory(host)
        yield server
    finally:
        server.stop()


def wait_for(condition, timeout: float = 30.0, what: str = "the condition", interval: float = 0.1) -> Any:
    """Call ``condition`` until it returns something true and return that; an AssertionError naming
    ``what`` when ``timeout`` seconds pass first (for what other processes do: replication, workers)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


@contextmanager
def running_providers(path, count: int = 2) -> Iterator[list[Any]]:
    """``count`` started :class:`~didmos_host.servers.SlapdServer` that replicate each other
    (multi-provider syncrepl), the didmos schema on each and the base entries written on the
    first and replicated to all; stopped on exit. :func:`providers_overrides` points didmos at them."""
    from pathlib import Path

    from didmos_host.directory import init_directory
    from didmos_host.host import Host
    from didmos_host.servers import SlapdServer, free_port, replicate, wait_replicated

    rootpw = secrets.token_urlsafe(16)
    servers = [SlapdServer(Path(path) / f"provider{index + 1}", port=free_port(), rootpw=rootpw,
                           password_hash="{SSHA}", nosync=True) for index in range(count)]
    try:
        for server in servers:
            server.start()
        password = secrets.token_urlsafe(16)
        for server in servers:
            server.service_password = password
        init_directory(Host.create(providers_overrides(servers)))
        replicate(servers)
        wait_replicated(servers, servers[0].service_dn)
        yield servers
    finally:
        for server in servers:
            server.stop()


def providers_overrides(servers, first: int = 0) -> dict[str, Any]:
    """Settings overrides for replicating ``servers``: ``directory.uri`` lists them all, starting with
    ``servers[first]`` (the one this node writes to while it answers), ``config_uri`` every ldapi."""
    ordered = servers[first:] + servers[:first]
    return {
        "directory": {
            "uri": " ".join(server.uri for server in ordered),
            "config_uri": " ".join(server.ldapi_uri for server in ordered),
            "bind_password": servers[0].service_password,
            "superadmin_password": SUPERADMIN_PASSWORD,
        }
    }


@contextmanager
def running_dev(data_dir, port: int, password: str, *, timeout: float = 90) -> Iterator[str]:
    """``didmos dev`` as a user runs it (its own slapd, redis, API and worker), in a subprocess; yields
    the API's base URL and stops it all with Ctrl-C (SIGINT) on exit."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    data_dir = Path(data_dir)
    log_path = data_dir.parent / f"{data_dir.name}-dev.log"
    with open(log_path, "w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "didmos_host.cli", "dev", "--data-dir", str(data_dir), "--port", str(port),
             "--admin-password", password],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + timeout
            while "Ctrl-C stops everything" not in log_path.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"didmos dev did not start:\n{log_path.read_text()}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def didmos_slapd(tmp_path_factory) -> Iterator[Any]:
    """A started :class:`~didmos_host.servers.SlapdServer` with migrations and base entries applied."""
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture(scope="module")
def didmos_own_overrides(tmp_path_factory, didmos_redis) -> Iterator[dict[str, Any]]:
    """Like ``didmos_overrides``, with a slapd of the test module's own (about a second to start): for
    tests that need a directory only they write to, such as checks expecting what they created on the
    first page of an unfiltered list."""
    with running_slapd(tmp_path_factory.mktemp("own-slapd")) as server:
        yield _merge(_directory_overrides(server), {"redis": {"url": didmos_redis.url}})


def _directory_overrides(server) -> dict[str, Any]:
    return {
        "directory": {
            "uri": server.uri,
            "config_uri": server.ldapi_uri,
            "bind_password": server.service_password,
            "superadmin_password": SUPERADMIN_PASSWORD,
        }
    }


@pytest.fixture(scope="session")
def didmos_redis(tmp_path_factory) -> Iterator[Any]:
    """A started :class:`~didmos_host.servers.RedisServer` (no persistence)."""
    from didmos_host.servers import RedisServer, free_port

    server = RedisServer(tmp_path_factory.mktemp("redis"), port=free_port(), persistence=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def didmos_overrides(didmos_slapd, didmos_redis) -> dict[str, Any]:
    """Settings overrides pointing at the test slapd and redis (session-scoped: use from any scope)."""
    return _merge(_directory_overrides(didmos_slapd), {"redis": {"url": didmos_redis.url}})


@pytest.fixture
def make_app(didmos_overrides):
    """``make_app(*plugins, **overrides)``: an app with throwaway plugins and settings for one test."""
    from didmos_host.app import create_app

    def make(*plugins: Any, **overrides: Any):
        app = create_app(extra_plugins=plugins, **_merge(didmos_overrides, overrides))
        app.config["TESTING"] = True
        return app

    return make


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
