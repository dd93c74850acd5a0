"""Several OpenLDAP providers replicating each other (multi-provider syncrepl) under didmos.

Real slapd processes on loopback (``running_providers``); each didmos node lists every provider in
``directory.uri``, starting with its own, so two nodes write to different providers.
"""

from __future__ import annotations

import time
import uuid

import ldap
import pytest

from didmos_host.servers import ServerError, wait_replicated
from didmos_host.testing import (SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth, providers_overrides, running_providers,
                                 wait_for)

pytestmark = pytest.mark.slow

TENANT = "ou=default-tenant,dc=didmos,dc=de"
RBAC = f"ou=rbac,{TENANT}"
PEOPLE = f"ou=people,ou=data,{TENANT}"
USERS = "/scim/v2/Users"
ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
#: How long a change may take to reach the other provider here (it takes well under a second).
REPLICATION_SECONDS = 10.0


@pytest.fixture(scope="module")
def providers(tmp_path_factory):
    with running_providers(tmp_path_factory.mktemp("providers"), 2) as servers:
        yield servers


@pytest.fixture
def node(make_app, providers):
    """``node(i)``: a didmos app that writes to provider ``i`` while it answers (the PDP refreshes
    every 0.3 s), and its test client."""
    def make(first: int):
        app = make_app(**providers_overrides(providers, first), pdp={"refresh_seconds": 0.3})
        return app.test_client()
    return make


def eventually(check, timeout: float = REPLICATION_SECONDS):
    return wait_for(check, timeout, "replication", interval=0.05)


def new_user(client, password: str | None = None) -> dict:
    name = f"repl-{uuid.uuid4().hex[:10]}"
    body = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
            "name": {"givenName": "Re", "familyName": "Plica"}}
    if password:
        body["password"] = password
    response = client.post(USERS, json=body, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_every_provider_has_the_schema_and_the_entries(providers):
    for server in providers:
        conn = server.config_connection()
        try:
            schemas = [entry["cn"][0].decode() for _, entry in
                       conn.search_s("cn=schema,cn=config", ldap.SCOPE_ONELEVEL, "(cn=*)", ["cn"])]
        finally:
            conn.unbind_s()
        assert any(name.endswith("}didmos") for name in schemas), (server.uri, schemas)
    wait_replicated(providers, f"didmosUUID={SUPERADMIN_ID},{PEOPLE}")


def test_a_write_through_one_provider_is_read_through_the_other(node, providers):
    one, two = node(0), node(1)
    user = new_user(one)
    seen = eventually(lambda: (r := two.get(f"{USERS}/{user['id']}", headers=ADMIN)).status_code == 200 and r)
    assert seen.get_json()["userName"] == user["userName"]

    # and back: a change written to the second provider reaches the first
    patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
             "Operations": [{"op": "replace", "path": "displayName", "value": "Changed On Two"}]}
    assert two.patch(f"{USERS}/{user['id']}", json=patch, headers=ADMIN).status_code == 200
    eventually(lambda: one.get(f"{USERS}/{user['id']}", headers=ADMIN).get_json().get("displayName")
               == "Changed On Two")
    assert two.delete(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 204
    eventually(lambda: one.get(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 404)


def test_writes_fail_over_to_the_other_provider_and_the_killed_one_catches_up(node, providers):
    client = node(0)
    before = new_user(client)
    providers[0].kill()
    try:
        during = new_user(client)  # provider 1 is gone: the pool opens a connection to provider 2
        assert client.get(f"{USERS}/{during['id']}", headers=ADMIN).status_code == 200
        patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                 "Operations": [{"op": "replace", "path": "displayName", "value": "While One Was Down"}]}
        assert client.patch(f"{USERS}/{before['id']}", json=patch, headers=ADMIN).status_code == 200
    finally:
        providers[0].start()
    dn = f"didmosUUID={during['id']},{PEOPLE}"
    wait_replicated(providers, dn, REPLICATION_SECONDS)
    conn = providers[0].admin_connection()
    try:
        eventually(lambda: conn.search_s(f"didmosUUID={before['id']},{PEOPLE}", ldap.SCOPE_BASE,
                                         attrlist=["displayName"])[0][1].get("displayName") == [b"While One Was Down"])
    finally:
        conn.unbind_s()


def test_a_policy_change_on_one_provider_is_in_effect_on_a_node_of_the_other(node, providers):
    """The PDP's view stays coherent across nodes: a grant written to provider 2 takes effect in a
    node bound to provider 1 within replication plus ``pdp.refresh_seconds``; so does its removal."""
    one = node(0)
    password = "Repl-" + uuid.uuid4().hex
    user, other = new_user(one, password), new_user(one)
    as_user = basic_auth(user["id"], password)
    assert one.get(f"{USERS}/{other['id']}", headers=as_user).status_code in (403, 404)

    name = f"read-people-{uuid.uuid4().hex[:6]}"
    permission = f"cn={name},ou=permissions,{RBAC}"
    conn = providers[1].admin_connection()
    try:
        conn.add_s(permission, [("objectClass", [b"didmosPermission"]), ("cn", [name.encode()]),
                                ("didmosOperation", [b"read"]), ("didmosResourceType", [b"User"]),
                                ("didmosObjectScope", [f"subtree:{PEOPLE}".encode()])])
        conn.modify_s(f"cn=standarduser,ou=roles,{RBAC}",
                      [(ldap.MOD_ADD, "didmosPermissionRef", [permission.encode()])])
        eventually(lambda: one.get(f"{USERS}/{other['id']}", headers=as_user).status_code == 200)

        conn.modify_s(f"cn=standarduser,ou=roles,{RBAC}",
                      [(ldap.MOD_DELETE, "didmosPermissionRef", [permission.encode()])])
        conn.delete_s(permission)
        eventually(lambda: one.get(f"{USERS}/{other['id']}", headers=as_user).status_code in (403, 404))
    finally:
        conn.unbind_s()


def _config_snapshot(server) -> list:
    conn = server.config_connection()
    try:
        return sorted((dn, sorted((k, sorted(v)) for k, v in attrs.items()))
                      for dn, attrs in conn.search_s("cn=config", ldap.SCOPE_SUBTREE, "(objectClass=*)"))
    finally:
        conn.unbind_s()


def test_reapplying_every_migration_to_every_provider_changes_nothing(providers):
    """`didmos directory init --reapply-schema` (for a provider that joined later) is safe where the
    migrations are there: slapd would take a second olcOverlay=memberof for another instance."""
    from didmos_host.directory import init_directory
    from didmos_host.host import Host

    before = [_config_snapshot(server) for server in providers]
    report = init_directory(Host.create(providers_overrides(providers)), reapply=True)
    assert report.migrations_applied == []
    assert [_config_snapshot(server) for server in providers] == before


def test_the_entry_cache_of_a_node_follows_writes_made_through_the_other_provider(make_app, providers):
    """With ``ldap.cache`` on, a node of provider 1 serves cached reads; a change written through
    provider 2 reaches that cache (replication, then the node's change stream) within the bound."""
    cached_app = make_app(**providers_overrides(providers, 0),
                          ldap={"cache": {"enabled": True, "staleness_seconds": 2.0}})
    cached = cached_app.test_client()
    two = make_app(**providers_overrides(providers, 1)).test_client()
    try:
        user = new_user(two)
        eventually(lambda: cached.get(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 200)
        for round_ in range(3):  # read it into the cache, change it on the other provider, read again
            assert cached.get(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 200
            value = f"Cached {round_}"
            patch = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                     "Operations": [{"op": "replace", "path": "displayName", "value": value}]}
            assert two.patch(f"{USERS}/{user['id']}", json=patch, headers=ADMIN).status_code == 200
            eventually(lambda: cached.get(f"{USERS}/{user['id']}", headers=ADMIN).get_json().get("displayName")
                       == value)
    finally:
        # the cache's change stream is a thread: stop it with its directory, not with the providers
        cached_app.extensions["didmos"].service("directory").close()


def test_searches_go_to_a_read_only_consumer_and_fall_back_when_it_is_down(make_app, providers, tmp_path):
    """``ldap.read_uris``: a node reads from a read-only consumer (listed first) and writes to the
    providers; with the consumer down its reads go on through the next URI of ``read_uris``."""
    from didmos_host.directory import init_directory
    from didmos_host.host import Host
    from didmos_host.servers import SlapdServer, free_port

    replica = SlapdServer(tmp_path / "replica", port=free_port(), rootpw=providers[0].rootpw,
                          password_hash="{SSHA}", nosync=True)
    replica.start()
    try:
        settings = providers_overrides(providers)
        settings["directory"]["config_uri"] = f"{providers[0].ldapi_uri} {replica.ldapi_uri}"
        init_directory(Host.create(settings), reapply=True)  # the schema on the replica too
        replica.enable_consumer(providers[0].uri)
        wait_replicated([replica], f"didmosUUID={SUPERADMIN_ID},{PEOPLE}")

        node = make_app(**providers_overrides(providers),
                        ldap={"read_uris": f"{replica.uri} {providers[1].uri}"}).test_client()
        user = new_user(node)  # written to provider 1, read back from the replica once it arrived
        eventually(lambda: node.get(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 200)
        conn = ldap.initialize(replica.uri)
        conn.simple_bind_s(replica.service_dn, providers[0].service_password)  # the account, replicated
        try:
            # the replica takes no write of its own (slapd 2.5 answers strongerAuthRequired here)
            with pytest.raises(ldap.LDAPError):
                conn.add_s(f"ou=nope,{TENANT}", [("objectClass", [b"organizationalUnit"]), ("ou", [b"nope"])])
        finally:
            conn.unbind_s()
        with pytest.raises(ServerError):
            wait_replicated(providers, f"ou=nope,{TENANT}", timeout=0.5)
        replica.kill()
        assert node.get(f"{USERS}/{user['id']}", headers=ADMIN).status_code == 200
        listed = node.get(f'{USERS}?filter=userName eq "{user["userName"]}"', headers=ADMIN).get_json()
        assert listed["totalResults"] == 1
    finally:
        replica.stop()


def _written_by(server, dn: str) -> int:
    """The server id in an entry's entryCSN: which provider applied its last change."""
    conn = server.admin_connection()
    try:
        [(_, attrs)] = conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["entryCSN"])
    finally:
        conn.unbind_s()
    return int(attrs["entryCSN"][0].decode().split("#")[2], 16)


def test_after_a_failover_the_node_writes_to_the_first_provider_again_once_it_is_back(make_app, providers):
    """``ldap.failback_seconds``: every node returns to the first URI, so that the providers do not take
    writes to one entry at once (bench/load.py --writes own loses member adds that way)."""
    client = make_app(**providers_overrides(providers, 0), ldap={"failback_seconds": 0.5}).test_client()
    first = new_user(client)
    assert _written_by(providers[0], f"didmosUUID={first['id']},{PEOPLE}") == 1
    providers[0].kill()
    try:
        during = new_user(client)
    finally:
        providers[0].start()
    dn = f"didmosUUID={during['id']},{PEOPLE}"
    wait_replicated(providers, dn)
    assert _written_by(providers[0], dn) == 2  # provider 2 took it
    time.sleep(0.6)
    after = new_user(client)
    dn = f"didmosUUID={after['id']},{PEOPLE}"
    wait_replicated(providers, dn)
    assert _written_by(providers[1], dn) == 1  # back on provider 1
