"""Bearer tokens of a real, certified OpenID provider: panva's oidc-provider (fixture ``oidc_provider``,
see conftest.py), against the real test slapd.

The provider issues ``client_credentials`` tokens, so the subject is a client: a JWT's ``sub`` is the
client id, and an opaque token's introspection answer names no ``sub`` at all (only ``client_id``),
so the opaque tests map ``client_id`` to ``uid``. The clients exist in the directory as users.
What didmos asks the provider is counted in the provider's log (one line per request).
"""

from __future__ import annotations

import time
import urllib.parse
import uuid

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.api import Blueprint, MethodView
from didmos_host.app import current_actor

pytestmark = pytest.mark.slow

API_RESOURCE = "https://didmos.test/api"
API_ES256_RESOURCE = "https://didmos.test/api-es256"
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
STANDARDUSER = "cn=standarduser,ou=roles,ou=rbac,ou=default-tenant,dc=didmos,dc=de"
CLIENT = "didmos-test-client"
SHORT_LIVED_CLIENT = "didmos-short-lived-client"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

probe_blueprint = Blueprint("real_provider_probe", __name__, url_prefix="/real-provider-probe")


@probe_blueprint.route("/")
class ActorProbe(MethodView):
    def get(self):
        actor = current_actor()
        return {"uuid": actor.uuid, "method": actor.method, "attributes": actor.attributes}


class Probe:
    @hookimpl
    def didmos_blueprints(self, app):
        return [probe_blueprint]


@pytest.fixture(scope="module")
def client_accounts(didmos_slapd):
    """The provider's clients as users with the role standarduser: ``{client id: didmosUUID}``."""
    conn = didmos_slapd.admin_connection()
    accounts = {}
    for uid in (CLIENT, SHORT_LIVED_CLIENT):
        found = conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, f"(uid={uid})", ["didmosUUID"])
        if found:
            accounts[uid] = found[0][1]["didmosUUID"][0].decode()
            continue
        accounts[uid] = str(uuid.uuid4())
        conn.add_s(f"didmosUUID={accounts[uid]},{PEOPLE}", [
            ("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
            ("uid", [uid.encode()]), ("cn", [uid.encode()]), ("sn", [uid.encode()]),
            ("didmosUUID", [accounts[uid].encode()]), ("didmosTenant", [b"default-tenant"]),
            ("didmosRoleAssignment", [STANDARDUSER.encode()])])
    return accounts


@pytest.fixture
def make_provider_app(make_app, oidc_provider, client_accounts):
    """``make_provider_app(oidc={...}, **provider_settings)``: an app accepting the real provider's tokens."""

    def make(*, oidc=None, **provider_settings):
        entry = {"issuer": oidc_provider.issuer, "audience": API_RESOURCE, **provider_settings}
        return make_app(Probe(), auth={"oidc": {"providers": [entry], **(oidc or {})}})

    return make


@pytest.fixture
def introspecting_app(make_provider_app, oidc_provider):
    client_id, secret = oidc_provider.introspection_client
    return make_provider_app(claim="client_id", introspection_client_id=client_id,
                             introspection_client_secret=secret)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def requests_to(oidc_provider, endpoint: str) -> int:
    """How many requests the provider logged for the path of the discovery document's ``endpoint``,
    once the count has settled (the provider logs each request after answering it)."""
    path = urllib.parse.urlsplit(oidc_provider.discovery()[endpoint]).path
    last, stable_since = -1, time.monotonic()
    while True:
        count = sum(1 for line in oidc_provider.log_path.read_text().splitlines() if f" {path} " in line)
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > 0.3:
            return count
        time.sleep(0.05)


def refusal(response) -> str:
    assert response.status_code == 401, (response.status_code, response.json)
    [challenge] = response.headers.getlist("WWW-Authenticate")
    assert challenge.startswith('Bearer realm="didmos", error="invalid_token", error_description="'), challenge
    return challenge.split('error_description="', 1)[1].rstrip('"')


# -- JWT access tokens ---------------------------------------------------------------------------------


def test_a_jwt_access_token_authenticates_its_client(make_provider_app, oidc_provider, client_accounts):
    client = make_provider_app().test_client()
    response = client.get("/real-provider-probe/", headers=bearer(oidc_provider.token()))
    assert response.status_code == 200, response.json
    assert response.json == {"uuid": client_accounts[CLIENT], "method": "bearer", "attributes": {
        "scopes": ["scim:read", "scim:write"], "issuer": oidc_provider.issuer, "client_id": CLIENT,
        "subject": CLIENT}}
    whoami = client.get("/auth/whoami", headers=bearer(oidc_provider.token()))
    assert whoami.status_code == 200 and whoami.json["method"] == "bearer"


def test_an_es256_token_is_accepted_by_an_app_of_its_audience(make_provider_app, oidc_provider, client_accounts):
    client = make_provider_app(audience=API_ES256_RESOURCE).test_client()
    response = client.get("/auth/whoami", headers=bearer(oidc_provider.token(resource=API_ES256_RESOURCE)))
    assert response.status_code == 200 and response.json["id"] == client_accounts[CLIENT]


def test_a_token_for_another_resource_is_refused(make_provider_app, oidc_provider):
    client = make_provider_app().test_client()
    response = client.get("/auth/whoami", headers=bearer(oidc_provider.token(resource=API_ES256_RESOURCE)))
    assert "not meant for this API" in refusal(response)


def test_an_algorithm_the_provider_config_does_not_allow_is_refused(make_provider_app, oidc_provider):
    client = make_provider_app(audience=API_ES256_RESOURCE, algorithms=["RS256"]).test_client()
    response = client.get("/auth/whoami", headers=bearer(oidc_provider.token(resource=API_ES256_RESOURCE)))
    assert "signed with ES256 are not accepted" in refusal(response)


def test_an_expired_token_is_refused(make_provider_app, oidc_provider):
    client = make_provider_app(oidc={"leeway_seconds": 0}).test_client()
    token = oidc_provider.expiring_token()
    assert client.get("/auth/whoami", headers=bearer(token)).status_code == 200
    time.sleep(oidc_provider.short_ttl + 1.1)
    assert refusal(client.get("/auth/whoami", headers=bearer(token))) == "the token expired"


def test_a_read_only_token_reads_and_cannot_write(make_provider_app, oidc_provider):
    client = make_provider_app().test_client()
    read_only = bearer(oidc_provider.token(scope="scim:read"))
    assert client.get("/scim/v2/Me", headers=read_only).status_code == 200
    change = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "Test client"}]}
    refused = client.patch("/scim/v2/Me", json=change, headers=read_only)
    assert refused.status_code == 403 and 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert client.patch("/scim/v2/Me", json=change, headers=bearer(oidc_provider.token())).status_code == 200


def test_rotated_keys_are_fetched_once_and_accepted(make_provider_app, oidc_provider):
    client = make_provider_app(oidc={"jwks_refresh_min_seconds": 0.1}).test_client()
    assert client.get("/auth/whoami", headers=bearer(oidc_provider.token())).status_code == 200
    before = requests_to(oidc_provider, "jwks_uri")
    oidc_provider.rotate_keys(keep_previous=True)  # a restart: about a second, longer than the interval
    token = oidc_provider.token()
    for _ in range(3):
        response = client.get("/auth/whoami", headers=bearer(token))
        assert response.status_code == 200, response.json
    assert requests_to(oidc_provider, "jwks_uri") == before + 1


# -- opaque tokens -------------------------------------------------------------------------------------


def test_an_opaque_token_is_introspected_once(introspecting_app, oidc_provider, client_accounts):
    client = introspecting_app.test_client()
    token = oidc_provider.token(opaque=True)
    before = requests_to(oidc_provider, "introspection_endpoint")
    for _ in range(3):
        response = client.get("/real-provider-probe/", headers=bearer(token))
        assert response.status_code == 200, response.json
    assert response.json["uuid"] == client_accounts[CLIENT]
    assert response.json["attributes"]["scopes"] == ["scim:read", "scim:write"]
    assert requests_to(oidc_provider, "introspection_endpoint") == before + 1


def test_an_unknown_or_expired_opaque_token_is_not_active(introspecting_app, oidc_provider):
    client = introspecting_app.test_client()
    assert "not active" in refusal(client.get("/auth/whoami", headers=bearer("unknown-" + uuid.uuid4().hex)))
    token = oidc_provider.expiring_token(opaque=True)
    assert client.get("/auth/whoami", headers=bearer(token)).status_code == 200
    time.sleep(oidc_provider.short_ttl + 1.1)  # the remembered answer must not outlive the token
    assert "not active" in refusal(client.get("/auth/whoami", headers=bearer(token)))


def test_wrong_introspection_credentials_are_503(make_provider_app, oidc_provider):
    client_id, _ = oidc_provider.introspection_client
    client = make_provider_app(claim="client_id", introspection_client_id=client_id,
                               introspection_client_secret="wrong").test_client()
    response = client.get("/auth/whoami", headers=bearer(oidc_provider.token(opaque=True)))
    assert response.status_code == 503 and "answered 401" in response.json["detail"]


def test_tampered_unsigned_and_foreign_tokens_of_the_real_provider_are_refused(make_provider_app, oidc_provider,
                                                                               make_app):
    import base64
    import json

    def b64(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    def part(text: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    client = make_provider_app().test_client()
    header, payload, signature = oidc_provider.token().split(".")
    claims = part(payload)
    tampered = f"{header}.{b64({**claims, 'sub': 'someone-else'})}.{signature}"
    assert "signature" in refusal(client.get("/auth/whoami", headers=bearer(tampered)))
    unsigned = f"{b64({**part(header), 'alg': 'none'})}.{payload}."
    assert "none" in refusal(client.get("/auth/whoami", headers=bearer(unsigned)))
    # an app that trusts another issuer: this provider's valid token is not for it
    elsewhere = make_app(auth={"oidc": {"providers": [{"issuer": "http://127.0.0.1:9/other",
                                                        "audience": API_RESOURCE}]}}).test_client()
    assert "issuer" in refusal(elsewhere.get("/auth/whoami", headers=bearer(oidc_provider.token())))
