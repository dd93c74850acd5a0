"""The test OpenID provider (fixture ``oidc_provider``, see conftest.py) answers as a real provider does.

These check the harness, not didmos: a token endpoint that issues JWT access tokens for a resource and
opaque ones without, signed with keys from the published JWKS, introspectable, rotated and expiring.
"""

import base64
import json
import time

import pytest
import requests
from authlib.jose import JsonWebKey, jwt
from authlib.jose.errors import ExpiredTokenError

pytestmark = pytest.mark.slow

API = "https://didmos.test/api"
API_ES256 = "https://didmos.test/api-es256"


def verified_claims(oidc_provider, token, audience=API):
    """The claims of JWT ``token`` after its signature, issuer, audience and expiry are checked."""
    claims = jwt.decode(token, JsonWebKey.import_key_set(oidc_provider.jwks()), claims_options={
        "iss": {"essential": True, "value": oidc_provider.issuer},
        "aud": {"essential": True, "value": audience},
        "exp": {"essential": True},
    })
    claims.validate()
    return claims


def header(token):
    """The JOSE header of a JWT, read without any check."""
    first = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))


def test_discovery_document_names_the_endpoints(oidc_provider):
    response = requests.get(f"{oidc_provider.issuer}/.well-known/openid-configuration", timeout=5)
    assert response.status_code == 200
    document = response.json()
    assert document["issuer"] == oidc_provider.issuer
    assert oidc_provider.issuer.startswith("http://127.0.0.1:")
    for endpoint in ("token_endpoint", "jwks_uri", "introspection_endpoint", "revocation_endpoint"):
        assert document[endpoint].startswith(oidc_provider.issuer + "/"), endpoint
    assert "client_credentials" in document["grant_types_supported"]
    assert {"scim:read", "scim:write"} <= set(document["scopes_supported"])


def test_jwks_is_public_keys_only(oidc_provider):
    keys = oidc_provider.jwks()["keys"]
    assert {key["alg"] for key in keys} == {"RS256", "ES256"}
    assert all("d" not in key and key["kid"] for key in keys)


@pytest.mark.parametrize(("resource", "alg"), [(API, "RS256"), (API_ES256, "ES256")])
def test_token_for_a_resource_is_a_jwt_for_that_audience(oidc_provider, resource, alg):
    token = oidc_provider.token(resource=resource)
    assert header(token)["alg"] == alg and header(token)["typ"] == "at+jwt"
    claims = verified_claims(oidc_provider, token, audience=resource)
    assert claims["aud"] == resource
    assert claims["iss"] == oidc_provider.issuer
    assert claims["scope"] == "scim:read scim:write"
    assert claims["client_id"] == claims["sub"] == "didmos-test-client"
    assert claims["exp"] - claims["iat"] == 60


def test_token_scope_is_narrowed_to_what_was_asked(oidc_provider):
    assert verified_claims(oidc_provider, oidc_provider.token(scope="scim:read"))["scope"] == "scim:read"


def test_unknown_resource_is_refused(oidc_provider):
    response = requests.post(oidc_provider.discovery()["token_endpoint"], auth=oidc_provider.client, timeout=5,
                             data={"grant_type": "client_credentials", "resource": "https://elsewhere.test/"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"


def test_opaque_token_introspects_as_active_for_the_resource_server(oidc_provider):
    token = oidc_provider.token(opaque=True)
    assert token.count(".") == 0
    endpoint = oidc_provider.discovery()["introspection_endpoint"]
    # RFC 7662: a form POST, the resource server authenticated with HTTP Basic.
    answer = requests.post(endpoint, data={"token": token}, auth=oidc_provider.introspection_client, timeout=5)
    assert answer.status_code == 200
    body = answer.json()
    assert body["active"] is True
    assert body["client_id"] == "didmos-test-client"
    assert body["scope"] == "scim:read scim:write"
    assert body["iss"] == oidc_provider.issuer
    assert body["exp"] > time.time()


def test_introspection_tells_others_nothing(oidc_provider):
    token = oidc_provider.token(opaque=True)
    endpoint = oidc_provider.discovery()["introspection_endpoint"]
    # Another client: authenticated, but not a resource server.
    assert requests.post(endpoint, data={"token": token}, auth=oidc_provider.client, timeout=5).json() == {
        "active": False}
    wrong_secret = (oidc_provider.introspection_client[0], "wrong")
    assert requests.post(endpoint, data={"token": token}, auth=wrong_secret, timeout=5).status_code == 401
    assert oidc_provider.introspect("not-a-token") == {"active": False}


def test_revoked_opaque_token_is_inactive(oidc_provider):
    token = oidc_provider.token(opaque=True)
    response = requests.post(oidc_provider.discovery()["revocation_endpoint"], data={"token": token},
                             auth=oidc_provider.client, timeout=5)
    assert response.status_code == 200
    assert oidc_provider.introspect(token) == {"active": False}


def test_expiring_token_expires_after_its_short_ttl(oidc_provider):
    jwt_token = oidc_provider.expiring_token()
    opaque = oidc_provider.expiring_token(opaque=True)
    claims = verified_claims(oidc_provider, jwt_token)
    assert claims["exp"] - claims["iat"] == oidc_provider.short_ttl <= 3
    assert oidc_provider.introspect(opaque)["active"] is True

    time.sleep(oidc_provider.short_ttl + 1)
    with pytest.raises(ExpiredTokenError):
        verified_claims(oidc_provider, jwt_token)
    assert oidc_provider.introspect(opaque) == {"active": False}


def test_rotated_keys_sign_new_tokens_and_old_keys_are_gone(oidc_provider):
    before = oidc_provider.token()
    old_kids = {key["kid"] for key in oidc_provider.jwks()["keys"]}
    issuer = oidc_provider.issuer

    oidc_provider.rotate_keys()

    assert oidc_provider.issuer == issuer
    new_kids = {key["kid"] for key in oidc_provider.jwks()["keys"]}
    assert not new_kids & old_kids
    after = oidc_provider.token()
    assert header(after)["kid"] in new_kids and header(after)["kid"] != header(before)["kid"]
    assert verified_claims(oidc_provider, after)["iss"] == issuer
    # The old token's key is no longer published.
    with pytest.raises(ValueError, match="Key not found"):
        verified_claims(oidc_provider, before)


def test_rotation_can_keep_publishing_the_previous_keys(oidc_provider):
    before = oidc_provider.token()
    oidc_provider.rotate_keys(keep_previous=True)
    after = oidc_provider.token()
    assert header(after)["kid"] != header(before)["kid"]
    assert len(oidc_provider.jwks()["keys"]) == 4
    # Both verify: the old key is still published during the rollover.
    verified_claims(oidc_provider, before)
    verified_claims(oidc_provider, after)
