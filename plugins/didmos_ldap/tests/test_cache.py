"""The entry cache against the real slapd: hits without LDAP, and coherence with changes made anywhere.

"Served without LDAP" is measured by counting connection checkouts from the directory's pools: every
operation :class:`~didmos_ldap.directory.Directory` sends takes a connection from one of them, so a
read that checks out none made no round trip. (The interceptors run on hits too, so counting in a
pre-operation hook would prove nothing.) The cache's own connection carries only the change stream.
"""

import socket
import threading
import time
import uuid

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.errors import OperationRejected
from didmos_host.host import Host
from didmos_ldap.cache import THREAD_NAME

BOUND = 1.0  # staleness_seconds in these tests
CACHE = {"cache": {"enabled": True, "staleness_seconds": BOUND}}


@pytest.fixture(autouse=True)
def no_stream_threads_left():
    yield
    deadline = time.monotonic() + 5
    while any(t.name == THREAD_NAME for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    left = [t for t in threading.enumerate() if t.name == THREAD_NAME]
    assert not left, "a change stream thread outlived its directory"


@pytest.fixture
def directory(make_directory):
    directory = make_directory(ldap=CACHE)
    assert directory.cache.wait_until_serving(5)
    return directory


@pytest.fixture
def branch(directory):
    """A fresh subtree for one test."""
    dn = f"ou=t-{uuid.uuid4().hex[:12]},dc=didmos,dc=de"
    directory.add(dn, {"objectClass": ["organizationalUnit"], "ou": [dn[5:19]]})
    return dn


@pytest.fixture
def admin(didmos_slapd):
    """A rootdn connection: changes made through it are made behind didmos's back."""
    conn = didmos_slapd.admin_connection()
    yield conn
    conn.unbind_s()


def person(name, **extra):
    """A person named ``cn=name``; its uid is unique in the whole (session-wide) directory."""
    return {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"], "cn": [name], "sn": [name],
            "uid": [f"{name}-{uuid.uuid4().hex[:8]}"], "didmosUUID": [str(uuid.uuid4())], **extra}


def count_ldap_operations(directory, monkeypatch) -> dict[str, int]:
    """Count connection checkouts from the directory's pools (each LDAP operation takes one)."""
    counter = {"n": 0}
    for pool in {directory.pool, directory.read_pool}:
        def counted(original=pool.connection):
            counter["n"] += 1
            return original()
        monkeypatch.setattr(pool, "connection", counted)
    return counter


def seen_within(read, expected, bound: float) -> float:
    """Poll ``read()`` (the change was just made) until it returns ``expected``; return how long that took.

    Asserts the staleness bound itself: no read that started ``bound`` seconds or more after the
    change returned anything else. (Measured at the start of each read, so a pause of the test
    process between two reads cannot make a correct cache look late.)
    """
    changed = time.monotonic()
    while True:
        started = time.monotonic()
        value = read()
        if value == expected:
            return started - changed
        assert started - changed < bound, f"a read {started - changed:.3f}s after the change still saw {value!r}"
        time.sleep(0)


def test_a_repeated_read_is_a_hit_without_ldap(make_directory, branch, monkeypatch):
    seen = []

    class Watch:
        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            if operation.kind == "search":
                seen.append(("pre", operation.dn))

        @hookimpl
        def didmos_ldap_post_operation(self, operation, result, actor):
            if operation.kind == "search":
                seen.append(("post", [entry.first("cn") for entry in result]))

    directory = make_directory(Watch(), ldap=CACHE)
    assert directory.cache.wait_until_serving(5)
    dn = f"cn=ann,{branch}"
    directory.add(dn, person("ann", mail=["ann@example.org"]))
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    seen.clear()

    first = directory.get(dn, ["cn", "mail"])
    assert ldap_operations["n"] == 1
    second = directory.get(dn, ["cn", "mail"])
    third = directory.get(dn.upper(), ["MAIL"])  # another spelling of the same DN and attribute
    assert ldap_operations["n"] == 1, "hits must not talk to LDAP"
    assert first.dn == second.dn == dn and second.values("mail") == ["ann@example.org"]
    assert dict(second.attrs) == dict(first.attrs) and list(third.attrs) == ["mail"]
    assert seen == [("pre", dn), ("post", ["ann"])] * 2 + [("pre", dn.upper()), ("post", [None])]


def test_hits_answer_exactly_what_ldap_answers(make_directory, branch, monkeypatch):
    plain = make_directory()  # cache disabled
    directory = make_directory(ldap=CACHE)
    assert directory.cache.wait_until_serving(5)
    dn = f"cn=bea,{branch}"
    directory.add(dn, person("bea", mail=["b@example.org", "bea@example.org"], description=["x"]))
    requests = [None, [], ["*"], ["uid"], ["commonName"], ["1.1"], ["*", "entryCSN", "entryUUID"],
                ["modifyTimestamp", "createTimestamp", "2.5.4.4"], ["objectClass", "nonexistentAttr"]]
    for attrs in requests:
        directory.get(dn, attrs)  # fill
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    for attrs in requests:
        hit, truth = directory.get(dn, attrs), plain.get(dn, attrs)
        assert (hit.dn, dict(hit.attrs)) == (truth.dn, dict(truth.attrs)), attrs
    assert ldap_operations["n"] == len([a for a in requests if a and "nonexistentAttr" in a])
    # what a hit cannot answer exactly goes to LDAP: other operational attributes, supertypes
    for attrs in (["memberOf"], ["+"], ["name"], ["hasSubordinates"]):
        before = ldap_operations["n"]
        assert dict(directory.get(dn, attrs).attrs) == dict(plain.get(dn, attrs).attrs)
        assert ldap_operations["n"] == before + 1, attrs


def test_interceptors_apply_to_hits(make_directory, branch):
    class Guard:
        closed = False

        @hookimpl
        def didmos_ldap_pre_operation(self, operation, actor):
            if Guard.closed and "secret" in operation.dn:
                raise OperationRejected("no reading secrets")
            if actor is not None and operation.attributes is None:
                operation.attributes = ["uid"]  # restrict what this actor may see

    directory = make_directory(Guard(), ldap=CACHE)
    assert directory.cache.wait_until_serving(5)
    from didmos_host.records import Actor

    dn = f"cn=secret,{branch}"
    directory.add(dn, person("secret"))
    assert "sn" in directory.get(dn) and len(directory.cache) == 1  # cached now
    assert list(directory.get(dn, actor=Actor(dn="uid=x", uuid="x")).attrs) == ["uid"]
    Guard.closed = True
    with pytest.raises(OperationRejected):
        directory.get(dn)


def test_changes_behind_didmos_back_are_seen_within_the_bound(directory, branch, admin, monkeypatch):
    directory.add(f"ou=sub,{branch}", {"objectClass": ["organizationalUnit"], "ou": ["sub"]})
    for name in ("dee", "eli", "fin", "gus"):
        directory.add(f"cn={name},ou=sub,{branch}", person(name, title=["old"]))
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    delays = {}

    def cached(dn, attrs=("title",)):
        directory.get(dn, list(attrs))
        before = ldap_operations["n"]
        directory.get(dn, list(attrs))
        assert ldap_operations["n"] == before, "should be a hit before the change"

    def title(dn):
        entry = directory.get(dn, ["title"])
        return entry.values("title") if entry else None

    dee = f"cn=dee,ou=sub,{branch}"
    cached(dee)
    admin.modify_s(dee, [(ldap.MOD_REPLACE, "title", [b"new"])])
    delays["modify"] = seen_within(lambda: title(dee), ["new"], BOUND)

    eli = f"cn=eli,ou=sub,{branch}"
    cached(eli)
    admin.delete_s(eli)
    delays["delete"] = seen_within(lambda: title(eli), None, BOUND)

    fin = f"cn=fin,ou=sub,{branch}"
    cached(fin)
    admin.rename_s(fin, "cn=fin2")
    delays["rename"] = seen_within(lambda: title(fin), None, BOUND)
    assert title(f"cn=fin2,ou=sub,{branch}") == ["old"]

    gus = f"cn=gus,ou=sub,{branch}"  # its parent is renamed: the subtree moves without events of its own
    cached(gus)
    cached(gus, ["uid"])
    admin.rename_s(f"ou=sub,{branch}", "ou=moved")
    delays["parent renamed"] = seen_within(lambda: title(gus), None, BOUND)
    assert title(f"cn=gus,ou=moved,{branch}") == ["old"]
    by_uuid = directory.get_by_uuid(directory.get(f"cn=gus,ou=moved,{branch}").first("didmosUUID"), branch)
    assert by_uuid.dn == f"cn=gus,ou=moved,{branch}"

    print("\nseconds from the ldapmodify until get() saw it:",
          ", ".join(f"{what} {delay:.4f}" for what, delay in delays.items()))


def test_own_writes_are_seen_at_once(directory, branch):
    dn = f"cn=hal,{branch}"
    directory.add(dn, person("hal", title=["0"]))
    for i in range(1, 30):
        assert directory.get(dn, ["title"]).values("title") == [str(i - 1)]  # a hit after the first read
        directory.modify(dn, [(ldap.MOD_REPLACE, "title", [str(i)])])
        assert directory.get(dn, ["title"]).values("title") == [str(i)]  # no waiting
    directory.add(f"ou=box,{branch}", {"objectClass": ["organizationalUnit"], "ou": ["box"]})
    directory.move(dn, new_superior=f"ou=box,{branch}")
    assert directory.get(dn) is None and directory.get(f"cn=hal,ou=box,{branch}") is not None
    directory.delete(f"cn=hal,ou=box,{branch}")
    assert directory.get(f"cn=hal,ou=box,{branch}") is None
    # (slapd 2.5.13's mdb refuses to rename a container right after an entry was moved into it:
    # "DN index add failed"; hence a fresh child here.)
    directory.add(f"cn=ida,ou=box,{branch}", person("ida"))
    assert directory.get(f"cn=ida,ou=box,{branch}") is not None
    directory.move(f"ou=box,{branch}", new_rdn="ou=crate")  # the cached child moves with it
    assert directory.get(f"cn=ida,ou=box,{branch}") is None
    assert directory.get(f"cn=ida,ou=crate,{branch}").first("cn") == "ida"


def test_get_by_uuid_is_a_hit_and_respects_the_base(make_directory, branch, monkeypatch):
    plain = make_directory()
    directory = make_directory(ldap=CACHE)
    assert directory.cache.wait_until_serving(5)
    dn = f"cn=ivy,{branch}"
    directory.add(dn, person("ivy"))
    ivy = directory.get(dn, ["didmosUUID"]).first("didmosUUID")
    assert directory.get_by_uuid(ivy.upper(), branch, ["cn"]).values("cn") == ["ivy"]
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    assert directory.get_by_uuid(ivy, "dc=didmos,dc=de", ["uid"]).dn == dn
    assert ldap_operations["n"] == 0
    elsewhere = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
    assert directory.get_by_uuid(ivy, elsewhere) is None and plain.get_by_uuid(ivy, elsewhere) is None
    assert plain.get_by_uuid(ivy, branch, ["cn"]).values("cn") == ["ivy"]
    assert directory.get_by_uuid(str(uuid.uuid4()), branch) is None


def test_max_entries_bounds_the_cache(make_directory, branch, monkeypatch):
    directory = make_directory(ldap={"cache": {**CACHE["cache"], "max_entries": 3}})
    assert directory.cache.wait_until_serving(5)
    dns = [f"cn=j{i},{branch}" for i in range(6)]
    for i, dn in enumerate(dns):
        directory.add(dn, person(f"j{i}"))
    for dn in dns:
        directory.get(dn)
    assert len(directory.cache) == 3
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    for dn in dns[3:]:
        directory.get(dn)
    assert ldap_operations["n"] == 0
    directory.get(dns[0])  # evicted
    assert ldap_operations["n"] == 1 and len(directory.cache) == 3


def test_the_cache_is_off_by_default_and_starts_on_first_use(make_directory):
    assert make_directory().cache is None
    directory = make_directory(ldap=CACHE)
    assert not any(t.name == THREAD_NAME for t in threading.enumerate())  # a CLI that never reads opens nothing
    directory.get("dc=didmos,dc=de")
    assert any(t.name == THREAD_NAME for t in threading.enumerate())


class TcpProxy:
    """A TCP forwarder to slapd that a test can freeze (a silent network partition) or cut."""

    def __init__(self, port: int):
        self.upstream = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.uri = f"ldap://127.0.0.1:{self.listener.getsockname()[1]}"
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.upstream)
            except OSError:
                return
            self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pump, args=(source, target), daemon=True)
                thread.start()
                self.threads.append(thread)

    def _pump(self, source, target):
        try:
            while data := source.recv(65536):
                self.flowing.wait()  # frozen: nothing arrives, nothing fails
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self.listener.close()
        self.cut()
        self.flowing.set()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def proxy(didmos_slapd):
    proxy = TcpProxy(didmos_slapd.port)
    yield proxy
    proxy.close()


def test_no_stale_hits_while_the_stream_is_down(make_directory, didmos_overrides, didmos_slapd, proxy, admin,
                                               monkeypatch):
    # Writes and the change stream go through the proxy; plain reads go straight to slapd.
    directory = make_directory(
        directory={**didmos_overrides["directory"], "uri": proxy.uri},
        ldap={**CACHE, "read_uris": didmos_slapd.uri, "timeout": 1.0, "connect_timeout": 1.0})
    assert directory.cache.wait_until_serving(5)
    ou = f"t-{uuid.uuid4().hex[:12]}"
    parent, dn = f"ou={ou},dc=didmos,dc=de", f"cn=kim,ou={ou},dc=didmos,dc=de"
    admin.add_s(parent, [("objectClass", [b"organizationalUnit"]), ("ou", [ou.encode()])])
    admin.add_s(dn, [("objectClass", [b"inetOrgPerson"]), ("cn", [b"kim"]), ("sn", [b"kim"]), ("title", [b"old"])])
    directory.get(dn, ["title"])
    ldap_operations = count_ldap_operations(directory, monkeypatch)
    assert directory.get(dn, ["title"]).values("title") == ["old"] and ldap_operations["n"] == 0

    proxy.flowing.clear()  # the stream goes silent: no error, no events, no confirmations
    admin.modify_s(dn, [(ldap.MOD_REPLACE, "title", [b"changed while the stream was down"])])

    def title():
        return directory.get(dn, ["title"]).values("title")

    delay = seen_within(title, ["changed while the stream was down"], BOUND)
    print(f"\nwith the stream silent, get() saw the change after {delay:.3f}s (bound {BOUND}s)")
    assert not directory.cache.serving
    assert ldap_operations["n"] > 0  # answered by LDAP, not by the cache

    proxy.cut()  # the partition ends with the connections lost; the stream reconnects and starts afresh
    proxy.flowing.set()
    assert directory.cache.wait_until_serving(10)
    assert directory.get(dn, ["title"]).values("title") == ["changed while the stream was down"]
    before = ldap_operations["n"]
    assert directory.get(dn, ["title"]).values("title") == ["changed while the stream was down"]
    assert ldap_operations["n"] == before, "served from the cache again"
    admin.delete_s(dn)
    admin.delete_s(parent)
