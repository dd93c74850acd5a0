"""A thread-safe pool of python-ldap connections bound as the service account.

python-ldap's ``LDAPObject`` must not be shared between threads, so each thread checks one out for
one operation. The pool:

* opens connections lazily, trying the configured URIs in order and starting with the one that
  worked last (failover); after a failover it tries the first URI again every ``failback_seconds``
  and, once that answers, closes the connections to the other URI as they come back (failback), so
  that every node writes to the first provider whenever it is up (two providers taking writes to
  one entry at once can lose one of them in OpenLDAP's conflict resolution);
* drops a pooled connection whose socket became readable while idle: on an idle LDAP connection that
  only happens when the server closed it (restart, idle timeout) or sent a notice of disconnection,
  so the next request gets a fresh connection instead of an error;
* caps the number of open connections; a caller waits for a free one at most ``connect_timeout``;
* takes no lock when a free connection is there (the common case).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ldap
import ldap.ldapobject

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


_FRESH_SECONDS = 1.0

_REQUIRE_CERT = {
    "never": ldap.OPT_X_TLS_NEVER,
    "allow": ldap.OPT_X_TLS_ALLOW,
    "try": ldap.OPT_X_TLS_TRY,
    "demand": ldap.OPT_X_TLS_DEMAND,
}


class ConnectionPool:
    """Connections to one directory (several URIs for failover), bound as one identity."""

    def __init__(self, settings: PoolSettings):
        if not settings.uris:
            raise ConfigError("no LDAP URI configured (setting directory.uri)")
        if settings.tls_require_cert not in _REQUIRE_CERT:
            raise ConfigError(f"ldap.tls_require_cert must be one of {', '.join(_REQUIRE_CERT)}, "
                              f"got {settings.tls_require_cert!r}")
        self.settings = settings
        # Idle connections. deque.pop/append are atomic in CPython, so the hot path (a free
        # connection is there) takes no lock; the lock only guards opening and waiting.
        self._idle: deque[ldap.ldapobject.LDAPObject] = deque()
        self._open_count = 0
        self._waiting = 0
        self._cond = threading.Condition()
        self._preferred = 0  # index of the URI that answered last
        self._failback_at = 0.0  # when to try the first URI again (while _preferred is not 0)
        self._closed = False

    def _open(self) -> ldap.ldapobject.LDAPObject:
        s = self.settings
        if s.bind_dn and not s.bind_password:
            # LDAP would take a DN with an empty password as an anonymous bind and then refuse writes.
            raise ConfigError(f"directory.bind_password is empty; set the password of {s.bind_dn}")
        errors = []
        count = len(s.uris)
        start = self._preferred
        if start and s.failback_seconds and time.monotonic() >= self._failback_at:
            start = 0  # time to see whether the first URI is back
            self._failback_at = time.monotonic() + s.failback_seconds
        for step in range(count):
            index = (start + step) % count
            uri = s.uris[index]
            conn = ldap.initialize(uri)
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
            except CONNECTION_ERRORS as exc:
                errors.append(f"{uri}: {_reason(exc)}")
                continue
            except ldap.INVALID_CREDENTIALS as exc:
                raise ConfigError(f"the directory refused the service account {s.bind_dn!r} at {uri}: "
                                  f"check directory.bind_dn and directory.bind_password") from exc
            if index != self._preferred:
                log.warning("LDAP %s: now using %s", "failback" if index == 0 else "failover", uri)
                self._preferred = index
                self._failback_at = time.monotonic() + s.failback_seconds
            conn.didmos_uri_index = index
            return conn
        raise Unavailable("directory unreachable: " + "; ".join(errors))

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
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return self._acquire_slow()
            if self._preferred and self.settings.failback_seconds and time.monotonic() >= self._failback_at:
                # time to try the first URI again: the idle connections go to the failover URI, and a new
                # one is opened (the first URI first; the failover URI again if it is still down)
                self._discard(conn)
                self.drop_idle()
                return self._acquire_slow()
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
                    if not self._stale(conn):
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
