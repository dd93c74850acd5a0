"""A thread-safe pool of python-ldap connections bound as the service account.

python-ldap's ``LDAPObject`` must not be shared between threads, so each thread checks one out for
one operation. The pool:

* opens connections lazily, trying the configured URIs in order and starting with the one that
  worked last (failover); after a failover it tries the first URI again every ``failback_seconds``
  and moves back to it (failback) once it answers *and has caught up*: its ``contextCSN`` holds, for
  every server id, at least what the current provider's holds. Connections to the URI it left are
  closed as they come back. Every node should write to one provider at a time: two providers taking
  writes to one entry at once lose one of them in OpenLDAP's conflict resolution (plain syncrepl
  replicates whole entries, the newest entryCSN wins), and so does a write to a provider that lacks
  the entry's latest change;
* with a :class:`WriterAgreement` (redis), the nodes agree on that provider: a failover is published at
  once, a failback is announced ``switch_seconds`` ahead so that every node switches at the same time,
  and a pool follows the agreed URI (read when it starts and at most every ``poll_seconds``). At a
  switch, the pool holds its new connections until the new provider has caught up with the old one.
  Without redis (down, or not configured), each pool decides alone, as above;
* with ``confirm_seconds``, answers a write only once every other provider that is in sync has it
  (its ``contextCSN`` reached the writer's), at most that long: a provider that dies then takes no
  acknowledged write with it (replication is asynchronous; without this, the writes it had not sent
  yet are overwritten by the next changes made elsewhere). A provider that is not in sync (down,
  restarted and catching up, or past the limit once) is not waited for until it has caught up;
* drops a pooled connection whose socket became readable while idle: on an idle LDAP connection that
  only happens when the server closed it (restart, idle timeout) or sent a notice of disconnection,
  so the next request gets a fresh connection instead of an error;
* caps the number of open connections; a caller waits for a free one at most ``connect_timeout``;
* takes no lock when a free connection is there (the common case).
"""

from __future__ import annotations

import hashlib
import json
import logging
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.ldapobject
import redis

from didmos_host.errors import ConfigError, Unavailable

log = logging.getLogger("didmos.ldap")

#: python-ldap exceptions that mean "the server cannot be reached or went away".
CONNECTION_ERRORS = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.TIMEOUT, ldap.UNAVAILABLE, ldap.BUSY)


@dataclass(frozen=True)
class PoolSettings:
    uris: tuple[str, ...]
    bind_dn: str | None
    bind_password: str | None
    size: int = 10
    connect_timeout: float = 3.0
    timeout: float = 10.0
    starttls: bool = False
    tls_ca_file: str = ""
    tls_require_cert: str = "demand"
    options: dict = field(default_factory=dict)
    failback_seconds: float = 30.0
    #: The entry whose ``contextCSN`` tells whether a provider has caught up (the database suffix);
    #: empty: the first ``namingContexts`` value of the root DSE.
    context_dn: str = ""
    #: How long a switch to another provider waits for it to catch up before going ahead anyway.
    catchup_seconds: float = 5.0
    #: How long a write waits for the other providers to have it before it is answered; 0: not at all.
    confirm_seconds: float = 0.0


_FRESH_SECONDS = 1.0

_REQUIRE_CERT = {
    "never": ldap.OPT_X_TLS_NEVER,
    "allow": ldap.OPT_X_TLS_ALLOW,
    "try": ldap.OPT_X_TLS_TRY,
    "demand": ldap.OPT_X_TLS_DEMAND,
}


class WriterAgreement:
    """The provider that every node writes to, agreed through redis (one key per ``directory.uri`` list).

    The value is JSON ``{"uri": ..., "at": ...}``: the agreed URI and the wall-clock time from which it
    applies (a failover applies at once; a failback is announced ``switch_seconds`` ahead, so that every
    node, reading the key every ``poll_seconds``, knows it before it applies). When redis fails,
    :meth:`read` answers None and :meth:`publish` False, logged once per outage: the pools then decide
    alone.
    """

    def __init__(self, connect: Callable[[], Any], uris: tuple[str, ...], *, poll_seconds: float = 1.0):
        self._connect = connect
        self._client = None
        self.uris = uris
        # The exact list, in order: nodes that list the providers in another order do not share a writer.
        self.key = "didmos:ldap:writer:" + hashlib.sha256(" ".join(uris).encode()).hexdigest()[:16]
        self.poll_seconds = poll_seconds
        #: How far ahead a failback is announced: every node reads the key at least once before.
        self.switch_seconds = 2 * poll_seconds + 0.2
        self._failing = False

    def _redis(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def read(self) -> tuple[int, float] | None:
        """(index of the agreed URI, wall-clock time from which it applies), or None: nothing agreed yet,
        or redis unreachable."""
        try:
            raw = self._redis().get(self.key)
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._working()
        if raw is None:
            return None
        try:
            value = json.loads(raw)
            return self.uris.index(value["uri"]), float(value["at"])
        except (ValueError, KeyError, TypeError):
            log.warning("LDAP writer agreement: ignoring %s = %r (not a URI of directory.uri)", self.key, raw)
            return None

    def publish(self, index: int, at: float) -> bool:
        """Make ``uris[index]`` the agreed writer from wall-clock time ``at``; False when redis failed."""
        try:
            self._redis().set(self.key, json.dumps({"uri": self.uris[index], "at": at}))
        except (redis.RedisError, OSError) as exc:
            self._failed(exc)
            return False
        self._working()
        return True

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning("LDAP writer agreement: redis unreachable (%s); this node chooses its LDAP provider "
                        "alone until it is back", exc)

    def _working(self) -> None:
        if self._failing:
            self._failing = False
            log.warning("LDAP writer agreement: redis reachable again")


class _Connection(ldap.ldapobject.LDAPObject):
    """An LDAPObject that remembers that a write was sent on it (python-ldap's ``*_s`` methods call these)."""

    didmos_wrote = False

    def add_ext(self, *args, **kwargs):
        self.didmos_wrote = True
        return super().add_ext(*args, **kwargs)

    def modify_ext(self, *args, **kwargs):
        self.didmos_wrote = True
        return super().modify_ext(*args, **kwargs)

    def delete_ext(self, *args, **kwargs):
        self.didmos_wrote = True
        return super().delete_ext(*args, **kwargs)

    def rename(self, *args, **kwargs):
        self.didmos_wrote = True
        return super().rename(*args, **kwargs)


class ConnectionPool:
    """Connections to one directory (several URIs for failover), bound as one identity.

    ``agreement``: follow and publish the writer that all nodes agree on. ``leader``: another pool of the
    same URIs whose current URI this one takes (the pool for user binds follows the service account's:
    binds write too, with the password policy); a pool with a leader does no failback of its own.
    """

    def __init__(self, settings: PoolSettings, *, agreement: WriterAgreement | None = None,
                 leader: ConnectionPool | None = None):
        if not settings.uris:
            raise ConfigError("no LDAP URI configured (setting directory.uri)")
        if settings.tls_require_cert not in _REQUIRE_CERT:
            raise ConfigError(f"ldap.tls_require_cert must be one of {', '.join(_REQUIRE_CERT)}, "
                              f"got {settings.tls_require_cert!r}")
        self.settings = settings
        self.agreement = agreement if len(settings.uris) > 1 else None
        self.leader = leader
        # Idle connections. deque.pop/append are atomic in CPython, so the hot path (a free
        # connection is there) takes no lock; the lock only guards opening and waiting.
        self._idle: deque[ldap.ldapobject.LDAPObject] = deque()
        self._open_count = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._preferred = 0  # index of the URI that answered last
        self._failback_at = 0.0  # when to try the first URI again (while _preferred is not 0)
        # A switch to another URI that applies at _switch_at (monotonic): announced by a failback.
        self._switch_to: int | None = None
        self._switch_at = 0.0
        self._next_poll = 0.0  # when to read the agreement again: at once for a new pool
        self._next_check = 0.0  # the earliest of the three above: one comparison on the hot path
        self._check_lock = threading.Lock()
        self._polled = self.agreement is None  # the agreement was read once (or there is none)
        # Write confirmation: the other providers' contextCSN as last read, shared by the waiting threads.
        self._peer_lock = threading.Lock()
        self._peer_csns: dict[int, tuple[float, dict[str, str]]] = {}  # index -> (monotonic read time, CSNs)
        self._peer_conns: dict[int, ldap.ldapobject.LDAPObject] = {}
        self._in_sync: set[int] = set()  # peers waited for
        self._sync_targets: dict[int, dict[str, str]] = {}  # what a peer not in sync must have to be
        self._peer_retry_at: dict[int, float] = {}  # a peer that did not answer is tried again from then
        self._closed = False

    @property
    def current_uri(self) -> str:
        """The URI new connections go to first."""
        return self.settings.uris[self._preferred]

    def _connect(self, index: int) -> ldap.ldapobject.LDAPObject:
        """A bound connection to ``uris[index]``; CONNECTION_ERRORS when it does not answer."""
        s = self.settings
        uri = s.uris[index]
        conn = _Connection(uri)
        conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, s.connect_timeout)
        conn.set_option(ldap.OPT_TIMEOUT, s.timeout)
        for option, value in s.options.items():  # before NEWCTX, which freezes TLS options
            conn.set_option(option, value)
        if uri.startswith("ldaps:") or s.starttls:
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, _REQUIRE_CERT[s.tls_require_cert])
            if s.tls_ca_file:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, s.tls_ca_file)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # apply the TLS options to this connection
        try:
            if s.starttls and not uri.startswith(("ldaps:", "ldapi:")):
                conn.start_tls_s()
            if s.bind_dn:
                conn.simple_bind_s(s.bind_dn, s.bind_password or "")
            elif uri.startswith("ldapi:"):
                conn.sasl_external_bind_s()
            else:
                # libldap connects lazily: without this, a pool for user binds would meet an
                # unreachable server (or a bad certificate) only at the user's bind, past failover.
                conn.whoami_s()
        except ldap.INVALID_CREDENTIALS as exc:
            raise ConfigError(f"the directory refused the service account {s.bind_dn!r} at {uri}: "
                              f"check directory.bind_dn and directory.bind_password") from exc
        return conn

    def _open(self) -> ldap.ldapobject.LDAPObject:
        s = self.settings
        if s.bind_dn and not s.bind_password:
            # LDAP would take a DN with an empty password as an anonymous bind and then refuse writes.
            raise ConfigError(f"directory.bind_password is empty; set the password of {s.bind_dn}")
        errors = []
        count = len(s.uris)
        start = self._preferred
        for step in range(count):
            index = (start + step) % count
            try:
                conn = self._connect(index)
            except CONNECTION_ERRORS as exc:
                errors.append(f"{s.uris[index]}: {_reason(exc)}")
                continue
            if index != self._preferred:
                self._failed_over(index)
            conn.didmos_uri_index = index
            return conn
        raise Unavailable("directory unreachable: " + "; ".join(errors))

    def _failed_over(self, index: int) -> None:
        """The URI in use did not answer and ``uris[index]`` did: use it, and tell the other nodes at once."""
        log.warning("LDAP failover: now using %s", self.settings.uris[index])
        self._preferred = index
        self._switch_to = None
        self._failback_at = time.monotonic() + self.settings.failback_seconds
        self._next_check = min(self._next_check, self._failback_at)
        if self.agreement is not None and self.leader is None:
            self.agreement.publish(index, time.time())

    # -- which URI: the agreement, failback after catch-up, the switch -----------------------------------

    def _check(self) -> None:
        """Whatever is due: a switch, a read of the agreement, a failback attempt (one thread at a time)."""
        due = (self._switch_to is not None and time.monotonic() >= self._switch_at) or not self._polled
        # When a switch is due, every thread waits for it: none may take a connection to the provider
        # being left after the switch time; nor, in a new pool, before the agreement was read once.
        # Otherwise one thread checks and the others go on.
        if not self._check_lock.acquire(blocking=due):
            return
        try:
            now = time.monotonic()
            if self.leader is not None:
                if self.leader._preferred != self._preferred:
                    self._preferred = self.leader._preferred
                    self.drop_idle()
                self._next_check = now + 0.1
                return
            if self.agreement is not None and now >= self._next_poll:
                self._next_poll = now + self.agreement.poll_seconds
                self._follow_agreement(now)
            self._polled = True
            if self._switch_to is not None and now >= self._switch_at:
                self._switch()
            if (self._preferred and self._switch_to is None and self.settings.failback_seconds
                    and now >= self._failback_at):
                self._try_failback(now)
            self._next_check = min(self._next_poll if self.agreement is not None else float("inf"),
                                   self._switch_at if self._switch_to is not None else float("inf"),
                                   self._failback_at if self._preferred and self.settings.failback_seconds
                                   else float("inf"))
        finally:
            self._check_lock.release()

    def _follow_agreement(self, now: float) -> None:
        agreed = self.agreement.read()
        if agreed is None:
            return
        index, at = agreed
        if index == self._preferred:
            self._switch_to = None  # a switch announced and then overruled by a failover elsewhere
            return
        if index != self._switch_to:
            self._switch_to, self._switch_at = index, now + max(0.0, at - time.time())
            log.warning("LDAP writer agreement: switching to %s in %.1f s", self.settings.uris[index],
                        self._switch_at - now)

    def _switch(self) -> None:
        """Move to ``_switch_to``, once it has everything the URI in use has (at most ``catchup_seconds``)."""
        target, source = self._switch_to, self._preferred
        if target is None or target == source:
            self._switch_to = None
            return
        # _switch_to stays set while waiting: threads that come meanwhile see the switch due and wait
        if not self._wait_caught_up(target, source):
            log.warning("LDAP writer switch: %s had not caught up with %s after %.1f s; switching anyway",
                        self.settings.uris[target], self.settings.uris[source], self.settings.catchup_seconds)
        log.warning("LDAP %s: now using %s", "failback" if target == 0 else "writer switch", self.settings.uris[target])
        self._preferred = target
        self._switch_to = None
        self._failback_at = time.monotonic() + self.settings.failback_seconds
        self.drop_idle()

    def _try_failback(self, now: float) -> None:
        self._failback_at = now + self.settings.failback_seconds
        caught_up = self._caught_up(0, self._preferred)
        if caught_up is None:
            return  # the first URI is still down
        if not caught_up:
            # back, but still replaying what was written elsewhere meanwhile: writing to it now could
            # overwrite those changes with its stale entries
            log.info("LDAP: %s answers but has not caught up with %s yet", self.settings.uris[0], self.current_uri)
            self._failback_at = now + min(1.0, self.settings.failback_seconds)
            return
        if self.agreement is not None:
            at = time.time() + self.agreement.switch_seconds
            if self.agreement.publish(0, at):
                log.warning("LDAP failback to %s announced to every node, in %.1f s", self.settings.uris[0],
                            self.agreement.switch_seconds)
                self._switch_to, self._switch_at = 0, now + self.agreement.switch_seconds
                return
        self._switch_to, self._switch_at = 0, now
        self._switch()

    def _context_csns(self, index: int) -> dict[str, str] | None:
        """``uris[index]``'s contextCSN values by server id, or None when it does not answer."""
        try:
            conn = self._connect(index)
        except CONNECTION_ERRORS:
            return None
        try:
            return self._read_csns(conn)
        except CONNECTION_ERRORS:
            return None
        except ldap.LDAPError as exc:
            log.warning("LDAP: cannot read the contextCSN of %s at %s: %s", self.settings.context_dn or "the suffix",
                        self.settings.uris[index], _reason(exc))
            return {}
        finally:
            _close(conn)

    def _caught_up(self, target: int, source: int) -> bool | None:
        """Whether ``uris[target]`` holds every change ``uris[source]`` holds (by contextCSN, server id by
        server id); None when the target does not answer, True when the source does not."""
        have = self._context_csns(target)
        if have is None:
            return None
        want = self._context_csns(source)
        if want is None:
            return True
        return all(have.get(sid, "") >= csn for sid, csn in want.items())

    def _wait_caught_up(self, target: int, source: int) -> bool:
        """Wait until the target has caught up with the source in two checks in a row (the second one
        takes writes in flight at the first into account); False after ``catchup_seconds``."""
        deadline = time.monotonic() + self.settings.catchup_seconds
        rounds = 0
        while True:
            caught_up = self._caught_up(target, source)
            if caught_up is None:
                return True  # the target does not answer: opening a connection will fail over
            rounds = rounds + 1 if caught_up else 0
            if rounds == 2:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # -- write confirmation ----------------------------------------------------------------------------

    def confirm_replicated(self, conn: ldap.ldapobject.LDAPObject) -> None:
        """After a write on ``conn``: wait until every other provider in sync has what the writer has now
        (contextCSN, server id by server id), at most ``confirm_seconds``. Unavailable when the writer
        went away meanwhile (the write may be lost with it, so it must not be acknowledged)."""
        s = self.settings
        if not s.confirm_seconds or len(s.uris) < 2:
            return
        try:
            mine = self._read_csns(conn)
        except CONNECTION_ERRORS as exc:
            raise Unavailable(f"{s.uris[conn.didmos_uri_index]} went away before another provider had the "
                              f"write: {_reason(exc)}") from exc
        except ldap.LDAPError as exc:
            log.warning("LDAP: cannot read the contextCSN at %s (%s); the write is not confirmed",
                        s.uris[conn.didmos_uri_index], _reason(exc))
            return
        started = time.monotonic()
        deadline = started + s.confirm_seconds
        for index in range(len(s.uris)):
            if index == conn.didmos_uri_index:
                continue
            after = started
            while True:
                reading = self._peer_reading(index, after)
                if reading is None:
                    break  # down: not waited for
                after, csns = reading
                if index not in self._in_sync:
                    # catching up (at start, or restarted): not waited for until it has what the writer
                    # had at an earlier write (under load it may never have the very latest at a check)
                    target = self._sync_targets.setdefault(index, mine)
                    if all(csns.get(sid, "") >= csn for sid, csn in target.items()):
                        self._in_sync.add(index)
                        self._sync_targets.pop(index, None)
                        log.warning("LDAP: %s is in sync; writes wait for it from now on", s.uris[index])
                    break
                if all(csns.get(sid, "") >= csn for sid, csn in mine.items()):
                    break
                if time.monotonic() >= deadline:
                    try:
                        self._read_csns(conn)
                    except CONNECTION_ERRORS as exc:
                        # the writer went away before anyone else had the write: whether it survives is
                        # not known, so it is not acknowledged
                        raise Unavailable(f"{s.uris[conn.didmos_uri_index]} went away before another "
                                          f"provider had the write: {_reason(exc)}") from exc
                    self._in_sync.discard(index)
                    self._sync_targets.pop(index, None)
                    log.warning("LDAP: %s did not have a write after %.1f s; writes do not wait for it until "
                                "it has caught up", s.uris[index], s.confirm_seconds)
                    break
                time.sleep(0.002)

    def _peer_reading(self, index: int, after: float) -> tuple[float, dict[str, str]] | None:
        """``uris[index]``'s contextCSN read after monotonic time ``after`` (one thread reads for all the
        waiting ones) and when it was read, or None when it does not answer."""
        while True:
            reading = self._peer_csns.get(index)
            if reading is not None and reading[0] > after:
                return reading
            if time.monotonic() < self._peer_retry_at.get(index, 0.0):
                return None
            if not self._peer_lock.acquire(blocking=False):
                time.sleep(0.001)
                continue
            try:
                reading = self._peer_csns.get(index)
                if reading is not None and reading[0] > after:
                    return reading  # read by another thread meanwhile
                read_at = time.monotonic()
                conn = self._peer_conns.get(index)
                try:
                    if conn is None:
                        conn = self._peer_conns[index] = self._connect(index)
                    csns = self._read_csns(conn)
                except ldap.LDAPError:
                    if conn is not None:
                        _close(conn)
                    self._peer_conns.pop(index, None)
                    self._peer_csns.pop(index, None)
                    self._in_sync.discard(index)
                    self._sync_targets.pop(index, None)
                    self._peer_retry_at[index] = time.monotonic() + 1.0
                    return None
                self._peer_csns[index] = (read_at, csns)
            finally:
                self._peer_lock.release()

    def _read_csns(self, conn: ldap.ldapobject.LDAPObject) -> dict[str, str]:
        """The contextCSN values (by server id) of the suffix, read on ``conn``."""
        base = self.settings.context_dn
        if not base:
            [(_, root)] = conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["namingContexts"])
            base = root.get("namingContexts", [b""])[0].decode()
        found = conn.search_s(base, ldap.SCOPE_BASE, "(objectClass=*)", ["contextCSN"])
        csns = {}
        for value in found[0][1].get("contextCSN", []) if found else []:
            csn = value.decode()  # 20261123183000.123456Z#000000#001#000000: the third part is the server id
            parts = csn.split("#")
            csns[parts[2] if len(parts) > 2 else ""] = csn
        return csns

    @staticmethod
    def _stale(conn: ldap.ldapobject.LDAPObject) -> bool:
        """True when the server closed an idle connection (its socket is readable: EOF or a notice)."""
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
        except (ValueError, OSError, ldap.LDAPError):
            return True
        return bool(readable)

    def acquire(self) -> ldap.ldapobject.LDAPObject:
        """A bound connection for this thread's next operation; give it back with :meth:`release`."""
        if time.monotonic() >= self._next_check:
            self._check()
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._acquire_slow()
            if conn.didmos_uri_index != self._preferred:
                self._discard(conn)  # to a URI the pool has moved away from
                continue
            # A connection used within the last second cannot have outlived a slapd restart (which
            # takes longer); skip the select() for it.
            if time.monotonic() - conn.didmos_released < _FRESH_SECONDS or not self._stale(conn):
                return conn
            self._discard(conn)

    def _acquire_slow(self) -> ldap.ldapobject.LDAPObject:
        deadline = time.monotonic() + self.settings.connect_timeout
        with self._cond:
            while True:
                try:
                    conn = self._idle.pop()  # the lock-free fast path may have taken it meanwhile
                except IndexError:
                    conn = None
                if conn is not None:
                    if conn.didmos_uri_index == self._preferred and not self._stale(conn):
                        return conn
                    self._discard_locked(conn)
                    continue
                if self._open_count < self.settings.size:
                    self._open_count += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"all {self.settings.size} directory connections are busy; try again")
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1
        try:
            return self._open()
        except BaseException:
            with self._cond:
                self._open_count -= 1
                self._cond.notify()
            raise

    def release(self, conn: ldap.ldapobject.LDAPObject, *, broken: bool = False) -> None:
        """Give a connection back; ``broken`` ones (a connection error happened on them) are closed, and
        so are those marked ``conn.didmos_retire`` (they hold server state that only closing frees)."""
        if broken or self._closed or getattr(conn, "didmos_retire", False) \
                or getattr(conn, "didmos_uri_index", self._preferred) != self._preferred:
            self._discard(conn)  # also one to a URI the pool has moved away from (failover, failback)
            return
        conn.didmos_released = time.monotonic()
        self._idle.append(conn)
        if self._waiting:
            with self._cond:
                self._cond.notify()

    def _discard(self, conn) -> None:
        with self._cond:
            self._discard_locked(conn)

    def _discard_locked(self, conn) -> None:
        _close(conn)
        self._open_count -= 1
        self._cond.notify()

    def connection(self) -> _Checkout:
        """``with pool.connection() as conn:`` one operation on a checked-out connection.

        A connection on which a connection error happens is closed, not returned to the pool.
        """
        return _Checkout(self)

    def drop_idle(self) -> None:
        """Close every idle connection (after the server went away, or at shutdown)."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            self._discard(conn)

    def close(self) -> None:
        self._closed = True
        self.drop_idle()
        with self._peer_lock:
            for conn in self._peer_conns.values():
                _close(conn)
            self._peer_conns.clear()


class _Checkout:
    """The context manager of :meth:`ConnectionPool.connection` (a class: cheaper than a generator)."""

    __slots__ = ("pool", "conn")

    def __init__(self, pool: ConnectionPool):
        self.pool = pool
        self.conn = None

    def __enter__(self) -> ldap.ldapobject.LDAPObject:
        self.conn = self.pool.acquire()
        return self.conn

    def __exit__(self, kind, error, traceback) -> None:
        if getattr(self.conn, "didmos_wrote", False):
            self.conn.didmos_wrote = False
            if kind is None:
                try:
                    self.pool.confirm_replicated(self.conn)
                except Unavailable:
                    self.pool.release(self.conn, broken=True)
                    raise
        self.pool.release(self.conn, broken=kind is not None and issubclass(kind, CONNECTION_ERRORS))


def _close(conn: ldap.ldapobject.LDAPObject) -> None:
    try:
        conn.unbind_ext_s()
    except ldap.LDAPError:
        pass


def _reason(exc: ldap.LDAPError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return "; ".join(str(info[k]) for k in ("desc", "info") if info.get(k)) or type(exc).__name__


def wait_backoff(attempt: int, deadline: float) -> bool:
    """Sleep before retry ``attempt`` (0.05 s doubling, at most 1 s); False when past ``deadline``."""
    pause = min(0.05 * (2**attempt), 1.0)
    if time.monotonic() + pause > deadline:
        return False
    time.sleep(pause)
    return True
