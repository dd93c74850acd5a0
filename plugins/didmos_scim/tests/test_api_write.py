"""Writing through both SCIM mounts against the real slapd: create, replace, patch, delete, /Me, ETags."""

import uuid

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth as basic

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LUI = "urn:scim:schemas:custom:daasi:lui:2.0"


ADMIN = basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


@pytest.fixture
def client(make_app):
    return make_app(pdp={"refresh_seconds": 0.3}).test_client()


@pytest.fixture
def ldap_conn(didmos_slapd):
    return didmos_slapd.admin_connection()


def entry(conn, dn, *attrs):
    [(_, found)] = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", list(attrs) or None)
    return {k: [v.decode() for v in vs] for k, vs in found.items()}


def new_user(client, **extra):
    body = {"schemas": [USER], "userName": f"u-{uuid.uuid4().hex[:10]}", "name": {"givenName": "Ann", "familyName": "Lee"},
            **extra}
    response = client.post("/scim/v2/Users", json=body, headers=ADMIN)
    assert response.status_code == 201, response.json
    return response.json


def patch(client, path, *operations, headers=ADMIN, **kwargs):
    return client.patch(path, json={"schemas": [PATCH], "Operations": list(operations)}, headers=headers, **kwargs)


# -- create ---------------------------------------------------------------------------------------------


def test_create_on_the_strict_mount_answers_201_with_location_and_etag(client, ldap_conn):
    body = new_user(client, emails=[{"value": "ann@example.org", "type": "work"}], active=True,
                    **{ENTERPRISE: {"department": "R&D"}})
    assert body["name"] == {"givenName": "Ann", "familyName": "Lee", "formatted": "Ann Lee"}
    assert body["displayName"] == "Ann Lee" and body["active"] is True and body["userType"] == "local"
    assert body[ENTERPRISE] == {"department": "R&D"} and "password" not in body
    stored = entry(ldap_conn, f"didmosUUID={body['id']},{PEOPLE}", "*", "entryCSN")
    assert stored["mail"] == ["ann@example.org"] and stored["ou"] == ["R&D"] and stored["cn"] == ["Ann Lee"]
    assert body["meta"]["version"] == f'W/"{stored["entryCSN"][0]}"'


def test_create_headers(client):
    response = client.post("/scim/v2/Users", json={"userName": f"h-{uuid.uuid4().hex[:8]}"}, headers=ADMIN)
    assert response.status_code == 201 and response.content_type == "application/scim+json"
    assert response.headers["Location"] == response.json["meta"]["location"]
    assert response.headers["ETag"] == response.json["meta"]["version"]


def test_a_taken_username_is_409_uniqueness_strict_and_419_on_the_lui_mount(client):
    taken = new_user(client)["userName"]
    strict = client.post("/scim/v2/Users", json={"userName": taken.upper()}, headers=ADMIN)
    assert strict.status_code == 409 and strict.json["scimType"] == "uniqueness" and taken.upper() in strict.json["detail"]
    lui = client.post("/lui2_backend/v2/User/", json={"userName": taken}, headers=ADMIN)
    assert lui.status_code == 419 and lui.json["schemas"] == [ERROR]


def test_the_lui_mount_creates_as_in_the_seeds(client, ldap_conn):
    response = client.post("/lui2_backend/v2/User/", json={"name": {"givenName": "Test", "familyName": "User"}},
                           headers=ADMIN)
    assert response.status_code == 200
    body = response.json
    assert body["name"] == {"formatted": "Test User", "familyName": "User", "givenName": "Test"}
    assert body["displayName"] == "Test User" and body["active"] is True and body["userType"] == "local"
    assert body["userName"].startswith("user") and len(body["userName"]) == 8
    dn = f"didmosUUID={body['id']},{PEOPLE}"
    assert body["location"][-1] == {body["id"]: dn}
    assert body["meta"]["location"] == f"http://localhost/lui2_backend/v2/User/{body['id']}/"
    operations = body["meta"][LUI]["operations"][dn]
    assert set(operations["entry"]) >= {"delete", "modify-add", "modify-del", "modify-replace", "read", "write"}


def test_the_lui_mount_creates_under_a_node_dn(client):
    parent = f"ou=data,{TENANT}"
    response = client.post(f"/lui2_backend/v2/User/{parent}/", json={"name": {"givenName": "T", "familyName": "U"}},
                           headers=ADMIN)
    assert response.status_code == 200
    assert response.json["location"][-1] == {response.json["id"]: f"didmosUUID={response.json['id']},{parent}"}
    outside = client.post("/lui2_backend/v2/User/ou=x,dc=example,dc=com/", json={"userName": "x"}, headers=ADMIN)
    assert outside.status_code == 400 and outside.json["scimType"] == "invalidValue"
    missing = client.post(f"/lui2_backend/v2/User/ou=nothere,{TENANT}/", json={"userName": "x"}, headers=ADMIN)
    assert missing.status_code == 404


def test_the_lui_mount_ignores_unmapped_attributes_the_strict_one_refuses_them(client):
    lui = client.post("/lui2_backend/v2/User/", json={"userName": f"l-{uuid.uuid4().hex[:8]}", "shoeSize": 44},
                      headers=ADMIN)
    assert lui.status_code == 200 and "shoeSize" not in lui.json
    strict = client.post("/scim/v2/Users", json={"userName": f"s-{uuid.uuid4().hex[:8]}", "shoeSize": 44}, headers=ADMIN)
    assert strict.status_code == 400 and strict.json["scimType"] == "invalidValue" and "shoeSize" in strict.json["detail"]


class Names:
    @hookimpl(tryfirst=True)
    def didmos_user_name(self, resource_type, attributes, attempt):
        return f"{attributes['givenName'][0].lower()}.{attributes['sn'][0].lower()}{attempt or ''}"


def test_the_user_name_generator_is_a_hook_and_retries_when_taken(make_app):
    client = make_app(Names()).test_client()
    family = uuid.uuid4().hex[:8]
    first = client.post("/scim/v2/Users", json={"name": {"givenName": "Ann", "familyName": family}}, headers=ADMIN)
    second = client.post("/scim/v2/Users", json={"name": {"givenName": "Ann", "familyName": family}}, headers=ADMIN)
    assert first.json["userName"] == f"ann.{family}" and second.json["userName"] == f"ann.{family}1"


@pytest.mark.parametrize("body, scim_type", [
    ({"userName": 5}, "invalidValue"),
    ({"userName": "x", "active": "maybe"}, "invalidValue"),
    ({"userName": "x", "emails": [{"value": "a@b", "type": "pigeon"}]}, "invalidValue"),
    ({"userName": "x", ENTERPRISE: {"manager": {"value": "no-such-id"}}}, "invalidValue"),
    (["not", "an", "object"], "invalidSyntax"),
])
def test_bad_creates_are_400_and_change_nothing(client, ldap_conn, body, scim_type):
    before = len(ldap_conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, "(objectClass=*)", ["1.1"]))
    response = client.post("/scim/v2/Users", json=body, headers=ADMIN)
    assert response.status_code == 400 and response.json["scimType"] == scim_type
    assert len(ldap_conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, "(objectClass=*)", ["1.1"])) == before


def test_malformed_json_and_oversized_bodies(client):
    broken = client.post("/scim/v2/Users", data="{not json", headers={**ADMIN, "Content-Type": "application/scim+json"})
    assert broken.status_code == 400 and broken.json["scimType"] == "invalidSyntax"
    huge = client.post("/scim/v2/Users", data="x" * (1 << 21), headers={**ADMIN, "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json["schemas"] == [ERROR]


# -- replace --------------------------------------------------------------------------------------------


def test_put_replaces_mapped_attributes_and_never_wipes_unmapped_ones(client, ldap_conn):
    user = new_user(client, title="Boss", emails=[{"value": "a@x.org", "type": "work"}])
    dn = f"didmosUUID={user['id']},{PEOPLE}"
    ldap_conn.modify_s(dn, [(ldap.MOD_ADD, "roomNumber", [b"42"])])  # not mapped: must survive a PUT
    response = client.put(f"/scim/v2/Users/{user['id']}", headers=ADMIN,
                          json={"schemas": [USER], "userName": user["userName"], "name": {"givenName": "Bo", "familyName": "Lee"}})
    assert response.status_code == 200, response.json
    body = response.json
    assert "title" not in body and "emails" not in body and body["name"]["givenName"] == "Bo"
    stored = entry(ldap_conn, dn)
    assert stored["roomNumber"] == ["42"] and "title" not in stored and "mail" not in stored
    assert stored["userPassword"] if "userPassword" in stored else True  # a PUT without password keeps it


def test_put_keeps_the_password_unless_given(client, ldap_conn):
    user = new_user(client, password="Secret-123")
    client.put(f"/scim/v2/Users/{user['id']}", json={"userName": user["userName"]}, headers=ADMIN)
    assert client.get("/auth/whoami", headers=basic(user["id"], "Secret-123")).status_code == 200


# -- patch ----------------------------------------------------------------------------------------------


def test_patch_with_paths_filters_and_extensions(client, ldap_conn):
    manager = new_user(client)
    user = new_user(client, emails=[{"value": "w@x.org", "type": "work"}], phoneNumbers=[{"value": "1", "type": "work"}])
    path = f"/scim/v2/Users/{user['id']}"
    response = patch(client, path,
                     {"op": "Replace", "path": "name.givenName", "value": "Eve"},
                     {"op": "add", "path": "phoneNumbers", "value": [{"value": "2", "type": "mobile"}]},
                     {"op": "replace", "path": 'emails[type eq "work"].value', "value": "eve@x.org"},
                     {"op": "replace", "path": f"{ENTERPRISE}:manager.value", "value": manager["id"]},
                     {"op": "remove", "path": 'phoneNumbers[type eq "work"]'})
    assert response.status_code == 200, response.json
    body = response.json
    assert body["name"]["givenName"] == "Eve" and body["emails"] == [{"value": "eve@x.org", "type": "work"}]
    assert body["phoneNumbers"] == [{"value": "2", "type": "mobile"}]
    assert body[ENTERPRISE]["manager"]["value"] == manager["id"]
    stored = entry(ldap_conn, f"didmosUUID={user['id']},{PEOPLE}")
    assert stored["manager"] == [f"didmosUUID={manager['id']},{PEOPLE}"] and "telephoneNumber" not in stored


def test_patch_tolerates_what_provisioning_clients_send(client):
    user = new_user(client)
    path = f"/scim/v2/Users/{user['id']}"
    response = patch(client, path, {"op": "Replace", "value": {"active": "False", "name.familyName": "Ng",
                                                                 f"{ENTERPRISE}:department": "Ops"}})
    assert response.status_code == 200, response.json
    assert response.json["active"] is False and response.json["name"]["familyName"] == "Ng"
    assert response.json[ENTERPRISE]["department"] == "Ops"
    added = patch(client, path, {"op": "add", "path": 'addresses[type eq "work"].locality', "value": "Berlin"})
    assert added.status_code == 200 and added.json["addresses"] == [{"locality": "Berlin"}]


@pytest.mark.parametrize("operation, status, scim_type", [
    ({"op": "replace", "path": "groups", "value": []}, 400, "mutability"),
    ({"op": "replace", "path": "nonsense", "value": "x"}, 400, "invalidPath"),
    ({"op": "replace", "path": 'emails[type eq "home"].value', "value": "x"}, 400, "noTarget"),
    ({"op": "remove", "path": "userName"}, 400, "mutability"),
    ({"op": "frobnicate", "path": "title", "value": "x"}, 400, "invalidSyntax"),
    ({"op": "replace", "path": "active", "value": 3}, 400, "invalidValue"),
    ({"op": "replace", "path": "emails[type eq", "value": "x"}, 400, "invalidPath"),
])
def test_bad_patches_are_400_and_change_nothing(client, ldap_conn, operation, status, scim_type):
    user = new_user(client, emails=[{"value": "w@x.org", "type": "work"}])
    dn = f"didmosUUID={user['id']},{PEOPLE}"
    before = entry(ldap_conn, dn, "*", "entryCSN")
    response = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "title", "value": "T"}, operation)
    assert response.status_code == status and response.json["scimType"] == scim_type, response.json
    assert entry(ldap_conn, dn, "*", "entryCSN") == before


def test_if_match_is_enforced_by_the_directory(client):
    user = new_user(client)
    path = f"/scim/v2/Users/{user['id']}"
    version = user["meta"]["version"]
    first = patch(client, path, {"op": "replace", "path": "title", "value": "A"}, headers={**ADMIN, "If-Match": version})
    assert first.status_code == 200 and first.json["meta"]["version"] != version
    stale = patch(client, path, {"op": "replace", "path": "title", "value": "B"}, headers={**ADMIN, "If-Match": version})
    assert stale.status_code == 412
    assert client.get(path, headers=ADMIN).json["title"] == "A"
    assert client.delete(path, headers={**ADMIN, "If-Match": version}).status_code == 412
    fresh = client.get(path, headers=ADMIN)
    assert client.get(path, headers={**ADMIN, "If-None-Match": fresh.headers["ETag"]}).status_code == 304
    assert client.delete(path, headers={**ADMIN, "If-Match": fresh.headers["ETag"]}).status_code == 204


# -- groups ---------------------------------------------------------------------------------------------


def test_groups_start_empty_and_member_changes_touch_only_those_members(client, ldap_conn):
    ann, bob = new_user(client), new_user(client)
    created = client.post("/scim/v2/Groups", json={"displayName": f"g-{uuid.uuid4().hex[:6]}"}, headers=ADMIN)
    assert created.status_code == 201 and "members" not in created.json
    group = created.json
    path = f"/scim/v2/Groups/{group['id']}"
    added = patch(client, path, {"op": "add", "path": "members", "value": [{"value": ann["id"]}, {"value": bob["id"]}]})
    assert added.status_code == 200 and {m["value"] for m in added.json["members"]} == {ann["id"], bob["id"]}
    assert client.get(f"/scim/v2/Users/{ann['id']}", headers=ADMIN).json["groups"][0]["value"] == group["id"]
    removed = patch(client, path, {"op": "remove", "path": f'members[value eq "{ann["id"]}"]'})
    assert [m["value"] for m in removed.json["members"]] == [bob["id"]]
    again = patch(client, path, {"op": "add", "path": "members", "value": [{"value": bob["id"]}]})
    assert again.status_code == 200  # adding a present member changes nothing
    azure = patch(client, path, {"op": "Remove", "path": "members", "value": [{"value": bob["id"]}]})
    assert azure.status_code == 200 and "members" not in azure.json
    assert "memberOf" not in entry(ldap_conn, f"didmosUUID={bob['id']},{PEOPLE}", "memberOf")


# -- delete and /Me -------------------------------------------------------------------------------------


def test_delete_is_204_strict_and_200_on_the_lui_mount(client):
    one, two = new_user(client), new_user(client)
    assert client.delete(f"/scim/v2/Users/{one['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/scim/v2/Users/{one['id']}", headers=ADMIN).status_code == 404
    assert client.delete(f"/scim/v2/Users/{one['id']}", headers=ADMIN).status_code == 404
    assert client.delete(f"/lui2_backend/v2/User/{two['id']}/", headers=ADMIN).status_code == 200


def test_me_is_the_callers_own_user(client):
    user = new_user(client, password="Secret-123")
    me = basic(user["id"], "Secret-123")
    got = client.get("/scim/v2/Me", headers=me)
    assert got.json.get("id") == user["id"], got.json
    changed = patch(client, "/scim/v2/Me", {"op": "replace", "path": "displayName", "value": "Me Myself"}, headers=me)
    assert changed.status_code == 200 and changed.json["displayName"] == "Me Myself"
    assert client.get("/scim/v2/Me").status_code == 401
    assert client.post("/scim/v2/Me", json={}, headers=me).status_code == 501


# -- the PDP decides every write ------------------------------------------------------------------------


def test_a_standard_user_may_change_only_its_allowed_attributes(client):
    user, other = new_user(client, password="Secret-123"), new_user(client)
    me = basic(user["id"], "Secret-123")
    title = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "title", "value": "CEO"}, headers=me)
    assert title.status_code == 403 and "title" in title.json["detail"]
    phone = patch(client, f"/scim/v2/Users/{user['id']}",
                  {"op": "add", "path": "phoneNumbers", "value": [{"value": "5", "type": "mobile"}]}, headers=me)
    assert phone.status_code == 200
    assert patch(client, f"/scim/v2/Users/{other['id']}", {"op": "replace", "path": "displayName", "value": "x"},
                 headers=me).status_code == 403
    assert client.post("/scim/v2/Users", json={"userName": "sneaky"}, headers=me).status_code == 403
    assert client.delete(f"/scim/v2/Users/{other['id']}", headers=me).status_code == 403


# -- attributes and .search -----------------------------------------------------------------------------


def test_attributes_and_excluded_attributes(client):
    user = new_user(client, title="T")
    only = client.get(f"/scim/v2/Users/{user['id']}?attributes=userName,name.givenName", headers=ADMIN).json
    assert set(only) == {"id", "schemas", "userName", "name"} and only["name"] == {"givenName": "Ann"}
    without = client.get(f"/scim/v2/Users/{user['id']}?excludedAttributes=title,meta", headers=ADMIN).json
    assert "title" not in without and "meta" not in without and without["userName"] == user["userName"]


def test_search_by_post(client):
    user = new_user(client)
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": f'userName eq "{user["userName"]}"', "attributes": ["userName"]}
    typed = client.post("/scim/v2/Users/.search", json=body, headers=ADMIN)
    assert typed.status_code == 200 and typed.json["totalResults"] == 1
    assert typed.json["Resources"][0] == {"id": user["id"], "schemas": user["schemas"], "userName": user["userName"]}
    root = client.post("/scim/v2/.search", json=body, headers=ADMIN)
    assert root.status_code == 200 and [r["id"] for r in root.json["Resources"]] == [user["id"]]


def test_the_organization_scope_covers_the_users_stored_under_ones_organization(client):
    tag = uuid.uuid4().hex[:6]
    org = client.post("/scim/v2/Organizations", json={"name": f"acme-{tag}"}, headers=ADMIN)
    assert org.status_code == 201, org.json
    org_dn = f"didmosUUID={org.json['id']},ou=organizations,ou=data,{TENANT}"

    def member(password=None):
        body = {"name": {"givenName": "O", "familyName": tag}, **({"password": password} if password else {})}
        created = client.post(f"/lui2_backend/v2/User/{org_dn}/", json=body, headers=ADMIN)
        assert created.status_code == 200, created.json
        return created.json["id"]

    reader, colleague, outsider = member("Secret-123"), member(), new_user(client)["id"]
    pdp = "/pdp/v1"
    assert client.post(f"{pdp}/permissions", headers=ADMIN, json={
        "name": f"org-read-{tag}", "operations": ["read"], "resource_type": "User", "scope": "organization"}).status_code == 201
    assert client.post(f"{pdp}/roles", json={"name": f"org-reader-{tag}"}, headers=ADMIN).status_code == 201
    assert client.post(f"{pdp}/roles/org-reader-{tag}/permissions", json={"permission": f"org-read-{tag}"},
                       headers=ADMIN).status_code == 201
    assert client.post(f"{pdp}/users/{reader}/roles", json={"role": f"org-reader-{tag}"}, headers=ADMIN).status_code == 201
    me = basic(reader, "Secret-123")
    assert client.get(f"/scim/v2/Users/{colleague}", headers=me).status_code == 200
    assert client.get(f"/scim/v2/Users/{outsider}", headers=me).status_code == 403
    listed = {r["id"] for r in client.get("/scim/v2/Users?count=1000", headers=me).json["Resources"]}
    assert {reader, colleague} <= listed and outsider not in listed


def test_partial_read_rights_show_partial_values_and_filters_cannot_probe_the_rest(client, make_app):
    tag = uuid.uuid4().hex[:6]
    target = new_user(client, phoneNumbers=[{"value": "1", "type": "work"}, {"value": "2", "type": "mobile"}],
                      title="Secret title", addresses=[{"locality": "Bonn", "postalCode": "53111"}])
    reader = new_user(client, password="Secret-123")
    pdp = "/pdp/v1"
    client.post(f"{pdp}/permissions", headers=ADMIN, json={
        "name": f"phone-book-{tag}", "operations": ["read"], "resource_type": "User", "scope": "tenant",
        "attributes": ["uid", "mobile", "l"]})
    client.post(f"{pdp}/roles", json={"name": f"phone-book-{tag}"}, headers=ADMIN)
    client.post(f"{pdp}/roles/phone-book-{tag}/permissions", json={"permission": f"phone-book-{tag}"}, headers=ADMIN)
    assert client.post(f"{pdp}/users/{reader['id']}/roles", json={"role": f"phone-book-{tag}"},
                       headers=ADMIN).status_code == 201
    me = basic(reader["id"], "Secret-123")
    seen = client.get(f"/scim/v2/Users/{target['id']}", headers=me).json
    assert seen["phoneNumbers"] == [{"value": "2", "type": "mobile"}] and seen["addresses"] == [{"locality": "Bonn"}]
    assert "title" not in seen and "name" not in seen
    probe = client.get(f'/scim/v2/Users?filter=title sw "Secret"', headers=me)
    assert probe.status_code == 403 and "title" in probe.json["detail"]
    assert client.get(f'/scim/v2/Users?filter=userName eq "{target["userName"]}"', headers=me).json["totalResults"] == 1
    lui = client.get(f"/lui2_backend/v2/User/{target['id']}/", headers=me).json
    assert LUI not in lui  # the roles of a user are didmosRoleAssignment, which this reader may not read


def test_a_no_op_patch_answers_the_whole_resource(client):
    group = client.post("/scim/v2/Groups", json={"displayName": f"n-{uuid.uuid4().hex[:6]}"}, headers=ADMIN).json
    user = new_user(client)
    patch(client, f"/scim/v2/Groups/{group['id']}", {"op": "add", "path": "members", "value": [{"value": user["id"]}]})
    same = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "userName", "value": user["userName"]})
    assert same.status_code == 200 and same.json["groups"][0]["value"] == group["id"]
    lui = client.patch(f"/lui2_backend/v2/User/{user['id']}/", headers=ADMIN, json={
        "schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": user["userName"]}]}).json
    assert lui["groups"][0]["$ref"] == f"http://localhost/lui2_backend/v2/Groups/{group['id']}/"
    assert lui[LUI] == {"adminAccess": False, "roles": ["standarduser"]}


def test_put_needs_the_required_attributes_and_one_address(client):
    group = client.post("/scim/v2/Groups", json={"displayName": f"r-{uuid.uuid4().hex[:6]}"}, headers=ADMIN).json
    missing = client.put(f"/scim/v2/Groups/{group['id']}", json={"schemas": [group["schemas"][0]]}, headers=ADMIN)
    assert missing.status_code == 400 and missing.json["detail"] == "displayName is required"
    two = client.post("/scim/v2/Users", headers=ADMIN, json={"userName": f"a-{uuid.uuid4().hex[:6]}",
                                                             "addresses": [{"locality": "A"}, {"locality": "B"}]})
    assert two.status_code == 400 and "one value of addresses" in two.json["detail"]
    user = new_user(client, addresses=[{"locality": "Bonn"}])
    azure = patch(client, f"/scim/v2/Users/{user['id']}",
                  {"op": "replace", "path": 'addresses[type eq "work"].locality', "value": "Köln"})
    assert azure.status_code == 200 and azure.json["addresses"] == [{"locality": "Köln"}]


class Operations:
    """Records the LDAP operations of the requests made while it is installed."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def didmos_ldap_post_operation(self, operation, result, actor):
        self.seen.append((operation.kind, operation.filter or ""))


def test_adding_a_member_reads_no_other_member(make_app):
    recorder = Operations()
    client = make_app(recorder).test_client()
    users = [new_user(client) for _ in range(3)]
    group = client.post("/scim/v2/Groups", headers=ADMIN, json={
        "displayName": f"m-{uuid.uuid4().hex[:6]}", "members": [{"value": u["id"]} for u in users[:2]]}).json
    recorder.seen.clear()
    added = patch(client, f"/scim/v2/Groups/{group['id']}", {"op": "add", "path": "members", "value": [{"value": users[2]["id"]}]})
    assert added.status_code == 200
    assert {m["value"] for m in added.json["members"]} == {u["id"] for u in users}
    assert all(m["type"] == "User" and "display" not in m for m in added.json["members"])
    assert [kind for kind, _ in recorder.seen].count("modify") == 1
    assert not [f for kind, f in recorder.seen if "entryDN" in f], recorder.seen  # no member was looked up
    named = client.get(f"/scim/v2/Groups/{group['id']}?attributes=members.display,members.value", headers=ADMIN).json
    assert all(m["display"] for m in named["members"])
