"""What operators watch: request ids, structured logs, the audit log and Prometheus metrics.

* **Request id.** Every API request has one: the client's ``X-Request-ID`` when it is sane (1-128
  visible ASCII characters), else a new one. It is sent back in ``X-Request-ID`` (error responses
  too), is on every log record made while the request runs (``record.request_id``, through a log
  record factory, so any handler sees it), and travels with the tasks the request enqueues (the rq
  job's ``meta``), so a worker's log lines for that job carry it too.
* **Logs.** ``configure_logging`` gives the root logger one handler in the format of ``log.format``:
  ``json`` (one object per line: ``time``, ``level``, ``logger``, ``message``, ``request_id``, ``pid``
  and what the caller passed as ``extra``) or ``text``. ``didmos serve`` and ``didmos worker`` call it;
  the app factory does not, so tests and embedding programs keep their own logging.
* **Access log.** One line per request on the logger ``didmos.access``: ``method``, ``route`` (the URL
  rule, never the raw path), ``status``, ``duration_ms``, ``actor``.
* **Audit log.** :func:`audit` writes one record per write on the logger ``didmos.audit`` (and, with
  ``log.audit_file``, as JSON lines to that file): who, what, the result, the request id. Values are
  never in it, only attribute names.
* **Metrics.** ``GET /metrics`` in Prometheus' text format, for a scrape token (``metrics.token``) or
  an actor the PDP allows to ``read`` ``Metrics``. Under ``didmos serve`` the gunicorn workers share
  their counters through prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

import contextvars
import datetime
import hmac
import logging
import logging.handlers
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import flask
from dynaconf import Validator
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pythonjsonlogger.json import JsonFormatter

from didmos_host.api import Blueprint, MethodView
from didmos_host.errors import ConfigError, Forbidden
from didmos_host.records import Action, SettingsNamespace

#: The header a request id comes in and goes back in.
REQUEST_ID_HEADER = "X-Request-ID"
#: Key of the request id in an rq job's ``meta``.
JOB_META_KEY = "didmos_request_id"
#: What a client's request id may be: short, visible ASCII (no spaces, no control characters).
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
#: The route label of requests that matched no URL rule (404, 405): never the raw path, whose values
#: are unbounded.
UNMATCHED_ROUTE = "<unmatched>"
#: The classic text exposition format, what every Prometheus reads (two registries' output concatenated
#: stays valid in it; OpenMetrics would need one ``# EOF``).
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
#: Multiprocess mode of prometheus_client: the directory the processes' metric files are in.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Methods counted under their own name in the HTTP metrics; any other is ``OTHER``.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("didmos_request_id", default=None)
access_log = logging.getLogger("didmos.access")
audit_log = logging.getLogger("didmos.audit")

HTTP_REQUESTS = Counter("didmos_http_requests_total", "HTTP requests answered, by route, method and status.",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("didmos_http_request_duration_seconds", "Time to answer an HTTP request, by route "
                          "and method.", ["route", "method"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))


# -- request ids -------------------------------------------------------------------------------------


def current_request_id() -> str | None:
    """The id of the request (or of the task's originating request) this code runs for, or ``None``."""
    return _request_id.get()


@contextmanager
def request_id_scope(request_id: str | None) -> Iterator[None]:
    """Run a block (a task, a CLI step) with ``request_id`` on its log records and the tasks it enqueues."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def sane_request_id(value: str | None) -> str:
    """``value`` when it is a usable request id, else a new one (32 hex digits)."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


_factory_installed = False


def install_record_factory() -> None:
    """Have every log record carry ``request_id`` (``None`` outside a request or task). Idempotent."""
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = _request_id.get()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


# -- log formats -------------------------------------------------------------------------------------

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "request_id", "taskName"}


def _utc(created: float) -> str:
    return (datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


class JsonLogFormatter(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, pid, extras."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s %(request_id)s %(process)s",
                         rename_fields={"levelname": "level", "name": "logger", "process": "pid"},
                         json_ensure_ascii=False, json_default=str)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = _utc(record.created)
        if not hasattr(record, "request_id"):  # made before install_record_factory, or by a foreign factory
            record.request_id = None
        super().add_fields(log_data, record, message_dict)


class TextLogFormatter(logging.Formatter):
    """``time level logger [request id] message key=value ...``: for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc(record.created)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record = logging.makeLogRecord(record.__dict__)  # other handlers still see None
            record.request_id = "-"
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRIBUTES}
        if extras:
            text = " ".join(f"{key}={value}" for key, value in extras.items())
            head, newline, rest = line.partition("\n")  # a traceback stays below the line
            line = f"{head} {text}{newline}{rest}"
        return line


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log.format`` (``json`` or ``text``)."""
    return JsonLogFormatter() if log_format == "json" else TextLogFormatter()


def configure_logging(settings, *, stream=None, replace: bool = False) -> None:
    """Send every log record to ``stream`` (stderr) in ``log.format`` at ``log.level``; the audit records
    also, always as JSON, to ``log.audit_file`` when it is set.

    Replaces what an earlier call installed; with ``replace``, every handler of the root logger (the
    command line's own, from ``logging.basicConfig``).
    """
    install_record_factory()
    cfg = settings.log
    root = logging.getLogger()
    for logger in (root, audit_log):
        for handler in [h for h in logger.handlers if replace and logger is root or getattr(h, "didmos", False)]:
            logger.removeHandler(handler)
            handler.close()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(cfg.format))
    handler.didmos = True
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())
    audit_log.setLevel(logging.INFO)  # a write is audited whatever log.level says
    if cfg.audit_file:
        # WatchedFileHandler reopens the file after logrotate moved it.
        try:
            audit_file = logging.handlers.WatchedFileHandler(cfg.audit_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"log.audit_file {cfg.audit_file!r} cannot be opened for appending: "
                              f"{exc.strerror or exc}; name a file in a directory this user may write") from exc
        audit_file.setFormatter(JsonLogFormatter())
        audit_file.didmos = True
        audit_log.addHandler(audit_file)


def audit(event: str, *, actor: Any = None, target: str | None = None, error: BaseException | None = None,
          **fields: Any) -> None:
    """Write one audit record: ``event`` (``ldap.modify``, ...) on ``target`` by ``actor``, and its result.

    ``actor`` is an :class:`~didmos_host.records.Actor`, a DN, or ``None``; ``None`` inside an API
    request means the request's authenticated actor, outside one didmos itself (a task, the CLI).
    ``error`` is what made the write fail; without it the result is ``success``. ``fields`` are more
    facts (attribute names, never values).
    """
    install_record_factory()  # the record carries the request id in any process
    if actor is None and flask.has_request_context():
        actor = flask.g.get("didmos_actor")
    record: dict[str, Any] = {"event": event, "actor": getattr(actor, "dn", actor),
                              "actor_id": getattr(actor, "uuid", None), "target": target, **fields}
    if error is None:
        record["result"] = "success"
    else:
        record.update(result="failure", error=getattr(error, "message", None) or str(error) or type(error).__name__,
                      error_type=type(error).__name__, status=getattr(error, "status", 500))
    outcome = record["result"] if error is None else f"failure ({record['error']})"
    audit_log.info("%s %s by %s: %s", event, target, record["actor"] or "didmos", outcome, extra=record)


# -- the app: request ids, access log, HTTP metrics --------------------------------------------------


def install(app: flask.Flask) -> None:
    """Give ``app`` request ids, the access log and HTTP metrics."""
    install_record_factory()

    @app.before_request
    def start_request() -> None:
        request_id = sane_request_id(flask.request.headers.get(REQUEST_ID_HEADER))
        flask.g.request_id = request_id
        flask.g.didmos_request = (_request_id.set(request_id), time.perf_counter())

    @app.after_request
    def finish_request(response: flask.Response) -> flask.Response:
        started = flask.g.get("didmos_request")
        request_id = flask.g.get("request_id") or sane_request_id(None)
        response.headers[REQUEST_ID_HEADER] = request_id
        if started is None:  # a before_request of another plugin ran first and failed
            return response
        seconds = time.perf_counter() - started[1]
        request = flask.request
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in HTTP_METHODS else "OTHER"  # clients invent methods
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_DURATION.labels(route, method).observe(seconds)
        actor = flask.g.get("didmos_actor")
        access_log.info("%s %s %s %.1f ms", request.method, route, response.status_code, seconds * 1000,
                        extra={"method": request.method, "route": route, "path": request.path,
                               "status": response.status_code, "duration_ms": round(seconds * 1000, 3),
                               "actor": getattr(actor, "dn", None)})
        return response

    @app.teardown_request
    def end_request(error: BaseException | None) -> None:
        started = flask.g.pop("didmos_request", None)
        if started is not None:
            try:
                _request_id.reset(started[0])
            except ValueError:  # set in another context (a copied one): nothing of ours to undo here
                pass


# -- /metrics ----------------------------------------------------------------------------------------

metrics_blueprint = Blueprint("metrics", __name__, description="Prometheus metrics")


def metrics_blueprints(app: flask.Flask) -> list[Blueprint]:
    """``[metrics_blueprint]`` when ``metrics.enabled``, else nothing (the built-in ``didmos_blueprints``)."""
    return [metrics_blueprint] if app.extensions["didmos"].settings.metrics.enabled else []


@metrics_blueprint.route("/metrics")
class Metrics(MethodView):
    @metrics_blueprint.doc(responses={"200": {"description": "Prometheus text exposition format",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def get(self):
        """Every metric of every API process, and the task queues' depth and failures read now.

        Needs the scrape token (``Authorization: Bearer <metrics.token>``) or credentials of an actor
        allowed to read ``Metrics`` (the superadmin).
        """
        from didmos_host.app import current_actor, current_host

        host = current_host()
        if not _has_scrape_token(host.settings.metrics.token, flask.request.headers.get("Authorization", "")):
            actor = current_actor()
            if not host.authorize(actor, Action("read", "Metrics")):
                raise Forbidden("not allowed to read Metrics; scrape with the metrics.token as a Bearer token, "
                                "or as an actor allowed to read Metrics")
        return flask.Response(exposition(host), content_type=TEXT_FORMAT)


def _has_scrape_token(token: str, authorization: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def exposition(host) -> bytes:
    """The text a scrape gets: this process's metrics (every process's under multiprocess mode), then
    the figures read at scrape time (task queues, and those of ``didmos_metrics_collectors``)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    now = CollectorRegistry(auto_describe=False)
    now.register(TaskQueueCollector(host))
    for collectors in host.hook.didmos_metrics_collectors(host=host):
        for collector in collectors or ():
            now.register(collector)
    return generate_latest(registry) + generate_latest(now)


class TaskQueueCollector:
    """Read at scrape time from rq: jobs waiting per queue, jobs in each queue's failed registry, and
    whether redis answered (when not, the other two are absent, and the scrape still succeeds)."""

    def __init__(self, host):
        self.host = host

    def collect(self):
        import redis
        from rq import Queue

        from didmos_host.tasks import connect, queue_names

        depth = GaugeMetricFamily("didmos_task_queue_depth", "Jobs waiting in each task queue.", labels=["queue"])
        failed = GaugeMetricFamily("didmos_task_failed", "Jobs in each task queue's failed registry "
                                   "(failed for good, retries used up).", labels=["queue"])
        up = GaugeMetricFamily("didmos_task_queue_up", "1 when redis answered this scrape, else 0.")
        connection = connect(self.host)
        try:
            for name in queue_names(self.host):
                queue = Queue(name, connection=connection)
                depth.add_metric([name], queue.count)
                failed.add_metric([name], queue.failed_job_registry.count)
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        finally:
            connection.close()
        up.add_metric([], 1)
        yield from (depth, failed, up)


# -- multiprocess mode (didmos serve) ----------------------------------------------------------------


@contextmanager
def shared_metrics() -> Iterator[Path]:
    """Multiprocess mode for the processes started inside: a directory for their metric files.

    ``PROMETHEUS_MULTIPROC_DIR`` when it is set (emptied of old files first, kept afterwards), else a
    new temporary directory, removed afterwards.
    """
    from prometheus_client import values

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("*.db"):
            old.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="didmos-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
    # prometheus_client chose its value class when it was imported, maybe before the variable was set.
    previous, values.ValueClass = values.ValueClass, values.get_value_class()
    owner = os.getpid()
    try:
        yield path
    finally:
        # gunicorn forks its workers inside this block, and a worker leaves by sys.exit(): it unwinds
        # through here too, and must not take the directory from the workers still running.
        if os.getpid() == owner:
            values.ValueClass = previous
            if not given:
                os.environ.pop(MULTIPROC_ENV, None)
                shutil.rmtree(path, ignore_errors=True)


def worker_exited(server, worker) -> None:
    """gunicorn's ``child_exit``: a dead worker's live gauges no longer count (its counters still do)."""
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(worker.pid)


def gunicorn_logger_class():
    """A gunicorn logger whose error and access loggers go through didmos's handler (``log.format``)."""
    from gunicorn.glogging import Logger

    class DidmosGunicornLogger(Logger):
        def setup(self, cfg):
            super().setup(cfg)
            for logger in (self.error_log, self.access_log):
                for handler in list(logger.handlers):
                    logger.removeHandler(handler)
                logger.propagate = True

    return DidmosGunicornLogger


# -- settings ----------------------------------------------------------------------------------------


def _is_token(value) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) >= 16 and not any(c.isspace() for c in value)))


def settings_namespaces() -> list[SettingsNamespace]:
    """The host's ``log`` and ``metrics`` namespaces (returned by the built-in ``didmos_settings``)."""
    return [
        SettingsNamespace(
            name="log",
            defaults={"level": "INFO", "format": "json", "audit_file": ""},
            validators=(
                Validator("log.level", condition=lambda v: isinstance(v, str) and v.upper() in LEVELS,
                          messages={"condition": "{name} must be one of " + ", ".join(LEVELS) + ", got {value!r}"}),
                Validator("log.format", is_in=("json", "text")),
                Validator("log.audit_file", is_type_of=str),
            ),
            descriptions={
                "level": "Lowest level logged by `didmos serve` and `didmos worker`: DEBUG, INFO, WARNING, ERROR "
                         "or CRITICAL (audit records are logged whatever it says).",
                "format": "`json` (one object per line) or `text`, for `didmos serve` and `didmos worker` "
                          "(`didmos dev` sets `text`).",
                "audit_file": "A file that also receives the audit records, as JSON lines (reopened after "
                              "logrotate moves it); empty: the audit records go only to the log.",
            },
        ),
        SettingsNamespace(
            name="metrics",
            defaults={"enabled": True, "token": ""},
            validators=(
                Validator("metrics.enabled", is_type_of=bool),
                Validator("metrics.token", condition=_is_token,
                          messages={"condition": "{name} must be empty or at least 16 characters without spaces "
                                                 "(a long random string), got one that is not"}),
            ),
            secrets=("token",),
            descriptions={
                "enabled": "Serve Prometheus metrics at `GET /metrics`.",
                "token": "Bearer token a scraper may send instead of credentials; empty: only actors allowed to "
                         "read `Metrics` (the superadmin) can scrape.",
            },
        ),
    ]
