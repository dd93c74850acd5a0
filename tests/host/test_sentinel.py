"""Redis Sentinel: tasks go to the primary the sentinels name, before and after a failover.

Real processes on loopback: a primary redis-server, a replica, three sentinels (``redis-server
--sentinel``). The primary is killed with SIGKILL; the sentinels promote the replica and the same
settings reach it.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from dynaconf.vendor import toml
from rq.job import Job

from didmos_host import hookimpl
from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.records import TaskHandler
from didmos_host.sentinel import connect_redis, describe_redis, sentinel_addresses
from didmos_host.servers import RedisSentinelServer, RedisServer, free_port, stop_process
from didmos_host.tasks import connect, enqueue, run_worker
from didmos_host.testing import wait_for

SERVICE = "didmos-test"


def record(payload, context):
    with open(payload["log"], "a") as log:  # the work horse is a forked process: leave the effect in a file
        log.write(f"{payload['n']}\n")
    return {"seen": payload["n"]}


class SentinelRecorder:
    @hookimpl
    def didmos_task_handlers(self):
        return [TaskHandler(name="test.sentinel-record", function=record, queue="sentinel-test", retries=0)]




def _info(port: int, section: str) -> dict:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return client.info(section)
    except redis.RedisError:
        return {}
    finally:
        client.close()


@pytest.fixture
def sentinel_topology(tmp_path):
    """A primary, its replica and three sentinels (quorum 2) that know each other; all stopped after."""
    primary = RedisServer(tmp_path / "primary", port=free_port(), persistence=False)
    replica_port = free_port()
    replica = RedisServer(tmp_path / "replica", port=replica_port, persistence=False,
                          options=("--replicaof", "127.0.0.1", "0"))  # set below, once the primary runs
    sentinels = []
    try:
        primary.start()
        replica.options = ("--replicaof", "127.0.0.1", str(primary.port))
        replica.start()
        wait_for(lambda: _info(replica.port, "replication").get("master_link_status") == "up", 15, "replication")
        sentinels = [RedisSentinelServer(tmp_path / f"sentinel{index}", port=free_port(), primary_port=primary.port,
                                         service=SERVICE, quorum=2, down_after_ms=1000, failover_timeout_ms=3000)
                     for index in range(3)]
        for sentinel in sentinels:
            sentinel.start()

        def ready():
            for sentinel in sentinels:
                client = redis.Redis(host="127.0.0.1", port=sentinel.port, socket_timeout=1)
                try:
                    state = client.sentinel_master(SERVICE)
                    replicas = client.sentinel_slaves(SERVICE)
                finally:
                    client.close()
                if int(state.get("num-other-sentinels", 0)) < 2 or not replicas:
                    return False
            return True

        wait_for(ready, 30, "the sentinels finding each other and the replica")
        yield primary, replica, sentinels
    finally:
        for server in [*sentinels, replica, primary]:
            server.stop()


@pytest.mark.slow
def test_tasks_run_through_the_primary_before_and_after_a_failover(sentinel_topology, didmos_overrides, tmp_path):
    primary, replica, sentinels = sentinel_topology
    overrides = {**didmos_overrides, "redis": {
        "url": "redis://127.0.0.1:1/0",  # host and port are not used with sentinels; the db is
        "sentinels": [sentinel.address for sentinel in sentinels], "sentinel_service": SERVICE}}
    host = Host.create(overrides, extra_plugins=[SentinelRecorder()])
    assert describe_redis(host.settings).startswith(f"the primary of Sentinel service {SERVICE!r}")
    log = tmp_path / "calls.log"
    long_lived = connect_redis(host.settings, socket_timeout=2, socket_connect_timeout=2)  # as the issuer keeps one

    # A long-running `didmos worker` with the same settings, which must find the new primary by itself.
    settings = tmp_path / "node.toml"
    settings.write_text(toml.dumps(overrides))
    worker_log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "worker", "--queue", "default"],
                              stdout=worker_log, stderr=subprocess.STDOUT,
                              env={**os.environ, "DIDMOS_SETTINGS_FILES": str(settings)})
    try:
        first = enqueue(host, "test.sentinel-record", {"n": 1, "log": str(log)})
        assert run_worker(host, burst=True, queues=["sentinel-test"])
        assert Job.fetch(first, connection=connect(host)).return_value() == {"seen": 1}
        assert log.read_text() == "1\n"
        assert long_lived.set("before", "1") and _info(primary.port, "keyspace")  # written to the first primary
        ping = enqueue(host, "didmos.ping", {"value": "before"})
        wait_for(lambda: (Job.fetch(ping, connection=connect(host)).return_value() or {}).get("pong") == "before", 30,
              "the long-running worker's first ping")

        os.kill(primary.pid, signal.SIGKILL)
        primary.stop()  # reaps it
        killed = time.monotonic()
        wait_for(lambda: all(s.primary() == ("127.0.0.1", replica.port) for s in sentinels), 40,
              "the failover to the replica")
        print(f"\nfailover done {time.monotonic() - killed:.1f}s after the SIGKILL")

        ping = enqueue(host, "didmos.ping", {"value": "after"})
        wait_for(lambda: (Job.fetch(ping, connection=connect(host)).return_value() or {}).get("pong") == "after", 60,
              "the long-running worker's ping through the new primary")
        print(f"the long-running worker ran a task {time.monotonic() - killed:.1f}s after the SIGKILL")
    finally:
        stop_process(worker, 20)
        worker_log.close()

    second = enqueue(host, "test.sentinel-record", {"n": 2, "log": str(log)})
    assert run_worker(host, burst=True, queues=["sentinel-test"])
    assert log.read_text() == "1\n2\n"
    direct = redis.Redis(host="127.0.0.1", port=replica.port)
    try:
        assert Job.fetch(second, connection=direct).return_value() == {"seen": 2}  # it went to the new primary
        assert _info(replica.port, "replication")["role"] == "master"
        # A client made before the failover reaches the new primary too (redis-py retries once it asked again).
        for _ in range(3):
            try:
                long_lived.set("after", "2")
                break
            except redis.ConnectionError:
                time.sleep(0.5)
        assert direct.get("after") == b"2"
    finally:
        direct.close()


def test_sentinel_addresses_are_checked():
    assert sentinel_addresses(["10.0.0.5:26379", "[::1]:26380"]) == [("10.0.0.5", 26379), ("::1", 26380)]
    assert sentinel_addresses("a:1, b:2") == [("a", 1), ("b", 2)]
    for bad in (["10.0.0.5"], ["a:0"], "a:b", [1]):
        with pytest.raises(ValueError, match="host:port"):
            sentinel_addresses(bad)
    with pytest.raises(ConfigError, match="redis.sentinels must be a list of 'host:port' strings"):
        Host.create({"redis": {"sentinels": ["nowhere"]}})


def test_without_sentinels_the_url_is_used_as_before():
    host = Host.create({"redis": {"url": "redis://127.0.0.1:6390/3"}})
    client = connect_redis(host.settings)
    assert client.connection_pool.connection_kwargs["port"] == 6390
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert describe_redis(host.settings) == "redis://127.0.0.1:6390/3"


def test_messages_do_not_carry_the_redis_password():
    host = Host.create({"redis": {"url": "redis://:hunter2@127.0.0.1:6390/0"}})
    assert describe_redis(host.settings) == "redis://:********@127.0.0.1:6390/0"


def test_a_worker_that_loses_redis_outside_its_dequeue_starts_again(didmos_overrides, monkeypatch, caplog):
    """rq's worker dies when a heartbeat right after a dequeue finds the primary gone (seen in the
    failover test, depending on timing); `didmos worker` then starts another one."""
    from didmos_host import tasks

    calls = []

    def work(self, **options):
        calls.append(self)
        if len(calls) == 1:
            raise redis.ConnectionError("Error while reading from 127.0.0.1:6379 : (104, 'Connection reset by peer')")
        return True

    monkeypatch.setattr(tasks.RequestIdWorker, "work", work, raising=False)  # the mixin of both worker classes
    started = time.monotonic()
    assert run_worker(Host.create(didmos_overrides)) is True
    assert len(calls) == 2 and calls[0] is not calls[1] and time.monotonic() - started >= 2
    assert "lost the task queue at redis://127.0.0.1:" in caplog.text
    assert "starting the worker again in 2 s" in caplog.text
