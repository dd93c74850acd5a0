"""A plugin's ``didmos_authorize`` vote counts in the SCIM API: False denies whatever the PDP allows."""

import uuid

import pytest

from didmos_host import hookimpl
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


class Protect:
    """Votes no on every operation on the users listed in ``dns`` (lower case); abstains otherwise."""

    def __init__(self):
        self.dns: set[str] = set()
        self.asked: list[str] = []

    @hookimpl(tryfirst=True)
    def didmos_authorize(self, host, actor, action):
        self.asked.append(action.operation)
        return False if action.target.lower() in self.dns else None


@pytest.fixture
def protect():
    return Protect()


@pytest.fixture
def client(make_app, protect):
    return make_app(protect).test_client()


def new_user(client, prefix="vote"):
    body = {"schemas": [USER], "userName": f"{prefix}-{uuid.uuid4().hex[:10]}",
            "name": {"givenName": "Vee", "familyName": "Toe"}}
    response = client.post("/scim/v2/Users", json=body, headers=ADMIN)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def dn_of(user):
    return f"didmosUUID={user['id']},ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de".lower()


def test_a_no_vote_denies_the_superadmin_reads_and_writes_of_that_user_only(client, protect):
    kept, other = new_user(client, "vote-kept"), new_user(client, "vote-other")
    protect.dns.add(dn_of(kept))
    path = f"/scim/v2/Users/{kept['id']}"
    assert client.get(path, headers=ADMIN).status_code == 403
    patch = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "X"}]}
    denied = client.patch(path, json=patch, headers=ADMIN)
    assert denied.status_code == 403 and denied.get_json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert client.delete(path, headers=ADMIN).status_code == 403
    listed = client.get('/scim/v2/Users?filter=userName sw "vote-"', headers=ADMIN).get_json()
    ids = {resource["id"] for resource in listed["Resources"]}
    assert other["id"] in ids and kept["id"] not in ids
    # the other user is untouched by the vote: the PDP decides
    assert client.patch(f"/scim/v2/Users/{other['id']}", json=patch, headers=ADMIN).status_code == 200
    assert client.delete(f"/scim/v2/Users/{other['id']}", headers=ADMIN).status_code == 204

    protect.dns.clear()  # the vote withdrawn: the PDP's allow holds again
    assert client.get(path, headers=ADMIN).status_code == 200
    assert client.delete(path, headers=ADMIN).status_code == 204
    assert {"read", "modify-replace", "delete"} <= set(protect.asked)
