"""The outbox: a task is stored before it is queued, runs once, and survives redis being down.

Against a slapd and a redis of this module's own (the dispatcher looks at every open task, so no
other module's tasks may be in sight) and real rq workers: ``run_worker(burst=True)`` forks a work
horse per job, as ``didmos worker`` does.
"""

import threading
import time
import uuid
from pathlib import Path

import outbox_handlers
import pytest
import redis
from rq import Queue
from rq.job import Job

from didmos_host.app import create_app
from didmos_host.errors import AlreadyExists, DidmosError
from didmos_host.host import Host
from didmos_host.tasks import enqueue, run_worker
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth
from didmos_tasks.outbox import RUNNER, Lease, submit

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


HANDLERS = outbox_handlers  # loaded by conftest.py


@pytest.fixture
def host(overrides, own_redis):
    host = Host.create(overrides, extra_plugins=[HANDLERS])
    yield host
    host.service("directory").close()


@pytest.fixture(scope="module")
def client(overrides):
    return create_app(extra_plugins=[HANDLERS], **overrides).test_client()


def work(overrides):
    """Run a burst worker until the queues are empty, with a host of its own (one that has not talked to
    the directory: its work horses must not inherit the test's LDAP connections)."""
    worker = Host.create(overrides, extra_plugins=[HANDLERS])
    try:
        run_worker(worker, burst=True)
    finally:
        worker.service("directory").close()


def runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_a_task_is_stored_queued_under_its_id_and_run_once(host, overrides, tmp_path):
    log = tmp_path / "runs.log"
    task = host.service("outbox").submit("test.record", {"log": str(log), "n": 7}, actor="cn=someone,dc=de")
    # stored and queued in one write: the entry stays pending until a worker claims it
    assert (task.state, task.attempts, task.actor) == ("pending", 0, "cn=someone,dc=de")
    entry = host.service("directory").get(host.service("outbox").dn(task.id), ["objectClass", "didmosTaskHandler"])
    assert entry.values("objectClass") == ["didmosTask"] and entry.first("didmosTaskHandler") == "test.record"
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    assert Job.fetch(task.id, connection=connection).func_name == RUNNER  # the job id is the task id

    work(overrides)

    done = host.service("outbox").get(task.id)
    assert (done.state, done.attempts, done.result, done.error) == ("done", 1, {"seen": 7}, None)
    assert done.started and done.finished and done.submitted
    assert runs(log) == [task.id]


def test_queueing_a_task_twice_runs_it_once(host, overrides, tmp_path):
    """rq refuses a second job with an id it holds (``unique``): a double dispatch queues the task once."""
    log = tmp_path / "runs.log"
    outbox = host.service("outbox")
    task = outbox.submit("test.record", {"log": str(log)})
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    assert enqueue(host, "test.record", {"log": str(log)}, job_id=task.id, runner=RUNNER) == task.id
    outbox._queue(task)  # what a second dispatcher would do
    assert Queue("test", connection=connection).job_ids.count(task.id) == 1

    work(overrides)

    assert runs(log) == [task.id]


def test_a_delivery_that_finds_its_task_done_does_nothing(host, overrides, tmp_path):
    """A job delivered again after its task was done (a crash after the handler, redis replaying) returns."""
    log = tmp_path / "runs.log"
    outbox = host.service("outbox")
    task = outbox.submit("test.record", {"log": str(log), "n": 1})
    work(overrides)
    assert outbox.get(task.id).state == "done"

    outbox._queue(outbox.get(task.id), replace=True)  # the same job once more
    work(overrides)

    again = outbox.get(task.id)
    assert (again.state, again.attempts, again.result) == ("done", 1, {"seen": 1})
    assert runs(log) == [task.id]


def test_of_claimers_racing_for_one_task_exactly_one_wins(host, overrides, tmp_path):
    """The claim takes the lease and counts the attempt in one redis script: of four deliveries at once,
    one gets attempt 1, the others nothing; the task shows running with one attempt while the lease is held,
    and no LDAP write was made for it."""
    outbox = host.service("outbox")
    task = outbox.submit("test.record", {"log": str(tmp_path / "runs.log")})
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    start, results = threading.Barrier(4), []

    def claim():
        start.wait()
        results.append(Lease(connection, task.id, 30).claim())

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0, 0, 0, 1]
    shown = outbox.get(task.id)
    assert (shown.state, shown.attempts) == ("running", 1)
    stored = outbox.find(task.id, live=False)
    assert (stored.state, stored.attempts, stored.version) == ("pending", 0, task.version)
    assert [t.id for t in outbox.list(state="running")] == [task.id] and task.id not in [
        t.id for t in outbox.list(state="pending")]
    assert Lease(connection, task.id, 30).claim() == 0  # held: nobody else takes it


def test_an_idempotency_key_gives_one_task(host, tmp_path):
    key = f"order-{uuid.uuid4()}"
    payload = {"log": str(tmp_path / "runs.log")}
    first = submit(host, "test.record", payload, key=key)
    assert submit(host, "test.record", payload, key=key) == first
    assert host.service("outbox").get(first).key == key
    with pytest.raises(AlreadyExists, match="another payload"):
        submit(host, "test.record", {**payload, "n": 2}, key=key)
    assert submit(host, "didmos.ping", {}, key=key) != first  # keys are per handler


def test_unknown_handlers_and_unsafe_payloads_are_refused_before_anything_is_stored(host):
    outbox = host.service("outbox")
    before = len(outbox.list())
    with pytest.raises(DidmosError, match="no task handler named 'nope'"):
        outbox.submit("nope", {})
    with pytest.raises(DidmosError, match="not JSON-safe"):
        outbox.submit("test.record", {"when": object()})
    assert len(outbox.list()) == before


def test_a_task_submitted_while_redis_is_down_is_stored_and_runs_once_redis_is_back(client, host, overrides,
                                                                                     own_redis, tmp_path):
    log = tmp_path / "runs.log"
    own_redis.stop()
    try:
        response = client.post("/tasks/v1/tasks", json={"name": "test.record", "payload": {"log": str(log)}},
                               headers=ADMIN)
        assert response.status_code == 202, response.json
        task = response.json
        assert task["state"] == "pending" and task["attempts"] == 0 and task["submitted"].endswith("Z")
        assert response.headers["Location"].endswith(f"/tasks/v1/tasks/{task['id']}")
        assert client.get(f"/tasks/v1/tasks/{task['id']}", headers=ADMIN).json["state"] == "pending"
        assert host.service("outbox").dispatch().skipped.startswith("redis cannot be reached")
    finally:
        own_redis.start()

    work(overrides)  # the worker queues the dispatcher first; it queues the task; the worker runs it

    done = client.get(f"/tasks/v1/tasks/{task['id']}", headers=ADMIN).json
    assert (done["state"], done["attempts"]) == ("done", 1)
    assert runs(log) == [task["id"]]


def test_submitting_over_the_api(client, tmp_path):
    body = {"name": "test.record", "payload": {"log": str(tmp_path / "runs.log")}, "key": f"k-{uuid.uuid4()}"}
    first = client.post("/tasks/v1/tasks", json=body, headers=ADMIN)
    again = client.post("/tasks/v1/tasks", json=body, headers=ADMIN)
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"] and first.json["actor"].startswith(f"didmosUUID={SUPERADMIN_ID},")
    assert client.post("/tasks/v1/tasks", json={"name": "nope"}, headers=ADMIN).status_code == 400
    assert client.post("/tasks/v1/tasks", json={"payload": {}}, headers=ADMIN).status_code == 422
    assert client.post("/tasks/v1/tasks", json=body).status_code == 401


def test_one_heartbeat_keeps_every_lease_of_a_process_and_only_while_held(overrides):
    """Leases of 0.3 s held for 1.2 s by two tasks of one process stay held (renewed every 0.1 s by one
    thread); one given up is left to expire."""
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    first, second = (Lease(connection, str(uuid.uuid4()), 0.3) for _ in range(2))
    assert first.claim() == 1 and second.claim() == 1
    with first.kept():
        with second.kept():
            time.sleep(0.6)
            assert connection.exists(first.key, second.key) == 2
        time.sleep(0.6)
        assert connection.exists(first.key) == 1 and not connection.exists(second.key)
    threads = [thread for thread in threading.enumerate() if thread.name == "didmos-lease-heartbeat"]
    assert len(threads) == 1
