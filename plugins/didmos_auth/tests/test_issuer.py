"""didmos as a token issuer, against a real slapd (of this module's own) and a real redis.

Tokens are checked with PyJWT, a JWT library that shares no code with authlib or joserfc, against the
JWKS didmos publishes: what any resource server would do.
"""

import json
import time
import uuid

import jwt as pyjwt
import ldap
import pytest
from click.testing import CliRunner

from didmos_host.app import create_app
from didmos_host.directory import init_directory
from didmos_host.errors import AuthenticationFailed
from didmos_host.host import Host
from didmos_host.testing import basic_auth as basic
from didmos_auth.issuer import PUBLIC_MEMBERS, REVOKED_KEY, check_secret, generate_key
from didmos_auth.issuer_plugin import tokens

PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
KEYS = "cn=token-keys,ou=system,dc=didmos,dc=de"
CLIENTS = "ou=clients,ou=system,dc=didmos,dc=de"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


@pytest.fixture(scope="module")
def own(didmos_own_overrides):
    """Settings of this module's own slapd: rotations and clients made here stay here."""
    return didmos_own_overrides


@pytest.fixture
def make_app(own):
    """``make_app(**overrides)`` as didmos_host.testing's, on this module's own slapd."""

    def make(**overrides):
        app = create_app(**{**own, **overrides})
        app.config["TESTING"] = True
        return app

    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture(scope="module")
def admin(own):
    """python-ldap bound as the service account: sees what didmos sees."""
    conn = ldap.initialize(own["directory"]["uri"])
    conn.simple_bind_s("cn=didmos-service,ou=system,dc=didmos,dc=de", own["directory"]["bind_password"])
    return conn


@pytest.fixture(scope="module")
def cli(own):
    """Runs `didmos tokens ...` in this process, configured by environment like a real shell."""
    env = {"DIDMOS_DIRECTORY__URI": f"'{own['directory']['uri']}'",
           "DIDMOS_DIRECTORY__BIND_PASSWORD": f"'{own['directory']['bind_password']}'",
           "DIDMOS_REDIS__URL": f"'{own['redis']['url']}'"}

    def run(*args):
        return CliRunner().invoke(tokens, list(args), env=env, catch_exceptions=False)

    return run


def new_user(admin, password="user-password"):
    """A user with a password, straight in LDAP; its id, DN, userName and password."""
    user_id = str(uuid.uuid4())
    dn = f"didmosUUID={user_id},{PEOPLE}"
    uid = f"t-{user_id[:8]}"
    attrs = {"objectClass": [b"inetOrgPerson", b"didmosObject", b"didmosPerson"], "uid": [uid.encode()],
             "cn": [b"t"], "sn": [b"t"], "didmosUUID": [user_id.encode()], "didmosTenant": [b"default-tenant"],
             "userPassword": [password.encode()]}
    admin.add_s(dn, list(attrs.items()))
    return {"id": user_id, "dn": dn, "uid": uid, "password": password}


@pytest.fixture
def user(admin):
    return new_user(admin)


@pytest.fixture
def registered(cli, user):
    """A client acting as ``user`` with both scopes, registered through the CLI; its name and secret."""
    name = f"c-{uuid.uuid4().hex[:8]}"
    result = cli("add-client", name, "--scope", "scim:read scim:write", "--acts-as", user["dn"],
                 "--description", "a test client")
    assert result.exit_code == 0, result.output
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    return {"name": name, "secret": lines["client_secret"], "user": user}


def token_for(client, registered, **form):
    response = client.post("/oauth/token", data={"grant_type": "client_credentials", **form},
                           headers=basic(registered["name"], registered["secret"]))
    assert response.status_code == 200, response.json
    return response.json


def pyjwt_claims(client, token, audience="didmos", issuer="http://localhost"):
    """Verify like a resource server: the key named by the token's kid from the published JWKS."""
    keys = pyjwt.PyJWKSet.from_dict(client.get("/oauth/jwks").json)
    kid = pyjwt.get_unverified_header(token)["kid"]
    key = next(key for key in keys.keys if key.key_id == kid)
    return pyjwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=audience, issuer=issuer)


def service(app):
    return app.extensions["didmos"].service("token_issuer")


# -- keys ----------------------------------------------------------------------------------------------


def test_init_creates_a_signing_key_that_survives_restarts_and_reruns(make_app, own, admin):
    [(_, entry)] = admin.search_s(KEYS, ldap.SCOPE_BASE, "(objectClass=*)", ["didmosSigningKey"])
    kid = json.loads(entry["didmosSigningKey"][0])["kid"]
    first, second = make_app().test_client(), make_app().test_client()
    assert kid in [key["kid"] for key in first.get("/oauth/jwks").json["keys"]]
    assert first.get("/oauth/jwks").json == second.get("/oauth/jwks").json
    report = init_directory(Host.create(own))  # `didmos directory init` again: the key stays
    assert KEYS not in report.entries_created
    assert admin.search_s(KEYS, ldap.SCOPE_BASE, "(objectClass=*)", ["didmosSigningKey"])[0][1] == entry


def test_users_cannot_read_the_keys_or_the_clients(own, user, registered):
    conn = ldap.initialize(own["directory"]["uri"])
    conn.simple_bind_s(user["dn"], user["password"])
    for dn in (KEYS, f"cn={registered['name']},{CLIENTS}"):
        try:
            found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)")
        except ldap.NO_SUCH_OBJECT:
            found = []
        assert found == [], dn


def test_jwks_never_holds_private_parts(client):
    keys = client.get("/oauth/jwks").json["keys"]
    assert keys
    for key in keys:
        assert set(key) <= set(PUBLIC_MEMBERS) and not set(key) & PRIVATE_MEMBERS, key
        assert key["use"] == "sig" and key["alg"] in ("RS256", "ES256") and key["kid"]


def test_rotation_keeps_old_tokens_valid_and_new_ones_use_the_new_kid(make_app, cli, registered, admin):
    app = make_app(tokens={"key_refresh_seconds": 0.2})
    client = app.test_client()
    old = token_for(client, registered)["access_token"]
    old_kid = pyjwt.get_unverified_header(old)["kid"]
    # a retired key from long ago, whose tokens have all expired: the rotation drops it
    ancient = {**generate_key("ES256"), "didmos_retired": int(time.time()) - 86400}
    admin.modify_s(KEYS, [(ldap.MOD_ADD, "didmosVerificationKey", [json.dumps(ancient).encode()])])

    result = cli("rotate-keys")
    assert result.exit_code == 0, result.output
    assert f"retired keys still verifying: {old_kid}" in result.output
    assert f"dropped (their tokens have expired): {ancient['kid']}" in result.output
    time.sleep(0.3)  # the app's keys are at most key_refresh_seconds old

    new = token_for(client, registered)["access_token"]
    new_kid = pyjwt.get_unverified_header(new)["kid"]
    assert new_kid != old_kid and f"signing key: {new_kid}" in result.output
    kids = [key["kid"] for key in client.get("/oauth/jwks").json["keys"]]
    assert kids == [new_kid, old_kid]
    for token in (old, new):
        assert pyjwt_claims(client, token)["sub"] == registered["user"]["id"]
        with app.test_request_context():
            assert service(app).verify(token)["sub"] == registered["user"]["id"]
    [(_, entry)] = admin.search_s(KEYS, ldap.SCOPE_BASE, "(objectClass=*)", ["didmosVerificationKey"])
    [retired] = [json.loads(value) for value in entry["didmosVerificationKey"]]
    assert retired["kid"] == old_kid and not set(retired) & PRIVATE_MEMBERS  # nothing signs with it any more


def test_a_token_signed_by_a_key_rotated_in_elsewhere_is_accepted_at_once(make_app, cli, registered):
    app = make_app()  # keeps its keys for 10 s: the new kid makes it read them again
    client = app.test_client()
    with app.test_request_context():
        service(app).verify(token_for(client, registered)["access_token"])
    assert cli("rotate-keys").exit_code == 0
    time.sleep(1.1)
    other = make_app().test_client()  # another node, which reads the new key
    token = token_for(other, registered)["access_token"]
    with app.test_request_context():
        assert service(app).verify(token)["client_id"] == registered["name"]


# -- clients -------------------------------------------------------------------------------------------


def test_add_client_prints_the_secret_once_and_stores_only_a_scrypt_hash(cli, registered, admin):
    [(_, entry)] = admin.search_s(f"cn={registered['name']},{CLIENTS}", ldap.SCOPE_BASE, "(objectClass=*)")
    stored = entry["didmosClientSecretHash"][0].decode()
    assert stored.startswith("$scrypt$ln=14,r=8,p=1$") and registered["secret"] not in stored
    assert check_secret(registered["secret"], stored) and not check_secret("guess", stored)
    assert entry["didmosActsAs"] == [registered["user"]["dn"].encode()]
    assert entry["didmosScope"] == [b"scim:read", b"scim:write"]
    listed = cli("list-clients").output
    assert registered["name"] in listed and registered["secret"] not in listed and "stored" not in listed

    again = cli("add-client", registered["name"], "--scope", "scim:read", "--acts-as", registered["user"]["dn"])
    assert again.exit_code == 2 and "exists already" in again.output
    unknown_scope = cli("add-client", "c-other", "--scope", "admin", "--acts-as", registered["user"]["dn"])
    assert unknown_scope.exit_code == 2 and "not offered" in unknown_scope.output
    nobody = cli("add-client", "c-other", "--scope", "scim:read", "--acts-as", f"didmosUUID=nobody,{PEOPLE}")
    assert nobody.exit_code == 2 and "does not exist" in nobody.output
    assert cli("add-client", "public", "--scope", "scim:read", "--acts-as", registered["user"]["dn"]).exit_code == 2


def test_a_removed_client_gets_no_token(cli, client, registered):
    assert cli("remove-client", registered["name"]).exit_code == 0
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"},
                           headers=basic(registered["name"], registered["secret"]))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"
    assert cli("remove-client", registered["name"]).exit_code == 2


# -- the token endpoint ----------------------------------------------------------------------------------


def test_client_credentials_token_validates_with_pyjwt_against_the_jwks(client, registered):
    body = token_for(client, registered)
    assert body["token_type"] == "Bearer" and body["expires_in"] == 600 and body["scope"] == "scim:read scim:write"
    assert "refresh_token" not in body
    claims = pyjwt_claims(client, body["access_token"])
    assert claims["iss"] == "http://localhost" and claims["aud"] == "didmos"
    assert claims["sub"] == registered["user"]["id"] and claims["client_id"] == registered["name"]
    assert claims["scope"] == "scim:read scim:write" and claims["exp"] - claims["iat"] == 600
    assert len(claims["jti"]) >= 16
    assert pyjwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    # the same with the credentials in the form (client_secret_post)
    response = client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": registered["name"],
                                                 "client_secret": registered["secret"], "scope": "scim:read"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"


def test_wrong_secret_unknown_client_unknown_grant_and_scope(client, registered):
    wrong = client.post("/oauth/token", data={"grant_type": "client_credentials"},
                        headers=basic(registered["name"], "guess"))
    assert wrong.status_code == 401 and wrong.json["error"] == "invalid_client"
    assert wrong.headers["WWW-Authenticate"].startswith("Basic")
    unknown = client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic("nobody", "x"))
    assert unknown.status_code == 401 and unknown.json["error"] == "invalid_client"
    none = client.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert none.status_code == 401 and none.json["error"] == "invalid_client"
    grant = client.post("/oauth/token", data={"grant_type": "authorization_code", "code": "x"},
                        headers=basic(registered["name"], registered["secret"]))
    assert grant.status_code == 400 and grant.json["error"] == "unsupported_grant_type"
    scope = client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "scim:read admin"},
                        headers=basic(registered["name"], registered["secret"]))
    assert scope.status_code == 400 and scope.json["error"] == "invalid_scope"


def test_wrong_client_secrets_are_throttled(make_app, registered):
    client = make_app(auth={"throttle": {"max_failures_per_user_address": 2}}).test_client()
    for _ in range(2):
        assert client.post("/oauth/token", data={"grant_type": "client_credentials"},
                           headers=basic(registered["name"], "guess")).status_code == 401
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"},
                           headers=basic(registered["name"], registered["secret"]))
    assert response.status_code == 429 and response.json["error"] == "invalid_client"
    assert int(response.headers["Retry-After"]) > 0


def test_a_client_whose_entry_is_gone_gets_no_token(client, cli, admin):
    gone = new_user(admin)
    name = f"c-{uuid.uuid4().hex[:8]}"
    result = cli("add-client", name, "--scope", "scim:read", "--acts-as", gone["dn"])
    secret = dict(line.split(": ", 1) for line in result.stdout.splitlines())["client_secret"]
    admin.delete_s(gone["dn"])
    response = client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=basic(name, secret))
    assert response.status_code == 400 and response.json["error"] == "unauthorized_client"
    assert "no longer exists" in response.json["error_description"]


def test_password_grant_is_off_by_default(client, user):
    response = client.post("/oauth/token", data={"grant_type": "password", "username": user["id"],
                                                 "password": user["password"]})
    assert response.status_code == 400 and response.json["error"] == "unsupported_grant_type"
    assert "password" not in client.get("/.well-known/openid-configuration").json["grant_types_supported"]


def test_password_grant_when_on_issues_user_tokens_and_is_throttled(make_app, user, registered):
    app = make_app(tokens={"password_grant": True}, auth={"throttle": {"max_failures_per_user_address": 2}})
    client = app.test_client()
    form = {"grant_type": "password", "username": user["id"], "password": user["password"]}
    body = client.post("/oauth/token", data=form).json
    claims = pyjwt_claims(client, body["access_token"])
    assert claims["sub"] == user["id"] and claims["client_id"] == "public" and claims["scope"] == "scim:read scim:write"
    assert "password" in client.get("/.well-known/openid-configuration").json["grant_types_supported"]
    # a registered client may use it too: the token is then the client's, for the user
    response = client.post("/oauth/token", data={**form, "scope": "scim:read"},
                           headers=basic(registered["name"], registered["secret"]))
    claims = pyjwt_claims(client, response.json["access_token"])
    assert (claims["sub"], claims["client_id"], claims["scope"]) == (user["id"], registered["name"], "scim:read")

    for _ in range(2):
        wrong = client.post("/oauth/token", data={**form, "password": "guess"})
        assert wrong.status_code == 400 and wrong.json["error"] == "invalid_grant"
    throttled = client.post("/oauth/token", data=form)  # even the right password waits now
    assert throttled.status_code == 429 and throttled.json["error"] == "invalid_grant"
    assert int(throttled.headers["Retry-After"]) > 0


def test_password_grant_takes_the_user_name_as_basic_does(make_app, user):
    client = make_app(tokens={"password_grant": True}, auth={"basic": {"accept_user_name": True}}).test_client()
    response = client.post("/oauth/token", data={"grant_type": "password", "username": user["uid"],
                                                 "password": user["password"]})
    assert response.status_code == 200 and pyjwt_claims(client, response.json["access_token"])["sub"] == user["id"]


# -- revocation and introspection --------------------------------------------------------------------------


def test_revoked_tokens_are_inactive_for_introspection_and_verify(make_app, registered, own):
    app = make_app()
    client = app.test_client()
    token = token_for(client, registered)["access_token"]
    credentials = basic(registered["name"], registered["secret"])
    active = client.post("/oauth/introspect", data={"token": token}, headers=credentials).json
    assert active["active"] is True and active["sub"] == registered["user"]["id"]
    assert active["client_id"] == registered["name"] and active["scope"] == "scim:read scim:write"
    assert active["token_type"] == "Bearer"

    response = client.post("/oauth/revoke", data={"token": token, "token_type_hint": "access_token"},
                           headers=credentials)
    assert response.status_code == 200
    assert client.post("/oauth/introspect", data={"token": token}, headers=credentials).json == {"active": False}
    with app.test_request_context(), pytest.raises(AuthenticationFailed, match="the token was revoked") as failed:
        service(app).verify(token)
    assert failed.value.challenges == [
        'Bearer realm="didmos", error="invalid_token", error_description="the token was revoked"']
    # the revocation lasts as long as the token would have, not longer
    import redis

    jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    assert 0 < redis.Redis.from_url(own["redis"]["url"]).ttl(REVOKED_KEY + jti) <= 601
    # revoking again, or revoking garbage, is fine (RFC 7009 2.2)
    assert client.post("/oauth/revoke", data={"token": token}, headers=credentials).status_code == 200
    assert client.post("/oauth/revoke", data={"token": "garbage"}, headers=credentials).status_code == 200


def test_only_the_tokens_client_or_subject_revokes_it(make_app, cli, registered, admin):
    app = make_app(tokens={"password_grant": True})
    client = app.test_client()
    someone = new_user(admin)
    other_name = f"c-{uuid.uuid4().hex[:8]}"
    result = cli("add-client", other_name, "--scope", "scim:read", "--acts-as", someone["dn"])
    other = basic(other_name, dict(line.split(": ", 1) for line in result.stdout.splitlines())["client_secret"])
    token = token_for(client, registered)["access_token"]
    assert client.post("/oauth/revoke", data={"token": token}, headers=other).json["error"] == "invalid_grant"
    assert client.post("/oauth/revoke", data={"token": token}, headers=basic(someone["id"], someone["password"])
                       ).json["error"] == "invalid_grant"
    assert client.post("/oauth/revoke", data={"token": token}).status_code == 401  # nobody at all

    user = registered["user"]  # the token's subject: the entry the client acts as
    assert client.post("/oauth/revoke", data={"token": token}, headers=basic(user["id"], user["password"])
                       ).status_code == 200
    assert client.post("/oauth/introspect", data={"token": token}, headers=other).json == {"active": False}

    mine = client.post("/oauth/token", data={"grant_type": "password", "username": someone["id"],
                                             "password": someone["password"]}).json["access_token"]
    assert client.post("/oauth/revoke", data={"token": mine}, headers=basic(someone["id"], someone["password"])
                       ).status_code == 200
    with app.test_request_context(), pytest.raises(AuthenticationFailed, match="the token was revoked"):
        service(app).verify(mine)


def test_users_are_not_clients_of_introspection_and_the_token_endpoint_needs_a_grant(client, user):
    credentials = basic(user["id"], user["password"])
    assert client.post("/oauth/introspect", data={"token": "x"}, headers=credentials).status_code == 401
    assert client.post("/oauth/introspect", data={"token": "x"}).status_code == 401
    assert client.post("/oauth/revoke", headers=credentials).json["error"] == "invalid_request"  # no token
    assert client.post("/oauth/token", headers=credentials).json["error"] == "unsupported_grant_type"


# -- verification for the other APIs ------------------------------------------------------------------------


def test_verify_and_authenticate_for_the_bearer_path(make_app, registered):
    app = make_app()
    client = app.test_client()
    token = token_for(client, registered)["access_token"]
    issuer = service(app)
    with app.test_request_context():
        assert issuer.is_own(token)
        actor = issuer.authenticate(token)
        assert (actor.dn, actor.uuid, actor.tenant, actor.method) == (
            registered["user"]["dn"], registered["user"]["id"], "default-tenant", "bearer")
        assert actor.attributes["scopes"] == ["scim:read", "scim:write"]
        assert actor.attributes["client_id"] == registered["name"] and actor.attributes["issuer"] == "http://localhost"
        foreign = pyjwt.encode({"iss": "https://login.example.org", "sub": "x"}, "s" * 32, algorithm="HS256")
        assert not issuer.is_own(foreign) and not issuer.is_own("not a token")
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for bad, reason in ((foreign, "names no key"), ("not a token", "not a signed JWT"),
                            (tampered, "the signature does not verify")):
            with pytest.raises(AuthenticationFailed, match=reason):
                issuer.verify(bad)
    with app.test_request_context(base_url="https://elsewhere.example.org"):  # another issuer
        with pytest.raises(AuthenticationFailed, match="token's iss claim"):
            issuer.verify(token)
    other_audience = make_app(tokens={"audience": "another-api"})
    with other_audience.test_request_context(), pytest.raises(AuthenticationFailed, match="token's aud claim"):
        service(other_audience).verify(token)


def test_expired_tokens_fail_verification(make_app, registered):
    app = make_app(tokens={"lifetime_seconds": 1})
    token = token_for(app.test_client(), registered)["access_token"]
    time.sleep(2.1)
    with app.test_request_context(), pytest.raises(AuthenticationFailed, match="the token expired"):
        service(app).verify(token)


@pytest.mark.parametrize("change", [("didmosActive", b"FALSE", "deactivated"),
                                    ("pwdAccountLockedTime", b"000001010000Z", "locked")], ids=lambda c: c[2])
def test_a_deactivated_or_locked_subject_stops_its_tokens(make_app, registered, admin, change):
    attribute, value, word = change
    app = make_app()
    token = token_for(app.test_client(), registered)["access_token"]
    admin.modify_s(registered["user"]["dn"], [(ldap.MOD_REPLACE, attribute, [value])])
    with app.test_request_context(), pytest.raises(AuthenticationFailed, match=f"the account is {word}"):
        service(app).authenticate(token)


# -- discovery ----------------------------------------------------------------------------------------------


def test_discovery_document(client, make_app):
    from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

    document = client.get("/.well-known/openid-configuration").json
    assert document == {
        "issuer": "http://localhost",
        "token_endpoint": "http://localhost/oauth/token",
        "jwks_uri": "http://localhost/oauth/jwks",
        "revocation_endpoint": "http://localhost/oauth/revoke",
        "introspection_endpoint": "http://localhost/oauth/introspect",
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["scim:read", "scim:write"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }
    configured = make_app(tokens={"issuer": "https://idm.example.org/", "scopes": ["scim:read", "reports"]})
    configured = configured.test_client()
    document = configured.get("/.well-known/openid-configuration").json
    assert document["issuer"] == "https://idm.example.org" and document["scopes_supported"] == ["scim:read", "reports"]
    metadata = AuthorizationServerMetadata(document)
    for check in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "scopes_supported",
                  "grant_types_supported", "token_endpoint_auth_methods_supported", "revocation_endpoint",
                  "introspection_endpoint"):
        getattr(metadata, f"validate_{check}")()


def test_bad_settings_are_refused_with_the_key_named(own):
    from didmos_host.errors import ConfigError

    for tokens_settings, key in (({"issuer": "idm.example.org"}, "tokens.issuer"),
                                 ({"keys_dn": "ou=keys,dc=didmos,dc=de"}, "tokens.keys_dn"),
                                 ({"scopes": ["two words"]}, "tokens.scopes"),
                                 ({"algorithm": "HS256"}, "tokens.algorithm")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            Host.create({**own, "tokens": tokens_settings})


def test_didmos_accepts_its_own_tokens_on_every_api(client, registered, admin):
    """A client's token acts as the entry it was registered for; revoked or read-only, it is limited."""
    user = registered["user"]
    admin.modify_s(user["dn"], [(ldap.MOD_ADD, "objectClass", [b"didmosRoleHolder"]),
                                (ldap.MOD_ADD, "didmosRoleAssignment",
                                 [b"cn=standarduser,ou=roles,ou=rbac,ou=default-tenant,dc=didmos,dc=de"])])
    token = token_for(client, registered)["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    whoami = client.get("/auth/whoami", headers=bearer)
    assert whoami.status_code == 200 and whoami.json["id"] == user["id"] and whoami.json["method"] == "bearer"
    assert client.get("/scim/v2/Me", headers=bearer).json["id"] == user["id"]

    read_only = token_for(client, registered, scope="scim:read")["access_token"]
    change = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
              "Operations": [{"op": "replace", "path": "displayName", "value": "x"}]}
    refused = client.patch("/scim/v2/Me", json=change, headers={"Authorization": f"Bearer {read_only}"})
    assert refused.status_code == 403 and "scim:write" in refused.json["detail"]
    assert client.patch("/scim/v2/Me", json=change, headers=bearer).status_code == 200

    revoked = client.post("/oauth/revoke", data={"token": token},
                          headers=basic(registered["name"], registered["secret"]))
    assert revoked.status_code == 200
    after = client.get("/auth/whoami", headers=bearer)
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["WWW-Authenticate"]
