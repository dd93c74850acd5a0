"""Task handlers run by a real rq worker against the test redis."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from didmos_host import hookimpl
from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.records import TaskHandler
from didmos_host.tasks import STUCK_EXIT_STATUS, connect, enqueue, queue_names, run_worker

def record(payload, context):
    # with worker.mode fork each job runs in a forked work horse, so the effect is left in a file, not in memory
    with open(payload["log"], "a") as log:
        log.write(f"{payload['n']} {context.job_id}\n")
    return {"seen": payload["n"] * 2}


class Recorder:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.record", function=record, queue="test", retries=0)]


def test_enqueued_task_runs_in_a_worker_with_its_payload(didmos_overrides, tmp_path):
    host = Host.create(didmos_overrides, extra_plugins=[Recorder()])
    assert "test" in queue_names(host) and "default" in queue_names(host)
    log = tmp_path / "calls.log"
    job_id = enqueue(host, "test.record", {"n": 21, "log": str(log)})
    ping_id = enqueue(host, "didmos.ping", {"value": "hello"})
    run_worker(host, burst=True)
    connection = redis.Redis.from_url(host.settings.redis.url)
    assert Job.fetch(job_id, connection=connection).return_value() == {"seen": 42}
    assert log.read_text() == f"21 {job_id}\n"  # ran exactly once, with its own job id
    pong = Job.fetch(ping_id, connection=connection).return_value()
    assert pong["pong"] == "hello" and "didmos_ldap" in pong["plugins"]


def test_unknown_task_and_unsafe_payload_are_refused(didmos_overrides):
    host = Host.create(didmos_overrides)
    with pytest.raises(DidmosError, match="no task handler named 'nope'"):
        enqueue(host, "nope", {})
    with pytest.raises(DidmosError, match="not JSON-safe"):
        enqueue(host, "didmos.ping", {"value": object()})


def test_unreachable_redis_is_unavailable_not_a_crash(didmos_overrides):
    from didmos_host.errors import Unavailable
    from didmos_host.servers import free_port

    host = Host.create({**didmos_overrides, "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    with pytest.raises(Unavailable, match="cannot be reached"):
        enqueue(host, "didmos.ping", {"value": 1})
    with pytest.raises(Unavailable, match="cannot be reached"):
        run_worker(host, burst=True)


# -- worker.mode = "simple": jobs in the worker process itself ------------------------------------------


def report_pid(payload, context):
    with open(payload["log"], "a") as log:
        log.write(f"{os.getpid()}\n")
    return os.getpid()


def explode(payload, context):
    raise RuntimeError("the handler broke")


def oversleep(payload, context):
    time.sleep(payload["seconds"])
    return "woke up"


class InProcess:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.pid", function=report_pid, queue="simple-test", retries=0),
                TaskHandler(name="test.explode", function=explode, queue="simple-test", retries=0),
                TaskHandler(name="test.oversleep", function=oversleep, queue="simple-test", retries=0, timeout=1)]


@pytest.fixture
def simple_host(didmos_overrides):
    host = Host.create({**didmos_overrides, "worker": {"mode": "simple"}}, extra_plugins=[InProcess()])
    yield host
    Queue("simple-test", connection=connect(host)).empty()
    host.service("directory").close()


def test_a_simple_worker_runs_jobs_in_its_process_and_outlives_a_raising_handler(simple_host, tmp_path):
    log = tmp_path / "pids.log"
    first = enqueue(simple_host, "test.pid", {"log": str(log)})
    broken = enqueue(simple_host, "test.explode", {})
    last = enqueue(simple_host, "test.pid", {"log": str(log)})
    assert run_worker(simple_host, burst=True, queues=["simple-test"]) is True
    connection = connect(simple_host)
    assert log.read_text().split() == [str(os.getpid())] * 2  # no work horse: this very process, twice
    assert Job.fetch(first, connection=connection).return_value() == os.getpid()
    failed = Job.fetch(broken, connection=connection)
    assert failed.get_status() == JobStatus.FAILED
    assert "RuntimeError: the handler broke" in failed.latest_result().exc_string
    assert Job.fetch(last, connection=connection).get_status() == JobStatus.FINISHED  # ran after the failure
    deadline = time.monotonic() + 3
    while any(t.name == "didmos-job-watchdog" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(t.name == "didmos-job-watchdog" for t in threading.enumerate())  # ended with the worker


def test_a_simple_worker_stops_a_job_at_its_timeout_and_goes_on(simple_host, tmp_path):
    log = tmp_path / "pids.log"
    slow = enqueue(simple_host, "test.oversleep", {"seconds": 30})
    after = enqueue(simple_host, "test.pid", {"log": str(log)})
    alarm_before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0] > 0  # pytest-timeout's
    started = time.monotonic()
    run_worker(simple_host, burst=True, queues=["simple-test"])
    assert time.monotonic() - started < 15  # the 1 s timeout, not the 30 s sleep
    connection = connect(simple_host)
    timed_out = Job.fetch(slow, connection=connection)
    assert timed_out.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in timed_out.latest_result().exc_string
    assert Job.fetch(after, connection=connection).get_status() == JobStatus.FINISHED
    # the SIGALRM handler and timer that were there before are back (rq's own would leave neither)
    assert (signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0] > 0) == alarm_before


STUCK_WORKER = """
import signal, sys, time
from didmos_host import hookimpl, tasks
from didmos_host.host import Host
from didmos_host.records import TaskHandler

def stuck(payload, context):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # what a call stuck in C looks like to rq's alarm
    time.sleep(60)

class Stuck:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.stuck", function=stuck, queue=sys.argv[1], retries=0, timeout=1)]

tasks.STUCK_GRACE_SECONDS = 1
tasks.run_worker(Host.create({"worker": {"mode": "simple"}}, extra_plugins=[Stuck()]), burst=True, queues=[sys.argv[1]])
"""


def test_a_simple_worker_whose_job_is_stuck_past_its_timeout_exits(didmos_overrides, tmp_path):
    """rq's fork mode kills such a horse; in simple mode the watchdog ends the worker (its service manager
    starts a new one, and the outbox delivers the task again)."""
    queue = f"stuck-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "stuck_worker.py"
    script.write_text(STUCK_WORKER)
    host = Host.create(didmos_overrides)
    Queue(queue, connection=connect(host)).enqueue("didmos_host.tasks.run_task", "test.stuck", {}, job_timeout=1)
    env = {**os.environ, "DIDMOS_REDIS__URL": didmos_overrides["redis"]["url"]}
    started = time.monotonic()
    worker = subprocess.run([sys.executable, str(script), queue], env=env, capture_output=True, text=True, timeout=60)
    assert worker.returncode == STUCK_EXIT_STATUS, worker.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "ran 1 s past its timeout and cannot be stopped" in worker.stderr
