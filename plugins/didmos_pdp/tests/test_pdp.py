"""The PDP against the real slapd: default policy, decisions through the authorize hook, freshness."""

import time
import uuid

import ldap
import pytest

from didmos_host.host import Host
from didmos_host.records import Action, Actor

TENANT = "ou=default-tenant,dc=didmos,dc=de"
RBAC = f"ou=rbac,{TENANT}"
PEOPLE = f"ou=people,ou=data,{TENANT}"
SUPERADMIN = Actor(dn=f"didmosUUID=00000000-0000-0000-0000-000000000002,{PEOPLE}",
                   uuid="00000000-0000-0000-0000-000000000002")


def make_user(host, *roles):
    user_uuid = str(uuid.uuid4())
    dn = f"didmosUUID={user_uuid},{PEOPLE}"
    host.service("directory").add(dn, {
        "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson", "didmosRoleHolder"],
        "uid": [f"u{user_uuid[:8]}"], "cn": ["x"], "sn": ["x"], "didmosUUID": [user_uuid],
        "didmosRoleAssignment": [f"cn={role},ou=roles,{RBAC}" for role in roles] or [f"cn=standarduser,ou=roles,{RBAC}"]})
    return Actor(dn=dn, uuid=user_uuid)


def test_init_created_the_default_policy_and_gave_the_superadmin_its_roles(didmos_slapd):
    conn = didmos_slapd.admin_connection()
    roles = {e["cn"][0] for _, e in conn.search_s(f"ou=roles,{RBAC}", ldap.SCOPE_ONELEVEL, "(objectClass=didmosRole)", ["cn"])}
    assert {b"superadmin", b"standarduser"} <= roles  # other tests add their own to the shared slapd
    (_, admin), = conn.search_s(SUPERADMIN.dn, ldap.SCOPE_BASE, attrlist=["didmosRoleAssignment"])
    assert sorted(admin["didmosRoleAssignment"]) == [f"cn=standarduser,ou=roles,{RBAC}".encode(),
                                                     f"cn=superadmin,ou=roles,{RBAC}".encode()]


def test_decisions_through_the_authorize_hook(host):
    user, other = make_user(host), make_user(host)
    read_own = Action("read", "User", user.dn)
    assert host.authorize(user, read_own)
    assert not host.authorize(user, Action("read", "User", other.dn))
    assert not host.authorize(None, read_own)  # anonymous: nobody votes, so deny
    assert not host.authorize(user, Action("delete", "User", user.dn))
    assert host.authorize(SUPERADMIN, Action("delete", "User", other.dn))
    assert host.authorize(SUPERADMIN, Action("create", "Organization", f"ou=organizations,ou=data,{TENANT}"))

    pdp = host.service("pdp")
    decision = pdp.decide(user, Action("modify-replace", "User", user.dn))
    assert decision and "displayName" in decision.attributes and "didmosRoleAssignment" not in decision.attributes
    operations = pdp.operations(user, "User", user.dn)
    assert set(operations) == {"read", "modify-replace", "modify-add", "modify-del"} and operations["read"] is None
    assert pdp.operations(SUPERADMIN, "User", other.dn)["delete"] is None


def test_a_change_behind_didmos_back_is_in_effect_within_refresh_seconds(host, didmos_slapd):
    user, other = make_user(host), make_user(host)
    pdp = host.service("pdp")
    assert not pdp.decide(user, Action("read", "User", other.dn))
    conn = didmos_slapd.admin_connection()
    name = f"read-people-{uuid.uuid4().hex[:6]}"
    permission = f"cn={name},ou=permissions,{RBAC}"
    conn.add_s(permission, [("objectClass", [b"didmosPermission"]), ("cn", [name.encode()]),
                            ("didmosOperation", [b"read"]), ("didmosResourceType", [b"User"]),
                            ("didmosObjectScope", [f"subtree:{PEOPLE}".encode()])])
    conn.modify_s(f"cn=standarduser,ou=roles,{RBAC}", [(ldap.MOD_ADD, "didmosPermissionRef", [permission.encode()])])
    changed = time.monotonic()
    while not pdp.decide(user, Action("read", "User", other.dn)):
        assert time.monotonic() - changed < 0.3 + 0.5, "the change was not seen within refresh_seconds"
        time.sleep(0.02)
    conn.delete_s(permission)
    # the reference dangles until refint (which works in the background) removes it; meanwhile
    # the policy ignores it and decides as before the grant
    changed = time.monotonic()
    while pdp.decide(user, Action("read", "User", other.dn)):
        assert time.monotonic() - changed < 0.3 + 0.5, "the deletion was not seen within refresh_seconds"
        time.sleep(0.02)
    assert wait_for(lambda: permission.encode() not in role_attribute(conn, "standarduser", "didmosPermissionRef"))


def role_attribute(conn, role, attribute):
    (_, entry), = conn.search_s(f"cn={role},ou=roles,{RBAC}", ldap.SCOPE_BASE, attrlist=[attribute])
    return entry.get(attribute, [])


def wait_for(condition, seconds=3.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_deleting_a_role_removes_it_from_its_users(host, didmos_slapd):
    conn = didmos_slapd.admin_connection()
    name = f"temp-{uuid.uuid4().hex[:6]}"
    conn.add_s(f"cn={name},ou=roles,{RBAC}", [("objectClass", [b"didmosRole"]), ("cn", [name.encode()])])
    user = make_user(host, "standarduser", name)
    conn.delete_s(f"cn={name},ou=roles,{RBAC}")

    def assignments():
        (_, entry), = conn.search_s(user.dn, ldap.SCOPE_BASE, attrlist=["didmosRoleAssignment"])
        return entry["didmosRoleAssignment"]

    assert wait_for(lambda: assignments() == [f"cn=standarduser,ou=roles,{RBAC}".encode()])


def test_a_cycle_keeps_the_last_good_policy_and_a_fresh_pdp_refuses_to_start(host, didmos_overrides, didmos_slapd):
    from didmos_pdp.policy import PolicyError

    pdp = host.service("pdp")
    user = make_user(host)
    assert pdp.decide(user, Action("read", "User", user.dn))  # a good policy is loaded
    conn = didmos_slapd.admin_connection()
    a, b = (f"cycle-{x}-{uuid.uuid4().hex[:4]}" for x in "ab")
    dn = {name: f"cn={name},ou=roles,{RBAC}" for name in (a, b)}
    conn.add_s(dn[a], [("objectClass", [b"didmosRole"]), ("cn", [a.encode()])])
    conn.add_s(dn[b], [("objectClass", [b"didmosRole"]), ("cn", [b.encode()]), ("didmosRoleJunior", [dn[a].encode()])])
    conn.modify_s(dn[a], [(ldap.MOD_ADD, "didmosRoleJunior", [dn[b].encode()])])
    try:
        time.sleep(0.35)
        assert pdp.decide(user, Action("read", "User", user.dn))  # still deciding, with the last good one
        fresh = Host.create({**didmos_overrides, "pdp": {"refresh_seconds": 0.3}})
        with pytest.raises(PolicyError, match="cycle"):
            fresh.service("pdp").policy()
    finally:
        conn.modify_s(dn[a], [(ldap.MOD_DELETE, "didmosRoleJunior", None)])
        conn.delete_s(dn[b])
        conn.delete_s(dn[a])


def test_compile_drops_dangling_references():
    from didmos_ldap.directory import Entry
    from didmos_pdp.pdp import compile_policy

    role = Entry(f"cn=r,ou=roles,{RBAC}", {"objectClass": [b"didmosRole"], "cn": [b"r"],
                                           "didmosPermissionRef": [f"cn=gone,ou=permissions,{RBAC}".encode()],
                                           "didmosRoleJunior": [f"cn=gone-too,ou=roles,{RBAC}".encode()]})
    policy = compile_policy([role])
    assert policy.roles["r"].permissions == frozenset() and policy.roles["r"].juniors == frozenset()


def test_read_filter_makes_a_list_return_only_readable_entries(host):
    directory, pdp = host.service("directory"), host.service("pdp")
    user, other = make_user(host), make_user(host)
    everyone = "(objectClass=inetOrgPerson)"

    def listed(actor):
        constraint = pdp.read_filter(actor, "User")
        condition = everyone if constraint is None else f"(&{everyone}{constraint})"
        return {entry.dn for entry in directory.search(PEOPLE, condition, attrs=["1.1"])}

    assert listed(user) == {user.dn}  # a standard user sees itself only
    assert {user.dn, other.dn, SUPERADMIN.dn} <= listed(SUPERADMIN)
    assert pdp.read_filter(SUPERADMIN, "User") is None  # no restriction to add
    assert str(pdp.read_filter(None, "User")) == "(|)" and listed(None) == set()


def test_a_malformed_permission_written_around_didmos_grants_nothing_and_breaks_nothing():
    from didmos_ldap.directory import Entry
    from didmos_pdp.pdp import compile_policy

    bad = Entry(f"cn=bad,ou=permissions,{RBAC}", {"objectClass": [b"didmosPermission"], "cn": [b"bad"],
                                                  "didmosOperation": [b"read", b"fly"], "didmosResourceType": [b"User"]})
    worse = Entry(f"cn=worse,ou=permissions,{RBAC}", {"objectClass": [b"didmosPermission"], "cn": [b"worse"],
                                                      "didmosOperation": [b"read"], "didmosResourceType": [b"User"],
                                                      "didmosObjectScope": [b"subtree:not a dn"]})
    role = Entry(f"cn=r,ou=roles,{RBAC}", {"objectClass": [b"didmosRole"], "cn": [b"r"],
                                           "didmosPermissionRef": [bad.dn.encode(), worse.dn.encode()]})
    policy = compile_policy([bad, worse, role])
    assert policy.permissions == {} and policy.roles["r"].permissions == frozenset()
