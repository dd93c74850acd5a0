"""An optional entry cache for reads by DN and by didmosUUID, kept coherent by the directory's change stream.

Why it stays coherent with writes made by any node, or directly in LDAP:

* A daemon thread follows the suffix with a syncrepl consumer (RFC 4533, mode refreshAndPersist,
  OpenLDAP's ``syncprov`` overlay) on a connection of its own. Every change to an entry arrives as
  the whole entry (``syncrepl_entry``) or as its entryUUID (``syncrepl_delete``), usually within
  milliseconds. A cached entry is replaced by the changed one; renames arrive under the new DN with
  the same entryUUID. Uncached entries are not loaded: the stream only keeps what is cached correct.
* The stream starts from a cookie built from the suffix's current ``contextCSN``, so connecting (and
  reconnecting) costs no refresh of the whole tree; the cache is emptied on every (re)connect instead,
  because changes made while the stream was down were not seen.
* The staleness bound (``ldap.cache.staleness_seconds``) is enforced, not hoped for: every quarter
  of the bound the thread reads ``contextCSN`` again on the stream's connection and notes when the
  stream has delivered every change up to it. Hits are served only until "send time of the last
  confirmed read + bound". A stream that breaks, stalls or silently loses its network stops hits
  within the bound, and reads fall through to LDAP; nothing waits for a TCP timeout.
* A write made through :class:`~didmos_ldap.directory.Directory` invalidates its DN at once, so a
  node never reads its own write stale; the stream then delivers it to every node.
* A miss reads the entry and stores it only if the stream has not delivered a newer version or its
  delete meanwhile (compared by entryCSN) and this node has not written it since the read began.

A hit is a dict lookup plus a projection of the requested attributes: no LDAP round trip, no lock.
What the cache cannot answer exactly is read from LDAP: operational attributes other than
:data:`~didmos_ldap.directory.VERSION_ATTRIBUTES` (``memberOf`` changes reach no change stream),
attribute types that have subtypes (``name``), attribute options, and reads whose scope, filter or
controls a pre-interceptor changed.

Opt-in (``ldap.cache.enabled``) because it needs ``syncprov`` on the suffix and one more connection
per process.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace

import ldap
import ldap.cidict
from ldap.schema.models import AttributeType
from ldap.syncrepl import SyncreplConsumer

from didmos_host.errors import ConfigError, Unavailable
from didmos_ldap.directory import VERSION_ATTRIBUTES, Entry, normalize_dn
from didmos_ldap.metrics import counted
from didmos_ldap.pool import CONNECTION_ERRORS, ConnectionPool, PoolSettings

log = logging.getLogger("didmos.ldap.cache")

#: What a miss reads and the cache holds: all user attributes and the version attributes.
FILL_ATTRIBUTES = ("*", *VERSION_ATTRIBUTES)
#: What the stream sends per changed entry; ``hasSubordinates`` tells a container's rename (which
#: moves its subtree) from a leaf's. It is not served: adding a child does not change the parent.
STREAM_ATTRIBUTES = (*FILL_ATTRIBUTES, "hasSubordinates")
#: Name of the thread that follows the change stream.
THREAD_NAME = "didmos-ldap-cache"
#: How many recent changes are remembered to refuse storing a read that raced with one of them.
_RECENT = 65536
#: An entryCSN that is newer than every real one: marks a deleted entry.
_DELETED = "~"

_key = functools.lru_cache(maxsize=65536)(normalize_dn)
_caches: weakref.WeakSet[EntryCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Cached:
    """One cached entry: the attributes as the server sent them, indexed by attribute type."""

    __slots__ = ("key", "dn", "entry_uuid", "didmos_uuid", "csn", "attrs", "by_type", "user_keys", "used")

    def __init__(self, key, dn, entry_uuid, didmos_uuid, csn, attrs, by_type, user_keys):
        self.key, self.dn, self.entry_uuid, self.didmos_uuid, self.csn = key, dn, entry_uuid, didmos_uuid, csn
        self.attrs, self.by_type, self.user_keys = attrs, by_type, user_keys
        self.used = False  # second chance for eviction (CLOCK): set on a hit without a lock

    def project(self, plan: tuple[bool, tuple[str, ...]]) -> Entry:
        """An :class:`Entry` with the attributes of ``plan``; value lists are copies."""
        users, types = plan
        attrs, out = self.attrs, ldap.cidict.cidict()
        if users:
            for name in self.user_keys:
                out[name] = list(attrs[name])
        for attr_type in types:
            for name in self.by_type.get(attr_type, ()):
                out[name] = list(attrs[name])
        return Entry(self.dn, out)


class _Schema:
    """What projection needs from the server's schema: primary names, operational types, subtypes."""

    def __init__(self, definitions: Sequence[bytes]):
        types = [AttributeType(value.decode("utf-8")) for value in definitions]
        self.primary: dict[str, str] = {}
        operational, supertypes = set(), set()
        for at in types:
            first = (at.names[0] if at.names else at.oid).lower()
            for name in (*at.names, at.oid):
                self.primary[name.lower()] = first
            if at.usage != 0:
                operational.add(first)
        for at in types:
            supertypes.update(self.primary.get(sup.lower(), sup.lower()) for sup in at.sup or ())
        self.operational = frozenset(operational)
        wanted_operational = {v.lower() for v in VERSION_ATTRIBUTES}
        #: Types a hit may serve: LDAP returns exactly the cached values for them.
        self.answerable = frozenset(
            name for name in set(self.primary.values())
            if (name not in operational and name not in supertypes) or name in wanted_operational)

    def plan(self, attrs: Sequence[str] | None) -> tuple[bool, tuple[str, ...]] | None:
        """``(all user attributes?, attribute types)`` for a request, or None if a hit can't answer it."""
        if not attrs:
            return True, ()
        users, types = False, []
        for name in attrs:
            if name == "*":
                users = True
            elif name != "1.1":
                attr_type = self.primary.get(name.lower())
                if attr_type is None or attr_type not in self.answerable:
                    return None
                types.append(attr_type)
        return users, tuple(dict.fromkeys(types))


@dataclass(frozen=True)
class Ticket:
    """Taken before a miss reads LDAP; the read is stored only if nothing changed since."""

    epoch: int
    seq: int
    plan: tuple[bool, tuple[str, ...]]


def _csns(values) -> dict[str, str]:
    """CSNs (``time#count#sid#mod``) by server id, the newest per sid."""
    newest: dict[str, str] = {}
    for value in values:
        csn = value.decode() if isinstance(value, bytes) else value
        parts = csn.split("#")
        if len(parts) == 4 and csn > newest.get(parts[2], ""):
            newest[parts[2]] = csn
    return newest


def _cookie_csns(cookie) -> list[str]:
    cookie = cookie.decode() if isinstance(cookie, bytes) else str(cookie)
    for part in cookie.split(","):
        if part.startswith("csn="):
            return part[4:].split(";")
    return []


class _StreamBroken(Exception):
    """The change stream ended or stopped confirming; reconnect."""


class _Stream(SyncreplConsumer):
    """python-ldap's syncrepl consumer over a connection of the stream's pool, feeding the cache."""

    def __init__(self, conn, cache: EntryCache, seen: dict[str, str]):
        self._conn = conn
        self._cache = cache
        self.seen = dict(seen)  # newest CSN delivered, per server id
        self.persisting = False

    # SyncreplConsumer drives these two of LDAPObject.
    def search_ext(self, *args, **kwargs):
        return self._conn.search_ext(*args, **kwargs)

    def result4(self, *args, **kwargs):
        return self._conn.result4(*args, **kwargs)

    def _see(self, csns) -> None:
        for sid, csn in _csns(csns).items():
            if csn > self.seen.get(sid, ""):
                self.seen[sid] = csn

    def caught_up(self, target: dict[str, str]) -> bool:
        return all(self.seen.get(sid, "") >= csn for sid, csn in target.items())

    def syncrepl_set_cookie(self, cookie):
        self._see(_cookie_csns(cookie))

    def syncrepl_entry(self, dn, attrs, uuid):
        self._cache._changed(dn, attrs, uuid)
        self._see(attrs.get("entryCSN", ()))

    def syncrepl_delete(self, uuids):
        self._cache._deleted(uuids)

    def syncrepl_present(self, uuids, refreshDeletes=False):
        # Presence only matters to a consumer that mirrors the tree; the cache is empty during the
        # refresh phase (it is cleared on connect and serves nothing before the refresh is done).
        pass

    def syncrepl_refreshdone(self):
        self.persisting = True


class EntryCache:
    """Entries by normalised DN (and didmosUUID), coherent with the directory through its change stream.

    ``pool_settings`` are those of the service account's pool; the cache opens one connection of its
    own with them. The stream thread starts on first use (:meth:`start`) and stops in :meth:`close`.
    """

    #: What a miss must read for the cache to store it.
    fill_attributes = FILL_ATTRIBUTES

    def __init__(self, pool_settings: PoolSettings, suffix: str, *, staleness_seconds: float = 2.0,
                 max_entries: int = 100_000):
        self._pool = ConnectionPool(replace(pool_settings, size=1))
        self.suffix = suffix
        self._suffix_key = normalize_dn(suffix)
        self.staleness_seconds = float(staleness_seconds)
        self.max_entries = max_entries
        self._timeout = max(pool_settings.timeout, self.staleness_seconds)
        self._tick = min(0.1, self.staleness_seconds / 8)
        self._lock = threading.Lock()
        self._by_dn: OrderedDict[str, _Cached] = OrderedDict()
        self._by_entry_uuid: dict[str, _Cached] = {}
        self._by_didmos_uuid: dict[str, _Cached] = {}
        self._containers: dict[str, str] = {}  # entryUUID -> key of non-leaf entries the stream showed
        # Recent changes, so that a read that raced with one is not stored:
        self._streamed: OrderedDict[str, tuple[int, str]] = OrderedDict()  # entryUUID -> (seq, newest entryCSN)
        self._written: OrderedDict[str, int] = OrderedDict()  # key -> seq of this node's last write to it
        self._seq = 0  # counts changes, writes and clears
        self._floor = 0  # tickets older than this are refused (recent changes forgotten, subtree moved)
        self._epoch = 0  # counts (re)connects of the stream
        self._fresh_until = 0.0  # hits are served while time.monotonic() is below this
        self._schema: _Schema | None = None
        self._plans: dict[tuple[str, ...] | None, tuple | None] = {}
        self._use_cookie = True
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        _caches.add(self)

    def _forked(self) -> None:
        """In a child process (gunicorn worker): the parent's thread and connection are not ours."""
        self._fresh_until = 0.0
        self._lock, self._start_lock = threading.Lock(), threading.Lock()
        self._thread = None
        if not self._stop.is_set():
            self._stop = threading.Event()
        self._pool = ConnectionPool(self._pool.settings)  # the parent's socket stays the parent's
        self._clear()

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start following the change stream (idempotent). Hits are served once it is confirmed."""
        with self._start_lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._follow, name=THREAD_NAME, daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop the stream thread, close its connection, and serve nothing more."""
        self._stop.set()
        self._fresh_until = 0.0
        thread = self._thread
        if thread is not None:
            thread.join(self._pool.settings.connect_timeout + 2 * self._tick + 1)
        self._pool.close()
        self.clear()

    @property
    def serving(self) -> bool:
        """True while hits may be served (the stream is confirmed within the staleness bound)."""
        return time.monotonic() < self._fresh_until

    def wait_until_serving(self, timeout: float) -> bool:
        """Start the stream if needed and wait until hits are served; False after ``timeout`` seconds."""
        self.start()
        deadline = time.monotonic() + timeout
        while not self.serving:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def __len__(self) -> int:
        return len(self._by_dn)

    # -- reads (the hot path: no lock, no LDAP) --------------------------------------------------

    def _plan(self, attrs):
        key = tuple(attrs) if attrs is not None else None
        try:
            return self._plans[key]
        except KeyError:
            schema = self._schema
            if schema is None:
                return None
            if len(self._plans) > 1024:
                self._plans.clear()
            plan = self._plans[key] = schema.plan(attrs)
            return plan

    def _not_serving(self) -> bool:
        if time.monotonic() < self._fresh_until:
            return False
        if self._thread is None:
            self.start()
        return True

    def _serve(self, cached, attrs: Sequence[str] | None) -> Entry | None:
        """A hit: the requested attributes of ``cached``, or None when the cache cannot answer them exactly."""
        plan = self._plan(attrs)
        if plan is None:
            return None
        cached.used = True  # second chance for eviction
        return cached.project(plan)

    @counted
    def lookup(self, dn: str, attrs: Sequence[str] | None) -> Entry | None:
        """The cached entry at ``dn`` with ``attrs`` (None: all user attributes), or None: ask LDAP."""
        if self._not_serving():
            return None
        try:
            cached = self._by_dn.get(_key(dn))
        except ldap.LDAPError:  # not a DN: LDAP will say so
            return None
        if cached is None:
            return None
        return self._serve(cached, attrs)

    @counted
    def lookup_uuid(self, didmos_uuid: str, base: str, attrs: Sequence[str] | None) -> Entry | None:
        """The cached entry with ``didmos_uuid`` at or below ``base``, or None: ask LDAP."""
        if self._not_serving():
            return None
        cached = self._by_didmos_uuid.get(didmos_uuid.lower())
        if cached is None:
            return None
        try:
            base_key = _key(base)
        except ldap.LDAPError:
            return None
        if base_key and cached.key != base_key and not cached.key.endswith("," + base_key):
            return None
        return self._serve(cached, attrs)

    # -- misses ----------------------------------------------------------------------------------

    def ticket(self, attrs: Sequence[str] | None) -> Ticket | None:
        """Before reading an entry for the cache; None when the cache cannot take or answer this read."""
        if self._not_serving():
            return None
        plan = self._plan(attrs)
        if plan is None:
            return None
        return Ticket(self._epoch, self._seq, plan)

    def fill(self, dn: str, attrs: dict[str, list[bytes]], ticket: Ticket) -> Entry:
        """Store an entry read with :data:`FILL_ATTRIBUTES` after ``ticket``; return the projection asked for."""
        cached = self._record(dn, attrs)
        if cached.entry_uuid and self._in_suffix(cached.key):
            with self._lock:
                if (ticket.epoch == self._epoch and ticket.seq >= self._floor
                        and not self._changed_since(ticket.seq, cached)):
                    self._put(cached)
        return cached.project(ticket.plan)

    def _changed_since(self, seq: int, cached: _Cached) -> bool:
        """True if the entry read may be older than what the stream showed or this node wrote since."""
        streamed = self._streamed.get(cached.entry_uuid)
        if streamed is not None and streamed[1] > cached.csn:
            return True  # the stream delivered a newer version (or the delete) while it was read
        return self._written.get(cached.key, 0) > seq  # written by this node: its CSN is unknown here

    def _in_suffix(self, key: str) -> bool:
        return key == self._suffix_key or key.endswith("," + self._suffix_key)

    def _record(self, dn: str, attrs: dict[str, list[bytes]]) -> _Cached:
        """Index an entry as read with :data:`FILL_ATTRIBUTES` or sent by the stream."""
        schema = self._schema
        by_type: dict[str, list[str]] = {}
        kept, user_keys = {}, []
        entry_uuid = didmos_uuid = None
        csn = ""
        for name, values in attrs.items():
            attr_type = schema.primary.get(name.split(";", 1)[0].lower(), name.lower())
            if attr_type == "hassubordinates":
                continue
            kept[name] = values
            by_type.setdefault(attr_type, []).append(name)
            if attr_type not in schema.operational:
                user_keys.append(name)
            if values:
                if attr_type == "entryuuid":
                    entry_uuid = values[0].decode()
                elif attr_type == "entrycsn":
                    csn = values[0].decode()
                elif attr_type == "didmosuuid":
                    didmos_uuid = values[0].decode().lower()
        return _Cached(_key(dn), dn, entry_uuid, didmos_uuid, csn, kept,
                       {t: tuple(names) for t, names in by_type.items()}, tuple(user_keys))

    # -- changes (under the lock) ----------------------------------------------------------------

    def invalidate(self, dn: str, *, subtree: bool = False) -> None:
        """Forget the entry at ``dn`` (and, with ``subtree``, everything below it) after a write."""
        try:
            key = _key(dn)
        except ldap.LDAPError:
            return
        with self._lock:
            self._seq += 1
            self._written[key] = self._seq
            self._written.move_to_end(key)
            self._forget_oldest(self._written)
            cached = self._by_dn.get(key)
            if cached is not None:
                self._drop(cached)
            if subtree:
                self._drop_below(key)

    def clear(self) -> None:
        """Forget every entry; reads in flight are not stored."""
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        self._by_dn = OrderedDict()
        self._by_entry_uuid = {}
        self._by_didmos_uuid = {}
        self._floor = self._seq = self._seq + 1

    def _mark(self, entry_uuid: str, csn: str) -> None:
        self._seq += 1
        before = self._streamed.pop(entry_uuid, None)
        self._streamed[entry_uuid] = (self._seq, max(csn, before[1]) if before else csn)
        self._forget_oldest(self._streamed)

    def _forget_oldest(self, recent: OrderedDict) -> None:
        while len(recent) > _RECENT:
            _, seen = recent.popitem(last=False)
            # a read that started before the forgotten change can no longer be checked against it
            self._floor = max(self._floor, seen if isinstance(seen, int) else seen[0])

    def _put(self, cached: _Cached) -> None:
        for old in (self._by_dn.get(cached.key), self._by_entry_uuid.get(cached.entry_uuid)):
            if old is not None:
                self._drop(old)
        self._by_dn[cached.key] = cached
        self._by_entry_uuid[cached.entry_uuid] = cached
        if cached.didmos_uuid:
            self._by_didmos_uuid[cached.didmos_uuid] = cached
        while len(self._by_dn) > self.max_entries:
            key, victim = self._by_dn.popitem(last=False)
            if victim.used:  # second chance: hit since it was last passed
                victim.used = False
                self._by_dn[key] = victim
            else:
                self._unindex(victim)

    def _drop(self, cached: _Cached) -> None:
        if self._by_dn.get(cached.key) is cached:
            del self._by_dn[cached.key]
        self._unindex(cached)

    def _unindex(self, cached: _Cached) -> None:
        if self._by_entry_uuid.get(cached.entry_uuid) is cached:
            del self._by_entry_uuid[cached.entry_uuid]
        if cached.didmos_uuid and self._by_didmos_uuid.get(cached.didmos_uuid) is cached:
            del self._by_didmos_uuid[cached.didmos_uuid]

    def _drop_below(self, key: str) -> None:
        """A container was renamed or moved: its subtree moved with it, without changes of its own."""
        self._floor = self._seq  # a read below it may be in flight
        suffix = "," + key
        for cached in [c for k, c in self._by_dn.items() if k.endswith(suffix)]:
            self._drop(cached)

    def _changed(self, dn: str, attrs: dict[str, list[bytes]], entry_uuid: str) -> None:
        """The stream's ``syncrepl_entry``: an entry was added, modified, renamed or moved."""
        cached = self._record(dn, attrs)
        key, csn = cached.key, cached.csn
        leaf = attrs.get("hasSubordinates", [b"TRUE"])[0].upper() == b"FALSE"
        with self._lock:
            self._mark(entry_uuid, csn)
            old = self._by_entry_uuid.get(entry_uuid)
            if old is not None and old.key != key:
                self._drop(old)
                if not leaf:
                    self._drop_below(old.key)
            if not leaf:
                before = self._containers.get(entry_uuid)
                if before is None and old is None:
                    # A container we knew nothing of changed: it may have moved, and its subtree with
                    # it, from a DN we cannot know. Rare (containers seldom change); start afresh.
                    self._clear()
                elif before is not None and before != key:
                    self._drop_below(before)
                if len(self._containers) >= self.max_entries:
                    self._containers.clear()
                self._containers[entry_uuid] = key
            current = self._by_dn.get(key)
            if current is not None and current.entry_uuid != entry_uuid:
                self._drop(current)  # deleted and added again under the same DN
                current = None
            held = old or current
            if held is not None and cached.csn >= held.csn:
                self._put(cached)  # keep hits warm

    def _deleted(self, uuids) -> None:
        """The stream's ``syncrepl_delete``."""
        with self._lock:
            for entry_uuid in uuids:
                self._mark(entry_uuid, _DELETED)
                cached = self._by_entry_uuid.get(entry_uuid)
                if cached is not None:
                    self._drop(cached)
                self._containers.pop(entry_uuid, None)

    # -- the stream thread -----------------------------------------------------------------------

    def _follow(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            started = time.monotonic()
            report = log.warning if attempt == 0 else log.debug  # once per outage, not per retry
            try:
                with self._pool.connection() as conn:
                    self._stream(conn)
            except _StreamBroken as exc:
                report("entry cache: %s; reconnecting", exc)
            except (ldap.LDAPError, Unavailable, ConfigError) as exc:
                report("entry cache: change stream unavailable (%s); reads go to LDAP", exc)
            except Exception:  # never die silently: a dead thread would only mean no hits
                log.exception("entry cache: change stream failed; reads go to LDAP")
            finally:
                self._fresh_until = 0.0
                self._pool.drop_idle()  # never reuse a connection with a sync search on it
            if time.monotonic() - started > 10:
                attempt = 0
            self._stop.wait(min(0.05 * 2**attempt, 2.0))
            attempt += 1

    def _stream(self, conn) -> None:
        base = ldap.SCOPE_BASE
        root = conn.search_s("", base, "(objectClass=*)", ["subschemaSubentry"])
        subschema = root[0][1]["subschemaSubentry"][0].decode()
        definitions = conn.search_s(subschema, base, "(objectClass=*)", ["attributeTypes"])[0][1]["attributeTypes"]
        context = conn.search_s(self.suffix, base, "(objectClass=*)", ["contextCSN"])[0][1].get("contextCSN", [])
        csns = _csns(context)
        with self._lock:
            self._clear()
            self._epoch += 1
            self._containers.clear()
            self._schema = _Schema(definitions)
            self._plans = {}
        stream = _Stream(conn, self, csns)
        # From the current contextCSN: syncprov answers "up to date" (or replays its session log)
        # instead of sending the whole tree. Should a server refuse such a cookie, the next attempt
        # goes without one (a full refresh, which only costs time: nothing is cached meanwhile).
        cookie = "rid=000,csn=" + ";".join(sorted(csns.values())) if csns and self._use_cookie else None
        try:
            msgid = stream.syncrepl_search(self.suffix, ldap.SCOPE_SUBTREE, mode="refreshAndPersist",
                                           cookie=cookie, filterstr="(objectClass=*)",
                                           attrlist=list(STREAM_ATTRIBUTES))
            self._persist(conn, stream, msgid)
        except ldap.LDAPError as exc:
            if not stream.persisting and not isinstance(exc, CONNECTION_ERRORS):
                self._use_cookie = not self._use_cookie
            raise

    def _persist(self, conn, stream: _Stream, msgid: int) -> None:
        """Apply the stream's changes and confirm, every quarter of the bound, that it is complete."""
        base = ldap.SCOPE_BASE
        check = None  # (msgid, sent) of the contextCSN read in flight
        target = None  # (csns, sent) read, waiting until the stream delivered that far
        next_check = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if stream.persisting and check is None and target is None and now >= next_check:
                    check = (conn.search_ext(self.suffix, base, "(objectClass=*)", ["contextCSN"]), now)
                try:
                    # While a contextCSN read is in flight, wake up soon to pick up its answer.
                    wait = self._tick if check is None else min(self._tick, 0.005)
                    if not stream.syncrepl_poll(msgid=msgid, timeout=wait):
                        raise _StreamBroken("the server ended the change stream")
                except ldap.TIMEOUT:  # python-ldap raises on a timeout with nothing received
                    pass
                now = time.monotonic()
                if check is not None:
                    kind, found = conn.result4(check[0], all=1, timeout=0)[:2]
                    if kind is not None:
                        values = next((a.get("contextCSN", []) for dn, a in found if dn), [])
                        target, check = (_csns(values), check[1]), None
                    elif now - check[1] > self._timeout:
                        raise _StreamBroken(f"no answer on the stream's connection for {self._timeout:.0f}s")
                if target is not None:
                    if stream.caught_up(target[0]):
                        self._fresh_until = target[1] + self.staleness_seconds
                        next_check = target[1] + self.staleness_seconds / 4
                        target = None
                    elif now - target[1] > self._timeout:
                        raise _StreamBroken(f"the stream did not deliver changes for {self._timeout:.0f}s")
        finally:
            self._fresh_until = 0.0
            try:
                conn.abandon_ext(msgid)
            except ldap.LDAPError:
                pass
