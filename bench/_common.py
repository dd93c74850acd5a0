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
    """Figures with sensible precision: 3 decimals for ratios and ms, 1 for rates and MB."""
    out = {}
    for key, value in figures.items():
        if key.endswith(("_ratio", "_ms")):
            out[key] = round(value, 3)
        else:
            out[key] = round(value, 1)
    return out


def print_figures(figures: dict[str, float]) -> None:
    """The last line of every bench script: one JSON object of its figures."""
    print(json.dumps(rounded(figures), sort_keys=False), flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0))
