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


@pytest.fixture(autouse=True)
def no_agreed_writer(didmos_redis):
    """Each test starts with no writer agreed in redis (a test that kills provider 1 leaves provider 2
    agreed, and every later node of these providers would start there)."""
    import redis

    client = redis.Redis.from_url(didmos_redis.url)
    try:
        for key in client.scan_iter("didmos:ldap:writer:*"):
            client.delete(key)
        yield
    finally:
        client.close()


#: Fast agreement for tests: poll redis every 0.1 s (a failback is announced 0.4 s ahead).
FAST = {"failback_seconds": 0.5, "writer": {"poll_seconds": 0.1}}


def _wait_written_by(client, providers, server_id: int, timeout: float = REPLICATION_SECONDS) -> dict:
    """Create users through ``client`` until one is written by provider ``server_id``; that user."""
    def check():
        user = new_user(client)
        dn = f"didmosUUID={user['id']},{PEOPLE}"
        wait_replicated(providers, dn)
        return _written_by(providers[0], dn) == server_id and user
    return wait_for(check, timeout, f"a write through provider {server_id}", interval=0.05)


def test_after_a_failover_the_node_writes_to_the_first_provider_again_once_it_is_back(make_app, providers):
    """``ldap.failback_seconds``: every node returns to the first URI, so that the providers do not take
    writes to one entry at once (bench/load.py --writes own loses member adds that way)."""
    client = make_app(**providers_overrides(providers, 0), ldap=FAST).test_client()
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
    _wait_written_by(client, providers, 1)  # back on provider 1


def test_a_restarted_node_writes_where_the_other_nodes_write(make_app, providers):
    """The writer agreement: after a failover, a node that starts (or restarts) while provider 1 is up
    again writes to provider 2, where the others are, not to provider 1 (both would take writes)."""
    settings = {"failback_seconds": 30.0, "writer": {"poll_seconds": 0.1}}
    one = make_app(**providers_overrides(providers, 0), ldap=settings).test_client()
    new_user(one)
    providers[0].kill()
    try:
        during = new_user(one)
    finally:
        providers[0].start()
    wait_replicated(providers, f"didmosUUID={during['id']},{PEOPLE}")
    restarted = make_app(**providers_overrides(providers, 0), ldap=settings).test_client()
    after = new_user(restarted)
    dn = f"didmosUUID={after['id']},{PEOPLE}"
    wait_replicated(providers, dn)
    assert _written_by(providers[0], dn) == 2


def _stop_consumer(server) -> None:
    """Stop ``server``'s replication from its peers (live, in cn=config); ``enable_replication`` restarts it."""
    conn = server.config_connection()
    try:
        conn.modify_s("olcDatabase={2}mdb,cn=config", [(ldap.MOD_DELETE, "olcMultiProvider", None),
                                                        (ldap.MOD_DELETE, "olcSyncrepl", None)])
    finally:
        conn.unbind_s()


def test_failback_waits_until_the_first_provider_has_caught_up(make_app, providers):
    """A provider that is back but lacks what was written elsewhere meanwhile takes no writes: a
    change to its stale copy of an entry would carry the newest entryCSN and overwrite the entry,
    changes made meanwhile included, on every provider."""
    client = make_app(**providers_overrides(providers, 0), ldap=FAST).test_client()
    new_user(client)
    _stop_consumer(providers[0])  # provider 1 stops taking provider 2's changes
    try:
        providers[0].kill()
        try:
            during = new_user(client)
        finally:
            providers[0].start()
        assert _written_by(providers[1], f"didmosUUID={during['id']},{PEOPLE}") == 2
        deadline = time.monotonic() + 2.0  # four failback periods
        while time.monotonic() < deadline:
            user = new_user(client)
            assert _written_by(providers[1], f"didmosUUID={user['id']},{PEOPLE}") == 2
            time.sleep(0.1)
    finally:
        providers[0].enable_replication(1, [(2, providers[1].uri)])
    wait_replicated(providers, f"didmosUUID={during['id']},{PEOPLE}")
    _wait_written_by(client, providers, 1)


def test_member_adds_through_two_nodes_across_a_failover_and_a_failback_are_all_kept(make_app, providers):
    """Two nodes add members to the same groups while provider 1 is killed (in the middle of the writes),
    restarted and failed back to: every acknowledged member is in its group on both providers
    afterwards. Writes are answered once provider 2 has them (``ldap.writer.confirm_seconds``), so the
    kill -9 takes no acknowledged write with it."""
    import threading

    settings = {"failback_seconds": 1.0, "writer": {"poll_seconds": 0.1}}
    nodes = [make_app(**providers_overrides(providers, 0), ldap=settings) for _ in range(2)]
    setup = nodes[0].test_client()
    users = [new_user(setup)["id"] for _ in range(200)]
    groups = []
    for index in range(2):
        response = setup.post("/scim/v2/Groups", json={"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                                                       "displayName": f"repl-{uuid.uuid4().hex[:8]}-{index}"},
                              headers=ADMIN)
        assert response.status_code == 201, response.get_json()
        groups.append(response.get_json()["id"])
    queue = [(groups[i % 2], user) for i, user in enumerate(users * 2)]  # each user into both groups
    acknowledged: list[tuple[float, str, str]] = []
    lock, stop = threading.Lock(), threading.Event()

    def writer(number: int) -> None:
        client = nodes[number % 2].test_client()
        while not stop.is_set():
            with lock:
                if not queue:
                    return
                group, user = queue.pop()
            response = client.patch(f"/scim/v2/Groups/{group}", headers=ADMIN, json={
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]})
            if response.status_code in (200, 204):
                with lock:
                    acknowledged.append((time.monotonic(), group, user))
            time.sleep(0.03)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        providers[0].kill()
        time.sleep(1.0)
        providers[0].start()
        restarted = time.monotonic()
        time.sleep(3.0)  # the failback (announced, then made by both nodes at once) under load
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(acknowledged) > 100, len(acknowledged)
    assert sum(at > restarted + 1.5 for at, _, _ in acknowledged) > 10  # writes went on past the failback
    for group in groups:
        dn = f"didmosUUID={group},ou=groups,ou=data,{TENANT}"
        wanted = {f"didmosuuid={user},{PEOPLE}".lower() for _, g, user in acknowledged if g == group}

        def members(server):
            conn = server.admin_connection()
            try:
                [(_, attrs)] = conn.search_s(dn, ldap.SCOPE_BASE, attrlist=["member", "entryCSN"])
            finally:
                conn.unbind_s()
            return {v.decode().lower() for v in attrs.get("member", [])}, attrs["entryCSN"]

        eventually(lambda: members(providers[0])[1] == members(providers[1])[1])
        for server in providers:
            assert wanted <= members(server)[0], (server.uri, sorted(wanted - members(server)[0])[:5])
    # the failback happened during the load: the last member adds were made on provider 1
    assert _written_by(providers[1], f"didmosUUID={groups[0]},ou=groups,ou=data,{TENANT}") == 1


def test_an_acknowledged_write_is_on_the_other_provider_already(make_app, providers):
    """``ldap.writer.confirm_seconds``: a write is answered once the other provider has it, so that a
    provider that dies right after answering takes no acknowledged write with it."""
    client = make_app(**providers_overrides(providers, 0), ldap={"writer": {"confirm_seconds": 5.0}}).test_client()
    for _ in range(3):  # the first writes find provider 2 in sync
        new_user(client)
    conn = providers[1].admin_connection()
    try:
        for _ in range(20):
            user = new_user(client)
            # at once, no waiting: it is there when the write is answered
            assert conn.search_s(f"didmosUUID={user['id']},{PEOPLE}", ldap.SCOPE_BASE, attrlist=["1.1"])
    finally:
        conn.unbind_s()


def test_a_write_does_not_wait_longer_than_confirm_seconds_for_a_lagging_provider(make_app, providers):
    client = make_app(**providers_overrides(providers, 0), ldap={"writer": {"confirm_seconds": 0.5}}).test_client()
    for _ in range(3):
        new_user(client)
    _stop_consumer(providers[1])  # provider 2 stops taking provider 1's changes
    try:
        started = time.monotonic()
        new_user(client)
        assert 0.5 <= time.monotonic() - started < 3.0  # waited for provider 2 up to the limit
        started = time.monotonic()
        new_user(client)
        assert time.monotonic() - started < 0.5  # and no more while it lags
    finally:
        providers[1].enable_replication(2, [(1, providers[0].uri)])
