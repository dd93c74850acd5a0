"""The Device resource type at /scim/v2/Devices, and the report endpoint with our authorization vote."""

from conftest import ADMIN, create_user, patch, unique

from didmos_host.testing import basic_auth

REPORT = "/{{ cookiecutter.plugin_name }}/v1/devices/report"
MANAGERS = "cn={{ cookiecutter.plugin_name|replace('_', '-') }}-device-managers,ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"


def test_devices_are_a_scim_resource_type_stored_below_the_devices_dn(client, admin_connection):
    types = {t["name"]: t for t in client.get("/scim/v2/ResourceTypes").get_json()["Resources"]}
    assert types["Device"]["endpoint"] == "/Devices"
    owner = create_user(client)
    name = unique("laptop")
    response = client.post("/scim/v2/Devices", json={"name": name, "serialNumber": "SN-1", "owner": {"value": owner["id"]}},
                           headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    device = response.get_json()
    assert device["owner"]["value"] == owner["id"] and device["serialNumber"] == "SN-1"
    [(dn, attrs)] = admin_connection.search_s("ou=devices,ou=data,ou=default-tenant,dc=didmos,dc=de", 1,
                                              f"(cn={name})", ["objectClass", "owner"])
    assert b"device" in attrs["objectClass"] and attrs["owner"][0].decode().startswith(f"didmosUUID={owner['id']},")

    found = client.get(f'/scim/v2/Devices?filter=name eq "{name}"', headers=ADMIN).get_json()
    assert [r["id"] for r in found["Resources"]] == [device["id"]]
    assert client.delete(f"/scim/v2/Devices/{device['id']}", headers=ADMIN).status_code == 204
    assert client.get(f"/scim/v2/Devices/{device['id']}", headers=ADMIN).status_code == 404


def test_a_device_needs_a_name_and_a_standard_user_may_not_create_one(client):
    response = client.post("/scim/v2/Devices", json={"serialNumber": "SN-2"}, headers=ADMIN)
    assert response.status_code == 400 and "name is required" in response.get_json()["detail"]
    user = create_user(client)
    response = client.post("/scim/v2/Devices", json={"name": unique("tablet")},
                           headers=basic_auth(user["id"], "Secret-123-pw"))
    assert response.status_code == 403


def test_the_report_counts_devices_for_the_superadmin(client):
    name = unique("spare")
    client.post("/scim/v2/Devices", json={"name": name}, headers=ADMIN)
    report = client.get(REPORT, headers=ADMIN)
    assert report.status_code == 200
    assert name in report.get_json()["unassigned"] and report.get_json()["devices"] >= 1
    assert REPORT in client.get("/openapi.json").get_json()["paths"]


def test_the_report_needs_credentials(client):
    response = client.get(REPORT)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic")


def test_our_vote_allows_managers_and_denies_external_users_whatever_else_allows(client):
    manager = create_user(client)
    outsider = create_user(client, userType="external")
    plain = create_user(client)
    group = client.get(f'/scim/v2/Groups?filter=displayName eq "{MANAGERS.split(",")[0][3:]}"', headers=ADMIN).get_json()
    [group_id] = [r["id"] for r in group["Resources"]]
    response = patch(client, f"/scim/v2/Groups/{group_id}",
                     {"op": "add", "path": "members", "value": [{"value": manager["id"]}, {"value": outsider["id"]}]})
    assert response.status_code == 200, response.get_json()

    # the PDP alone allows none of them (a standard user reads only itself)
    assert client.get(REPORT, headers=basic_auth(plain["id"], "Secret-123-pw")).status_code == 403
    # a member of the managers group: our vote allows
    assert client.get(REPORT, headers=basic_auth(manager["id"], "Secret-123-pw")).status_code == 200
    # an external member of the group: our deny wins over our own allow
    assert client.get(REPORT, headers=basic_auth(outsider["id"], "Secret-123-pw")).status_code == 403


def test_deny_wins_over_the_superadmins_role(make_app):
    client = make_app(**{"{{ cookiecutter.plugin_name }}": {"report_denied_user_types": ["local"]}}).test_client()
    # the superadmin's userType is "local": the PDP allows, our vote denies, and deny wins
    assert client.get(REPORT, headers=ADMIN).status_code == 403
