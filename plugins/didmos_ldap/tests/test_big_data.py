"""100k entries and a 100k-member group on a private slapd, loaded offline with slapadd."""

import secrets
import time

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.directory import init_directory
from didmos_host.host import Host
from didmos_host.servers import SlapdServer, free_port

pytestmark = pytest.mark.slow
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
GROUP = "cn=huge,ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"
N = 100_000


class Recorder:
    def __init__(self):
        self.operations = []

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        self.operations.append((operation.kind, [(op, attr, len(values or ())) for op, attr, values in operation.changes]))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    server = SlapdServer(root / "slapd", port=free_port(), rootpw=secrets.token_urlsafe(12), password_hash="{SSHA}",
                         nosync=True)
    overrides = {"directory": {"uri": server.uri, "config_uri": server.ldapi_uri,
                               "bind_password": secrets.token_urlsafe(12), "superadmin_password": "pw"}}
    server.start()
    init_directory(Host.create(overrides))
    server.stop()
    ldif = root / "big.ldif"
    with ldif.open("w") as out:
        for i in range(N):
            out.write(f"dn: uid=u{i},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: didmosObject\n"
                      f"uid: u{i}\ncn: User {i}\nsn: {i}\ndidmosUUID: 00000000-0000-0000-0001-{i:012d}\n\n")
        out.write(f"dn: {GROUP}\nobjectClass: groupOfNames\ncn: huge\n")
        out.writelines(f"member: uid=u{i},{PEOPLE}\n" for i in range(N))
        out.write("\n")
    started = time.monotonic()
    server.bulk_load(ldif)
    print(f"slapadd of {N} entries and a {N}-member group: {time.monotonic() - started:.1f}s")
    server.start()
    try:
        yield server, overrides
    finally:
        server.stop()


def member_count(server):
    (_, attrs), = server.admin_connection().search_s(GROUP, ldap.SCOPE_BASE, attrlist=["member"])
    return len(attrs["member"])


def test_one_member_change_on_a_100k_group_is_one_modify_of_that_value(big):
    server, overrides = big
    recorder = Recorder()
    directory = Host.create(overrides, extra_plugins=[recorder]).service("directory")
    directory.add(f"uid=newcomer,{PEOPLE}", {"objectClass": ["inetOrgPerson"], "uid": ["newcomer"], "cn": ["n"], "sn": ["n"]})
    recorder.operations.clear()

    directory.modify(GROUP, [(ldap.MOD_ADD, "member", [f"uid=newcomer,{PEOPLE}"])], permissive=True)
    directory.modify(GROUP, [(ldap.MOD_DELETE, "member", [f"uid=u17,{PEOPLE}"])], permissive=True)
    assert recorder.operations == [("modify", [(ldap.MOD_ADD, "member", 1)]),
                                   ("modify", [(ldap.MOD_DELETE, "member", 1)])]
    assert member_count(server) == N  # one in, one out
    matched = server.admin_connection().search_ext_s(
        GROUP, ldap.SCOPE_BASE, attrlist=["member"],
        serverctrls=[ldap.controls.libldap.MatchedValuesControl(True, f"((member=uid=newcomer,{PEOPLE})(member=uid=u17,{PEOPLE}))")])
    assert matched[0][1]["member"] == [f"uid=newcomer,{PEOPLE}".encode()]
    directory.close()


def test_streaming_100k_entries_yields_every_one(big):
    server, overrides = big
    directory = Host.create(overrides).service("directory")
    seen = 0
    last = None
    for entry in directory.iter_search(PEOPLE, "(uid=u*)", ldap.SCOPE_ONELEVEL, ["uid"], page_size=1000):
        seen += 1
        last = entry
    assert seen == N and last.first("uid").startswith("u")
    directory.close()
