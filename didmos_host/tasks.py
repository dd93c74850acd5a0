"""Asynchronous tasks: enqueue by handler name, run in ``didmos worker`` on rq and redis.

Handlers come from the ``didmos_task_handlers`` hook. The rq job only carries the handler's name and a
JSON-safe payload, so a job enqueued by one version of a plugin runs with whatever handler the worker
has loaded; the ``didmos_tasks`` plugin builds requests, approvals and the outbox on top of this.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
import rq
from rq import Queue, Retry

from didmos_host.errors import DidmosError, Unavailable
from didmos_host.host import Host

log = logging.getLogger("didmos.tasks")
_worker_host: Host | None = None


@dataclass(frozen=True)
class TaskContext:
    """What a handler gets besides its payload: the host (settings, services) and the rq job id."""

    host: Host
    job_id: str | None


def connect(host: Host) -> redis.Redis:
    return redis.Redis.from_url(host.settings.redis.url, socket_connect_timeout=5, socket_timeout=30)


def enqueue(host: Host, name: str, payload: dict[str, Any] | None = None, *, connection: redis.Redis | None = None) -> str:
    """Queue task ``name`` with ``payload``; returns the job id.

    The payload must survive a JSON round trip unchanged, so a task never depends on pickled objects.
    """
    handler = host.task_handlers.get(name)
    if handler is None:
        known = ", ".join(sorted(host.task_handlers)) or "none"
        raise DidmosError(f"no task handler named {name!r}; registered: {known}", status=400)
    payload = payload or {}
    try:
        safe = json.loads(json.dumps(payload)) == payload
    except (TypeError, ValueError):
        safe = False
    if not safe:
        raise DidmosError(f"payload of task {name!r} is not JSON-safe (only dicts, lists, str, numbers, "
                          f"booleans and null survive the queue unchanged)", status=400)
    queue = Queue(handler.queue, connection=connection or connect(host))
    retry = Retry(max=handler.retries, interval=list(handler.retry_intervals)) if handler.retries else None
    try:
        job = queue.enqueue("didmos_host.tasks.run_task", name, payload, retry=retry, job_timeout=handler.timeout)
    except redis.exceptions.ConnectionError as exc:
        raise Unavailable(f"task queue at {host.settings.redis.url} cannot be reached: {exc}") from exc
    return job.id


def run_task(name: str, payload: dict[str, Any]) -> Any:
    """What the rq job runs inside the worker: find the handler by name and call it."""
    host = _worker_host
    if host is None:  # a job run outside `didmos worker` (rq's own CLI): load plugins now
        host = Host.create()
    handler = host.task_handlers[name]
    job = rq.get_current_job()
    return handler.function(payload, TaskContext(host=host, job_id=job.id if job else None))


def queue_names(host: Host) -> list[str]:
    names = {handler.queue for handler in host.task_handlers.values()} | {"default"}
    return sorted(names)


def run_worker(host: Host, *, burst: bool = False, queues: list[str] | None = None) -> bool:
    """Run an rq worker (with the scheduler, for delayed and retried jobs) on every handler's queue."""
    global _worker_host
    _worker_host = host
    connection = connect(host)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError as exc:
        raise Unavailable(f"task queue at {host.settings.redis.url} cannot be reached: {exc}") from exc
    worker = rq.Worker(queues or queue_names(host), connection=connection)
    return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
