"""What the didmos LDAP layer costs over plain python-ldap, against the same slapd and the same data.

Starts a private slapd on loopback, bulk-loads users and groups with slapadd, and then, single-threaded,
times each operation as plain python-ldap on one bound connection ("raw") and through the
``Directory`` service of didmos_ldap ("layer") with both interceptor hooks registered by a plugin that
does nothing. Short raw and layer slices alternate (raw, layer, raw, layer, ...) to spread drift over
both.

    .venv/bin/python bench/ldap_layer.py [--users N] [--group-members N] [--seconds S] [--slice S]
                                         [--stream-entries N] [--only op,op] [--all-plugins]

Human-readable lines first; the last line is one JSON object of the figures (see bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import signal
import subprocess
import sys
import time

from ldap.filter import filter_format  # a careful caller escapes what goes into a filter
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from didmos_host import hookimpl  # noqa: E402

from _common import (  # noqa: E402
    DATA, GROUPS, PEOPLE, BenchDirectory, Side, bench_directory, compare, cores, print_figures,
    proc_status_kb, raw_connection, reset_peak_rss,
)

SMALL_GROUP = f"cn=bench-small,{GROUPS}"
BIG_GROUP = f"cn=bench-big,{GROUPS}"
SMALL_GROUP_MEMBERS = 10
STREAM = f"ou=stream,{DATA}"
STREAM_FILTER = "(objectClass=didmosPerson)"
LAYER_TARGET = 0.8
CACHE_TARGET = 5.0
BIG_SMALL_TARGET = 0.5
STREAM_TARGET_MB = 100.0
STREAM_TARGET_ENTRIES = 100_000
OPERATIONS = ("read_id", "read_dn", "search_eq", "add", "modify", "member_add_small", "member_add_big",
              "cache_hit", "stream")


def user_uuid(i: int) -> str:
    return f"b0000000-0000-4000-8000-{i:012x}"


def stream_uuid(i: int) -> str:
    return f"c0000000-0000-4000-8000-{i:012x}"


def person(uuid: str, uid: str, number: int) -> dict[str, list[str]]:
    """The attributes of one user, as the dataset and the add benchmark create them."""
    return {
        "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"],
        "didmosUUID": [uuid], "uid": [uid], "cn": [f"Bench User {number}"], "sn": [f"User{number}"],
        "givenName": ["Bench"], "displayName": [f"Bench User {number}"], "mail": [f"{uid}@bench.example.org"],
        "didmosTenant": ["default-tenant"], "didmosActive": ["TRUE"], "didmosUserType": ["local"],
    }


def _ldif_entry(dn: str, attrs: dict[str, list[str]]) -> str:
    return f"dn: {dn}\n" + "".join(f"{name}: {value}\n" for name, values in attrs.items() for value in values) + "\n"


def data_writer(users: int, group_members: int, stream_entries: int):
    """The LDIF: users, a 10-member and a big group, and optionally the extra entries to stream."""

    def write(path: Path) -> str:
        with path.open("w") as out:
            for i in range(users):
                out.write(_ldif_entry(f"didmosUUID={user_uuid(i)},{PEOPLE}", person(user_uuid(i), f"u{i}", i)))
            for dn, cn, members in (
                (SMALL_GROUP, "bench-small",
                 (f"didmosUUID={user_uuid(i % users)},{PEOPLE}" for i in range(SMALL_GROUP_MEMBERS))),
                # Distinct values that need not be entries: memberof does not run during slapadd.
                (BIG_GROUP, "bench-big", (f"uid=m{i},{PEOPLE}" for i in range(group_members))),
            ):
                out.write(f"dn: {dn}\nobjectClass: groupOfNames\nobjectClass: didmosObject\n"
                          f"cn: {cn}\ndidmosUUID: {cn}\n")
                out.writelines(f"member: {member}\n" for member in members)
                out.write("\n")
            if stream_entries:
                out.write(f"dn: {STREAM}\nobjectClass: organizationalUnit\nou: stream\n\n")
                for i in range(stream_entries):
                    out.write(_ldif_entry(f"didmosUUID={stream_uuid(i)},{STREAM}",
                                          person(stream_uuid(i), f"s{i}", i)))
        extra = f", {stream_entries} entries to stream" if stream_entries else ""
        return f"{users} users, a {SMALL_GROUP_MEMBERS}-member and a {group_members}-member group{extra}"

    return write


class NoOpInterceptor:
    """Implements both interceptor hooks and does nothing: what remains is the cost of calling them."""

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        return None

    @hookimpl
    def didmos_ldap_post_operation(self, operation, result, actor):
        return None


def make_host(overrides: dict, all_plugins: bool):
    """A host whose interceptors do nothing: only didmos_ldap and the no-op plugin, unless ``all_plugins``.

    With ``all_plugins`` every installed plugin is loaded (what the app runs), and with it whatever
    interceptors they implement.
    """
    from didmos_host.host import Host

    if all_plugins:
        return Host.create(overrides, extra_plugins=[NoOpInterceptor()])
    import didmos_ldap.plugin

    return Host.create(overrides, extra_plugins=[didmos_ldap.plugin, NoOpInterceptor()], load_entry_points=False)


# -- streaming memory, measured in a child process ----------------------------------------------------

def stream_child(mode: str) -> None:
    """Child process: RSS when ready (idle), then the peak while reading every entry under the base."""
    import ldap

    cfg = json.load(sys.stdin)
    if mode == "layer":
        directory = make_host(cfg["overrides"], cfg["all_plugins"]).service("directory")
        directory.get(cfg["base"])  # opens and binds the pooled connection before "idle"

        def read_all() -> int:
            return sum(1 for _ in directory.iter_search(cfg["base"], cfg["filter"]))
    else:
        conn = raw_connection(cfg["uri"], cfg["service_dn"], cfg["service_password"])

        def read_all() -> int:
            return len(conn.search_s(cfg["base"], ldap.SCOPE_SUBTREE, cfg["filter"]))

    gc.collect()
    idle = proc_status_kb("VmRSS")
    reset = reset_peak_rss()
    started = perf_counter()
    count = read_all()
    elapsed = perf_counter() - started
    peak = proc_status_kb("VmHWM")
    print(json.dumps({"entries": count, "idle_kb": idle, "peak_kb": peak, "peak_reset": reset,
                      "seconds": elapsed}))


def measure_stream(bench: BenchDirectory, overrides: dict, all_plugins: bool, base: str, mode: str) -> dict:
    """Run :func:`stream_child` in a fresh interpreter, so this process's memory does not count."""
    cfg = {"overrides": overrides, "all_plugins": all_plugins, "base": base, "filter": STREAM_FILTER,
           "uri": bench.server.uri, "service_dn": bench.service_dn, "service_password": bench.service_password}
    # The settings go through stdin: they hold the service account's password.
    done = subprocess.run([sys.executable, __file__, "--child-stream", mode], input=json.dumps(cfg),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"streaming child ({mode}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10_000, help="users in the dataset (default 10000)")
    parser.add_argument("--group-members", type=int, default=100_000,
                        help="members of the big group (default 100000)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="seconds per operation and side (default 3)")
    parser.add_argument("--slice", type=float, default=0.1,
                        help="length of each alternating raw/layer slice in seconds (default 0.1)")
    parser.add_argument("--stream-entries", type=int, default=0,
                        help="bulk-load this many extra entries and stream them (default: stream the users)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(OPERATIONS)}")
    parser.add_argument("--all-plugins", action="store_true",
                        help="load every installed plugin and its interceptors (default: didmos_ldap and a no-op "
                             "interceptor only)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the ids read and written")
    parser.add_argument("--child-stream", choices=("layer", "raw"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_stream:
        stream_child(args.child_stream)
        return 0
    if (args.users < SMALL_GROUP_MEMBERS or args.group_members < 1 or args.seconds <= 0 or args.slice <= 0
            or args.stream_entries < 0):
        parser.error(f"need --users >= {SMALL_GROUP_MEMBERS}, --group-members >= 1, --seconds > 0, --slice > 0, "
                     "--stream-entries >= 0")
    only = {name.strip() for name in args.only.split(",") if name.strip()} or set(OPERATIONS)
    if only - set(OPERATIONS):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(OPERATIONS)))}; known: {', '.join(OPERATIONS)}")

    # SIGTERM (a CI timeout, kill PID) unwinds like Ctrl-C, so slapd is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run_started = perf_counter()
    print(f"didmos LDAP layer vs python-ldap: {args.users} users, {args.group_members}-member group, "
          f"{args.seconds:g} s per operation and side, single-threaded, {cores()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    writer = data_writer(args.users, args.group_members, args.stream_entries)
    with bench_directory(writer) as bench:
        t = bench.timings
        print(f"slapd: private, {bench.server.uri}, olcDbNoSync TRUE (writes not fsynced; same for raw and layer)")
        print(f"setup: init {t['init_s']:.1f} s, LDIF {t['ldif_s']:.1f} s, slapadd -q {t['slapadd_s']:.1f} s "
              f"({bench.description}), start {t['start_s']:.1f} s", flush=True)
        figures = run(bench, args, only)
    print(f"total {perf_counter() - run_started:.1f} s, slapd stopped")
    print_figures(figures)
    return 0


def run(bench: BenchDirectory, args, only: set[str]) -> dict[str, float]:
    import ldap

    from didmos_ldap.filters import eq

    # Is there a cache (ldap.cache.enabled)? The uncached figures must not hit it, whatever its default.
    probe = make_host(bench.overrides, args.all_plugins)
    has_cache = probe.settings.exists("ldap.cache.enabled")
    probe.service("directory").close()
    overrides = json.loads(json.dumps(bench.overrides))
    if has_cache:
        overrides["ldap"] = {"cache": {"enabled": False}}

    host = make_host(overrides, args.all_plugins)
    directory = host.service("directory")
    hooks = {name: [impl.plugin_name for impl in getattr(host.hook, name).get_hookimpls()]
             for name in ("didmos_ldap_pre_operation", "didmos_ldap_post_operation")}
    print("interceptors: " + "; ".join(f"{name} -> {', '.join(plugins)}" for name, plugins in hooks.items()))
    conn = raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
    figures: dict[str, float] = {}

    if "stream" in only:
        # First, while the entries under the base are exactly the loaded ones.
        base = STREAM if args.stream_entries else PEOPLE
        layer = measure_stream(bench, overrides, args.all_plugins, base, "layer")
        raw = measure_stream(bench, overrides, args.all_plugins, base, "raw")
        caveat = "" if layer["peak_reset"] and raw["peak_reset"] else \
            " (VmHWM could not be reset: peak since process start minus idle)"
        layer_mb = (layer["peak_kb"] - layer["idle_kb"]) / 1024
        raw_mb = (raw["peak_kb"] - raw["idle_kb"]) / 1024
        verdict = (("ok" if layer_mb < STREAM_TARGET_MB else "SHORT") if layer["entries"] >= STREAM_TARGET_ENTRIES
                   else f"target applies at {STREAM_TARGET_ENTRIES} entries: --stream-entries {STREAM_TARGET_ENTRIES}")
        print(f"streaming {layer['entries']} entries, peak RSS above idle{caveat}:")
        print(f"  layer iter_search (paged, {host.settings.ldap.page_size}/page) {layer_mb:8.1f} MB  "
              f"{layer['entries'] / layer['seconds']:9.0f} entries/s   target < {STREAM_TARGET_MB:g} MB: {verdict}")
        print(f"  raw search_s, all at once            {raw_mb:8.1f} MB  "
              f"{raw['entries'] / raw['seconds']:9.0f} entries/s   (baseline)", flush=True)
        if raw["entries"] != layer["entries"]:
            raise RuntimeError(f"raw streamed {raw['entries']} entries, layer {layer['entries']}")
        figures.update(stream_layer_peak_mb=layer_mb, stream_raw_peak_mb=raw_mb,
                       stream_layer_entries_per_s=layer["entries"] / layer["seconds"],
                       stream_raw_entries_per_s=raw["entries"] / raw["seconds"])

    rng = random.Random(args.seed)
    serial = itertools.count()
    uuids = [user_uuid(i) for i in range(args.users)]
    dns = [f"didmosUUID={uuid},{PEOPLE}" for uuid in uuids]
    SUB, BASE = ldap.SCOPE_SUBTREE, ldap.SCOPE_BASE

    def pick() -> int:
        return rng.randrange(args.users)

    def new_person():
        n = next(serial)
        uuid = f"d0000000-0000-4000-8000-{n:012x}"
        return f"didmosUUID={uuid},{PEOPLE}", person(uuid, f"added{n}", n)

    def new_value():
        return pick(), f"bench value {next(serial)}"

    def new_member():
        return f"uid=new{next(serial)},{PEOPLE}"

    def drop_member(group):
        return lambda member: conn.modify_s(group, [(ldap.MOD_DELETE, "member", [member.encode()])])

    # name -> (label, raw side, layer side); raw is python-ldap exactly as a careful caller writes it.
    operations = {
        "read_id": ("read by id: (didmosUUID=...) subtree",
                    Side(lambda i: conn.search_s(PEOPLE, SUB, filter_format("(didmosUUID=%s)", [uuids[i]])), pick),
                    Side(lambda i: directory.search(PEOPLE, eq("didmosUUID", uuids[i])), pick)),
        "read_dn": ("read by DN: base scope / get",
                    Side(lambda i: conn.search_s(dns[i], BASE, "(objectClass=*)"), pick),
                    Side(lambda i: directory.get(dns[i]), pick)),
        "search_eq": ("equality search: (uid=...) subtree",
                      Side(lambda i: conn.search_s(PEOPLE, SUB, filter_format("(uid=%s)", [f"u{i}"])), pick),
                      Side(lambda i: directory.search(PEOPLE, eq("uid", f"u{i}")), pick)),
        "add": ("add a user (fresh DN)",
                Side(lambda e: conn.add_s(e[0], [(k, [v.encode() for v in vs]) for k, vs in e[1].items()]),
                     new_person),
                Side(lambda e: directory.add(e[0], e[1]), new_person)),
        "modify": ("modify: replace description",
                   Side(lambda a: conn.modify_s(dns[a[0]], [(ldap.MOD_REPLACE, "description", [a[1].encode()])]),
                        new_value),
                   Side(lambda a: directory.modify(dns[a[0]], [(ldap.MOD_REPLACE, "description", [a[1]])]),
                        new_value)),
        "member_add_small": (f"member add, {SMALL_GROUP_MEMBERS}-member group",
                             Side(lambda m: conn.modify_s(SMALL_GROUP, [(ldap.MOD_ADD, "member", [m.encode()])]),
                                  new_member, drop_member(SMALL_GROUP)),
                             Side(lambda m: directory.modify(SMALL_GROUP, [(ldap.MOD_ADD, "member", [m])],
                                                             permissive=True),
                                  new_member, drop_member(SMALL_GROUP))),
        "member_add_big": (f"member add, {args.group_members}-member group",
                           Side(lambda m: conn.modify_s(BIG_GROUP, [(ldap.MOD_ADD, "member", [m.encode()])]),
                                new_member, drop_member(BIG_GROUP)),
                           Side(lambda m: directory.modify(BIG_GROUP, [(ldap.MOD_ADD, "member", [m])],
                                                           permissive=True),
                                new_member, drop_member(BIG_GROUP))),
    }

    # Both sides must do the real thing before their speed means anything.
    i = pick()
    checks = {
        "read_id": (operations["read_id"][1].op(i), operations["read_id"][2].op(i)),
        "read_dn": (operations["read_dn"][1].op(i), operations["read_dn"][2].op(i)),
        "search_eq": (operations["search_eq"][1].op(i), operations["search_eq"][2].op(i)),
    }
    for name, (raw_found, layer_found) in checks.items():
        layer_count = len(layer_found) if isinstance(layer_found, list) else int(layer_found is not None)
        if len(raw_found) != 1 or layer_count != 1:
            raise RuntimeError(f"{name}: expected one entry for user {i}, raw {raw_found!r}, layer {layer_found!r}")

    header = (f"{'operation':40} {'raw/s':>8} {'p50 ms':>7} {'p99 ms':>7}   {'layer/s':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7}   {'layer/raw':>9}  target")
    print(header)
    short = []
    for name, (label, raw, layer) in operations.items():
        if name not in only:
            continue
        compare(raw, layer, args.seconds, slice_seconds=args.slice)
        ratio = layer.sample.per_s / raw.sample.per_s
        verdict = "ok" if ratio >= LAYER_TARGET else "SHORT"
        if verdict != "ok":
            short.append(name)
        print(f"{label:40} {raw.sample.per_s:8.0f} {raw.sample.quantile_ms(.5):7.3f} {raw.sample.quantile_ms(.99):7.3f}"
              f"   {layer.sample.per_s:8.0f} {layer.sample.quantile_ms(.5):7.3f} {layer.sample.quantile_ms(.99):7.3f}"
              f"   {ratio:9.3f}  >= {LAYER_TARGET}: {verdict}", flush=True)
        figures.update({
            f"{name}_raw_per_s": raw.sample.per_s, f"{name}_layer_per_s": layer.sample.per_s,
            f"{name}_raw_p50_ms": raw.sample.quantile_ms(.5), f"{name}_raw_p99_ms": raw.sample.quantile_ms(.99),
            f"{name}_layer_p50_ms": layer.sample.quantile_ms(.5),
            f"{name}_layer_p99_ms": layer.sample.quantile_ms(.99),
            f"{name}_ratio": ratio,
        })

    if {"member_add_small", "member_add_big"} <= only:
        big_small = figures["member_add_big_layer_per_s"] / figures["member_add_small_layer_per_s"]
        raw_big_small = figures["member_add_big_raw_per_s"] / figures["member_add_small_raw_per_s"]
        verdict = "ok" if big_small >= BIG_SMALL_TARGET else "SHORT"
        print(f"member add, {args.group_members}-member vs {SMALL_GROUP_MEMBERS}-member group (ops/s big/small): "
              f"layer {big_small:.3f}, raw {raw_big_small:.3f}   target layer >= {BIG_SMALL_TARGET}: {verdict}")
        figures.update(member_add_big_small_ratio=big_small, member_add_big_small_raw_ratio=raw_big_small)

    if "cache_hit" in only:
        if not has_cache:
            print("cache: not available (no setting ldap.cache.enabled)")
        else:
            figures.update(measure_cache(bench, conn, dns[0], args))

    if short:
        print(f"layer below {LAYER_TARGET}x raw: {', '.join(short)}")
    directory.close()
    conn.unbind_s()
    return figures


def measure_cache(bench: BenchDirectory, conn, dn: str, args) -> dict[str, float]:
    """Repeated Directory.get of one cached DN vs a raw base-scope read of it.

    The cache is being built while this script is: anything it raises makes the figure absent, not
    the run fail, and the figure is reported only when the cache is seen to serve the entry.
    """
    import ldap

    overrides = json.loads(json.dumps(bench.overrides))
    overrides["ldap"] = {"cache": {"enabled": True}}
    cached = None
    try:
        cached = make_host(overrides, args.all_plugins).service("directory")
        cache = getattr(cached, "cache", None)
        if cache is None:
            raise RuntimeError("ldap.cache.enabled is true but the directory service has no cache")
        if hasattr(cache, "wait_until_serving") and not cache.wait_until_serving(10.0):
            raise RuntimeError("the cache did not start serving within 10 s")
        if cached.get(dn) is None:
            raise RuntimeError(f"the cached directory did not find {dn}")
        raw = Side(lambda _: conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)"))
        layer = Side(lambda _: cached.get(dn))
        compare(raw, layer, args.seconds, slice_seconds=args.slice)
        if hasattr(cache, "lookup") and cache.lookup(dn, None) is None:
            raise RuntimeError(f"{dn} is not a cache hit after the run; the figure would not be of hits")
    except Exception as exc:  # noqa: BLE001 - report and go on; the other figures stand
        print(f"cache: not available ({type(exc).__name__}: {exc})")
        return {}
    finally:
        if cached is not None:
            cached.close()
    ratio = layer.sample.per_s / raw.sample.per_s
    print(f"{'cache hit: get of one cached DN':40} {raw.sample.per_s:8.0f} {raw.sample.quantile_ms(.5):7.3f} "
          f"{raw.sample.quantile_ms(.99):7.3f}   {layer.sample.per_s:8.0f} {layer.sample.quantile_ms(.5):7.3f} "
          f"{layer.sample.quantile_ms(.99):7.3f}   {ratio:9.3f}  >= {CACHE_TARGET:g}: "
          f"{'ok' if ratio >= CACHE_TARGET else 'SHORT'}")
    return {"cache_hit_raw_per_s": raw.sample.per_s, "cache_hit_layer_per_s": layer.sample.per_s,
            "cache_hit_raw_p50_ms": raw.sample.quantile_ms(.5), "cache_hit_raw_p99_ms": raw.sample.quantile_ms(.99),
            "cache_hit_layer_p50_ms": layer.sample.quantile_ms(.5),
            "cache_hit_layer_p99_ms": layer.sample.quantile_ms(.99), "cache_hit_ratio": ratio}


if __name__ == "__main__":
    sys.exit(main())
