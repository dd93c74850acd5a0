"""HTTP Basic authentication against the real slapd, through a real app."""

import base64
import uuid

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.api import Blueprint, MethodView
from didmos_host.app import current_actor
from didmos_host.testing import SUPERADMIN_PASSWORD, basic_auth as basic
from didmos_auth.basic import parse_basic
from didmos_host.errors import AuthenticationFailed

SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"

whoami = Blueprint("whoami", __name__, url_prefix="/whoami")


@whoami.route("/")
class WhoAmI(MethodView):
    def get(self):
        actor = current_actor()
        return {"dn": actor.dn, "uuid": actor.uuid, "tenant": actor.tenant, "method": actor.method}


class Probe:
    """Adds the endpoint and counts binds."""

    def __init__(self):
        self.binds = 0

    @hookimpl
    def didmos_blueprints(self, app):
        return [whoami]

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        if operation.kind == "bind":
            self.binds += 1


@pytest.fixture
def probe():
    return Probe()


@pytest.fixture
def client(make_app, probe):
    return make_app(probe).test_client()


@pytest.fixture
def user(make_app):
    """A fresh user with a password, created through the directory service."""
    directory = make_app().extensions["didmos"].service("directory")
    uid = f"u{uuid.uuid4().hex[:10]}"
    user_uuid = str(uuid.uuid4())
    dn = f"didmosUUID={user_uuid},{PEOPLE}"
    directory.add(dn, {"objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"], "uid": [uid], "cn": [uid],
                       "sn": [uid], "didmosUUID": [user_uuid], "didmosTenant": ["default-tenant"],
                       "userPassword": ["old-password"]})
    return {"dn": dn, "uuid": user_uuid, "uid": uid, "directory": directory}


def test_superadmin_authenticates_with_didmos_uuid(client):
    response = client.get("/whoami/", headers=basic(SUPERADMIN_UUID, SUPERADMIN_PASSWORD))
    assert response.status_code == 200
    assert response.json == {"dn": f"didmosUUID={SUPERADMIN_UUID},{PEOPLE}", "uuid": SUPERADMIN_UUID,
                             "tenant": "default-tenant", "method": "basic"}


def test_missing_wrong_and_malformed_credentials_are_401_with_a_challenge(client):
    for headers in ({}, basic(SUPERADMIN_UUID, "wrong"), basic("superadmin", SUPERADMIN_PASSWORD),
                    {"Authorization": "Basic !!!notbase64"}, {"Authorization": "Basic " + base64.b64encode(b"nocolon").decode()}):
        response = client.get("/whoami/", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Basic realm="didmos", charset="UTF-8"'
    assert "malformed" in client.get("/whoami/", headers={"Authorization": "Basic !!!"}).json["detail"]


def test_user_name_is_accepted_when_configured(make_app, probe):
    client = make_app(probe, auth={"basic": {"accept_user_name": True}}).test_client()
    assert client.get("/whoami/", headers=basic("superadmin", SUPERADMIN_PASSWORD)).json["uuid"] == SUPERADMIN_UUID


@pytest.mark.parametrize("must_change", [False, True])
def test_verified_password_is_remembered_and_forgotten_on_password_change(make_app, probe, user, must_change):
    client = make_app(probe).test_client()
    headers = basic(user["uuid"], "old-password")
    assert client.get("/whoami/", headers=headers).status_code == 200
    assert client.get("/whoami/", headers=headers).status_code == 200
    assert probe.binds == 1  # the second request cost no bind
    # an administrator sets a new password through didmos (in this app): the old one is forgotten at once
    app_directory = client.application.extensions["didmos"].service("directory")
    changes = [(ldap.MOD_REPLACE, "userPassword", ["new-password"])]
    if not must_change:  # what a self-service change leaves behind: no reset flag
        changes.append((ldap.MOD_REPLACE, "pwdReset", ["FALSE"]))
    with client.application.app_context():
        app_directory.modify(user["dn"], changes)
    assert client.get("/whoami/", headers=headers).status_code == 401
    response = client.get("/whoami/", headers=basic(user["uuid"], "new-password"))
    if must_change:  # the default policy: a password set by an administrator must be changed first
        assert response.status_code == 401 and "must be changed" in response.json["detail"]
    else:
        assert response.status_code == 200


def test_a_wrong_password_forgets_the_remembered_one(client, probe, user):
    good, bad = basic(user["uuid"], "old-password"), basic(user["uuid"], "guess")
    assert client.get("/whoami/", headers=good).status_code == 200
    assert client.get("/whoami/", headers=bad).status_code == 401
    assert client.get("/whoami/", headers=good).status_code == 200
    assert probe.binds == 3  # good, bad, and good again after the failed attempt


def test_guessing_is_throttled_per_address_without_locking_the_user_out(make_app, probe, user):
    client = make_app(probe, auth={"throttle": {"max_failures_per_user_address": 3}}).test_client()
    attacker, owner = {"REMOTE_ADDR": "192.0.2.66"}, {"REMOTE_ADDR": "192.0.2.10"}
    for _ in range(3):
        assert client.get("/whoami/", headers=basic(user["uuid"], "guess"), environ_base=attacker).status_code == 401
    blocked = client.get("/whoami/", headers=basic(user["uuid"], "old-password"), environ_base=attacker)
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    # the owner, from their own address, still gets in
    assert client.get("/whoami/", headers=basic(user["uuid"], "old-password"), environ_base=owner).status_code == 200


def test_locked_and_deactivated_accounts_get_401_with_the_reason(client, user):
    directory = user["directory"]
    directory.modify(user["dn"], [(ldap.MOD_REPLACE, "didmosActive", [False])])
    response = client.get("/whoami/", headers=basic(user["uuid"], "old-password"))
    assert response.status_code == 401 and "deactivated" in response.json["detail"]
    directory.modify(user["dn"], [(ldap.MOD_REPLACE, "didmosActive", [True]),
                                  (ldap.MOD_REPLACE, "pwdAccountLockedTime", ["000001010000Z"])])
    response = client.get("/whoami/", headers=basic(user["uuid"], "old-password"))
    assert response.status_code == 401 and "locked" in response.json["detail"]


def test_parse_basic():
    assert parse_basic(None) is None and parse_basic("Bearer abc") is None
    assert parse_basic("Basic " + base64.b64encode("ü:pw:with:colons".encode()).decode()) == ("ü", "pw:with:colons")
    with pytest.raises(AuthenticationFailed):
        parse_basic("Basic " + base64.b64encode(b":nouser").decode())


def test_whoami_endpoint_tells_whose_credentials_they_are(make_app):
    client = make_app().test_client()
    response = client.get("/auth/whoami", headers=basic(SUPERADMIN_UUID, SUPERADMIN_PASSWORD))
    assert response.status_code == 200
    assert response.json == {"dn": f"didmosUUID={SUPERADMIN_UUID},{PEOPLE}", "id": SUPERADMIN_UUID,
                             "tenant": "default-tenant", "method": "basic"}
    anonymous = client.get("/auth/whoami")
    assert anonymous.status_code == 401 and anonymous.json["detail"] == "authentication required"
    assert "/auth/whoami" in client.get("/openapi.json").json["paths"]
