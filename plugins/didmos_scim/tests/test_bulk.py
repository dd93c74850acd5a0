"""SCIM Bulk (RFC 7644 section 3.7) against the real slapd: bulkId references, failOnErrors, the PDP, limits."""

import uuid

import pytest

from didmos_host import hookimpl
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth as basic
from didmos_scim.bulk import bulk

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
SCIM_JSON = "application/scim+json"
BASE = "http://localhost/scim/v2"


ADMIN = basic(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


class WithBulk:
    """Registers the bulk blueprint unless an installed plugin already does (plugin.py, once it lists it)."""

    @hookimpl(wrapper=True)
    def didmos_blueprints(self, app):
        found = yield
        if not any(blueprint.name == bulk.name for blueprints in found for blueprint in blueprints or ()):
            found.append([bulk])
        return found


@pytest.fixture
def make_bulk_app(make_app):
    return lambda **overrides: make_app(WithBulk(), **{"pdp": {"refresh_seconds": 0.3}, **overrides})


@pytest.fixture
def client(make_bulk_app):
    return make_bulk_app().test_client()


def name(prefix="b"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def user_data(user_name=None, **extra):
    return {"schemas": [USER], "userName": user_name or name("u"), "name": {"givenName": "Ann", "familyName": "Lee"},
            **extra}


def group_data(display_name=None, **extra):
    return {"schemas": [GROUP], "displayName": display_name or name("g"), **extra}


def send(client, *operations, headers=ADMIN, **extra):
    return client.post("/scim/v2/Bulk", json={"schemas": [BULK_REQUEST], "Operations": list(operations), **extra},
                       headers=headers)


def results(response):
    assert response.status_code == 200, response.json
    assert response.content_type == SCIM_JSON and response.json["schemas"] == [BULK_RESPONSE]
    return response.json["Operations"]


def find_users(client, user_name):
    return client.get("/scim/v2/Users", query_string={"filter": f'userName eq "{user_name}"'},
                      headers=ADMIN).json["Resources"]


def new_user(client, **extra):
    response = client.post("/scim/v2/Users", json=user_data(**extra), headers=ADMIN)
    assert response.status_code == 201, response.json
    return response.json


# -- bulkId references ----------------------------------------------------------------------------------


def test_the_rfc_example_creates_a_user_and_a_group_with_it_as_member(client):
    user_name, display_name = name("u"), name("g")
    done = results(send(client,
                        {"method": "POST", "path": "/Users", "bulkId": "qwerty", "data": user_data(user_name)},
                        {"method": "POST", "path": "/Groups", "bulkId": "ytrewq",
                         "data": group_data(display_name, members=[{"type": "User", "value": "bulkId:qwerty"}])}))
    assert [(r["method"], r["bulkId"], r["status"]) for r in done] == [("POST", "qwerty", "201"),
                                                                       ("POST", "ytrewq", "201")]
    user = client.get(done[0]["location"], headers=ADMIN)
    group = client.get(done[1]["location"], headers=ADMIN)
    assert user.json["userName"] == user_name and group.json["displayName"] == display_name
    assert done[0]["location"] == f"{BASE}/Users/{user.json['id']}"
    assert done[1]["location"] == f"{BASE}/Groups/{group.json['id']}"
    assert done[0]["version"] == user.headers["ETag"] and done[1]["version"] == group.headers["ETag"]
    assert [m["value"] for m in group.json["members"]] == [user.json["id"]]
    assert "response" not in done[0]


def test_an_operation_may_refer_to_a_post_later_in_the_request(client):
    user_name = name("u")
    done = results(send(client,
                        {"method": "patch", "path": "/Groups/bulkId:group", "data": {"schemas": [PATCH], "Operations": [
                            {"op": "add", "path": "members", "value": [{"value": "bulkId:user"}]}]}},
                        {"method": "post", "path": "/Groups", "bulkId": "group", "data": group_data()},
                        {"method": "Post", "path": "Users/", "bulkId": "user", "data": user_data(user_name)}))
    assert [(r["method"], r["status"]) for r in done] == [("PATCH", "200"), ("POST", "201"), ("POST", "201")]
    assert done[0]["location"] == done[1]["location"]  # the PATCH found the group created after it in the list
    [user] = find_users(client, user_name)
    group = client.get(done[1]["location"], headers=ADMIN).json
    assert [m["value"] for m in group["members"]] == [user["id"]]
    assert done[0]["version"] == client.get(done[1]["location"], headers=ADMIN).headers["ETag"]


def test_a_circular_reference_is_409_and_the_rest_is_performed(client):
    first, second = name("g"), name("g")
    user_name = name("u")
    done = results(send(client,
                        {"method": "POST", "path": "/Groups", "bulkId": "a",
                         "data": group_data(first, members=[{"value": "bulkId:b"}])},
                        {"method": "POST", "path": "/Groups", "bulkId": "b",
                         "data": group_data(second, members=[{"value": "bulkId:a"}])},
                        {"method": "POST", "path": "/Users", "bulkId": "c",
                         "data": user_data(user_name, **{ENTERPRISE: {"manager": {"value": "bulkId:a"}}})},
                        {"method": "POST", "path": "/Users", "bulkId": "d", "data": user_data()}))
    assert [r["status"] for r in done] == ["409", "409", "409", "201"]
    for result in done[:3]:
        assert result["response"]["schemas"] == [ERROR] and result["response"]["status"] == "409"
        assert "location" not in result
    assert "a -> b -> a" in done[0]["response"]["detail"] and "circular" in done[0]["response"]["detail"]
    assert "b -> a -> b" in done[1]["response"]["detail"]
    assert "waits for bulkId 'a'" in done[2]["response"]["detail"]
    for display_name in (first, second):
        listed = client.get("/scim/v2/Groups", query_string={"filter": f'displayName eq "{display_name}"'},
                            headers=ADMIN)
        assert listed.json["totalResults"] == 0
    assert find_users(client, user_name) == []


def test_unknown_bulk_ids_and_malformed_operations_fail_on_their_own(client):
    user_name = name("u")
    done = results(send(client,
                        {"method": "POST", "path": "/Groups", "bulkId": "g",
                         "data": group_data(members=[{"value": "bulkId:nobody"}])},
                        {"method": "DELETE", "path": "/Users/bulkId:nothing"},
                        {"method": "POST", "path": "/Users", "data": user_data()},
                        {"method": "GET", "path": "/Users"},
                        {"method": "POST", "path": "/Printers", "bulkId": "p", "data": {}},
                        {"method": "PUT", "path": "/Users", "data": user_data()},
                        {"method": "POST", "path": "/Users", "bulkId": "u", "data": user_data(user_name)}))
    assert [(r["status"], r["response"].get("scimType")) for r in done[:6]] == [
        ("400", "invalidValue"), ("400", "invalidValue"), ("400", "invalidSyntax"), ("400", "invalidSyntax"),
        ("404", None), ("400", "invalidPath")]
    assert "'nobody'" in done[0]["response"]["detail"] and "'nothing'" in done[1]["response"]["detail"]
    assert "bulkId" in done[2]["response"]["detail"] and done[3]["method"] == "GET"
    assert done[6]["status"] == "201" and len(find_users(client, user_name)) == 1


def test_an_operation_on_a_failed_post_is_409(client):
    taken = new_user(client)["userName"]
    done = results(send(client,
                        {"method": "POST", "path": "/Users", "bulkId": "dup", "data": user_data(taken)},
                        {"method": "POST", "path": "/Groups", "bulkId": "g",
                         "data": group_data(members=[{"value": "bulkId:dup"}])},
                        {"method": "PATCH", "path": "/Users/bulkId:nodata", "data": {"schemas": [PATCH], "Operations": [
                            {"op": "replace", "path": "title", "value": "T"}]}},
                        {"method": "POST", "path": "/Users", "bulkId": "nodata"}))
    assert done[0]["status"] == "409" and done[0]["response"]["scimType"] == "uniqueness"
    assert done[1]["status"] == "409" and "failed with status 409" in done[1]["response"]["detail"]
    assert done[3]["status"] == "400" and "needs data" in done[3]["response"]["detail"]
    assert done[2]["status"] == "409" and "'nodata', whose POST operation failed with status 400" in \
        done[2]["response"]["detail"]


# -- failOnErrors, the PDP, versions ---------------------------------------------------------------------


def test_fail_on_errors_stops_and_leaves_the_rest_unperformed_and_unlisted(client):
    later = name("u")
    response = send(client,
                    {"method": "POST", "path": "/Users", "bulkId": "bad", "data": user_data(shoeSize=44)},
                    {"method": "POST", "path": "/Users", "bulkId": "good", "data": user_data(later)},
                    failOnErrors=1)
    [only] = results(response)
    assert only["status"] == "400" and only["bulkId"] == "bad" and only["response"]["scimType"]
    assert find_users(client, later) == []
    two = results(send(client,
                       {"method": "DELETE", "path": f"/Users/{uuid.uuid4()}"},
                       {"method": "POST", "path": "/Users", "bulkId": "good", "data": user_data(later)},
                       {"method": "DELETE", "path": f"/Users/{uuid.uuid4()}"},
                       {"method": "DELETE", "path": f"/Users/{uuid.uuid4()}"},
                       failOnErrors=2))
    assert [r["status"] for r in two] == ["404", "201", "404"]
    assert len(find_users(client, later)) == 1


def test_each_operation_is_decided_by_the_pdp(client):
    me = new_user(client, password="Secret-123")
    other = new_user(client)
    sneaky = name("u")
    done = results(send(client,
                        {"method": "POST", "path": "/Users", "bulkId": "x", "data": user_data(sneaky)},
                        {"method": "PATCH", "path": f"/Users/{me['id']}", "data": {"schemas": [PATCH], "Operations": [
                            {"op": "add", "path": "phoneNumbers", "value": [{"value": "5", "type": "mobile"}]}]}},
                        {"method": "DELETE", "path": f"/Users/{other['id']}"},
                        headers=basic(me["id"], "Secret-123")))
    assert [r["status"] for r in done] == ["403", "200", "403"]
    assert done[0]["response"]["schemas"] == [ERROR] and done[0]["response"]["status"] == "403"
    assert done[2]["location"] == f"{BASE}/Users/{other['id']}"
    assert find_users(client, sneaky) == []
    assert client.get(f"/scim/v2/Users/{other['id']}", headers=ADMIN).status_code == 200
    assert client.get(f"/scim/v2/Users/{me['id']}", headers=ADMIN).json["phoneNumbers"][0]["value"] == "5"


def retitle(title):
    return {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": title}]}


def test_put_patch_and_delete_take_the_version_as_if_match(client):
    user = new_user(client)
    path = f"/Users/{user['id']}"
    first = user["meta"]["version"]
    done = results(send(client,
                        {"method": "PUT", "path": path, "version": first,
                         "data": user_data(user["userName"], title="A")},
                        {"method": "PATCH", "path": path, "version": first, "data": retitle("B")}))
    assert [r["status"] for r in done] == ["200", "412"]
    assert done[0]["location"] == done[1]["location"] == f"{BASE}{path}" and done[0]["version"] != first
    assert done[1]["response"]["status"] == "412" and "version" not in done[1]
    second = done[0]["version"]
    assert client.get(f"/scim/v2{path}", headers=ADMIN).json["title"] == "A"
    done = results(send(client,
                        {"method": "PATCH", "path": path, "version": second, "data": retitle("C")},
                        {"method": "DELETE", "path": path, "version": second},
                        {"method": "DELETE", "path": path, "version": "W/\"nope\""}))
    assert [r["status"] for r in done] == ["200", "412", "412"]
    done = results(send(client, {"method": "DELETE", "path": path, "version": done[0]["version"]}))
    assert done == [{"method": "DELETE", "location": f"{BASE}{path}", "status": "204"}]
    assert client.get(f"/scim/v2{path}", headers=ADMIN).status_code == 404


# -- the request as a whole ------------------------------------------------------------------------------


def test_more_operations_than_max_operations_is_413_and_nothing_is_done(client):
    user = new_user(client)
    operations = [{"method": "DELETE", "path": f"/Users/{user['id']}"}] * 1001
    response = send(client, *operations)
    assert response.status_code == 413 and response.content_type == SCIM_JSON
    assert response.json["schemas"] == [ERROR] and response.json["status"] == "413"
    assert "maxOperations" in response.json["detail"] and "1000" in response.json["detail"]
    assert client.get(f"/scim/v2/Users/{user['id']}", headers=ADMIN).status_code == 200


def test_a_body_larger_than_max_payload_size_is_413(make_bulk_app):
    client = make_bulk_app(api={"max_content_length": 4096}).test_client()
    announced = client.get("/scim/v2/ServiceProviderConfig").json["bulk"]
    assert announced["maxPayloadSize"] == 4096 and announced["maxOperations"] == 1000
    big = user_data(displayName="x" * 5000)
    response = send(client, {"method": "POST", "path": "/Users", "bulkId": "big", "data": big})
    assert response.status_code == 413 and response.json["schemas"] == [ERROR]
    assert "maxPayloadSize is 4096" in response.json["detail"]


@pytest.mark.parametrize("body, scim_type", [
    ({"Operations": []}, "invalidSyntax"),
    ({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": []}, "invalidSyntax"),
    ({"schemas": [BULK_REQUEST]}, "invalidSyntax"),
    ({"schemas": [BULK_REQUEST], "Operations": {}}, "invalidSyntax"),
    ({"schemas": [BULK_REQUEST], "Operations": [], "failOnErrors": 0}, "invalidValue"),
    ({"schemas": [BULK_REQUEST], "Operations": [], "failOnErrors": "1"}, "invalidValue"),
    ({"schemas": [BULK_REQUEST], "Operations": [], "failOnErrors": True}, "invalidValue"),
    ({"schemas": [BULK_REQUEST], "Operations": [
        {"method": "POST", "path": "/Users", "bulkId": "same", "data": {"userName": "x1"}},
        {"method": "POST", "path": "/Groups", "bulkId": "same", "data": {"displayName": "x2"}}]}, "invalidValue"),
    ([], "invalidSyntax"),
], ids=["no-schemas", "wrong-schema", "no-operations", "operations-not-a-list", "fail-on-errors-0",
        "fail-on-errors-string", "fail-on-errors-bool", "duplicate-bulk-id", "not-an-object"])
def test_a_request_that_is_not_a_bulk_request_is_400(client, body, scim_type):
    response = client.post("/scim/v2/Bulk", json=body, headers=ADMIN)
    assert response.status_code == 400 and response.content_type == SCIM_JSON, response.json
    assert response.json["schemas"] == [ERROR] and response.json["scimType"] == scim_type


def test_malformed_json_is_400_and_credentials_are_required(client):
    broken = client.post("/scim/v2/Bulk", data="{not json", headers={**ADMIN, "Content-Type": SCIM_JSON})
    assert broken.status_code == 400 and broken.json["scimType"] == "invalidSyntax"
    anonymous = client.post("/scim/v2/Bulk", json={"schemas": [BULK_REQUEST], "Operations": []})
    assert anonymous.status_code == 401 and anonymous.json["schemas"] == [ERROR]
    assert results(send(client)) == []


def test_other_methods_are_405(client):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = client.open("/scim/v2/Bulk", method=method, json={"schemas": [BULK_REQUEST]}, headers=ADMIN)
        assert response.status_code == 405, (method, response.json)
        assert response.content_type == SCIM_JSON and response.headers["Allow"] == "POST, OPTIONS"
        assert response.json["schemas"] == [ERROR] and response.json["status"] == "405"
    assert client.options("/scim/v2/Bulk").headers["Allow"] == "POST, OPTIONS"


def test_the_route_is_in_the_openapi_document_without_the_refusal(client):
    assert set(client.get("/openapi.json").json["paths"]["/scim/v2/Bulk"]) == {"post"}
