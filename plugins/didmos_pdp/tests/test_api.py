"""The PDP's REST API (/pdp/v1) through the Flask test client, against the real slapd.

Users log in with HTTP Basic (didmosUUID and password). They are created with the root DN, which sets
no password-reset flag, so their password works at once.
"""

import re
import secrets
import uuid
from dataclasses import dataclass

import ldap
import ldap.modlist
import pytest

from didmos_host.testing import SUPERADMIN_PASSWORD, basic_auth as basic

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"
API = "/pdp/v1"


SUPERADMIN = basic(SUPERADMIN_UUID, SUPERADMIN_PASSWORD)


@dataclass
class User:
    uuid: str
    dn: str
    auth: dict


@pytest.fixture
def app(make_app):
    return make_app(pdp={"refresh_seconds": 0.2})


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def admin(app):
    """The app's own RbacAdmin, for setting up what a test is not about."""
    return app.extensions["didmos"].service("rbac_admin")


@pytest.fixture
def names():
    """Unique role/permission/set names for one test (the session slapd is shared)."""
    tag = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{tag}"


@pytest.fixture
def make_user(didmos_slapd):
    """``make_user(*roles, under=PEOPLE)``: a user with a password and these roles, removed afterwards."""
    conn = didmos_slapd.admin_connection()
    created = []

    def make(*roles, under=PEOPLE):
        user_uuid = str(uuid.uuid4())
        dn = f"didmosUUID={user_uuid},{under}"
        password = secrets.token_urlsafe(12)
        attrs = {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson", "didmosRoleHolder"],
                 "uid": [f"u{user_uuid[:8]}"], "cn": ["x"], "sn": ["x"], "didmosUUID": [user_uuid],
                 "didmosTenant": ["default-tenant"], "userPassword": [password]}
        if roles:
            attrs["didmosRoleAssignment"] = [f"cn={role},ou=roles,{RBAC}" for role in roles]
        conn.add_s(dn, ldap.modlist.addModlist({k: [v.encode() for v in vs] for k, vs in attrs.items()}))
        created.append(dn)
        return User(user_uuid, dn, basic(user_uuid, password))

    yield make
    for dn in reversed(created):
        try:
            conn.delete_s(dn)
        except ldap.NO_SUCH_OBJECT:
            pass


@pytest.fixture
def subtree(didmos_slapd):
    """``subtree(name)``: an organizational unit below ou=people, removed afterwards (with what is below)."""
    conn = didmos_slapd.admin_connection()
    created = []

    def make(name):
        dn = f"ou={name},{PEOPLE}"
        conn.add_s(dn, [("objectClass", [b"organizationalUnit"]), ("ou", [name.encode()])])
        created.append(dn)
        return dn

    yield make
    for dn in created:
        for child, _ in conn.search_s(dn, ldap.SCOPE_ONELEVEL, attrlist=["1.1"]):
            conn.delete_s(child)
        conn.delete_s(dn)


# -- the superadmin: every route's happy path -------------------------------------------------------

def test_roles_permissions_and_hierarchy(client, names):
    clerk, junior, read_people = names("clerk"), names("junior"), names("read-people")
    created = client.post(f"{API}/roles", json={"name": clerk, "description": "reads people"}, headers=SUPERADMIN)
    assert created.status_code == 201
    assert created.json == {"name": clerk, "description": "reads people", "juniors": [], "permissions": [],
                            "scope": None}
    assert client.post(f"{API}/roles", json={"name": junior}, headers=SUPERADMIN).status_code == 201
    listed = client.get(f"{API}/roles", headers=SUPERADMIN)
    assert listed.status_code == 200
    by_name = {role["name"]: role for role in listed.json}
    assert by_name["superadmin"]["juniors"] == ["standarduser"]
    assert by_name["superadmin"]["permissions"] == ["tenant-everything"]
    assert by_name[clerk]["description"] == "reads people"

    created = client.post(f"{API}/permissions", headers=SUPERADMIN, json={
        "name": read_people, "operations": ["read"], "resource_type": "User", "scope": f"subtree:{PEOPLE}",
        "description": "read every user"})
    assert created.status_code == 201
    assert created.json == {"name": read_people, "description": "read every user", "operations": ["read"],
                            "resource_type": "User", "scope": f"subtree:{PEOPLE}", "attributes": []}
    permissions = {p["name"]: p for p in client.get(f"{API}/permissions", headers=SUPERADMIN).json}
    assert permissions[read_people] == created.json
    assert permissions["self-edit"]["scope"] == "self" and "userPassword" in permissions["self-edit"]["attributes"]

    granted = client.post(f"{API}/roles/{junior}/permissions", json={"permission": read_people}, headers=SUPERADMIN)
    assert granted.status_code == 201 and granted.json["permissions"] == [read_people]
    inherited = client.post(f"{API}/roles/{clerk}/juniors", json={"role": junior}, headers=SUPERADMIN)
    assert inherited.status_code == 201 and inherited.json["juniors"] == [junior]

    detail = client.get(f"{API}/roles/{clerk}", headers=SUPERADMIN)
    assert detail.status_code == 200
    assert detail.json == {"name": clerk, "description": "reads people", "juniors": [junior], "permissions": [],
                           "scope": None, "seniors": [], "all_juniors": [junior], "all_permissions": [read_people],
                           "assigned_users": [], "authorized_users": []}
    assert client.get(f"{API}/roles/{junior}", headers=SUPERADMIN).json["seniors"] == [clerk]
    permission = client.get(f"{API}/permissions/{read_people}", headers=SUPERADMIN)
    assert permission.status_code == 200
    assert permission.json["roles"] == [junior] and permission.json["authorized_roles"] == sorted([clerk, junior])

    assert client.delete(f"{API}/roles/{clerk}/juniors/{junior}", headers=SUPERADMIN).status_code == 204
    assert client.delete(f"{API}/roles/{clerk}/juniors/{junior}", headers=SUPERADMIN).status_code == 404
    assert client.delete(f"{API}/roles/{junior}/permissions/{read_people}", headers=SUPERADMIN).status_code == 204
    assert client.get(f"{API}/roles/{junior}", headers=SUPERADMIN).json["all_permissions"] == []
    assert client.delete(f"{API}/roles/{clerk}", headers=SUPERADMIN).status_code == 204
    assert client.delete(f"{API}/permissions/{read_people}", headers=SUPERADMIN).status_code == 204
    missing = client.get(f"{API}/roles/{clerk}", headers=SUPERADMIN)
    assert missing.status_code == 404 and missing.json == {"status": 404, "detail": f"no role named {clerk!r}"}
    assert client.get(f"{API}/permissions/{read_people}", headers=SUPERADMIN).status_code == 404
    assert client.post(f"{API}/roles", json={"name": junior}, headers=SUPERADMIN).status_code == 409


def test_user_assignment_and_review(client, names, make_user):
    senior, junior = names("senior"), names("junior")
    for role in (junior, senior):
        client.post(f"{API}/roles", json={"name": role}, headers=SUPERADMIN)
    client.post(f"{API}/roles/{senior}/juniors", json={"role": junior}, headers=SUPERADMIN)
    user = make_user()

    assigned = client.post(f"{API}/users/{user.uuid}/roles", json={"role": senior}, headers=SUPERADMIN)
    assert assigned.status_code == 201
    assert assigned.json == {"id": user.uuid, "assigned": [senior], "authorized": sorted([senior, junior])}
    assert client.get(f"{API}/users/{user.uuid}/roles", headers=SUPERADMIN).json == assigned.json
    assert client.post(f"{API}/users/{user.uuid}/roles", json={"role": senior}, headers=SUPERADMIN).status_code == 409
    role = client.get(f"{API}/roles/{junior}", headers=SUPERADMIN).json
    assert role["assigned_users"] == [] and role["authorized_users"] == [user.uuid]
    assert client.get(f"{API}/roles/{senior}", headers=SUPERADMIN).json["assigned_users"] == [user.uuid]

    client.post(f"{API}/users/{user.uuid}/roles", json={"role": "standarduser"}, headers=SUPERADMIN)
    permissions = client.get(f"{API}/users/{user.uuid}/permissions", headers=SUPERADMIN)
    assert permissions.status_code == 200
    assert permissions.json == {"id": user.uuid, "permissions": ["self-edit", "self-read"]}

    assert client.delete(f"{API}/users/{user.uuid}/roles/{senior}", headers=SUPERADMIN).status_code == 204
    assert client.delete(f"{API}/users/{user.uuid}/roles/{senior}", headers=SUPERADMIN).status_code == 404
    assert client.get(f"{API}/users/{user.uuid}/roles", headers=SUPERADMIN).json["assigned"] == ["standarduser"]
    ghost = str(uuid.uuid4())
    assert client.get(f"{API}/users/{ghost}/roles", headers=SUPERADMIN).status_code == 404
    unknown_role = client.post(f"{API}/users/{user.uuid}/roles", json={"role": "ghost"}, headers=SUPERADMIN)
    assert unknown_role.status_code == 404 and "ghost" in unknown_role.json["detail"]


def test_separation_of_duty_sets_and_a_violation_over_the_api(client, names, make_user):
    approver, payer = names("approver"), names("payer")
    for role in (approver, payer):
        client.post(f"{API}/roles", json={"name": role}, headers=SUPERADMIN)
    ssd = names("ssd")
    created = client.post(f"{API}/sod-sets", json={"name": ssd, "roles": [payer, approver], "cardinality": 2},
                          headers=SUPERADMIN)
    assert created.status_code == 201
    assert created.json == {"name": ssd, "roles": sorted([approver, payer]), "cardinality": 2, "dynamic": False}
    assert {s["name"]: s for s in client.get(f"{API}/sod-sets", headers=SUPERADMIN).json}[ssd] == created.json
    assert client.get(f"{API}/sod-sets/{ssd}", headers=SUPERADMIN).json == created.json

    user = make_user(approver)
    violation = client.post(f"{API}/users/{user.uuid}/roles", json={"role": payer}, headers=SUPERADMIN)
    assert violation.status_code == 409
    assert violation.json["status"] == 409 and repr(ssd) in violation.json["detail"]
    assert client.get(f"{API}/users/{user.uuid}/roles", headers=SUPERADMIN).json["assigned"] == [approver]

    assert client.delete(f"{API}/sod-sets/{ssd}", headers=SUPERADMIN).status_code == 204
    assert client.get(f"{API}/sod-sets/{ssd}", headers=SUPERADMIN).status_code == 404
    assert client.post(f"{API}/users/{user.uuid}/roles", json={"role": payer}, headers=SUPERADMIN).status_code == 201


def test_inconsistent_policy_is_400_and_a_malformed_body_422(client, names):
    a, b = names("a"), names("b")
    for role in (a, b):
        client.post(f"{API}/roles", json={"name": role}, headers=SUPERADMIN)
    assert client.post(f"{API}/roles/{a}/juniors", json={"role": b}, headers=SUPERADMIN).status_code == 201
    cycle = client.post(f"{API}/roles/{b}/juniors", json={"role": a}, headers=SUPERADMIN)
    assert cycle.status_code == 400 and "cycle" in cycle.json["detail"]
    assert client.get(f"{API}/roles/{a}", headers=SUPERADMIN).json["all_juniors"] == [b]

    def permission(**fields):
        body = {"name": names("p"), "operations": ["read"], "resource_type": "User", **fields}
        return client.post(f"{API}/permissions", json=body, headers=SUPERADMIN)

    assert permission(operations=["fly"]).status_code == 400
    assert "unknown operations" in permission(operations=["fly"]).json["detail"]
    assert permission(scope="galaxy").status_code == 400
    assert permission(scope="subtree:not a dn").status_code == 400
    assert permission(scope="subtree").status_code == 400
    assert client.post(f"{API}/roles", json={"name": names("r"), "scope": "not a dn"},
                       headers=SUPERADMIN).status_code == 400
    too_many = client.post(f"{API}/sod-sets", json={"name": names("s"), "roles": [a, b], "cardinality": 3},
                           headers=SUPERADMIN)
    assert too_many.status_code == 400 and "cardinality" in too_many.json["detail"]

    malformed = client.post(f"{API}/roles", json={"name": "no/slash", "extra": 1}, headers=SUPERADMIN)
    assert malformed.status_code == 422
    assert malformed.json["status"] == 422 and set(malformed.json["errors"]["json"]) == {"name", "extra"}
    assert client.post(f"{API}/check-access", json={"operation": "read", "resource_type": "User",
                                                    "target": "not a dn"}, headers=SUPERADMIN).status_code == 422


def test_sessions_and_check_access(client, names, make_user):
    teller, auditor, cash = names("teller"), names("auditor"), names("cash")
    for role in (teller, auditor):
        client.post(f"{API}/roles", json={"name": role}, headers=SUPERADMIN)
    client.post(f"{API}/permissions", json={"name": cash, "operations": ["write"], "resource_type": "Cash"},
                headers=SUPERADMIN)
    client.post(f"{API}/roles/{teller}/permissions", json={"permission": cash}, headers=SUPERADMIN)
    dsd = names("dsd")
    assert client.post(f"{API}/sod-sets", json={"name": dsd, "roles": [teller, auditor], "cardinality": 2,
                                                "dynamic": True}, headers=SUPERADMIN).status_code == 201
    user = make_user(teller, auditor)

    created = client.post(f"{API}/sessions", json={"user": user.uuid, "roles": [teller]}, headers=SUPERADMIN)
    assert created.status_code == 201
    session = created.json["id"]
    assert created.json == {"id": session, "user": user.uuid, "roles": [teller], "permissions": [cash]}
    assert client.get(f"{API}/sessions/{session}", headers=SUPERADMIN).json == created.json

    def check(**subject):
        response = client.post(f"{API}/check-access", headers=SUPERADMIN,
                               json={**subject, "operation": "write", "resource_type": "Cash"})
        assert response.status_code == 200, response.json
        return response.json

    assert check(session=session) == {"allowed": True, "attributes": None}
    clash = client.post(f"{API}/sessions/{session}/roles", json={"role": auditor}, headers=SUPERADMIN)
    assert clash.status_code == 409 and repr(dsd) in clash.json["detail"]
    assert client.delete(f"{API}/sessions/{session}/roles/{teller}", headers=SUPERADMIN).status_code == 204
    assert check(session=session) == {"allowed": False, "attributes": []}
    added = client.post(f"{API}/sessions/{session}/roles", json={"role": auditor}, headers=SUPERADMIN)
    assert added.status_code == 201 and added.json["roles"] == [auditor]
    assert client.delete(f"{API}/sessions/{session}", headers=SUPERADMIN).status_code == 204
    assert client.get(f"{API}/sessions/{session}", headers=SUPERADMIN).status_code == 404

    # a user without a session: the default active roles (one of the two: the dynamic set allows no more)
    assert check(user=user.uuid)["allowed"] is (sorted([teller, auditor])[0] == teller)
    both = client.post(f"{API}/sessions", json={"user": user.uuid, "roles": [teller, auditor]}, headers=SUPERADMIN)
    assert both.status_code == 409
    default = client.post(f"{API}/sessions", json={"user": user.uuid}, headers=SUPERADMIN)
    assert default.status_code == 201 and len(default.json["roles"]) == 1
    # the superadmin for itself, with attributes limited by none of its permissions
    assert check() == {"allowed": True, "attributes": None}


# -- a standard user ---------------------------------------------------------------------------------------

def test_a_standard_user_reviews_itself_and_nothing_else(client, make_user):
    user, other = make_user("standarduser"), make_user("standarduser")
    listed = client.get(f"{API}/roles", headers=user.auth)
    assert listed.status_code == 403 and listed.json["detail"] == f"not allowed to read Role ou=roles,{RBAC}"
    escalation = client.post(f"{API}/users/{user.uuid}/roles", json={"role": "superadmin"}, headers=user.auth)
    assert escalation.status_code == 403 and "RoleAssignment" in escalation.json["detail"]
    # authorization comes before the body is read: 403, not 422
    assert client.post(f"{API}/roles", json={"nonsense": True}, headers=user.auth).status_code == 403

    own = client.get(f"{API}/users/{user.uuid}/roles", headers=user.auth)
    assert own.status_code == 200 and own.json == {"id": user.uuid, "assigned": ["standarduser"],
                                                   "authorized": ["standarduser"]}
    assert client.get(f"{API}/users/{user.uuid}/permissions", headers=user.auth).json["permissions"] == [
        "self-edit", "self-read"]
    assert client.get(f"{API}/users/{other.uuid}/roles", headers=user.auth).status_code == 403
    # whether an id exists is not told to those who may not look
    assert client.get(f"{API}/users/{uuid.uuid4()}/roles", headers=user.auth).status_code == 403


def test_a_standard_user_has_sessions_and_asks_check_access_for_itself_only(client, make_user):
    user, other = make_user("standarduser"), make_user("standarduser")
    created = client.post(f"{API}/sessions", json={}, headers=user.auth)
    assert created.status_code == 201
    assert created.json["user"] == user.uuid and created.json["roles"] == ["standarduser"]
    session = created.json["id"]
    assert client.get(f"{API}/sessions/{session}", headers=user.auth).json == created.json
    assert client.get(f"{API}/sessions/{session}", headers=other.auth).status_code == 403
    assert client.delete(f"{API}/sessions/{session}", headers=other.auth).status_code == 403
    assert client.post(f"{API}/sessions", json={"roles": ["superadmin"]}, headers=user.auth).status_code == 403
    assert client.post(f"{API}/sessions", json={"user": other.uuid}, headers=user.auth).status_code == 403

    def check(headers, **body):
        return client.post(f"{API}/check-access", json={"operation": "read", "resource_type": "User", **body},
                           headers=headers)

    assert check(user.auth, target=user.dn).json == {"allowed": True, "attributes": None}
    assert check(user.auth, user=user.uuid, target=other.dn).json == {"allowed": False, "attributes": []}
    edit = client.post(f"{API}/check-access", headers=user.auth, json={
        "operation": "modify-replace", "resource_type": "User", "target": user.dn})
    assert edit.json["allowed"] and "displayName" in edit.json["attributes"]
    assert check(user.auth, session=session, target=user.dn).json["allowed"] is True
    denied = check(user.auth, user=other.uuid, target=other.dn)
    assert denied.status_code == 403 and "Session" in denied.json["detail"]
    assert check(other.auth, session=session, target=user.dn).status_code == 403
    assert check(user.auth, session=session, user=user.uuid).status_code == 422  # one or the other
    assert client.delete(f"{API}/sessions/{session}", headers=user.auth).status_code == 204


# -- anonymous: the start of the authorization matrix -----------------------------------------------------

def test_every_route_answers_401_without_credentials(app):
    client = app.test_client()
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.startswith("pdp.")]
    assert len(rules) >= 18
    seen = 0
    for rule in rules:
        path = re.sub(r"<[^>]+>", "dummy", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method)
            assert response.status_code == 401, (method, path, response.json)
            assert response.headers["WWW-Authenticate"].startswith("Basic")
            seen += 1
    assert seen >= 24


# -- a delegated administrator ------------------------------------------------------------------------------

def test_a_delegated_admin_assigns_roles_it_holds_within_its_subtree(client, admin, names, make_user, subtree):
    department = subtree(names("dept"))
    delegate, clerk, assign = names("delegate"), names("clerk"), names("assign-in-dept")
    admin.add_role(clerk)
    admin.add_role(delegate)
    admin.add_permission(assign, ["write"], "RoleAssignment", scope=f"subtree:{department}")
    admin.grant_permission(assign, delegate)
    admin.add_inheritance(delegate, clerk)  # it holds clerk, so it may hand it out
    boss = make_user(delegate, "standarduser")
    inside, outside = make_user(under=department), make_user()

    handed = client.post(f"{API}/users/{inside.uuid}/roles", json={"role": clerk}, headers=boss.auth)
    assert handed.status_code == 201 and handed.json["assigned"] == [clerk]
    elsewhere = client.post(f"{API}/users/{outside.uuid}/roles", json={"role": clerk}, headers=boss.auth)
    assert elsewhere.status_code == 403 and outside.dn in elsewhere.json["detail"]
    escalation = client.post(f"{API}/users/{inside.uuid}/roles", json={"role": "superadmin"}, headers=boss.auth)
    assert escalation.status_code == 403 and "superadmin" in escalation.json["detail"]
    assert client.delete(f"{API}/users/{inside.uuid}/roles/{clerk}", headers=boss.auth).status_code == 204
    assert client.get(f"{API}/roles", headers=boss.auth).status_code == 403  # it administers assignments only


def test_the_openapi_document_lists_the_routes(client):
    paths = client.get("/openapi.json").json["paths"]
    assert {f"{API}/roles", f"{API}/roles/{{name}}", f"{API}/users/{{uuid}}/roles", f"{API}/sessions",
            f"{API}/check-access", f"{API}/sod-sets/{{name}}"} <= set(paths)
    assert set(paths[f"{API}/roles"]) == {"get", "post"}
    assert "201" in paths[f"{API}/roles"]["post"]["responses"]
