"""The pre-LDAP interceptor changes and rejects badge numbers; the post interceptor stores a task."""

from conftest import ADMIN, create_user, patch, unique


def test_a_badge_number_is_upper_cased_before_it_is_stored(client, admin_connection):
    user = create_user(client, badgeNumber=" cd-5678 ")
    assert user["badgeNumber"] == "CD-5678"
    response = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "badgeNumber", "value": "ef-9012"})
    assert response.get_json()["badgeNumber"] == "EF-9012"
    [(_, attrs)] = admin_connection.search_s("dc=didmos,dc=de", 2, f"(didmosUUID={user['id']})",
                                             ["{{ cookiecutter.ldap_prefix }}BadgeNumber"])
    assert attrs["{{ cookiecutter.ldap_prefix }}BadgeNumber"] == [b"EF-9012"]


def test_a_badge_number_that_breaks_the_pattern_is_rejected_and_nothing_is_written(client, admin_connection):
    name = unique("badbadge")
    response = client.post("/scim/v2/Users", json={"userName": name, "badgeNumber": "1234"}, headers=ADMIN)
    assert response.status_code == 403
    assert "badgeNumber '1234' does not match" in response.get_json()["detail"]
    assert admin_connection.search_s("dc=didmos,dc=de", 2, f"(uid={name})", ["1.1"]) == []

    user = create_user(client, badgeNumber="GH-3456")
    response = patch(client, f"/scim/v2/Users/{user['id']}", {"op": "replace", "path": "badgeNumber", "value": "x"})
    assert response.status_code == 403
    assert client.get(f"/scim/v2/Users/{user['id']}", headers=ADMIN).get_json()["badgeNumber"] == "GH-3456"


def test_the_pattern_is_a_setting(make_app):
    client = make_app(**{"{{ cookiecutter.plugin_name }}": {"badge_pattern": "^[0-9]+$"}}).test_client()
    assert create_user(client, badgeNumber="1234")["badgeNumber"] == "1234"


def test_assigning_a_device_stores_a_task_for_its_owner(app):
    client = app.test_client()
    owner = create_user(client, emails=[{"value": "owner@example.org", "type": "work"}])
    device = client.post("/scim/v2/Devices", json={"name": unique("laptop")}, headers=ADMIN).get_json()
    outbox = app.extensions["didmos"].service("outbox")
    before = {task.id for task in outbox.list()}
    patch(client, f"/scim/v2/Devices/{device['id']}", {"op": "replace", "path": "owner", "value": {"value": owner["id"]}})
    [task] = [task for task in outbox.list() if task.id not in before and task.name == "{{ cookiecutter.plugin_name }}.device-assigned"]
    assert task.payload["owner"].startswith(f"didmosUUID={owner['id']},")
    assert task.payload["device"].startswith(f"didmosUUID={device['id']},")


def test_no_task_when_owner_notices_are_switched_off(make_app):
    app = make_app(**{"{{ cookiecutter.plugin_name }}": {"notify_owner": False}})
    client = app.test_client()
    owner = create_user(client)
    outbox = app.extensions["didmos"].service("outbox")
    before = {task.id for task in outbox.list()}
    client.post("/scim/v2/Devices", json={"name": unique("phone"), "owner": {"value": owner["id"]}}, headers=ADMIN)
    assert [task for task in outbox.list() if task.id not in before and task.name.startswith("{{ cookiecutter.plugin_name }}.")] == []
