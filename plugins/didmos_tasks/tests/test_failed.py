"""Failed attempts: back-off, the failed state once no attempt is left, the failed list and retry (API, CLI),
and who may see them (the PDP: resource type ``Task``, the superadmin by default)."""

import json
import time
import uuid

import outbox_handlers
import pytest
import redis
from click.testing import CliRunner
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry

from didmos_host.app import create_app
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


HANDLERS = outbox_handlers  # loaded by conftest.py


@pytest.fixture(scope="module")
def client(overrides):
    return create_app(extra_plugins=[HANDLERS], **overrides).test_client()


@pytest.fixture(scope="module")
def standard_user(slapd, host):
    """Basic credentials of a user with the role standarduser (made as rootdn, like the seeds)."""
    user_id = str(uuid.uuid4())
    conn = slapd.admin_connection()
    conn.add_s(f"didmosUUID={user_id},{host.settings.ldap.people_dn}", [
        ("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
        ("didmosUUID", [user_id.encode()]), ("uid", [f"u-{user_id[:8]}".encode()]), ("cn", [b"u"]), ("sn", [b"u"]),
        ("userPassword", [b"pw"]),
        ("didmosRoleAssignment", [f"cn=standarduser,ou=roles,{host.settings.pdp.rbac_dn}".encode()])])
    conn.unbind_s()
    return basic_auth(user_id, "pw")


work = outbox_handlers.burst_worker


def failed_task(host, overrides, tmp_path):
    """A test.flaky task run until it failed for good; the flag that makes it fail, and the task."""
    flag = tmp_path / "fail"
    flag.touch()
    task = host.service("outbox").submit("test.flaky", {"log": str(tmp_path / "runs.log"), "fail_while": str(flag)})
    work(overrides)
    return flag, host.service("outbox").get(task.id)


def test_a_failing_task_runs_retries_plus_one_times_then_is_failed(host, overrides, tmp_path):
    flag, task = failed_task(host, overrides, tmp_path)
    assert (task.state, task.attempts) == ("failed", 3)  # retries=2: three attempts
    assert task.error == f"RuntimeError: flag {flag} is set" and task.finished
    assert (tmp_path / "runs.log").read_text().split() == [task.id] * 3
    job = Job.fetch(task.id, connection=redis.Redis.from_url(overrides["redis"]["url"]))
    assert job.get_status() == JobStatus.FAILED and not job.retries_left  # rq does not try again either


def test_a_permanent_error_fails_the_task_at_once_without_retries(host, overrides, tmp_path):
    """A handler that raises PermanentTaskError (say, an SMTP 5xx) is not retried: one attempt of four."""
    log = tmp_path / "runs.log"
    task = host.service("outbox").submit("test.refuse", {"log": str(log), "why": "the mailbox does not exist"})
    work(overrides)
    failed = host.service("outbox").get(task.id)
    assert (failed.state, failed.attempts) == ("failed", 1) and failed.finished
    assert failed.error == "PermanentTaskError: the mailbox does not exist; retrying cannot help"
    assert log.read_text().split() == [task.id]
    job = Job.fetch(task.id, connection=redis.Redis.from_url(overrides["redis"]["url"]))
    assert job.get_status() == JobStatus.FAILED and not job.retries_left  # rq does not try again either
    assert host.service("outbox").dispatch().redelivered == 0  # failed is final until someone retries it


def test_a_failed_attempt_waits_for_the_handlers_back_off(host, overrides, tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    before = time.time()
    task = host.service("outbox").submit("test.flaky-slowly",
                                         {"log": str(tmp_path / "runs.log"), "fail_while": str(flag)})
    work(overrides)  # the first attempt; the second is due in 30 s (retry_intervals=(30, 60))

    waiting = host.service("outbox").get(task.id)
    assert (waiting.state, waiting.attempts, waiting.error) == ("queued", 1, f"RuntimeError: flag {flag} is set")
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    assert Job.fetch(task.id, connection=connection).get_status() == JobStatus.SCHEDULED
    due = connection.zscore(ScheduledJobRegistry("default", connection=connection).key, task.id)
    assert before + 29 <= due <= time.time() + 31
    assert host.service("outbox").dispatch().redelivered == 0  # waiting for its back-off is not lost


def test_the_failed_list_and_retry_over_the_api(client, host, overrides, tmp_path):
    flag, task = failed_task(host, overrides, tmp_path)
    listed = client.get("/tasks/v1/tasks?state=failed", headers=ADMIN)
    assert listed.status_code == 200
    failed = {item["id"]: item for item in listed.json}
    assert failed[task.id]["error"] == task.error and failed[task.id]["attempts"] == 3
    assert all(item["state"] == "failed" for item in listed.json)
    one = client.get(f"/tasks/v1/tasks/{task.id}", headers=ADMIN)
    assert one.status_code == 200 and one.json["payload"]["fail_while"] == str(flag)

    flag.unlink()  # what was wrong is fixed
    retried = client.post(f"/tasks/v1/tasks/{task.id}/retry", headers=ADMIN)
    assert retried.status_code == 202, retried.json
    assert (retried.json["state"], retried.json["attempts"]) == ("pending", 0)
    work(overrides)

    done = client.get(f"/tasks/v1/tasks/{task.id}", headers=ADMIN).json
    assert (done["state"], done["attempts"], done["result"], done["error"]) == ("done", 1, "recovered", None)
    assert task.id not in {item["id"] for item in client.get("/tasks/v1/tasks?state=failed", headers=ADMIN).json}
    assert client.post(f"/tasks/v1/tasks/{task.id}/retry", headers=ADMIN).status_code == 409  # done: nothing to retry


def test_unknown_and_malformed_ids_and_states(client):
    assert client.get(f"/tasks/v1/tasks/{uuid.uuid4()}", headers=ADMIN).status_code == 404
    assert client.get("/tasks/v1/tasks/not-a-uuid", headers=ADMIN).status_code == 404
    assert client.post(f"/tasks/v1/tasks/{uuid.uuid4()}/retry", headers=ADMIN).status_code == 404
    assert client.get("/tasks/v1/tasks?state=lost", headers=ADMIN).status_code == 422


def test_only_who_may_act_on_tasks_sees_them(client, host, overrides, standard_user, tmp_path):
    _, task = failed_task(host, overrides, tmp_path)
    for method, path in [("GET", "/tasks/v1/tasks?state=failed"), ("GET", f"/tasks/v1/tasks/{task.id}"),
                         ("GET", f"/tasks/v1/tasks/{uuid.uuid4()}"), ("POST", f"/tasks/v1/tasks/{task.id}/retry"),
                         ("POST", "/tasks/v1/tasks")]:
        body = {"json": {"name": "test.record", "payload": {}}} if path.endswith("/tasks") else {}
        assert client.open(path, method=method, **body).status_code == 401, path
        denied = client.open(path, method=method, headers=standard_user, **body)
        assert denied.status_code == 403, (path, denied.json)
        assert denied.json["detail"].startswith("not allowed to ")
    assert host.service("outbox").get(task.id).state == "failed"  # the refused retry changed nothing


def test_the_failed_list_and_retry_on_the_command_line(host, overrides, tmp_path, monkeypatch):
    import didmos_tasks.plugin
    from didmos_tasks.plugin import tasks as cli  # `didmos tasks`

    flag, task = failed_task(host, overrides, tmp_path)
    monkeypatch.setattr(didmos_tasks.plugin, "_outbox", lambda: host.service("outbox"))  # the test's host
    runner = CliRunner()

    listed = runner.invoke(cli, ["failed"])
    assert listed.exit_code == 0, listed.output
    assert any(line.startswith(f"{task.id}  failed   test.flaky  attempts=3") for line in listed.output.splitlines())
    as_json = json.loads(runner.invoke(cli, ["failed", "--json"]).output)
    assert task.id in {item["id"] for item in as_json}

    flag.unlink()
    retried = runner.invoke(cli, ["retry", task.id])
    assert retried.exit_code == 0 and retried.output == f"task {task.id} is pending again\n"
    again = runner.invoke(cli, ["retry", task.id])
    assert again.exit_code == 2 and "only failed tasks can be retried" in again.output
    work(overrides)
    assert json.loads(runner.invoke(cli, ["show", task.id]).output)["state"] == "done"
