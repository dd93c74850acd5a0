"""What ``didmos import`` costs against raw ``ldapadd -c`` of the same entries, in the same run.

Writes one LDIF of N users shaped as ``POST /Users`` stores them (userName, name, displayName, a work
email, a title, the object classes and role a SCIM create gives), then:

1. ``ldapadd -c`` of that file, bound as the service account, into a fresh private slapd;
2. ``didmos import`` of the same file (``python -m didmos_host.cli import``, a subprocess, so start-up
   is counted) into another fresh slapd with the same configuration: every row through the SCIM
   service, the LDAP interceptors and the PDP, as the superadmin.

Both slapds are built like the test fixtures' (``{SSHA}``, olcDbNoSync on: writes are not fsynced, the
same for both sides) and initialised with ``init_directory``; both sides are checked to have added all N
users. Prints users/s for each, the CPU seconds of slapd and of the client per side, and as the last
line one JSON object; ``import_ratio`` = didmos / ldapadd users per second (target >= 0.7), and
``import_cpu_ratio`` = ldapadd / didmos CPU (slapd + client) per user.

    .venv/bin/python bench/import.py [--users N] [--workers W]
    .venv/bin/python bench/import.py --users 100000      # the issue's figure (several minutes)
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PEOPLE, cores, machine_busy_seconds, print_figures, process_cpu_seconds, write_settings_file  # noqa: E402

RBAC = "ou=rbac,ou=default-tenant,dc=didmos,dc=de"
NEW_USER_ROLE = f"cn=standarduser,ou=roles,{RBAC}"  # pdp.new_user_roles: what a SCIM create assigns
TARGET = 0.7


def write_users(path: Path, users: int, seed: int) -> None:
    """N users as a SCIM create stores them, one LDIF record each (the same file for both sides)."""
    rng = uuid.UUID(int=seed)
    with path.open("w") as out:
        for i in range(users):
            user_id = uuid.uuid5(rng, str(i))
            uid = f"imp{i:06d}"
            out.write(
                f"dn: didmosUUID={user_id},{PEOPLE}\n"
                "objectClass: inetOrgPerson\nobjectClass: didmosObject\nobjectClass: didmosPerson\n"
                "objectClass: didmosScimObject\nobjectClass: didmosRoleHolder\n"
                f"didmosUUID: {user_id}\nuid: {uid}\n"
                f"cn: Import User{i}\nsn: User{i}\ngivenName: Import\ndisplayName: Import User{i}\n"
                f"mail: {uid}@bench.example.org\ntitle: Engineer\n"
                f"didmosActive: TRUE\ndidmosUserType: local\ndidmosRoleAssignment: {NEW_USER_ROLE}\n\n")


@contextmanager
def fresh_directory(root: Path):
    """A started private slapd with the didmos schema and base tree; stopped and removed on the way out."""
    from didmos_host.directory import init_directory
    from didmos_host.host import Host
    from didmos_host.servers import SlapdServer, free_port

    server = SlapdServer(root / "slapd", port=free_port(), rootpw=secrets.token_urlsafe(16),
                         password_hash="{SSHA}", nosync=True)
    password = secrets.token_urlsafe(16)
    overrides = {"directory": {"uri": server.uri, "config_uri": server.ldapi_uri, "bind_password": password,
                               "superadmin_password": secrets.token_urlsafe(12)}}
    try:
        server.start()
        init_directory(Host.create(overrides))
        yield server, overrides, password
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def count_users(server, password: str) -> int:
    import ldap

    conn = ldap.initialize(server.uri)
    conn.simple_bind_s(server.service_dn, password)
    try:
        return len(conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, "(uid=imp*)", ["1.1"]))
    finally:
        conn.unbind_s()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], server, env: dict | None = None, log: Path | None = None) -> dict[str, float]:
    """Run ``command`` to the end; its wall time, its CPU, slapd's CPU and the whole machine's meanwhile."""
    slapd_pid = server._proc.pid
    slapd0, client0, machine0 = process_cpu_seconds(slapd_pid), children_cpu(), machine_busy_seconds()
    started = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        finished = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if finished.returncode not in (0, 68):  # ldapadd -c: 68 would be "already exists", not expected here
        text = log.read_text()[-2000:] if log else ""
        raise RuntimeError(f"{command[0]} ... exited with {finished.returncode}\n{text}")
    return {"wall_s": wall, "client_cpu_s": children_cpu() - client0,
            "slapd_cpu_s": process_cpu_seconds(slapd_pid) - slapd0, "machine_cpu_s": machine_busy_seconds() - machine0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10000, help="users to import (default 10000, about a minute)")
    parser.add_argument("--workers", type=int, default=4, help="didmos import --workers (default 4)")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("ldapadd") is None:
        sys.exit("bench/import.py needs ldapadd (Debian package ldap-utils)")

    total_started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="didmos-bench-import-"))
    data = root / "users.ldif"
    write_users(data, args.users, args.seed)
    print(f"{args.users} users in {data.stat().st_size / 1e6:.1f} MB of LDIF; {cores()} cores; "
          f"didmos import --workers {args.workers}", flush=True)
    try:
        with fresh_directory(root / "raw") as (server, _, password):
            raw = timed(["ldapadd", "-c", "-x", "-H", server.uri, "-D", server.service_dn, "-w", password,
                         "-f", str(data)], server, log=root / "ldapadd.log")
            raw_count = count_users(server, password)
        with fresh_directory(root / "didmos") as (server, overrides, password):
            settings = write_settings_file(overrides, root / "settings.toml")
            env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(settings)}
            layer = timed([sys.executable, "-m", "didmos_host.cli", "import", str(data), "--workers",
                           str(args.workers), "--report", str(root / "rejected.jsonl"),
                           "--state", str(root / "import.state")], server, env=env, log=root / "import.log")
            layer_count = count_users(server, password)
            summary = (root / "import.log").read_text().strip().splitlines()[-1:]
        if raw_count != args.users or layer_count != args.users:
            raise RuntimeError(f"users added: ldapadd {raw_count}, didmos import {layer_count}, expected {args.users}; "
                               f"didmos said {summary}")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    raw_rate, layer_rate = args.users / raw["wall_s"], args.users / layer["wall_s"]
    ratio = layer_rate / raw_rate
    print(f"{'':28}{'users/s':>10}{'wall s':>9}{'slapd CPU s':>13}{'client CPU s':>14}{'machine CPU s':>15}")
    for label, side, rate in (("ldapadd -c (baseline)", raw, raw_rate), ("didmos import", layer, layer_rate)):
        print(f"{label:28}{rate:10.0f}{side['wall_s']:9.1f}{side['slapd_cpu_s']:13.1f}{side['client_cpu_s']:14.1f}"
              f"{side['machine_cpu_s']:15.1f}")
    verdict = "ok" if ratio >= TARGET else "SHORT"
    print(f"import_ratio (didmos / ldapadd users/s) {ratio:.3f}   target >= {TARGET}: {verdict}")
    # CPU per user, slapd and client together: what the rates would compare as if both sides were held
    # back by the same cores only (less dependent on what else the machine runs than wall time is)
    raw_cpu = (raw["slapd_cpu_s"] + raw["client_cpu_s"]) / args.users * 1000
    layer_cpu = (layer["slapd_cpu_s"] + layer["client_cpu_s"]) / args.users * 1000
    print(f"CPU per user (slapd + client): ldapadd {raw_cpu:.2f} ms, didmos import {layer_cpu:.2f} ms; "
          f"import_cpu_ratio (ldapadd / didmos) {raw_cpu / layer_cpu:.3f}")
    print(f"total {time.perf_counter() - total_started:.1f} s, slapds stopped", flush=True)
    print_figures({
        "users": args.users, "workers": args.workers,
        "ldapadd_users_per_s": raw_rate, "import_users_per_s": layer_rate,
        "ldapadd_wall_s": raw["wall_s"], "import_wall_s": layer["wall_s"],
        "ldapadd_slapd_cpu_s": raw["slapd_cpu_s"], "import_slapd_cpu_s": layer["slapd_cpu_s"],
        "ldapadd_client_cpu_s": raw["client_cpu_s"], "import_client_cpu_s": layer["client_cpu_s"],
        "ldapadd_cpu_per_user_ms": raw_cpu, "import_cpu_per_user_ms": layer_cpu,
        "import_cpu_ratio": raw_cpu / layer_cpu,
        "import_ratio": ratio,
    })


if __name__ == "__main__":
    main()
