"""The directory service: every LDAP operation of didmos goes through :class:`Directory`.

Each search, add, modify, move, delete and bind becomes an :class:`~didmos_host.records.LdapOperation`
that passes the ``didmos_ldap_pre_operation`` hook (which may change or reject it), is executed, and is
passed with its result to ``didmos_ldap_post_operation``. python-ldap exceptions become the host's
errors in one place (:func:`translate`).

Retries: reads are retried with back-off while the server is unreachable, up to
``ldap.retry_seconds``; a write is retried only while no connection could be opened (nothing was sent),
because a write the server may have applied must not be applied twice. Past the deadline the caller
gets :class:`~didmos_host.errors.Unavailable` (HTTP 503).
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ldap
import ldap.cidict
import ldap.dn
from ldap.controls import DecodeControlTuples
from ldap.controls.libldap import AssertionControl, MatchedValuesControl, SimplePagedResultsControl
from ldap.controls.ppolicy import PasswordPolicyControl
from ldap.controls.simple import ValueLessRequestControl
from ldap.controls.sss import SSSRequestControl
from ldap.controls.vlv import VLVRequestControl, VLVResponseControl

from didmos_host.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConstraintViolation,
    DidmosError,
    Forbidden,
    LimitExceeded,
    NotFound,
    PasswordPolicyError,
    PreconditionFailed,
    Unavailable,
)
from didmos_host.records import Actor, LdapOperation
from didmos_ldap import metrics
from didmos_ldap.audit import audited
from didmos_ldap.filters import any_of, eq
from didmos_ldap.pool import CONNECTION_ERRORS, ConnectionPool, PoolSettings, wait_backoff
from didmos_ldap.readentry import PostReadControl  # its own BER codec: pyasn1 cost ~2 ms per read-back

if TYPE_CHECKING:
    from didmos_ldap.cache import EntryCache

SUBTREE, ONELEVEL, BASE = ldap.SCOPE_SUBTREE, ldap.SCOPE_ONELEVEL, ldap.SCOPE_BASE
#: Permissive Modify (MS-ADTS, supported by OpenLDAP): adding a present value or deleting an absent
#: one succeeds, so membership changes are idempotent without reading the member list first.
PERMISSIVE_MODIFY_OID = "1.2.840.113556.1.4.1413"
#: Operational attributes that versions (ETags) and audit need.
VERSION_ATTRIBUTES = ("entryCSN", "entryUUID", "createTimestamp", "modifyTimestamp")

_request_memo: contextvars.ContextVar[dict | None] = contextvars.ContextVar("didmos_ldap_request_memo", default=None)


class Entry:
    """One directory entry: its DN and its attributes (values bytes).

    Attribute names are matched case-insensitively by :meth:`get`, :meth:`values`, :meth:`first`,
    :meth:`raw` and ``in``. ``attrs`` is the dict python-ldap returned, kept as it is: most reads ask
    for a name spelt as requested, and copying it into a case-insensitive dict costs more than the
    rare fallback. The first name that misses builds a lower-cased index of the names once, so the
    misses after it (an absent attribute: rendering asks for every mapped one) are one dict lookup
    instead of a scan with ``lower()`` of every name. ``attrs`` is not changed after it is read; the
    index is built again should names be added or removed all the same.
    """

    __slots__ = ("dn", "attrs", "_folded")

    def __init__(self, dn: str, attrs: dict[str, list[bytes]]):
        self.dn = dn
        self.attrs = attrs
        self._folded: dict[str, list[bytes]] | None = None

    def get(self, attr: str) -> list[bytes] | None:
        """The raw values of ``attr`` (any spelling of its name), or ``None``."""
        values = self.attrs.get(attr)
        if values is None:
            folded = self._folded
            if folded is None or len(folded) != len(self.attrs):
                folded = self._folded = {name.lower(): found for name, found in self.attrs.items()}
            return folded.get(attr.lower())
        return values

    def values(self, attr: str) -> list[str]:
        """The values of ``attr`` as text (empty list when absent)."""
        return [value.decode("utf-8", "surrogateescape") for value in self.get(attr) or ()]

    def first(self, attr: str, default: str | None = None) -> str | None:
        values = self.get(attr)
        return values[0].decode("utf-8", "surrogateescape") if values else default

    def raw(self, attr: str) -> list[bytes]:
        return list(self.get(attr) or ())

    def __contains__(self, attr: str) -> bool:
        return self.get(attr) is not None

    def __repr__(self) -> str:
        return f"Entry({self.dn!r}, {sorted(self.attrs.keys())})"


@dataclass(frozen=True)
class BindResult:
    """A successful bind; ``expires_in`` seconds and ``grace_logins`` come from the password policy."""

    dn: str
    expires_in: int | None = None
    grace_logins: int | None = None


def _encode(values: Iterable[Any]) -> list[bytes]:
    encoded = []
    for value in values:
        if isinstance(value, bytes):
            encoded.append(value)
        elif isinstance(value, bool):
            encoded.append(b"TRUE" if value else b"FALSE")
        else:
            encoded.append(str(value).encode("utf-8"))
    return encoded


def _info(exc: ldap.LDAPError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return "; ".join(str(info[k]) for k in ("desc", "info") if info.get(k)) or type(exc).__name__


_CONSTRAINTS = (
    ldap.CONSTRAINT_VIOLATION, ldap.OBJECT_CLASS_VIOLATION, ldap.INVALID_SYNTAX, ldap.UNDEFINED_TYPE,
    ldap.NAMING_VIOLATION, ldap.NOT_ALLOWED_ON_NONLEAF, ldap.NOT_ALLOWED_ON_RDN, ldap.INVALID_DN_SYNTAX,
    ldap.TYPE_OR_VALUE_EXISTS, ldap.NO_SUCH_ATTRIBUTE, ldap.NO_OBJECT_CLASS_MODS,
    ldap.UNWILLING_TO_PERFORM, ldap.INAPPROPRIATE_MATCHING, ldap.FILTER_ERROR,
)


def translate(exc: ldap.LDAPError, operation: LdapOperation) -> DidmosError:
    """The one place where python-ldap's exceptions become didmos errors."""
    where = f"{operation.kind} {operation.dn}"
    reason = _info(exc)
    if isinstance(exc, ldap.NO_SUCH_OBJECT):
        return NotFound(f"no entry {operation.dn}")
    if isinstance(exc, ldap.ALREADY_EXISTS):
        return AlreadyExists(f"entry {operation.dn} exists already")
    if isinstance(exc, ldap.CONSTRAINT_VIOLATION) and "non-unique" in reason:
        return AlreadyExists(f"{where}: a value that must be unique is taken ({reason})")
    if isinstance(exc, _CONSTRAINTS):
        return ConstraintViolation(f"{where}: {reason}")
    if isinstance(exc, ldap.ASSERTION_FAILED):
        return PreconditionFailed(f"{operation.dn} was changed since it was read")
    if isinstance(exc, ldap.INSUFFICIENT_ACCESS):
        return Forbidden(f"the directory refused {where}: {reason}")
    if isinstance(exc, (ldap.SIZELIMIT_EXCEEDED, ldap.TIMELIMIT_EXCEEDED, ldap.ADMINLIMIT_EXCEEDED)):
        return LimitExceeded(f"{where}: {reason}")
    if isinstance(exc, ldap.INVALID_CREDENTIALS):
        return AuthenticationFailed("invalid credentials")
    if isinstance(exc, CONNECTION_ERRORS):
        return Unavailable(f"directory unavailable during {where}: {reason}")
    return DidmosError(f"directory error during {where}: {reason}")


class Directory:
    """LDAP operations with interceptors, error translation, retries, controls and request bundling."""

    def __init__(self, hook, pool: ConnectionPool, *, read_pool: ConnectionPool | None = None,
                 auth_pool: ConnectionPool | None = None, page_size: int = 500, retry_seconds: float = 5.0,
                 cache: EntryCache | None = None):
        self.hook = hook
        self.pool = pool
        self.read_pool = read_pool or pool
        self.auth_pool = auth_pool
        self.page_size = page_size
        self.retry_seconds = retry_seconds
        #: The entry cache (``ldap.cache.*``), or None when it is disabled.
        self.cache = cache

    @classmethod
    def from_settings(cls, host) -> Directory:
        """The directory service configured by ``directory.*`` and ``ldap.*`` settings."""
        d, s = host.settings.directory, host.settings.ldap

        def pool(uris: str, bind_dn, password, size, confirm_seconds=0.0, **options):
            return ConnectionPool(PoolSettings(
                uris=tuple(uris.split()), bind_dn=bind_dn, bind_password=password, size=size,
                connect_timeout=s.connect_timeout, timeout=s.timeout, starttls=s.starttls,
                tls_ca_file=s.tls_ca_file, tls_require_cert=s.tls_require_cert,
                failback_seconds=s.failback_seconds, context_dn=d.suffix,
                catchup_seconds=s.writer.catchup_seconds, confirm_seconds=confirm_seconds), **options)

        agreement = None
        if s.writer.agree and len(d.uri.split()) > 1:
            from didmos_host.sentinel import connect_redis
            from didmos_ldap.pool import WriterAgreement

            settings = host.settings
            agreement = WriterAgreement(
                lambda: connect_redis(settings, socket_connect_timeout=0.5, socket_timeout=0.5),
                tuple(d.uri.split()), poll_seconds=s.writer.poll_seconds)
        main = pool(d.uri, d.bind_dn, d.bind_password, s.pool_size, agreement=agreement,
                    confirm_seconds=s.writer.confirm_seconds)
        cache = None
        if s.cache.enabled:
            from didmos_ldap.cache import EntryCache  # it imports this module; its thread starts on first use

            cache = EntryCache(main.settings, d.suffix, staleness_seconds=s.cache.staleness_seconds,
                               max_entries=s.cache.max_entries)
        return cls(
            host.hook, main,
            read_pool=pool(s.read_uris, d.bind_dn, d.bind_password, s.pool_size) if s.read_uris else None,
            auth_pool=pool(d.uri, None, None, s.pool_size, leader=main),
            page_size=s.page_size, retry_seconds=s.retry_seconds, cache=cache,
        )

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        for pool in {self.pool, self.read_pool, self.auth_pool} - {None}:
            pool.close()

    # -- the operation pipeline ------------------------------------------------------------------

    @metrics.timed
    def _run(self, operation: LdapOperation, actor: Actor | None, execute, *, pool=None, retry_sent: bool,
             intercept: bool = True):
        """Intercept (unless the caller did), execute with retries, translate errors, and report the result."""
        if intercept:
            self.hook.didmos_ldap_pre_operation(operation=operation, actor=actor)
        pool = pool or self.pool
        deadline = time.monotonic() + self.retry_seconds
        attempt = 0
        while True:
            sent = False
            try:
                with pool.connection() as conn:
                    sent = True
                    result = execute(conn, operation)
                break
            except Unavailable:
                if sent or not wait_backoff(attempt, deadline):
                    raise
            except CONNECTION_ERRORS as exc:
                if not isinstance(exc, ldap.BUSY):  # busy is about this request, not the server being gone
                    pool.drop_idle()  # they most likely lost the same server
                if not retry_sent or not wait_backoff(attempt, deadline):
                    raise translate(exc, operation) from exc
            except ldap.LDAPError as exc:
                raise translate(exc, operation) from exc
            attempt += 1
        self.hook.didmos_ldap_post_operation(operation=operation, result=result, actor=actor)
        return result

    @contextmanager
    def request_scope(self) -> Iterator[None]:
        """Within one request: identical searches run once. Any write forgets what was read."""
        token = _request_memo.set({})
        try:
            yield
        finally:
            _request_memo.reset(token)

    @staticmethod
    def _forget_reads() -> None:
        memo = _request_memo.get()
        if memo:
            memo.clear()

    # -- reads -----------------------------------------------------------------------------------

    def search(self, base: str, filter: Any = "(objectClass=*)", scope: int = SUBTREE,
               attrs: Sequence[str] | None = None, *, actor: Actor | None = None,
               sort: Sequence[str] = (), size_limit: int = 0) -> list[Entry]:
        """All entries that match, in one request (use :meth:`iter_search` for large results).

        ``filter`` is a string or a filter object of :mod:`didmos_ldap.filters`; ``sort`` are
        attribute names, ``-name`` for descending (server-side sorting, RFC 2891).
        """
        filterstr = str(filter)
        attr_list = list(attrs) if attrs is not None else None
        memo = _request_memo.get()
        key = None
        if memo is not None:
            key = (base.lower(), scope, filterstr, tuple(attr_list or ()), tuple(sort), size_limit)
            if key in memo:
                return memo[key]
        operation = LdapOperation(kind="search", dn=base, scope=scope, filter=filterstr, attributes=attr_list)
        if sort:
            operation.controls.append(SSSRequestControl(criticality=True, ordering_rules=list(sort)))

        def execute(conn, op):
            found = conn.search_ext_s(op.dn, op.scope, op.filter, op.attributes,
                                      serverctrls=op.controls or None, sizelimit=size_limit)
            return [Entry(dn, attrs) for dn, attrs in found if dn is not None]

        try:
            entries = self._run(operation, actor, execute, pool=self.read_pool, retry_sent=True)
        except NotFound:
            entries = []
        if key is not None:
            memo[key] = entries
        return entries

    def window(self, base: str, filter: Any, sort: Sequence[str], *, offset: int, count: int,
               scope: int = SUBTREE, attrs: Sequence[str] | None = None,
               actor: Actor | None = None) -> tuple[list[Entry], int]:
        """One page of a sorted result: ``count`` entries from position ``offset`` (1-based), and the total.

        Served by the server with Server Side Sorting and Virtual List View (RFC 2891,
        draft-ietf-ldapext-ldapv3-vlv; overlay ``sssvlv``), so a page costs one search however large the
        result. ``sort`` needs at least one key; attributes without an ORDERING rule need one named
        (``uid:caseIgnoreOrderingMatch``).

        The connection is closed after the search rather than pooled again: slapo-sssvlv keeps each VLV
        result sorted in memory until the client continues it by context id or closes the connection,
        and refuses a sixth on one connection (BUSY). Continuing is no use here (a continuation answers
        from the old sort whatever the new filter), so closing is what frees the server's memory.
        """
        if not sort:
            raise ValueError("a window needs at least one sort key")
        if offset < 1 or count < 0:
            raise ValueError("offset starts at 1 and count cannot be negative")
        operation = LdapOperation(kind="search", dn=base, scope=scope, filter=str(filter),
                                  attributes=list(attrs) if attrs is not None else None)
        operation.controls.append(SSSRequestControl(criticality=True, ordering_rules=list(sort)))
        # The server answers before_count + 1 + after_count entries around the target; a count of 0
        # still returns the target entry, which the caller did not ask for.
        operation.controls.append(VLVRequestControl(criticality=True, before_count=0,
                                                    after_count=max(count - 1, 0), offset=offset,
                                                    content_count=0))

        def execute(conn, op):
            msgid = conn.search_ext(op.dn, op.scope, op.filter, op.attributes, serverctrls=op.controls)
            conn.didmos_retire = True  # the sort lives until the connection closes: see window()
            try:
                _, data, _, controls = conn.result3(msgid)
            except ldap.VLV_ERROR:
                if offset == 1:
                    raise
                # slapo-sssvlv refuses an offset past the last entry (SCIM startIndex beyond totalResults,
                # which is an empty page, RFC 7644 3.4.2.4): ask for the total alone, from the top
                first = VLVRequestControl(criticality=True, before_count=0, after_count=0, offset=1, content_count=0)
                msgid = conn.search_ext(op.dn, op.scope, op.filter, ["1.1"], serverctrls=[op.controls[0], first])
                _, _, _, controls = conn.result3(msgid)
                total = next((c.content_count for c in controls if isinstance(c, VLVResponseControl)), None)
                if total is None or total >= offset:
                    raise
                return [], total
            total = next((c.content_count for c in controls if isinstance(c, VLVResponseControl)), None)
            entries = [Entry(dn, entry_attrs) for dn, entry_attrs in data if dn is not None]
            if total is None:
                raise DidmosError("the directory did not answer the Virtual List View control; "
                                  "is the sssvlv overlay configured?")
            return entries[:count], total

        try:
            return self._run(operation, actor, execute, pool=self.read_pool, retry_sent=True)
        except NotFound:
            return [], 0

    def window_from(self, base: str, filter: Any, sort: str, *, at: str, count: int, scope: int = SUBTREE,
                    attrs: Sequence[str] | None = None, actor: Actor | None = None) -> tuple[list[Entry], int, int]:
        """``count`` entries of a sorted result from the first whose ``sort`` key is >= ``at``: the page
        after a cursor (keyset paging), stable when entries before it come and go.

        One search with Server Side Sorting and a Virtual List View positioned by value. Returns the
        entries, the total of the whole result and the 1-based position of the first entry returned.
        """
        if count < 1:
            raise ValueError("count must be at least 1")
        operation = LdapOperation(kind="search", dn=base, scope=scope, filter=str(filter),
                                  attributes=list(attrs) if attrs is not None else None)
        operation.controls.append(SSSRequestControl(criticality=True, ordering_rules=[sort]))
        operation.controls.append(VLVRequestControl(criticality=True, before_count=0, after_count=count - 1,
                                                    greater_than_or_equal=at, content_count=0))

        def execute(conn, op):
            msgid = conn.search_ext(op.dn, op.scope, op.filter, op.attributes, serverctrls=op.controls)
            conn.didmos_retire = True  # the sort lives until the connection closes: see window()
            _, data, _, controls = conn.result3(msgid)
            answer = next((c for c in controls if isinstance(c, VLVResponseControl)), None)
            if answer is None:
                raise DidmosError("the directory did not answer the Virtual List View control; "
                                  "is the sssvlv overlay configured?")
            entries = [Entry(dn, entry_attrs) for dn, entry_attrs in data if dn is not None]
            return entries[:count], answer.content_count, answer.target_position

        try:
            return self._run(operation, actor, execute, pool=self.read_pool, retry_sent=True)
        except NotFound:
            return [], 0, 1

    def iter_search(self, base: str, filter: Any = "(objectClass=*)", scope: int = SUBTREE,
                    attrs: Sequence[str] | None = None, *, actor: Actor | None = None,
                    page_size: int | None = None) -> Iterator[Entry]:
        """Stream the matching entries page by page (Simple Paged Results, RFC 2696); memory stays flat.

        The pre-interceptor sees the operation once, before the first page; the post-interceptor once,
        after the last page, with the number of entries as its result.
        """
        operation = LdapOperation(kind="search", dn=base, scope=scope, filter=str(filter),
                                  attributes=list(attrs) if attrs is not None else None)
        self.hook.didmos_ldap_pre_operation(operation=operation, actor=actor)
        size = page_size or self.page_size
        paging = SimplePagedResultsControl(criticality=True, size=size, cookie=b"")
        count = 0
        try:
            with self.read_pool.connection() as conn:
                while True:
                    msgid = conn.search_ext(operation.dn, operation.scope, operation.filter, operation.attributes,
                                            serverctrls=[*operation.controls, paging])
                    _, data, _, controls = conn.result3(msgid)
                    for dn, entry_attrs in data:
                        if dn is not None:
                            count += 1
                            yield Entry(dn, entry_attrs)
                    cookie = next((c.cookie for c in controls if c.controlType == paging.controlType), b"")
                    if not cookie:
                        break
                    paging.cookie = cookie
        except ldap.NO_SUCH_OBJECT:
            return
        except ldap.LDAPError as exc:
            raise translate(exc, operation) from exc
        self.hook.didmos_ldap_post_operation(operation=operation, result=count, actor=actor)

    def get(self, dn: str, attrs: Sequence[str] | None = None, *, actor: Actor | None = None) -> Entry | None:
        """The entry at ``dn``, or ``None``. Served by the entry cache when it is enabled."""
        if self.cache is None:
            found = self.search(dn, "(objectClass=*)", BASE, attrs, actor=actor)
        else:
            operation = LdapOperation(kind="search", dn=dn, scope=BASE, filter="(objectClass=*)",
                                      attributes=list(attrs) if attrs is not None else None)
            found = self._read_cached(operation, actor)
        return found[0] if found else None

    def get_by_uuid(self, uuid: str, base: str, attrs: Sequence[str] | None = None, *,
                    actor: Actor | None = None) -> Entry | None:
        """The entry with didmosUUID ``uuid`` at or below ``base``, or ``None`` (the SCIM GET by id).

        Served by the entry cache when it is enabled; otherwise one subtree search. Raises
        :class:`ConstraintViolation` when several entries below ``base`` have that didmosUUID.
        """
        if attrs is not None:  # to compare below
            attrs = [*(a for a in attrs if a != "1.1"), "didmosUUID"]
        if self.cache is None:
            found = self.search(base, eq("didmosUUID", uuid), SUBTREE, attrs, actor=actor)
        else:
            operation = LdapOperation(kind="search", dn=base, scope=SUBTREE, filter=str(eq("didmosUUID", uuid)),
                                      attributes=list(attrs) if attrs is not None else None)
            found = self._read_cached(operation, actor, uuid=uuid)
        # slapd compares didmosUUID with caseIgnoreIA5Match, where insignificant spaces and whatever
        # follows a NUL do not count: "<id> " and "<id>\0x" found <id> (tests/fuzz/test_hostile_input.py).
        # Only the id itself, in any case, names the entry.
        found = [entry for entry in found if (entry.first("didmosUUID") or "").lower() == uuid.lower()]
        if len(found) > 1:
            raise ConstraintViolation(f"didmosUUID {uuid} is not unique below {base}: {len(found)} entries have it")
        return found[0] if found else None

    # -- entry cache (ldap.cache.*) --------------------------------------------------------------

    def _read_cached(self, operation: LdapOperation, actor: Actor | None, *, uuid: str | None = None) -> list[Entry]:
        """A read by DN (or by didmosUUID) through the entry cache, interceptors included.

        The pre-interceptor sees every read, hit or not, and may restrict its attributes; a read whose
        scope, filter or controls it changed goes to LDAP. A miss reads what the cache holds from the
        server the change stream follows, stores it, and returns the attributes asked for.
        """
        cache = self.cache
        asked = (operation.scope, operation.filter)
        self.hook.didmos_ldap_pre_operation(operation=operation, actor=actor)
        ticket = None
        if not operation.controls and (operation.scope, operation.filter) == asked:
            if uuid is None:
                entry = cache.lookup(operation.dn, operation.attributes)
            else:
                entry = cache.lookup_uuid(uuid, operation.dn, operation.attributes)
            if entry is not None:
                found = [entry]
                self.hook.didmos_ldap_post_operation(operation=operation, result=found, actor=actor)
                return found
            ticket = cache.ticket(operation.attributes)

        if ticket is None:
            def execute(conn, op):
                found = conn.search_ext_s(op.dn, op.scope, op.filter, op.attributes, serverctrls=op.controls or None)
                return [Entry(dn, attrs) for dn, attrs in found if dn is not None]
        else:
            def execute(conn, op):
                found = conn.search_ext_s(op.dn, op.scope, op.filter, list(cache.fill_attributes))
                return [cache.fill(dn, attrs, ticket) for dn, attrs in found if dn is not None]
        try:
            return self._run(operation, actor, execute, pool=self.read_pool if ticket is None else self.pool,
                             retry_sent=True, intercept=False)
        except NotFound:
            return []

    @audited
    def _write(self, operation: LdapOperation, actor: Actor | None, execute, dn: str):
        """Run a write: the request's reads are forgotten, a write that reached the server is never sent
        again, and the cache forgets the entry whatever the outcome."""
        self._forget_reads()
        try:
            return self._run(operation, actor, execute, retry_sent=False)
        finally:
            self._invalidate(dn, operation)

    def _invalidate(self, dn: str, operation: LdapOperation) -> None:
        """After a write, whether it succeeded or not: this node must not read its own write stale."""
        if self.cache is None:
            return
        subtree = operation.kind == "modrdn"  # the entries below moved with it
        for name in {dn, operation.dn}:
            self.cache.invalidate(name, subtree=subtree)
        if subtree:
            parent = operation.new_superior if operation.new_superior is not None else parent_dn(operation.dn)
            self.cache.invalidate(f"{operation.new_rdn},{parent}" if parent else operation.new_rdn)

    def get_many(self, dns: Iterable[str], attrs: Sequence[str] | None = None, *,
                 actor: Actor | None = None, chunk: int = 100) -> dict[str, Entry]:
        """Look up many DNs in few searches (``entryDN`` equality, ``chunk`` DNs per search).

        Returns found entries keyed by normalised DN (:func:`normalize_dn`); missing DNs are absent.
        """
        wanted = {normalize_dn(dn): dn for dn in dns}
        found: dict[str, Entry] = {}
        names = list(wanted.values())
        base = common_suffix(names)
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            for entry in self.search(base, any_of(*(eq("entryDN", dn) for dn in part)), SUBTREE, attrs, actor=actor):
                found[normalize_dn(entry.dn)] = entry
        return found

    # -- writes ----------------------------------------------------------------------------------

    def add(self, dn: str, attrs: dict[str, Iterable[Any]], *, actor: Actor | None = None,
            read_back: Sequence[str] | None = None) -> Entry | None:
        """Add an entry; with ``read_back``, return it as stored (Post-Read control, no second search)."""
        operation = LdapOperation(kind="add", dn=dn, attributes={k: _encode(v) for k, v in attrs.items()})
        if read_back is not None:
            operation.controls.append(PostReadControl(criticality=True, attrList=list(read_back)))

        def execute(conn, op):
            _, _, _, controls = conn.add_ext_s(op.dn, list(op.attributes.items()), serverctrls=op.controls or None)
            return _post_read(controls)

        return self._write(operation, actor, execute, dn)

    def modify(self, dn: str, changes: Sequence[tuple[int, str, Any]], *, actor: Actor | None = None,
               if_match: str | None = None, permissive: bool = False,
               read_back: Sequence[str] | None = None) -> Entry | None:
        """Apply ``changes`` (``(ldap.MOD_ADD|MOD_DELETE|MOD_REPLACE, attr, values)``) in one modify.

        ``if_match`` is an LDAP filter the entry must still match (Assertion control, RFC 4528), for
        example ``(entryCSN=...)``; otherwise :class:`PreconditionFailed`. ``permissive`` makes adding a
        present value and deleting an absent one succeed.
        """
        modlist = [(op, attr, None if values is None else _encode(values)) for op, attr, values in changes]
        operation = LdapOperation(kind="modify", dn=dn, changes=modlist)
        if if_match:
            operation.controls.append(AssertionControl(criticality=True, filterstr=if_match))
        if permissive:
            operation.controls.append(ValueLessRequestControl(PERMISSIVE_MODIFY_OID, criticality=True))
        if read_back is not None:
            operation.controls.append(PostReadControl(criticality=True, attrList=list(read_back)))

        def execute(conn, op):
            try:
                _, _, _, controls = conn.modify_ext_s(op.dn, op.changes, serverctrls=op.controls or None)
            except ldap.ASSERTION_FAILED as exc:
                if "unique_search" not in _info(exc):
                    raise
                # slapo-unique runs its own search with the request's controls, so an assertion about
                # the entry fails that search when the modify touches a unique attribute (uid). Check
                # the assertion with a read, then modify without it: not atomic, a window of one round
                # trip, where every other modify is checked by slapd itself.
                if not conn.search_ext_s(op.dn, BASE, f"(&(objectClass=*){if_match})", ["1.1"]):
                    raise
                rest = [c for c in op.controls if not isinstance(c, AssertionControl)]
                _, _, _, controls = conn.modify_ext_s(op.dn, op.changes, serverctrls=rest or None)
            except ldap.NO_SUCH_ATTRIBUTE:
                if not permissive:
                    raise
                # OpenLDAP's Permissive Modify covers adding present values but not deleting absent
                # ones: keep only the values that are there (read with Matched Values, so a 100k-member
                # group is never read whole) and send the modify again.
                changes = _present_deletes(conn, op.dn, op.changes)
                if not changes:
                    return _post_read(None) if read_back is None else _read_entry(conn, op.dn, read_back)
                _, _, _, controls = conn.modify_ext_s(op.dn, changes, serverctrls=op.controls or None)
            return _post_read(controls)

        return self._write(operation, actor, execute, dn)

    def move(self, dn: str, *, new_rdn: str | None = None, new_superior: str | None = None,
             actor: Actor | None = None, read_back: Sequence[str] | None = None) -> Entry | str:
        """Rename and/or move an entry (modrdn); returns the entry (with ``read_back``) or its new DN."""
        rdn = new_rdn or ldap.dn.dn2str(ldap.dn.str2dn(dn)[:1])
        operation = LdapOperation(kind="modrdn", dn=dn, new_rdn=rdn, new_superior=new_superior)
        if read_back is not None:
            operation.controls.append(PostReadControl(criticality=True, attrList=list(read_back)))

        def execute(conn, op):
            _, _, _, controls = conn.rename_s(op.dn, op.new_rdn, op.new_superior, delold=1,
                                              serverctrls=op.controls or None)
            entry = _post_read(controls)
            if entry is not None:
                return entry
            parent = op.new_superior if op.new_superior is not None else parent_dn(op.dn)
            return f"{op.new_rdn},{parent}" if parent else op.new_rdn

        return self._write(operation, actor, execute, dn)

    def delete(self, dn: str, *, actor: Actor | None = None, if_match: str | None = None) -> None:
        operation = LdapOperation(kind="delete", dn=dn)
        if if_match:
            operation.controls.append(AssertionControl(criticality=True, filterstr=if_match))

        def execute(conn, op):
            conn.delete_ext_s(op.dn, serverctrls=op.controls or None)

        self._write(operation, actor, execute, dn)

    def bind(self, dn: str, password: str, *, actor: Actor | None = None) -> BindResult:
        """Check a user's password by binding as the user, with the password policy control.

        Raises :class:`AuthenticationFailed` for wrong credentials and :class:`PasswordPolicyError`
        (``detail["state"]``: ``locked``, ``expired``, ``must_change``) when the policy says so. An
        empty password is refused here: LDAP would treat it as an anonymous bind that "succeeds".
        """
        if not password:
            raise AuthenticationFailed("empty password")
        if self.auth_pool is None:
            raise DidmosError("this directory service has no connections for user binds")
        operation = LdapOperation(kind="bind", dn=dn)

        def execute(conn, op):
            try:
                _, _, _, controls = conn.simple_bind_s(op.dn, password, serverctrls=[PasswordPolicyControl()])
            except ldap.INVALID_CREDENTIALS as exc:
                state = _policy_state(exc)
                if state:
                    raise PasswordPolicyError(f"account {state.replace('_', ' ')}", detail={"state": state}) from exc
                raise
            policy = next((c for c in controls if isinstance(c, PasswordPolicyControl)), None)
            if policy is not None and policy.error == 2:
                raise PasswordPolicyError("the password must be changed", detail={"state": "must_change"})
            return BindResult(op.dn, policy.timeBeforeExpiration if policy else None,
                              policy.graceAuthNsRemaining if policy else None)

        return self._run(operation, actor, execute, pool=self.auth_pool, retry_sent=True)


_POLICY_ERRORS = {0: "expired", 1: "locked", 2: "must_change"}


def _policy_state(exc: ldap.LDAPError) -> str | None:
    raw = exc.args[0].get("ctrls") if exc.args and isinstance(exc.args[0], dict) else None
    for control in DecodeControlTuples(raw or []):
        if isinstance(control, PasswordPolicyControl) and control.error in _POLICY_ERRORS:
            return _POLICY_ERRORS[control.error]
    return None


def _present_deletes(conn, dn: str, changes) -> list:
    """``changes`` with every value-specific delete cut down to the values the entry has."""
    deletes = [(attr, values) for op, attr, values in changes if op == ldap.MOD_DELETE and values]
    if not deletes:
        return list(changes)
    # A values-return filter (RFC 3876) is a parenthesised list of simple items, without "|".
    wanted = "(" + "".join(str(eq(attr, value)) for attr, values in deletes for value in values) + ")"
    control = MatchedValuesControl(criticality=True, filterstr=wanted)
    found = conn.search_ext_s(dn, BASE, "(objectClass=*)", [attr for attr, _ in deletes], serverctrls=[control])
    present = ldap.cidict.cidict(found[0][1]) if found else {}
    result = []
    for op, attr, values in changes:
        if op == ldap.MOD_DELETE and values:
            have = {_norm(v) for v in present.get(attr, ())}
            values = [v for v in values if _norm(v) in have]
            if not values:
                continue
        result.append((op, attr, values))
    return result


def _norm(value: bytes) -> bytes:
    # Matched Values returns the stored spelling; DN-valued attributes may differ in case and spaces.
    try:
        return normalize_dn(value.decode()).encode()
    except (ldap.DECODING_ERROR, UnicodeDecodeError):
        return value.lower()


def _read_entry(conn, dn: str, attrs) -> Entry | None:
    found = conn.search_ext_s(dn, BASE, "(objectClass=*)", list(attrs))
    return Entry(*found[0]) if found else None


def _post_read(controls) -> Entry | None:
    for control in controls or ():
        if isinstance(control, PostReadControl):
            return Entry(control.dn, control.entry)
    return None


def normalize_dn(dn: str) -> str:
    """A DN in one canonical spelling (lower-case attribute types and values, no extra spaces)."""
    return ldap.dn.dn2str([[(attr.lower(), value.lower(), flags) for attr, value, flags in rdn]
                           for rdn in ldap.dn.str2dn(dn)])


def parent_dn(dn: str) -> str:
    return ldap.dn.dn2str(ldap.dn.str2dn(dn)[1:])


def common_suffix(dns: Sequence[str]) -> str:
    """The longest DN that is an ancestor of (or equal to) every DN given; the search base for them."""
    parsed = [ldap.dn.str2dn(dn)[::-1] for dn in dns]
    if not parsed:
        return ""
    shared = []
    for rdns in zip(*parsed):
        first = [[(a.lower(), v.lower(), f) for a, v, f in rdn] for rdn in rdns[:1]][0]
        if all([(a.lower(), v.lower(), f) for a, v, f in rdn] == first for rdn in rdns):
            shared.append(rdns[0])
        else:
            break
    return ldap.dn.dn2str(shared[::-1])


def location(dn: str) -> list[dict[str, str]]:
    """The entry's ancestors and itself, top first, each as ``{rdn value: dn}`` (the seeds' ``location``).

    Computed from the DN alone: no directory round trip.
    """
    rdns = ldap.dn.str2dn(dn)
    return [{rdns[i][0][1]: ldap.dn.dn2str(rdns[i:])} for i in range(len(rdns) - 1, -1, -1)]
