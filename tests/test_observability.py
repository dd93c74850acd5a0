"""What operators watch, end to end: request ids, structured logs, the audit log of SCIM writes,
``/metrics`` (content and who may read it) and, under ``didmos serve`` with two workers, metrics summed
across the workers."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job

from didmos_host import hookimpl
from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.observability import JOB_META_KEY, audit_log, configure_logging, current_request_id
from didmos_host.records import TaskHandler
from didmos_host.servers import free_port
from didmos_host.tasks import enqueue, enqueue_for_period, run_worker
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
ADMIN_DN = f"didmosUUID={SUPERADMIN_ID},ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
TOKEN = "scrape-token-" + "x" * 20


def samples(text: str) -> dict[tuple, float]:
    """``{(name, sorted label items): value}`` of a Prometheus text exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def restore_logging():
    """configure_logging changes the process's root and audit loggers: put them back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, list(audit_log.handlers), audit_log.level)
    yield
    for logger, handlers in ((root, saved[0]), (audit_log, saved[2])):
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
    root.setLevel(saved[1])
    audit_log.setLevel(saved[3])


# -- request ids -----------------------------------------------------------------------------------------


def test_a_sane_request_id_is_kept_and_returned(client):
    response = client.get("/healthz", headers={"X-Request-ID": "lb-4f2a:9"})
    assert response.headers["X-Request-ID"] == "lb-4f2a:9"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "has space", "tab\there", "umlaut-ä", "new\nline"])
def test_a_missing_or_insane_request_id_is_replaced(client, given):
    headers = {} if given is None else {"X-Request-ID": given}
    try:
        response = client.get("/healthz", headers=headers)
    except ValueError:  # werkzeug's test client refuses a newline in a header: no client can send it
        assert "\n" in given
        return
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert response.headers["X-Request-ID"] != given


def test_error_responses_carry_the_request_id(client):
    assert client.get("/auth/whoami", headers={"X-Request-ID": "e-401"}).headers["X-Request-ID"] == "e-401"
    assert client.get("/no/such/route", headers={"X-Request-ID": "e-404"}).headers["X-Request-ID"] == "e-404"
    bad = client.post("/scim/v2/Users", data="{not json", headers={**ADMIN, "X-Request-ID": "e-400",
                                                                   "Content-Type": "application/scim+json"})
    assert bad.status_code == 400 and bad.headers["X-Request-ID"] == "e-400"


def test_every_log_line_of_a_request_carries_its_id(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/auth/whoami", headers={**ADMIN, "X-Request-ID": "req-log-1"})
    client.get("/healthz", headers={"X-Request-ID": "req-log-2"})
    mine = [r for r in caplog.records if r.request_id == "req-log-1"]
    access = [r for r in mine if r.name == "didmos.access"]
    assert len(access) == 1
    line = access[0]
    assert (line.method, line.route, line.status, line.actor) == ("GET", "/auth/whoami", 200, ADMIN_DN)
    assert line.duration_ms > 0
    other = [r for r in caplog.records if r.name == "didmos.access" and r.request_id == "req-log-2"]
    assert other[0].actor is None and other[0].route == "/healthz"


def test_unmatched_routes_are_logged_without_their_path_as_route(client, caplog):
    caplog.set_level(logging.INFO, logger="didmos.access")
    client.get("/no/such/thing-123", headers={"X-Request-ID": "req-404"})
    line, = [r for r in caplog.records if r.request_id == "req-404"]
    assert (line.route, line.path, line.status) == ("<unmatched>", "/no/such/thing-123", 404)


# -- log formats -----------------------------------------------------------------------------------------


def test_json_log_lines_have_the_documented_fields(make_app, restore_logging):
    app = make_app(log={"format": "json", "level": "INFO"})
    stream = io.StringIO()
    configure_logging(app.extensions["didmos"].settings, stream=stream)
    app.test_client().get("/auth/whoami", headers={**ADMIN, "X-Request-ID": "req-json-1"})
    logging.getLogger("test.outside").warning("no request here")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    access = next(line for line in lines if line["logger"] == "didmos.access")
    assert list(access)[:6] == ["time", "level", "logger", "message", "request_id", "pid"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", access["time"])
    assert access["level"] == "INFO" and access["request_id"] == "req-json-1" and access["pid"] == os.getpid()
    assert {k: access[k] for k in ("method", "route", "status", "actor")} == {
        "method": "GET", "route": "/auth/whoami", "status": 200, "actor": ADMIN_DN}
    assert isinstance(access["duration_ms"], float)
    outside = next(line for line in lines if line["logger"] == "test.outside")
    assert outside["request_id"] is None and outside["message"] == "no request here"


def test_text_log_lines_and_the_level(make_app, restore_logging):
    app = make_app(log={"format": "text", "level": "WARNING"})
    stream = io.StringIO()
    configure_logging(app.extensions["didmos"].settings, stream=stream)
    app.test_client().get("/healthz", headers={"X-Request-ID": "req-text-1"})
    logging.getLogger("test.outside").warning("careful")
    text = stream.getvalue()
    assert "req-text-1" not in text  # the access line is INFO, below WARNING
    assert re.search(r"^\S+Z WARNING test\.outside \[-\] careful$", text, re.M)
    logging.getLogger().setLevel(logging.INFO)
    app.test_client().get("/healthz", headers={"X-Request-ID": "req-text-2"})
    assert re.search(r"INFO didmos\.access \[req-text-2\] GET /healthz 200 [\d.]+ ms method=GET route=/healthz "
                     r"path=/healthz status=200 duration_ms=[\d.]+ actor=None$", stream.getvalue(), re.M)


@pytest.mark.parametrize("setting, message", [
    ({"log": {"format": "xml"}}, "log.format"),
    ({"log": {"level": "LOUD"}}, "log.level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'LOUD'"),
    ({"metrics": {"token": "short"}}, "metrics.token must be empty or at least 16 characters"),
    ({"metrics": {"enabled": "yes"}}, "metrics.enabled"),
])
def test_bad_log_and_metrics_settings_stop_start_up(didmos_overrides, setting, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Host.create({**didmos_overrides, **setting})


def test_an_audit_file_that_cannot_be_written_is_a_clear_error(make_app, tmp_path, restore_logging):
    app = make_app(log={"audit_file": str(tmp_path / "missing-dir" / "audit.log")})
    with pytest.raises(ConfigError, match=r"log.audit_file '.*/missing-dir/audit.log' cannot be opened for "
                                          r"appending: No such file or directory"):
        configure_logging(app.extensions["didmos"].settings, stream=io.StringIO())


def test_invented_methods_do_not_make_new_series(client):
    before = samples(client.get("/metrics", headers=ADMIN).get_data(as_text=True))
    for method in ("FROB", "XYZZY"):
        assert client.open("/healthz", method=method).status_code == 405
    after = samples(client.get("/metrics", headers=ADMIN).get_data(as_text=True))
    assert value(after, "didmos_http_requests_total", route="<unmatched>", method="OTHER", status="405") == \
        value(before, "didmos_http_requests_total", route="<unmatched>", method="OTHER", status="405") + 2
    assert not any(dict(labels).get("method") in ("FROB", "XYZZY") for _, labels in after)


# -- the audit log ---------------------------------------------------------------------------------------


def test_scim_writes_are_audited(make_app, caplog, tmp_path, restore_logging):
    audit_file = tmp_path / "audit.log"
    app = make_app(log={"audit_file": str(audit_file)})
    client = app.test_client()
    configure_logging(app.extensions["didmos"].settings, stream=io.StringIO())
    caplog.set_level(logging.INFO, logger="didmos.audit")
    scim = {**ADMIN, "Content-Type": "application/scim+json"}
    name = f"audit-{uuid.uuid4().hex[:8]}"
    created = client.post("/scim/v2/Users", headers={**scim, "X-Request-ID": "audit-create"}, json={
        "schemas": [USER], "userName": name, "name": {"givenName": "A", "familyName": "B"},
        "password": "Audit-Secret-123"})
    assert created.status_code == 201, created.json
    user_id = created.json["id"]
    patched = client.patch(f"/scim/v2/Users/{user_id}", headers={**scim, "X-Request-ID": "audit-patch"}, json={
        "schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "Auditor"}]})
    assert patched.status_code == 200, patched.json
    stale = client.patch(f"/scim/v2/Users/{user_id}", json={
        "schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "Late"}]},
        headers={**scim, "X-Request-ID": "audit-stale", "If-Match": 'W/"20000101000000.000000Z#000000#000#000000"'})
    assert stale.status_code == 412, stale.json
    deleted = client.delete(f"/scim/v2/Users/{user_id}", headers={**ADMIN, "X-Request-ID": "audit-delete"})
    assert deleted.status_code == 204

    by_request = {}
    for record in caplog.records:
        if record.name == "didmos.audit":
            by_request.setdefault(record.request_id, []).append(record)
    dn = f"didmosUUID={user_id},ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
    add, = by_request["audit-create"]
    assert (add.event, add.actor, add.target, add.result) == ("ldap.add", ADMIN_DN, dn, "success")
    assert {"uid", "userPassword", "didmosUUID", "objectClass"} <= set(add.attributes)
    modify, = by_request["audit-patch"]
    assert (modify.event, modify.target, modify.result, modify.changes) == ("ldap.modify", dn, "success",
                                                                            ["replace title"])
    failed, = by_request["audit-stale"]
    assert (failed.event, failed.result, failed.status, failed.error_type) == ("ldap.modify", "failure", 412,
                                                                               "PreconditionFailed")
    delete, = by_request["audit-delete"]
    assert (delete.event, delete.target, delete.result) == ("ldap.delete", dn, "success")

    lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [(line["event"], line["request_id"], line["result"]) for line in lines] == [
        ("ldap.add", "audit-create", "success"), ("ldap.modify", "audit-patch", "success"),
        ("ldap.modify", "audit-stale", "failure"), ("ldap.delete", "audit-delete", "success")]
    assert all(line["actor"] == ADMIN_DN and line["time"].endswith("Z") for line in lines)
    assert "Audit-Secret-123" not in audit_file.read_text()
    assert "Audit-Secret-123" not in json.dumps([r.__dict__ for r in caplog.records], default=str)


# -- request ids travel with tasks -----------------------------------------------------------------------


def report_request_id(payload, context):
    logging.getLogger("test.task").info("task ran")
    return {"request_id": current_request_id()}


def fail(payload, context):
    raise RuntimeError("this task always fails")


class ObservedTasks:
    def __init__(self, queue: str):
        self.queue = queue

    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.report_request_id", function=report_request_id, queue=self.queue, retries=0),
                TaskHandler(name="test.fail", function=fail, queue=self.queue, retries=0)]


@pytest.fixture
def task_queue(didmos_overrides):
    name = f"obs-{uuid.uuid4().hex[:8]}"
    yield name
    connection = redis.Redis.from_url(didmos_overrides["redis"]["url"])
    queue = Queue(name, connection=connection)
    for job_id in queue.failed_job_registry.get_job_ids():
        queue.failed_job_registry.remove(job_id, delete_job=True)
    queue.empty()


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_tasks_enqueued_in_a_request_run_with_its_id(make_app, task_queue, tmp_path, restore_logging, mode):
    app = make_app(ObservedTasks(task_queue), worker={"mode": mode})
    host = app.extensions["didmos"]
    with app.test_request_context("/", headers={"X-Request-ID": "req-task-1"}):
        app.preprocess_request()  # what a request does first: its id is set
        job_id = enqueue(host, "test.report_request_id", {})
        periodic = enqueue_for_period(host, "test.report_request_id", 3600)
    outside = enqueue(host, "test.report_request_id", {})
    connection = redis.Redis.from_url(host.settings.redis.url)
    assert Job.fetch(job_id, connection=connection).meta[JOB_META_KEY] == "req-task-1"
    assert JOB_META_KEY not in Job.fetch(outside, connection=connection).meta
    assert JOB_META_KEY not in Job.fetch(periodic, connection=connection).meta  # serves no one request

    log = tmp_path / "worker.log"
    with log.open("w") as stream:  # the work horses are forked: they write to the same file
        configure_logging(host.settings, stream=stream)  # log.format is json by default
        run_worker(host, burst=True, queues=[task_queue])
    assert Job.fetch(job_id, connection=connection).return_value() == {"request_id": "req-task-1"}
    assert Job.fetch(outside, connection=connection).return_value() == {"request_id": None}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["request_id"] == "req-task-1"]
    assert any(line["logger"] == "test.task" and line["message"] == "task ran" for line in mine)
    assert any(line["logger"] == "rq.worker" and "Job OK" in line["message"] and job_id in line["message"]
               for line in mine)
    others = [line for line in lines if line["logger"] == "rq.worker" and outside in line["message"]]
    assert others and all(line["request_id"] is None for line in others)


# -- /metrics --------------------------------------------------------------------------------------------


def test_metrics_need_the_token_or_an_allowed_actor(make_app):
    client = make_app(metrics={"token": TOKEN}).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers=ADMIN).status_code == 200
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    user = client.post("/scim/v2/Users", headers={**ADMIN, "Content-Type": "application/scim+json"}, json={
        "schemas": [USER], "userName": name, "password": "Standard-User-123"}).json
    try:
        refused = client.get("/metrics", headers=basic_auth(user["id"], "Standard-User-123"))
        assert refused.status_code == 403 and "not allowed to read Metrics" in refused.json["detail"]
    finally:
        client.delete(f"/scim/v2/Users/{user['id']}", headers=ADMIN)
    # without a token configured, a bearer token is only a (failed) login
    assert make_app().test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


@pytest.mark.parametrize("authorization", ["Bearer", "Bearer ", "bearer " + TOKEN[:-1], "Bearer \u00e4" * 3,
                                           "Basic !!!", "Basic " + "a" * 5000, "Token " + TOKEN, TOKEN])
def test_bad_credentials_on_metrics_are_refused_never_a_crash(make_app, authorization):
    client = make_app(metrics={"token": TOKEN}).test_client()
    response = client.get("/metrics", headers={"Authorization": authorization})
    assert response.status_code in (400, 401), (response.status_code, response.get_data(as_text=True))
    assert "X-Request-ID" in response.headers


def test_metrics_can_be_turned_off(make_app):
    assert make_app(metrics={"enabled": False}).test_client().get("/metrics", headers=ADMIN).status_code == 404


def test_metrics_after_traffic(make_app, task_queue):
    app = make_app(ObservedTasks(task_queue), metrics={"token": TOKEN})
    client = app.test_client()
    scrape = {"Authorization": f"Bearer {TOKEN}"}
    before = samples(client.get("/metrics", headers=scrape).get_data(as_text=True))
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/auth/whoami").status_code == 401
    assert client.get("/auth/whoami", headers=ADMIN).status_code == 200
    host = app.extensions["didmos"]
    for _ in range(2):
        enqueue(host, "test.report_request_id", {})
    response = client.get("/metrics", headers=scrape)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    after = samples(response.get_data(as_text=True))

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("didmos_http_requests_total", route="/healthz", method="GET", status="200") == 3
    assert moved("didmos_http_requests_total", route="/auth/whoami", method="GET", status="401") == 1
    assert moved("didmos_http_request_duration_seconds_count", route="/healthz", method="GET") == 3
    assert value(after, "didmos_http_request_duration_seconds_bucket", route="/healthz", method="GET", le="+Inf") >= 3
    assert moved("didmos_ldap_operation_duration_seconds_count", operation="bind", result="success") >= 1
    assert value(after, "didmos_ldap_operation_duration_seconds_bucket", operation="search", result="success",
                 le="+Inf") >= 1
    assert ("didmos_ldap_cache_hits_total", ()) in after and ("didmos_ldap_cache_misses_total", ()) in after
    assert value(after, "didmos_task_queue_depth", queue=task_queue) == 2
    assert value(after, "didmos_task_failed", queue=task_queue) == 0
    assert value(after, "didmos_task_queue_up") == 1


def test_failed_tasks_are_counted_at_scrape_time(make_app, task_queue):
    app = make_app(ObservedTasks(task_queue), metrics={"token": TOKEN})
    host = app.extensions["didmos"]
    enqueue(host, "test.fail", {})
    run_worker(host, burst=True, queues=[task_queue])
    found = samples(app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(
        as_text=True))
    assert value(found, "didmos_task_failed", queue=task_queue) == 1
    assert value(found, "didmos_task_queue_depth", queue=task_queue) == 0


def test_a_scrape_succeeds_while_redis_is_down(make_app):
    app = make_app(redis={"url": f"redis://127.0.0.1:{free_port()}/0"}, metrics={"token": TOKEN})
    response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    found = samples(response.get_data(as_text=True))
    assert response.status_code == 200 and value(found, "didmos_task_queue_up") == 0
    assert not any(name == "didmos_task_queue_depth" for name, _ in found)


def test_plugins_add_figures_read_at_scrape_time(make_app):
    """didmos_metrics_collectors: a throwaway plugin's collector is asked at every scrape."""
    from prometheus_client.core import GaugeMetricFamily

    class Sensors:
        scrapes = 0

        def collect(self):
            Sensors.scrapes += 1
            family = GaugeMetricFamily("test_sensor_scrapes", "How often this collector was asked.")
            family.add_metric([], Sensors.scrapes)
            yield family

    class SensorPlugin:
        @hookimpl
        def didmos_metrics_collectors(self, host):
            return [Sensors()]

    client = make_app(SensorPlugin(), metrics={"token": TOKEN}).test_client()
    for expected in (1, 2):
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
        assert value(samples(text), "test_sensor_scrapes") == expected


def test_the_outbox_failed_tasks_are_counted(make_app, didmos_slapd):
    """didmos_tasks' didmos_metrics_collectors: failed outbox tasks, counted in the directory."""
    app = make_app(metrics={"token": TOKEN})
    client = app.test_client()

    def failed() -> float:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).get_data(as_text=True)
        return value(samples(text), "didmos_task_outbox_failed")

    before = failed()
    task_id = str(uuid.uuid4())
    dn = f"didmosTaskId={task_id},{app.extensions['didmos'].settings.tasks.base_dn}"
    conn = didmos_slapd.admin_connection()
    conn.add_s(dn, [("objectClass", [b"didmosTask"]), ("didmosTaskId", [task_id.encode()]),
                    ("didmosTaskHandler", [b"didmos.ping"]), ("didmosTaskState", [b"failed"]),
                    ("didmosTaskAttempts", [b"1"])])
    try:
        assert failed() == before + 1
    finally:
        conn.delete_s(dn)
    assert failed() == before


def test_shared_metrics_uses_a_given_directory_or_makes_and_removes_one(tmp_path, monkeypatch):
    from didmos_host.observability import shared_metrics

    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"old run")
    (given / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    with shared_metrics() as path:
        assert path == given and not (given / "counter_1.db").exists()
    assert (given / "keep.txt").exists() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with shared_metrics() as path:
        assert path.parent == tmp_path and path.name.startswith("didmos-metrics-") and path.is_dir()
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(path)
    assert not path.exists() and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


# -- didmos serve: JSON logs, and the metrics of two workers summed ------------------------------------


def get(url, headers=None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.slow
def test_serve_sums_the_metrics_of_its_workers(didmos_overrides, tmp_path):
    port = free_port()
    settings = tmp_path / "settings.toml"
    directory = didmos_overrides["directory"]
    settings.write_text(
        f"[api]\nthreads = 2\n"
        f"[directory]\nuri = {json.dumps(directory['uri'])}\nbind_password = {json.dumps(directory['bind_password'])}\n"
        f"[redis]\nurl = {json.dumps(didmos_overrides['redis']['url'])}\n"
        f"[metrics]\ntoken = {json.dumps(TOKEN)}\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("DIDMOS_") and key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(DIDMOS_SETTINGS_FILES=str(settings), TMPDIR=str(scratch), PYTHONUNBUFFERED="1")
    stderr = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with stderr.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "serve", "--port", str(port),
                                    "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if get(f"{base}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        shared, = scratch.glob("didmos-metrics-*")  # made by serve for its workers
        sent = 1
        # Until both workers have answered something (each writes its own counter file).
        while len(list(shared.glob("counter_*.db"))) < 2:
            assert sent < 2000, "one worker answered every request"
            assert get(f"{base}/healthz", {"X-Request-ID": f"serve-{sent}"})[0] == 200
            sent += 1
        for _ in range(10):
            assert get(f"{base}/healthz")[0] == 200
            sent += 1
        def scrape_until_both_answered() -> None:
            """Whichever worker answers a scrape counts every worker's requests (the scrapes are not yet
            counted when the scrape's own answer is made)."""
            seen = len(json_lines())
            answered = set()
            while len(answered) < 2:
                assert len(answered) < 2 and time.monotonic() < deadline, "one worker answered every scrape"
                status, text = get(f"{base}/metrics", {"Authorization": f"Bearer {TOKEN}"})
                assert status == 200, text
                found = samples(text)
                assert value(found, "didmos_http_requests_total", route="/healthz", method="GET", status="200") == sent
                assert value(found, "didmos_http_request_duration_seconds_count", route="/healthz", method="GET") == sent
                assert value(found, "didmos_task_queue_up") == 1
                answered |= {line["pid"] for line in json_lines()[seen:] if line["logger"] == "didmos.access"
                             and line["route"] == "/metrics"}

        def json_lines() -> list[dict]:
            return [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]

        deadline = time.monotonic() + 60
        scrape_until_both_answered()
        # A worker that leaves (here on SIGTERM; also gunicorn's max_requests) is replaced; what it
        # counted still counts, and the directory stays for the others.
        workers = {line["pid"] for line in json_lines() if line["logger"] == "didmos.access"}
        os.kill(min(workers), signal.SIGTERM)
        while not any(line["logger"] == "gunicorn.error" and line["message"].startswith("Booting worker")
                      and line["pid"] not in workers for line in json_lines()):
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        assert shared.is_dir() and len(list(shared.glob("counter_*.db"))) >= 2
        scrape_until_both_answered()
        assert get(f"{base}/metrics")[0] == 401
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "didmos.access" and line["request_id"] == "serve-1"]
    assert access and access[0]["route"] == "/healthz" and access[0]["status"] == 200
    assert len({line["pid"] for line in lines if line["logger"] == "didmos.access"}) == 3  # one replaced
    assert any(line["logger"] == "gunicorn.error" for line in lines)  # gunicorn's own lines are JSON too
    assert not list(scratch.glob("didmos-metrics-*"))  # removed on shutdown
