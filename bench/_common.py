"""What the bench/ scripts share: a private directory with bulk-loaded data, timed slices, figures.

Not a library of the project: nothing outside bench/ imports it. Scripts run as
``.venv/bin/python bench/<script>.py``, so this module is importable as ``_common``.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
GROUPS = "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"
DATA = "ou=data,ou=default-tenant,dc=didmos,dc=de"


# -- the private directory ---------------------------------------------------------------------------

@dataclass
class BenchDirectory:
    """A running private slapd with the didmos schema, base tree and the bulk-loaded data."""

    server: Any  # didmos_host.servers.SlapdServer
    #: Host settings overrides that point didmos at this server (as didmos_host.testing does).
    overrides: dict[str, Any]
    service_dn: str
    service_password: str
    #: Seconds spent per setup step, for the report.
    timings: dict[str, float] = field(default_factory=dict)
    #: What ``write_ldif`` said it wrote.
    description: str = ""


@contextmanager
def bench_directory(write_ldif: Callable[[Path], str], *, keep: bool = False) -> Iterator[BenchDirectory]:
    """Start a private slapd on loopback, initialise it, bulk-load ``write_ldif(path)``'s LDIF, restart it.

    ``write_ldif`` writes the data LDIF to the path it is given and returns a one-line description.
    olcDbNoSync is on (writes are not fsynced): a throwaway benchmark instance, the same for every
    client measured against it. The server is stopped and its directory removed on the way out,
    whatever happens.
    """
    from didmos_host.directory import init_directory
    from didmos_host.host import Host
    from didmos_host.servers import SlapdServer, free_port

    # Short, because the ldapi socket path inside it must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="didmos-bench-"))
    server = SlapdServer(root / "slapd", port=free_port(), rootpw=secrets.token_urlsafe(16),
                         password_hash="{SSHA}", nosync=True)
    password = secrets.token_urlsafe(16)
    overrides = {"directory": {"uri": server.uri, "config_uri": server.ldapi_uri,
                               "bind_password": password, "superadmin_password": secrets.token_urlsafe(12)}}
    bench = BenchDirectory(server, overrides, service_dn=server.service_dn, service_password=password)
    try:
        started = time.perf_counter()
        server.start()
        init_directory(Host.create(overrides))
        server.stop()
        bench.timings["init_s"] = time.perf_counter() - started

        started = time.perf_counter()
        ldif = root / "data.ldif"
        bench.description = write_ldif(ldif)
        bench.timings["ldif_s"] = time.perf_counter() - started

        started = time.perf_counter()
        server.bulk_load(ldif)
        bench.timings["slapadd_s"] = time.perf_counter() - started
        ldif.unlink()

        started = time.perf_counter()
        server.start()
        bench.timings["start_s"] = time.perf_counter() - started
        yield bench
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def raw_connection(uri: str, bind_dn: str, password: str):
    """One python-ldap connection bound as ``bind_dn``, with the options the didmos pool sets."""
    import ldap

    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 3.0)
    conn.set_option(ldap.OPT_TIMEOUT, 10.0)
    conn.simple_bind_s(bind_dn, password)
    return conn


# -- timing --------------------------------------------------------------------------------------------

@dataclass
class Sample:
    """Latencies (seconds) of one client doing one operation, over one or more time slices."""

    latencies: list[float] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        """Operations per second of client time (the sum of the timed calls; the harness excluded)."""
        busy = sum(self.latencies)
        return len(self.latencies) / busy if busy else 0.0

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile (nearest rank) of the latencies, in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000.0


@dataclass
class Side:
    """One client of a comparison: ``op(arg)`` is timed; ``prepare()`` and ``cleanup(arg)`` are not."""

    op: Callable[[Any], Any]
    prepare: Callable[[], Any] = lambda: None
    cleanup: Callable[[Any], Any] | None = None
    sample: Sample = field(default_factory=Sample)


def run_slice(side: Side, seconds: float, record: bool = True) -> None:
    """Call ``side.op`` single-threaded until ``seconds`` of wall time (cleanup included) are over."""
    from time import perf_counter

    op, prepare, cleanup = side.op, side.prepare, side.cleanup
    latencies = side.sample.latencies if record else []
    end = perf_counter() + seconds
    while True:
        arg = prepare()
        t0 = perf_counter()
        op(arg)
        t1 = perf_counter()
        latencies.append(t1 - t0)
        if cleanup is not None:
            cleanup(arg)
        if perf_counter() >= end:
            return


def compare(raw: Side, layer: Side, seconds: float, *, slice_seconds: float = 0.1, warmup: float = 0.2) -> None:
    """Warm both up, then alternate raw and layer slices of ``slice_seconds`` until each had ``seconds``.

    Short alternating slices spread drift over both sides: on a small shared machine the same loopback
    operation drifts by a third within a second, so a few long slices would measure the drift.
    """
    for side in (raw, layer):
        run_slice(side, warmup, record=False)
    rounds = max(2, round(seconds / slice_seconds))
    for _ in range(rounds):
        run_slice(raw, seconds / rounds)
        run_slice(layer, seconds / rounds)


def run_concurrently(sides: list[Side], seconds: float, record: bool = True) -> float:
    """Run every side's :func:`run_slice` in a thread of its own, all started together; return the wall time.

    For concurrent clients: rates are then operations per second of wall time (``len / wall``), not of
    client time. The first error raised by any client is raised here, after all have stopped.
    """
    import threading
    from time import perf_counter

    barrier = threading.Barrier(len(sides) + 1)
    errors: list[BaseException] = []

    def client(side: Side) -> None:
        try:
            barrier.wait()
            run_slice(side, seconds, record)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(side,), daemon=True) for side in sides]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = perf_counter()
    for thread in threads:
        thread.join()
    wall = perf_counter() - started
    if errors:
        raise errors[0]
    return wall


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat; 0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command: state is field 3, utime field 14, stime field 15 (proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine have been busy so far (/proc/stat: user, nice, system, irq,
    softirq and steal), for telling what the measured processes used from what ran beside them."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (for gunicorn: its workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return children


# -- LDAP operations per call, from slapd's access log -------------------------------------------------

_LOG_MARKER = "bench-log-marker-"


def logged_operations(bench: BenchDirectory, calls: list[Callable[[], Any]]) -> list[list[str]]:
    """The LDAP operations slapd receives during each of ``calls``, run one after another (binds included).

    slapd's access log (cn=accesslog) normally records successful writes only; it records every
    operation, failed ones too (``olcAccessLogOps: all``, ``olcAccessLogSuccess: FALSE``), for the calls
    alone, then the previous settings are put back. ``reqStart`` orders the log but does not time it, so
    a marker search (``(cn=bench-log-marker-<nonce>-<k>)``, on a connection of this function's own) precedes
    each call: what the log holds between two markers is one call's. Nothing else may talk to this
    slapd meanwhile. Operations an overlay above accesslog refuses (sssvlv's BUSY) never reach the log.
    Each operation is described as ``<type> <dn> <filter>``.
    """
    import ldap

    config = bench.server.config_connection()
    marker = raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
    prefix = f"(cn={_LOG_MARKER}{secrets.token_hex(4)}-"  # unlike the markers of an earlier call
    [(overlay, _)] = config.search_s("cn=config", ldap.SCOPE_SUBTREE, "(objectClass=olcAccessLogConfig)", ["1.1"])
    # Reading the log back as this process's own identity: without a limit of its own it gets 500 entries.
    log_db = config.search_s("cn=config", ldap.SCOPE_ONELEVEL,
                             "(&(objectClass=olcMdbConfig)(olcSuffix=cn=accesslog))", ["olcLimits"])[0]
    unlimited = f'dn.exact="{bench.server.peercred_dn}" size=unlimited time=unlimited'.encode()
    if unlimited not in log_db[1].get("olcLimits", []):
        config.modify_s(log_db[0], [(ldap.MOD_ADD, "olcLimits", [unlimited])])
    settings = ("olcAccessLogOps", "olcAccessLogSuccess")
    previous = config.search_s(overlay, ldap.SCOPE_BASE, attrlist=list(settings))[0][1]
    config.modify_s(overlay, [(ldap.MOD_REPLACE, "olcAccessLogOps", [b"all"]),
                              (ldap.MOD_REPLACE, "olcAccessLogSuccess", [b"FALSE"])])
    try:
        for k, call in enumerate(calls):
            marker.search_s(PEOPLE, ldap.SCOPE_BASE, f"{prefix}{k})", ["1.1"])
            call()
        marker.search_s(PEOPLE, ldap.SCOPE_BASE, f"{prefix}{len(calls)})", ["1.1"])
    finally:
        config.modify_s(overlay, [(ldap.MOD_REPLACE, name, previous[name]) for name in settings])
        marker.unbind_s()
    logged = config.search_s("cn=accesslog", ldap.SCOPE_ONELEVEL, "(objectClass=auditObject)",
                             ["reqStart", "reqType", "reqDN", "reqFilter", "reqResult"])
    config.unbind_s()
    per_call: list[list[str]] = [[] for _ in calls]
    current = None
    for _, attrs in sorted(logged, key=lambda item: item[1]["reqStart"][0]):
        text = {k: v[0].decode(errors="replace") for k, v in attrs.items()}
        found = text.get("reqFilter", "")
        if found.startswith(prefix):
            current = int(found[len(prefix):-1])
            continue
        if found.startswith(f"(cn={_LOG_MARKER}"):
            current = None  # an earlier call's marker
            continue
        if current is None or current >= len(calls):
            continue  # before the first or after the last marker: no call's
        what = " ".join(filter(None, (text["reqType"], text.get("reqDN", ""), found)))
        if text.get("reqResult", "0") != "0":
            what += f" -> result {text['reqResult']}"
        per_call[current].append(what)
    return per_call


# -- the API in a subprocess ---------------------------------------------------------------------------

def start_api(overrides: dict[str, Any], root: Path, *, workers: int, threads: int,
              timeout: float = 30.0, env: dict[str, str] | None = None, port: int | None = None) -> tuple[Any, int]:
    """``didmos serve`` (gunicorn, gthread) in a subprocess of its own session, on a free loopback port.

    Configured by a settings file in ``root`` (mode 0600: it holds passwords) with ``overrides`` and the
    ``api`` settings; the access log goes to /dev/null and stderr to ``root/api.log``. Returns the
    process (the gunicorn master) and the port once ``/healthz`` answers. ``env`` adds environment
    variables for the server (``PYTHONPATH`` to a plugin that is not installed, for example); ``port``
    (default: a free one) restarts a server where its clients expect it.
    """
    import subprocess
    import sys
    import urllib.request

    from didmos_host.servers import free_port

    port = port or free_port()
    values = {**overrides, "api": {**overrides.get("api", {}), "host": "127.0.0.1", "port": port,
                                   "workers": workers, "threads": threads}}
    settings = root / "bench-api-settings.toml"

    def table(prefix: str, items: dict[str, Any]) -> str:
        plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in items.items() if not isinstance(v, dict))
        nested = "".join(table(f"{prefix}.{k}", v) for k, v in items.items() if isinstance(v, dict))
        return f"[{prefix}]\n{plain}{nested}"

    settings.write_text("".join(table(ns, items) for ns, items in values.items()))
    settings.chmod(0o600)
    env = {**os.environ, **(env or {})}
    env["DIDMOS_SETTINGS_FILES"] = ":".join(filter(None, [str(settings), env.get("DIDMOS_SETTINGS_FILES", "")]))
    log_path = root / "api.log"
    with log_path.open("w") as log:  # the child keeps its own descriptor
        api = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "serve"], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + timeout
    while True:
        if api.poll() is not None:
            raise RuntimeError(f"didmos serve exited with {api.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return api, port
        except OSError:
            if time.monotonic() > deadline:
                stop_api(api)
                raise RuntimeError(f"didmos serve did not answer /healthz within {timeout:g} s") from None
            time.sleep(0.1)


def stop_api(api: Any) -> None:
    """SIGTERM the gunicorn master (it stops its workers); SIGKILL its session after 15 s."""
    import signal
    import subprocess

    if api.poll() is None:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)  # its own session: the master and its workers only
            api.wait()


# -- memory ---------------------------------------------------------------------------------------------

def proc_status_kb(name: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        found = re.search(rf"^{name}:\s+(\d+) kB", status.read(), re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {name} field")
    return int(found.group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``5`` > /proc/self/clear_refs); False when not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


# -- output ---------------------------------------------------------------------------------------------

def rounded(figures: dict[str, float]) -> dict[str, float]:
    """Figures with sensible precision: 3 decimals for ratios, overheads (fractions) and ms, 1 for rates
    and MB."""
    out = {}
    for key, value in figures.items():
        if key.endswith(("_ratio", "_overhead", "_ms")):
            out[key] = round(value, 3)
        else:
            out[key] = round(value, 1)
    return out


def print_figures(figures: dict[str, float]) -> None:
    """The last line of every bench script: one JSON object of its figures."""
    print(json.dumps(rounded(figures), sort_keys=False), flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0))


# -- settings files and child processes -------------------------------------------------------------------

def write_settings_file(values: dict[str, Any], path: Path) -> Path:
    """``values`` (namespace -> settings, nested tables allowed) as a TOML settings file, mode 0600 (it holds
    passwords), for child processes started with ``DIDMOS_SETTINGS_FILES`` pointing at it."""

    def table(prefix: str, items: dict[str, Any]) -> str:
        plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in items.items() if not isinstance(v, dict))
        nested = "".join(table(f"{prefix}.{k}", v) for k, v in items.items() if isinstance(v, dict))
        return f"[{prefix}]\n{plain}{nested}"

    path.write_text("".join(table(ns, items) for ns, items in values.items()))
    path.chmod(0o600)
    return path


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process plus those of its children it has waited for (cutime,
    cstime): for an rq worker, the parent and every work horse that finished."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
