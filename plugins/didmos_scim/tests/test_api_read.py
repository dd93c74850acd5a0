"""Reading through both SCIM mounts, authenticated, decided by the PDP, against the real slapd."""

import uuid

import pytest

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth as basic

TENANT = "ou=default-tenant,dc=didmos,dc=de"
PEOPLE = f"ou=people,ou=data,{TENANT}"
RBAC = f"ou=rbac,{TENANT}"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
LUI = "urn:scim:schemas:custom:daasi:lui:2.0"


ADMIN = basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


@pytest.fixture(scope="module")
def people(didmos_slapd):
    """Five users with a common uid prefix unique to this module; each can log in with 'pw'."""
    tag = uuid.uuid4().hex[:6]
    conn = didmos_slapd.admin_connection()
    made = []
    for index, given in enumerate(["Zoe", "anna", "Bert", "Carl", "Dora"]):
        user_id = str(uuid.uuid4())
        dn = f"didmosUUID={user_id},{PEOPLE}"
        conn.add_s(dn, [
            ("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
            ("didmosUUID", [user_id.encode()]), ("uid", [f"{tag}-{given}".encode()]), ("cn", [f"{given} Doe".encode()]),
            ("sn", [b"Doe"]), ("givenName", [given.encode()]), ("displayName", [f"{given} Doe".encode()]),
            ("mail", [f"{given.lower()}@example.org".encode()]), ("mobile", [f"+49 {index}".encode()]),
            ("didmosActive", [b"TRUE"]), ("userPassword", [b"pw"]),
            ("didmosRoleAssignment", [f"cn=standarduser,ou=roles,{RBAC}".encode()])])
        made.append({"id": user_id, "dn": dn, "uid": f"{tag}-{given}", "given": given})
    return {"tag": tag, "users": made}


@pytest.fixture
def client(make_app):
    return make_app(pdp={"refresh_seconds": 0.3}).test_client()


def test_get_by_id_on_the_strict_mount(client, people):
    anna = people["users"][1]
    response = client.get(f"/scim/v2/Users/{anna['id']}", headers=ADMIN)
    assert response.status_code == 200 and response.content_type == "application/scim+json"
    body = response.json
    assert body["id"] == anna["id"] and body["userName"] == anna["uid"] and body["active"] is True
    assert body["name"] == {"formatted": "anna Doe", "familyName": "Doe", "givenName": "anna"}
    assert body["emails"] == [{"value": "anna@example.org", "type": "work"}]
    assert body["phoneNumbers"] == [{"value": "+49 1", "type": "mobile"}]
    # primary is computed and returned on request only (RFC 7643 returned "request")
    asked = client.get(f"/scim/v2/Users/{anna['id']}?attributes=emails.primary,emails.value", headers=ADMIN).json
    assert asked["emails"] == [{"value": "anna@example.org", "primary": True}]
    assert body["meta"]["resourceType"] == "User" and body["meta"]["location"].endswith(f"/scim/v2/Users/{anna['id']}")
    assert response.headers["ETag"] == body["meta"]["version"] and body["meta"]["version"].startswith('W/"')
    assert "location" not in body and "password" not in body and LUI not in body["meta"]


def test_get_by_id_on_the_lui_mount_has_the_seeds_shape(client, people):
    anna = people["users"][1]
    body = client.get(f"/lui2_backend/v2/User/{anna['id']}/", headers=ADMIN).json
    assert body["location"][0] == {"de": "dc=de"} and body["location"][-1] == {anna["id"]: anna["dn"]}
    assert [list(step)[0] for step in body["location"][1:5]] == ["didmos", "default-tenant", "data", "people"]
    assert set(body["meta"][LUI]["operations"]["entry"]) >= {"read", "delete", "modify-replace"}
    assert body["meta"][LUI]["operations"]["attributes"] == {}


def test_reading_is_decided_by_the_pdp(client, people):
    anna, bert = people["users"][1], people["users"][2]
    own = client.get(f"/scim/v2/Users/{anna['id']}", headers=basic(anna["id"], "pw"))
    assert own.status_code == 200 and own.json["userName"] == anna["uid"]
    other = client.get(f"/scim/v2/Users/{bert['id']}", headers=basic(anna["id"], "pw"))
    assert other.status_code == 403 and other.json["schemas"] == [ERROR] and other.json["status"] == "403"
    anonymous = client.get(f"/scim/v2/Users/{anna['id']}")
    assert anonymous.status_code == 401 and anonymous.json["schemas"] == [ERROR]
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    missing = client.get(f"/scim/v2/Users/{uuid.uuid4()}", headers=ADMIN)
    assert missing.status_code == 404 and missing.json["status"] == "404"
    group_path = client.get(f"/scim/v2/Groups/{anna['id']}", headers=ADMIN)  # a user is not a group
    assert group_path.status_code == 404


def test_lists_filter_page_and_sort_on_the_server(client, people):
    tag = people["tag"]
    body = client.get(f'/scim/v2/Users?filter=userName sw "{tag}"&sortBy=name.givenName&count=2', headers=ADMIN).json
    assert body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]
    assert body["totalResults"] == 5 and body["itemsPerPage"] == 2 and body["startIndex"] == 1
    assert [r["name"]["givenName"] for r in body["Resources"]] == ["anna", "Bert"]  # case-insensitive order
    last = client.get(f'/scim/v2/Users?filter=userName sw "{tag}"&sortBy=name.givenName&startIndex=5&count=2',
                      headers=ADMIN).json
    assert [r["name"]["givenName"] for r in last["Resources"]] == ["Zoe"] and last["totalResults"] == 5
    down = client.get(f'/scim/v2/Users?filter=userName sw "{tag}"&sortBy=displayName&sortOrder=descending',
                      headers=ADMIN).json
    assert [r["displayName"] for r in down["Resources"]][0] == "Zoe Doe"
    exact = client.get(f'/scim/v2/Users?filter=userName eq "{tag.upper()}-ANNA"', headers=ADMIN).json
    assert [r["userName"] for r in exact["Resources"]] == [f"{tag}-anna"]  # userName matches case-insensitively
    typed = client.get("/scim/v2/Users", headers=ADMIN, query_string={
        "filter": f'userName sw "{tag}" and phoneNumbers[type eq "mobile" and value eq "+49 3"]'}).json
    assert [r["name"]["givenName"] for r in typed["Resources"]] == ["Carl"]
    only_total = client.get(f'/scim/v2/Users?filter=userName sw "{tag}"&count=0', headers=ADMIN).json
    assert only_total["totalResults"] == 5 and only_total["Resources"] == []


def test_a_list_contains_only_what_the_caller_may_read(client, people):
    tag, anna = people["tag"], people["users"][1]
    body = client.get(f'/scim/v2/Users?filter=userName sw "{tag}"', headers=basic(anna["id"], "pw")).json
    assert body["totalResults"] == 1 and [r["id"] for r in body["Resources"]] == [anna["id"]]


def test_the_lui_mount_lists_too(client, people):
    body = client.get(f'/lui2_backend/v2/User/?filter=userName sw "{people["tag"]}"', headers=ADMIN).json
    assert len(body["Resources"]) == 5 and all("location" in r for r in body["Resources"])


@pytest.mark.parametrize("query, scim_type", [
    ("filter=userName eq", "invalidFilter"),
    ("filter=shoeSize eq 3", "invalidFilter"),
    ("filter=" + "(" * 5000, "invalidFilter"),
    ("count=many", "invalidValue"),
    ("sortBy=shoeSize", "invalidValue"),
    ("sortOrder=sideways", "invalidValue"),
])
def test_bad_list_requests_are_400_with_a_scim_type(client, people, query, scim_type):
    response = client.get(f"/scim/v2/Users?{query}", headers=ADMIN)
    assert response.status_code == 400, response.json
    assert response.json["scimType"] == scim_type and response.json["status"] == "400"


def test_unknown_resource_types_are_404_scim_errors(client):
    assert client.get("/scim/v2/Robots", headers=ADMIN).json["status"] == "404"
    assert client.get("/lui2_backend/v2/Robots/", headers=ADMIN).status_code == 404


def test_cursor_paging_is_stable_when_earlier_entries_go(client, people, didmos_slapd):
    """RFC 9865: each page names the next; deleting a resource already seen shifts nothing."""
    wanted = f'userName sw "{people["tag"]}"'
    first = client.get(f"/scim/v2/Users?filter={wanted}&count=2&cursor=", headers=ADMIN).json
    assert first["totalResults"] == 5 and len(first["Resources"]) == 2 and "startIndex" not in first
    seen = [r["id"] for r in first["Resources"]]
    extra = client.post("/scim/v2/Users", json={"userName": f"{people['tag']}-zzz"}, headers=ADMIN).json
    client.delete(f"/scim/v2/Users/{extra['id']}", headers=ADMIN)
    pages = [first]
    while "nextCursor" in pages[-1]:
        pages.append(client.get(f"/scim/v2/Users?filter={wanted}&count=2&cursor={pages[-1]['nextCursor']}",
                                headers=ADMIN).json)
    ids = [r["id"] for page in pages for r in page["Resources"]]
    assert sorted(ids) == sorted(u["id"] for u in people["users"]) and len(ids) == 5 and ids[:2] == seen
    assert len(pages) == 3 and "nextCursor" not in pages[-1]
    bad = client.get("/scim/v2/Users?cursor=bm9wZQ", headers=ADMIN)
    assert bad.status_code == 400 and bad.json["scimType"] == "invalidCursor"
    both = client.get("/scim/v2/Users?cursor=&startIndex=3", headers=ADMIN)
    assert both.status_code == 400
