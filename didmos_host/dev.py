"""``didmos dev``: the whole stack on one machine, on its embedded default.

Starts, as our own child processes on 127.0.0.1: a private slapd (cn=config generated in the data
directory), a private redis-server (append-only file in the data directory), the API (gunicorn) and
one task worker. Applies the directory migrations and creates the base tree and the superadmin.
Everything lives in the data directory, so the next run on the same directory keeps all data.
SIGINT/SIGTERM stop every child, API and worker first, the servers last.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from didmos_host.directory import init_directory
from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.servers import RedisServer, ServerError, SlapdServer, free_port, replicate, stop_process

STATE_FILE = "dev-state.json"
SETTINGS_FILE = "settings.toml"


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _lock_data_dir(data_dir: Path):
    """Refuse a second `didmos dev` on the same data: two slapd on one database would corrupt it."""
    import fcntl

    handle = open(data_dir / "dev.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DidmosError(f"another `didmos dev` is running on {data_dir}; stop it or choose another --data-dir") from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _load_state(data_dir: Path, providers: int = 1, reserved: frozenset[int] = frozenset()) -> dict:
    """Secrets and ports chosen on the first run; kept so a restart finds its servers' data."""
    path = data_dir / STATE_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    state.setdefault("rootpw", secrets.token_urlsafe(24))
    state.setdefault("service_password", secrets.token_urlsafe(24))
    for key in ("ldap_port", "redis_port", *(f"ldap_port{n}" for n in range(2, providers + 1))):
        if not state.get(key) or not _port_free(state[key]) or state[key] in reserved:
            state[key] = free_port()
            while state[key] in reserved:  # the API ports: free now, taken once the APIs start
                state[key] = free_port()
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)
    return state


def _write_settings(data_dir: Path, values: dict[str, dict[str, object]]) -> Path:
    """A settings file for the children (and for the user: DIDMOS_SETTINGS_FILES=<it> didmos ...)."""
    lines = ["# Written by `didmos dev` on every start; edit settings elsewhere.\n"]
    for namespace, table in values.items():
        lines.append(f"[{namespace}]\n")
        lines.extend(f"{key} = {json.dumps(value)}\n" for key, value in table.items())
    path = data_dir / SETTINGS_FILE
    path.write_text("".join(lines))
    path.chmod(0o600)
    return path


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"the API exited with status {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise ServerError(f"the API did not answer {url} within {timeout:.0f}s")


def _api_prefixes(base: str) -> list[str]:
    """The first path segment of every route in the running API's OpenAPI document."""
    with urllib.request.urlopen(base + "/openapi.json", timeout=5) as response:
        paths = json.loads(response.read())["paths"]
    return sorted({"/" + path.strip("/").split("/")[0] for path in paths})


def run_dev(*, data_dir: str, port: int, admin_password: str | None, providers: int = 1) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit status.

    With ``providers`` > 1: that many slapd replicating each other (multi-provider syncrepl),
    and per provider one API process (ports ``port``, ``port + 1``, ...) and one worker, each node
    writing to its own provider first and failing over to the others.
    """
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    api_ports = [port + n for n in range(providers)]
    for api_port in api_ports:
        if not _port_free(api_port):
            raise DidmosError(f"port {api_port} on 127.0.0.1 is in use; choose another with --port")
    lock = _lock_data_dir(data)  # noqa: F841 (held until this process exits)
    state = _load_state(data, providers, frozenset(api_ports))
    slapds = [SlapdServer(data / "slapd", port=state["ldap_port"], rootpw=state["rootpw"])]
    slapds += [SlapdServer(data / f"slapd{n}", port=state[f"ldap_port{n}"], rootpw=state["rootpw"])
               for n in range(2, providers + 1)]
    slapd = slapds[0]
    redis_server = RedisServer(data / "redis", port=state["redis_port"], persistence=True)
    children: list[subprocess.Popen] = []
    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        click.echo(f"didmos dev: data in {data}")
        for server in slapds:
            server.start()
        redis_server.start()
        settings_path = _write_settings(data, {
            "api": {"host": "127.0.0.1", "port": port, "workers": 1},
            "log": {"format": "text"},  # a terminal, not a log collector
            "directory": {"uri": " ".join(s.uri for s in slapds),
                          "config_uri": " ".join(s.ldapi_uri for s in slapds),
                          "bind_password": state["service_password"]},
            "redis": {"url": redis_server.url},
        })
        # The user's own settings files come after ours, so they can change anything but where the
        # servers are.
        user_files = os.environ.get("DIDMOS_SETTINGS_FILES", "")
        os.environ["DIDMOS_SETTINGS_FILES"] = ":".join(filter(None, [str(settings_path), user_files]))
        env = dict(os.environ)
        host = Host.create({"directory": {"superadmin_password": admin_password or ""}})
        # cn=config is not replicated: with several providers every migration goes to each of them
        # (again, harmlessly, where it is there: a provider added to an existing --data-dir has none).
        report = init_directory(host, reapply=providers > 1)
        if providers > 1:
            replicate(slapds)
        if report.migrations_applied:
            click.echo(f"  directory migrations applied: {', '.join(report.migrations_applied)}")
        click.echo(f"  directory entries created: {len(report.entries_created)}")
        for line in report.announcements:
            click.echo(f"  {line}")
        if report.generated_password:
            click.echo(f"  superadmin password: {report.generated_password}   (generated; shown only this once)")

        cli = [sys.executable, "-m", "didmos_host.cli"]
        # Own sessions, as for the servers: we stop them in order, API and worker before redis and slapd.
        # Every node lists the providers in the same order: all write to provider 1 while it answers,
        # fail over to the next, and fail back (ldap.failback_seconds); two providers taking writes to
        # one entry at once can lose one of them (docs/deployment.md).
        apis = []
        for api_port in api_ports:
            apis.append(subprocess.Popen([*cli, "serve", "--port", str(api_port)], env=env, start_new_session=True))
            children.append(apis[-1])
            children.append(subprocess.Popen([*cli, "worker"], env=env, start_new_session=True))
        base = f"http://127.0.0.1:{port}"
        for api, api_port in zip(apis, api_ports):
            _wait_http(f"http://127.0.0.1:{api_port}/healthz", api)
        for node, server in enumerate(slapds):
            label = "LDAP" if providers == 1 else f"LDAP {node + 1}"
            click.echo(f"  {label:<11} {server.uri}  (ldapi: {server.ldapi_uri})")
        if providers > 1:
            click.echo(f"              {providers} providers replicating each other (multi-provider syncrepl); "
                       "the APIs write to LDAP 1 while it answers")
        click.echo(f"  redis       {redis_server.url}")
        click.echo(f"  API         {base}/   OpenAPI document: {base}/openapi.json")
        docs_path = host.settings.get("api.docs_path")
        if docs_path:
            click.echo(f"              {base}{docs_path}   (interactive API documentation)")
        for node, api_port in enumerate(api_ports[1:], start=2):
            click.echo(f"  API {node}       http://127.0.0.1:{api_port}/")
        for prefix in _api_prefixes(base):
            click.echo(f"              {base}{prefix}")
        if "basic_auth" in host.services:
            superadmin = host.settings.get("ldap.superadmin.uuid", "<didmosUUID>")
            click.echo("  auth        HTTP Basic: a user's didmosUUID and password, for example")
            click.echo(f"              curl -u {superadmin}:PASSWORD {base}/auth/whoami")
        click.echo(f"  settings    DIDMOS_SETTINGS_FILES={settings_path} didmos config show")
        click.echo("  Ctrl-C stops everything; the next run on the same --data-dir keeps the data.")
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    click.echo(f"didmos dev: {child.args[3]} exited with status {child.returncode}; stopping", err=True)
                    return 1
            time.sleep(0.3)
        return 0
    except (DidmosError, ServerError) as exc:
        click.echo(f"didmos: error: {exc}", err=True)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        for child in reversed(children):
            stop_process(child)
        redis_server.stop()
        for server in reversed(slapds):
            server.stop()
        click.echo("didmos dev: stopped")
