"""The task outbox: no task a client was told about is lost, not when redis restarts, not when a worker dies.

A task is stored in the directory *before* it is queued (:meth:`Outbox.submit`), one entry per task
below ``tasks.base_dn``::

    didmosTaskId=<uuid>,ou=tasks,ou=system,dc=didmos,dc=de     objectClass didmosTask
        didmosTaskHandler   the handler's name            didmosTaskState     pending|queued|running|done|failed
        didmosTaskPayload   JSON                          didmosTaskAttempts  attempts started so far
        didmosTaskKey       idempotency key (optional)    didmosTaskActor     who submitted it
        didmosTaskStarted   last attempt's start          didmosTaskFinished  when it became done or failed
        didmosTaskError     last error                    didmosTaskResult    the handler's result, JSON

The rq job id is the task id, so a task is in redis at most once. Two writes per task reach the
directory in the common case: the entry when it is submitted, and its outcome (``done``, or a failed
attempt). What happens between them is kept in redis, where it costs no disk write:

``didmos:tasks:lease:<id>``     held by the worker running the task, renewed every third of
                               ``tasks.lease_seconds`` by one heartbeat thread per worker process;
                               expires when its worker dies
``didmos:tasks:attempts:<id>``  attempts started (INCR when a worker takes the lease, in the same
                               script); kept a day after the task is over

States (the entry's; the API shows ``running`` while a worker holds the lease, and the attempts started
when redis counts more than the entry):

``pending``  stored, and queued in redis unless redis was down; no attempt recorded yet. The dispatcher
             queues those redis does not hold.
``queued``   waiting for another attempt: after a failed one (rq runs the job again after the back-off),
             or delivered again by the dispatcher after a lost one (the lost attempt is recorded then).
``running``  written only by earlier versions (which claimed a task in the directory); still understood.
``done``     the handler returned. A task that is done never runs again: a delivery that is not the
             task's first attempt reads the entry before it runs anything, and returns when it is over.
``failed``   the last attempt failed and none is left (``TaskHandler.retries`` + 1 attempts in all);
             ``retry`` starts it over.

Every write of an outcome asserts (LDAP assertion control) that the task is still ``pending`` or
``queued``, so an outcome is recorded once and never overwrites another; the dispatcher's changes are
compare-and-swaps on the ``entryCSN`` it read.

The dispatcher (:meth:`Outbox.dispatch`), run every ``tasks.dispatch_seconds`` by each ``didmos
worker`` as the rq job ``didmos_tasks.dispatch``, queues ``pending`` tasks and delivers again every
open task that nobody holds the lease of and whose rq job is missing (redis lost it), finished or
failed without the entry saying so (rq's abandoned-job cleanup, a killed work horse) or started more
than a lease ago. That is how a worker that dies mid-task is noticed: its lease expires long before
rq's own cleanup of the started-job registry would see it (rq gives an execution at least a minute and
cleans up every ten). An attempt started that did not finish is then written to the entry (state
``queued``, the attempts counted and why), or the task is failed when it has no attempts left. When
redis lost its data, the entry's attempts are what counts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import ldap
import ldap.dn
import ldap.filter
import redis
import rq
from rq.exceptions import NoSuchJobError
from redis.commands.core import Script
from rq.job import Job, JobStatus

from didmos_host.errors import (
    AlreadyExists, DidmosError, NotFound, PermanentTaskError, PreconditionFailed, Unavailable,
)
from didmos_host.records import Actor, TaskHandler
from didmos_host.tasks import TaskContext, connect, enqueue, enqueue_for_period, validate, worker_host

log = logging.getLogger("didmos.tasks.outbox")

STATES = ("pending", "queued", "running", "done", "failed")
OPEN_STATES = ("pending", "queued", "running")
OPEN_CONDITION = "(&(objectClass=didmosTask)(|" + "".join(f"(didmosTaskState={state})" for state in OPEN_STATES) + "))"
#: What the rq job of an outbox task runs: :func:`run_task`, the execution wrapper.
RUNNER = "didmos_tasks.outbox.run_task"
DISPATCH_TASK = "didmos_tasks.dispatch"
#: Task ids made from an idempotency key: uuid5(this, handler name + key).
KEY_NAMESPACE = uuid.UUID("6f1c1d52-8a8e-4c5e-9d61-0c3d8f0b7a11")
MAX_KEY_LENGTH = 256
MAX_RESULT_BYTES = 65536
MAX_ERROR_CHARS = 4000
#: Attempts allowed when the handler is unknown here: TaskHandler's default retries.
DEFAULT_RETRIES = next(f.default for f in dataclasses.fields(TaskHandler) if f.name == "retries")
#: Attempts a task may lose to a dying worker (killed, out of memory) beyond its handler's retries:
#: the task runs again after a crash even when its handler allows no retry, and one that kills every
#: worker that runs it fails after this many more deliveries instead of being delivered for ever.
LOST_ATTEMPTS_ALLOWED = 2
#: rq job statuses that mean a delivery is still on its way to a worker.
WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED,
           JobStatus.READY_TO_ENQUEUE, JobStatus.RATE_LIMITED)
ATTRIBUTES = ["didmosTaskId", "didmosTaskHandler", "didmosTaskPayload", "didmosTaskState", "didmosTaskAttempts",
              "didmosTaskKey", "didmosTaskError", "didmosTaskResult", "didmosTaskActor", "didmosTaskStarted",
              "didmosTaskFinished", "createTimestamp", "entryCSN"]
LEASE_PREFIX = "didmos:tasks:lease:"
ATTEMPTS_PREFIX = "didmos:tasks:attempts:"
#: How long redis keeps a task's attempt count from an attempt's start: a delivery of the task in that
#: time after it is over reads the entry and finds it so (later ones come from the dispatcher, which
#: reads the entry first). A task runs at most its handler's timeout.
ATTEMPTS_KEEP_AFTER_SECONDS = 86400
#: ... and after a failed attempt, or a lost one the dispatcher found: until the next attempt, whatever
#: the back-off.
ATTEMPTS_KEEP_SECONDS = 30 * 86400
#: The entry is still open: what every write of an outcome asserts.
STILL_OPEN = "(|(didmosTaskState=pending)(didmosTaskState=queued))"
DISPATCHER_LOCK = "didmos:tasks:dispatcher"


# -- records -------------------------------------------------------------------------------------------

def _now() -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime())


def _iso(generalized: str | None) -> str | None:
    """``20240131120000Z`` (LDAP GeneralizedTime) -> ``2024-01-31T12:00:00Z``."""
    if not generalized:
        return None
    moment = datetime.strptime(generalized[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Task:
    """One entry of the outbox. ``version`` is its entryCSN, for compare-and-swap."""

    id: str
    name: str
    payload: dict[str, Any]
    state: str
    attempts: int
    key: str | None = None
    actor: str | None = None
    submitted: str | None = None
    started: str | None = None
    finished: str | None = None
    error: str | None = None
    result: Any = None
    version: str | None = None

    @classmethod
    def from_entry(cls, entry) -> Task:
        result = entry.first("didmosTaskResult")
        return cls(
            id=entry.first("didmosTaskId"), name=entry.first("didmosTaskHandler"),
            payload=json.loads(entry.first("didmosTaskPayload") or "{}"), state=entry.first("didmosTaskState"),
            attempts=int(entry.first("didmosTaskAttempts") or 0), key=entry.first("didmosTaskKey"),
            actor=entry.first("didmosTaskActor"), submitted=_iso(entry.first("createTimestamp")),
            started=_iso(entry.first("didmosTaskStarted")), finished=_iso(entry.first("didmosTaskFinished")),
            error=entry.first("didmosTaskError"), result=None if result is None else json.loads(result),
            version=entry.first("entryCSN"),
        )

    def as_dict(self) -> dict[str, Any]:
        """What the API and the CLI show (everything but the version)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "version"}


@dataclass
class DispatchReport:
    """What one run of the dispatcher did."""

    queued: int = 0       # pending tasks put into redis (redis did not hold them)
    redelivered: int = 0  # queued or running tasks whose delivery was lost, queued again
    failed: int = 0       # tasks whose worker died on their last attempt
    purged: int = 0       # entries of done tasks older than tasks.keep_done_seconds, deleted
    errors: int = 0       # tasks the dispatcher could not handle this time (logged)
    skipped: str | None = None  # why nothing was done: redis down, another dispatcher running

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the lease of a running task ----------------------------------------------------------------------------

# Scripts run by their SHA1 (EVALSHA; loaded into redis on first use), each in one step. Only the holder
# may renew or drop a lease: compare the token and act.
_RENEW = Script(None, b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
                      b"end return 0")
_RELEASE = Script(None, b"if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
                        b"return 0")
# Take the lease and count the attempt: 0 when another delivery holds the lease, else the number of this
# attempt. KEYS: lease, attempts; ARGV: token, lease ms, seconds to keep the count.
_CLAIM = Script(None, b"""
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
local attempt = redis.call('incr', KEYS[2])
redis.call('expire', KEYS[2], ARGV[3])
return attempt
""")
# Drop the lease when still ours, and keep the attempt count ARGV[2] seconds: an attempt failed and the
# task waits for the next one, however long its back-off.
_RELEASE_KEEPING = Script(None, b"""
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('expire', KEYS[2], ARGV[2])
return 1
""")


class Lease:
    """``didmos:tasks:lease:<task id>`` in redis: held by the worker running the task, expiring unless renewed.

    While it exists nobody delivers the task again; when its worker dies it expires after ``seconds``.
    """

    def __init__(self, connection: redis.Redis, task_id: str, seconds: float):
        self.connection = connection
        self.key = LEASE_PREFIX + task_id
        self.attempts_key = ATTEMPTS_PREFIX + task_id
        self.token = uuid.uuid4().hex
        self.milliseconds = max(int(seconds * 1000), 100)

    @staticmethod
    def held(connection: redis.Redis, task_id: str) -> bool:
        return bool(connection.exists(LEASE_PREFIX + task_id))

    def claim(self) -> int:
        """Take the lease and count an attempt: the attempt's number, or 0 when another delivery holds it.

        The count is kept :data:`ATTEMPTS_KEEP_AFTER_SECONDS`: enough for a task that ends now, and an
        attempt that fails keeps it longer (:meth:`release`), so a done task costs no second round trip.
        """
        return int(_CLAIM(keys=[self.key, self.attempts_key],
                          args=[self.token, self.milliseconds, ATTEMPTS_KEEP_AFTER_SECONDS], client=self.connection))

    def renew(self) -> bool:
        return bool(_RENEW(keys=[self.key], args=[self.token, self.milliseconds], client=self.connection))

    def release(self, *, keep_count: bool = False) -> None:
        """Drop the lease; ``keep_count``: an attempt failed and another may follow, however much later:
        the attempt count is kept :data:`ATTEMPTS_KEEP_SECONDS`."""
        try:
            if keep_count:
                _RELEASE_KEEPING(keys=[self.key, self.attempts_key], args=[self.token, ATTEMPTS_KEEP_SECONDS],
                                 client=self.connection)
            else:
                _RELEASE(keys=[self.key], args=[self.token], client=self.connection)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("cannot release the lease %s: %s", self.key, exc)

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Have the process's heartbeat renew the lease while the body runs."""
        _heartbeat.add(self)
        try:
            yield
        finally:
            _heartbeat.discard(self)


class _Heartbeat:
    """One thread per process renews every lease held there, each a third of its time after it was taken
    or last renewed (not a thread per task)."""

    def __init__(self):
        self._due: dict[str, tuple[float, Lease]] = {}  # lease key -> (when to renew it, the lease)
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._until = 0.0  # when the thread wakes up next by itself

    def add(self, lease: Lease) -> None:
        with self._wake:
            due = time.monotonic() + lease.milliseconds / 3000
            self._due[lease.key] = (due, lease)
            # A work horse is a fork: the parent's thread is not there.
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._until = 0.0
                self._thread = threading.Thread(target=self._run, name="didmos-lease-heartbeat", daemon=True)
                self._thread.start()
            elif due < self._until:  # (not per task: leases of one process are as long, so rarely)
                self._wake.notify()

    def discard(self, lease: Lease) -> None:
        with self._wake:
            if self._due.get(lease.key, (0, None))[1] is lease:
                del self._due[lease.key]

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [lease for when, lease in self._due.values() if when <= now]
                if not due:
                    self._until = min((when for when, _ in self._due.values()), default=now + 60)
                    self._wake.wait(self._until - now)
                    continue
                for lease in due:
                    self._due[lease.key] = (now + lease.milliseconds / 3000, lease)
            for lease in due:  # outside the lock: a slow redis must not hold up the tasks taking leases
                try:
                    if not lease.renew() and self._due.get(lease.key, (0, None))[1] is lease:
                        log.warning("lease %s was lost while its task ran; the task may be delivered again",
                                    lease.key)
                except redis.RedisError as exc:
                    log.warning("cannot renew the lease %s: %s", lease.key, exc)


_heartbeat = _Heartbeat()


# -- the outbox ------------------------------------------------------------------------------------------------


def _interval(handler: TaskHandler | None, attempt: int) -> int:
    """Seconds to wait after failed attempt ``attempt`` (1-based): the handler's intervals, the last repeated."""
    intervals = tuple(handler.retry_intervals) if handler is not None else ()
    return int(intervals[min(attempt, len(intervals)) - 1]) if intervals else 0


def _describe(exc: BaseException) -> str:
    message = exc.message if isinstance(exc, DidmosError) else str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


def _result_json(result: Any) -> str | None:
    """The result as JSON when it survives a round trip and is small; otherwise it is not kept."""
    try:
        text = json.dumps(result)
        if json.loads(text) != result:
            return None
    except (TypeError, ValueError):
        return None
    return text if len(text.encode()) <= MAX_RESULT_BYTES else None


class Outbox:
    """The outbox of one host: submit, look up, list and retry tasks, dispatch, and run them (in a worker)."""

    def __init__(self, host):
        self.host = host
        cfg = host.settings.tasks
        self.base_dn = cfg.base_dn
        self.lease_seconds = float(cfg.lease_seconds)
        self.dispatch_seconds = float(cfg.dispatch_seconds)
        self.keep_done_seconds = int(cfg.keep_done_seconds)
        self.list_limit = int(cfg.list_limit)
        self._redis: redis.Redis | None = None
        self._kicked: int | None = None  # the dispatcher period this process last queued the dispatcher in

    @property
    def directory(self):
        return self.host.service("directory")

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = connect(self.host)
        return self._redis

    def dn(self, task_id: str) -> str:
        return f"didmosTaskId={ldap.dn.escape_dn_chars(task_id)},{self.base_dn}"

    def _handler(self, name: str) -> TaskHandler | None:
        return self.host.task_handlers.get(name)

    def _retries(self, name: str) -> int:
        handler = self._handler(name)
        return handler.retries if handler is not None else DEFAULT_RETRIES

    def _deliveries(self, name: str) -> int:
        """How many attempts a task may start in all: its retries + 1, and
        at least :data:`LOST_ATTEMPTS_ALLOWED` + 1, so that a worker killed mid-task does not use up a
        handler's only attempt (a handler's own failures still count against its retries alone)."""
        return max(self._retries(name), LOST_ATTEMPTS_ALLOWED) + 1

    # -- reading ---------------------------------------------------------------------------------------

    def find(self, task_id: str, *, live: bool = True) -> Task | None:
        """The task, or ``None`` when there is none with that id (or the id is no UUID).

        ``live``: as :meth:`live` shows it (running while a worker holds its lease); otherwise the entry.
        """
        try:
            task_id = str(uuid.UUID(task_id))
        except (ValueError, TypeError, AttributeError):
            return None
        # A plain read, never the entry cache (ldap.cache.*): a compare-and-swap needs the current entryCSN.
        found = self.directory.search(self.dn(task_id), "(objectClass=didmosTask)", ldap.SCOPE_BASE, ATTRIBUTES)
        if not found:
            return None
        task = Task.from_entry(found[0])
        return self.live([task])[0] if live else task

    def live(self, tasks: list[Task]) -> list[Task]:
        """The open ones of ``tasks`` as redis knows them: ``running`` while a worker holds the lease, and
        the attempts started when that is more than the entry records. As they are when redis cannot be
        reached."""
        open_tasks = [task for task in tasks if task.state in OPEN_STATES]
        if not open_tasks:
            return tasks
        try:
            with self.redis.pipeline(transaction=False) as pipeline:
                for task in open_tasks:
                    pipeline.exists(LEASE_PREFIX + task.id)
                    pipeline.get(ATTEMPTS_PREFIX + task.id)
                answers = pipeline.execute()
        except redis.RedisError as exc:
            log.info("task states without redis (%s): as the directory has them", exc)
            return tasks
        now = {}
        for index, task in enumerate(open_tasks):
            held, started = answers[2 * index], int(answers[2 * index + 1] or 0)
            now[task.id] = dataclasses.replace(task, state="running" if held else task.state,
                                               attempts=max(task.attempts, started))
        return [now.get(task.id, task) for task in tasks]

    def get(self, task_id: str) -> Task:
        task = self.find(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        return task

    def list(self, state: str | None = None, limit: int | None = None) -> list[Task]:
        """Tasks (in ``state``), oldest first, at most ``limit`` (``tasks.list_limit``)."""
        if state is not None and state not in STATES:
            raise DidmosError(f"unknown task state {state!r}; states are {', '.join(STATES)}", status=400)
        condition = "(objectClass=didmosTask)"
        if state in OPEN_STATES:  # which open task is running, redis knows: read them all, then look
            condition = OPEN_CONDITION
        elif state is not None:
            condition = ldap.filter.filter_format("(&(objectClass=didmosTask)(didmosTaskState=%s))", [state])
        limit = min(limit or self.list_limit, self.list_limit)
        found = []
        entries = self.directory.iter_search(self.base_dn, condition, ldap.SCOPE_ONELEVEL, ATTRIBUTES)
        try:
            for entry in entries:
                found.append(Task.from_entry(entry))
                if state not in OPEN_STATES and len(found) >= limit:
                    break
        finally:
            entries.close()  # hands its connection back now, not when the generator is collected
        found = self.live(found)
        if state is not None:
            found = [task for task in found if task.state == state]
        return sorted(found, key=lambda task: (task.submitted or "", task.id))[:limit]

    # -- writing ---------------------------------------------------------------------------------------

    def _change(self, task: Task, **values: Any) -> Task | None:
        """Set ``values`` (attribute suffix after ``didmosTask`` -> value; ``None`` deletes) if the entry
        is still at ``task.version``. Returns the task as changed, or ``None`` when it changed meanwhile."""
        changes = []
        for name, value in values.items():
            attr = f"didmosTask{name}"
            changes.append((ldap.MOD_REPLACE, attr, None if value is None else [value]))
        condition = ldap.filter.filter_format("(entryCSN=%s)", [task.version])
        try:
            entry = self.directory.modify(self.dn(task.id), changes, if_match=condition, read_back=ATTRIBUTES)
        except (PreconditionFailed, NotFound):
            return None
        return Task.from_entry(entry) if entry is not None else self.find(task.id, live=False)

    def submit(self, name: str, payload: dict[str, Any] | None = None, *, key: str | None = None,
               actor: Actor | str | None = None) -> Task:
        """Store task ``name`` in the directory, then try to queue it; the task as stored (``pending``).

        When redis cannot be reached the task is not queued and this still succeeds: the dispatcher
        queues it once redis is back. With ``key``, one task per handler and key: submitting again
        returns the first (409 when the payload differs).

        This is the task's only directory write until its outcome: the entry stays ``pending`` once
        queued (running it is counted in redis, and the dispatcher queues a pending task only when redis
        does not hold its job), and only ``createTimestamp`` and ``entryCSN`` are read back.
        """
        payload = {} if payload is None else payload
        validate(self.host, name, payload)
        if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH):
            raise DidmosError(f"an idempotency key is a non-empty string of at most {MAX_KEY_LENGTH} characters, "
                              f"got {key!r}", status=400)
        task_id = str(uuid.uuid5(KEY_NAMESPACE, f"{name}\n{key}") if key is not None else uuid.uuid4())
        attrs: dict[str, list[Any]] = {
            "objectClass": ["didmosTask"], "didmosTaskId": [task_id], "didmosTaskHandler": [name],
            "didmosTaskPayload": [json.dumps(payload, separators=(",", ":"))], "didmosTaskState": ["pending"],
            "didmosTaskAttempts": ["0"]}
        if key is not None:
            attrs["didmosTaskKey"] = [key]
        actor_dn = actor.dn if isinstance(actor, Actor) else actor
        if actor_dn:
            attrs["didmosTaskActor"] = [actor_dn]
        try:
            entry = self.directory.add(self.dn(task_id), attrs, read_back=["createTimestamp", "entryCSN"])
        except NotFound:
            raise DidmosError(f"the outbox's container {self.base_dn} (tasks.base_dn) does not exist; "
                              f"`didmos directory init` creates it", status=503) from None
        except AlreadyExists:
            if key is None:
                raise
            existing = self.get(task_id)
            if existing.payload != payload:
                raise AlreadyExists(f"idempotency key {key!r} belongs to task {task_id} of {name!r}, submitted "
                                    f"with another payload; use a new key for a new task") from None
            return existing
        if entry is None:
            task = self.get(task_id)
        else:
            task = Task(id=task_id, name=name, payload=payload, state="pending", attempts=0, key=key,
                        actor=actor_dn or None, submitted=_iso(entry.first("createTimestamp")),
                        version=entry.first("entryCSN"))
        if self._queue(task, fresh=True):
            self._kick()
        return task

    def retry(self, task_id: str) -> Task:
        """Start a failed task over, with a fresh set of attempts (409 unless it is failed)."""
        task = self.find(task_id, live=False)
        if task is None:
            raise NotFound(f"no task with id {task_id!r}")
        if task.state != "failed":
            raise DidmosError(f"task {task.id} is {task.state}; only failed tasks can be retried", status=409)
        try:  # the attempts start over: first forget those redis counted
            self.redis.delete(ATTEMPTS_PREFIX + task.id)
        except redis.RedisError as exc:
            raise Unavailable(f"task {task.id} cannot be retried while redis cannot be reached ({exc}); "
                              f"nothing was changed") from None
        changed = self._change(task, State="pending", Attempts="0", Finished=None)
        if changed is None:
            raise DidmosError(f"task {task.id} changed while it was being retried; look at it again", status=409)
        self._queue(changed, replace=True)  # redis down: the dispatcher queues it later
        return changed

    # -- queueing --------------------------------------------------------------------------------------

    def _job(self, task_id: str) -> Job | None:
        try:
            return Job.fetch(task_id, connection=self.redis)
        except NoSuchJobError:
            return None

    def _queue(self, task: Task, *, replace: bool = False, fresh: bool = False) -> bool:
        """Put the task's job into redis (its id is the task's). False when redis cannot be reached.

        A job of the same id that is over (finished, failed) is deleted first, and with ``replace`` any
        job of that id: its delivery was lost. ``fresh``: the task was just added, so redis cannot hold a
        job of its id yet (nothing to look up).
        """
        try:
            job = None if fresh else self._job(task.id)
            if job is not None and (replace or job.get_status(refresh=False) not in (*WAITING, JobStatus.STARTED)):
                job.delete()
            enqueue(self.host, task.name, task.payload, connection=self.redis, job_id=task.id, runner=RUNNER)
        except (Unavailable, redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("task %s stays pending: %s", task.id, getattr(exc, "message", exc))
            return False
        return True

    def _kick(self) -> None:
        """Have a worker run the dispatcher soon (once per period, however many submits)."""
        period = int(time.time() // self.dispatch_seconds)
        if period == self._kicked:
            return  # this process asked already in this period: redis would refuse the duplicate anyway
        try:
            enqueue_for_period(self.host, DISPATCH_TASK, self.dispatch_seconds, connection=self.redis)
            self._kicked = period
        except (DidmosError, redis.RedisError) as exc:
            log.info("dispatcher not queued: %s", exc)

    # -- the dispatcher ----------------------------------------------------------------------------------

    def dispatch(self) -> DispatchReport:
        """Queue pending tasks, deliver again the tasks whose delivery was lost, delete old done ones.

        One dispatcher at a time (a lock in redis); without redis there is nothing it could do.
        """
        report = DispatchReport()
        token = uuid.uuid4().hex
        try:
            # Expires by itself should this dispatcher die; one that outlives it only does some work twice.
            locked = self.redis.set(DISPATCHER_LOCK, token, nx=True, ex=max(30, int(self.dispatch_seconds * 3)))
        except redis.RedisError as exc:
            report.skipped = f"redis cannot be reached: {exc}"
            return report
        if not locked:
            report.skipped = "another dispatcher is running"
            return report
        try:
            for entry in self.directory.iter_search(self.base_dn, OPEN_CONDITION, ldap.SCOPE_ONELEVEL, ATTRIBUTES):
                task = Task.from_entry(entry)
                try:
                    self._dispatch_one(task, report)
                except (redis.ConnectionError, redis.TimeoutError, Unavailable):
                    raise
                except Exception:  # one broken task must not keep the others from being delivered
                    log.exception("dispatcher: cannot handle task %s", task.id)
                    report.errors += 1
            self._purge(report)
        finally:
            try:
                _RELEASE(keys=[DISPATCHER_LOCK], args=[token], client=self.redis)
            except redis.RedisError:
                pass
        if report.queued or report.redelivered or report.failed:
            log.info("dispatcher: %s", report.as_dict())
        return report

    def _dispatch_one(self, task: Task, report: DispatchReport) -> None:
        if Lease.held(self.redis, task.id):
            return  # a live worker runs it
        job = self._job(task.id)
        status = job.get_status(refresh=False) if job is not None else None
        if status in WAITING:
            return  # on its way to a worker (a retry after its back-off, too)
        if status == JobStatus.STARTED and job.started_at is not None:
            began = job.started_at.replace(tzinfo=timezone.utc) if job.started_at.tzinfo is None else job.started_at
            if (datetime.now(timezone.utc) - began).total_seconds() < self.lease_seconds:
                return  # a worker just took it and is about to take the lease
        # Read after the lease and the job: an attempt that took the lease since is counted here.
        counted = self.redis.get(ATTEMPTS_PREFIX + task.id)
        started = max(task.attempts, int(counted or 0))
        if task.state != "running" and started == task.attempts:
            # No attempt was lost: not in redis (it was down at submit, or lost the job), a delivery
            # that ended before it took the lease, or a retry whose job redis lost. Queue it again, after
            # giving redis back the attempts the entry counts when redis forgot them.
            if counted is None and task.attempts and not self._count(task.id, task.attempts, only_new=True):
                return  # an attempt was counted just now: it is being run
            if self._queue(task, replace=job is not None):
                if task.state == "pending":
                    report.queued += 1
                else:
                    report.redelivered += 1
            return
        # Lost: a worker took the task and stopped without an outcome (killed: no lease any more), or
        # rq gave up on its job (abandoned).
        why = f"attempt {started} did not finish: its worker stopped without a result (killed?)"
        if started >= self._deliveries(task.name):
            if self._change(task, State="failed", Attempts=str(started), Error=f"{why}; no attempts left",
                            Finished=_now()):
                report.failed += 1
            return
        changed = self._change(task, State="queued", Attempts=str(started), Error=why)
        if changed is None:
            return  # someone else acted on it meanwhile
        log.warning("task %s delivered again: %s", task.id, why)
        self._count(task.id, started)  # the next attempt is the one after (redis may not have counted this one)
        if self._queue(changed, replace=True):
            report.redelivered += 1

    def _count(self, task_id: str, attempts: int, *, only_new: bool = False) -> bool:
        """Set the attempts redis counts for the task (``only_new``: unless it counts some); False when not set."""
        return bool(self.redis.set(ATTEMPTS_PREFIX + task_id, attempts, nx=only_new, ex=ATTEMPTS_KEEP_SECONDS))

    def _purge(self, report: DispatchReport) -> None:
        if not self.keep_done_seconds:
            return
        cutoff = time.strftime("%Y%m%d%H%M%SZ", time.gmtime(time.time() - self.keep_done_seconds))
        condition = ldap.filter.filter_format(
            "(&(objectClass=didmosTask)(didmosTaskState=done)(didmosTaskFinished<=%s))", [cutoff])
        for entry in list(self.directory.iter_search(self.base_dn, condition, ldap.SCOPE_ONELEVEL, ["1.1"])):
            try:
                self.directory.delete(entry.dn)
                report.purged += 1
            except NotFound:
                pass

    # -- running (inside the worker) ---------------------------------------------------------------------

    def execute(self, job: Job) -> Any:
        """Run the task of ``job`` (the job id is the task id) at most once in effect.

        Takes the lease and counts the attempt in redis (another live delivery holds it: return); a
        delivery that is not the task's first attempt reads the entry first (over already: return; no
        attempts left: fail it); runs the handler; and writes the outcome, asserting the entry is still
        open. A failed attempt with attempts left is scheduled again after the handler's back-off
        through rq's retry; with none left the task is failed and rq does not retry it.
        """
        # The job's own connection: the work horse has it open already.
        lease = Lease(job.connection, job.id, self.lease_seconds)
        attempt = lease.claim()
        if not attempt:
            log.info("task %s is being run by another worker; this delivery does nothing", job.id)
            return None
        name, payload = job.args[0], job.args[1]  # what the entry was queued with (neither changes)
        task = Task(id=job.id, name=name, payload=payload, state="running", attempts=attempt, started=_now())
        if attempt > 1:
            try:
                found = self._before_another_attempt(task)
            except BaseException:
                lease.release(keep_count=True)
                raise
            if found is not None:
                return found.result  # the lease expires by itself: the task is over
        handler = self._handler(task.name)
        try:
            with lease.kept():
                if handler is None:
                    raise DidmosError(f"this worker has no task handler named {task.name!r}; is the plugin that "
                                      f"registers it installed and enabled where `didmos worker` runs?")
                result = handler.function(task.payload, TaskContext(host=self.host, job_id=task.id))
        except Exception as exc:
            try:
                self._attempt_failed(task, handler, exc, job)
            finally:
                lease.release(keep_count=True)  # the next attempt may come at once
            raise
        except BaseException:  # the job's timeout (rq's alarm), the worker stopping: an attempt lost
            lease.release(keep_count=True)
            raise
        # The lease is not dropped: once the outcome is written nothing runs the task again, and it
        # expires by itself (one redis round trip less per task).
        try:
            recorded = self._record(task, State="done", Finished=_now(), Result=_result_json(result), Error=None)
        except BaseException:  # the directory is down: rq's retry or the dispatcher delivers it again
            lease.release(keep_count=True)
            raise
        if not recorded:
            log.warning("task %s was over before this attempt recorded its outcome (delivered again "
                        "meanwhile, or its entry was deleted); its entry is left as it is", task.id)
        return result

    def _before_another_attempt(self, task: Task) -> Task | None:
        """For a delivery that is not the task's first attempt: the task as it is when there is nothing to
        run (done, failed, no entry, or failed now for want of attempts); ``None``: run it."""
        found = self.find(task.id, live=False)
        if found is None:
            log.warning("task %s has no entry in the outbox (deleted?); nothing to run", task.id)
            return Task(id=task.id, name=task.name, payload=task.payload, state="failed", attempts=task.attempts)
        if found.state in ("done", "failed"):
            log.info("task %s is %s already; this delivery does nothing", task.id, found.state)
            return found
        if task.attempts > self._deliveries(task.name):
            why = found.error or "its attempts did not finish"
            self._record(task, State="failed", Error=f"{why}; no attempts left", Finished=_now())
            log.warning("task %s failed: attempt %d would be one too many (%s)", task.id, task.attempts, why)
            return found
        return None

    def _record(self, task: Task, **values: Any) -> bool:
        """Write the outcome of ``task``'s attempt (attempts counted, its start, ``values``) if the entry is
        still open; False when it is not (another delivery's outcome, or no entry)."""
        changes = [(ldap.MOD_REPLACE, "didmosTaskAttempts", [str(task.attempts)]),
                   (ldap.MOD_REPLACE, "didmosTaskStarted", [task.started])]
        for name, value in values.items():
            changes.append((ldap.MOD_REPLACE, f"didmosTask{name}", None if value is None else [value]))
        try:
            self.directory.modify(self.dn(task.id), changes, if_match=STILL_OPEN)
        except (PreconditionFailed, NotFound):
            return False
        return True

    def _attempt_failed(self, task: Task, handler: TaskHandler | None, exc: Exception, job: Job) -> None:
        """Record a failed attempt; tell rq whether (and after how long) to run the job again."""
        error = _describe(exc)
        permanent = isinstance(exc, PermanentTaskError)
        if permanent or task.attempts > self._retries(task.name):
            job.retries_left = 0
            self._record(task, State="failed", Error=error, Finished=_now())
            log.warning("task %s failed for good after %d attempts%s: %s", task.id, task.attempts,
                        " (the handler says retrying cannot help)" if permanent else "", error)
            return
        # The entry and the count in redis decide, not rq's own count (a delivery after a crash starts
        # rq's count afresh).
        job.retries_left = 1
        job.retry_intervals = [_interval(handler, task.attempts)]
        if not self._record(task, State="queued", Error=error):
            job.retries_left = 0  # over meanwhile (delivered again and done): nothing to retry


# -- module-level entry points ------------------------------------------------------------------------------


def outbox(host) -> Outbox:
    """The outbox service of ``host``."""
    return host.service("outbox")


def submit(host, name: str, payload: dict[str, Any] | None = None, *, key: str | None = None,
           actor: Actor | str | None = None) -> str:
    """Store task ``name`` durably, then try to queue it; returns the task id (see :meth:`Outbox.submit`)."""
    return outbox(host).submit(name, payload, key=key, actor=actor).id


def dispatch_pending(host) -> DispatchReport:
    """Run the dispatcher once (see :meth:`Outbox.dispatch`)."""
    return outbox(host).dispatch()


def run_task(name: str, payload: dict[str, Any]) -> Any:
    """What the rq job of an outbox task runs in the worker: the execution wrapper."""
    job = rq.get_current_job()
    if job is None:
        raise DidmosError("run_task runs inside an rq job of the outbox, whose id is the task id")
    return outbox(worker_host()).execute(job)
