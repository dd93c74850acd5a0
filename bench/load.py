"""Mixed SCIM load on two didmos nodes over two replicating providers, with and without faults; then
check that nothing acknowledged was lost.

The setup is the scale-out one of docs/deployment.md on loopback: two slapd providers replicating each
other (multi-provider syncrepl), one redis (append-only file), two ``didmos serve`` nodes (both
write to provider 1 first and fail over to provider 2; ``--writes own``: node ``i`` writes to provider
``i`` first, so both providers take writes at once) and one ``didmos worker``. Clients
are threads with one keep-alive HTTP connection each; a client sticks to its home node and, when that
node does not answer at all (connection refused or reset), sends the request to the other node, as a
load balancer would.

Two phases of ``--seconds`` each:

1. **steady**: the mix (reads, filters, creates, PATCHes, group membership adds, deletes) and a task
   client submitting a no-op outbox task every 0.2 s;
2. **faults**: the same while, one at a time, ``kill -9`` and a restart after ``--down`` seconds hit
   provider 1, redis, node 1 (the gunicorn master and its workers) and the worker.

Every client owns the users it created (only it patches or deletes them), so the state each
acknowledged write must leave is known. A write whose answer never came (503, connection lost) is
"unknown": its effect may or may not be there, and the check allows both (a create must then exist at
most once). After the phases: wait until the providers hold the same entries, then check on both
providers that every acknowledged create is there with an acknowledged (or unknown) displayName,
every acknowledged delete is gone, every acknowledged member is in its group, and every submitted
task is done.

Last line, JSON: ``steady_req_per_s``, ``faults_req_per_s``, ``fault_throughput_ratio`` (faults /
steady, higher is better), p50/p99 per operation in the steady phase, ``errors_5xx`` (5xx other than
503, target 0), ``unavailable_503`` (during faults), ``lost_writes`` (target 0; each acknowledged write
missing counts once per provider), ``lost_tasks`` (target 0), ``converge_ms``,
``replication_lag_p50_ms``/``_p99_ms``/``_max_ms`` (how long provider 2 took to hold provider 1's
latest change, sampled every 0.1 s: the window of writes a kill -9 of provider 1 can lose), and, when
member adds were lost, ``lost_<kind>``: how each lost member add was lost, found in both providers'
``cn=accesslog`` (``unreplicated-at-kill``: made on provider 1, not yet replicated when it was killed;
``both-providers``: overwritten by a change to the group made at the same time on the other provider;
``stale-provider``: overwritten by a later change made on a provider that did not have it yet).
``--explain`` prints each loss and the nodes' LDAP failovers, failbacks and writer switches; ``--logs
DIR`` keeps the slapd, node and worker logs.

    .venv/bin/python bench/load.py                       # about a minute
    .venv/bin/python bench/load.py --seconds 120 --clients 16
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cores, print_figures, start_api, stop_api, write_settings_file  # noqa: E402

PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
GROUPS = "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
#: The mix: operation -> weight.
MIX = {"read": 30, "filter": 20, "create": 15, "patch": 15, "member": 10, "delete": 5}
GROUP_COUNT = 6


class Unanswered(Exception):
    """No HTTP answer from any node (both refused or reset the connection)."""


@dataclass
class Owned:
    """What a client knows of a user it created."""

    id: str
    user_name: str
    #: displayName values the entry may hold now: the last acknowledged one plus any unknown since.
    names: set[str]
    deleted: bool | None = False  # None: a delete whose outcome is unknown


@dataclass
class Ledger:
    """Everything acknowledged or attempted, shared by the clients (each appends under the lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: list[Owned] = field(default_factory=list)
    unknown_creates: list[str] = field(default_factory=list)  # userNames
    members: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # group id -> user ids
    tasks: list[str] = field(default_factory=list)
    task_errors: Counter = field(default_factory=Counter)
    #: every acknowledged member add: (group id, user id, node that answered, wall-clock start, end)
    member_adds: list[tuple[str, str, int, float, float]] = field(default_factory=list)


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: Counter = field(default_factory=Counter)  # (op, status)
    failovers: int = 0
    unanswered: int = 0

    def merge(self, other: Stats) -> None:
        for op, values in other.latencies.items():
            self.latencies[op].extend(values)
        self.statuses.update(other.statuses)
        self.failovers += other.failovers
        self.unanswered += other.unanswered


class Client:
    """One simulated SCIM client: a keep-alive connection to its home node, the other node as fallback."""

    def __init__(self, index: int, ports: list[int], authorization: str, groups: list[str], ledger: Ledger):
        self.index, self.ports, self.groups, self.ledger = index, ports, groups, ledger
        self.home = index % len(ports)
        self.headers = {"Authorization": authorization, "Content-Type": "application/scim+json",
                        "Accept": "application/scim+json"}
        self.conns: dict[int, http.client.HTTPConnection] = {}
        self.owned: list[Owned] = []
        self.random = random.Random(index)
        self.stats = Stats()
        self.answered_by = self.home  # the node that answered the last request

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()

    def _send(self, node: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = self.conns.get(node)
        if conn is None:
            conn = self.conns[node] = http.client.HTTPConnection("127.0.0.1", self.ports[node], timeout=30)
        try:
            conn.request(method, path, body=body, headers=self.headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            del self.conns[node]
            raise

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        """The request on the home node; on the other node when the home node does not answer."""
        data = json.dumps(body).encode() if body is not None else None
        order = [self.home] + [n for n in range(len(self.ports)) if n != self.home]
        for attempt, node in enumerate(order):
            try:
                status, raw = self._send(node, method, path, data)
            except (OSError, http.client.HTTPException):
                # a keep-alive connection the node closed: try once more on the same node first
                try:
                    status, raw = self._send(node, method, path, data)
                except (OSError, http.client.HTTPException):
                    continue
            if attempt:
                self.stats.failovers += 1
            self.answered_by = node
            try:
                return status, json.loads(raw) if raw else None
            except ValueError:
                return status, None
        self.stats.unanswered += 1
        raise Unanswered()

    def timed(self, op: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        started = time.perf_counter()
        try:
            status, answer = self.call(method, path, body)
        except Unanswered:
            self.stats.statuses[(op, "unanswered")] += 1
            return 0, None
        self.stats.latencies[op].append(time.perf_counter() - started)
        self.stats.statuses[(op, status)] += 1
        return status, answer

    # -- the operations ------------------------------------------------------------------------------

    def live(self) -> list[Owned]:
        return [user for user in self.owned if user.deleted is False]

    def create(self) -> None:
        name = f"load-{uuid.uuid4().hex[:12]}"
        display = f"Created {name}"
        status, answer = self.timed("create", "POST", "/scim/v2/Users", {
            "schemas": [USER_SCHEMA], "userName": name, "displayName": display,
            "name": {"givenName": "Load", "familyName": name}})
        if status == 201 and answer:
            user = Owned(answer["id"], name, {display})
            self.owned.append(user)
            with self.ledger.lock:
                self.ledger.users.append(user)
        elif status not in range(400, 500) or status == 409:
            # 503, no answer, or 409 after a failover retry of a create that did happen: unknown
            with self.ledger.lock:
                self.ledger.unknown_creates.append(name)

    def patch(self) -> None:
        live = self.live()
        if not live:
            return self.create()
        user = self.random.choice(live)
        display = f"Patched {uuid.uuid4().hex[:8]}"
        status, _ = self.timed("patch", "PATCH", f"/scim/v2/Users/{user.id}", {
            "schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "displayName", "value": display}]})
        if status in (200, 204):
            user.names = {display}
        elif status not in range(400, 500):
            user.names.add(display)

    def delete(self) -> None:
        live = self.live()
        if len(live) < 3:
            return self.create()
        user = self.random.choice(live)
        status, _ = self.timed("delete", "DELETE", f"/scim/v2/Users/{user.id}")
        if status in (200, 204):
            user.deleted = True
        elif status not in range(400, 500):
            user.deleted = None

    def member(self) -> None:
        live = self.live()
        if not live:
            return self.create()
        user, group = self.random.choice(live), self.random.choice(self.groups)
        started = time.time()
        status, _ = self.timed("member", "PATCH", f"/scim/v2/Groups/{group}", {
            "schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "members", "value": [{"value": user.id}]}]})
        if status in (200, 204):
            with self.ledger.lock:
                self.ledger.members[group].add(user.id)
                self.ledger.member_adds.append((group, user.id, self.answered_by, started, time.time()))

    def read(self) -> None:
        live = self.live()
        if not live:
            return self.create()
        self.timed("read", "GET", f"/scim/v2/Users/{self.random.choice(live).id}")

    def filter(self) -> None:
        live = self.live()
        if not live:
            return self.create()
        name = self.random.choice(live).user_name
        self.timed("filter", "GET", f"/scim/v2/Users?filter=userName%20eq%20%22{name}%22")

    def run(self, until: float) -> None:
        operations = list(MIX)
        weights = [MIX[op] for op in operations]
        while time.monotonic() < until:
            getattr(self, self.random.choices(operations, weights)[0])()


# -- the stack -------------------------------------------------------------------------------------------

class Stack:
    """Providers, redis, the API nodes and the worker, with kill -9 and restart for each."""

    def __init__(self, root: Path, providers, redis_server, overrides: list[dict], workers: int, threads: int):
        self.root, self.providers, self.redis = root, providers, redis_server
        self.overrides, self.workers, self.threads = overrides, workers, threads
        self.apis: list = []
        self.ports: list[int] = []
        self.worker = None
        self.events: list[str] = []
        self.started = time.monotonic()
        self.wall_started = time.time()
        self.wall_events: list[tuple[float, str]] = []
        self.csn_samples: list[tuple[float, str, str]] = []

    def note(self, text: str) -> None:
        self.wall_events.append((time.time(), text))
        self.events.append(f"{time.monotonic() - self.started:7.1f}s  {text}")

    def at(self, wall: float) -> str:
        """A wall-clock time as seconds since the stack started (the scale of the events)."""
        return f"{wall - self.wall_started:7.2f}s"

    def start_api(self, node: int, port: int | None = None) -> None:
        api, port = start_api(self.overrides[node], self.root / f"node{node + 1}", workers=self.workers,
                              threads=self.threads, port=port)
        if node < len(self.apis):
            self.apis[node], self.ports[node] = api, port
        else:
            self.apis.append(api)
            self.ports.append(port)

    def start_worker(self) -> None:
        settings = write_settings_file(self.overrides[0], self.root / "worker-settings.toml")
        env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(settings)}
        log = open(self.root / "worker.log", "a")
        self.worker = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "worker"], env=env,
                                       stdout=log, stderr=log, start_new_session=True)
        log.close()

    def kill_group(self, process) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the master or worker and its children
        except ProcessLookupError:
            pass
        process.wait()

    def stop(self) -> None:
        for api in self.apis:
            stop_api(api)
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                self.kill_group(self.worker)

    # -- faults ------------------------------------------------------------------------------------------

    def fault_provider(self, down: float) -> None:
        self.note(f"kill -9 slapd provider 1 ({self.providers[0].uri})")
        self.providers[0].kill()
        time.sleep(down)
        self.providers[0].start()
        self.note("slapd provider 1 restarted")

    def fault_redis(self, down: float) -> None:
        self.note("kill -9 redis")
        self.redis.kill()
        time.sleep(down)
        self.redis.start()
        self.note("redis restarted (append-only file)")

    def fault_api(self, down: float) -> None:
        self.note(f"kill -9 API node 1 (gunicorn master and workers, port {self.ports[0]})")
        self.kill_group(self.apis[0])
        time.sleep(down)
        self.start_api(0, self.ports[0])
        self.note("API node 1 restarted")

    def fault_worker(self, down: float) -> None:
        self.note("kill -9 the worker (and its work horse)")
        self.kill_group(self.worker)
        time.sleep(down)
        self.start_worker()
        self.note("worker restarted")


def submit_tasks(host, until: float, ledger: Ledger) -> None:
    """The task client: a no-op outbox task (``didmos.ping``) every 0.2 s, in process."""
    from didmos_tasks.outbox import submit

    from didmos_host.errors import DidmosError

    while time.monotonic() < until:
        try:
            task_id = submit(host, "didmos.ping", {"value": len(ledger.tasks)})
            with ledger.lock:
                ledger.tasks.append(task_id)
        except DidmosError as exc:
            ledger.task_errors[type(exc).__name__] += 1
        time.sleep(0.2)


def _csn_seconds(csn: str) -> float:
    import calendar

    return calendar.timegm(time.strptime(csn[:14], "%Y%m%d%H%M%S")) + float("0" + csn[14:csn.index("Z")])


def sample_replication(providers, until: float, samples: list) -> None:
    """Every 0.1 s: provider 1's and provider 2's contextCSN for provider 1's server id (the changes
    made on provider 1), for :func:`replication_lags`. Skips a sample while a provider is down."""
    import ldap

    conns: dict[int, object] = {}
    while time.monotonic() < until:
        row = [time.time()]
        for index, server in enumerate(providers):
            try:
                if index not in conns:
                    conns[index] = server.admin_connection()
                [(_, attrs)] = conns[index].search_s(server.suffix, ldap.SCOPE_BASE, "(objectClass=*)", ["contextCSN"])
                row.append(next((v.decode() for v in attrs.get("contextCSN", []) if b"#001#" in v), ""))
            except ldap.LDAPError:
                conns.pop(index, None)
                row.append(None)
        if None not in row:
            samples.append(tuple(row))
        time.sleep(0.1)
    for conn in conns.values():
        conn.unbind_s()


def replication_lags(samples: list) -> list[float]:
    """For each sample: seconds until provider 2 held provider 1's latest change of that moment (0.1 s
    resolution); only while provider 1 took writes."""
    lags = []
    for i, (at, one, two) in enumerate(samples):
        if not one or one <= two:
            lags.append(0.0)
            continue
        later = next((t for t, _, other in samples[i + 1:] if other >= one), None)
        if later is not None:
            lags.append(later - at)
    return lags


def run_phase(name: str, stack: Stack, clients: list[Client], seconds: float, host, ledger: Ledger,
              faults: list | None, down: float) -> tuple[Stats, float, float]:
    until = time.monotonic() + seconds
    for client in clients:
        client.stats = Stats()
    threads = [threading.Thread(target=client.run, args=(until,)) for client in clients]
    threads.append(threading.Thread(target=submit_tasks, args=(host, until, ledger)))
    threads.append(threading.Thread(target=sample_replication, args=(stack.providers, until, stack.csn_samples)))
    stack.note(f"phase {name}: {len(clients)} clients for {seconds:g} s")
    started = time.monotonic()
    for thread in threads:
        thread.start()
    if faults:
        # spread the faults over the phase, leaving its last fifth for recovery
        gap = seconds * 0.8 / len(faults)
        for fault in faults:
            time.sleep(max(0.0, gap - down))
            fault(down)
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    total = Stats()
    for client in clients:
        total.merge(client.stats)
    answered = sum(len(v) for v in total.latencies.values())
    stack.note(f"phase {name} done: {answered} answered requests in {elapsed:.1f} s")
    return total, answered / elapsed, elapsed


# -- the checks ------------------------------------------------------------------------------------------

def entries(server, base: str, attrs: list[str]) -> dict[str, dict]:
    import ldap

    conn = server.admin_connection()
    try:
        found = conn.search_s(base, ldap.SCOPE_ONELEVEL, "(objectClass=*)", attrs)
    finally:
        conn.unbind_s()
    return {dn.lower(): {k.lower(): sorted(v) for k, v in a.items()} for dn, a in found}


def wait_converged(providers, timeout: float) -> float:
    """Seconds until every provider holds the same people and groups (entryCSN included)."""
    started = time.monotonic()
    while True:
        views = [(entries(p, PEOPLE, ["entryCSN"]), entries(p, GROUPS, ["entryCSN"])) for p in providers]
        if all(view == views[0] for view in views[1:]):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            differ = [(dn, [view[0].get(dn, view[1].get(dn)) for view in views]) for dn in
                      sorted(set(views[0][0]) | set(views[0][1]) | set(views[1][0]) | set(views[1][1]))
                      if len({repr(view[0].get(dn, view[1].get(dn))) for view in views}) > 1]
            print(f"the providers did not converge within {timeout:g} s: {len(differ)} entries differ, "
                  f"for example {differ[:3]}", flush=True)
            return -1.0
        time.sleep(0.5)


def check(providers, ledger: Ledger, groups: list[str]) -> tuple[int, list[str]]:
    """Acknowledged writes missing or wrong on any provider: (count, first descriptions)."""
    problems: list[str] = []
    for server in providers:
        people = entries(server, PEOPLE, ["displayName", "uid"])
        group_entries = entries(server, GROUPS, ["member"])
        by_name = Counter(values[0].decode() for values in
                          (attrs.get("uid") for attrs in people.values()) if values)
        for user in ledger.users:
            dn = f"didmosuuid={user.id},{PEOPLE}".lower()
            if user.deleted is True and dn in people:
                problems.append(f"{server.uri}: deleted user {user.id} is still there")
            elif user.deleted is False:
                if dn not in people:
                    problems.append(f"{server.uri}: created user {user.id} is missing")
                else:
                    have = {v.decode() for v in people[dn].get("displayname", [])}
                    if not have & user.names:
                        problems.append(f"{server.uri}: user {user.id} has displayName {have}, acknowledged {user.names}")
        for name in ledger.unknown_creates:
            if by_name[name] > 1:
                problems.append(f"{server.uri}: userName {name} exists {by_name[name]} times")
        state = {u.id: u.deleted for u in ledger.users}
        for group in groups:
            dn = f"didmosuuid={group},{GROUPS}".lower()
            members = {v.decode().lower() for v in group_entries.get(dn, {}).get("member", [])}
            for user_id in ledger.members.get(group, ()):
                if state.get(user_id) is False and f"didmosuuid={user_id},{PEOPLE}".lower() not in members:
                    problems.append(f"{server.uri}: user {user_id} is missing from group {group}")
    return len(problems), problems[:10]


def _accesslog(server, group_dn: str) -> list[dict]:
    """The changes to ``group_dn`` in ``server``'s cn=accesslog, oldest first: when (wall clock), the
    entryCSN it gave, the member values added, and whether didmos (not replication) made it."""
    import calendar

    import ldap
    import ldap.filter

    conn = server.admin_connection()
    try:
        found = conn.search_s("cn=accesslog", ldap.SCOPE_ONELEVEL,
                              ldap.filter.filter_format("(&(objectClass=auditModify)(reqDN=%s))", [group_dn]),
                              ["reqStart", "reqMod", "reqAuthzID"])
    finally:
        conn.unbind_s()
    changes = []
    for _, attrs in found:
        mods = [v.decode() for v in attrs.get("reqMod", [])]
        csn = next((m.split(":= ", 1)[1] for m in mods if m.lower().startswith("entrycsn:= ")), "")
        # reqStart counts in whole seconds (its fraction is a counter); the entryCSN has microseconds and
        # is when the change was made, on whichever provider that was
        start = csn or attrs["reqStart"][0].decode()  # 20261123183000.123456Z
        wall = calendar.timegm(time.strptime(start[:14], "%Y%m%d%H%M%S")) + float("0" + start[14:start.index("Z")])
        added = {m.split(":+ ", 1)[1].lower() for m in mods if m.lower().startswith("member:+ ")}
        local = b"didmos-service" in attrs.get("reqAuthzID", [b""])[0]
        changes.append({"wall": wall, "csn": csn, "added": added, "local": local})
    return sorted(changes, key=lambda c: c["wall"])


def explain_losses(stack: Stack, ledger: Ledger, groups: list[str]) -> tuple[Counter, list[str]]:
    """For each acknowledged member add missing on provider 1 (the providers converged): where it was
    made, when, and which change on the other provider (made before that one had it) overwrote it.

    Returns the number per kind and one line per loss. Kinds: ``unreplicated-at-kill`` (made on provider
    1 before its kill -9 and not replicated to provider 2 by then; provider 2 took a later change to the
    group without it), ``both-providers`` (overwritten by a change
    made on the other provider within a second: both took writes to the group at the same time),
    ``stale-provider`` (overwritten by a change made more than a second later on the other provider,
    which still lacked it: a provider written to before it had caught up)."""
    providers = stack.providers
    state = {u.id: u.deleted for u in ledger.users}
    kinds: Counter = Counter()
    lines: list[str] = []
    oldest = 0.0  # the oldest unreplicated change at the kill, in seconds before it
    kill = next((w for w, text in stack.wall_events if text.startswith("kill -9 slapd")), None)
    back = next((w for w, text in stack.wall_events if text.startswith("slapd provider 1 restarted")), None)
    final = entries(providers[0], GROUPS, ["member"])
    for group in groups:
        dn = f"didmosuuid={group},{GROUPS}".lower()
        members = {v.decode().lower() for v in final.get(dn, {}).get("member", [])}
        logs = [_accesslog(server, dn) for server in providers]
        for g, user_id, node, t0, t1 in ledger.member_adds:
            user_dn = f"didmosuuid={user_id},{PEOPLE}".lower()
            if g != group or state.get(user_id) is not False or user_dn in members:
                continue
            origin = [(i, c) for i, log in enumerate(logs) for c in log if c["local"] and user_dn in c["added"]]
            if not origin:
                kinds["not-in-accesslog"] += 1
                lines.append(f"{group[:8]} {user_id[:8]} (node {node + 1}, {stack.at(t0)}): no record")
                continue
            made_on, change = origin[-1]
            other = 1 - made_on
            applied = next((c["wall"] for c in logs[other] if c["csn"] == change["csn"]), None)
            overwriter = next((c for c in logs[other] if c["local"] and c["csn"] > change["csn"]
                               and (applied is None or c["wall"] < applied)), None)
            if made_on == 0 and kill is not None and change["wall"] <= kill and applied is None:
                kind = "unreplicated-at-kill"
                oldest = max(oldest, kill - change["wall"])
            elif overwriter is not None and overwriter["wall"] > change["wall"] + 1.0:
                kind = "stale-provider"
            else:
                kind = "both-providers"
            kinds[kind] += 1
            lines.append(
                f"{kind}: {group[:8]} {user_id[:8]} via node {node + 1} on provider {made_on + 1} at "
                f"{stack.at(change['wall'])}; provider {other + 1} applied it "
                f"{stack.at(applied) if applied else 'never'}; overwritten by a change on provider {other + 1} "
                f"at {stack.at(overwriter['wall']) if overwriter else '?'}")
    if kill is not None:
        lines.insert(0, f"provider 1 killed at {stack.at(kill)}, restarted at {stack.at(back) if back else '?'}"
                        + (f"; the oldest lost change it had not replicated was {oldest:.2f} s old" if oldest else ""))
    return kinds, lines


def wait_tasks(host, task_ids: list[str], timeout: float) -> tuple[int, Counter]:
    """Tasks not done after ``timeout``, and the states of all."""
    from didmos_tasks.outbox import outbox

    box = outbox(host)
    deadline = time.monotonic() + timeout
    while True:
        states = Counter()
        open_ids = []
        for task_id in task_ids:
            state = box.get(task_id).state
            states[state] += 1
            if state != "done":
                open_ids.append(task_id)
        if not open_ids or time.monotonic() > deadline:
            return len(open_ids), states
        time.sleep(1.0)


def quantile_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent SCIM clients (default 8)")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a killed component stays down")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers per node (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker (default 8)")
    parser.add_argument("--no-faults", action="store_true", help="the steady phase only")
    parser.add_argument("--explain", action="store_true",
                        help="print every lost member add with where and when it was made, and the nodes' "
                             "LDAP failovers and failbacks")
    parser.add_argument("--writes", choices=("one", "own"), default="one",
                        help="one: every node writes to provider 1 first (the other on failover); own: node i "
                             "writes to provider i first, so both providers take writes at once (default one)")
    parser.add_argument("--logs", metavar="DIR", help="copy the slapd, API node and worker logs to DIR at the end "
                                                      "(DIDMOS_SLAPD_LOGLEVEL=sync makes slapd log replication)")
    args = parser.parse_args()

    import base64
    import logging

    # The in-process task client's host logs every task left pending while redis is down; the report
    # below counts what matters.
    logging.getLogger("didmos").setLevel(logging.ERROR)

    from didmos_host.host import Host
    from didmos_host.servers import RedisServer, free_port
    from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, providers_overrides, running_providers

    authorization = "Basic " + base64.b64encode(f"{SUPERADMIN_ID}:{SUPERADMIN_PASSWORD}".encode()).decode()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="didmos-load-") as tmp:
        root = Path(tmp)
        redis_server = RedisServer(root / "redis", port=free_port(), persistence=True)
        redis_server.start()
        stack = None
        try:
            with running_providers(root / "ldap", 2) as providers:
                common = {"redis": {"url": redis_server.url}, "tasks": {"dispatch_seconds": 2.0}}
                overrides = [{**providers_overrides(providers, node if args.writes == "own" else 0), **common}
                             for node in range(2)]
                for node in range(2):
                    (root / f"node{node + 1}").mkdir()
                stack = Stack(root, providers, redis_server, overrides, args.workers, args.threads)
                for node in range(2):
                    stack.start_api(node)
                stack.start_worker()
                host = Host.create(overrides[0])
                ledger = Ledger()
                setup = Client(0, stack.ports, authorization, [], ledger)
                groups = []
                for g in range(GROUP_COUNT):
                    status, answer = setup.call("POST", "/scim/v2/Groups", {
                        "schemas": [GROUP_SCHEMA], "displayName": f"load-group-{uuid.uuid4().hex[:8]}-{g}"})
                    assert status == 201, (status, answer)
                    groups.append(answer["id"])
                setup.close()
                clients = [Client(i, stack.ports, authorization, groups, ledger) for i in range(args.clients)]

                steady, steady_rate, _ = run_phase("steady", stack, clients, args.seconds, host, ledger, None, 0)
                faults = None if args.no_faults else [stack.fault_provider, stack.fault_redis, stack.fault_api,
                                                      stack.fault_worker]
                faulty = Stats()
                faulty_rate = 0.0
                if faults:
                    faulty, faulty_rate, _ = run_phase("faults", stack, clients, args.seconds, host, ledger,
                                                       faults, args.down)
                for client in clients:
                    client.close()

                converge = wait_converged(providers, 60)
                stack.note(f"providers converged after {converge:.1f} s")
                lost, problems = check(providers, ledger, groups)
                loss_kinds, loss_lines = explain_losses(stack, ledger, groups) if lost else (Counter(), [])
                pool_moves = [f"node {n + 1}: {line.strip()}" for n in range(2)
                              for line in (root / f"node{n + 1}" / "api.log").read_text().splitlines()
                              if "LDAP" in line and any(word in line for word in (
                                  "failover", "failback", "writer", "in sync", "did not have"))]
                open_tasks, task_states = wait_tasks(host, list(ledger.tasks), 60)
                stack.note(f"tasks: {dict(task_states)}")
                if args.logs:
                    import shutil

                    Path(args.logs).mkdir(parents=True, exist_ok=True)
                    for index, server in enumerate(providers):
                        shutil.copy(server.log_path, Path(args.logs) / f"slapd{index + 1}.log")
                    for name in ("node1/api.log", "node2/api.log", "worker.log"):
                        shutil.copy(root / name, Path(args.logs) / name.replace("/", "-"))
        finally:
            if stack is not None:
                stack.stop()
            redis_server.stop()

    print(f"didmos load: 2 providers, 2 nodes x {args.workers} worker(s) x {args.threads} threads, "
          f"{args.clients} clients, {cores()} cores, {args.seconds:g} s per phase")
    for event in stack.events:
        print("  " + event)
    for phase, stats in (("steady", steady), ("faults", faulty)):
        if not stats.latencies:
            continue
        by_status: dict[str, Counter] = defaultdict(Counter)
        for (op, status), count in stats.statuses.items():
            by_status[op][status] += count
        print(f"  {phase}: failovers to the other node {stats.failovers}, unanswered {stats.unanswered}")
        for op in MIX:
            values = stats.latencies.get(op, [])
            print(f"    {op:<7} n={len(values):>6}  p50 {quantile_ms(values, 0.5):7.1f} ms  "
                  f"p99 {quantile_ms(values, 0.99):7.1f} ms  statuses {dict(sorted(by_status[op].items(), key=str))}")
    errors = sum(count for (op, status), count in (steady.statuses + faulty.statuses).items()
                 if isinstance(status, int) and status >= 500 and status != 503)
    unavailable = sum(count for (op, status), count in faulty.statuses.items() if status == 503)
    print(f"  acknowledged: {len(ledger.users)} creates, {sum(u.deleted is True for u in ledger.users)} deletes, "
          f"{sum(len(v) for v in ledger.members.values())} member adds, {len(ledger.tasks)} tasks "
          f"(submit errors {dict(ledger.task_errors)}); unknown outcome: {len(ledger.unknown_creates)} creates")
    print(f"  lost or wrong acknowledged writes: {lost}" + "".join(f"\n    {p}" for p in problems))
    if loss_kinds:
        print(f"  lost member adds by kind: {dict(loss_kinds)}")
        for line in loss_lines[:40 if args.explain else 8]:
            print(f"    {line}")
    if args.explain:
        for line in pool_moves:
            print(f"  {line}")
    print(f"  tasks not done 60 s after the load: {open_tasks}")
    figures["steady_req_per_s"] = steady_rate
    if faulty.latencies:
        figures["faults_req_per_s"] = faulty_rate
        figures["fault_throughput_ratio"] = faulty_rate / steady_rate if steady_rate else 0.0
    for op in MIX:
        figures[f"{op}_p50_ms"] = quantile_ms(steady.latencies.get(op, []), 0.5)
        figures[f"{op}_p99_ms"] = quantile_ms(steady.latencies.get(op, []), 0.99)
    figures["errors_5xx"] = errors
    figures["unavailable_503"] = unavailable
    figures["unanswered"] = steady.unanswered + faulty.unanswered
    figures["lost_writes"] = lost
    for kind, count in sorted(loss_kinds.items()):
        figures[f"lost_{kind.replace('-', '_')}"] = count
    figures["lost_tasks"] = open_tasks
    figures["converge_ms"] = converge * 1000
    lags = replication_lags(stack.csn_samples)
    figures["replication_lag_p50_ms"] = quantile_ms(lags, 0.5)
    figures["replication_lag_p99_ms"] = quantile_ms(lags, 0.99)
    figures["replication_lag_max_ms"] = max(lags, default=0.0) * 1000
    print_figures(figures)
    return 0 if errors == 0 and lost == 0 and open_tasks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
