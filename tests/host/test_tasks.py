"""Task handlers run by a real rq worker against the test redis."""

import pytest
import redis
from rq.job import Job

from didmos_host import hookimpl
from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.records import TaskHandler
from didmos_host.tasks import enqueue, queue_names, run_worker

def record(payload, context):
    # rq runs each job in a forked work horse, so the effect is left in a file, not in memory
    with open(payload["log"], "a") as log:
        log.write(f"{payload['n']} {context.job_id}\n")
    return {"seen": payload["n"] * 2}


class Recorder:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.record", function=record, queue="test", retries=0)]


def test_enqueued_task_runs_in_a_worker_with_its_payload(didmos_overrides, tmp_path):
    host = Host.create(didmos_overrides, extra_plugins=[Recorder()])
    assert "test" in queue_names(host) and "default" in queue_names(host)
    log = tmp_path / "calls.log"
    job_id = enqueue(host, "test.record", {"n": 21, "log": str(log)})
    ping_id = enqueue(host, "didmos.ping", {"value": "hello"})
    run_worker(host, burst=True)
    connection = redis.Redis.from_url(host.settings.redis.url)
    assert Job.fetch(job_id, connection=connection).return_value() == {"seen": 42}
    assert log.read_text() == f"21 {job_id}\n"  # ran exactly once, with its own job id
    pong = Job.fetch(ping_id, connection=connection).return_value()
    assert pong["pong"] == "hello" and "didmos_ldap" in pong["plugins"]


def test_unknown_task_and_unsafe_payload_are_refused(didmos_overrides):
    host = Host.create(didmos_overrides)
    with pytest.raises(DidmosError, match="no task handler named 'nope'"):
        enqueue(host, "nope", {})
    with pytest.raises(DidmosError, match="not JSON-safe"):
        enqueue(host, "didmos.ping", {"value": object()})


def test_unreachable_redis_is_unavailable_not_a_crash(didmos_overrides):
    from didmos_host.errors import Unavailable
    from didmos_host.servers import free_port

    host = Host.create({**didmos_overrides, "redis": {"url": f"redis://127.0.0.1:{free_port()}/0"}})
    with pytest.raises(Unavailable, match="cannot be reached"):
        enqueue(host, "didmos.ping", {"value": 1})
    with pytest.raises(Unavailable, match="cannot be reached"):
        run_worker(host, burst=True)
