"""The pool's choice of the provider to write to: failover, failback after catch-up, and the writer that
every node agrees on through redis (WriterAgreement). No slapd here: connections and contextCSN values
are stand-ins; tests/host/test_replication.py runs the same logic against real providers."""

from __future__ import annotations

import json
import logging
import time

import ldap
import pytest
import redis

from didmos_ldap.pool import ConnectionPool, PoolSettings, WriterAgreement

URIS = ("ldap://one", "ldap://two")


class FakeRedis:
    """get/set of a dict; ``down`` makes every command fail as an unreachable redis does."""

    def __init__(self):
        self.values: dict[str, str] = {}
        self.down = False

    def get(self, key):
        if self.down:
            raise redis.ConnectionError("Connection refused")
        return self.values.get(key)

    def set(self, key, value):
        if self.down:
            raise redis.ConnectionError("Connection refused")
        self.values[key] = value


class FakeConnection:
    def __init__(self, index: int):
        self.index = index

    def unbind_ext_s(self):
        pass


class Directory:
    """Stand-in providers: which answer, and their contextCSN by server id."""

    def __init__(self):
        self.up = [True, True]
        self.csns: list[dict[str, str]] = [{"001": "a"}, {"001": "a"}]


@pytest.fixture
def world(monkeypatch):
    directory = Directory()

    def connect(self, index):
        if not directory.up[index]:
            raise ldap.SERVER_DOWN({"desc": "Can't contact LDAP server"})
        return FakeConnection(index)

    def context_csns(self, index):
        return dict(directory.csns[index]) if directory.up[index] else None

    def read_csns(self, conn):
        if not directory.up[conn.index]:
            raise ldap.SERVER_DOWN({"desc": "Can't contact LDAP server"})
        return dict(directory.csns[conn.index])

    monkeypatch.setattr(ConnectionPool, "_connect", connect)
    monkeypatch.setattr(ConnectionPool, "_context_csns", context_csns)
    monkeypatch.setattr(ConnectionPool, "_read_csns", read_csns)
    monkeypatch.setattr(ConnectionPool, "_stale", staticmethod(lambda conn: False))
    return directory


def make_pool(shared: FakeRedis | None, *, failback: float = 0.2, poll: float = 0.05, catchup: float = 0.3,
              confirm: float = 0.0, **options) -> ConnectionPool:
    agreement = WriterAgreement(lambda: shared, URIS, poll_seconds=poll) if shared is not None else None
    return ConnectionPool(PoolSettings(uris=URIS, bind_dn="cn=svc", bind_password="pw", failback_seconds=failback,
                                       catchup_seconds=catchup, confirm_seconds=confirm),
                          agreement=agreement, **options)


def use(pool: ConnectionPool) -> int:
    """One operation: the index of the URI its connection went to."""
    with pool.connection() as conn:
        return conn.index


def agreed(shared: FakeRedis) -> str | None:
    [raw] = shared.values.values() or [None]
    return json.loads(raw)["uri"] if raw else None


def test_a_failover_is_published_and_a_new_pool_starts_on_the_agreed_provider(world):
    shared = FakeRedis()
    first = make_pool(shared)
    assert use(first) == 0
    world.up[0] = False
    first.drop_idle()
    assert use(first) == 1
    assert agreed(shared) == URIS[1]

    world.up[0] = True  # provider 1 is back, but the nodes have moved to provider 2
    restarted = make_pool(shared)
    assert use(restarted) == 1


def test_a_pool_follows_a_failover_made_by_another_node(world):
    shared = FakeRedis()
    mine, other = make_pool(shared, failback=30), make_pool(shared, failback=30)
    assert use(mine) == use(other) == 0
    world.up[0] = False
    other.drop_idle()
    assert use(other) == 1
    world.up[0] = True  # this node never lost provider 1, yet it follows the others within poll_seconds
    time.sleep(0.06)
    assert use(mine) == 1


def test_failback_waits_until_the_first_provider_has_caught_up(world):
    shared = FakeRedis()
    pool = make_pool(shared, failback=0.1, poll=0.05)
    world.up[0] = False
    assert use(pool) == 1
    world.csns[1] = {"001": "a", "002": "b"}  # written to provider 2 while provider 1 was down
    world.up[0] = True
    time.sleep(0.15)
    for _ in range(5):
        assert use(pool) == 1  # provider 1 answers, but lacks provider 2's change
        time.sleep(0.03)
    assert agreed(shared) == URIS[1]
    world.csns[0] = dict(world.csns[1])  # replication caught up
    deadline = time.monotonic() + 5
    while use(pool) != 0:
        assert time.monotonic() < deadline, "no failback after catch-up"
        time.sleep(0.02)
    assert agreed(shared) == URIS[0]


def test_a_failback_is_announced_ahead_and_every_node_switches_at_the_same_time(world):
    shared = FakeRedis()
    leader, follower = make_pool(shared, failback=0.1, poll=0.1), make_pool(shared, failback=30, poll=0.1)
    world.up[0] = False
    assert use(leader) == 1
    time.sleep(0.11)
    assert use(follower) == 1  # it followed the failover
    world.up[0] = True
    time.sleep(0.11)
    announced = time.monotonic()
    assert use(leader) == 1  # the failback is announced, not made yet
    value = json.loads(next(iter(shared.values.values())))
    assert value["uri"] == URIS[0] and value["at"] > time.time() + 0.2
    switched = {}
    deadline = time.monotonic() + 3
    while len(switched) < 2 and time.monotonic() < deadline:
        for name, pool in (("leader", leader), ("follower", follower)):
            if name not in switched and use(pool) == 0:
                switched[name] = time.monotonic() - announced
        time.sleep(0.01)
    assert set(switched) == {"leader", "follower"}
    # both switch at the announced time (switch_seconds after the announcement), not before
    assert min(switched.values()) >= leader.agreement.switch_seconds - 0.05
    assert abs(switched["leader"] - switched["follower"]) < 0.1


def test_a_switch_waits_for_the_new_provider_to_catch_up(world):
    shared = FakeRedis()
    pool = make_pool(shared, failback=30, catchup=2.0)
    assert use(pool) == 0
    world.csns[0] = {"001": "c"}  # provider 1 has a change provider 2 has not received yet
    shared.values[pool.agreement.key] = json.dumps({"uri": URIS[1], "at": time.time()})
    time.sleep(0.06)
    started = time.monotonic()

    def replicate_later():
        time.sleep(0.3)
        world.csns[1] = {"001": "c"}

    import threading

    thread = threading.Thread(target=replicate_later)
    thread.start()
    assert use(pool) == 1
    thread.join()
    assert time.monotonic() - started >= 0.3


def test_without_redis_a_pool_decides_alone_and_says_so(world, caplog):
    shared = FakeRedis()
    shared.down = True
    pool = make_pool(shared, failback=0.1)
    with caplog.at_level(logging.WARNING, logger="didmos.ldap"):
        assert use(pool) == 0
        world.up[0] = False
        pool.drop_idle()
        assert use(pool) == 1
        world.up[0] = True
        time.sleep(0.15)
        deadline = time.monotonic() + 3
        while use(pool) != 0:  # failback by its own decision (provider 1 has caught up)
            assert time.monotonic() < deadline
            time.sleep(0.02)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("redis unreachable" in m for m in messages) == 1, messages

    shared.down = False  # redis is back: the pool publishes and follows again
    world.up[0] = False
    pool.drop_idle()
    assert use(pool) == 1
    assert agreed(shared) == URIS[1]


def test_a_pool_with_a_leader_uses_the_leaders_provider(world):
    shared = FakeRedis()
    main = make_pool(shared, failback=30)
    binds = ConnectionPool(PoolSettings(uris=URIS, bind_dn=None, bind_password=None), leader=main)
    assert use(main) == use(binds) == 0
    shared.values[main.agreement.key] = json.dumps({"uri": URIS[1], "at": time.time()})
    time.sleep(0.06)
    assert use(main) == 1
    time.sleep(0.11)
    assert use(binds) == 1


def test_an_agreement_on_an_unknown_uri_is_ignored(world, caplog):
    shared = FakeRedis()
    pool = make_pool(shared)
    shared.values[pool.agreement.key] = json.dumps({"uri": "ldap://elsewhere", "at": 0})
    with caplog.at_level(logging.WARNING, logger="didmos.ldap"):
        assert use(pool) == 0
    assert any("not a URI of directory.uri" in r.getMessage() for r in caplog.records)


def test_one_uri_needs_no_agreement():
    pool = ConnectionPool(PoolSettings(uris=URIS[:1], bind_dn=None, bind_password=None),
                          agreement=WriterAgreement(lambda: FakeRedis(), URIS[:1]))
    assert pool.agreement is None


def test_while_a_switch_waits_for_catch_up_no_thread_uses_the_provider_being_left(world):
    import threading

    shared = FakeRedis()
    pool = make_pool(shared, failback=30, catchup=2.0)
    assert use(pool) == 0
    world.csns[0] = {"001": "c"}  # provider 2 lacks a change of provider 1 until replicate() below
    shared.values[pool.agreement.key] = json.dumps({"uri": URIS[1], "at": time.time()})
    time.sleep(0.06)
    used: list[int] = []
    threads = [threading.Thread(target=lambda: used.append(use(pool))) for _ in range(4)]
    threads[0].start()
    time.sleep(0.05)  # the first thread is waiting for the catch-up; the others come meanwhile
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    assert used == []  # all wait
    world.csns[1] = {"001": "c"}
    for thread in threads:
        thread.join(5)
    assert used == [1, 1, 1, 1]


def test_a_switch_does_not_wait_for_changes_that_keep_arriving_from_the_new_provider(world, monkeypatch):
    """Under load, the provider being left keeps receiving the new one's changes (its contextCSN moves):
    that is no reason to wait; only changes the new provider lacks are."""
    shared = FakeRedis()
    pool = make_pool(shared, failback=30, catchup=3.0)
    assert use(pool) == 0
    counter = iter(range(10**6))

    def moving(self, index):  # provider 2 takes writes all the time; provider 1 follows them closely
        n = next(counter)
        return {"001": "a", "002": f"{n:09d}" if index == 1 else f"{max(0, n - 1):09d}"}

    monkeypatch.setattr(ConnectionPool, "_context_csns", moving)
    shared.values[pool.agreement.key] = json.dumps({"uri": URIS[1], "at": time.time()})
    time.sleep(0.06)
    started = time.monotonic()
    assert use(pool) == 1
    assert time.monotonic() - started < 1.0


def write(pool: ConnectionPool, world: Directory, csn: str) -> tuple[int, float]:
    """One write, made on the provider in use (its contextCSN for server id 001 becomes ``csn``): that
    provider's index and how long the write took to be answered."""
    started = time.monotonic()
    with pool.connection() as conn:
        conn.didmos_wrote = True
        world.csns[conn.index] = {**world.csns[conn.index], "001": csn}
        index = conn.index
    return index, time.monotonic() - started


def replicate_later(world: Directory, index: int, csn: str, seconds: float):
    import threading

    def run():
        time.sleep(seconds)
        world.csns[index] = {**world.csns[index], "001": csn}

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_write_is_answered_once_the_other_provider_has_it(world):
    pool = make_pool(None, confirm=2.0)
    assert write(pool, world, "b")[1] < 0.1  # provider 2 is not in sync yet (it lacks "b"): not waited for
    world.csns[1] = {"001": "b"}
    write(pool, world, "c")  # provider 2 had "b", what provider 1 had at an earlier write: in sync now
    world.csns[1] = {"001": "c"}
    thread = replicate_later(world, 1, "d", 0.3)
    index, took = write(pool, world, "d")
    thread.join()
    assert index == 0 and 0.25 <= took < 1.0


def test_a_provider_that_does_not_answer_or_lags_past_the_limit_is_not_waited_for(world):
    pool = make_pool(None, confirm=0.3)
    world.csns[1] = {"001": "b"}
    write(pool, world, "b")  # provider 2 has what provider 1 had: in sync
    assert write(pool, world, "c")[1] >= 0.25  # provider 2 never gets it: waited for up to the limit
    assert write(pool, world, "d")[1] < 0.1  # and no more until it has caught up
    world.csns[1] = {"001": "d"}
    write(pool, world, "e")  # caught up with "d" (where provider 1 was when it fell out): in sync again
    world.csns[1] = {"001": "e"}
    thread = replicate_later(world, 1, "f", 0.2)
    assert write(pool, world, "f")[1] >= 0.15
    thread.join()
    world.up[1] = False
    assert write(pool, world, "g")[1] < 0.1  # down: not waited for


def test_without_confirm_seconds_a_write_does_not_wait(world):
    pool = make_pool(None, confirm=0.0)
    for csn in "bcd":
        assert write(pool, world, csn)[1] < 0.1


def test_a_write_whose_provider_dies_before_another_has_it_is_not_acknowledged(world):
    from didmos_host.errors import Unavailable

    pool = make_pool(None, confirm=0.3)
    world.csns[1] = {"001": "b"}
    write(pool, world, "b")  # in sync
    import threading

    def kill_later():
        time.sleep(0.1)
        world.up[0] = False  # killed before provider 2 got "c", while the write waits for it

    thread = threading.Thread(target=kill_later)
    with pytest.raises(Unavailable, match="went away before another provider had the write"):
        with pool.connection() as conn:
            conn.didmos_wrote = True
            world.csns[0] = {"001": "c"}
            thread.start()
    thread.join()
    world.up[0] = True
    with pytest.raises(Unavailable, match="went away"):
        with pool.connection() as conn:  # killed between the write's answer and the check
            conn.didmos_wrote = True
            world.up[0] = False
    world.up[0] = True
    world.csns[1] = {"001": "c"}
    assert write(pool, world, "d")[0] == 0  # provider 2 stayed in sync: this one waits for it again
