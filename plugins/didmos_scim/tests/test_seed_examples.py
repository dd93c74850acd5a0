"""Every request/response example of the LUI2 backend reference (seed 004) replayed on ``/lui2_backend/v2``.

One test per heading of the document's Example Section, named after it, with the example's curl
request quoted above it; ``test_return_codes`` covers the Return Codes tables of the Requests section.
The responses are checked for the document's SHAPE: status code, keys and nesting, and the literal
values a client of the original relies on (``userType`` "local", the ``location`` list, the operation
names). Values of one installation (ids, DNs under them, timestamps, the superadmin's names and roles)
are compared with what our directory holds or with a pattern, never with the document's literals.

Where the document is inconsistent, the evident intent is replayed (``/work/shared/seeds/README.md``):

* the document authenticates with ``Bearer`` tokens; didmos has HTTP Basic for now, so every request
  authenticates as the superadmin with Basic;
* the ids of the examples (``...010003``, ``...010000``, ``3b9a1e4e-...``) are entries of the original
  installation: the GET and PATCH examples read and change entries made here with the example's names,
  and the DELETE example deletes the entry its POST example creates;
* the filter example's ``displayName eq Admin`` is not an RFC 7644 filter (an unquoted value) and its
  result's displayName is "Super Admin": the replayed filter is ``displayName eq "<the superadmin's
  displayName>"``;
* the PATCH example's ``--data`` is malformed JSON (``"schemas": "urn:...PatchOp"]``); the replayed body
  is the one of the PATCH section, the same operation with ``"schemas": ["urn:...PatchOp"]``.
"""

import re
import uuid

import ldap
import pytest

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth as basic

PREFIX = "/lui2_backend/v2"
TENANT = "ou=default-tenant,dc=didmos,dc=de"
DATA = f"ou=data,{TENANT}"
PEOPLE = f"ou=people,{DATA}"
RBAC = f"ou=rbac,{TENANT}"
SUPERADMIN_DN = f"didmosUUID={SUPERADMIN_ID},{PEOPLE}"
LUI = "urn:scim:schemas:custom:daasi:lui:2.0"

#: The ancestors every example's ``location`` starts with, as the document writes them.
DATA_LOCATION = [
    {"de": "dc=de"},
    {"didmos": "dc=didmos,dc=de"},
    {"default-tenant": "ou=default-tenant,dc=didmos,dc=de"},
    {"data": "ou=data,ou=default-tenant,dc=didmos,dc=de"},
]
PEOPLE_LOCATION = [*DATA_LOCATION, {"people": "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"}]
#: The superadmin's operations on a user entry in every example (their order differs between examples).
ENTRY_OPERATIONS = ["delete", "modify-add", "modify-del", "modify-replace", "read", "write"]
#: ``20190731093903Z``: LDAP GeneralizedTime, as ``meta.created`` and ``meta.modified`` are written.
GENERALIZED_TIME = re.compile(r"\d{14}Z")
#: ``user167i``: the userName generated when a created User has none.
GENERATED_USER_NAME = re.compile(r"user\d{3}[a-z]")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

#: The body of both create examples.
TEST_USER = '{"name":{"givenName":"Test","familyName":"User"}}'
#: The PATCH section's body: the PATCH example's request as intended.
ADD_EMAIL = ('{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", '
             '"value": {"email": [{"value": "max@muster.de", "type": "home"}]}}]}')
#: The PATCH example's ``--data`` as printed: not JSON (``"schemas": "..."]``).
MALFORMED_PATCH = ('{"schemas": "urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations": [{"op": "add","value": '
                   '{"email": [ {"value": "max@muster.de","type": "home"}]}}]}')


#: The document's ``-H 'Content-Type: application/json' -H 'Authorization: Bearer ...'``, with Basic.
ADMIN = {**basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD), "Content-Type": "application/json"}


@pytest.fixture
def client(make_app):
    return make_app(pdp={"refresh_seconds": 0.3}).test_client()


@pytest.fixture
def ldap_conn(didmos_slapd):
    return didmos_slapd.admin_connection()


@pytest.fixture
def made(ldap_conn):
    """DNs of entries a test made (directly or through the API); deleted afterwards, so the entries named
    like the document's "Super Admin" never meet the filter example."""
    dns = []
    yield dns
    for dn in dns:
        try:
            ldap_conn.delete_s(dn)
        except ldap.NO_SUCH_OBJECT:
            pass  # the test deleted it


def make_user(conn, made, *, given, family, password=None, roles=()):
    """A user in ou=people like the document's entries (userType local, no groups); its id and DN."""
    user_id = str(uuid.uuid4())
    dn = f"didmosUUID={user_id},{PEOPLE}"
    classes = [b"inetOrgPerson", b"didmosObject", b"didmosPerson"] + ([b"didmosRoleHolder"] if roles else [])
    attrs = [
        ("objectClass", classes), ("didmosUUID", [user_id.encode()]), ("uid", [f"seed-{user_id[:8]}".encode()]),
        ("cn", [f"{given} {family}".encode()]), ("sn", [family.encode()]), ("givenName", [given.encode()]),
        ("displayName", [f"{given} {family}".encode()]), ("didmosActive", [b"TRUE"]),
        ("didmosUserType", [b"local"]),
    ]
    if password:
        attrs.append(("userPassword", [password.encode()]))
    if roles:
        attrs.append(("didmosRoleAssignment", [f"cn={role},ou=roles,{RBAC}".encode() for role in roles]))
    conn.add_s(dn, attrs)
    made.append(dn)
    return user_id, dn


def stored(conn, dn, *attrs):
    """The entry's values as text, or None when there is no such entry."""
    try:
        [(_, found)] = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs) or None)
    except ldap.NO_SUCH_OBJECT:
        return None
    return {key: [value.decode() for value in values] for key, values in found.items()}


def rdn_value(dn):
    return ldap.dn.str2dn(dn)[0][0][1]


# -- shape checks shared by the examples ------------------------------------------------------------------


def assert_operations(block, where):
    """``{"entry": [the six operations], "attributes": {}}``: the superadmin may do everything to the entry."""
    assert isinstance(block, dict) and set(block) == {"entry", "attributes"}, f"{where}: {block!r}"
    assert isinstance(block["entry"], list) and sorted(block["entry"]) == ENTRY_OPERATIONS, \
        f"{where}.entry: expected the operations {ENTRY_OPERATIONS} (in any order), got {block['entry']!r}"
    assert block["attributes"] == {}, f"{where}.attributes: expected {{}}, got {block['attributes']!r}"


def assert_timestamps(meta, where):
    """``meta.created``/``meta.modified`` as GeneralizedTime.

    The document prints them in the GET and PATCH results only; every LUI result carries them, so that a
    client can rely on them after a create or in a list too.
    """
    for key in ("created", "modified"):
        assert key in meta, f"{where}: meta.{key} is missing; meta has {sorted(meta)}"
        assert isinstance(meta[key], str) and GENERALIZED_TIME.fullmatch(meta[key]), \
            f"{where}: meta.{key} should be GeneralizedTime like 20190731093903Z, got {meta[key]!r}"
    assert meta["created"] <= meta["modified"], f"{where}: created {meta['created']} after modified {meta['modified']}"


def assert_lui_extension(body, *, admin_access, roles, where):
    """``"urn:scim:schemas:custom:daasi:lui:2.0": {"adminAccess": bool, "roles": [role names]}``."""
    assert LUI in body, f"{where}: the {LUI} extension is missing; keys are {sorted(body)}"
    extension = body[LUI]
    assert isinstance(extension, dict), f"{where}: {LUI} should be an object, got {extension!r}"
    assert "adminAccess" in extension and "roles" in extension, \
        f"{where}: {LUI} should have adminAccess and roles, got {extension!r}"
    assert extension["adminAccess"] is admin_access, \
        f"{where}: {LUI}.adminAccess should be {admin_access}, got {extension['adminAccess']!r}"
    assert isinstance(extension["roles"], list) and sorted(extension["roles"]) == sorted(roles), \
        f"{where}: {LUI}.roles should be {sorted(roles)}, got {extension['roles']!r}"


def create_test_user(client, made, parent=None):
    """The document's POST of ``{"name":{"givenName":"Test","familyName":"User"}}``, under ``parent`` if given."""
    url = f"{PREFIX}/User/{parent}/" if parent else f"{PREFIX}/User/"
    response = client.post(url, data=TEST_USER, headers=ADMIN)
    if response.status_code == 200 and UUID.fullmatch(str(response.json.get("id"))):
        made.append(f"didmosUUID={response.json['id']},{parent or PEOPLE}")
    return response


def assert_created_test_user(response, parent, parent_location):
    """The result of both create examples: "Test User" directly under ``parent``."""
    assert response.status_code == 200, (response.status_code, response.json)
    body = response.json
    assert UUID.fullmatch(body["id"]), f"id should be a didmosUUID, got {body['id']!r}"
    dn = f"didmosUUID={body['id']},{parent}"
    assert body["name"] == {"formatted": "Test User", "familyName": "User", "givenName": "Test"}, body["name"]
    assert body["location"] == [*parent_location, {body["id"]: dn}], body["location"]
    assert isinstance(body.get("userName"), str) and GENERATED_USER_NAME.fullmatch(body["userName"]), \
        f"userName should be generated like user167i, got {body.get('userName')!r}"
    assert body.get("displayName") == "Test User", body.get("displayName")
    assert body.get("active") is True, body.get("active")
    assert body.get("userType") == "local", body.get("userType")
    operations = body["meta"][LUI]["operations"]
    assert list(operations) == [dn], \
        f"meta.{LUI}.operations should be keyed by the new entry's DN {dn}, got {operations!r}"
    assert_operations(operations[dn], f"meta.{LUI}.operations[{dn}]")
    assert_timestamps(body["meta"], "create")
    return body, dn


# -- the Example Section ----------------------------------------------------------------------------------


# Getting information on a existing resource
# curl 'https://didmos2-backend.local/lui2_backend/v2/User/00000000-0000-0000-0000-000000010003/'
#   -H 'Content-Type: application/json' -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
def test_getting_information_on_a_existing_resource(client, ldap_conn, made):
    user_id, dn = make_user(ldap_conn, made, given="Super", family="Admin")  # the example's ...010003
    response = client.get(f"{PREFIX}/User/{user_id}/", headers=ADMIN)
    assert response.status_code == 200, (response.status_code, response.json)
    body = response.json
    assert body["name"] == {"formatted": "Super Admin", "familyName": "Admin", "givenName": "Super"}, body["name"]
    assert body["location"] == [*PEOPLE_LOCATION, {user_id: dn}], body["location"]
    assert body["id"] == user_id
    assert body["displayName"] == "Super Admin"
    assert body["userType"] == "local"
    assert body.get("groups") == [], f"groups should be an empty list, got {body.get('groups', 'no groups key')!r}"
    assert_lui_extension(body, admin_access=False, roles=[], where="GET")
    assert_timestamps(body["meta"], "GET")
    assert_operations(body["meta"][LUI]["operations"], f"meta.{LUI}.operations")


# Getting information on a set of resources using a filter
# curl 'https://didmos2-backend.local/lui2_backend/v2/User/?filter=displayName eq Admin'
#   -H 'Content-Type: application/json' -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
def test_getting_information_on_a_set_of_resources_using_a_filter(client, ldap_conn):
    admin = stored(ldap_conn, SUPERADMIN_DN, "cn", "sn", "givenName", "displayName", "uid", "didmosRoleAssignment")
    display_name = admin["displayName"][0]
    response = client.get(f"{PREFIX}/User/", query_string={"filter": f'displayName eq "{display_name}"'},
                          headers=ADMIN)
    assert response.status_code == 200, (response.status_code, response.json)
    resources = response.json["Resources"]
    assert isinstance(resources, list) and [r.get("id") for r in resources] == [SUPERADMIN_ID], resources
    [body] = resources
    assert body["name"] == {"formatted": admin["cn"][0], "familyName": admin["sn"][0],
                            "givenName": admin["givenName"][0]}, body["name"]
    assert body["location"] == [*PEOPLE_LOCATION, {SUPERADMIN_ID: SUPERADMIN_DN}], body["location"]
    assert body["userName"] == admin["uid"][0]
    assert body["displayName"] == display_name
    assert body["active"] is True
    assert body["userType"] == "local"
    assert body.get("groups") == [], f"groups should be an empty list, got {body.get('groups', 'no groups key')!r}"
    # the document: adminAccess true, roles ["standarduser", "superadmin"]: the superadmin's assigned roles
    assert_lui_extension(body, admin_access=True, roles=[rdn_value(r) for r in admin["didmosRoleAssignment"]],
                         where="filter")
    assert_timestamps(body["meta"], "filter")
    assert_operations(body["meta"][LUI]["operations"], f"meta.{LUI}.operations")


# Create a new resource
# curl -X POST 'https://didmos2-backend.local/lui2_backend/v2/User/' -H 'Content-Type: application/json'
#   -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
#   --data '{"name":{"givenName":"Test","familyName":"User"}}'
def test_create_a_new_resource(client, ldap_conn, made):
    response = create_test_user(client, made)
    body, dn = assert_created_test_user(response, PEOPLE, PEOPLE_LOCATION)
    entry = stored(ldap_conn, dn, "uid", "cn")
    assert entry == {"uid": [body["userName"]], "cn": ["Test User"]}, entry


# Create a new resource under a specific dn
# curl -X POST 'https://didmos2-backend.local/lui2_backend/v2/User/ou=data,ou=default-tenant,dc=didmos,dc=de/'
#   -H 'Content-Type: application/json' -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
#   --data '{"name":{"givenName":"Test","familyName":"User"}}'
def test_create_a_new_resource_under_a_specific_dn(client, ldap_conn, made):
    response = create_test_user(client, made, DATA)
    body, dn = assert_created_test_user(response, DATA, DATA_LOCATION)
    assert stored(ldap_conn, dn, "cn") == {"cn": ["Test User"]}


# Delete a resource
# curl -X DELETE 'https://didmos2-backend.local/lui2_backend/v2/User/3b9a1e4e-e257-4038-8e87-2870b8b82170/'
#   -H 'Content-Type: application/json' -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
def test_delete_a_resource(client, ldap_conn, made):
    created = create_test_user(client, made, DATA)  # the example's 3b9a1e4e-... entry
    assert created.status_code == 200, created.json
    user_id = created.json["id"]
    response = client.delete(f"{PREFIX}/User/{user_id}/", headers=ADMIN)
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    # the document's result is "-": no content (an empty JSON object counts as none)
    assert response.get_data(as_text=True).strip() in ("", "{}"), response.get_data(as_text=True)
    assert stored(ldap_conn, f"didmosUUID={user_id},{DATA}") is None
    assert client.get(f"{PREFIX}/User/{user_id}/", headers=ADMIN).status_code == 404


# Modify an existing resource entry
# curl -X PATCH 'https://didmos2-backend.local/lui2_backend/v2/User/00000000-0000-0000-0000-000000010000/'
#   -H 'Content-Type: application/json' -H 'Authorization: Bearer 99775a6f21864815ba1e01dbbbc3c049'
#   --data '{"schemas": "urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations": [{"op": "add","value":
#   {"email": [ {"value": "max@muster.de","type": "home"}]}}]}'
def test_modify_an_existing_resource_entry(client, ldap_conn, made):
    user_id, dn = make_user(ldap_conn, made, given="Super", family="Admin")  # the example's ...010000
    response = client.patch(f"{PREFIX}/User/{user_id}/", data=ADD_EMAIL, headers=ADMIN)
    assert response.status_code == 200, (response.status_code, response.json)
    result = response.json
    assert result["name"] == {"formatted": "Super Admin", "familyName": "Admin", "givenName": "Super"}, result["name"]
    assert result["location"] == [*PEOPLE_LOCATION, {user_id: dn}], result["location"]
    assert result["id"] == user_id
    assert result["displayName"] == "Super Admin"
    assert result["userType"] == "local"
    assert stored(ldap_conn, dn, "mail") == {"mail": ["max@muster.de"]}, "the email was not added to the entry"
    emails = result.get("emails")
    assert isinstance(emails, list) and [e.get("value") for e in emails] == ["max@muster.de"], \
        f"emails should be [{{'value': 'max@muster.de'}}], got {emails!r}"
    assert result.get("email") == "max@muster.de", \
        f"the document's result has \"email\": \"max@muster.de\" beside emails; " \
        f"got {result.get('email', 'no email key')!r}"
    assert_timestamps(result["meta"], "PATCH")


# -- the Return Codes tables of the Requests section ------------------------------------------------------


@pytest.fixture
def standard_user(ldap_conn, made):
    """A user holding only the default role standarduser, who may log in with 'Secret-123'."""
    user_id, _ = make_user(ldap_conn, made, given="Std", family=f"User-{uuid.uuid4().hex[:6]}",
                           password="Secret-123", roles=["standarduser"])
    return {**basic(user_id, "Secret-123"), "Content-Type": "application/json"}


ANONYMOUS = {"Content-Type": "application/json"}
WRONG_PASSWORD = {**basic(SUPERADMIN_ID, "not-the-password"), "Content-Type": "application/json"}


def case(name, method, url, who, body, status):
    """One row of a Return Codes table: ``url`` relative to the mount, ``who`` names the credentials."""
    return pytest.param(method, url, who, body, status, id=f"{method} {status} {name}")


@pytest.mark.parametrize("method, url, who, body, status", [
    # GET: 401 Unauthorised
    case("one resource without credentials", "GET", "/User/{other}/", "nobody", None, 401),
    case("one resource with a wrong password", "GET", "/User/{other}/", "wrong password", None, 401),
    case("a filter without credentials", "GET", '/User/?filter=displayName eq "Super Admin"', "nobody", None, 401),
    # POST: 400 body did not match the requirements, 401, 403, 419 userName taken
    case("a body that is no resource", "POST", "/User/", "superadmin", '["not", "a", "resource"]', 400),
    case("without credentials", "POST", "/User/", "nobody", TEST_USER, 401),
    case("by a standard user", "POST", "/User/", "standard user", TEST_USER, 403),
    case("under a node_dn by a standard user", "POST", f"/User/{DATA}/", "standard user", TEST_USER, 403),
    case("an existing userName", "POST", "/User/", "superadmin", '{"userName": "{other_user_name}"}', 419),
    # Delete: 401, 403, 404 unknown id
    case("without credentials", "DELETE", "/User/{other}/", "nobody", None, 401),
    case("by a standard user", "DELETE", "/User/{other}/", "standard user", None, 403),
    case("an unknown id", "DELETE", "/User/{unknown}/", "superadmin", None, 404),
    # PATCH: 400 body did not match the requirements (the example's malformed --data; no Operations), 401, 403
    case("the example's malformed body", "PATCH", "/User/{other}/", "superadmin", MALFORMED_PATCH, 400),
    case("no Operations", "PATCH", "/User/{other}/", "superadmin",
         '{"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"]}', 400),
    case("without credentials", "PATCH", "/User/{other}/", "nobody", ADD_EMAIL, 401),
    case("by a standard user", "PATCH", "/User/{other}/", "standard user", ADD_EMAIL, 403),
])
def test_return_codes(client, ldap_conn, made, standard_user, method, url, who, body, status):
    """The documented status of each refused request, on another user ``{other}``; nothing changes."""
    other_id, other_dn = make_user(ldap_conn, made, given="Other", family="Person")
    other_user_name = stored(ldap_conn, other_dn, "uid")["uid"][0]
    before = stored(ldap_conn, other_dn)
    people_before = len(ldap_conn.search_s(DATA, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["1.1"]))
    headers = {"nobody": ANONYMOUS, "wrong password": WRONG_PASSWORD, "standard user": standard_user,
               "superadmin": ADMIN}[who]
    url = url.replace("{other}", other_id).replace("{unknown}", str(uuid.uuid4()))
    if body is not None:
        body = body.replace("{other_user_name}", other_user_name)
    response = client.open(PREFIX + url, method=method, headers=headers, data=body)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    # a refused request changes nothing
    assert stored(ldap_conn, other_dn) == before
    after = len(ldap_conn.search_s(DATA, ldap.SCOPE_SUBTREE, "(objectClass=inetOrgPerson)", ["1.1"]))
    assert after == people_before
