"""The authorization matrix: each route x {anonymous, standard user on itself and on another user,
scoped admin inside and outside its scope, superadmin}, with the status each cell must answer.

Covers the read routes of SCIM (both mounts), /auth/whoami and the PDP's review routes; the write
routes join as the SCIM writes land (issue 5).
"""

import base64
import uuid

import pytest

from didmos_host.testing import SUPERADMIN_PASSWORD

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
SUPERADMIN_ID = "00000000-0000-0000-0000-000000000002"


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def world(didmos_slapd):
    """A department with a scoped admin, users inside and outside it, and a standard user."""
    conn = didmos_slapd.admin_connection()
    tag = uuid.uuid4().hex[:6]
    dept = f"ou=dept-{tag},{PEOPLE}"
    conn.add_s(dept, [("objectClass", [b"organizationalUnit"]), ("ou", [f"dept-{tag}".encode()])])
    permission, role = f"cn=dept-read-{tag},ou=permissions,{RBAC}", f"cn=dept-admin-{tag},ou=roles,{RBAC}"
    conn.add_s(permission, [("objectClass", [b"didmosPermission"]), ("cn", [f"dept-read-{tag}".encode()]),
                            ("didmosOperation", [b"read", b"modify-replace"]), ("didmosResourceType", [b"User"]),
                            ("didmosObjectScope", [b"role"])])
    conn.add_s(role, [("objectClass", [b"didmosRole"]), ("cn", [f"dept-admin-{tag}".encode()]),
                      ("didmosPermissionRef", [permission.encode()]), ("didmosRoleScope", [dept.encode()]),
                      ("didmosRoleJunior", [f"cn=standarduser,ou=roles,{RBAC}".encode()])])

    def user(parent, *roles):
        user_id = str(uuid.uuid4())
        conn.add_s(f"didmosUUID={user_id},{parent}", [
            ("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
            ("didmosUUID", [user_id.encode()]), ("uid", [f"m-{user_id[:8]}".encode()]), ("cn", [b"m"]), ("sn", [b"m"]),
            ("userPassword", [b"pw"]),
            ("didmosRoleAssignment", [r.encode() for r in roles] or [f"cn=standarduser,ou=roles,{RBAC}".encode()])])
        return user_id

    return {
        "standard": user(PEOPLE), "other": user(PEOPLE), "inside": user(dept), "outside": user(PEOPLE),
        "scoped_admin": user(dept, role),
    }


ACTORS = ("anonymous", "self", "other", "scoped_inside", "scoped_outside", "superadmin")


def who(world, actor):
    """(credentials, target id) of a cell: whose request, about which user."""
    if actor == "anonymous":
        return {}, world["standard"]
    if actor == "self":
        return basic(world["standard"], "pw"), world["standard"]
    if actor == "other":
        return basic(world["standard"], "pw"), world["other"]
    if actor == "scoped_inside":
        return basic(world["scoped_admin"], "pw"), world["inside"]
    if actor == "scoped_outside":
        return basic(world["scoped_admin"], "pw"), world["outside"]
    return basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD), world["other"]


#: (method, path with {id} for the target user) -> expected status per actor, in ACTORS order
MATRIX = {
    ("GET", "/healthz"): (200, 200, 200, 200, 200, 200),
    ("GET", "/auth/whoami"): (401, 200, 200, 200, 200, 200),
    ("GET", "/scim/v2/Users/{id}"): (401, 200, 403, 200, 403, 200),
    ("GET", "/lui2_backend/v2/User/{id}/"): (401, 200, 403, 200, 403, 200),
    ("GET", "/scim/v2/Users"): (401, 200, 200, 200, 200, 200),
    ("GET", "/lui2_backend/v2/User/"): (401, 200, 200, 200, 200, 200),
    ("GET", "/pdp/v1/roles"): (401, 403, 403, 403, 403, 200),
    ("GET", "/pdp/v1/permissions"): (401, 403, 403, 403, 403, 200),
    ("GET", "/pdp/v1/sod-sets"): (401, 403, 403, 403, 403, 200),
    ("GET", "/pdp/v1/users/{id}/roles"): (401, 200, 403, 403, 403, 200),
    ("GET", "/pdp/v1/users/{id}/permissions"): (401, 200, 403, 403, 403, 200),
}


@pytest.fixture(scope="module")
def client(world, didmos_overrides):
    from didmos_host.app import create_app

    return create_app(**didmos_overrides).test_client()


@pytest.mark.parametrize("route", list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
def test_matrix(client, world, route):
    method, path = route
    cells = {}
    for actor, expected in zip(ACTORS, MATRIX[route]):
        headers, target = who(world, actor)
        response = client.open(path.format(id=target), method=method, headers=headers)
        cells[actor] = (response.status_code, expected)
    wrong = {actor: cell for actor, cell in cells.items() if cell[0] != cell[1]}
    assert not wrong, f"{method} {path}: (got, expected) per actor: {wrong}"


def test_lists_show_each_actor_only_what_it_may_read(client, world):
    def ids(headers):
        body = client.get("/scim/v2/Users?count=1000", headers=headers).json
        return {resource["id"] for resource in body["Resources"]}

    standard = ids(basic(world["standard"], "pw"))
    assert standard == {world["standard"]}
    scoped = ids(basic(world["scoped_admin"], "pw"))
    assert {world["inside"], world["scoped_admin"]} <= scoped and world["outside"] not in scoped
    assert {world["standard"], world["other"], world["outside"]} <= ids(basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD))
