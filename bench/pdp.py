"""What the policy decision point costs: in-process decisions, CheckAccess over HTTP, and the PDP in a list.

Starts a private slapd on loopback, bulk-loads a policy of realistic size (roles in a hierarchy,
permissions with scopes, separation-of-duty sets) and users holding those roles, then measures:

1. ``Policy.check_access`` in this process, single-threaded, with each user's default active roles
   computed once (baseline: the same loop calling a function that returns at once);
2. ``POST /pdp/v1/check-access`` for oneself with HTTP Basic, against ``didmos serve`` (gunicorn, gthread
   workers) in a subprocess, from concurrent keep-alive clients (baselines on the same server:
   ``GET /healthz``, the framework alone, and ``GET /auth/whoami``, the framework and authentication);
3. the PDP in a list: ``pdp.operations(actor, "User", dn)`` for 100 users (what a SCIM list with
   ``meta.operations`` will do) on top of reading those 100 entries with one search through the
   directory service, vs the same read and loop without the PDP.

    .venv/bin/python bench/pdp.py [--seconds S] [--clients N] [--workers N] [--only decide,http,list]

Human-readable lines first; the last line is one JSON object of the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PEOPLE, Sample, Side, bench_directory, compare, cores, print_figures, run_slice,
)

RBAC = "ou=rbac,ou=default-tenant,dc=didmos,dc=de"
DEPARTMENTS = 10
RESOURCE_TYPES = ("User", "User", "User", "Groups", "Groups", "Organization", "Application", "Device")
ATTRIBUTES = ("displayName", "mail", "telephoneNumber", "mobile", "title", "description", "member", "cn")
LEVELS = (20, 60, 120)  # roles per level of the hierarchy: heads, middle, leaves (200 in all by default)
LIST_SIZE = 100
DECIDE_TARGET_PER_S = 100_000
DECIDE_TARGET_P99_MS = 1.0
LIST_TARGET_RATIO = 1 / 1.2  # the PDP adds at most 20 %
ONLY = ("decide", "http", "list")


def user_uuid(i: int) -> str:
    return f"e0000000-0000-4000-8000-{i:012x}"


def department(i: int) -> str:
    return f"ou=dept-{i},{PEOPLE}"


def password(i: int) -> str:
    return f"bench-password-{i}"


def ssha(secret: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(secret.encode() + salt).digest() + salt).decode()


# -- the dataset ---------------------------------------------------------------------------------------

class Dataset:
    """The policy and the users, decided once from the seed, written as LDIF for slapadd."""

    def __init__(self, users: int, permissions: int, seed: int):
        rng = random.Random(seed)
        self.users = users
        self.roles = [f"bench-role-{i}" for i in range(sum(LEVELS))]
        starts = [sum(LEVELS[:k]) for k in range(len(LEVELS))]
        self.level = {}
        for k, start in enumerate(starts):
            for i in range(start, start + LEVELS[k]):
                self.level[self.roles[i]] = k
        self.permissions = {}
        for i in range(permissions):
            kind = rng.random()
            if kind < 0.4:
                scope = "tenant"
            elif kind < 0.7:
                scope = f"subtree:{department(rng.randrange(DEPARTMENTS))}"
            elif kind < 0.85:
                scope = "self"
            elif kind < 0.95:
                scope = "role"
            else:
                scope = "organization"
            self.permissions[f"bench-perm-{i}"] = {
                "operations": sorted(rng.sample(("read", "write", "create", "delete", "modify-add", "modify-del",
                                                 "modify-replace"), rng.randint(1, 3))),
                "resource_type": rng.choice(RESOURCE_TYPES), "scope": scope,
                "attributes": sorted(rng.sample(ATTRIBUTES, rng.randint(1, 4))) if rng.random() < 0.3 else [],
            }
        names = list(self.permissions)
        rng.shuffle(names)
        per_role = max(1, len(names) // len(self.roles))
        self.role_permissions = {role: names[i * per_role:(i + 1) * per_role] for i, role in enumerate(self.roles)}
        # Each role above the leaves inherits two roles of the next level: a DAG, never a cycle.
        self.role_juniors = {}
        for k, start in enumerate(starts[:-1]):
            below = self.roles[starts[k + 1]:starts[k + 1] + LEVELS[k + 1]]
            for role in self.roles[start:start + LEVELS[k]]:
                self.role_juniors[role] = rng.sample(below, 2)
        self.role_scope = {role: department(i % DEPARTMENTS) for i, role in enumerate(self.roles) if i % 3 == 0}
        # Static sets among heads nobody below holds; dynamic sets among leaves users do hold.
        leaves = self.roles[starts[-1]:]
        self.sod_sets = {f"bench-ssd-{i}": (self.roles[10 + 2 * i:12 + 2 * i], False) for i in range(5)}
        self.sod_sets.update({f"bench-dsd-{i}": (leaves[2 * i:2 * i + 2], True) for i in range(10)})
        middle_and_leaves = self.roles[starts[1]:]
        self.assigned = [["standarduser", *rng.sample(middle_and_leaves, rng.randint(1, 3))] for _ in range(users)]
        #: The actor of the list, outside the departments: holds three heads and the defaults.
        self.lister = users
        self.assigned.append(["standarduser", *self.roles[:3]])

    def dn(self, i: int) -> str:
        """User ``i``'s DN: the first 1000 are spread over 10 departments of 100; the others and the lister
        are directly below ou=people."""
        where = department(i % DEPARTMENTS) if i < LIST_SIZE * DEPARTMENTS and i != self.lister else PEOPLE
        return f"didmosUUID={user_uuid(i)},{where}"

    def write(self, path: Path) -> str:
        def entry(dn, attrs):
            return f"dn: {dn}\n" + "".join(f"{k}: {v}\n" for k, vs in attrs.items() for v in vs) + "\n"

        with path.open("w") as out:
            for d in range(DEPARTMENTS):
                out.write(entry(department(d), {"objectClass": ["organizationalUnit"], "ou": [f"dept-{d}"]}))
            for name, spec in self.permissions.items():
                attrs = {"objectClass": ["didmosPermission"], "cn": [name], "didmosOperation": spec["operations"],
                         "didmosResourceType": [spec["resource_type"]], "didmosObjectScope": [spec["scope"]]}
                if spec["attributes"]:
                    attrs["didmosAttributeName"] = spec["attributes"]
                out.write(entry(f"cn={name},ou=permissions,{RBAC}", attrs))
            for role in self.roles:
                attrs = {"objectClass": ["didmosRole"], "cn": [role],
                         "didmosPermissionRef": [f"cn={p},ou=permissions,{RBAC}" for p in self.role_permissions[role]]}
                if role in self.role_juniors:
                    attrs["didmosRoleJunior"] = [f"cn={j},ou=roles,{RBAC}" for j in self.role_juniors[role]]
                if role in self.role_scope:
                    attrs["didmosRoleScope"] = [self.role_scope[role]]
                out.write(entry(f"cn={role},ou=roles,{RBAC}", attrs))
            for name, (roles, dynamic) in self.sod_sets.items():
                out.write(entry(f"cn={name},ou=constraints,{RBAC}", {
                    "objectClass": ["didmosSodSet"], "cn": [name], "didmosCardinality": ["2"],
                    "didmosRoleRef": [f"cn={r},ou=roles,{RBAC}" for r in roles],
                    "didmosSodDynamic": ["TRUE" if dynamic else "FALSE"]}))
            for i, roles in enumerate(self.assigned):
                out.write(entry(self.dn(i), {
                    "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson", "didmosRoleHolder"],
                    "didmosUUID": [user_uuid(i)], "uid": [f"b{i}"], "cn": [f"Bench User {i}"], "sn": [f"User{i}"],
                    "givenName": ["Bench"], "displayName": [f"Bench User {i}"], "mail": [f"b{i}@bench.example.org"],
                    "didmosTenant": ["default-tenant"], "didmosActive": ["TRUE"], "userPassword": [ssha(password(i))],
                    "didmosRoleAssignment": [f"cn={r},ou=roles,{RBAC}" for r in roles]}))
        return (f"{len(self.roles)} roles in {len(LEVELS)} levels, {len(self.permissions)} permissions, "
                f"{len(self.sod_sets)} separation-of-duty sets, {len(self.assigned)} users in {DEPARTMENTS} "
                "departments")


# -- 1. decisions in process ---------------------------------------------------------------------------

def measure_decisions(host, data: Dataset, seconds: float, rng: random.Random) -> dict[str, float]:
    from didmos_host.records import Action, Actor
    from didmos_pdp.policy import OPERATIONS, ActorContext

    pdp = host.service("pdp")
    policy = pdp.policy()
    people = range(data.users)
    active = [policy.default_active_roles(roles) for roles in data.assigned]
    authorized = sum(len(policy.authorized_roles_of(roles)) for roles in active) / len(active)
    print(f"policy from the directory: {len(policy.roles)} roles, {len(policy.permissions)} permissions, "
          f"{len(policy.sod_sets)} sets; a user's default active roles with their juniors: {authorized:.1f} on average")
    contexts = [ActorContext(data.dn(i)) for i in range(len(data.assigned))]
    requests = []
    for _ in range(100_000):
        who = rng.choice(people)
        target = data.dn(who) if rng.random() < 0.1 else data.dn(rng.choice(people))
        requests.append((active[who], rng.choice(OPERATIONS), rng.choice(RESOURCE_TYPES), target, contexts[who]))
    check = policy.check_access
    allowed = sum(1 for r in requests if check(*r))

    def no_decision(roles, operation, resource_type, target, actor):
        return None

    def throughput(function) -> float:
        done, busy = 0, 0.0
        end = perf_counter() + seconds / 2
        while perf_counter() < end:
            t0 = perf_counter()
            for r in requests:
                function(*r)
            busy += perf_counter() - t0
            done += len(requests)
        return done / busy

    def latencies(function, count: int = 200_000) -> Sample:
        sample, clock = Sample(), time.perf_counter_ns
        record = sample.latencies.append
        for i in range(count):
            r = requests[i % len(requests)]
            t0 = clock()
            function(*r)
            record((clock() - t0) / 1e9)
        return sample

    throughput(check)  # warm up the DN cache and the interpreter
    per_s, base_per_s = throughput(check), throughput(no_decision)
    sample = latencies(check)
    p50, p99 = sample.quantile_ms(.5), sample.quantile_ms(.99)
    verdict = "ok" if per_s >= DECIDE_TARGET_PER_S and p99 < DECIDE_TARGET_P99_MS else "SHORT"
    print(f"Policy.check_access, 1 thread: {per_s:,.0f} decisions/s, p50 {p50 * 1000:.1f} us, p99 {p99 * 1000:.1f} us "
          f"({allowed / len(requests):.0%} allowed)   target >= {DECIDE_TARGET_PER_S:,}/s and p99 < "
          f"{DECIDE_TARGET_P99_MS:g} ms: {verdict}")
    print(f"  baseline: the same loop calling a function that returns at once: {base_per_s:,.0f} calls/s")

    # What the didmos_authorize vote does per action: the freshness check and the default active roles
    # again on every call (the subject, one LDAP read per request, is given here).
    subjects = [pdp.subject(Actor(dn=data.dn(i), uuid=user_uuid(i))) for i in range(min(data.users, 1000))]
    actions = [(Actor(dn=data.dn(i), uuid=user_uuid(i)), Action(r[1], r[2], r[3]), subjects[i])
               for i, r in zip((rng.randrange(len(subjects)) for _ in range(20_000)), requests)]
    started = perf_counter()
    for actor, action, subject in actions:
        pdp.decide(actor, action, subject)
    decide_per_s = len(actions) / (perf_counter() - started)
    print(f"  pdp.decide (the authorize vote's path, subject given): {decide_per_s:,.0f} decisions/s "
          f"(it computes the default active roles again on every call)")
    refreshes = []
    for _ in range(5):
        pdp.invalidate()
        t0 = perf_counter()
        pdp.policy()
        refreshes.append(perf_counter() - t0)
    refresh_ms = sorted(refreshes)[len(refreshes) // 2] * 1000
    print(f"  freshness check, policy unchanged (one search of every RBAC entry, paid every pdp.refresh_seconds by "
          f"the request that comes due): {refresh_ms:.1f} ms")
    return {"policy_refresh_ms": refresh_ms, "decide_per_s": per_s, "decide_p50_ms": p50, "decide_p99_ms": p99,
            "decide_baseline_per_s": base_per_s, "decide_ratio": per_s / base_per_s,
            "decide_vote_per_s": decide_per_s}


# -- 2. CheckAccess over HTTP ---------------------------------------------------------------------------

def start_api(bench, workers: int, threads: int, root: Path) -> tuple[subprocess.Popen, int]:
    """``didmos serve`` in a subprocess (gunicorn, gthread), configured by a settings file, access log off."""
    from didmos_host.servers import free_port

    port = free_port()
    values = {"api": {"host": "127.0.0.1", "port": port, "workers": workers, "threads": threads},
              **bench.overrides}
    settings = root / "bench-settings.toml"
    settings.write_text("".join(f"[{ns}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
                                for ns, table in values.items()))
    settings.chmod(0o600)
    env = dict(os.environ)
    env["DIDMOS_SETTINGS_FILES"] = ":".join(filter(None, [str(settings), env.get("DIDMOS_SETTINGS_FILES", "")]))
    with (root / "api.log").open("w") as log:  # the child keeps its own descriptor
        api = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "serve"], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 30
    while True:
        if api.poll() is not None:
            raise RuntimeError(f"didmos serve exited with {api.returncode}:\n{(root / 'api.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return api, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("didmos serve did not answer /healthz within 30 s") from None
            time.sleep(0.2)


def stop_api(api: subprocess.Popen) -> None:
    if api.poll() is None:
        api.send_signal(signal.SIGTERM)  # gunicorn stops its workers and exits
        try:
            api.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(api.pid, signal.SIGKILL)  # its own session: the master and its workers only
            api.wait()


def http_phase(port: int, plans: list[list[tuple]], seconds: float) -> tuple[float, Sample]:
    """Each client (one thread, one keep-alive connection) sends its plan's requests in a loop for
    ``seconds``; returns requests/s of wall time and every latency."""
    barrier = threading.Barrier(len(plans) + 1)
    samples = [Sample() for _ in plans]
    errors = []

    def client(plan, sample):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.connect()
        record = sample.latencies.append
        barrier.wait()
        end = perf_counter() + seconds
        i = 0
        try:
            while perf_counter() < end:
                method, path, body, headers, status = plan[i % len(plan)]
                i += 1
                t0 = perf_counter()
                conn.request(method, path, body, headers)
                answer = conn.getresponse()
                answer.read()
                record(perf_counter() - t0)
                if answer.status != status:
                    raise RuntimeError(f"{method} {path}: {answer.status}, expected {status}")
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(plan, sample)) for plan, sample in zip(plans, samples)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = perf_counter()
    for thread in threads:
        thread.join()
    wall = perf_counter() - started
    if errors:
        raise errors[0]
    merged = Sample([latency for sample in samples for latency in sample.latencies])
    return len(merged.latencies) / wall, merged


def measure_http(bench, data: Dataset, args, root: Path) -> dict[str, float]:
    api, port = start_api(bench, args.workers, args.threads, root)
    try:
        plans = {"healthz": [], "whoami": [], "check": []}
        for c in range(args.clients):
            auth = base64.b64encode(f"{user_uuid(c)}:{password(c)}".encode()).decode()
            headers = {"Authorization": f"Basic {auth}"}
            plans["healthz"].append([("GET", "/healthz", None, {}, 200)])
            plans["whoami"].append([("GET", "/auth/whoami", None, headers, 200)])
            json_headers = {**headers, "Content-Type": "application/json"}
            plans["check"].append([
                ("POST", "/pdp/v1/check-access", json.dumps({"operation": operation, "resource_type": "User",
                                                             "target": target}), json_headers, 200)
                for operation in ("read", "modify-replace", "delete")
                for target in (data.dn(c), data.dn(c + 1))])
        print(f"HTTP: didmos serve (gunicorn gthread) in a subprocess, {args.workers} workers x {args.threads} "
              f"threads, access log to /dev/null; {args.clients} client threads in this process, each with its own "
              f"user and one keep-alive http.client connection; {args.rounds} alternating rounds of "
              f"{args.seconds / 2 / args.rounds:g} s per endpoint")
        for name, plan in plans.items():  # warm up: imports, pools, each worker's credential cache
            http_phase(port, plan, 0.5)
        totals = {name: (0.0, Sample()) for name in plans}
        for _ in range(args.rounds):
            for name, plan in plans.items():
                rate, sample = http_phase(port, plan, args.seconds / 2 / args.rounds)
                wall, merged = totals[name]
                totals[name] = (wall + len(sample.latencies) / rate, Sample(merged.latencies + sample.latencies))
    finally:
        stop_api(api)
    figures = {}
    labels = {"healthz": "GET /healthz (framework only)", "whoami": "GET /auth/whoami (+ Basic auth)",
              "check": "POST /pdp/v1/check-access (+ PDP)"}
    keys = {"healthz": "http_healthz", "whoami": "http_whoami", "check": "http_check_access"}
    print(f"  {'request':42} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for name, (wall, sample) in totals.items():
        rate = len(sample.latencies) / wall
        print(f"  {labels[name]:42} {rate:8.0f} {sample.quantile_ms(.5):7.2f} {sample.quantile_ms(.99):7.2f}")
        figures.update({f"{keys[name]}_per_s": rate, f"{keys[name]}_p50_ms": sample.quantile_ms(.5),
                        f"{keys[name]}_p99_ms": sample.quantile_ms(.99)})
    figures["http_check_access_ratio"] = figures["http_check_access_per_s"] / figures["http_healthz_per_s"]
    figures["http_check_access_whoami_ratio"] = figures["http_check_access_per_s"] / figures["http_whoami_per_s"]
    print(f"  check-access / healthz: {figures['http_check_access_ratio']:.3f}; check-access / whoami: "
          f"{figures['http_check_access_whoami_ratio']:.3f} (the PDP's share: one LDAP read of the caller's roles "
          f"and the decision)")
    return figures


# -- 3. the PDP in a list ----------------------------------------------------------------------------------

def measure_list(host, data: Dataset, args) -> dict[str, float]:
    from didmos_host.records import Actor

    directory, pdp = host.service("directory"), host.service("pdp")
    actor = Actor(dn=data.dn(data.lister), uuid=user_uuid(data.lister))
    base = department(0)
    attrs = ["didmosUUID", "uid", "cn", "sn", "givenName", "displayName", "mail", "didmosActive"]
    found = directory.search(base, "(objectClass=didmosPerson)", attrs=attrs)
    if len(found) != LIST_SIZE:
        raise RuntimeError(f"expected {LIST_SIZE} users below {base}, found {len(found)}")
    subject = pdp.subject(actor)
    print(f"list: {LIST_SIZE} users read with one search below {base} through the directory service "
          f"(stand-in for a SCIM list, which does not exist yet); actor with {len(subject.assigned)} roles, "
          f"{len(pdp.policy().authorized_roles_of(subject.assigned))} with their juniors")

    def listing(with_pdp: bool, subject_once: bool = True):
        def run(_):
            entries = directory.search(base, "(objectClass=didmosPerson)", attrs=attrs)
            who = (pdp.subject(actor) if subject_once else None) if with_pdp else None
            resources = []
            for entry in entries:
                resource = {"id": entry.first("didmosUUID"), "userName": entry.first("uid"),
                            "displayName": entry.first("displayName"), "emails": entry.values("mail")}
                if with_pdp:
                    operations = pdp.operations(actor, "User", entry.dn, who)
                    resource["meta"] = {"operations": {op: None if a is None else sorted(a)
                                                       for op, a in operations.items()}}
                resources.append(resource)
            return resources

        return run

    sample_ops = listing(True)(None)
    granted = sum(len(r["meta"]["operations"]) for r in sample_ops)
    plain, with_pdp = Side(listing(False)), Side(listing(True))
    compare(plain, with_pdp, args.seconds / 4, slice_seconds=0.1)
    naive = Side(listing(True, subject_once=False))
    compare(Side(lambda _: None), naive, 0.5, slice_seconds=0.25, warmup=0.1)
    # The decisions alone, through the public Policy API with the active roles computed once per list:
    # what pdp.operations would cost without recomputing them on every call.
    policy = pdp.policy()
    active = policy.default_active_roles(subject.assigned)
    dns = [entry.dn for entry in found]
    decisions_only = Side(lambda _: [policy.operations_on(active, "User", dn, subject.context) for dn in dns])
    run_slice(decisions_only, 0.1, record=False)
    run_slice(decisions_only, 0.5)
    ratio = with_pdp.sample.per_s / plain.sample.per_s
    verdict = "ok" if ratio >= LIST_TARGET_RATIO else "SHORT"
    p50 = {name: side.sample.quantile_ms(.5) for name, side in (("plain", plain), ("pdp", with_pdp), ("naive", naive))}
    print(f"  search + loop, no PDP:                    {plain.sample.per_s:7.0f} lists/s  p50 {p50['plain']:6.2f} ms"
          f"  p99 {plain.sample.quantile_ms(.99):6.2f} ms")
    print(f"  + subject once, operations for each entry: {with_pdp.sample.per_s:7.0f} lists/s  p50 {p50['pdp']:6.2f} ms"
          f"  p99 {with_pdp.sample.quantile_ms(.99):6.2f} ms   ({granted} operations granted over {LIST_SIZE} "
          f"entries)")
    print(f"  lists/s with PDP / without: {ratio:.3f} (the PDP adds {(1 / ratio - 1):.0%})   target >= "
          f"{LIST_TARGET_RATIO:.3f} (adds <= 20 %): {verdict}")
    print(f"  informational: the decisions alone (Policy.operations_on x {LIST_SIZE}, active roles computed once): "
          f"p50 {decisions_only.sample.quantile_ms(.5):.2f} ms; pdp.operations without the subject (one LDAP read "
          f"of the actor per entry): p50 {p50['naive']:.2f} ms")
    return {"list_plain_per_s": plain.sample.per_s, "list_pdp_per_s": with_pdp.sample.per_s,
            "list_plain_p50_ms": p50["plain"], "list_pdp_p50_ms": p50["pdp"],
            "list_plain_p99_ms": plain.sample.quantile_ms(.99), "list_pdp_p99_ms": with_pdp.sample.quantile_ms(.99),
            "list_pdp_ratio": ratio, "list_decisions_only_p50_ms": decisions_only.sample.quantile_ms(.5),
            "list_pdp_subject_per_entry_p50_ms": p50["naive"]}


# -- the benchmark ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="seconds of measurement per part: decisions, HTTP, list (default 20)")
    parser.add_argument("--users", type=int, default=1000,
                        help=f"users (default 1000; at least {LIST_SIZE * DEPARTMENTS})")
    parser.add_argument("--permissions", type=int, default=1000, help="permissions (default 1000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as api.workers)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8, as api.threads)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating HTTP rounds per endpoint (default 4)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ONLY)}")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()} or set(ONLY)
    if only - set(ONLY):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(ONLY)))}; known: {', '.join(ONLY)}")
    if args.users < LIST_SIZE * DEPARTMENTS or args.clients < 1 or args.clients >= args.users or args.seconds <= 0:
        parser.error(f"need --users >= {LIST_SIZE * DEPARTMENTS}, 1 <= --clients < --users, --seconds > 0")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run_started = perf_counter()
    print(f"didmos PDP: {cores()} cores, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    data = Dataset(args.users, args.permissions, args.seed)
    rng = random.Random(args.seed)
    figures: dict[str, float] = {}
    with bench_directory(data.write) as bench:
        t = bench.timings
        print(f"slapd: private, {bench.server.uri}, olcDbNoSync TRUE")
        print(f"setup: init {t['init_s']:.1f} s, LDIF {t['ldif_s']:.1f} s, slapadd -q {t['slapadd_s']:.1f} s "
              f"({bench.description}), start {t['start_s']:.1f} s", flush=True)
        from didmos_host.host import Host

        host = Host.create(bench.overrides)
        try:
            if "decide" in only:
                figures.update(measure_decisions(host, data, args.seconds / 4, rng))
            if "http" in only:
                figures.update(measure_http(bench, data, args, Path(bench.server.data_dir).parent))
            if "list" in only:
                figures.update(measure_list(host, data, args))
        finally:
            host.service("directory").close()
    print(f"total {perf_counter() - run_started:.1f} s, API and slapd stopped")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
