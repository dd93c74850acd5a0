"""The authorization matrix: every route and method the app serves x {anonymous, standard user on
itself and on another user, scoped admin inside and outside its scope, superadmin}, with the status
each cell must answer.

A row names a concrete path (placeholders filled per cell); `test_every_route_is_in_the_matrix`
maps each row back to the url_map's rule, so a route added without a row fails the build.

Cells do not depend on each other: a row that changes something acts on what its own setup made for
that cell (a fresh user, role, session, ...), and names it with the cell's unique `{tag}`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth as basic

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
GROUPS = f"ou=groups,ou=data,{TENANT}"
ORGANIZATIONS = f"ou=organizations,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
STANDARDUSER = f"cn=standarduser,ou=roles,{RBAC}"
SUPERADMIN_ROLE = f"cn=superadmin,ou=roles,{RBAC}"

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ORGANIZATION = "urn:didmos:params:scim:schemas:core:2.0:Organization"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SEARCH = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "count": 5}
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


ADMIN = basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


def patch(*operations):
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


# -- the people and things the cells act on ----------------------------------------------------------


class World:
    """A department with a scoped admin (read and modify-replace on the Users below it), users inside
    and outside it, and a standard user; and a way to make more of each, directly in LDAP."""

    def __init__(self, conn):
        self.conn = conn
        tag = uuid.uuid4().hex[:6]
        self.dept = f"ou=dept-{tag},{PEOPLE}"
        conn.add_s(self.dept, [("objectClass", [b"organizationalUnit"]), ("ou", [f"dept-{tag}".encode()])])
        permission = f"cn=dept-read-{tag},ou=permissions,{RBAC}"
        self.scoped_role = f"cn=dept-admin-{tag},ou=roles,{RBAC}"
        conn.add_s(permission, [("objectClass", [b"didmosPermission"]), ("cn", [f"dept-read-{tag}".encode()]),
                                ("didmosOperation", [b"read", b"modify-replace"]), ("didmosResourceType", [b"User"]),
                                ("didmosObjectScope", [b"role"])])
        conn.add_s(self.scoped_role, [("objectClass", [b"didmosRole"]), ("cn", [f"dept-admin-{tag}".encode()]),
                                      ("didmosPermissionRef", [permission.encode()]),
                                      ("didmosRoleScope", [self.dept.encode()]),
                                      ("didmosRoleJunior", [STANDARDUSER.encode()])])
        self.standard, self.other, self.outside = self.user(PEOPLE), self.user(PEOPLE), self.user(PEOPLE)
        self.inside, self.scoped_admin = self.user(self.dept), self.user(self.dept, self.scoped_role)

    def user(self, parent, *roles) -> str:
        """A new user below ``parent`` with password ``pw`` and ``roles`` (default: standarduser); its id."""
        user_id = str(uuid.uuid4())
        self.conn.add_s(f"didmosUUID={user_id},{parent}", [
            ("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
            ("didmosUUID", [user_id.encode()]), ("uid", [user_name(user_id).encode()]), ("cn", [b"m"]), ("sn", [b"m"]),
            ("displayName", [b"m"]), ("userPassword", [b"pw"]),
            ("didmosRoleAssignment", [r.encode() for r in roles or (STANDARDUSER,)])])
        return user_id

    def group(self) -> str:
        group_id = str(uuid.uuid4())
        self.conn.add_s(f"didmosUUID={group_id},{GROUPS}", [
            ("objectClass", [b"didmosGroup", b"didmosObject"]), ("didmosUUID", [group_id.encode()]),
            ("cn", [f"g-{group_id[:8]}".encode()])])
        return group_id

    def organization(self) -> str:
        organization_id = str(uuid.uuid4())
        self.conn.add_s(f"didmosUUID={organization_id},{ORGANIZATIONS}", [
            ("objectClass", [b"organization", b"didmosObject"]), ("didmosUUID", [organization_id.encode()]),
            ("o", [f"o-{organization_id[:8]}".encode()])])
        return organization_id


def user_name(user_id: str) -> str:
    return f"m-{user_id[:8]}"


class Make:
    """What one cell acts on, made for it: groups and organizations directly in LDAP; roles,
    permissions, sets, assignments and sessions through the PDP's API as the superadmin (so that this
    process's compiled policy knows them at once). Names end in the cell's tag."""

    def __init__(self, world: World, client, tag: str):
        self.world, self.client, self.tag, self.made = world, client, tag, 0

    def _name(self, kind: str) -> str:
        self.made += 1
        return f"mx-{kind}{self.made}-{self.tag}"

    def _post(self, path, body) -> dict:
        response = self.client.post(path, json=body, headers=ADMIN)
        assert response.status_code == 201, f"setup: POST {path} {body} -> {response.status_code} {response.json}"
        return response.json

    def group(self) -> str:
        return self.world.group()

    def organization(self) -> str:
        return self.world.organization()

    def role(self) -> str:
        name = self._name("role")
        self._post("/pdp/v1/roles", {"name": name})
        return name

    def permission(self) -> str:
        name = self._name("perm")
        self._post("/pdp/v1/permissions", {"name": name, "operations": ["read"], "resource_type": "User",
                                           "scope": "self"})
        return name

    def granted(self, role: str) -> str:
        """A new permission granted to ``role``."""
        permission = self.permission()
        self._post(f"/pdp/v1/roles/{role}/permissions", {"permission": permission})
        return permission

    def junior(self, senior: str) -> str:
        """A new role that ``senior`` inherits."""
        junior = self.role()
        self._post(f"/pdp/v1/roles/{senior}/juniors", {"role": junior})
        return junior

    def sod_set(self) -> str:
        name = self._name("sod")
        self._post("/pdp/v1/sod-sets", {"name": name, "roles": [self.role(), self.role()], "cardinality": 2})
        return name

    def assigned(self, user_id: str) -> str:
        """A new role assigned to the user."""
        role = self.role()
        self._post(f"/pdp/v1/users/{user_id}/roles", {"role": role})
        return role

    def session(self, user_id: str, roles: list[str] | None = None) -> str:
        """A session of the user (``roles`` None: its default active roles)."""
        return self._post("/pdp/v1/sessions", {"user": user_id, "roles": roles})["id"]


# -- who asks, about whom ------------------------------------------------------------------------------

ACTORS = ("anonymous", "self", "other", "scoped_inside", "scoped_outside", "superadmin")


@dataclass
class Cell:
    """One actor's request on one row: its credentials and what fills the row's placeholders."""

    actor: str
    headers: dict
    target: str  # didmosUUID of the user the request is about
    parent: str  # where that user lives (where the actor would create one)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def values(self) -> dict[str, str]:
        return {"id": self.target, "user_name": user_name(self.target), "parent": self.parent, "tag": self.tag}


#: The user each actor's request is about, when the row needs no fresh one (an attribute of World).
TARGETS = {"anonymous": "standard", "self": "standard", "other": "other", "scoped_inside": "inside",
           "scoped_outside": "outside", "superadmin": "other"}


def who(world: World, actor: str, fresh: str | None = None) -> Cell:
    """The cell of ``actor``.

    ``fresh="target"``: the user acted on is new, where the actor's target would be (for ``self`` the
    caller is that new user). ``fresh="caller"``: the caller is a new user with the actor's roles, in
    the actor's place, and acts on itself (the /Me rows: a DELETE /Me must not delete the superadmin).
    """
    scoped = actor.startswith("scoped")
    if fresh == "caller" and actor != "anonymous":
        roles = {"superadmin": (SUPERADMIN_ROLE, STANDARDUSER)}.get(actor, (world.scoped_role,) if scoped else ())
        home = world.dept if scoped else PEOPLE
        caller = world.user(home, *roles)
        return Cell(actor, basic(caller, "pw"), caller, home)
    parent = world.dept if actor == "scoped_inside" else PEOPLE
    target = getattr(world, TARGETS[actor]) if fresh is None else world.user(parent)
    if actor == "anonymous":
        headers = {}
    elif actor == "superadmin":
        headers = ADMIN
    elif actor == "self":
        headers = basic(target, "pw")
    else:
        headers = basic(world.scoped_admin if scoped else world.standard, "pw")
    return Cell(actor, headers, target, parent)


# -- the matrix ------------------------------------------------------------------------------------------

Setup = Callable[[Make, Cell], dict[str, str]]


@dataclass(frozen=True)
class Row:
    """One route and method, with the status per actor (in ACTORS order).

    ``path`` and ``body`` have placeholders filled per cell: ``{id}`` the target user, ``{user_name}``
    its userName, ``{parent}`` its container, ``{tag}`` unique per cell, and whatever ``setup``
    returns (it makes what the cell acts on). ``fresh``: see :func:`who`. ``answer``: the status a
    response stands for (a BulkResponse: its one operation's). ``case`` tells rows on one route apart.
    """

    method: str
    path: str
    expected: tuple[int, int, int, int, int, int]
    body: Any = None
    setup: Setup | None = None
    fresh: str | None = None
    answer: Callable[[Any], int] = lambda response: response.status_code
    case: str = ""

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}" + (f" [{self.case}]" if self.case else "")


def bulk(method, path, data=None):
    """A BulkRequest of one operation (RFC 7644 3.7)."""
    operation = {"method": method, "path": path}
    if method == "POST":
        operation["bulkId"] = "b-{tag}"
    if data is not None:
        operation["data"] = data
    return {"schemas": [BULK_REQUEST], "Operations": [operation]}


def bulk_answer(response) -> int:
    """The status of the one operation of a BulkResponse: the PDP decides each operation on its own, and
    the request as a whole is 200 whatever they answered (or fails with its own status)."""
    if response.status_code != 200:
        return response.status_code
    [operation] = response.json["Operations"]
    return int(operation["status"])


def fill(template, values):
    """``template`` (a path or a JSON body) with the ``{placeholders}`` of its strings filled."""
    if isinstance(template, str):
        return template.format_map(values)
    if isinstance(template, dict):
        return {fill(key, values): fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill(value, values) for value in template]
    return template


PUBLIC = (200,) * 6
ANY_USER = (401, 200, 200, 200, 200, 200)
SUPERADMIN_ONLY = {status: (401, 403, 403, 403, 403, status) for status in (200, 201, 204)}
#: what a user may read or change of a user: itself, the scoped admin inside its department, the superadmin
ON_USER = (401, 200, 403, 200, 403, 200)
#: what only its own user and the superadmin may do (PDP self-service: roles, sessions, CheckAccess)
OWN = {status: (401, status, 403, 403, 403, status) for status in (200, 201, 204)}
#: about a user or session that does not exist
UNKNOWN = (401, 403, 403, 403, 403, 404)
NOBODY = "00000000-0000-0000-0000-00000000dead"
DISCOVERY = ("/scim/v2/ServiceProviderConfig", "/scim/v2/ResourceTypes", "/scim/v2/ResourceTypes/User",
             "/scim/v2/Schemas", f"/scim/v2/Schemas/{USER}")

DISPLAY_NAME = patch({"op": "replace", "path": "displayName", "value": "d-{tag}"})
TITLE = patch({"op": "replace", "path": "title", "value": "t-{tag}"})
#: a PUT that changes only displayName (the user was made with cn, sn and displayName "m")
PUT_USER = {"schemas": [USER], "userName": "{user_name}", "name": {"familyName": "m", "formatted": "m"},
            "displayName": "p-{tag}"}


# -- setups: what a cell acts on ---------------------------------------------------------------------


def group(make, cell):
    return {"group": make.group()}


def organization(make, cell):
    return {"organization": make.organization()}


def role(make, cell):
    return {"role": make.role()}


def two_roles(make, cell):
    return {"role": make.role(), "other_role": make.role()}


def role_and_permission(make, cell):
    return {"role": make.role(), "permission": make.permission()}


def role_with_permission(make, cell):
    role = make.role()
    return {"role": role, "permission": make.granted(role)}


def role_with_junior(make, cell):
    role = make.role()
    return {"role": role, "other_role": make.junior(role)}


def permission(make, cell):
    return {"permission": make.permission()}


def sod_set(make, cell):
    return {"sod": make.sod_set()}


def role_of_target(make, cell):
    return {"role": make.assigned(cell.target)}


def session(make, cell):
    return {"session": make.session(cell.target)}


def session_without_roles(make, cell):
    return {"session": make.session(cell.target, roles=[])}


TASKS = "ou=tasks,ou=system,dc=didmos,dc=de"


def task(make, cell):
    """A task the superadmin submitted (didmos.ping: whatever runs it, nothing changes)."""
    response = make.client.post("/tasks/v1/tasks", json={"name": "didmos.ping", "payload": {"value": cell.tag}},
                                headers=ADMIN)
    assert response.status_code == 202, f"setup: POST /tasks/v1/tasks -> {response.status_code} {response.json}"
    return {"task": response.json["id"]}


def failed_task(make, cell):
    """A task that failed for good, written directly in LDAP (no worker needed)."""
    task_id = str(uuid.uuid4())
    make.world.conn.add_s(f"didmosTaskId={task_id},{TASKS}", [
        ("objectClass", [b"didmosTask"]), ("didmosTaskId", [task_id.encode()]),
        ("didmosTaskHandler", [b"didmos.ping"]), ("didmosTaskPayload", [b'{"value": 1}']),
        ("didmosTaskState", [b"failed"]), ("didmosTaskAttempts", [b"1"]),
        ("didmosTaskError", [b"RuntimeError: made for the matrix"])])
    return {"task": task_id}


def group_and_deputy(make, cell):
    """A group, and a second superadmin: a request the superadmin files needs an approver other than itself."""
    make.world.user(PEOPLE, SUPERADMIN_ROLE, STANDARDUSER)
    return {"group": make.group()}


def filed_request(make, cell):
    """A join-group request the cell's target user filed for itself; it awaits the superadmin."""
    response = make.client.post("/tasks/v1/requests", json={"kind": "join-group", "payload": {"group": make.group()}},
                                headers=basic(cell.target, "pw"))
    assert response.status_code == 201, f"setup: file a request -> {response.status_code} {response.json}"
    return {"request": response.json["id"]}


def user_rows(mount, users, created, deleted):
    """The rows of the User resource on one SCIM mount (``users``: the path of its collection)."""
    one = f"{users}{{id}}/" if mount == "lui" else f"{users}/{{id}}"
    return [
        Row("GET", users, ANY_USER),
        Row("GET", one, ON_USER),
        Row("POST", users, SUPERADMIN_ONLY[created], body={"schemas": [USER], "userName": "c-{tag}"}),
        Row("PUT", one, ON_USER, body=PUT_USER, fresh="target", case="displayName"),
        Row("PUT", one, (401, 403, 403, 200, 403, 200), body={**PUT_USER, "title": "t-{tag}"}, fresh="target",
            case="title"),
        Row("PATCH", one, ON_USER, body=DISPLAY_NAME, fresh="target", case="displayName"),
        Row("PATCH", one, (401, 403, 403, 200, 403, 200), body=TITLE, fresh="target", case="title"),
        Row("DELETE", one, (401, 403, 403, 403, 403, deleted), fresh="target"),
        Row("POST", f"{users}/.search" if mount == "strict" else f"{users}.search", ANY_USER,
            body={**SEARCH, "filter": 'userName sw "m-"'}),
    ]


def resource_rows(collection, one, body, replacement, change, created, deleted, setup):
    """The rows of a resource no standard user or scoped admin may touch (Groups, Organizations)."""
    return [
        Row("GET", collection, ANY_USER),  # a list of what the caller may read: maybe empty
        Row("GET", one, SUPERADMIN_ONLY[200], setup=setup),
        Row("POST", collection, SUPERADMIN_ONLY[created], body=body),
        Row("PUT", one, SUPERADMIN_ONLY[200], body=replacement, setup=setup),
        Row("PATCH", one, SUPERADMIN_ONLY[200], body=change, setup=setup),
        Row("DELETE", one, SUPERADMIN_ONLY[deleted], setup=setup),
    ]


MATRIX: list[Row] = [
    # -- tasks: the outbox (superadmin only by default) ----------------------------------------------------
    Row("GET", "/tasks/v1/tasks", SUPERADMIN_ONLY[200]),
    Row("POST", "/tasks/v1/tasks", (401, 403, 403, 403, 403, 202),
        body={"name": "didmos.ping", "payload": {"value": "{tag}"}}),
    Row("GET", "/tasks/v1/tasks/{task}", SUPERADMIN_ONLY[200], setup=task),
    Row("POST", "/tasks/v1/tasks/{task}/retry", (401, 403, 403, 403, 403, 202), setup=failed_task),
    Row("GET", f"/tasks/v1/tasks/{NOBODY}", UNKNOWN, case="unknown task"),
    # -- requests and approvals ----------------------------------------------------------------------------
    Row("GET", "/tasks/v1/requests", ANY_USER),
    Row("GET", "/tasks/v1/requests/kinds", ANY_USER),
    # for oneself anyone; for another user `create` on Request for that user
    Row("POST", "/tasks/v1/requests", (401, 201, 403, 403, 403, 201),
        body={"kind": "join-group", "payload": {"user": "{id}", "group": "{group}"}}, setup=group_and_deputy),
    # its requester, an approver, or `read` on Request
    Row("GET", "/tasks/v1/requests/{request}", OWN[200], setup=filed_request),
    # only an approver the current level awaits: not the requester, not a stranger
    Row("POST", "/tasks/v1/requests/{request}/approve", SUPERADMIN_ONLY[200], body={"comment": "ok"},
        setup=filed_request),
    Row("POST", "/tasks/v1/requests/{request}/decline", SUPERADMIN_ONLY[200], body={"comment": "no"},
        setup=filed_request),
    Row("GET", f"/tasks/v1/requests/{NOBODY}", UNKNOWN, case="unknown request"),
    Row("GET", "/healthz", PUBLIC),
    # Prometheus metrics: the scrape token (tests/test_observability.py) or an actor allowed to read Metrics
    Row("GET", "/metrics", SUPERADMIN_ONLY[200]),
    Row("GET", "/readyz", PUBLIC),  # for probes: says only which servers answer, no data
    # the interactive API documentation and Swagger UI's files: public, like /openapi.json
    Row("GET", "/docs", PUBLIC),
    Row("GET", "/docs/assets/swagger-ui.css", PUBLIC),
    # didmos as a token issuer (plugins/didmos_auth/tests/test_issuer.py covers the grants themselves)
    Row("POST", "/oauth/token", (400,) * 6),  # no grant_type: unsupported_grant_type, whoever asks
    Row("POST", "/oauth/revoke", (401, 400, 400, 400, 400, 400)),  # clients or a token's subject; no token given
    Row("POST", "/oauth/introspect", (401,) * 6),  # registered clients only
    Row("GET", "/oauth/jwks", PUBLIC),
    Row("GET", "/.well-known/openid-configuration", PUBLIC),
    Row("GET", "/auth/whoami", ANY_USER),

    # -- SCIM, strict mount ------------------------------------------------------------------------------
    *user_rows("strict", "/scim/v2/Users", 201, 204),
    *resource_rows("/scim/v2/Groups", "/scim/v2/Groups/{group}", {"schemas": [GROUP], "displayName": "g-{tag}"},
                   {"schemas": [GROUP], "displayName": "g2-{tag}"},
                   patch({"op": "add", "path": "members", "value": [{"value": "{id}"}]}), 201, 204, group),
    Row("POST", "/scim/v2/Groups/.search", ANY_USER, body=SEARCH),
    *resource_rows("/scim/v2/Organizations", "/scim/v2/Organizations/{organization}",
                   {"schemas": [ORGANIZATION], "name": "o-{tag}"}, {"schemas": [ORGANIZATION], "name": "o2-{tag}"},
                   patch({"op": "replace", "path": "name", "value": "o3-{tag}"}), 201, 204, organization),
    Row("POST", "/scim/v2/Organizations/.search", ANY_USER, body=SEARCH),
    Row("POST", "/scim/v2/.search", ANY_USER, body={**SEARCH, "filter": 'displayName eq "m"'}),
    Row("GET", "/scim/v2/Me", ANY_USER),
    Row("PATCH", "/scim/v2/Me", ANY_USER, body=DISPLAY_NAME, fresh="caller", case="displayName"),
    # the scoped admin's own entry is inside its department
    Row("PATCH", "/scim/v2/Me", (401, 403, 403, 200, 200, 200), body=TITLE, fresh="caller", case="title"),
    Row("PUT", "/scim/v2/Me", ANY_USER, body=PUT_USER, fresh="caller", case="displayName"),
    Row("DELETE", "/scim/v2/Me", (401, 403, 403, 403, 403, 204), fresh="caller"),
    # RFC 7644 3.11: creating /Me is optional; didmos refuses it whoever asks
    Row("POST", "/scim/v2/Me", (501,) * 6, body={"schemas": [USER], "userName": "me-{tag}"}),
    # Bulk: each operation is decided as the single-resource route would be
    Row("POST", "/scim/v2/Bulk", SUPERADMIN_ONLY[201], body=bulk("POST", "/Users", {"userName": "c-{tag}"}),
        answer=bulk_answer, case="POST /Users"),
    Row("POST", "/scim/v2/Bulk", ON_USER, body=bulk("PUT", "/Users/{id}", PUT_USER), fresh="target",
        answer=bulk_answer, case="PUT /Users/{id} displayName"),
    Row("POST", "/scim/v2/Bulk", ON_USER, body=bulk("PATCH", "/Users/{id}", DISPLAY_NAME), fresh="target",
        answer=bulk_answer, case="PATCH /Users/{id} displayName"),
    Row("POST", "/scim/v2/Bulk", (401, 403, 403, 200, 403, 200), body=bulk("PATCH", "/Users/{id}", TITLE),
        fresh="target", answer=bulk_answer, case="PATCH /Users/{id} title"),
    Row("POST", "/scim/v2/Bulk", (401, 403, 403, 403, 403, 204), body=bulk("DELETE", "/Users/{id}"), fresh="target",
        answer=bulk_answer, case="DELETE /Users/{id}"),
    Row("POST", "/scim/v2/Bulk", SUPERADMIN_ONLY[201], body=bulk("POST", "/Groups", {"displayName": "g-{tag}"}),
        answer=bulk_answer, case="POST /Groups"),
    *(Row(method, "/scim/v2/Bulk", (405,) * 6, body={}) for method in ("GET", "PUT", "PATCH", "DELETE")),
    # discovery: public (RFC 7644 4) and read-only
    *(Row("GET", path, PUBLIC) for path in DISCOVERY),
    *(Row(method, path, (405,) * 6, body={}) for path in DISCOVERY for method in ("POST", "PUT", "PATCH", "DELETE")),

    # -- SCIM, LUI2 mount --------------------------------------------------------------------------------
    *user_rows("lui", "/lui2_backend/v2/User/", 200, 200),
    # the scoped admin may change the users of its department, not create them there
    Row("POST", "/lui2_backend/v2/User/{parent}/", SUPERADMIN_ONLY[200], body={"userName": "c-{tag}"},
        case="under a node"),
    *resource_rows("/lui2_backend/v2/Groups/", "/lui2_backend/v2/Groups/{group}/", {"displayName": "g-{tag}"},
                   {"displayName": "g2-{tag}"}, patch({"op": "replace", "path": "displayName", "value": "g3-{tag}"}),
                   200, 200, group),
    *resource_rows("/lui2_backend/v2/Organization/", "/lui2_backend/v2/Organization/{organization}/",
                   {"name": "o-{tag}"}, {"name": "o2-{tag}"},
                   patch({"op": "replace", "path": "name", "value": "o3-{tag}"}), 200, 200, organization),

    # -- PDP: review ---------------------------------------------------------------------------------------
    Row("GET", "/pdp/v1/roles", SUPERADMIN_ONLY[200]),
    Row("GET", "/pdp/v1/roles/standarduser", SUPERADMIN_ONLY[200]),
    Row("GET", "/pdp/v1/permissions", SUPERADMIN_ONLY[200]),
    Row("GET", "/pdp/v1/permissions/self-read", SUPERADMIN_ONLY[200]),
    Row("GET", "/pdp/v1/sod-sets", SUPERADMIN_ONLY[200]),
    Row("GET", "/pdp/v1/sod-sets/{sod}", SUPERADMIN_ONLY[200], setup=sod_set),
    Row("GET", "/pdp/v1/users/{id}/roles", OWN[200]),
    Row("GET", "/pdp/v1/users/{id}/permissions", OWN[200]),

    # -- PDP: administration ---------------------------------------------------------------------------------
    Row("POST", "/pdp/v1/roles", SUPERADMIN_ONLY[201], body={"name": "mx-new-{tag}"}),
    Row("DELETE", "/pdp/v1/roles/{role}", SUPERADMIN_ONLY[204], setup=role),
    Row("POST", "/pdp/v1/roles/{role}/permissions", SUPERADMIN_ONLY[201], body={"permission": "{permission}"},
        setup=role_and_permission),
    Row("DELETE", "/pdp/v1/roles/{role}/permissions/{permission}", SUPERADMIN_ONLY[204], setup=role_with_permission),
    Row("POST", "/pdp/v1/roles/{role}/juniors", SUPERADMIN_ONLY[201], body={"role": "{other_role}"}, setup=two_roles),
    Row("DELETE", "/pdp/v1/roles/{role}/juniors/{other_role}", SUPERADMIN_ONLY[204], setup=role_with_junior),
    Row("POST", "/pdp/v1/permissions", SUPERADMIN_ONLY[201],
        body={"name": "mx-new-{tag}", "operations": ["read"], "resource_type": "User", "scope": "self"}),
    Row("DELETE", "/pdp/v1/permissions/{permission}", SUPERADMIN_ONLY[204], setup=permission),
    Row("POST", "/pdp/v1/sod-sets", SUPERADMIN_ONLY[201],
        body={"name": "mx-new-{tag}", "roles": ["{role}", "{other_role}"], "cardinality": 2},
        setup=two_roles),
    Row("DELETE", "/pdp/v1/sod-sets/{sod}", SUPERADMIN_ONLY[204], setup=sod_set),
    # nobody assigns itself a role: AssignUser needs write on RoleAssignment, one's own entry included
    Row("POST", "/pdp/v1/users/{id}/roles", SUPERADMIN_ONLY[201], body={"role": "{role}"}, fresh="target",
        setup=role),
    Row("DELETE", "/pdp/v1/users/{id}/roles/{role}", SUPERADMIN_ONLY[204], fresh="target",
        setup=role_of_target),

    # -- PDP: sessions and CheckAccess (one's own always) ---------------------------------------------------
    Row("POST", "/pdp/v1/sessions", OWN[201], body={"user": "{id}"}),
    # a session activates only roles its user is authorized for, whoever creates it
    Row("POST", "/pdp/v1/sessions", (401, 403, 403, 403, 403, 403), body={"user": "{id}", "roles": ["superadmin"]},
        case="a role the user lacks"),
    Row("GET", "/pdp/v1/sessions/{session}", OWN[200], setup=session),
    Row("DELETE", "/pdp/v1/sessions/{session}", OWN[204], setup=session),
    Row("POST", "/pdp/v1/sessions/{session}/roles", OWN[201], body={"role": "standarduser"},
        setup=session_without_roles),
    Row("POST", "/pdp/v1/sessions/{session}/roles", (401, 403, 403, 403, 403, 403), body={"role": "superadmin"},
        setup=session_without_roles, case="a role the user lacks"),
    Row("DELETE", "/pdp/v1/sessions/{session}/roles/standarduser", OWN[204], setup=session),
    Row("POST", "/pdp/v1/check-access", OWN[200], body={"user": "{id}", "operation": "read", "resource_type": "User"},
        case="user"),
    Row("POST", "/pdp/v1/check-access", OWN[200],
        body={"session": "{session}", "operation": "read", "resource_type": "User"},
        setup=session, case="session"),

    # -- PDP: whether a user or session exists is told only to who may act on it tenant-wide -------------
    Row("GET", f"/pdp/v1/users/{NOBODY}/roles", UNKNOWN, case="unknown user"),
    Row("POST", f"/pdp/v1/users/{NOBODY}/roles", UNKNOWN, body={"role": "standarduser"}, case="unknown user"),
    Row("GET", "/pdp/v1/sessions/no-such-session", UNKNOWN, case="unknown session"),
    Row("POST", "/pdp/v1/check-access", UNKNOWN, body={"user": NOBODY, "operation": "read", "resource_type": "User"},
        case="unknown user"),
]

#: (method, rule) the matrix leaves out, and why.
IGNORED = {
    ("GET", "/static/<path:filename>"): "Flask's static folder: didmos ships no static files",
    ("GET", "/openapi.json"): "the API description (flask-smorest), public by design: it holds no data",
}


@pytest.fixture(scope="module")
def world(didmos_slapd):
    return World(didmos_slapd.admin_connection())


@pytest.fixture(scope="module")
def app(world, didmos_overrides):
    from didmos_host.app import create_app

    return create_app(**didmos_overrides)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.mark.parametrize("row", MATRIX, ids=[row.name for row in MATRIX])
def test_matrix(client, world, row):
    """Every actor's request on the row answers the row's status (all cells are tried, then compared)."""
    cells = {}
    for actor, expected in zip(ACTORS, row.expected):
        cell = who(world, actor, row.fresh)
        values = cell.values()
        if row.setup is not None:
            values |= row.setup(Make(world, client, cell.tag), cell)
        body = fill(row.body, values)
        response = client.open(fill(row.path, values), method=row.method, headers=cell.headers,
                               **({} if body is None else {"json": body}))
        cells[actor] = (row.answer(response), expected, response.get_data(as_text=True)[:300])
    wrong = {actor: cell for actor, cell in cells.items() if cell[0] != cell[1]}
    assert not wrong, f"{row.name}: (got, expected, body) per actor: {wrong}"


class Sample(dict):
    """Placeholder values for mapping a row's path to its rule without making anything."""

    def __missing__(self, key):
        return {"parent": PEOPLE}.get(key, "sample")


def test_every_route_is_in_the_matrix(app):
    adapter = app.url_map.bind("localhost")
    covered, unroutable = set(), []
    for row in MATRIX:
        try:
            rule, _ = adapter.match(fill(row.path, Sample()), method=row.method, return_rule=True)
        except (HTTPException, RequestRedirect) as exc:
            unroutable.append(f"{row.name}: {exc!r}")
            continue
        covered.add((row.method, rule.rule))
    served = {(method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}}
    missing = sorted(served - covered - set(IGNORED))
    stale = sorted(set(IGNORED) - served)
    assert not unroutable, f"rows that reach no route: {unroutable}"
    assert not missing, f"(method, rule) that no MATRIX row covers: {missing}"
    assert not stale, f"IGNORED names (method, rule) the app no longer serves: {stale}"


def test_lists_show_each_actor_only_what_it_may_read(client, world):
    def ids(headers):
        body = client.get("/scim/v2/Users?count=1000", headers=headers).json
        return {resource["id"] for resource in body["Resources"]}

    assert ids(basic(world.standard, "pw")) == {world.standard}
    search = client.post("/scim/v2/.search", json={"count": 1000}, headers=basic(world.standard, "pw")).json
    assert [resource["id"] for resource in search["Resources"]] == [world.standard]
    scoped = ids(basic(world.scoped_admin, "pw"))
    assert {world.inside, world.scoped_admin} <= scoped and world.outside not in scoped
    assert {world.standard, world.other, world.outside} <= ids(ADMIN)
