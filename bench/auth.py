"""What authenticating a request costs: ``GET /auth/whoami`` with each kind of credential vs none.

Starts a private slapd (bulk-loaded users), a private redis (didmos's token revocation list), the real
OpenID provider the didmos_auth tests use (panva's oidc-provider under Node.js, ``OIDCProvider`` of
plugins/didmos_auth/tests/conftest.py) and ``didmos serve`` (gunicorn gthread) configured to accept that
provider's tokens, then measures with concurrent keep-alive clients, every mode in alternating slices
of the same run:

- no credentials: ``GET /healthz``, and ``GET /auth/whoami`` answered 401;
- the baseline: ``GET /auth/whoami`` as a fixed actor that a throwaway plugin hands out without checking
  anything (:class:`FixedActorPlugin`): the same request and answer, authentication costing nothing;
- HTTP Basic (the credential cache warm), didmos's own JWT (``POST /oauth/token``, client_credentials
  of a client registered through the issuer service), the provider's JWT (RS256, keys cached) and the
  provider's opaque token (introspected, the answer cached).

Each ratio is the authenticated mode's req/s over the baseline's (target >= 0.9 for the tokens).

It also counts what each authenticated request costs elsewhere: LDAP operations (slapd's access log,
sequential requests), HTTP calls to the provider (its request log, over the whole load) and redis
commands (``INFO commandstats``).

    .venv/bin/python bench/auth.py [--seconds S] [--clients N] [--workers N] [--threads N]
    .venv/bin/python bench/auth.py --profile own_jwt    # in process: CPU per request and per piece, cProfile

Human-readable lines first; the last line is one JSON object of the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import importlib.util
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PEOPLE, Sample, Side, bench_directory, child_pids, cores, logged_operations, machine_busy_seconds,
    print_figures, process_cpu_seconds, run_concurrently, start_api, stop_api,
)
from didmos_host import hookimpl  # noqa: E402
from didmos_host.records import Actor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROVIDER_DIR = REPO / "plugins" / "didmos_auth" / "tests" / "oidc_provider"
#: The provider's client whose tokens the benchmark uses; a token's subject, mapped to this uid.
PROVIDER_CLIENT = "didmos-test-client"
OWN_CLIENT = "bench-auth-client"
TOKEN_TTL = 3600  # seconds: longer than any run, so no token expires during the load
#: A keep-alive connection idle for longer is reopened before its next request (untimed): gunicorn
#: closes connections idle for 2 s (its ``keepalive``), and a slice of every other mode passes between two
#: slices of one.
IDLE_RECONNECT_S = 1.0

#: name -> (label, path, expected status). Order is the order of the slices and of the output.
MODES = {
    "healthz": ("GET /healthz, no credentials", "/healthz", 200),
    "anonymous": ("GET /auth/whoami, no credentials: 401", "/auth/whoami", 401),
    "unchecked": ("GET /auth/whoami, fixed actor, nothing checked", "/auth/whoami", 200),
    "basic": ("GET /auth/whoami, HTTP Basic (cache warm)", "/auth/whoami", 200),
    "own_jwt": ("GET /auth/whoami, didmos's own JWT", "/auth/whoami", 200),
    "oidc_jwt": ("GET /auth/whoami, provider's JWT (RS256)", "/auth/whoami", 200),
    "introspection": ("GET /auth/whoami, provider's opaque token", "/auth/whoami", 200),
}
#: The same request with authentication that costs nothing: what every ratio divides by (bench/README.md).
BASELINE = "unchecked"
#: Authenticated mode -> target of its ratio (None: reported, no target).
TARGETS = {"basic": None, "own_jwt": 0.9, "oidc_jwt": 0.9, "introspection": 0.9}
#: The Authorization header that :class:`FixedActorPlugin` answers.
UNCHECKED_HEADER = "Bench-Unchecked fixed"


def user_uuid(i: int) -> str:
    return f"a5000000-0000-4000-8000-{i:012x}"


def password(i: int) -> str:
    return f"bench-password-{i}"


def ssha(secret: str) -> str:
    """``{SSHA}`` of ``secret``, as slapd would store it (slapadd hashes nothing)."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(secret.encode() + salt).digest() + salt).decode()


def basic(login: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()


# -- the directory ------------------------------------------------------------------------------------

@dataclass
class Users:
    """``users`` plain users (uid ``u<i>``, a password each) and one account for the provider's client."""

    users: int
    provider_uuid: str = "a5100000-0000-4000-8000-000000000001"

    @staticmethod
    def dn(uuid_: str) -> str:
        return f"didmosUUID={uuid_},{PEOPLE}"

    def write(self, path: Path) -> str:
        def entry(uuid_: str, uid: str, extra: dict[str, list[str]]) -> str:
            attrs = {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"], "didmosUUID": [uuid_],
                     "uid": [uid], "cn": [uid], "sn": [uid], "didmosTenant": ["default-tenant"],
                     "didmosActive": ["TRUE"], **extra}
            return f"dn: {self.dn(uuid_)}\n" + "".join(f"{k}: {v}\n" for k, vs in attrs.items() for v in vs) + "\n"

        with path.open("w") as out:
            for i in range(self.users):
                out.write(entry(user_uuid(i), f"u{i}", {"userPassword": [ssha(password(i))]}))
            out.write(entry(self.provider_uuid, PROVIDER_CLIENT, {}))
        return f"{self.users} users ({{SSHA}} passwords) and an account with uid {PROVIDER_CLIENT}"


# -- the baseline: whoami with an actor that costs nothing ----------------------------------------------

class FixedActorPlugin:
    """A throwaway plugin: ``Authorization: Bench-Unchecked fixed`` is user 0, checked against nothing.

    ``tryfirst``, so it answers before Basic and Bearer look at the header (``didmos_authenticate``: the
    first result wins); for every other request it returns None after one header lookup. Loaded in
    ``didmos serve`` through an entry point of a throwaway distribution (:func:`fixed_actor_distribution`).
    """

    @hookimpl(tryfirst=True)
    def didmos_authenticate(self, request):
        if request.headers.get("Authorization") != UNCHECKED_HEADER:
            return None
        return Actor(dn=Users.dn(user_uuid(0)), uuid=user_uuid(0), tenant="default-tenant", method="unchecked")


#: What the entry point of the throwaway distribution names (``bench_fixed_actor = auth:FIXED_ACTOR_PLUGIN``).
FIXED_ACTOR_PLUGIN = FixedActorPlugin()


def fixed_actor_distribution(where: Path) -> dict[str, str]:
    """A throwaway distribution in ``where`` whose ``didmos`` entry point is :data:`FIXED_ACTOR_PLUGIN`;
    returns the environment that makes ``didmos serve`` load it (``PYTHONPATH``: it and bench/)."""
    info = where / "bench_fixed_actor-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-fixed-actor\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[didmos]\nbench_fixed_actor = auth:FIXED_ACTOR_PLUGIN\n")
    path = [str(where), str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(filter(None, path))}


# -- the OpenID provider of the didmos_auth tests -----------------------------------------------------

def provider_module():
    """plugins/didmos_auth/tests/conftest.py (``OIDCProvider``, ``API_RESOURCE``), loaded from its file rather
    than as a conftest."""
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        raise SystemExit(f"the test OpenID provider's npm packages are missing: run `cd {PROVIDER_DIR} && npm ci` "
                         "(./run test does it too)")
    spec = importlib.util.spec_from_file_location("didmos_auth_test_provider", PROVIDER_DIR.parent / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ProviderLog:
    """Counts the requests the provider has answered (one log line each: ``<time> <METHOD> <path> <status>``)."""

    METHODS = (" GET ", " POST ", " PUT ", " DELETE ", " HEAD ", " OPTIONS ")

    def __init__(self, path: Path):
        self.path = path

    def count(self) -> int:
        with open(self.path, errors="replace") as log:
            return sum(1 for line in log if line.startswith("20") and any(m in line for m in self.METHODS))

    def paths(self, since: int) -> list[str]:
        """The method and path of each request after the first ``since``."""
        with open(self.path, errors="replace") as log:
            lines = [line.split()[1:3] for line in log
                     if line.startswith("20") and any(m in line for m in self.METHODS)]
        return [" ".join(parts) for parts in lines[since:]]


# -- the environment ----------------------------------------------------------------------------------

@dataclass
class Environment:
    """slapd with the users, redis, the provider, and the settings that point didmos at all three."""

    bench: Any  # _common.BenchDirectory
    redis: Any  # didmos_host.servers.RedisServer
    provider: Any  # OIDCProvider
    overrides: dict[str, Any]
    users: Users
    own_secret: str  # of OWN_CLIENT
    provider_log: ProviderLog = field(init=False)

    def __post_init__(self):
        self.provider_log = ProviderLog(self.provider.log_path)


@contextmanager
def environment(args) -> Iterator[Environment]:
    """Start slapd (bulk-loaded), redis and the provider; register didmos's own client; stop all on the way out."""
    from didmos_host.host import Host
    from didmos_host.servers import RedisServer, free_port

    oidc = provider_module()
    users = Users(args.users)
    with bench_directory(users.write) as bench:
        root = Path(bench.server.data_dir).parent
        redis = RedisServer(root / "redis", port=free_port(), persistence=False)
        provider = oidc.OIDCProvider(root / "oidc-provider", free_port(), access_token_ttl=TOKEN_TTL)
        provider.directory.mkdir()
        try:
            started = perf_counter()
            redis.start()
            provider.start()
            bench.timings["redis_provider_s"] = perf_counter() - started
            introspector, introspector_secret = provider.introspection_client
            overrides = {
                **bench.overrides,
                "redis": {"url": redis.url},
                "tokens": {"lifetime_seconds": TOKEN_TTL},
                "auth": {"oidc": {"providers": [{
                    "issuer": provider.issuer, "audience": oidc.API_RESOURCE,
                    # An opaque token's introspection answer names no sub, only client_id; a JWT has both.
                    "claim": "client_id", "attribute": "uid",
                    "introspection_client_id": introspector, "introspection_client_secret": introspector_secret,
                }]}},
            }
            issuer = Host.create(overrides).service("token_issuer")
            acts_as = Users.dn(user_uuid(args.users - 1))
            own_secret = issuer.clients.add(OWN_CLIENT, ["scim:read", "scim:write"], acts_as, "bench/auth.py")
            yield Environment(bench, redis, provider, overrides, users, own_secret)
        finally:
            provider.stop()
            redis.stop()


def own_tokens(env: Environment, post_form: Callable[[str, dict[str, str], str], dict], count: int) -> list[str]:
    """``count`` access tokens of didmos's own issuer, by client_credentials at ``POST /oauth/token``."""
    auth = basic(OWN_CLIENT, env.own_secret)
    return [post_form("/oauth/token", {"grant_type": "client_credentials", "scope": "scim:read scim:write"},
                      auth)["access_token"] for _ in range(count)]


def credentials(env: Environment, post_form, clients: int) -> dict[str, list[str | None]]:
    """The Authorization header of each client in each mode (None: none sent). One identity per client:
    a user each for Basic, a token each for the bearer modes."""
    return {
        "healthz": [None] * clients,
        "anonymous": [None] * clients,
        "unchecked": [UNCHECKED_HEADER] * clients,
        "basic": [basic(user_uuid(i), password(i)) for i in range(clients)],
        "own_jwt": [f"Bearer {token}" for token in own_tokens(env, post_form, clients)],
        "oidc_jwt": [f"Bearer {env.provider.token()}" for _ in range(clients)],
        "introspection": [f"Bearer {env.provider.token(opaque=True)}" for _ in range(clients)],
    }


def http_post_form(port: int):
    """``post_form(path, form, authorization)`` against the API over HTTP: the JSON answer of a 200."""
    import urllib.parse

    def post_form(path: str, form: dict[str, str], authorization: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("POST", path, urllib.parse.urlencode(form),
                         {"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"})
            answer = conn.getresponse()
            body = answer.read()
        finally:
            conn.close()
        if answer.status != 200:
            raise RuntimeError(f"POST {path}: {answer.status}: {body[:300]!r}")
        return json.loads(body)

    return post_form


# -- clients ------------------------------------------------------------------------------------------

def http_side(port: int, path: str, authorization: str | None, status: int) -> Side:
    """One client: a keep-alive ``http.client`` connection; the request and reading its answer are timed.
    A connection idle for longer than :data:`IDLE_RECONNECT_S` is reopened first, untimed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": authorization} if authorization else {}
    last = [0.0]

    def prepare() -> None:
        if perf_counter() - last[0] > IDLE_RECONNECT_S:
            conn.close()
            conn.connect()

    def op(_) -> None:
        conn.request("GET", path, headers=headers)
        answer = conn.getresponse()
        body = answer.read()
        if answer.status != status:
            raise RuntimeError(f"GET {path}: {answer.status}, expected {status}: {body[:300]!r}")

    def done(_) -> None:
        last[0] = perf_counter()

    side = Side(op, prepare, done)
    side.conn = conn  # closed by the caller
    return side


class CpuMeter:
    """CPU seconds so far of: the API (gunicorn master and workers), slapd, redis, the provider, this process,
    and the rest of the machine (every other process, and kernel work charged to none, such as part of
    the loopback traffic's softirq)."""

    NAMES = ("api", "slapd", "redis", "provider", "client", "rest")

    def __init__(self, api_pid: int, slapd_pid: int, redis_pid: int, provider_pid: int):
        self.api_pids = [api_pid, *child_pids(api_pid)]
        self.others = (slapd_pid, redis_pid, provider_pid)

    def read(self) -> list[float]:
        times = os.times()
        ours = [sum(process_cpu_seconds(p) for p in self.api_pids), *map(process_cpu_seconds, self.others),
                times.user + times.system]
        return [*ours, machine_busy_seconds() - sum(ours)]


def redis_commands(client) -> int:
    """Commands redis has run so far, ``INFO`` itself left out."""
    stats = client.info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


@dataclass
class Measured:
    """One mode over all its slices."""

    sample: Sample = field(default_factory=Sample)
    wall: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0] * len(CpuMeter.NAMES))
    #: Method and path of each request the provider answered during this mode's slices.
    provider_calls: list[str] = field(default_factory=list)
    redis_commands: int = 0

    @property
    def requests(self) -> int:
        return len(self.sample.latencies)

    @property
    def per_s(self) -> float:
        return self.requests / self.wall if self.wall else 0.0

    def cpu_ms(self, name: str) -> float:
        return self.cpu[CpuMeter.NAMES.index(name)] / self.requests * 1000 if self.requests else 0.0


def measure(sides: dict[str, list[Side]], args, meter: CpuMeter, provider_log: ProviderLog,
            redis_client) -> dict[str, Measured]:
    """Warm every mode up, then alternate: each mode's clients all at once for one slice, mode after mode."""
    for clients in sides.values():
        run_concurrently(clients, args.warmup, record=False)
    results = {name: Measured() for name in sides}
    rounds = max(2, round(args.seconds / args.slice))
    for _ in range(rounds):
        for name, clients in sides.items():
            for side in clients:
                side.sample = Sample()
            calls, commands, before = provider_log.count(), redis_commands(redis_client), meter.read()
            wall = run_concurrently(clients, args.seconds / rounds)
            after = meter.read()
            result = results[name]
            result.provider_calls += provider_log.paths(calls)
            result.redis_commands += redis_commands(redis_client) - commands
            result.wall += wall
            result.sample.latencies += [t for side in clients for t in side.sample.latencies]
            result.cpu = [c + (a - b) for c, a, b in zip(result.cpu, after, before)]
    return results


def count_operations(env: Environment, port: int, headers: dict[str, list[str | None]],
                     requests: int) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Per mode: the LDAP operations of each of ``requests`` sequential requests (one keep-alive connection,
    the first client's credentials) as slapd's access log records them; and the provider's requests
    meanwhile."""
    sides = {name: http_side(port, path, headers[name][0], status) for name, (_, path, status) in MODES.items()}
    provider_before = env.provider_log.count()
    try:
        for side in sides.values():
            side.prepare()

        def send(side: Side) -> Callable[[], None]:
            return lambda: (side.op(None), side.cleanup(None))

        sent = [name for name in MODES for _ in range(requests)]
        logged = logged_operations(env.bench, [send(sides[name]) for name in sent])
    finally:
        for side in sides.values():
            side.conn.close()
    per_mode = {name: [ops for ops, sent_name in zip(logged, sent) if sent_name == name] for name in MODES}
    return per_mode, env.provider_log.paths(provider_before)


# -- the benchmark ------------------------------------------------------------------------------------

def benchmark(args) -> dict[str, float]:
    import redis as redis_lib

    figures: dict[str, float] = {}
    with environment(args) as env:
        t = env.bench.timings
        print(f"directory: {env.bench.description}; setup: init {t['init_s']:.1f} s, LDIF {t['ldif_s']:.1f} s, "
              f"slapadd -q {t['slapadd_s']:.1f} s, start {t['start_s']:.1f} s; redis and provider "
              f"{t['redis_provider_s']:.1f} s", flush=True)
        root = Path(env.bench.server.data_dir).parent
        started = perf_counter()
        # start_api's settings file has no arrays of tables: the provider goes into a file of its own.
        providers = root / "bench-auth-providers.toml"
        providers.write_text("".join("[[auth.oidc.providers]]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                                                       for k, v in provider.items())
                                     for provider in env.overrides["auth"]["oidc"]["providers"]))
        providers.chmod(0o600)  # it holds the introspection client's secret
        served = {k: v for k, v in env.overrides.items() if k != "auth"}
        api, port = start_api(served, root, workers=args.workers, threads=args.threads,
                              env={"DIDMOS_SETTINGS_FILES": str(providers),
                                   **fixed_actor_distribution(root / "fixed-actor-plugin")})
        redis_client = redis_lib.Redis.from_url(env.redis.url)
        all_sides: list[Side] = []
        try:
            print(f"didmos serve: gunicorn gthread, {args.workers} workers x {args.threads} threads, access log to "
                  f"/dev/null, up in {perf_counter() - started:.1f} s; provider: oidc-provider (Node.js) at "
                  f"{env.provider.issuer}, tokens live {TOKEN_TTL} s; auth.oidc.* and auth.* cache settings at "
                  f"their defaults", flush=True)
            headers = credentials(env, http_post_form(port), args.clients)
            sides = {name: [http_side(port, MODES[name][1], header, MODES[name][2]) for header in headers[name]]
                     for name in MODES}
            all_sides = [side for clients in sides.values() for side in clients]
            meter = CpuMeter(api.pid, env.bench.server.pid, env.redis.pid, env.provider.pid)
            rounds = max(2, round(args.seconds / args.slice))
            print(f"load: {args.clients} concurrent clients per mode in this process (threads, one keep-alive "
                  f"http.client connection each, one identity each), {rounds} alternating slices of "
                  f"{args.seconds / rounds:.2f} s per mode ({args.seconds:g} s each) after {args.warmup:g} s of "
                  f"warm-up; client, API, slapd, redis and provider share {cores()} cores", flush=True)
            provider_before = env.provider_log.count()
            measured = measure(sides, args, meter, env.provider_log, redis_client)
            provider_during = env.provider_log.paths(provider_before)
            counted, provider_counting = count_operations(env, port, headers, args.count_requests)
        finally:
            for side in all_sides:
                side.conn.close()
            redis_client.close()
            stop_api(api)
        figures.update(report(measured, counted, provider_during, provider_counting, args))
    return figures


def report(measured: dict[str, Measured], counted: dict[str, list[list[str]]], provider_during: list[str],
           provider_counting: list[str], args) -> dict[str, float]:
    base = measured[BASELINE]
    print(f"{'mode':46} {'req/s':>6} {'p50 ms':>6} {'p99 ms':>6} {'ratio':>6} {'target':>13}  "
          f"CPU ms/req: {' '.join(CpuMeter.NAMES)} | LDAP ops | provider calls | redis cmds")
    figures: dict[str, float] = {}
    for name, (label, _, _) in MODES.items():
        result = measured[name]
        counts = [len(ops) for ops in counted[name]]
        ratio = result.per_s / base.per_s
        if name == BASELINE:
            verdict = "(baseline)"
        elif name not in TARGETS:
            verdict = ""
        else:
            figures[f"{name}_ratio"] = ratio
            target = TARGETS[name]
            verdict = f">= {target:g}: {'met' if ratio >= target else 'MISSED'}" if target else "(no target)"
        cpu = " ".join(f"{result.cpu_ms(n):.2f}" for n in CpuMeter.NAMES)
        print(f"{label:46} {result.per_s:6.0f} {result.sample.quantile_ms(.5):6.2f} "
              f"{result.sample.quantile_ms(.99):6.2f} {ratio:6.3f} {verdict:>13}  {cpu} | "
              f"{statistics.median(counts):g} (max {max(counts)}) | "
              f"{len(result.provider_calls)} in {result.requests} | "
              f"{result.redis_commands / result.requests:.2f}", flush=True)
        figures.update({
            f"{name}_per_s": result.per_s, f"{name}_p50_ms": result.sample.quantile_ms(.5),
            f"{name}_p99_ms": result.sample.quantile_ms(.99),
            **{f"{name}_{n}_cpu_ms": result.cpu_ms(n) for n in CpuMeter.NAMES},
            f"{name}_ldap_ops": statistics.median(counts), f"{name}_ldap_ops_max": max(counts),
            f"{name}_requests": result.requests, f"{name}_provider_calls": len(result.provider_calls),
            f"{name}_redis_commands_per_request": result.redis_commands / result.requests,
        })
    rest = sum(m.cpu[CpuMeter.NAMES.index("rest")] for m in measured.values())
    wall = sum(m.wall for m in measured.values())
    print(f"rest of the machine during the load: {rest:.1f} s of CPU in {wall:.1f} s, {rest / wall / cores():.0%} of "
          f"its {cores()} cores (other processes, kernel work charged to none; 'rest' above, per request)")
    print(f"LDAP operations per request (slapd access log, {args.count_requests} sequential requests per mode on "
          f"one keep-alive connection, after the load): a median request's, then the largest if larger")
    for name in MODES:
        ops = counted[name]
        counts = [len(o) for o in ops]
        typical = next(o for o in ops if len(o) == statistics.median_low(counts))
        largest = max(ops, key=len)
        print(f"  {name:14} {' ; '.join(typical) or '(none)'}")
        if len(largest) > len(typical):
            print(f"  {'':14} largest ({counts.count(len(largest))} of {len(counts)}): {' ; '.join(largest)}")

    def tally(paths: list[str]) -> str:
        return ", ".join(f"{path} x{paths.count(path)}" for path in sorted(set(paths))) or "none"

    in_slices = "; ".join(f"{name}: {tally(m.provider_calls)}" for name, m in measured.items() if m.provider_calls)
    print(f"provider requests during the load, warm-up included: {tally(provider_during)}; of them in the measured "
          f"slices: {in_slices or 'none'}; during the LDAP count: {tally(provider_counting)}")
    return figures


# -- profiling in process -------------------------------------------------------------------------------

def parts(app, headers: dict[str, list[str | None]]) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
    """Per mode: what its authentication is made of, each piece a call that can be timed on its own (in a
    request context). The first is always the whole ``didmos_authenticate`` hook."""
    import flask
    from joserfc import jwt
    from joserfc.jws import extract_compact

    host = app.extensions["didmos"]
    issuer, bearer, basic_auth = (host.service(name) for name in ("token_issuer", "bearer_auth", "basic_auth"))
    token = {name: (headers[name][0] or "").split(" ", 1)[-1] for name in MODES}
    own_claims = issuer.verify(token["own_jwt"])
    provider, oidc_claims = bearer.verify_jwt(token["oidc_jwt"])
    _, opaque_claims = bearer.introspect(token["introspection"])
    header = extract_compact(token["oidc_jwt"].encode()).headers()
    key = bearer.keys[provider.issuer].key(header.get("kid"), header["alg"])

    def hook():
        return host.hook.didmos_authenticate(request=flask.request)

    return {
        "unchecked": [("didmos_authenticate (the fixed actor)", hook)],
        "basic": [("didmos_authenticate", hook),
                  ("BasicAuthenticator.authenticate (cache hit)",
                   lambda: basic_auth.authenticate(user_uuid(0), password(0), "127.0.0.1"))],
        "own_jwt": [("didmos_authenticate", hook),
                    ("TokenIssuer.authenticate (verify + actor_for)", lambda: issuer.authenticate(token["own_jwt"])),
                    ("TokenIssuer.is_own (iss vs request.url_root)", lambda: issuer.is_own(token["own_jwt"])),
                    ("TokenIssuer.verify (signature, claims, revocation)", lambda: issuer.verify(token["own_jwt"])),
                    ("  of which is_revoked (one redis EXISTS)",
                     lambda: issuer.revocations.is_revoked(str(own_claims["jti"]))),
                    ("TokenIssuer.actor_for (one LDAP search)", lambda: issuer.actor_for(own_claims))],
        "oidc_jwt": [("didmos_authenticate", hook),
                     ("BearerAuthenticator.authenticate (all of it)", lambda: bearer.authenticate(token["oidc_jwt"])),
                     ("TokenIssuer.is_own (not ours)", lambda: issuer.is_own(token["oidc_jwt"])),
                     ("BearerAuthenticator.verify_jwt", lambda: bearer.verify_jwt(token["oidc_jwt"])),
                     ("  of which joserfc jwt.decode (signature)",
                      lambda: jwt.decode(token["oidc_jwt"], key, algorithms=[header["alg"]])),
                     ("BearerAuthenticator.actor (one LDAP search)", lambda: bearer.actor(provider, oidc_claims))],
        "introspection": [("didmos_authenticate", hook),
                          ("BearerAuthenticator.authenticate (all of it)",
                           lambda: bearer.authenticate(token["introspection"])),
                          ("TokenIssuer.is_own (not a JWT)", lambda: issuer.is_own(token["introspection"])),
                          ("BearerAuthenticator.introspect (cache hit)",
                           lambda: bearer.introspect(token["introspection"])),
                          ("BearerAuthenticator.actor (one LDAP search)",
                           lambda: bearer.actor(provider, opaque_claims))],
    }


def timed(call: Callable[[], Any], count: int) -> tuple[float, float]:
    """Microseconds of CPU and of wall time per call of ``call``, over ``count`` calls."""
    wall, cpu = perf_counter(), time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - cpu) / count * 1e6, (perf_counter() - wall) / count * 1e6


def profile(args) -> None:
    """``--profile MODE``: in this process (Flask test client: no gunicorn, no HTTP), every mode's request for
    its CPU, the pieces of every mode's authentication, then MODE's request and the baseline's under cProfile."""
    import cProfile
    import pstats

    from didmos_host.app import create_app

    with environment(args) as env:
        app = create_app(extra_plugins=[FIXED_ACTOR_PLUGIN], **env.overrides)
        client = app.test_client()

        def post_form(path: str, form: dict[str, str], authorization: str) -> dict:
            answer = client.post(path, data=form, headers={"Authorization": authorization})
            if answer.status_code != 200:
                raise RuntimeError(f"POST {path}: {answer.status_code}: {answer.data[:300]!r}")
            return answer.json

        headers = credentials(env, post_form, 1)

        def one(name: str) -> Callable[[], None]:
            _, path, status = MODES[name]
            sent = {"Authorization": headers[name][0]} if headers[name][0] else {}

            def call() -> None:
                answer = client.get(path, headers=sent)
                if answer.status_code != status:
                    raise RuntimeError(f"GET {path}: {answer.status_code}: {answer.data[:300]!r}")

            return call

        count, rounds = args.profile_requests, 5
        print(f"in process (Flask test client, one thread), {count} requests per mode in {rounds} alternating "
              f"rounds, after 100 each unmeasured; microseconds per request:")
        calls = {name: one(name) for name in MODES}
        cpu, wall = dict.fromkeys(MODES, 0.0), dict.fromkeys(MODES, 0.0)
        for call in calls.values():
            timed(call, 100)
        for _ in range(rounds):
            for name, call in calls.items():
                c, w = timed(call, count // rounds)
                cpu[name], wall[name] = cpu[name] + c / rounds, wall[name] + w / rounds
        for name, (label, _, _) in MODES.items():
            print(f"  {label:48} {cpu[name]:5.0f} CPU {wall[name]:5.0f} wall   {cpu[name] - cpu[BASELINE]:+5.0f} CPU, "
                  f"{wall[name] - wall[BASELINE]:+5.0f} wall over {BASELINE}")

        print(f"the pieces of authentication, each alone in a request context, {count} calls each; microseconds "
              f"per call (CPU, wall):")
        with app.test_request_context("/auth/whoami"):  # own tokens name the request's URL as their issuer
            pieces_of = parts(app, headers)
        for name, pieces in pieces_of.items():
            sent = {"Authorization": headers[name][0]}
            with app.test_request_context("/auth/whoami", headers=sent):
                for label, call in pieces:
                    timed(call, 50)
                    c, w = timed(call, count)
                    print(f"  {name:14} {label:52} {c:5.0f} {w:5.0f}")

        for name in dict.fromkeys([args.profile, BASELINE]):
            profiler = cProfile.Profile()
            call = calls[name]
            profiler.enable()
            for _ in range(count):
                call()
            profiler.disable()
            print(f"\n=== cProfile of {count} requests: {MODES[name][0]} ===")
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(20)
            stats.sort_stats("cumulative").print_stats(40)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of load per mode (default 6)")
    parser.add_argument("--slice", type=float, default=0.5, help="seconds per alternating slice (default 0.5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per mode (default 0.5)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, as api.workers)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8, as api.threads)")
    parser.add_argument("--users", type=int, default=10_000, help="users in the directory (default 10000)")
    parser.add_argument("--count-requests", type=int, default=20,
                        help="sequential requests per mode whose LDAP operations are counted (default 20)")
    parser.add_argument("--profile", choices=[name for name in MODES if name in TARGETS],
                        help="instead of the benchmark: every mode in process, then this one under cProfile")
    parser.add_argument("--profile-requests", type=int, default=2000,
                        help="requests per mode in process (default 2000)")
    args = parser.parse_args()
    if args.clients < 1 or args.users <= args.clients or args.seconds <= 0 or args.slice <= 0:
        parser.error("need 1 <= --clients < --users, --seconds > 0, --slice > 0")

    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C, so the API, the provider, redis and slapd stop.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.profile:
        profile(args)
        return 0
    run_started = perf_counter()
    print(f"didmos authentication cost: {args.clients} clients, {cores()} cores, {time.strftime('%Y-%m-%d %H:%M')}",
          flush=True)
    figures = benchmark(args)
    print(f"total {perf_counter() - run_started:.1f} s, API, provider, redis and slapd stopped")
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
