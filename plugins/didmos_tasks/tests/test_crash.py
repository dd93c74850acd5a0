"""A worker that dies mid-task, and deliveries redis lost: the task runs again and takes effect once.

The crash is real: a worker process (what ``didmos worker`` runs: ``run_worker(Host.create())``, here with
the test handlers as an extra plugin, because no setting or variable loads a plugin module that is
not installed) is SIGKILLed with its work horse while the handler sleeps after its effect; a second
worker finds the task's lease expired and runs it again.
"""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import ldap
import outbox_handlers
import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from didmos_host.testing import wait_for
from didmos_tasks.outbox import LEASE_PREFIX, Lease

HERE = Path(__file__).parent
#: A worker as `didmos worker` runs it, with the test handlers (outbox_handlers.py, on PYTHONPATH) loaded.
WORKER = ("import outbox_handlers\n"
          "from didmos_host.host import Host\n"
          "from didmos_host.tasks import run_worker\n"
          "run_worker(Host.create(extra_plugins=[outbox_handlers]))\n")


HANDLERS = outbox_handlers  # loaded by conftest.py


@pytest.fixture
def effect_entry(slapd, host):
    """An entry the handler adds its task id to (``description``)."""
    dn = f"cn=effect-{uuid.uuid4().hex[:8]},ou=system,{host.settings.ldap.base_dn}"
    conn = slapd.admin_connection()
    conn.add_s(dn, [("objectClass", [b"applicationProcess"]), ("cn", [ldap.dn.str2dn(dn)[0][0][1].encode()])])
    conn.unbind_s()
    return dn


@pytest.fixture
def workers(overrides, tmp_path):
    """``start(mode)`` a worker process (``worker.mode``, default ``fork``; its output in ``worker-N.log``); every
    one still running is killed at the end."""
    settings = tmp_path / "settings.toml"
    settings.write_text("".join(
        f"[{namespace}]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
        for namespace, values in overrides.items()))
    env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(settings), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    started = []

    def start(mode: str = "fork") -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        with open(log, "w") as out:
            process = subprocess.Popen([sys.executable, "-c", WORKER], stdout=out, stderr=subprocess.STDOUT,
                                       env={**env, "DIDMOS_WORKER__MODE": mode}, start_new_session=True)
        started.append(process)
        return process, log

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # rq's warm shutdown
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()




def descriptions(host, dn) -> list[str]:
    return host.service("directory").get(dn, ["description"]).values("description")


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_task_whose_worker_is_killed_mid_task_runs_again_and_takes_effect_once(host, workers, effect_entry,
                                                                                  tmp_path, mode):
    outbox = host.service("outbox")
    log = tmp_path / "runs.log"
    first, first_log = workers(mode)
    task = outbox.submit("test.slow-effect", {"log": str(log), "entry": effect_entry, "sleep": 60})
    started = wait_for(lambda: log.exists() and log.read_text().split(), 20, "the first run to start")
    runner = int(started[1])
    assert (runner == first.pid) == (mode == "simple")  # a forked work horse, or the worker itself
    wait_for(lambda: descriptions(host, effect_entry), 10, "the effect of the first run")

    # The machine dies: the worker and its work horse (a process group of its own) at once, no cleanup.
    os.kill(first.pid, signal.SIGKILL)
    if runner != first.pid:
        os.kill(runner, signal.SIGKILL)
    first.wait(10)
    running = outbox.get(task.id)
    assert (running.state, running.attempts) == ("running", 1)

    second, second_log = workers(mode)
    done = wait_for(lambda: (t := outbox.get(task.id)).state == "done" and t, 20, "the task to be done")

    assert done.attempts == 2 and done.result == "effect applied"
    assert descriptions(host, effect_entry) == [task.id]  # the handler ran twice, its effect is there once
    lines = log.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "start", "done"] and lines[0] != lines[1]
    assert f"task {task.id} delivered again: attempt 1 did not finish" in second_log.read_text()
    assert second.poll() is None  # the second worker lives on; the fixture stops it


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_task_longer_than_its_lease_keeps_it_and_runs_once(host, workers, effect_entry, tmp_path, mode):
    """The heartbeat renews the lease: the dispatchers a second worker runs meanwhile (every 0.5 s here, the
    lease 1 s) leave a live task alone."""
    outbox = host.service("outbox")
    log = tmp_path / "runs.log"
    logs = [workers(mode)[1], workers(mode)[1]]
    task = outbox.submit("test.slow-effect", {"log": str(log), "entry": effect_entry, "sleep": 2.5})
    wait_for(lambda: log.exists(), 20, "the task to start")
    dispatched = sum(path.read_text().count("'didmos_tasks.dispatch'") for path in logs)
    done = wait_for(lambda: (t := outbox.get(task.id)).state == "done" and t, 20, "the task to be done")
    assert done.attempts == 1
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["start", "done"]
    assert sum(path.read_text().count("'didmos_tasks.dispatch'") for path in logs) >= dispatched + 3


work = outbox_handlers.burst_worker


def test_a_task_whose_job_rq_gave_up_on_is_delivered_again(host, overrides, tmp_path):
    """What rq's cleanup of its started-job registry does, minutes after a worker died: the job moves to the
    failed registry as abandoned, while the entry still says running (as earlier versions claimed a task:
    an upgrade must not strand their tasks)."""
    outbox = host.service("outbox")
    log = tmp_path / "runs.log"
    task = outbox.submit("test.flaky", {"log": str(log), "fail_while": str(tmp_path / "no-such-flag")})
    claimed = outbox._change(task, State="running", Attempts="1")  # a worker claimed it, then died
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    job = Job.fetch(task.id, connection=connection)
    with connection.pipeline() as pipeline:
        job.set_status(JobStatus.FAILED, pipeline=pipeline)
        FailedJobRegistry(job.origin, connection=connection).add(
            job, exc_string="Moved to FailedJobRegistry, due to AbandonedJobError", pipeline=pipeline)
        pipeline.execute()
    connection.lrem(f"rq:queue:{job.origin}", 0, task.id)

    report = outbox.dispatch()
    assert report.redelivered == 1 and outbox.get(task.id).state == "queued"
    work(overrides)

    done = outbox.get(task.id)
    assert (done.state, done.attempts) == ("done", 2) and claimed.attempts == 1
    assert log.read_text().split() == [task.id]


def test_tasks_redis_forgot_are_queued_again(host, overrides, own_redis, tmp_path):
    """redis restarted without its data: queued tasks are in the outbox only; the dispatcher queues them again."""
    outbox = host.service("outbox")
    log = tmp_path / "runs.log"
    tasks = [outbox.submit("test.record", {"log": str(log), "n": n}) for n in range(3)]
    own_redis.stop()
    own_redis.start()  # no persistence: empty

    work(overrides)  # the dispatcher first, then what it queued

    assert {outbox.get(task.id).state for task in tasks} == {"done"}
    assert sorted(log.read_text().split()) == sorted(task.id for task in tasks)


def test_attempts_recorded_in_the_entry_count_when_redis_forgot_them(host, overrides, own_redis, tmp_path):
    """A failed attempt is written to the entry; redis restarted empty then forgot its count and the job: the
    dispatcher gives redis the entry's count back, so the next attempt is the second, not a first again."""
    outbox = host.service("outbox")
    log, flag = tmp_path / "runs.log", tmp_path / "fail"
    flag.touch()
    task = outbox.submit("test.flaky-slowly", {"log": str(log), "fail_while": str(flag)})
    work(overrides)  # attempt 1 fails; rq would run it again in 30 s
    failed_once = outbox.get(task.id)
    assert (failed_once.state, failed_once.attempts) == ("queued", 1)
    own_redis.stop()
    own_redis.start()  # no persistence: empty
    flag.unlink()

    work(overrides)

    done = outbox.get(task.id)
    assert (done.state, done.attempts) == ("done", 2)
    assert log.read_text().split() == [task.id] * 2


def test_a_retry_needs_redis_and_changes_nothing_without_it(host, overrides, own_redis, tmp_path):
    """retry forgets the attempts redis counted before the entry starts over; without redis it is refused."""
    from didmos_host.errors import Unavailable

    outbox = host.service("outbox")
    task = outbox.submit("test.refuse", {"log": str(tmp_path / "runs.log"), "why": "no"})
    work(overrides)
    failed = outbox.get(task.id)
    assert failed.state == "failed"
    own_redis.stop()
    try:
        with pytest.raises(Unavailable, match="cannot be retried while redis cannot be reached"):
            outbox.retry(task.id)
        assert outbox.find(task.id, live=False) == failed
    finally:
        own_redis.start()


def die_mid_task(connection, task_id: str, attempt: int) -> None:
    """What a worker that takes the task and is killed leaves behind, once its lease has expired."""
    assert Lease(connection, task_id, 60).claim() == attempt
    connection.delete(LEASE_PREFIX + task_id)
    Job.fetch(task_id, connection=connection).delete()


def test_a_task_whose_worker_keeps_dying_fails_once_its_attempts_are_used(host, overrides):
    """A task that kills its worker every time (out of memory, say) must not be delivered for ever; but a
    crash does not use up the only attempt of a handler without retries: it is delivered again, up to
    LOST_ATTEMPTS_ALLOWED more times."""
    from didmos_tasks.outbox import LOST_ATTEMPTS_ALLOWED

    outbox = host.service("outbox")
    task = outbox.submit("test.record", {"log": "/dev/null"})
    connection = redis.Redis.from_url(overrides["redis"]["url"])
    # test.record allows one attempt (retries=0); a worker claims it (lease and count in redis, nothing
    # written to the entry) and dies, again and again: its lease expires (deleted here), its job stays started.
    for attempt in range(1, LOST_ATTEMPTS_ALLOWED + 1):
        die_mid_task(connection, task.id, attempt)
        assert outbox.dispatch().redelivered == 1  # delivered again despite retries=0
        queued = outbox.get(task.id)
        assert (queued.state, queued.attempts) == ("queued", attempt)
        assert queued.error == f"attempt {attempt} did not finish: its worker stopped without a result (killed?)"
    die_mid_task(connection, task.id, LOST_ATTEMPTS_ALLOWED + 1)

    assert outbox.dispatch().failed == 1
    failed = outbox.get(task.id)
    assert failed.state == "failed" and failed.attempts == LOST_ATTEMPTS_ALLOWED + 1
    assert failed.error.startswith(f"attempt {LOST_ATTEMPTS_ALLOWED + 1} did not finish")
    assert failed.error.endswith("no attempts left")


@pytest.mark.parametrize("mode", ["fork", "simple"])
def test_a_task_without_retries_whose_worker_is_killed_runs_again(host, workers, effect_entry, tmp_path, mode):
    """test.record allows no retry (retries=0): the SIGKILL of its worker still does not lose the task."""
    outbox = host.service("outbox")
    log = tmp_path / "runs.log"
    first, _ = workers(mode)
    task = outbox.submit("test.slow-once", {"log": str(log), "entry": effect_entry, "sleep": 60})
    wait_for(lambda: log.exists() and log.read_text().split(), 20, "the first run to start")
    runner = int(log.read_text().split()[1])
    os.kill(first.pid, signal.SIGKILL)
    if runner != first.pid:
        os.kill(runner, signal.SIGKILL)
    first.wait(10)
    second, _ = workers(mode)
    done = wait_for(lambda: (t := outbox.get(task.id)).state == "done" and t, 30, "the task to be done")
    assert done.attempts == 2 and descriptions(host, effect_entry) == [task.id]
