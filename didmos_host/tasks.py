"""Asynchronous tasks: enqueue by handler name, run in ``didmos worker`` on rq and redis.

Handlers come from the ``didmos_task_handlers`` hook. The rq job only carries the handler's name and a
JSON-safe payload, so a job enqueued by one version of a plugin runs with whatever handler the worker
has loaded; the ``didmos_tasks`` plugin builds requests, approvals and the outbox on top of this.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
import rq
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.timeouts import UnixSignalDeathPenalty

from didmos_host import central, observability
from didmos_host.errors import DidmosError, PermanentTaskError, Unavailable
from didmos_host.host import Host
from didmos_host.records import TaskHandler
from didmos_host.sentinel import connect_redis, describe_redis

log = logging.getLogger("didmos.tasks")
_worker_host: Host | None = None
#: host -> {task name: seconds}: what each `didmos worker` of that host enqueues periodically.
_periodic: weakref.WeakKeyDictionary[Host, dict[str, float]] = weakref.WeakKeyDictionary()
#: The function an rq job runs unless the caller names another (``runner``).
RUN_TASK = "didmos_host.tasks.run_task"


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets besides its payload: the host (settings, services) and the rq job id."""

    host: Host
    job_id: str | None


def connect(host: Host) -> redis.Redis:
    """The task queue's redis: ``redis.url``, or its current primary through Sentinel (``redis.sentinels``)."""
    return connect_redis(host.settings, socket_connect_timeout=5, socket_timeout=30)


def validate(host: Host, name: str, payload: dict[str, Any] | None) -> TaskHandler:
    """The handler of task ``name``, after checking that ``payload`` survives a JSON round trip unchanged.

    Raises :class:`DidmosError` (400) naming the registered handlers, or what is wrong with the payload.
    """
    handler = host.task_handlers.get(name)
    if handler is None:
        known = ", ".join(sorted(host.task_handlers)) or "none"
        raise DidmosError(f"no task handler named {name!r}; registered: {known}", status=400)
    try:
        safe = json.loads(json.dumps(payload)) == payload
    except (TypeError, ValueError):
        safe = False
    if not safe:
        raise DidmosError(f"payload of task {name!r} is not JSON-safe (only dicts, lists, str, numbers, "
                          f"booleans and null survive the queue unchanged)", status=400)
    return handler


def enqueue(host: Host, name: str, payload: dict[str, Any] | None = None, *, connection: redis.Redis | None = None,
            job_id: str | None = None, runner: str = RUN_TASK) -> str:
    """Queue task ``name`` with ``payload``; returns the job id.

    The payload must survive a JSON round trip unchanged, so a task never depends on pickled objects.
    With ``job_id`` (letters, digits, ``_`` and ``-``) the job gets that id, and an id that redis holds
    already is not queued again (rq's ``unique``): enqueueing one task twice runs it once. ``runner`` is
    the dotted path of the function the job calls with ``(name, payload)``; the default looks the
    handler up and calls it, the ``didmos_tasks`` outbox passes its own wrapper.
    """
    payload = payload or {}
    handler = validate(host, name, payload)
    queue = Queue(handler.queue, connection=connection or connect(host))
    retry = Retry(max=handler.retries, interval=list(handler.retry_intervals)) if handler.retries else None
    unique = {"job_id": job_id, "unique": True} if job_id is not None else {}
    try:
        # The request id of the request (or task) that enqueues goes with the job: see RequestIdWorker.
        request_id = observability.current_request_id()
        meta = {"meta": {observability.JOB_META_KEY: request_id}} if request_id else {}
        job = queue.enqueue(runner, name, payload, retry=retry, job_timeout=handler.timeout, **unique, **meta)
    except DuplicateJobError:
        return job_id
    except redis.exceptions.ConnectionError as exc:
        raise Unavailable(f"task queue at {describe_redis(host.settings)} cannot be reached: {exc}") from exc
    return job.id


def worker_host() -> Host:
    """The host of the ``didmos worker`` running this job; outside one (rq's own CLI), a host made now."""
    global _worker_host
    if _worker_host is None:
        _worker_host = Host.create()
    return _worker_host


def run_task(name: str, payload: dict[str, Any]) -> Any:
    """What the rq job runs inside the worker: find the handler by name and call it."""
    host = worker_host()
    handler = host.task_handlers[name]
    job = rq.get_current_job()
    try:
        return handler.function(payload, TaskContext(host=host, job_id=job.id if job else None))
    except PermanentTaskError:
        if job is not None:
            job.retries_left = 0  # rq retries while retries_left > 0, reading it from this very object
        raise


def queue_names(host: Host) -> list[str]:
    names = {handler.queue for handler in host.task_handlers.values()} | {"default"}
    return sorted(names)


def enqueue_periodically(host: Host, name: str, seconds: float) -> None:
    """Have every ``didmos worker`` of ``host`` enqueue task ``name`` (empty payload) every ``seconds``.

    Call it when the host is made (``didmos_services``); in other processes it does nothing. However
    many workers run, the task is queued once per period: its job id is the name and the period's
    number. A burst worker queues each such task once, before it starts.
    """
    if seconds <= 0:
        raise ValueError(f"a periodic task needs a period above 0 seconds, got {seconds!r} for {name!r}")
    _periodic.setdefault(host, {})[name] = float(seconds)


def enqueue_for_period(host: Host, name: str, seconds: float, *, connection: redis.Redis | None = None) -> str:
    """Queue task ``name`` (empty payload) unless it was queued already in the current period of ``seconds``.

    What the periodic thread does; also for a process that wants the task to run soon (the outbox
    after a submit) without queueing it more than once per period. Returns the job id.
    """
    period = int(time.time() // seconds)
    with observability.request_id_scope(None):  # one job serves the whole period, not the request that queued it
        return enqueue(host, name, {}, connection=connection,
                       job_id=f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)}-{period}")


def _enqueue_periodic_tasks(host: Host, periodic: dict[str, float], stop: threading.Event) -> None:
    """The loop of the worker's periodic thread. It only talks to redis, never to the directory: rq forks
    its work horses (``worker.mode = "fork"``) and its scheduler from this process, and a fork must not
    inherit a directory connection in use."""
    connection = connect(host)
    due = dict.fromkeys(periodic, 0.0)
    while not stop.is_set():
        now = time.monotonic()
        for name, seconds in periodic.items():
            if now < due[name]:
                continue
            due[name] = now + seconds
            try:
                enqueue_for_period(host, name, seconds, connection=connection)
            except Exception as exc:  # redis down, a handler gone: say so and try again next period
                log.warning("cannot enqueue periodic task %s: %s", name, exc)
        stop.wait(max(0.05, min(due.values()) - time.monotonic()))


class RequestIdWorker:
    """Mixin for the rq worker classes of ``didmos worker``: each job runs with the request id it was
    enqueued with (its ``meta``), so the job's log lines (in a work horse forked inside, or in this
    process) and the tasks it enqueues carry it."""

    def execute_job(self, job, queue):
        observability.install_record_factory()
        with observability.request_id_scope(job.meta.get(observability.JOB_META_KEY)):
            return super().execute_job(job, queue)


class ForkingWorker(RequestIdWorker, rq.Worker):
    """``worker.mode = "fork"``: rq's ``Worker``, a work horse forked per job. A horse that crashes or
    outlives its job's timeout by 60 s is killed and the worker goes on; every horse opens its own
    directory connection (the worker's cannot be shared across a fork)."""


class _Alarm(UnixSignalDeathPenalty):
    """rq's job timeout (SIGALRM) for a job run in this process, putting back the SIGALRM handler and timer
    that were there before: rq's own leaves SIGALRM at its default, process-ending action and cancels
    any other timer (a test runner's, say)."""

    def setup_death_penalty(self):
        self._before = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)[0], time.monotonic()
        super().setup_death_penalty()

    def cancel_death_penalty(self):
        super().cancel_death_penalty()
        handler, remaining, since = self._before
        signal.signal(signal.SIGALRM, signal.SIG_DFL if handler is None else handler)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, max(remaining - (time.monotonic() - since), 0.001))


class InProcessWorker(RequestIdWorker, rq.SimpleWorker):
    """``worker.mode = "simple"``: rq's ``SimpleWorker``, each job in this process, keeping its directory
    and redis connections from job to job.

    A handler that raises is an exception here as in a horse (the job fails, or is retried). The job's
    timeout is rq's SIGALRM in this, the main thread. What that alarm cannot stop (a call stuck in C)
    meets a watchdog: :data:`STUCK_GRACE_SECONDS` past the timeout the process exits (status 70), as a
    horse would be killed, and its service manager starts it again; the outbox delivers the task again
    once its lease expires. A handler that kills the process (a segfault, out of memory) takes the
    worker down the same way. rq's scheduler, a process forked from this one, inherits the idle
    directory connections but never uses them (it talks to redis only) and ends without closing them.
    """

    death_penalty_class = _Alarm
    _deadline: float | None = None
    _watched: str | None = None
    _watchdog: threading.Event | None = None  # set: the watchdog thread ends

    def execute_job(self, job, queue):
        timeout = job.timeout or Queue.DEFAULT_TIMEOUT  # what rq's alarm uses; -1: no timeout
        if timeout > 0:
            self._watched, self._deadline = job.id, time.monotonic() + timeout + STUCK_GRACE_SECONDS
            if self._watchdog is None:
                self._watchdog = threading.Event()
                threading.Thread(target=self._watch, args=(self._watchdog,), name="didmos-job-watchdog",
                                 daemon=True).start()
        try:
            return super().execute_job(job, queue)
        finally:
            self._deadline = None

    def teardown(self):
        if self._watchdog is not None:
            self._watchdog.set()
        super().teardown()

    def _watch(self, stopped: threading.Event) -> None:
        while not stopped.wait(1.0):
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                log.critical("job %s ran %d s past its timeout and cannot be stopped (stuck outside Python?); "
                             "the worker exits so that its service manager starts a new one", self._watched,
                             STUCK_GRACE_SECONDS)
                logging.shutdown()
                os._exit(STUCK_EXIT_STATUS)


#: ``worker.mode`` -> the rq worker class ``didmos worker`` runs.
WORKER_CLASSES: dict[str, type[rq.worker.BaseWorker]] = {"fork": ForkingWorker, "simple": InProcessWorker}
#: Seconds past a job's timeout after which a stuck job ends an in-process worker (rq's fork mode kills
#: a horse after the same grace).
STUCK_GRACE_SECONDS = 60
#: Exit status of a worker the watchdog ended (EX_SOFTWARE): a failure to systemd's ``Restart=on-failure``.
STUCK_EXIT_STATUS = 70


def run_worker(host: Host, *, burst: bool = False, queues: list[str] | None = None) -> bool:
    """Run an rq worker (with the scheduler, for delayed and retried jobs) on every handler's queue.

    Tasks registered with :func:`enqueue_periodically` are enqueued by a thread of this process while
    the worker runs (in burst mode once, before it starts).
    """
    global _worker_host
    _worker_host = host
    connection = connect(host)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError as exc:
        raise Unavailable(f"task queue at {describe_redis(host.settings)} cannot be reached: {exc}") from exc
    stop = threading.Event()

    def start_periodic(current: Host) -> None:
        nonlocal stop
        stop.set()  # the thread of the previous host, after a change of the central settings
        stop = threading.Event()
        periodic = dict(_periodic.get(current, {}))
        if periodic:
            threading.Thread(target=_enqueue_periodic_tasks, args=(current, periodic, stop), name="didmos-periodic",
                             daemon=True).start()

    def use_host(new: Host) -> None:  # between jobs, when the central settings changed (didmos_host.central)
        global _worker_host
        _worker_host = new
        if not burst:
            start_periodic(new)

    worker_class = central.worker_class(host, WORKER_CLASSES[host.settings.worker.mode], use_host)
    worker = worker_class(queues or queue_names(host), connection=connection)
    if burst:
        for name, seconds in _periodic.get(host, {}).items():
            enqueue_for_period(host, name, seconds, connection=connection)
    else:
        start_periodic(host)
    try:
        while True:
            try:
                return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                # rq's worker dies of a connection lost outside its dequeue (a heartbeat right after
                # one): redis restarted, or Sentinel failed over. Start another on a new connection.
                if burst:
                    raise
                if not _pause_after_losing_redis(_worker_host, exc):
                    return False
                worker = worker_class(queues or queue_names(_worker_host), connection=connect(_worker_host))
    finally:
        stop.set()


def _pause_after_losing_redis(host: Host, exc: Exception) -> bool:
    """Wait 2 s before the worker starts again; False when SIGTERM or SIGINT came meanwhile."""
    log.warning("lost the task queue at %s (%s); starting the worker again in 2 s", describe_redis(host.settings), exc)
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return not stopping.wait(2.0)
    previous = {number: signal.signal(number, lambda *_: stopping.set()) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        stopping.wait(2.0)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return not stopping.is_set()
