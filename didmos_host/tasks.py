"""Asynchronous tasks: enqueue by handler name, run in ``didmos worker`` on rq and redis.

Handlers come from the ``didmos_task_handlers`` hook. The rq job only carries the handler's name and a
JSON-safe payload, so a job enqueued by one version of a plugin runs with whatever handler the worker
has loaded; the ``didmos_tasks`` plugin builds requests, approvals and the outbox on top of this.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
import rq
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from didmos_host.errors import DidmosError, Unavailable
from didmos_host.host import Host
from didmos_host.records import TaskHandler

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
    return redis.Redis.from_url(host.settings.redis.url, socket_connect_timeout=5, socket_timeout=30)


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
        job = queue.enqueue(runner, name, payload, retry=retry, job_timeout=handler.timeout, **unique)
    except DuplicateJobError:
        return job_id
    except redis.exceptions.ConnectionError as exc:
        raise Unavailable(f"task queue at {host.settings.redis.url} cannot be reached: {exc}") from exc
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
    return handler.function(payload, TaskContext(host=host, job_id=job.id if job else None))


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
    return enqueue(host, name, {}, connection=connection,
                   job_id=f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)}-{period}")


def _enqueue_periodic_tasks(host: Host, periodic: dict[str, float], stop: threading.Event) -> None:
    """The loop of the worker's periodic thread. It only talks to redis, never to the directory: rq forks
    its work horses from this process, and a fork must not inherit a directory connection in use."""
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
        raise Unavailable(f"task queue at {host.settings.redis.url} cannot be reached: {exc}") from exc
    worker = rq.Worker(queues or queue_names(host), connection=connection)
    periodic = dict(_periodic.get(host, {}))
    stop = threading.Event()
    if burst:
        for name, seconds in periodic.items():
            enqueue_for_period(host, name, seconds, connection=connection)
    elif periodic:
        threading.Thread(target=_enqueue_periodic_tasks, args=(host, periodic, stop), name="didmos-periodic",
                         daemon=True).start()
    try:
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        stop.set()
