"""What the policy decision point costs: in-process decisions, CheckAccess over HTTP, and the PDP in a SCIM list.

Starts a private slapd on loopback, bulk-loads a policy of realistic size (roles in a hierarchy,
permissions with scopes, separation-of-duty sets) and users holding those roles, then measures:

1. ``Policy.check_access`` in this process, single-threaded, with each user's default active roles
   computed once (baseline: the same loop calling a function that returns at once);
2. ``POST /pdp/v1/check-access`` for oneself with HTTP Basic, against ``didmos serve`` (gunicorn, gthread
   workers) in a subprocess, from concurrent keep-alive clients (baselines on the same server:
   ``GET /healthz``, the framework alone, and ``GET /auth/whoami``, the framework and authentication);
3. the PDP in a list: ``GET /scim/v2/Users?count=100`` and ``GET /lui2_backend/v2/User/?count=100`` (which
   adds each entry's ``operations`` for the caller) as the superadmin and as an admin scoped to one
   department of 100 users, against two ``didmos serve`` on the same directory: one with the PDP, one
   where a throwaway plugin (:class:`FreePdpPlugin`, loaded through an entry point of its own) replaces
   the ``pdp`` service with a stand-in that allows everything at once.

    .venv/bin/python bench/pdp.py [--seconds S] [--clients N] [--workers N] [--only decide,http,list]
    .venv/bin/python bench/pdp.py --profile lui_scoped    # one list in process, both apps, cProfile

Human-readable lines first; the last line is one JSON object of the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PEOPLE, Sample, bench_directory, child_pids, cores, print_figures, process_cpu_seconds, start_api, stop_api,
)
from didmos_host import hookimpl  # noqa: E402

RBAC = "ou=rbac,ou=default-tenant,dc=didmos,dc=de"
DEPARTMENTS = 10
RESOURCE_TYPES = ("User", "User", "User", "Groups", "Groups", "Organization", "Application", "Device")
ATTRIBUTES = ("displayName", "mail", "telephoneNumber", "mobile", "title", "description", "member", "cn")
LEVELS = (20, 60, 120)  # roles per level of the hierarchy: heads, middle, leaves (200 in all by default)
LIST_SIZE = 100
SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"
#: The department the scoped admin administers: it holds LIST_SIZE users.
ADMINISTERED = 0
ADMIN_ROLE = "bench-dept-admin"
#: name -> (label, path, who): the list requests, each as the superadmin and as the scoped admin.
LIST_CASES = {
    "scim_superadmin": ("GET /scim/v2/Users?count=100", "/scim/v2/Users?count=100", "superadmin"),
    "scim_scoped": ("GET /scim/v2/Users?count=100", "/scim/v2/Users?count=100", "scoped"),
    "lui_superadmin": ("GET /lui2_backend/v2/User/?count=100", "/lui2_backend/v2/User/?count=100", "superadmin"),
    "lui_scoped": ("GET /lui2_backend/v2/User/?count=100", "/lui2_backend/v2/User/?count=100", "scoped"),
}
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
        #: An actor outside the departments holding three heads and the defaults (pdp.decide's subjects).
        self.lister = users
        self.assigned.append(["standarduser", *self.roles[:3]])
        # The scoped admin (outside the departments too) reads the users of one department and edits some
        # of their attributes; the reader holds only standarduser: it may read its own entry, no other.
        for name, operations, attributes in (
                ("bench-dept-read", ["read"], []),
                ("bench-dept-edit", ["modify-add", "modify-del", "modify-replace"],
                 ["displayName", "mobile", "telephoneNumber", "title"])):
            self.permissions[name] = {"operations": operations, "resource_type": "User",
                                      "scope": f"subtree:{department(ADMINISTERED)}", "attributes": attributes}
        self.roles.append(ADMIN_ROLE)
        self.role_permissions[ADMIN_ROLE] = ["bench-dept-read", "bench-dept-edit"]
        self.scoped_admin = users + 1
        self.assigned.append(["standarduser", ADMIN_ROLE])
        self.reader = users + 2
        self.assigned.append(["standarduser"])

    def dn(self, i: int) -> str:
        """User ``i``'s DN: the first 1000 are spread over 10 departments of 100; the others (the lister, the
        scoped admin and the reader among them) are directly below ou=people."""
        where = department(i % DEPARTMENTS) if i < LIST_SIZE * DEPARTMENTS and i < self.users else PEOPLE
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
        return (f"{sum(LEVELS)} roles in {len(LEVELS)} levels and {ADMIN_ROLE}, {len(self.permissions)} permissions, "
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
          f"(the default active roles memoised per role set)")
    refreshes = []
    for _ in range(5):
        pdp.invalidate()
        t0 = perf_counter()
        pdp.policy()
        refreshes.append(perf_counter() - t0)
    refresh_ms = sorted(refreshes)[len(refreshes) // 2] * 1000
    print(f"  freshness check, policy unchanged (one search for the entryCSN of every RBAC entry, paid every "
          f"pdp.refresh_seconds by the request that comes due, in each worker): {refresh_ms:.1f} ms")
    return {"policy_refresh_ms": refresh_ms, "decide_per_s": per_s, "decide_p50_ms": p50, "decide_p99_ms": p99,
            "decide_baseline_per_s": base_per_s, "decide_ratio": per_s / base_per_s,
            "decide_vote_per_s": decide_per_s}


# -- 2. CheckAccess over HTTP ---------------------------------------------------------------------------

def http_phase(port: int, plans: list[list[tuple]], seconds: float) -> tuple[float, Sample]:
    """Each client (one thread, one keep-alive connection) sends its plan's requests in a loop for
    ``seconds``; returns requests/s of wall time (until the last answer) and every latency."""
    barrier = threading.Barrier(len(plans) + 1)
    samples = [Sample() for _ in plans]
    errors = []

    def client(plan, sample):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
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
    (root / "api-http").mkdir()
    api, port = start_api(bench.overrides, root / "api-http", workers=args.workers, threads=args.threads)
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


# -- 3. the PDP in a SCIM list ---------------------------------------------------------------------------

class FreePolicy:
    """What the SCIM service asks of a policy while it lists, answered at once: everything allowed."""

    def __init__(self, allowed):
        self.allowed = allowed

    def check_access(self, roles, operation, resource_type, target, actor):
        return self.allowed

    def default_active_roles(self, assigned):
        return ()


class FreePdp:
    """Stands in for the ``pdp`` service: every decision is "allowed, all attributes", made at once, with
    no directory read and no policy. ``calls`` counts what was asked (so a run can tell it was used)."""

    def __init__(self):
        from didmos_pdp.pdp import Subject
        from didmos_pdp.policy import OPERATIONS, ActorContext, Decision

        self.calls: collections.Counter[str] = collections.Counter()
        self._allowed = Decision(True, None)
        self._everything = dict.fromkeys(OPERATIONS)  # each operation, on all attributes
        self._subject = Subject(ActorContext("cn=bench-free-pdp"), frozenset())
        self._policy = FreePolicy(self._allowed)

    def read_filter(self, actor, resource_type, subject=None):
        self.calls["read_filter"] += 1
        return None

    def decide(self, actor, action, subject=None):
        self.calls["decide"] += 1
        return self._allowed

    def operations(self, actor, resource_type, target, subject=None):
        self.calls["operations"] += 1
        return self._everything

    def subject(self, actor):
        self.calls["subject"] += 1
        return self._subject

    def role_summary(self, assignments):
        self.calls["role_summary"] += 1
        return [], False

    def policy(self):
        self.calls["policy"] += 1
        return self._policy


class FreePdpPlugin:
    """A throwaway plugin: once every plugin has offered its services, ``pdp`` is a :class:`FreePdp`.

    A wrapper, because ``Host.provide`` refuses a second provider of a name: didmos_pdp provides its PDP
    (and everything else stays as installed: its settings, routes and authorize vote, which asks the
    ``pdp`` service and so now always allows), then the stand-in takes the PDP's place.
    """

    def __init__(self):
        self.pdp: FreePdp | None = None

    @hookimpl(wrapper=True)
    def didmos_services(self, host):
        results = yield
        self.pdp = host.services["pdp"] = FreePdp()
        return results


#: What the entry point of the throwaway distribution names (``bench_free_pdp = pdp:FREE_PDP_PLUGIN``).
FREE_PDP_PLUGIN = FreePdpPlugin()


def free_pdp_distribution(where: Path) -> dict[str, str]:
    """A throwaway distribution in ``where`` whose ``didmos`` entry point is :data:`FREE_PDP_PLUGIN`;
    returns the environment that makes ``didmos serve`` load it (``PYTHONPATH``: it and bench/)."""
    info = where / "bench_free_pdp-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-free-pdp\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[didmos]\nbench_free_pdp = pdp:FREE_PDP_PLUGIN\n")
    path = [str(where), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(filter(None, path))}


def basic(login: str, secret: str) -> str:
    """An HTTP Basic Authorization header."""
    return "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()


def get_json(port: int, path: str, authorization: str) -> dict:
    """``GET path`` on its own connection; the JSON answer, or RuntimeError unless it is a 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": authorization})
        answer = conn.getresponse()
        body = answer.read()
    finally:
        conn.close()
    if answer.status != 200:
        raise RuntimeError(f"GET {path}: {answer.status}: {body[:500]!r}")
    return json.loads(body)


def check_sides(ports: dict[str, int], who: dict[str, str], reader: str, data: Dataset) -> tuple[int, dict]:
    """Fail unless the PDP side decides and the free side allows everything; returns how many users there
    are and the operations the LUI list grants per page, by side and actor (for the report)."""
    from didmos_pdp.policy import OPERATIONS
    from didmos_scim.mapping import LUI

    total = {side: {name: get_json(port, "/scim/v2/Users?count=1", auth)["totalResults"]
                    for name, auth in (*who.items(), ("reader", reader))} for side, port in ports.items()}
    everyone = total["pdp"]["superadmin"]
    expected = {"pdp": {"superadmin": everyone, "scoped": LIST_SIZE + 1, "reader": 1},
                "free": {"superadmin": everyone, "scoped": everyone, "reader": everyone}}
    if everyone < len(data.assigned) or total != expected:
        raise RuntimeError(f"totalResults of GET /scim/v2/Users: {total}; expected {expected}")
    granted, whole = {}, sorted(op for op in OPERATIONS if op != "create")
    for side, port in ports.items():
        for name, auth in who.items():
            page = get_json(port, f"/lui2_backend/v2/User/?count={LIST_SIZE}", auth)["Resources"]
            blocks = [r["meta"][LUI]["operations"] for r in page]
            if len(page) != LIST_SIZE:
                raise RuntimeError(f"{side} {name}: a LUI page of {len(page)} users, expected {LIST_SIZE}")
            if side == "free" and any(b["entry"] != whole or b["attributes"] for b in blocks):
                raise RuntimeError(f"the free PDP's LUI page shows operations other than all: {blocks[0]}")
            granted[f"{side}_{name}"] = sum(len(b["entry"]) + sum(map(len, b["attributes"].values()))
                                            for b in blocks)
    return everyone, granted


def api_cpu(api) -> float:
    """CPU seconds of a gunicorn master and its workers so far."""
    return sum(process_cpu_seconds(pid) for pid in (api.pid, *child_pids(api.pid)))


def measure_list(bench, data: Dataset, args, root: Path) -> dict[str, float]:
    """Both apps up, checked, then each list request as each actor on each app, in alternating rounds."""
    env = free_pdp_distribution(root / "free-pdp")
    apis: dict[str, tuple] = {}
    try:
        for side, extra in (("pdp", None), ("free", env)):
            (root / f"api-{side}").mkdir()
            apis[side] = start_api(bench.overrides, root / f"api-{side}", workers=args.workers,
                                   threads=args.threads, env=extra)
        ports = {side: port for side, (_, port) in apis.items()}
        who = {"superadmin": basic(SUPERADMIN_UUID, bench.overrides["directory"]["superadmin_password"]),
               "scoped": basic(user_uuid(data.scoped_admin), password(data.scoped_admin))}
        everyone, granted = check_sides(ports, who, basic(user_uuid(data.reader), password(data.reader)), data)
        seconds = args.seconds / 10
        print(f"list: {LIST_SIZE} users per page from two didmos serve on this directory ({args.workers} workers x "
              f"{args.threads} threads each): one with the PDP, one where a throwaway plugin replaces the pdp "
              f"service with a stand-in that allows everything at once (checked: a user who may read only its "
              f"own entry lists all {everyone} users there, 1 here; every LUI entry shows every "
              f"operation); {args.clients} client threads, one keep-alive connection each; {args.rounds} "
              f"alternating rounds, {seconds:g} s per request and side")
        print(f"  superadmin: tenant scope (no read filter; every operation on every entry); scoped admin: "
              f"{ADMIN_ROLE} reads the {LIST_SIZE} users of {department(ADMINISTERED)} and edits 4 of their "
              f"attributes, standarduser its own entry ({LIST_SIZE + 1} readable); operations a LUI page shows (on "
              f"entries and on attributes): scoped admin {granted['pdp_scoped']}, superadmin "
              f"{granted['pdp_superadmin']}, free {granted['free_scoped']}", flush=True)
        plans = {(case, side): [[("GET", path, None, {"Authorization": who[actor]}, 200)]] * args.clients
                 for case, (_, path, actor) in LIST_CASES.items() for side in apis}
        for (case, side), plan in plans.items():  # warm up: each worker's policy, credentials, pools
            http_phase(ports[side], plan, 0.3)
        # per (case, side): wall seconds, requests, latencies, API CPU s, slapd CPU s
        measured = {key: [0.0, 0, Sample(), 0.0, 0.0] for key in plans}
        for _ in range(args.rounds):
            for (case, side), plan in plans.items():
                api = apis[side][0]
                cpu, slapd = api_cpu(api), process_cpu_seconds(bench.server.pid)
                rate, sample = http_phase(ports[side], plan, seconds / args.rounds)
                totals = measured[case, side]
                totals[0] += len(sample.latencies) / rate
                totals[1] += len(sample.latencies)
                totals[2].latencies += sample.latencies
                totals[3] += api_cpu(api) - cpu
                totals[4] += process_cpu_seconds(bench.server.pid) - slapd
    finally:
        for api, _ in apis.values():
            stop_api(api)
    return report_list(measured)


def report_list(measured: dict) -> dict[str, float]:
    """The table of the list requests and their figures; ``pdp_list_ratio`` and ``pdp_list_overhead`` are
    the worst of the four (the target holds for a list request only if it holds for each)."""
    figures: dict[str, float] = {}
    print(f"  {'request':38} {'actor':10}  {'with PDP: req/s':>15} {'p50':>6} {'p99':>6}  {'free: req/s':>11} "
          f"{'p50':>6} {'p99':>6}  {'ratio':>6} {'adds':>5} {'':5}   CPU ms/request API, slapd: PDP | free")
    for case, (label, _, actor) in LIST_CASES.items():
        row = {}
        for side in ("pdp", "free"):
            wall, n, sample, api_s, slapd_s = measured[case, side]
            row[side] = (n / wall, sample.quantile_ms(.5), sample.quantile_ms(.99), api_s / n * 1000,
                         slapd_s / n * 1000)
            for key, value in zip(("per_s", "p50_ms", "p99_ms", "api_cpu_ms", "slapd_cpu_ms"), row[side]):
                figures[f"pdp_list_{case}_{side}_{key}"] = value
        ratio, overhead = row["pdp"][0] / row["free"][0], row["pdp"][1] / row["free"][1] - 1
        figures[f"pdp_list_{case}_ratio"], figures[f"pdp_list_{case}_overhead"] = ratio, overhead
        (rate, p50, p99, api_ms, slapd_ms), (f_rate, f_p50, f_p99, f_api, f_slapd) = row["pdp"], row["free"]
        verdict = "ok" if ratio >= LIST_TARGET_RATIO else "SHORT"
        print(f"  {label:38} {actor:10}  {rate:15.1f} {p50:6.1f} {p99:6.1f}  {f_rate:11.1f} {f_p50:6.1f} "
              f"{f_p99:6.1f}  {ratio:6.3f} {overhead:5.0%} {verdict:5}   {api_ms:6.1f} {slapd_ms:5.1f} | "
              f"{f_api:6.1f} {f_slapd:5.1f}")
    worst = min(LIST_CASES, key=lambda case: figures[f"pdp_list_{case}_ratio"])
    figures["pdp_list_ratio"] = figures[f"pdp_list_{worst}_ratio"]
    figures["pdp_list_overhead"] = max(figures[f"pdp_list_{case}_overhead"] for case in LIST_CASES)
    verdict = "ok" if figures["pdp_list_ratio"] >= LIST_TARGET_RATIO else "SHORT"
    print(f"  the PDP in a list, the worst of the four ({worst}): throughput with / without "
          f"{figures['pdp_list_ratio']:.3f}, p50 latency +{figures['pdp_list_overhead']:.0%} (worst)   target "
          f"ratio >= {LIST_TARGET_RATIO:.3f} (adds <= 20 %): {verdict}")
    return figures


def profile_list(args, case: str) -> None:
    """``--profile CASE``: one list request in this process (Flask test client: no gunicorn, no HTTP), with
    the PDP and with the free stand-in; CPU per request, LDAP searches per request, where the PDP's time
    goes (cProfile: the time spent inside calls into didmos_pdp from outside it), the top functions."""
    import cProfile
    import pstats

    from didmos_host.app import create_app

    data = Dataset(args.users, args.permissions, args.seed)
    label, path, actor = LIST_CASES[case]
    with bench_directory(data.write) as bench:
        free = FreePdpPlugin()
        apps = {"pdp": create_app(**bench.overrides), "free": create_app(extra_plugins=[free], **bench.overrides)}
        who = {"superadmin": basic(SUPERADMIN_UUID, bench.overrides["directory"]["superadmin_password"]),
               "scoped": basic(user_uuid(data.scoped_admin), password(data.scoped_admin))}
        clients = {side: app.test_client() for side, app in apps.items()}

        def one(side: str) -> None:
            answer = clients[side].get(path, headers={"Authorization": who[actor]})
            if answer.status_code != 200 or len(answer.json["Resources"]) != LIST_SIZE:
                raise RuntimeError(f"{side} {path}: {answer.status_code}: {answer.data[:300]!r}")

        for side in apps:
            for _ in range(10):
                one(side)
        if not free.pdp or not free.pdp.calls["subject"]:
            raise RuntimeError("the free app did not ask the stand-in PDP")
        count = args.profile_requests
        cpu, wall = {side: 0.0 for side in apps}, {side: 0.0 for side in apps}
        batch = max(1, count // 3)
        for _ in range(3):  # alternate, unprofiled
            for side in apps:
                started, ticks = time.process_time(), perf_counter()
                for _ in range(batch):
                    one(side)
                cpu[side] += (time.process_time() - started) / batch / 3
                wall[side] += (perf_counter() - ticks) / batch / 3
        print(f"{label} as the {actor}, in process (Flask test client), {data.users + 3} users; per request, "
              f"unprofiled: with the PDP {cpu['pdp'] * 1000:.1f} ms CPU, {wall['pdp'] * 1000:.1f} ms wall; free "
              f"{cpu['free'] * 1000:.1f} ms CPU, {wall['free'] * 1000:.1f} ms wall (the PDP's share of the CPU "
              f"{1 - cpu['free'] / cpu['pdp']:.0%})")
        for side in ("free", "pdp"):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(count):
                one(side)
            profiler.disable()
            stats = pstats.Stats(profiler)
            searches = sum(nc for (file, _, name), (_, nc, *_) in stats.stats.items()
                           if name == "search_ext" and file.endswith("ldapobject.py")) / count
            binds = sum(nc for (file, _, name), (_, nc, *_) in stats.stats.items()
                        if name == "simple_bind" and file.endswith("ldapobject.py")) / count
            print(f"  {side}: {searches:.1f} LDAP searches and {binds:.1f} binds per request (profile of {count})")
        # The PDP's own time: each didmos_pdp function's cumulative time in calls from outside didmos_pdp.
        total = sum(tt for (_, _, tt, _, _) in stats.stats.values()) / count
        entries = []
        for (file, line, name), (_, nc, _, ct, callers) in stats.stats.items():
            if "didmos_pdp" not in file:
                continue
            # ("~" is a builtin such as any() or sorted() running a generator of the PDP's own)
            outside = [(c, v) for c, v in callers.items() if "didmos_pdp" not in c[0] and c[0] != "~"]
            if outside:
                calls = sum(v[1] for _, v in outside) / count
                cumulative = sum(v[3] for _, v in outside) / count
                entries.append((cumulative, calls, f"{Path(file).name}:{line}({name})",
                                sorted({f"{Path(c[0]).name}:{c[2]}" for c, _ in outside})))
        print(f"  with the PDP, profiled: {total * 1000:.1f} ms per request; calls into didmos_pdp from outside it "
              f"(per request; cumulative ms, so nested calls are counted once):")
        for cumulative, calls, where, callers in sorted(entries, reverse=True):
            print(f"    {cumulative * 1000:7.2f} ms {calls:6.0f} x {where:45} from {', '.join(callers)}")
        print(f"    {sum(e[0] for e in entries) * 1000:7.2f} ms in all ({sum(e[0] for e in entries) / total:.0%})")
        for (file, line, name), (_, nc, _, ct, _) in stats.stats.items():
            if file.endswith("didmos_pdp/pdp.py") and name == "subject":
                print(f"    of which PolicyDecisionPoint.subject (one LDAP read of the caller's roles each), wherever "
                      f"called: {nc / count:.0f} x, {ct / count * 1000:.2f} ms")
        stats.sort_stats("cumulative").print_stats(35)
        stats.sort_stats("tottime").print_stats(20)


# -- the benchmark ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="scales every part: decisions, HTTP, list (default 20; see bench/README.md)")
    parser.add_argument("--users", type=int, default=1000,
                        help=f"users (default 1000; at least {LIST_SIZE * DEPARTMENTS})")
    parser.add_argument("--permissions", type=int, default=1000, help="permissions (default 1000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as api.workers)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8, as api.threads)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating rounds per HTTP endpoint and per list request and side (default 4)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ONLY)}")
    parser.add_argument("--profile", choices=list(LIST_CASES),
                        help="instead of the benchmark: one list request in process, with and without the PDP, "
                             "under cProfile")
    parser.add_argument("--profile-requests", type=int, default=30, help="requests profiled per side (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    only = {name.strip() for name in args.only.split(",") if name.strip()} or set(ONLY)
    if only - set(ONLY):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(ONLY)))}; known: {', '.join(ONLY)}")
    if args.users < LIST_SIZE * DEPARTMENTS or args.clients < 1 or args.clients >= args.users or args.seconds <= 0:
        parser.error(f"need --users >= {LIST_SIZE * DEPARTMENTS}, 1 <= --clients < --users, --seconds > 0")

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.profile:
        profile_list(args, args.profile)
        return 0
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
            root = Path(bench.server.data_dir).parent
            if "http" in only:
                figures.update(measure_http(bench, data, args, root))
            if "list" in only:
                figures.update(measure_list(bench, data, args, root))
        finally:
            host.service("directory").close()
    print(f"total {perf_counter() - run_started:.1f} s, API and slapd stopped")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
