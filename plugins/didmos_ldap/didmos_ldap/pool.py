"""A thread-safe pool of python-ldap connections bound as the service account.

python-ldap's ``LDAPObject`` must not be shared between threads, so each thread checks one out for
one operation. The pool:

* opens connections lazily, trying the configured URIs in order and starting with the one that
  worked last (failover);
* drops a pooled connection whose socket became readable while idle: on an idle LDAP connection that
  only happens when the server closed it (restart, idle timeout) or sent a notice of disconnection,
  so the next request gets a fresh connection instead of an error;
* caps the number of open connections; a caller waits for a free one at most ``connect_timeout``.
"""

from __future__ import annotations

import logging
import queue
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
        self._idle: queue.LifoQueue[ldap.ldapobject.LDAPObject] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(settings.size)
        self._preferred = 0  # index of the URI that answered last
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> ldap.ldapobject.LDAPObject:
        s = self.settings
        if s.bind_dn and not s.bind_password:
            # LDAP would take a DN with an empty password as an anonymous bind and then refuse writes.
            raise ConfigError(f"directory.bind_password is empty; set the password of {s.bind_dn}")
        errors = []
        count = len(s.uris)
        for step in range(count):
            index = (self._preferred + step) % count
            uri = s.uris[index]
            conn = ldap.initialize(uri)
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, s.connect_timeout)
            conn.set_option(ldap.OPT_TIMEOUT, s.timeout)
            if uri.startswith("ldaps:") or s.starttls:
                conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, _REQUIRE_CERT[s.tls_require_cert])
                if s.tls_ca_file:
                    conn.set_option(ldap.OPT_X_TLS_CACERTFILE, s.tls_ca_file)
                conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # apply the TLS options to this connection
            for option, value in s.options.items():
                conn.set_option(option, value)
            try:
                if s.starttls and not uri.startswith(("ldaps:", "ldapi:")):
                    conn.start_tls_s()
                if s.bind_dn:
                    conn.simple_bind_s(s.bind_dn, s.bind_password or "")
                elif uri.startswith("ldapi:"):
                    conn.sasl_external_bind_s()
            except CONNECTION_ERRORS as exc:
                errors.append(f"{uri}: {_reason(exc)}")
                continue
            except ldap.INVALID_CREDENTIALS as exc:
                raise ConfigError(f"the directory refused the service account {s.bind_dn!r} at {uri}: "
                                  f"check directory.bind_dn and directory.bind_password") from exc
            if index != self._preferred:
                log.warning("LDAP failover: now using %s", uri)
                self._preferred = index
            return conn
        raise Unavailable("directory unreachable: " + "; ".join(errors))

    @staticmethod
    def _stale(conn: ldap.ldapobject.LDAPObject) -> bool:
        """True when the server closed an idle connection (its socket is readable: EOF or a notice)."""
        try:
            fd = conn.fileno()
            readable, _, _ = select.select([fd], [], [], 0)
        except (ValueError, OSError, ldap.LDAPError):
            return True
        return bool(readable)

    @contextmanager
    def connection(self) -> Iterator[ldap.ldapobject.LDAPObject]:
        """Check out a bound connection for one operation.

        A connection on which a connection error happens is closed, not returned to the pool, and
        the other idle ones are checked before their next use.
        """
        if not self._slots.acquire(timeout=self.settings.connect_timeout):
            raise Unavailable(f"all {self.settings.size} directory connections are busy; try again")
        conn = None
        try:
            while conn is None:
                try:
                    candidate = self._idle.get_nowait()
                except queue.Empty:
                    conn = self._open()
                    break
                if self._stale(candidate):
                    _close(candidate)
                else:
                    conn = candidate
            try:
                yield conn
            except CONNECTION_ERRORS:
                _close(conn)
                conn = None
                raise
        finally:
            if conn is not None:
                if self._closed:
                    _close(conn)
                else:
                    self._idle.put(conn)
            self._slots.release()

    def drop_idle(self) -> None:
        """Close every idle connection (after the server went away, or at shutdown)."""
        while True:
            try:
                _close(self._idle.get_nowait())
            except queue.Empty:
                return

    def close(self) -> None:
        self._closed = True
        self.drop_idle()


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
