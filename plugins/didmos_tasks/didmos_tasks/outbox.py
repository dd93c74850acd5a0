"""The task outbox: no task a client was told about is lost, not when redis restarts, not when a worker dies.

A task is stored in the directory *before* it is queued (:meth:`Outbox.submit`), one entry per task
below ``tasks.base_dn``::

    didmosTaskId=<uuid>,ou=tasks,ou=system,dc=didmos,dc=de     objectClass didmosTask
        didmosTaskHandler   the handler's name            didmosTaskState     pending|queued|running|done|failed
        didmosTaskPayload   JSON                          didmosTaskAttempts  attempts started so far
        didmosTaskKey       idempotency key (optional)    didmosTaskActor     who submitted it
        didmosTaskStarted   last attempt's start          didmosTaskFinished  when it became done or failed
        didmosTaskError     last error                    didmosTaskResult    the handler's result, JSON

The rq job id is the task id, so a task is in redis at most once. States:

``pending``  stored, and queued in redis unless redis was down; no attempt started yet. The dispatcher
             queues those redis does not hold.
``queued``   waiting for another attempt: after a failed one (rq runs the job again after the back-off),
             or delivered again by the dispatcher after a lost one.
``running``  a worker claimed it: it holds the task's *lease* in redis and renews it every third of
             ``tasks.lease_seconds`` while the handler runs.
``done``     the handler returned. A task that is done never runs again: a delivery that finds it done
             (a job redelivered after a crash) returns at once.
``failed``   the last attempt failed and none is left (``TaskHandler.retries`` + 1 attempts in all);
             ``retry`` starts it over.

Every change of state is conditional (LDAP assertion control): a worker claims a task in one modify
that asserts it is ``pending`` or ``queued`` with attempts left (so of two claimers one wins), and
every other change is a compare-and-swap on the ``entryCSN`` read, so the submitter, workers and
dispatchers never overwrite each other's decisions.

The dispatcher (:meth:`Outbox.dispatch`), run every ``tasks.dispatch_seconds`` by each ``didmos
worker`` as the rq job ``didmos_tasks.dispatch``, queues ``pending`` tasks and delivers again every
``queued`` or ``running`` task that nobody holds the lease of and whose rq job is missing (redis lost
it), finished or failed without the entry saying so (rq's abandoned-job cleanup, a killed work horse)
or started more than a lease ago. That is how a worker that dies mid-task is noticed: its lease
expires long before rq's own cleanup of the started-job registry would see it (rq gives an execution
at least a minute and cleans up every ten).
"""

from __future__ import annotations

import dataclasses
import json
import logging
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
from rq.job import Job, JobStatus

from didmos_host.errors import (
    AlreadyExists, DidmosError, NotFound, PermanentTaskError, PreconditionFailed, Unavailable,
)
from didmos_host.records import Actor, TaskHandler
from didmos_host.tasks import TaskContext, connect, enqueue, enqueue_for_period, validate, worker_host

log = logging.getLogger("didmos.tasks.outbox")

STATES = ("pending", "queued", "running", "done", "failed")
OPEN_STATES = ("pending", "queued", "running")
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
#: What a worker's claim reads back (Post-Read): the new version and attempt count, nothing to decode at length.
CLAIM_READ_BACK = ["entryCSN", "didmosTaskAttempts"]
LEASE_PREFIX = "didmos:tasks:lease:"
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

# Only the holder may renew or drop a lease: compare the token and act in one step.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Lease:
    """``didmos:tasks:lease:<task id>`` in redis: held by the worker running the task, expiring unless renewed.

    While it exists nobody delivers the task again; when its worker dies it expires after ``seconds``.
    """

    def __init__(self, connection: redis.Redis, task_id: str, seconds: float):
        self.connection = connection
        self.key = LEASE_PREFIX + task_id
        self.token = uuid.uuid4().hex
        self.milliseconds = max(int(seconds * 1000), 100)

    @staticmethod
    def held(connection: redis.Redis, task_id: str) -> bool:
        return bool(connection.exists(LEASE_PREFIX + task_id))

    def acquire(self) -> bool:
        return bool(self.connection.set(self.key, self.token, nx=True, px=self.milliseconds))

    def renew(self) -> bool:
        return bool(self.connection.eval(_RENEW, 1, self.key, self.token, self.milliseconds))

    def release(self) -> None:
        try:
            self.connection.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as exc:  # it expires by itself
            log.warning("cannot release the lease %s: %s", self.key, exc)

    @contextmanager
    def kept(self) -> Iterator[None]:
        """Renew the lease every third of its time from a thread while the body runs."""
        stop = threading.Event()

        def renew():
            while not stop.wait(self.milliseconds / 3000):
                try:
                    if not self.renew():
                        log.warning("lease %s was lost while its task ran; the task may be delivered again",
                                    self.key)
                except redis.RedisError as exc:
                    log.warning("cannot renew the lease %s: %s", self.key, exc)

        thread = threading.Thread(target=renew, name=f"lease-{self.key}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)


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
        """How many attempts a task may start in all (the limit its claim asserts): its retries + 1, and
        at least :data:`LOST_ATTEMPTS_ALLOWED` + 1, so that a worker killed mid-task does not use up a
        handler's only attempt (a handler's own failures still count against its retries alone)."""
        return max(self._retries(name), LOST_ATTEMPTS_ALLOWED) + 1

    # -- reading ---------------------------------------------------------------------------------------

    def find(self, task_id: str) -> Task | None:
        """The task, or ``None`` when there is none with that id (or the id is no UUID)."""
        try:
            task_id = str(uuid.UUID(task_id))
        except (ValueError, TypeError, AttributeError):
            return None
        # A plain read, never the entry cache (ldap.cache.*): a compare-and-swap needs the current entryCSN.
        found = self.directory.search(self.dn(task_id), "(objectClass=didmosTask)", ldap.SCOPE_BASE, ATTRIBUTES)
        return Task.from_entry(found[0]) if found else None

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
        if state is not None:
            condition = ldap.filter.filter_format("(&(objectClass=didmosTask)(didmosTaskState=%s))", [state])
        limit = min(limit or self.list_limit, self.list_limit)
        found = []
        entries = self.directory.iter_search(self.base_dn, condition, ldap.SCOPE_ONELEVEL, ATTRIBUTES)
        try:
            for entry in entries:
                found.append(Task.from_entry(entry))
                if len(found) >= limit:
                    break
        finally:
            entries.close()  # hands its connection back now, not when the generator is collected
        return sorted(found, key=lambda task: (task.submitted or "", task.id))

    # -- writing ---------------------------------------------------------------------------------------

    def _change(self, task: Task, *, read: bool = True, **values: Any) -> Task | None:
        """Set ``values`` (attribute suffix after ``didmosTask`` -> value; ``None`` deletes) if the entry
        is still at ``task.version``. Returns the task as changed, or ``None`` when it changed meanwhile.

        With ``read=False`` nothing is read back (no Post-Read to decode): the worker's last write of an
        attempt, after which it changes nothing; the ``task`` given is returned on success.
        """
        changes = []
        for name, value in values.items():
            attr = f"didmosTask{name}"
            changes.append((ldap.MOD_REPLACE, attr, None if value is None else [value]))
        condition = ldap.filter.filter_format("(entryCSN=%s)", [task.version])
        try:
            entry = self.directory.modify(self.dn(task.id), changes, if_match=condition,
                                          read_back=ATTRIBUTES if read else None)
        except (PreconditionFailed, NotFound):
            return None
        if not read:
            return task
        return Task.from_entry(entry) if entry is not None else self.find(task.id)

    def submit(self, name: str, payload: dict[str, Any] | None = None, *, key: str | None = None,
               actor: Actor | str | None = None) -> Task:
        """Store task ``name`` in the directory, then try to queue it; the task as stored (``pending``).

        When redis cannot be reached the task is not queued and this still succeeds: the dispatcher
        queues it once redis is back. With ``key``, one task per handler and key: submitting again
        returns the first (409 when the payload differs).

        Two LDAP-free steps keep this cheap: the entry stays ``pending`` once queued (a worker claims a
        ``pending`` task as it claims a ``queued`` one, and the dispatcher queues a pending task only
        when redis does not hold its job), and only ``createTimestamp`` and ``entryCSN`` are read back.
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
        task = self.get(task_id)
        if task.state != "failed":
            raise DidmosError(f"task {task.id} is {task.state}; only failed tasks can be retried", status=409)
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
            condition = "(&(objectClass=didmosTask)(|" + "".join(
                f"(didmosTaskState={state})" for state in OPEN_STATES) + "))"
            for entry in self.directory.iter_search(self.base_dn, condition, ldap.SCOPE_ONELEVEL, ATTRIBUTES):
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
                self.redis.eval(_RELEASE, 1, DISPATCHER_LOCK, token)
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
            started = job.started_at.replace(tzinfo=timezone.utc) if job.started_at.tzinfo is None else job.started_at
            if (datetime.now(timezone.utc) - started).total_seconds() < self.lease_seconds:
                return  # a worker just took it and is about to take the lease
        if task.state == "pending":
            # Not in redis (it was down at submit, or lost the job), or a delivery that ended before its
            # claim: queue it. No attempt was started, so none is counted and the state stays.
            if self._queue(task, replace=job is not None):
                report.queued += 1
            return
        # Lost: the worker died (no lease), redis forgot the job, or rq gave up on it (abandoned).
        if task.state == "running":
            why = f"attempt {task.attempts} did not finish: its worker stopped without a result (killed?)"
        else:
            why = f"its job was {status.value if status else 'lost'} in redis without the task being run"
        if task.attempts >= self._deliveries(task.name):
            if self._change(task, State="failed", Error=f"{why}; no attempts left", Finished=_now()):
                report.failed += 1
            return
        changed = self._change(task, State="queued", **({"Error": why} if task.state == "running" else {}))
        if changed is None:
            return  # someone else acted on it meanwhile
        log.warning("task %s delivered again: %s", task.id, why)
        if self._queue(changed, replace=True):
            report.redelivered += 1

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

        Takes the lease (another live delivery holds it: return), claims the entry (done or failed
        already: return), runs the handler, and records the outcome. A failed attempt with attempts left
        is scheduled again after the handler's back-off through rq's retry; with none left the task is
        failed and rq does not retry it.
        """
        # The job's own connection: the work horse has it open already.
        lease = Lease(job.connection, job.id, self.lease_seconds)
        if not lease.acquire():
            log.info("task %s is being run by another worker; this delivery does nothing", job.id)
            return None
        try:
            task = self._claim(job)
            if task is None or task.state != "running":
                return task.result if task is not None else None
            handler = self._handler(task.name)
            try:
                with lease.kept():
                    if handler is None:
                        raise DidmosError(f"this worker has no task handler named {task.name!r}; is the plugin that "
                                          f"registers it installed and enabled where `didmos worker` runs?")
                    result = handler.function(task.payload, TaskContext(host=self.host, job_id=task.id))
            except Exception as exc:
                self._attempt_failed(task, handler, exc, job)
                raise
            if self._change(task, read=False, State="done", Finished=_now(), Result=_result_json(result),
                            Error=None) is None:
                log.warning("task %s was delivered again while this attempt ran; its entry is left to that delivery",
                            task.id)
            return result
        finally:
            lease.release()

    def _claim(self, job: Job) -> Task | None:
        """The task marked running with one more attempt; or, when there is nothing to run, the task as it
        is (done, failed) or ``None`` (no entry).

        One modify does it in the common case: state ``running``, ``MOD_INCREMENT`` of the attempts
        (RFC 4525) and the start time, asserting that the task is ``pending`` or ``queued`` with
        attempts left, the new attempt count and ``entryCSN`` read back (Post-Read). Of two claimers
        one wins: the other's assertion fails on ``running``. The job carries the handler name and the
        payload the entry was queued with (neither changes), so nothing else is read. A failed
        assertion (done, failed, no attempts left, or ``running`` after a worker died: this delivery
        holds the lease, so nobody else runs it) takes the slow way: read, decide, compare-and-swap.
        """
        try:
            claimed = self._claim_at_once(job.id, job.args[0], job.args[1])
        except NotFound:
            log.warning("task %s has no entry in the outbox (deleted?); nothing to run", job.id)
            return None
        return claimed if claimed is not None else self._claim_slowly(job.id)

    def _claim_at_once(self, task_id: str, name: str, payload: dict[str, Any]) -> Task | None:
        """The one-modify claim of :meth:`_claim`: the task running, or ``None`` when its assertion failed
        (not ``pending`` or ``queued``, or no attempts left). :class:`NotFound` when there is no entry."""
        now = _now()
        condition = ("(&(|(didmosTaskState=pending)(didmosTaskState=queued))"
                     f"(didmosTaskAttempts<={self._deliveries(name) - 1}))")
        try:
            entry = self.directory.modify(
                self.dn(task_id), [(ldap.MOD_REPLACE, "didmosTaskState", ["running"]),
                                   (ldap.MOD_INCREMENT, "didmosTaskAttempts", ["1"]),
                                   (ldap.MOD_REPLACE, "didmosTaskStarted", [now])],
                if_match=condition, read_back=CLAIM_READ_BACK)
        except PreconditionFailed:
            return None
        if entry is None or not entry.first("entryCSN"):
            return self.find(task_id)  # a directory without Post-Read: read it
        return Task(id=task_id, name=name, payload=payload, state="running",
                    attempts=int(entry.first("didmosTaskAttempts")), started=_iso(now),
                    version=entry.first("entryCSN"))

    def _claim_slowly(self, task_id: str) -> Task | None:
        """:meth:`_claim` by reading first: for a task that the one-modify claim could not take."""
        for attempt in range(10):
            if attempt:
                time.sleep(0.05 * attempt)  # someone else changed it just now (or a replica lags): look again
            task = self.find(task_id)
            if task is None:
                log.warning("task %s has no entry in the outbox (deleted?); nothing to run", task_id)
                return None
            if task.state in ("done", "failed"):
                log.info("task %s is %s already; this delivery does nothing", task_id, task.state)
                return task
            if task.attempts >= self._deliveries(task.name):
                why = task.error or "its attempts did not finish"
                return self._change(task, State="failed", Error=f"{why}; no attempts left", Finished=_now()) or task
            claimed = self._change(task, State="running", Attempts=str(task.attempts + 1), Started=_now(),
                                   Finished=None)
            if claimed is not None:
                return claimed
        raise DidmosError(f"task {task_id}: its entry kept changing while this worker tried to claim it")

    def _attempt_failed(self, task: Task, handler: TaskHandler | None, exc: Exception, job: Job) -> None:
        """Record a failed attempt; tell rq whether (and after how long) to run the job again."""
        error = _describe(exc)
        permanent = isinstance(exc, PermanentTaskError)
        if permanent or task.attempts > self._retries(task.name):
            job.retries_left = 0
            changed = self._change(task, read=False, State="failed", Error=error, Finished=_now())
            log.warning("task %s failed for good after %d attempts%s: %s", task.id, task.attempts,
                        " (the handler says retrying cannot help)" if permanent else "", error)
        else:
            # The entry decides, not rq's own count (a delivery after a crash starts rq's count afresh).
            job.retries_left = 1
            job.retry_intervals = [_interval(handler, task.attempts)]
            changed = self._change(task, read=False, State="queued", Error=error)
        if changed is None:
            job.retries_left = 0  # delivered again meanwhile: that delivery owns the task now


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
