"""didmos_host.servers against real slapd and redis-server processes in tmp_path."""

from __future__ import annotations

import os

import ldap
import pytest
import redis

from didmos_host.servers import RedisServer, ServerError, SlapdServer, find_program, free_port

pytestmark = pytest.mark.slow

EXPECTED_OVERLAYS = ["syncprov", "accesslog", "memberof", "refint", "unique", "ppolicy", "sssvlv", "deref"]


def _alive(pid: int) -> bool:
    # stop() reaps its child, so a stopped server's pid no longer exists at all (not even as a zombie).
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _slapd(path, **kw) -> SlapdServer:
    return SlapdServer(path, free_port(), "admin-secret", password_hash="{SSHA}", nosync=True, **kw)


def _add_base(conn) -> None:
    conn.add_s("dc=de", [("objectClass", [b"dcObject", b"organization"]), ("dc", [b"de"]), ("o", [b"de"])])


def _add_person(conn, dn: str, uid: str, password: bytes | None = None) -> str:
    value = uid.encode()
    attrs = [("objectClass", [b"inetOrgPerson"]), ("uid", [value]), ("cn", [value]), ("sn", [value])]
    if password is not None:
        attrs.append(("userPassword", [password]))
    conn.add_s(dn, attrs)
    return dn


@pytest.fixture
def slapd(tmp_path):
    server = _slapd(tmp_path / "ldap")
    with server:
        yield server


def test_root_dse_answers(slapd):
    conn = ldap.initialize(slapd.uri)
    [(dn, attrs)] = conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["namingContexts"])
    assert dn == ""
    assert b"dc=de" in attrs["namingContexts"]
    assert (slapd.data_dir / "slapd.d" / "cn=config.ldif").is_file()
    assert (slapd.data_dir / "slapd.pid").read_text().strip() == str(slapd.pid)


def test_config_connection_manages_config_and_lists_overlays(slapd):
    conn = slapd.config_connection()
    assert conn.whoami_s() == f"dn:gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"
    found = conn.search_s("olcDatabase={2}mdb,cn=config", ldap.SCOPE_ONELEVEL,
                          "(objectClass=olcOverlayConfig)", ["olcOverlay"])
    names = [attrs["olcOverlay"][0].decode().split("}", 1)[1] for _, attrs in found]
    assert sorted(names) == sorted(EXPECTED_OVERLAYS)
    [(_, frontend)] = conn.search_s("olcDatabase={-1}frontend,cn=config", ldap.SCOPE_BASE,
                                    attrlist=["olcPasswordHash"])
    assert frontend["olcPasswordHash"] == [b"{SSHA}"]
    # manage on cn=config: the project adds its own indexes this way.
    conn.modify_s("olcDatabase={2}mdb,cn=config", [(ldap.MOD_ADD, "olcDbIndex", [b"employeeNumber eq"])])
    # manage on the suffix too, for local admin tooling.
    _add_base(conn)
    assert conn.search_s("dc=de", ldap.SCOPE_BASE, attrlist=["dc"])[0][1]["dc"] == [b"de"]


def test_rootdn_writes_and_overlays_act(slapd):
    admin = slapd.admin_connection()
    _add_base(admin)

    alice = _add_person(admin, "uid=alice,dc=de", "alice", b"alice-pw")
    [(_, attrs)] = admin.search_s(alice, ldap.SCOPE_BASE, attrlist=["userPassword"])
    assert attrs["userPassword"][0].startswith(b"{SSHA}")  # ppolicy hashed the cleartext
    user = ldap.initialize(slapd.uri)
    user.simple_bind_s(alice, "alice-pw")
    assert user.whoami_s() == f"dn:{alice}"

    with pytest.raises(ldap.CONSTRAINT_VIOLATION):  # unique overlay: uid is unique under the suffix
        _add_person(admin, "cn=another alice,dc=de", "alice")

    group = "cn=staff,dc=de"
    admin.add_s(group, [("objectClass", [b"groupOfNames"]), ("cn", [b"staff"]), ("member", [alice.encode()])])
    [(_, attrs)] = admin.search_s(alice, ldap.SCOPE_BASE, attrlist=["memberOf"])
    assert attrs["memberOf"] == [group.encode()]

    log = slapd.config_connection().search_s("cn=accesslog", ldap.SCOPE_ONELEVEL, "(objectClass=auditAdd)",
                                             ["reqDN"])
    assert {a["reqDN"][0].decode() for _, a in log} >= {"dc=de", alice, group}


def test_stop_and_restart_keep_data(tmp_path):
    server = _slapd(tmp_path / "ldap")
    server.start()
    _add_base(server.admin_connection())
    pid = server.pid
    server.stop()
    assert server.pid is None and not _alive(pid)
    server.stop()  # idempotent
    assert server.ensure_config() is False
    with server:
        assert server.admin_connection().search_s("dc=de", ldap.SCOPE_BASE, attrlist=["o"])[0][1]["o"] == [b"de"]


def test_two_instances_side_by_side(tmp_path):
    with _slapd(tmp_path / "one") as one, _slapd(tmp_path / "two") as two:
        assert one.port != two.port and one.pid != two.pid
        _add_base(one.admin_connection())
        assert one.admin_connection().search_s("dc=de", ldap.SCOPE_BASE)
        with pytest.raises(ldap.NO_SUCH_OBJECT):
            two.admin_connection().search_s("dc=de", ldap.SCOPE_BASE)


def test_port_in_use_fails_clearly(slapd, tmp_path):
    other = SlapdServer(tmp_path / "other", slapd.port, "x", password_hash="{SSHA}")
    with pytest.raises(ServerError, match=f"port {slapd.port} .* already in use"):
        other.start()
    assert other.pid is None


def test_find_program_names_the_package():
    assert find_program("slapd", "slapd").endswith("/slapd")
    with pytest.raises(ServerError, match="apt-get install no-such-package"):
        find_program("no-such-program-didmos", "no-such-package")


def test_redis_persistence_survives_restart(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port())
    with server:
        redis.Redis.from_url(server.url).set("greeting", "hello")
        pid = server.pid
    assert server.pid is None and not _alive(pid)
    assert (server.data_dir / "appendonlydir").is_dir()
    with server:
        assert redis.Redis.from_url(server.url).get("greeting") == b"hello"


def test_redis_without_persistence(tmp_path):
    server = RedisServer(tmp_path / "redis", free_port(), persistence=False)
    with server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert client.config_get("save") == {"save": ""}
        pid = server.pid
    assert server.pid is None and not _alive(pid)
    assert not any(server.data_dir.glob("*.rdb")) and not (server.data_dir / "appendonlydir").exists()
    with server:
        assert redis.Redis.from_url(server.url).get("k") is None


def test_bulk_load_adds_entries_offline(tmp_path):
    server = SlapdServer(tmp_path / "bulk", port=free_port(), rootpw="pw", password_hash="{SSHA}", nosync=True)
    ldif = tmp_path / "data.ldif"
    ldif.write_text("dn: dc=de\nobjectClass: dcObject\nobjectClass: organization\ndc: de\no: de\n\n"
                    + "".join(f"dn: cn=n{i},dc=de\nobjectClass: applicationProcess\ncn: n{i}\n\n" for i in range(50)))
    server.bulk_load(ldif)
    with server:
        found = server.admin_connection().search_s("dc=de", ldap.SCOPE_ONELEVEL, "(cn=n*)", ["entryUUID"])
        assert len(found) == 50 and all(attrs["entryUUID"] for _, attrs in found)
        with pytest.raises(ServerError, match="stop slapd"):
            server.bulk_load(ldif)
