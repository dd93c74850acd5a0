"""Attribute mapping: nickName renamed to callName, badgeNumber added to the User and to LDAP."""

import random

from conftest import ADMIN, create_user, patch, unique

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def test_our_schema_migration_was_applied_by_directory_init(didmos_slapd):
    assert "{{ cookiecutter.plugin_name }}.0001-{{ cookiecutter.plugin_name }}-schema" in didmos_slapd.init_report.migrations_applied


def test_badge_number_and_call_name_are_stored_in_their_ldap_attributes(client, admin_connection):
    user = create_user(client, name={"givenName": "Ann", "familyName": "Lee"}, callName="Annie",
                       badgeNumber="AB-1234")
    assert user["callName"] == "Annie" and user["badgeNumber"] == "AB-1234" and "nickName" not in user
    [(dn, attrs)] = admin_connection.search_s(
        "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", 1, f"(didmosUUID={user['id']})",
        ["{{ cookiecutter.ldap_prefix }}BadgeNumber", "didmosNickName", "objectClass"])
    assert attrs["{{ cookiecutter.ldap_prefix }}BadgeNumber"] == [b"AB-1234"]
    assert attrs["didmosNickName"] == [b"Annie"]
    assert b"{{ cookiecutter.ldap_prefix }}Person" in attrs["objectClass"]


def test_filter_and_patch_use_the_new_names(client):
    badge = f"FP-{random.randrange(10000):04d}"
    user = create_user(client, badgeNumber=badge)
    found = client.get(f'/scim/v2/Users?filter=badgeNumber eq "{badge}"', headers=ADMIN).get_json()
    assert [r["id"] for r in found["Resources"]] == [user["id"]]
    response = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "callName", "value": "Bo"})
    assert response.status_code == 200 and response.get_json()["callName"] == "Bo"


def test_the_old_name_is_unknown_on_the_strict_mount(client):
    response = client.post("/scim/v2/Users", json={"userName": unique("nick"), "nickName": "Nicky"}, headers=ADMIN)
    assert response.status_code == 400 and "nickName" in response.get_json()["detail"]


def test_discovery_shows_the_changed_user_schema(client):
    schema = client.get(f"/scim/v2/Schemas/{USER_SCHEMA}").get_json()
    names = {attribute["name"] for attribute in schema["attributes"]}
    assert {"badgeNumber", "callName"} <= names and "nickName" not in names
