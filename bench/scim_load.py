"""What the SCIM API costs over python-ldap under concurrent load, and how a list scales with the directory.

Starts a private slapd on loopback, bulk-loads users and groups shaped as SCIM creates them, starts
``didmos serve`` (gunicorn) and a private redis, and measures, with concurrent keep-alive clients:

1. six SCIM requests (GET by id, ``filter=userName eq``, a page of 100, POST, PATCH replace, PATCH add
   a group member) against the same six operations done directly with python-ldap by as many threads,
   each on its own connection; alternating rounds, the ratio didmos / raw per operation, and the CPU
   each request costs in slapd, in the API workers and in this client process;
2. how many LDAP operations each request sends, from slapd's access log (cn=accesslog, switched to
   log every operation for a few sequential requests);
3. the latency of the ``userName eq`` filter and of a page at 1,000 users and at the configured size;
4. what the framework alone allows: ``GET /healthz`` and ``GET /auth/whoami`` with the same clients.

    .venv/bin/python bench/scim_load.py [--users N] [--clients C] [--seconds S] [--only get_by_id,...]
    .venv/bin/python bench/scim_load.py --profile member_add     # one request type in process, cProfile

Human-readable lines first; the last line is one JSON object of the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import os
import random
import signal
import statistics
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

from ldap.filter import filter_format  # a careful caller escapes what goes into a filter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    GROUPS, PEOPLE, Sample, Side, bench_directory, child_pids, compare, cores, print_figures, process_cpu_seconds,
    raw_connection, run_concurrently, start_api, stop_api,
)

BASE_DN = "dc=didmos,dc=de"  # ldap.base_dn: where SCIM looks resources up and lists them
RBAC = "ou=rbac,ou=default-tenant,dc=didmos,dc=de"
NEW_USER_ROLE = f"cn=standarduser,ou=roles,{RBAC}"  # pdp.new_user_roles: what a SCIM create assigns
SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"
SCIM = "/scim/v2"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
PAGE = 100
SMALL_USERS = 1000

#: name -> (label, raw label, target didmos/raw). Order is the order of the run and of the output.
OPERATIONS = {
    "get_by_id": ("GET /Users/<id>", "search (didmosUUID=<id>) subtree", 0.25),
    "filter_eq": ('GET /Users?filter=userName eq "<uid>"', "search (uid=<uid>) subtree", 0.25),
    "list_page": (f"GET /Users?count={PAGE}&startIndex=N", f"paged search, first {PAGE} (RFC 2696, unsorted)", 0.25),
    "create": ("POST /Users", "add of the same entry", 0.8),
    "patch_replace": ("PATCH /Users/<id> replace title", "modify replace title", 0.3),
    "member_add": ("PATCH /Groups/<id> add members", "modify add member", 0.3),
}
FILTER_LATENCY_TARGET = 1 / 1.2  # latency at the configured size <= 1.2x the latency at 1,000 users
PAGE_OPS_TARGET = 3


def user_uuid(i: int) -> str:
    return f"a0000000-0000-4000-8000-{i:012x}"


def group_uuid(g: int) -> str:
    return f"a1000000-0000-4000-8000-{g:012x}"


def scim_classes(resource_type: str) -> list[str]:
    """The object classes a SCIM create gives an entry of ``resource_type`` (from the mapping in use)."""
    from didmos_scim.mapping import DEFAULT_MAPPINGS

    mapping = DEFAULT_MAPPINGS[resource_type]
    classes = [*mapping.object_classes, *getattr(mapping, "auxiliary_classes", ())]
    return classes + (["didmosRoleHolder"] if resource_type == "User" else [])


def scim_read_attributes() -> list[str]:
    """The attribute list of SCIM's reads of users: what the raw reads ask for too."""
    from didmos_ldap.directory import VERSION_ATTRIBUTES
    from didmos_scim.mapping import DEFAULT_MAPPINGS

    return ["didmosUUID", "objectClass", *DEFAULT_MAPPINGS["User"].ldap_attributes(), *VERSION_ATTRIBUTES]


# -- the dataset ---------------------------------------------------------------------------------------

class Dataset:
    """Users and groups as SCIM creates them; each user in 1 to 3 groups, decided once from the seed."""

    def __init__(self, users: int, groups: int, seed: int):
        rng = random.Random(seed)
        self.users, self.groups = users, groups
        self.member_of = [sorted(rng.sample(range(groups), min(groups, rng.randint(1, 3)))) for _ in range(users)]
        self.members: list[list[int]] = [[] for _ in range(groups)]
        for i, groups_of in enumerate(self.member_of):
            for g in groups_of:
                self.members[g].append(i)

    @staticmethod
    def user_dn(i: int) -> str:
        return f"didmosUUID={user_uuid(i)},{PEOPLE}"

    @staticmethod
    def group_dn(g: int) -> str:
        return f"didmosUUID={group_uuid(g)},{GROUPS}"

    @staticmethod
    def person(uuid_: str, uid: str, n: int) -> dict[str, list[str]]:
        """A user's attributes as ``POST /Users`` with userName, name, emails and title stores them."""
        return {"objectClass": scim_classes("User"), "didmosUUID": [uuid_], "uid": [uid],
                "cn": [f"Bench User{n}"], "sn": [f"User{n}"], "givenName": ["Bench"],
                "displayName": [f"Bench User{n}"], "mail": [f"{uid}@bench.example.org"], "title": ["Engineer"],
                "didmosActive": ["TRUE"], "didmosUserType": ["local"], "didmosRoleAssignment": [NEW_USER_ROLE]}

    def write(self, path: Path) -> str:
        def entry(dn, attrs):
            return f"dn: {dn}\n" + "".join(f"{k}: {v}\n" for k, vs in attrs.items() for v in vs) + "\n"

        with path.open("w") as out:
            for g in range(self.groups):
                out.write(entry(self.group_dn(g), {
                    "objectClass": scim_classes("Group"), "didmosUUID": [group_uuid(g)], "cn": [f"bench-group-{g}"],
                    "member": [self.user_dn(i) for i in self.members[g]]}))
            for i in range(self.users):
                attrs = self.person(user_uuid(i), f"u{i}", i)
                # slapadd runs no overlay: memberOf is written as the memberof overlay would keep it.
                attrs["memberOf"] = [self.group_dn(g) for g in self.member_of[i]]
                out.write(entry(self.user_dn(i), attrs))
        sizes = [len(m) for m in self.members]
        return (f"{self.users} users, {self.groups} groups of {min(sizes)}-{max(sizes)} members "
                f"(each user in 1-3 groups, memberOf set)")


# -- requests: the SCIM side and the raw side -----------------------------------------------------------

@dataclass
class Workload:
    """What each operation's clients send; shared by all clients, safe to call from their threads."""

    data: Dataset
    seed: int
    serial: itertools.count = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: set = field(default_factory=set)

    def __post_init__(self):
        self.taken = {(i, g) for i, groups in enumerate(self.data.member_of) for g in groups}
        self.rng = random.Random(self.seed)

    def pick(self) -> int:
        with self.lock:
            return self.rng.randrange(self.data.users)

    def start_index(self) -> int:
        with self.lock:
            return self.rng.randint(1, max(1, self.data.users - PAGE + 1))

    def new_membership(self) -> tuple[int, int]:
        """A (user, group) pair that is not a membership yet and is handed out once in the whole run."""
        with self.lock:
            while True:
                pair = (self.rng.randrange(self.data.users), self.rng.randrange(self.data.groups))
                if pair not in self.taken:
                    self.taken.add(pair)
                    return pair

    def fresh(self) -> int:
        return next(self.serial)


def scim_request(name: str, work: Workload):
    """``prepare()`` for the SCIM side of ``name``: the next request as (method, path, body, status)."""
    if name == "get_by_id":
        return lambda: ("GET", f"{SCIM}/Users/{user_uuid(work.pick())}", None, 200)
    if name == "filter_eq":
        return lambda: ("GET", f"{SCIM}/Users?" + urllib.parse.urlencode({"filter": f'userName eq "u{work.pick()}"'}),
                        None, 200)
    if name == "list_page":
        return lambda: ("GET", f"{SCIM}/Users?count={PAGE}&startIndex={work.start_index()}", None, 200)
    if name == "create":
        def create():
            n = work.fresh()
            return ("POST", f"{SCIM}/Users", json.dumps({
                "schemas": [USER_SCHEMA], "userName": f"scim{n}",
                "name": {"givenName": "Bench", "familyName": f"User{n}"},
                "emails": [{"value": f"scim{n}@bench.example.org", "type": "work"}], "title": "Engineer"}), 201)
        return create
    if name == "patch_replace":
        return lambda: ("PATCH", f"{SCIM}/Users/{user_uuid(work.pick())}", json.dumps({
            "schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title",
                                                   "value": f"title {work.fresh()}"}]}), 200)
    if name == "member_add":
        def member_add():
            i, g = work.new_membership()
            return ("PATCH", f"{SCIM}/Groups/{group_uuid(g)}", json.dumps({
                "schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members",
                                                       "value": [{"value": user_uuid(i)}]}]}), 200)
        return member_add
    raise ValueError(name)


@dataclass
class HttpSide(Side):
    """A :class:`Side` that holds a keep-alive HTTP connection."""

    conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def scim_side(port: int, authorization: str, prepare) -> HttpSide:
    """One SCIM client: one keep-alive http.client connection; the request (and reading the answer) is timed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": authorization, "Content-Type": "application/scim+json",
               "Accept": "application/scim+json"}

    def op(request):
        method, path, body, status = request
        conn.request(method, path, body, headers)
        answer = conn.getresponse()
        payload = answer.read()
        if answer.status != status:
            raise RuntimeError(f"{method} {path}: {answer.status}, expected {status}: {payload[:500]!r}")

    return HttpSide(op, prepare, conn=conn)


def raw_side(name: str, conn, work: Workload, attrs: list[str]) -> Side:
    """One raw client: python-ldap on its own bound connection, as a careful caller writes each operation."""
    import ldap
    from ldap.controls import SimplePagedResultsControl

    SUB = ldap.SCOPE_SUBTREE
    user_filter = "(&" + "".join(f"(objectClass={oc})" for oc in scim_classes("User")[:3]) + ")"
    if name == "get_by_id":
        return Side(lambda i: conn.search_s(BASE_DN, SUB, filter_format("(didmosUUID=%s)", [user_uuid(i)]), attrs),
                    work.pick)
    if name == "filter_eq":
        return Side(lambda i: conn.search_s(BASE_DN, SUB, filter_format("(uid=%s)", [f"u{i}"]), attrs), work.pick)
    if name == "list_page":
        # Not the SSS+VLV window didmos sends: slapd keeps each VLV sort until its connection closes,
        # refuses (BUSY) a sixth on one connection and any beyond olcSssVlvMax (64) on the server, which
        # didmos's pooled connections fill; a raw VLV client beside them is refused. See bench/README.md.
        def page(_):
            control = SimplePagedResultsControl(True, size=PAGE, cookie="")
            msgid = conn.search_ext(BASE_DN, SUB, user_filter, attrs, serverctrls=[control])
            return conn.result3(msgid)  # one page; the next search starts afresh
        return Side(page)
    if name == "create":
        def new_person():
            n, new_id = work.fresh(), str(uuid.uuid4())
            person = Dataset.person(new_id, f"raw{n}", n)
            return f"didmosUUID={new_id},{PEOPLE}", [(k, [v.encode() for v in vs]) for k, vs in person.items()]
        return Side(lambda entry: conn.add_s(*entry), new_person)
    if name == "patch_replace":
        return Side(lambda a: conn.modify_s(Dataset.user_dn(a[0]), [(ldap.MOD_REPLACE, "title", [a[1].encode()])]),
                    lambda: (work.pick(), f"title {work.fresh()}"))
    if name == "member_add":
        return Side(lambda p: conn.modify_s(Dataset.group_dn(p[1]), [(ldap.MOD_ADD, "member",
                                                                      [Dataset.user_dn(p[0]).encode()])]),
                    work.new_membership)
    raise ValueError(name)


# -- CPU per operation ------------------------------------------------------------------------------

class CpuMeter:
    """CPU seconds used by slapd, by the API (gunicorn master and workers) and by this process."""

    def __init__(self, slapd_pid: int, api_pid: int | None):
        self.slapd_pid, self.api_pid = slapd_pid, api_pid
        self.api_pids = [api_pid, *child_pids(api_pid)] if api_pid else []

    def read(self) -> tuple[float, float, float]:
        times = os.times()
        return (process_cpu_seconds(self.slapd_pid), sum(process_cpu_seconds(p) for p in self.api_pids),
                times.user + times.system)


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS of /proc/<pid>/status) in MB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@dataclass
class Measured:
    """One side of one operation over all its rounds."""

    sample: Sample = field(default_factory=Sample)
    wall: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # slapd, api, client

    @property
    def per_s(self) -> float:
        return len(self.sample.latencies) / self.wall if self.wall else 0.0

    def cpu_ms(self, which: int) -> float:
        return self.cpu[which] / len(self.sample.latencies) * 1000 if self.sample.latencies else 0.0


def measure_rounds(sides: dict[str, list[Side]], seconds: float, rounds: int, meter: CpuMeter,
                   warmup: float) -> dict[str, Measured]:
    """Warm every side up, then alternate: each side's clients all at once for ``seconds / rounds``."""
    for clients in sides.values():
        run_concurrently(clients, warmup, record=False)
    results = {name: Measured() for name in sides}
    for _ in range(rounds):
        for name, clients in sides.items():
            for side in clients:
                side.sample = Sample()
            before = meter.read()
            wall = run_concurrently(clients, seconds / rounds)
            after = meter.read()
            result = results[name]
            result.wall += wall
            result.sample.latencies += [t for side in clients for t in side.sample.latencies]
            result.cpu = [c + (a - b) for c, a, b in zip(result.cpu, after, before)]
    return results


# -- LDAP operations per request, from the access log -------------------------------------------------

def accesslog_overlay(config) -> str:
    import ldap

    found = config.search_s("cn=config", ldap.SCOPE_SUBTREE, "(objectClass=olcAccessLogConfig)", ["olcAccessLogOps"])
    if len(found) != 1:
        raise RuntimeError(f"expected one accesslog overlay in cn=config, found {len(found)}")
    return found[0][0]


MARKER = "bench-marker-"


def count_ldap_operations(bench, port: int, authorization: str, work: Workload, names: list[str],
                          per_operation: int) -> dict[str, tuple[list[int], list[str], list[str]]]:
    """For each operation: how many LDAP operations each of ``per_operation`` sequential requests sent
    (binds included), and the operations of a request with the median count and of the largest.

    slapd's access log normally records successful writes only; it records every operation, failed ones
    too (``olcAccessLogOps: all``, ``olcAccessLogSuccess: FALSE``), for this step alone. Its ``reqStart``
    orders the operations but counts within a second rather than timing them, so this client sends a
    marker search (``(cn=bench-marker-<k>)``, on a connection of its own) before each request: what the
    log holds between two markers is one request's. Nothing else talks to this slapd meanwhile.
    Operations an overlay above accesslog refuses (sssvlv's BUSY) never reach the log.
    """
    import ldap

    config = bench.server.config_connection()
    marker = raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
    overlay = accesslog_overlay(config)
    # Reading the log back as this process's own identity: without a limit of its own it gets 500 entries.
    log_db = config.search_s("cn=config", ldap.SCOPE_ONELEVEL,
                             "(&(objectClass=olcMdbConfig)(olcSuffix=cn=accesslog))", ["olcLimits"])[0]
    unlimited = f'dn.exact="{bench.server.peercred_dn}" size=unlimited time=unlimited'.encode()
    if unlimited not in log_db[1].get("olcLimits", []):
        config.modify_s(log_db[0], [(ldap.MOD_ADD, "olcLimits", [unlimited])])
    settings = ("olcAccessLogOps", "olcAccessLogSuccess")
    previous = config.search_s(overlay, ldap.SCOPE_BASE, attrlist=list(settings))[0][1]
    sent: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": authorization, "Content-Type": "application/scim+json"}
    config.modify_s(overlay, [(ldap.MOD_REPLACE, "olcAccessLogOps", [b"all"]),
                              (ldap.MOD_REPLACE, "olcAccessLogSuccess", [b"FALSE"])])
    try:
        for name in names:
            prepare = scim_request(name, work)
            for _ in range(per_operation):
                method, path, body, status = prepare()
                marker.search_s(PEOPLE, ldap.SCOPE_BASE, f"(cn={MARKER}{len(sent)})", ["1.1"])
                conn.request(method, path, body, headers)
                answer = conn.getresponse()
                payload = answer.read()
                if answer.status != status:
                    raise RuntimeError(f"{method} {path}: {answer.status}: {payload[:300]!r}")
                sent.append(name)
        marker.search_s(PEOPLE, ldap.SCOPE_BASE, f"(cn={MARKER}{len(sent)})", ["1.1"])
    finally:
        config.modify_s(overlay, [(ldap.MOD_REPLACE, name, previous[name]) for name in settings])
        conn.close()
        marker.unbind_s()
    logged = config.search_s("cn=accesslog", ldap.SCOPE_ONELEVEL, "(objectClass=auditObject)",
                             ["reqStart", "reqType", "reqDN", "reqFilter", "reqControls", "reqResult"])
    config.unbind_s()
    per_request: list[list[str]] = [[] for _ in sent]
    current = None
    for _, attrs in sorted(logged, key=lambda item: item[1]["reqStart"][0]):
        text = {k: v[0].decode(errors="replace") for k, v in attrs.items()}
        found = text.get("reqFilter", "")
        if found.startswith(f"(cn={MARKER}"):
            current = int(found[len(f"(cn={MARKER}"):-1])
            continue
        if current is None or current >= len(sent):
            continue  # before the first or after the last marker: not a request's
        what = f"{text['reqType']} {text.get('reqDN', '')}"
        if found:
            what += f" {found}"
        if "reqControls" in attrs:
            what += " [" + ", ".join(_control_name(c) for c in attrs["reqControls"]) + "]"
        if text.get("reqResult", "0") != "0":
            what += f" -> result {text['reqResult']}"
        per_request[current].append(what)
    result: dict[str, tuple[list[int], list[str], list[str]]] = {}
    for name in names:
        requests = [ops for ops, request_name in zip(per_request, sent) if request_name == name]
        counts = [len(ops) for ops in requests]
        typical = next(ops for ops in requests if len(ops) == statistics.median_low(counts))
        largest = max(requests, key=len)
        result[name] = (counts, typical, largest)
    return result


def _control_name(raw: bytes) -> str:
    text = raw.decode(errors="replace")
    names = {"1.2.840.113556.1.4.473": "sort", "2.16.840.1.113730.3.4.9": "vlv", "1.3.6.1.1.13.2": "post-read",
             "1.2.840.113556.1.4.1413": "permissive-modify", "1.3.6.1.1.12": "assertion",
             "1.2.840.113556.1.4.319": "paged"}
    for oid, label in names.items():
        if oid in text:
            return label
    return text.split()[0] if text else "?"


# -- one directory with its API ----------------------------------------------------------------------

@dataclass
class Environment:
    """A private slapd with a dataset, a private redis and ``didmos serve`` pointed at both."""

    bench: object  # _common.BenchDirectory
    api: object  # the gunicorn master (subprocess.Popen)
    port: int
    authorization: str
    work: Workload


@contextmanager
def environment(data: Dataset, args) -> Iterator[Environment]:
    """Start slapd (bulk-loaded with ``data``), redis and the API; stop all three on the way out."""
    from didmos_host.servers import RedisServer, free_port

    with bench_directory(data.write) as bench:
        root = Path(bench.server.data_dir).parent
        redis = RedisServer(root / "redis", port=free_port(), persistence=False)
        redis.start()
        api = None
        try:
            started = perf_counter()
            api, port = start_api({**bench.overrides, "redis": {"url": redis.url}}, root, workers=args.workers,
                                  threads=args.threads)
            bench.timings["api_s"] = perf_counter() - started
            yield Environment(bench, api, port, superadmin_basic(bench), Workload(data, args.seed))
        finally:
            if api is not None:
                stop_api(api)
            redis.stop()


def superadmin_basic(bench) -> str:
    """The Authorization header of the superadmin, whose password the bench directory set."""
    secret = bench.overrides["directory"]["superadmin_password"]
    return "Basic " + base64.b64encode(f"{SUPERADMIN_UUID}:{secret}".encode()).decode()


def describe(env: Environment) -> str:
    t = env.bench.timings
    return (f"{env.bench.description}; setup: init {t['init_s']:.1f} s, LDIF {t['ldif_s']:.1f} s, slapadd -q "
            f"{t['slapadd_s']:.1f} s, start {t['start_s']:.1f} s, API {t['api_s']:.1f} s")


def compare_latency(small: Environment, large: Environment, name: str, seconds: float) -> tuple[Sample, Sample]:
    """One client per directory, one request at a time, in alternating 0.2 s slices (the two APIs run side
    by side, so drift falls on both): the unloaded latency at each size."""
    sides = [scim_side(env.port, env.authorization, scim_request(name, env.work)) for env in (small, large)]
    try:
        compare(sides[0], sides[1], seconds, slice_seconds=0.2, warmup=0.3)
    finally:
        for side in sides:
            side.close()
    return sides[0].sample, sides[1].sample


def check_shapes(env: Environment) -> None:
    """A user created through SCIM and a bulk-loaded one have the same object classes and attributes."""
    import ldap

    bench = env.bench
    method, path, body, status = scim_request("create", env.work)()
    client = http.client.HTTPConnection("127.0.0.1", env.port, timeout=30)
    try:
        client.request(method, path, body, {"Authorization": env.authorization,
                                            "Content-Type": "application/scim+json"})
        answer = client.getresponse()
        created = json.loads(answer.read())
    finally:
        client.close()
    if answer.status != status:
        raise RuntimeError(f"{method} {path}: {answer.status}: {created}")
    conn = raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
    try:
        found = conn.search_s(BASE_DN, ldap.SCOPE_SUBTREE, filter_format("(didmosUUID=%s)", [created["id"]]))
        loaded = conn.search_s(Dataset.user_dn(0), ldap.SCOPE_BASE)
    finally:
        conn.unbind_s()
    (_, made), (_, bulk) = found[0], loaded[0]
    classes = {v.decode().lower() for v in made["objectClass"]}, {v.decode().lower() for v in bulk["objectClass"]}
    names = {k.lower() for k in made} - {"memberof"}, {k.lower() for k in bulk} - {"memberof"}
    if classes[0] != classes[1] or names[0] != names[1]:
        print(f"  note: a SCIM-created user differs from the bulk-loaded ones: classes "
              f"{sorted(classes[0] ^ classes[1])}, attributes {sorted(names[0] ^ names[1])}")
    else:
        print(f"  shapes: a SCIM-created user has the bulk-loaded users' object classes "
              f"({', '.join(sorted(classes[0]))}) and attributes")


def measure_scaling(small: Environment, large: Environment, args) -> dict[str, float]:
    """The filter's and a page's unloaded latency at 1,000 users and at the configured size, and a page's
    LDAP operations at 1,000 users (at the configured size they are counted with the others)."""
    figures: dict[str, float] = {}
    print(f"one client per directory, unloaded, alternating 0.2 s slices ({args.latency_seconds:g} s each): "
          f"p50 (p99) at {SMALL_USERS} users / at {args.users} users")
    for name, label, prefix in (("filter_eq", "filter userName eq", "filter_latency"),
                                ("list_page", f"page of {PAGE}", "list_page_latency")):
        at_small, at_large = compare_latency(small, large, name, args.latency_seconds)
        small_p50, large_p50 = at_small.quantile_ms(.5), at_large.quantile_ms(.5)
        ratio = small_p50 / large_p50
        verdict = ""
        if name == "filter_eq":
            verdict = (f"   target >= {FILTER_LATENCY_TARGET:.3f} (at most 1.2x slower): "
                       f"{'ok' if ratio >= FILTER_LATENCY_TARGET else 'SHORT'}")
        print(f"  {label:20} {small_p50:7.2f} ({at_small.quantile_ms(.99):6.2f}) ms / {large_p50:7.2f} "
              f"({at_large.quantile_ms(.99):6.2f}) ms, small/large {ratio:.3f}{verdict}", flush=True)
        figures.update({f"{prefix}_small_p50_ms": small_p50, f"{prefix}_small_p99_ms": at_small.quantile_ms(.99),
                        f"{prefix}_large_p50_ms": large_p50, f"{prefix}_large_p99_ms": at_large.quantile_ms(.99),
                        f"{prefix}_ratio": ratio})
    counted = count_ldap_operations(small.bench, small.port, small.authorization, small.work, ["list_page"],
                                    args.count_requests)
    counts = counted["list_page"][0]
    figures["list_page_small_ldap_ops"] = statistics.median(counts)
    print(f"  LDAP operations per page at {SMALL_USERS} users: median {statistics.median(counts):g}, max "
          f"{max(counts)} (the same count as below)")
    return figures


def measure_large(env: Environment, args, only: list[str]) -> dict[str, float]:
    """At the configured size: LDAP operations per request, the load, the framework floor."""
    figures: dict[str, float] = {}
    counted = count_ldap_operations(env.bench, env.port, env.authorization, env.work, only, args.count_requests)
    figures.update(report_ldap_operations(counted, only, args.count_requests))
    meter = CpuMeter(env.bench.server.pid, env.api.pid)
    figures.update(measure_load(env, only, args, meter))
    figures.update(measure_floor(env, args, meter, figures.get("get_by_id_raw_per_s")))
    figures["slapd_rss_after_mb"] = rss_mb(env.bench.server.pid)
    return figures


def report_ldap_operations(counted, names: list[str], requests: int) -> dict[str, float]:
    """Print what :func:`count_ldap_operations` found; ``<name>_ldap_ops`` is the median per request."""
    def show(operations: list[str], most: int = 8) -> None:
        for what in operations[:most]:
            print(f"      {what[:140]}")
        if len(operations) > most:
            print(f"      ... and {len(operations) - most} more like the last")

    print(f"LDAP operations per request (slapd access log, {requests} sequential requests each; median, max; "
          "the operations of a median request):")
    figures = {}
    for name in names:
        counts, typical, largest = counted[name]
        figures[f"{name}_ldap_ops"] = statistics.median(counts)
        verdict = ""
        if name == "list_page":
            verdict = f"   target <= {PAGE_OPS_TARGET}: " + (
                "ok" if statistics.median(counts) <= PAGE_OPS_TARGET else "SHORT")
        print(f"  {OPERATIONS[name][0]:44} {statistics.median(counts):4g} {max(counts):4d}{verdict}")
        show(typical)
        if len(largest) > len(typical):
            print(f"    the largest ({sum(1 for c in counts if c == len(largest))} of {len(counts)}):")
            show(largest)
            if any(a.startswith("unbind") and b.startswith("bind") for a, b in zip(largest, largest[1:])):
                print("      (a reconnect: the pool took a refused search (BUSY) for a lost connection; the "
                      "refused search itself is not in the log, sssvlv answers it above accesslog)")
    return figures


def measure_load(env: Environment, names: list[str], args, meter: CpuMeter) -> dict[str, float]:
    """Each operation: SCIM clients and raw clients in alternating rounds; rates, latencies, ratio, CPU."""
    bench, port, auth, work = env.bench, env.port, env.authorization, env.work
    attrs = scim_read_attributes()
    raw_conns = [raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
                 for _ in range(args.clients)]
    print(f"load: {args.clients} concurrent clients per side in this process (threads; SCIM: one keep-alive "
          f"http.client connection each, HTTP Basic as the superadmin; raw: one bound python-ldap connection "
          f"each); {args.rounds} alternating rounds, {args.seconds:g} s per operation and side; client, API "
          f"and slapd share {cores()} cores")
    print(f"raw side (reads ask for the attributes SCIM asks for, below {BASE_DN}):")
    for name in names:
        print(f"  {OPERATIONS[name][0]:44} {OPERATIONS[name][1]}")
    print(f"slapd RSS before the load: {rss_mb(bench.server.pid):.0f} MB")
    print(f"{'operation':44} {'req/s':>7} {'p50':>6} {'p99':>6}   {'raw/s':>7} {'p50':>6} {'p99':>6}   "
          f"{'ratio':>6} {'target':>15}   CPU ms/op: slapd api client | raw: slapd client", flush=True)
    figures: dict[str, float] = {}
    try:
        for name in names:
            label, _, target = OPERATIONS[name]
            sides = {"scim": [scim_side(port, auth, scim_request(name, work)) for _ in range(args.clients)],
                     "raw": [raw_side(name, conn, work, attrs) for conn in raw_conns]}
            try:
                measured = measure_rounds(sides, args.seconds, args.rounds, meter, args.warmup)
            finally:
                for side in sides["scim"]:
                    side.close()
            scim, raw = measured["scim"], measured["raw"]
            ratio = scim.per_s / raw.per_s
            verdict = "ok" if ratio >= target else "SHORT"
            print(f"{label:44} {scim.per_s:7.0f} {scim.sample.quantile_ms(.5):6.2f} "
                  f"{scim.sample.quantile_ms(.99):6.2f}   {raw.per_s:7.0f} {raw.sample.quantile_ms(.5):6.2f} "
                  f"{raw.sample.quantile_ms(.99):6.2f}   {ratio:6.3f} {f'>= {target:g}: {verdict}':>15}"
                  f"   {scim.cpu_ms(0):5.2f} {scim.cpu_ms(1):5.2f} {scim.cpu_ms(2):5.2f} | "
                  f"{raw.cpu_ms(0):5.2f} {raw.cpu_ms(2):5.2f}", flush=True)
            if name == "list_page":
                print(f"  slapd RSS after the pages: {rss_mb(bench.server.pid):.0f} MB")
            figures.update({
                f"{name}_scim_per_s": scim.per_s, f"{name}_scim_p50_ms": scim.sample.quantile_ms(.5),
                f"{name}_scim_p99_ms": scim.sample.quantile_ms(.99), f"{name}_raw_per_s": raw.per_s,
                f"{name}_raw_p50_ms": raw.sample.quantile_ms(.5), f"{name}_raw_p99_ms": raw.sample.quantile_ms(.99),
                f"{name}_ratio": ratio, f"{name}_scim_slapd_cpu_ms": scim.cpu_ms(0),
                f"{name}_scim_api_cpu_ms": scim.cpu_ms(1), f"{name}_scim_client_cpu_ms": scim.cpu_ms(2),
                f"{name}_raw_slapd_cpu_ms": raw.cpu_ms(0), f"{name}_raw_client_cpu_ms": raw.cpu_ms(2),
            })
    finally:
        for conn in raw_conns:
            conn.unbind_s()
    return figures


def measure_floor(env: Environment, args, meter: CpuMeter, raw_get_per_s: float | None) -> dict[str, float]:
    """What the framework alone allows: GET /healthz (no authentication, no LDAP) and GET /auth/whoami
    (Basic authentication, its credential cache warm), same clients, half the time of an operation."""
    port, auth = env.port, env.authorization
    sides = {"healthz": [scim_side(port, auth, lambda: ("GET", "/healthz", None, 200)) for _ in range(args.clients)],
             "whoami": [scim_side(port, auth, lambda: ("GET", "/auth/whoami", None, 200)) for _ in range(args.clients)]}
    try:
        measured = measure_rounds(sides, args.seconds / 2, args.rounds, meter, args.warmup)
    finally:
        for side in sides["healthz"] + sides["whoami"]:
            side.close()
    figures = {}
    print("the framework alone, same clients (no raw side):")
    for name, label in (("healthz", "GET /healthz (no auth, no LDAP)"), ("whoami", "GET /auth/whoami (+ Basic auth)")):
        result = measured[name]
        share = f"   {result.per_s / raw_get_per_s:.3f} of raw read by id" if raw_get_per_s else ""
        print(f"{label:44} {result.per_s:7.0f} {result.sample.quantile_ms(.5):6.2f} "
              f"{result.sample.quantile_ms(.99):6.2f}"
              f"{share:44}   {result.cpu_ms(0):5.2f} {result.cpu_ms(1):5.2f} {result.cpu_ms(2):5.2f}")
        figures.update({f"{name}_per_s": result.per_s, f"{name}_p50_ms": result.sample.quantile_ms(.5),
                        f"{name}_p99_ms": result.sample.quantile_ms(.99), f"{name}_api_cpu_ms": result.cpu_ms(1)})
        if raw_get_per_s:
            figures[f"{name}_vs_raw_get_ratio"] = result.per_s / raw_get_per_s
    return figures


# -- profiling one request type in process --------------------------------------------------------------

def profile(args, name: str) -> None:
    """``--profile NAME``: the request in this process (Flask test client, no gunicorn, no HTTP) under
    cProfile, after 50 unprofiled ones; prints CPU and wall time per request and the top functions."""
    import cProfile
    import pstats

    from didmos_host.app import create_app

    data = Dataset(args.users, args.groups, args.seed)
    with bench_directory(data.write) as bench:
        app = create_app(**bench.overrides)
        client = app.test_client()
        headers = {"Authorization": superadmin_basic(bench), "Content-Type": "application/scim+json"}
        prepare = scim_request(name, Workload(data, args.seed))

        def one() -> int:
            method, path, body, status = prepare()
            answer = client.open(path, method=method, data=body, headers=headers)
            if answer.status_code != status:
                raise RuntimeError(f"{method} {path}: {answer.status_code}: {answer.data[:300]!r}")
            return len(answer.data)

        for _ in range(50):
            one()
        count = args.profile_requests
        wall, cpu = perf_counter(), time.process_time()
        size = sum(one() for _ in range(count)) / count
        wall, cpu = (perf_counter() - wall) / count, (time.process_time() - cpu) / count
        print(f"{OPERATIONS[name][0]} in process, {args.users} users: {wall * 1000:.2f} ms wall, {cpu * 1000:.2f} ms "
              f"CPU per request (unprofiled), {size:.0f} bytes per answer; profile of {count} more:")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(count):
            one()
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


# -- the benchmark ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users in the directory (default 10000)")
    parser.add_argument("--groups", type=int, default=100, help="groups (default 100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients per side (default 8)")
    parser.add_argument("--seconds", type=float, default=2.5, help="seconds per operation and side (default 2.5)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per operation (default 5)")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds of warm-up per operation and side")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as api.workers)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8, as api.threads)")
    parser.add_argument("--latency-seconds", type=float, default=2.0,
                        help="seconds of one sequential client per latency figure (default 2)")
    parser.add_argument("--count-requests", type=int, default=12,
                        help="sequential requests per operation whose LDAP operations are counted (default 12)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(OPERATIONS)}")
    parser.add_argument("--no-small", action="store_true", help="skip the 1,000-user directory")
    parser.add_argument("--profile", choices=list(OPERATIONS),
                        help="instead of the benchmark: profile one request type in this process (cProfile)")
    parser.add_argument("--profile-requests", type=int, default=300, help="requests profiled (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    only = [name.strip() for name in args.only.split(",") if name.strip()] or list(OPERATIONS)
    unknown = set(only) - set(OPERATIONS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; known: {', '.join(OPERATIONS)}")
    only = [name for name in OPERATIONS if name in only]
    if args.users < PAGE or args.groups < 1 or args.clients < 1 or args.seconds <= 0 or args.rounds < 1:
        parser.error(f"need --users >= {PAGE}, --groups >= 1, --clients >= 1, --seconds > 0, --rounds >= 1")

    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C, so the API, redis and slapd are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.profile:
        profile(args, args.profile)
        return 0
    run_started = perf_counter()
    print(f"didmos SCIM under load vs python-ldap: {args.users} users, {args.groups} groups, {args.clients} clients, "
          f"{cores()} cores, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    figures: dict[str, float] = {}
    with environment(Dataset(args.users, args.groups, args.seed), args) as large:
        print(f"directory: {describe(large)}", flush=True)
        print(f"didmos serve: gunicorn gthread, {args.workers} workers x {args.threads} threads, access log to "
              f"/dev/null; a private redis", flush=True)
        check_shapes(large)
        if not args.no_small:
            # Up beside the large one only for the comparison, so that the two alternate.
            with environment(Dataset(SMALL_USERS, args.groups, args.seed), args) as small:
                print(f"small directory, its own slapd, redis and API: {describe(small)}", flush=True)
                figures.update(measure_scaling(small, large, args))
        figures.update(measure_large(large, args, only))
    print(f"total {perf_counter() - run_started:.1f} s, API, redis and slapd stopped")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
