"""What a didmos task costs over a bare rq job, and how fast a one-level approval goes end to end.

Starts a private slapd (olcDbNoSync on) with every installed plugin and ``--users`` bulk-loaded users,
a private redis, ``--workers`` didmos workers (``didmos_host.tasks.run_worker``, what ``didmos worker``
runs: ``didmos worker`` itself; the task is the built-in ``didmos.ping``, which returns a small dict) and as many bare rq
workers (with the scheduler, on the queue ``bench-bare`` only: ``rq.SimpleWorker``, jobs run in the worker
process as didmos's default ``worker.mode`` runs them, or with ``--bare-worker fork`` rq's default
``rq.Worker``, a work horse forked per job). ``--submitters`` threads
then, in alternating slices:

- didmos: ``host.service("outbox").submit("didmos.ping", payload)`` (stored, queued, run by the
  execution wrapper, marked done), then wait for the job's rq result;
- bare: ``Queue("bench-bare").enqueue("tasks.noop", "didmos.ping", payload)``, then wait the same way;
- rq job on the didmos worker: ``Queue("default").enqueue("operator.eq", "didmos.ping", payload)``
  (a function of a module every Python process has loaded, as ``tasks.noop`` is in the bare workers),
  run by the didmos workers: no outbox, but the didmos worker process (every plugin loaded; forked per job with
  ``worker.mode = "fork"``, run in the worker itself with ``simple``, the default). It splits
  didmos's overhead into the worker's weight and the outbox's own work.

Latency is enqueue to the rq result (written after the outbox entry is ``done``); tasks/s are per
second of wall time. Then the LDAP operations of a few tasks (slapd's access log), and approvals: a
user files a ``join-group`` request over the API, the superadmin approves it over the API, a didmos
worker runs the action; measured from filing to the request's state ``done`` in the directory.

The last line is one JSON object of the figures. See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

QUEUE_BARE = "bench-bare"
#: The queue of the rq-job-on-the-didmos-worker side: one the didmos workers listen on.
QUEUE_ON_DIDMOS = "default"
#: The sides of the task comparison, in the order they run in each round.
KINDS = ("bare", "rq_on_didmos", "didmos")
PING = "didmos.ping"
SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"


def noop(name, payload):
    """The bare rq job: the same arguments as an outbox job, nothing done."""
    return None


# -- the worker processes (this script started again with --run-worker) -------------------------------

def worker_main(redis_url: str, mode: str = "fork") -> None:
    """The bare rq worker (the didmos ones are `didmos worker` itself): rq's ``Worker`` (a work horse
    forked per job) or, with ``mode`` "simple", rq's ``SimpleWorker`` (jobs in the worker process, as
    didmos's default ``worker.mode``)."""
    import redis
    import rq

    import tasks  # noqa: F401 - imported before the fork, as didmos's handlers are, so no horse imports it
    worker_class = rq.SimpleWorker if mode == "simple" else rq.Worker
    worker_class([QUEUE_BARE], connection=redis.Redis.from_url(redis_url)).work(with_scheduler=True,
                                                                                 logging_level="INFO")


def start_workers(kind: str, count: int, settings: Path, redis_url: str, root: Path,
                  bare_mode: str = "fork") -> list[subprocess.Popen]:
    env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(settings),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    procs = []
    for n in range(count):
        with (root / f"worker-{kind}-{n}.log").open("w") as log:
            argv = ([sys.executable, "-m", "didmos_host.cli", "worker"] if kind == "didmos"
                    else [sys.executable, __file__, "--run-worker", kind, "--redis-url", redis_url,
                          "--bare-worker", bare_mode])
            procs.append(subprocess.Popen(argv,
                                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # rq: warm shutdown after the current job
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and its horse only
            proc.wait()


def wait_for_workers(redis_url: str, procs: list[subprocess.Popen], root: Path, timeout: float = 30.0) -> None:
    import redis
    import rq
    connection = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    expected = len(procs)
    while len(rq.Worker.all(connection=connection)) < expected:
        for proc in procs:
            if proc.poll() is not None:
                logs = "".join(log.read_text()[-2000:] for log in sorted(root.glob("worker-*.log")))
                raise RuntimeError(f"a worker exited with {proc.returncode}:\n{logs}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(rq.Worker.all(connection=connection))} of {expected} rq workers started")
        time.sleep(0.1)


# -- data ---------------------------------------------------------------------------------------------

def user_uuid(i: int) -> str:
    return str(uuid.UUID(int=0x7A5C << 112 | i))


def user_password(i: int) -> str:
    return f"bench-password-{i}"


def ssha(secret: str) -> str:
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(secret.encode() + salt).digest() + salt).decode()


GROUP_UUID = str(uuid.UUID(int=0x6A5C << 112))


def ldif_writer(users: int):
    from _common import GROUPS, PEOPLE

    def write(path: Path) -> str:
        def entry(dn, attrs):
            return f"dn: {dn}\n" + "".join(f"{k}: {v}\n" for k, vs in attrs.items() for v in vs) + "\n"

        with path.open("w") as out:
            out.write(entry(f"didmosUUID={GROUP_UUID},{GROUPS}", {
                "objectClass": ["didmosGroup", "didmosObject"], "didmosUUID": [GROUP_UUID], "cn": ["bench-group"]}))
            for i in range(users):
                out.write(entry(f"didmosUUID={user_uuid(i)},{PEOPLE}", {
                    "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson", "didmosRoleHolder"],
                    "uid": [f"u{i}"], "cn": [f"User {i}"], "sn": [f"User{i}"], "didmosUUID": [user_uuid(i)],
                    "didmosTenant": ["default-tenant"], "didmosActive": ["TRUE"],
                    "userPassword": [ssha(user_password(i))],
                    "didmosRoleAssignment": ["cn=standarduser,ou=roles,ou=rbac,ou=default-tenant,dc=didmos,dc=de"]}))
        return f"{users} users ({{SSHA}} passwords, standarduser), 1 empty group"

    return write


# -- the task comparison ------------------------------------------------------------------------------

def task_sides(host, redis_url: str, submitters: int):
    """One Side per submitter and kind: submit, then block until the job's rq result is there."""
    import redis
    from rq import Queue
    from rq.job import Job
    from rq.results import Result

    from _common import Side

    outbox = host.service("outbox")
    failures = dict.fromkeys(KINDS, 0)

    def make(kind: str) -> Side:
        connection = redis.Redis.from_url(redis_url)  # its own: XREAD blocks it
        queue = Queue(QUEUE_ON_DIDMOS if kind == "rq_on_didmos" else QUEUE_BARE, connection=connection)

        def op(payload):
            if kind == "didmos":
                job_id = outbox.submit(PING, payload).id
            elif kind == "rq_on_didmos":
                job_id = queue.enqueue("operator.eq", PING, payload).id  # loaded in the worker already
            else:
                job_id = queue.enqueue("tasks.noop", PING, payload).id
            result = Result.fetch_latest(Job(job_id, connection=connection), timeout=30)
            if result is None or result.type != Result.Type.SUCCESSFUL:
                failures[kind] += 1

        return Side(op, prepare=lambda: {"n": 1})

    return {kind: [make(kind) for _ in range(submitters)] for kind in KINDS}, failures


def measure_tasks(host, redis_url: str, args, pids: dict[str, list[int]]) -> dict[str, float]:
    from _common import Sample, process_tree_cpu_seconds, run_concurrently

    sides, failures = task_sides(host, redis_url, args.submitters)
    for kind in KINDS:
        run_concurrently(sides[kind], args.warmup, record=False)
    for kind in failures:
        failures[kind] = 0
    wall = dict.fromkeys(KINDS, 0.0)
    cpu = {kind: {who: 0.0 for who in pids} | {"bench": 0.0} for kind in wall}

    def cpu_now():
        now = {who: sum(process_tree_cpu_seconds(p) for p in ps) for who, ps in pids.items()}
        now["bench"] = process_tree_cpu_seconds(os.getpid())
        return now

    import redis
    stats = redis.Redis.from_url(redis_url)
    commands = dict.fromkeys(KINDS, 0)

    def commands_now():
        return sum(v["calls"] for v in stats.info("commandstats").values())

    rounds = max(1, round(args.seconds / args.slice))
    for _ in range(rounds):
        for kind in KINDS:
            before, calls = cpu_now(), commands_now()
            wall[kind] += run_concurrently(sides[kind], args.seconds / rounds)
            after = cpu_now()
            commands[kind] += commands_now() - calls - 1  # the INFO itself
            for who in after:
                cpu[kind][who] += after[who] - before[who]
    figures: dict[str, float] = {}
    for kind in KINDS:
        sample = Sample([x for side in sides[kind] for x in side.sample.latencies])
        done = len(sample.latencies)
        figures[f"{kind}_tasks_per_s"] = done / wall[kind]
        figures[f"{kind}_p50_ms"] = sample.quantile_ms(0.5)
        figures[f"{kind}_p99_ms"] = sample.quantile_ms(0.99)
        figures[f"{kind}_tasks"] = done
        figures[f"{kind}_failed"] = failures[kind]
        figures[f"{kind}_redis_commands_per_task"] = commands[kind] / done if done else 0.0
        workers = pids["bare_workers" if kind == "bare" else "workers"]
        figures[f"{kind}_worker_rss_mb"] = sum(rss_mb(p) for p in workers) / len(workers)
        for who, seconds in cpu[kind].items():
            figures[f"{kind}_cpu_{who}_ms_per_task"] = seconds * 1000 / done if done else 0.0
    figures["outbox_vs_rq_ratio"] = figures["didmos_tasks_per_s"] / figures["bare_tasks_per_s"]
    # The split: the didmos worker alone (its weight), and the outbox on that worker.
    figures["didmos_worker_vs_rq_ratio"] = figures["rq_on_didmos_tasks_per_s"] / figures["bare_tasks_per_s"]
    figures["outbox_vs_rq_on_didmos_ratio"] = figures["didmos_tasks_per_s"] / figures["rq_on_didmos_tasks_per_s"]
    figures["latency_ratio"] = figures["bare_p50_ms"] / figures["didmos_p50_ms"]
    return figures


def rss_mb(pid: int) -> float:
    """Resident memory of a process (what each fork of a work horse starts from)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def count_ldap_operations(bench, host, redis_url: str, count: int) -> list[list[str]]:
    """The LDAP operations of ``count`` didmos tasks, one after another (submit to rq result)."""
    sides, _ = task_sides(host, redis_url, 1)
    side = sides["didmos"][0]
    return __import__("_common").logged_operations(bench, [lambda: side.op({"n": 1}) for _ in range(count)])


# -- approvals ------------------------------------------------------------------------------------------

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def measure_approvals(bench, port: int, args) -> dict[str, float]:
    """``--approvals`` join-group requests, ``--approval-clients`` at a time: file (user), approve
    (superadmin), wait until the request entry says ``done`` (polled every 5 ms over a raw connection)."""
    import ldap

    from _common import Sample, raw_connection

    admin = basic(SUPERADMIN_UUID, bench.overrides["directory"]["superadmin_password"])
    next_user = iter(range(args.approvals))
    lock = threading.Lock()
    samples = {"end_to_end": Sample(), "file": Sample(), "approve": Sample(), "act": Sample()}
    errors: list[BaseException] = []
    states: dict[str, int] = {}

    def post(conn, path, auth, body):
        conn.request("POST", path, body=json.dumps(body), headers={"Authorization": auth,
                                                                    "Content-Type": "application/json"})
        answer = conn.getresponse()
        data = answer.read()
        if answer.status not in (200, 201):
            raise RuntimeError(f"POST {path}: {answer.status} {data[:300]!r}")
        return json.loads(data)

    def client():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            reader = raw_connection(bench.server.uri, bench.service_dn, bench.service_password)
            while True:
                with lock:
                    i = next(next_user, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                filed = post(conn, "/tasks/v1/requests", basic(user_uuid(i), user_password(i)),
                             {"kind": "join-group", "payload": {"group": GROUP_UUID}})
                t1 = time.perf_counter()
                post(conn, f"/tasks/v1/requests/{filed['id']}/approve", admin, {"comment": "bench"})
                t2 = time.perf_counter()
                dn = f"cn={filed['id']},ou=requests,ou=default-tenant,dc=didmos,dc=de"
                deadline = t2 + 60
                while True:
                    state = reader.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)",
                                            ["didmosRequestState"])[0][1]["didmosRequestState"][0].decode()
                    if state in ("done", "failed") or time.perf_counter() > deadline:
                        break
                    time.sleep(0.005)
                t3 = time.perf_counter()
                with lock:
                    states[state] = states.get(state, 0) + 1
                    samples["file"].latencies.append(t1 - t0)
                    samples["approve"].latencies.append(t2 - t1)
                    samples["act"].latencies.append(t3 - t2)
                    samples["end_to_end"].latencies.append(t3 - t0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.approval_clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    done = states.get("done", 0)
    figures = {"approvals_per_s": done / wall, "approvals_done": done,
               "approvals_not_done": sum(states.values()) - done}
    for name, sample in samples.items():
        figures[f"approval_{name}_p50_ms"] = sample.quantile_ms(0.5)
        figures[f"approval_{name}_p99_ms"] = sample.quantile_ms(0.99)
    return figures


# -- main -------------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="didmos workers, and as many bare rq workers")
    parser.add_argument("--submitters", type=int, default=4, help="concurrent submitters (threads), each side")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per side")
    parser.add_argument("--slice", type=float, default=2.0, help="length of one alternating slice (s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per side first")
    parser.add_argument("--count-tasks", type=int, default=5, help="tasks whose LDAP operations are counted")
    parser.add_argument("--approvals", type=int, default=50, help="join-group requests filed and approved")
    parser.add_argument("--approval-clients", type=int, default=4, help="concurrent requesters")
    parser.add_argument("--users", type=int, default=1000, help="bulk-loaded users (>= --approvals)")
    parser.add_argument("--bare-worker", choices=["fork", "simple"], default="simple",
                        help="the bare rq workers: rq.SimpleWorker (in process, like didmos's default "
                             "worker.mode: like for like, the default) or rq.Worker (fork per job, rq's default)")
    parser.add_argument("--run-worker", choices=["bare"], help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_worker:
        worker_main(args.redis_url, args.bare_worker)
        return
    if args.approvals > args.users:
        parser.error("--approvals needs as many --users (each user files one request)")

    from _common import (bench_directory, cores, print_figures, start_api, stop_api, write_settings_file)
    from didmos_host.host import Host
    from didmos_host.servers import RedisServer, free_port

    begun = time.perf_counter()
    print(f"didmos tasks vs bare rq: {args.workers} workers each, {args.submitters} submitters, {cores()} cores, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    figures: dict[str, float] = {}
    with bench_directory(ldif_writer(args.users)) as bench:
        root = Path(bench.server.data_dir).parent  # the bench directory's private temporary folder
        t = bench.timings
        print(f"directory: {bench.description}; setup: init {t['init_s']:.1f} s, slapadd -q {t['slapadd_s']:.1f} s")
        redis_server = None
        workers: list[subprocess.Popen] = []
        api = None
        try:
            redis_server = RedisServer(root / "redis", port=free_port(), persistence=False)
            redis_server.start()
            overrides = {**bench.overrides, "redis": {"url": redis_server.url}}
            settings = write_settings_file(overrides, root / "bench-tasks-settings.toml")
            workers = (start_workers("didmos", args.workers, settings, redis_server.url, root)
                       + start_workers("bare", args.workers, settings, redis_server.url, root, args.bare_worker))
            wait_for_workers(redis_server.url, workers, root)
            host = Host.create(overrides)
            pids = {"workers": [w.pid for w in workers[:args.workers]],
                    "bare_workers": [w.pid for w in workers[args.workers:]],
                    "slapd": [bench.server.pid], "redis": [redis_server.pid]}
            print(f"workers: {args.workers} x run_worker (`didmos worker`, worker.mode {host.settings.worker.mode}; "
                  f"didmos.ping on queue default), "
                  f"{args.workers} x {'rq.SimpleWorker' if args.bare_worker == 'simple' else 'rq.Worker'} on {QUEUE_BARE}; a private redis")

            figures.update(measure_tasks(host, redis_server.url, args, pids))
            print(f"{'':28}{'tasks/s':>9}{'p50 ms':>9}{'p99 ms':>9}   CPU ms per task: workers+horses, slapd, "
                  f"redis, submitter")
            for kind, label in (("bare", "bare rq job"), ("rq_on_didmos", "rq job, didmos worker"),
                                ("didmos", "didmos outbox task")):
                cpu_workers = figures[f"{kind}_cpu_workers_ms_per_task"] + figures[f"{kind}_cpu_bare_workers_ms_per_task"]
                print(f"{label:28}{figures[f'{kind}_tasks_per_s']:9.1f}{figures[f'{kind}_p50_ms']:9.2f}"
                      f"{figures[f'{kind}_p99_ms']:9.2f}   {cpu_workers:6.2f} {figures[f'{kind}_cpu_slapd_ms_per_task']:6.2f}"
                      f" {figures[f'{kind}_cpu_redis_ms_per_task']:6.2f} {figures[f'{kind}_cpu_bench_ms_per_task']:6.2f}"
                      f"   ({figures[f'{kind}_tasks']:.0f} tasks, {figures[f'{kind}_failed']:.0f} failed)")
            print(f"redis commands per task: bare {figures['bare_redis_commands_per_task']:.1f}, rq job on the "
                  f"didmos worker {figures['rq_on_didmos_redis_commands_per_task']:.1f}, didmos "
                  f"{figures['didmos_redis_commands_per_task']:.1f}; worker RSS (a fork starts from it): bare "
                  f"{figures['bare_worker_rss_mb']:.0f} MB, didmos {figures['didmos_worker_rss_mb']:.0f} MB")
            print(f"split: didmos worker / bare worker (same rq job) {figures['didmos_worker_vs_rq_ratio']:.3f}; "
                  f"outbox task / rq job on the didmos worker {figures['outbox_vs_rq_on_didmos_ratio']:.3f}")
            ratio = figures["outbox_vs_rq_ratio"]
            print(f"outbox_vs_rq_ratio (didmos tasks/s / bare) {ratio:.3f}   target >= 0.667: "
                  f"{'ok' if ratio >= 1 / 1.5 else 'SHORT'}")
            print(f"latency_ratio (bare p50 / didmos p50) {figures['latency_ratio']:.3f}   target >= 0.667: "
                  f"{'ok' if figures['latency_ratio'] >= 1 / 1.5 else 'SHORT'}", flush=True)

            if args.count_tasks:
                per_task = count_ldap_operations(bench, host, redis_server.url, args.count_tasks)
                counts = sorted(len(ops) for ops in per_task)
                figures["task_ldap_ops"] = counts[len(counts) // 2]
                print(f"LDAP operations per didmos task (median of {len(counts)}): {figures['task_ldap_ops']:.0f}; "
                      f"counts {counts}; one task's:")
                for op in per_task[len(per_task) // 2]:
                    print(f"  {op}")

            if args.approvals:
                # The didmos workers stay; the bare ones are not needed.
                stop_workers(workers[args.workers:])
                api, port = start_api(overrides, root, workers=2, threads=4)
                figures.update(measure_approvals(bench, port, args))
                print(f"approvals: {figures['approvals_done']:.0f} join-group requests done "
                      f"({figures['approvals_not_done']:.0f} not), {args.approval_clients} at a time: "
                      f"{figures['approvals_per_s']:.1f}/s; p50 (p99) ms: end to end "
                      f"{figures['approval_end_to_end_p50_ms']:.1f} ({figures['approval_end_to_end_p99_ms']:.1f}), "
                      f"file {figures['approval_file_p50_ms']:.1f} ({figures['approval_file_p99_ms']:.1f}), "
                      f"approve {figures['approval_approve_p50_ms']:.1f} ({figures['approval_approve_p99_ms']:.1f}), "
                      f"approve to done {figures['approval_act_p50_ms']:.1f} ({figures['approval_act_p99_ms']:.1f})")
            host.service("directory").close()
        finally:
            if api is not None:
                stop_api(api)
            stop_workers(workers)
            if redis_server is not None:
                redis_server.stop()
    print(f"total {time.perf_counter() - begun:.1f} s; workers, API, redis and slapd stopped", flush=True)
    print_figures(figures)


if __name__ == "__main__":
    main()
