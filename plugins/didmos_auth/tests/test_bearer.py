"""Bearer tokens of OpenID Connect providers, against a token issuer this module runs on loopback.

The issuer is a small WSGI app served over real HTTP by werkzeug in a thread: discovery document,
key set and introspection endpoint, with keys generated per test. It counts what it is asked, so the
tests can check what didmos fetches and when. Users live in the real test slapd.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid

import ldap
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from didmos_host import hookimpl
from didmos_host.api import Blueprint, MethodView
from didmos_host.app import create_app, current_actor
from didmos_host.errors import ConfigError
from didmos_host.records import Action, Actor
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth
from didmos_auth.bearer import parse_bearer

AUDIENCE = "https://didmos.test/api"
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
STANDARDUSER = "cn=standarduser,ou=roles,ou=rbac,ou=default-tenant,dc=didmos,dc=de"
INTROSPECTOR = ("didmos-api", "introspection-secret")
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


# -- the token issuer ----------------------------------------------------------------------------------


class TokenIssuer:
    """An OpenID provider on 127.0.0.1: ``/.well-known/openid-configuration``, ``/jwks``, ``/introspect``."""

    def __init__(self):
        self.signing = self.new_key()
        self.published = [self.signing]  # the keys in the key set
        self.jwks_fetches = 0
        self.introspections = 0
        self.opaque: dict[str, dict] = {}  # token -> introspection answer
        self.discovery_issuer = None  # None: the real issuer
        self._lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)

    @staticmethod
    def new_key(kind: str = "RSA"):
        kid = uuid.uuid4().hex[:12]
        if kind == "EC":
            return ECKey.generate_key("P-256", parameters={"kid": kid, "use": "sig"}, private=True)
        if kind == "OKP":
            return OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig"}, private=True)
        return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig"}, private=True)

    def rotate(self, kind: str = "RSA"):
        """A new signing key, published beside the old one."""
        self.signing = self.new_key(kind)
        self.published.append(self.signing)
        return self.signing

    def token(self, sub: str, *, aud=AUDIENCE, iss=None, scope="scim:read scim:write", expires_in=300,
              key=None, alg="RS256", **claims) -> str:
        now = int(time.time())
        payload = {"iss": iss or self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + expires_in,
                   "client_id": "didmos-test-client", **claims}
        if scope is not None:
            payload["scope"] = scope
        key = key or self.signing
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "at+jwt"}, payload, key, algorithms=[alg])

    def opaque_token(self, sub: str, *, active=True, expires_in=300, **answer) -> str:
        token = base64.urlsafe_b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode().rstrip("=")
        self.opaque[token] = {"active": active, "iss": self.issuer, "sub": sub, "aud": AUDIENCE,
                              "scope": "scim:read scim:write", "client_id": "didmos-test-client",
                              "token_type": "Bearer", "exp": int(time.time()) + expires_in, **answer}
        return token

    def wsgi(self, environ, start_response):
        request = Request(environ)
        if request.path == "/.well-known/openid-configuration":
            body = {"issuer": self.discovery_issuer or self.issuer, "jwks_uri": f"{self.issuer}/jwks",
                    "introspection_endpoint": f"{self.issuer}/introspect"}
        elif request.path == "/jwks":
            with self._lock:
                self.jwks_fetches += 1
            body = {"keys": [key.as_dict(private=False) for key in self.published]}
        elif request.path == "/introspect" and request.method == "POST":
            with self._lock:
                self.introspections += 1
            if request.authorization is None or (request.authorization.username,
                                                 request.authorization.password) != INTROSPECTOR:
                return Response(json.dumps({"error": "invalid_client"}), 401,
                                content_type="application/json")(environ, start_response)
            body = self.opaque.get(request.form.get("token"), {"active": False})
            if body.get("active") and body.get("exp", 0) <= time.time():
                body = {"active": False}
        else:
            return Response("not found", 404)(environ, start_response)
        return Response(json.dumps(body), content_type="application/json")(environ, start_response)


@pytest.fixture
def issuer():
    running = TokenIssuer()
    yield running
    running.stop()


# -- the app -------------------------------------------------------------------------------------------

probe_blueprint = Blueprint("bearer_probe", __name__, url_prefix="/bearer-probe")


@probe_blueprint.route("/")
class ActorProbe(MethodView):
    def get(self):
        actor = current_actor()
        return {"dn": actor.dn, "uuid": actor.uuid, "method": actor.method, "attributes": actor.attributes}


class Probe:
    @hookimpl
    def didmos_blueprints(self, app):
        return [probe_blueprint]


def provider(issuer, **settings):
    return {"issuer": issuer.issuer, "audience": AUDIENCE, **settings}


@pytest.fixture
def make_bearer_app(make_app, issuer):
    """``make_bearer_app(oidc={...}, **provider_settings)``: an app accepting the test issuer's tokens."""

    def make(*, oidc=None, auth=None, **provider_settings):
        settings = {"oidc": {"providers": [provider(issuer, **provider_settings)], **(oidc or {})}, **(auth or {})}
        return make_app(Probe(), auth=settings, pdp={"refresh_seconds": 0.3})

    return make


@pytest.fixture
def client(make_bearer_app):
    return make_bearer_app().test_client()


@pytest.fixture
def directory(make_app):
    return make_app().extensions["didmos"].service("directory")


@pytest.fixture
def new_user(directory):
    """``new_user()`` -> (uid, didmosUUID) of a fresh user with the role standarduser."""

    def create(uid=None):
        uid = uid or f"b{uuid.uuid4().hex[:10]}"
        user_uuid = str(uuid.uuid4())
        directory.add(f"didmosUUID={user_uuid},{PEOPLE}", {
            "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson", "didmosRoleHolder"], "uid": [uid],
            "cn": [uid], "sn": [uid], "didmosUUID": [user_uuid], "didmosTenant": ["default-tenant"],
            "didmosRoleAssignment": [STANDARDUSER]})
        return uid, user_uuid

    return create


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def b64(data) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def refusal(response) -> str:
    """The error_description of a 401 invalid_token, after checking the response is one."""
    assert response.status_code == 401, (response.status_code, response.json)
    [challenge] = response.headers.getlist("WWW-Authenticate")
    assert challenge.startswith('Bearer realm="didmos", error="invalid_token", error_description="'), challenge
    return challenge.split('error_description="', 1)[1].rstrip('"')


# -- valid tokens --------------------------------------------------------------------------------------


def test_a_valid_jwt_authenticates_the_mapped_user(client, issuer, new_user):
    uid, user_uuid = new_user()
    response = client.get("/auth/whoami", headers=bearer(issuer.token(uid)))
    assert response.status_code == 200, response.json
    assert response.json == {"dn": f"didmosUUID={user_uuid},{PEOPLE}", "id": user_uuid, "tenant": "default-tenant",
                             "method": "bearer"}
    probe = client.get("/bearer-probe/", headers=bearer(issuer.token(uid, scope="scim:read scim:write extra")))
    assert probe.json["attributes"] == {"scopes": ["scim:read", "scim:write", "extra"], "issuer": issuer.issuer,
                                        "client_id": "didmos-test-client", "subject": uid}
    assert issuer.jwks_fetches == 1  # the keys are cached


def test_scp_lists_audience_lists_and_clock_skew_within_the_leeway_are_accepted(client, issuer, new_user):
    uid, _ = new_user()
    token = issuer.token(uid, scope=None, scp=["scim:read"], aud=["other-api", AUDIENCE], expires_in=-10)
    response = client.get("/bearer-probe/", headers=bearer(token))
    assert response.status_code == 200, response.json
    assert response.json["attributes"]["scopes"] == ["scim:read"]


@pytest.mark.parametrize("kind, alg", [("EC", "ES256"), ("RSA", "PS256"), ("OKP", "EdDSA")])
def test_other_asymmetric_algorithms_are_accepted(client, issuer, new_user, kind, alg):
    uid, _ = new_user()
    key = issuer.rotate(kind)
    response = client.get("/auth/whoami", headers=bearer(issuer.token(uid, key=key, alg=alg)))
    assert response.status_code == 200, response.json


def test_the_subject_can_be_any_claim_mapped_to_any_attribute(make_bearer_app, issuer, directory, new_user):
    uid, user_uuid = new_user()
    mail = f"{uid}@example.org"
    directory.modify(f"didmosUUID={user_uuid},{PEOPLE}", [(ldap.MOD_REPLACE, "mail", [mail])])
    client = make_bearer_app(claim="email", attribute="mail").test_client()
    response = client.get("/auth/whoami", headers=bearer(issuer.token("someone-else", email=mail)))
    assert response.status_code == 200 and response.json["id"] == user_uuid


# -- refused tokens ------------------------------------------------------------------------------------


def _tampered(issuer, uid):
    header, payload, signature = issuer.token(uid).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "superadmin"
    return f"{header}.{b64(claims)}.{signature}"


def _unsigned(issuer, uid):
    now = int(time.time())
    claims = {"iss": issuer.issuer, "sub": uid, "aud": AUDIENCE, "exp": now + 300}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def _critical(issuer, uid):
    """Signed properly, but naming a header parameter the receiver must understand (joserfc would not sign it)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    now = int(time.time())
    signing_input = (f"{b64({'alg': 'RS256', 'kid': issuer.signing.kid, 'crit': ['x-acme'], 'x-acme': 1})}."
                     f"{b64({'iss': issuer.issuer, 'sub': uid, 'aud': AUDIENCE, 'exp': now + 300})}")
    signature = issuer.signing.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(signature)}"


def _hmac_with_the_public_key(issuer, uid):
    """The key-confusion attack: HS256 with the provider's public key (PEM) as the HMAC secret."""
    now = int(time.time())
    signing_input = (f"{b64({'alg': 'HS256', 'kid': issuer.signing.kid, 'typ': 'JWT'})}."
                     f"{b64({'iss': issuer.issuer, 'sub': uid, 'aud': AUDIENCE, 'exp': now + 300})}")
    secret = issuer.signing.as_pem(private=False)
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize("make_token, description", [
    (lambda issuer, uid: issuer.token(uid, expires_in=-3600), "the token expired"),
    (lambda issuer, uid: issuer.token(uid, aud="https://other.test/api"),
     f"the token is not meant for this API: its aud does not contain {AUDIENCE}"),
    (lambda issuer, uid: issuer.token(uid, iss="https://elsewhere.test"),
     "the token's issuer 'https://elsewhere.test' is not a configured provider"),
    (lambda issuer, uid: issuer.token(uid, nbf=int(time.time()) + 3600), "the token is not valid yet (nbf)"),
    (lambda issuer, uid: issuer.token(uid, key=TokenIssuer.new_key()), "publishes no RS256 key with kid"),
    (_tampered, "the signature does not verify"),
    (_unsigned, "tokens signed with 'none' are not accepted"),
    (_hmac_with_the_public_key, "tokens signed with 'HS256' are not accepted"),
    (_critical, "critical header parameters"),
    (lambda issuer, uid: "a.b.c", "malformed JWT"),
], ids=["expired", "wrong-aud", "wrong-iss", "not-yet-valid", "unknown-kid", "tampered", "alg-none",
        "hs256-with-public-key", "crit", "malformed"])
def test_bad_tokens_are_401_invalid_token_saying_why(client, issuer, new_user, make_token, description):
    uid, _ = new_user()
    response = client.get("/auth/whoami", headers=bearer(make_token(issuer, uid)))
    assert description in refusal(response)
    assert response.json["detail"].startswith("invalid bearer token: ")


def test_an_algorithm_the_provider_does_not_allow_is_refused_before_any_key_is_fetched(make_bearer_app, issuer,
                                                                                       new_user):
    uid, _ = new_user()
    client = make_bearer_app(algorithms=["ES256"]).test_client()
    response = client.get("/auth/whoami", headers=bearer(issuer.token(uid)))
    assert "signed with RS256 are not accepted; allowed: ES256" in refusal(response)
    assert issuer.jwks_fetches == 0


def test_an_unknown_subject_and_a_deactivated_account_are_refused(client, issuer, new_user, directory):
    assert "no account has uid nobody-" in refusal(client.get("/auth/whoami", headers=bearer(
        issuer.token(f"nobody-{uuid.uuid4().hex[:6]}"))))
    uid, user_uuid = new_user()
    directory.modify(f"didmosUUID={user_uuid},{PEOPLE}", [(ldap.MOD_REPLACE, "didmosActive", [False])])
    assert refusal(client.get("/auth/whoami", headers=bearer(issuer.token(uid)))) == "the account is deactivated"


def test_an_empty_or_malformed_authorization_is_refused(client):
    assert "carries no token" in refusal(client.get("/auth/whoami", headers={"Authorization": "Bearer "}))
    assert "characters" in refusal(client.get("/auth/whoami", headers={"Authorization": 'Bearer a"b'}))


def test_a_discovery_document_naming_another_issuer_or_an_unreachable_provider_is_503(make_bearer_app, issuer,
                                                                                        new_user):
    uid, _ = new_user()
    issuer.discovery_issuer = "https://impostor.test"
    response = make_bearer_app().test_client().get("/auth/whoami", headers=bearer(issuer.token(uid)))
    assert response.status_code == 503 and "names the issuer 'https://impostor.test'" in response.json["detail"]
    token = issuer.token(uid)
    issuer.stop()
    client = make_bearer_app(oidc={"jwks_refresh_min_seconds": 60}).test_client()
    started = time.monotonic()
    first = client.get("/auth/whoami", headers=bearer(token))
    assert first.status_code == 503 and "cannot be reached" in first.json["detail"]
    second = client.get("/auth/whoami", headers=bearer(token))  # not tried again yet: answered at once
    assert second.status_code == 503 and time.monotonic() - started < 5


# -- keys ----------------------------------------------------------------------------------------------


def test_a_rotated_key_is_fetched_and_accepted(make_bearer_app, issuer, new_user):
    uid, _ = new_user()
    client = make_bearer_app(oidc={"jwks_refresh_min_seconds": 0.5}).test_client()
    assert client.get("/auth/whoami", headers=bearer(issuer.token(uid))).status_code == 200
    time.sleep(0.6)  # within jwks_refresh_min_seconds of the last fetch the keys are not fetched again
    issuer.rotate()
    response = client.get("/auth/whoami", headers=bearer(issuer.token(uid)))
    assert response.status_code == 200, response.json
    assert issuer.jwks_fetches == 2


def test_unknown_key_ids_fetch_the_keys_at_most_once_per_interval(make_bearer_app, issuer, new_user):
    uid, _ = new_user()
    client = make_bearer_app(oidc={"jwks_refresh_min_seconds": 1}).test_client()
    assert client.get("/auth/whoami", headers=bearer(issuer.token(uid))).status_code == 200
    assert issuer.jwks_fetches == 1
    time.sleep(1.1)
    strangers = [TokenIssuer.new_key() for _ in range(3)]
    for key in strangers * 5:
        response = client.get("/auth/whoami", headers=bearer(issuer.token(uid, key=key)))
        assert "publishes no RS256 key" in refusal(response)
    assert issuer.jwks_fetches == 2  # one refetch for fifteen unknown key ids
    # a key published in the meantime is refused until the interval has passed, then fetched
    issuer.rotate()
    assert "publishes no RS256 key" in refusal(client.get("/auth/whoami", headers=bearer(issuer.token(uid))))
    time.sleep(1.1)
    assert client.get("/auth/whoami", headers=bearer(issuer.token(uid))).status_code == 200
    assert issuer.jwks_fetches == 3


# -- opaque tokens -------------------------------------------------------------------------------------


@pytest.fixture
def introspecting_client(make_bearer_app):
    return make_bearer_app(introspection_client_id=INTROSPECTOR[0],
                           introspection_client_secret=INTROSPECTOR[1]).test_client()


def test_an_active_opaque_token_is_introspected_once_and_remembered(introspecting_client, issuer, new_user):
    uid, user_uuid = new_user()
    token = issuer.opaque_token(uid)
    for _ in range(3):
        response = introspecting_client.get("/bearer-probe/", headers=bearer(token))
        assert response.status_code == 200, response.json
    assert response.json["uuid"] == user_uuid and response.json["attributes"]["scopes"] == ["scim:read", "scim:write"]
    assert issuer.introspections == 1
    cache = introspecting_client.application.extensions["didmos"].service("bearer_auth").introspected
    assert list(cache._answers) == [hashlib.sha256(token.encode()).hexdigest()]  # a hash, never the token


def test_an_inactive_opaque_token_is_refused_and_not_remembered(introspecting_client, issuer, new_user):
    uid, _ = new_user()
    token = issuer.opaque_token(uid, active=False)
    for _ in range(2):
        assert "not active" in refusal(introspecting_client.get("/auth/whoami", headers=bearer(token)))
    assert issuer.introspections == 2


def test_a_remembered_answer_does_not_outlive_the_token(introspecting_client, issuer, new_user):
    uid, _ = new_user()
    token = issuer.opaque_token(uid, expires_in=2)
    assert introspecting_client.get("/auth/whoami", headers=bearer(token)).status_code == 200
    time.sleep(2.1)
    assert "not active" in refusal(introspecting_client.get("/auth/whoami", headers=bearer(token)))
    assert issuer.introspections == 2


@pytest.mark.parametrize("answer, description", [
    ({"aud": "https://other.test/api"}, "not meant for this API"),
    ({"iss": "https://elsewhere.test"}, "names the issuer 'https://elsewhere.test'"),
    ({"token_type": "refresh_token"}, "not an access token"),
    ({"cnf": {"jkt": "abc"}}, "bound to a key"),
])
def test_introspection_answers_are_checked(introspecting_client, issuer, new_user, answer, description):
    uid, _ = new_user()
    response = introspecting_client.get("/auth/whoami", headers=bearer(issuer.opaque_token(uid, **answer)))
    assert description in refusal(response)


def test_opaque_tokens_without_an_introspecting_provider_are_refused(client, issuer, new_user):
    uid, _ = new_user()
    assert "no provider is configured to introspect" in refusal(
        client.get("/auth/whoami", headers=bearer(issuer.opaque_token(uid))))
    assert issuer.introspections == 0


# -- shadow accounts -----------------------------------------------------------------------------------


def test_jit_creates_the_account_once_and_the_pdp_treats_it_as_a_user(make_bearer_app, issuer, didmos_slapd):
    client = make_bearer_app(jit=True, jit_claims={"email": "mail", "given_name": "givenName",
                                                   "family_name": "sn", "name": "cn"}).test_client()
    subject = f"jit-{uuid.uuid4().hex[:8]}"
    token = issuer.token(subject, email=f"{subject}@example.org", given_name="Jo", family_name="Tanaka")
    first = client.get("/auth/whoami", headers=bearer(token))
    assert first.status_code == 200, first.json
    assert client.get("/auth/whoami", headers=bearer(token)).json == first.json
    conn = didmos_slapd.admin_connection()
    found = conn.search_s(PEOPLE, ldap.SCOPE_ONELEVEL, f"(uid={subject})")
    assert len(found) == 1
    dn, attrs = found[0]
    attrs = {k: [v.decode() for v in vs] for k, vs in attrs.items()}
    assert dn == first.json["dn"] and attrs["didmosUUID"] == [first.json["id"]]
    assert attrs["mail"] == [f"{subject}@example.org"] and attrs["givenName"] == ["Jo"] and attrs["sn"] == ["Tanaka"]
    assert attrs["cn"] == ["Jo Tanaka"] and attrs["didmosUserType"] == ["external"]
    assert attrs["didmosRoleAssignment"] == [STANDARDUSER]
    me = client.get("/scim/v2/Me", headers=bearer(token))
    assert me.status_code == 200 and me.json["userName"] == subject and me.json["id"] == first.json["id"]


def test_jit_derives_names_when_the_token_has_none(make_bearer_app, issuer, didmos_slapd):
    client = make_bearer_app(jit=True).test_client()
    subject = f"bare-{uuid.uuid4().hex[:8]}"
    assert client.get("/auth/whoami", headers=bearer(issuer.token(subject))).status_code == 200
    [(_, attrs)] = didmos_slapd.admin_connection().search_s(PEOPLE, ldap.SCOPE_ONELEVEL, f"(uid={subject})")
    assert attrs["cn"] == attrs["sn"] == attrs["displayName"] == [subject.encode()]


# -- side by side with Basic, scopes, challenges, OpenAPI ----------------------------------------------


def test_basic_still_works_beside_bearer_and_both_are_challenged(client, issuer, new_user):
    response = client.get("/auth/whoami", headers=basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD))
    assert response.status_code == 200 and response.json["method"] == "basic"
    uid, _ = new_user()
    assert client.get("/auth/whoami", headers=bearer(issuer.token(uid))).json["method"] == "bearer"
    anonymous = client.get("/auth/whoami")
    assert anonymous.status_code == 401
    assert anonymous.headers.getlist("WWW-Authenticate") == ['Basic realm="didmos", charset="UTF-8"',
                                                             'Bearer realm="didmos"']


def test_without_providers_only_didmos_own_tokens_are_accepted(make_app):
    client = make_app().test_client()
    assert "bearer_auth" not in client.application.extensions["didmos"].services
    response = client.get("/auth/whoami", headers=bearer("anything"))
    assert response.status_code == 401
    [challenge] = response.headers.getlist("WWW-Authenticate")  # about the token it sent (RFC 6750 3)
    assert challenge.startswith('Bearer realm="didmos", error="invalid_token"'), challenge
    anonymous = client.get("/auth/whoami")  # no credentials: both schemes are offered
    assert sorted(anonymous.headers.getlist("WWW-Authenticate")) == [
        'Basic realm="didmos", charset="UTF-8"', 'Bearer realm="didmos"']


def test_a_read_only_token_reads_and_cannot_write(client, issuer, new_user):
    uid, _ = new_user()
    change = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "Changed"}]}
    read_only = bearer(issuer.token(uid, scope="openid scim:read"))
    assert client.get("/scim/v2/Me", headers=read_only).status_code == 200
    refused = client.patch("/scim/v2/Me", json=change, headers=read_only)
    assert refused.status_code == 403 and "lacks the scope 'scim:write'" in refused.json["detail"]
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="didmos", error="insufficient_scope"')
    assert 'scope="scim:write"' in refused.headers["WWW-Authenticate"]
    # the same user with the write scope may: the PDP grants standarduser its displayName
    allowed = client.patch("/scim/v2/Me", json=change, headers=bearer(issuer.token(uid)))
    assert allowed.status_code == 200 and allowed.json["displayName"] == "Changed"


def test_a_token_without_the_read_scope_is_403_everywhere(client, issuer, new_user):
    uid, _ = new_user()
    for path in ("/auth/whoami", "/scim/v2/Me"):
        response = client.get(path, headers=bearer(issuer.token(uid, scope="openid")))
        assert response.status_code == 403, path
        assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
        assert 'scope="scim:read"' in response.headers["WWW-Authenticate"]


def test_empty_scope_settings_require_no_scope(make_bearer_app, issuer, new_user):
    uid, _ = new_user()
    client = make_bearer_app(auth={"scopes": {"read": "", "write": ""}}).test_client()
    change = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": "Mine"}]}
    response = client.patch("/scim/v2/Me", json=change, headers=bearer(issuer.token(uid, scope=None)))
    assert response.status_code == 200, response.json


def test_the_authorize_vote_denies_what_the_scopes_do_not_cover_and_leaves_the_rest_to_the_roles(make_bearer_app):
    host = make_bearer_app().extensions["didmos"]
    superadmin = f"didmosUUID={SUPERADMIN_ID},{PEOPLE}"
    read, write = Action("read", "User", superadmin), Action("modify-replace", "User", superadmin, ("sn",))

    def actor(method, scopes):
        return Actor(dn=superadmin, uuid=SUPERADMIN_ID, method=method, attributes={"scopes": scopes})

    assert host.authorize(actor("bearer", ["scim:read", "scim:write"]), write) is True
    assert host.authorize(actor("bearer", ["scim:read"]), read) is True
    assert host.authorize(actor("bearer", ["scim:read"]), write) is False
    assert host.authorize(actor("bearer", []), read) is False
    assert host.authorize(actor("basic", []), write) is True  # Basic actors have no scopes to lack


def test_the_openapi_document_declares_both_schemes(client, issuer):
    schemes = client.get("/openapi.json").json["components"]["securitySchemes"]
    assert schemes["basicAuth"]["type"] == "http" and schemes["basicAuth"]["scheme"] == "basic"
    assert {k: schemes["bearerAuth"][k] for k in ("type", "scheme", "bearerFormat")} == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert issuer.issuer in schemes["bearerAuth"]["description"]


# -- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry, message", [
    ({"audience": AUDIENCE}, "auth.oidc.providers[0].issuer is required"),
    ({"issuer": "https://idp.example.org"}, "auth.oidc.providers[0].audience is required"),
    ({"issuer": "http://idp.example.org", "audience": AUDIENCE}, "auth.oidc.providers[0].issuer must be an https URL"),
    ({"issuer": "https://idp.example.org", "audience": AUDIENCE, "algorithms": ["RS256", "HS256"]},
     "auth.oidc.providers[0].algorithms must not contain 'HS256'"),
    ({"issuer": "https://idp.example.org", "audience": AUDIENCE, "algorithms": ["none"]},
     "auth.oidc.providers[0].algorithms must not contain 'none'"),
    ({"issuer": "https://idp.example.org", "audience": AUDIENCE, "introspection_client_id": "x"},
     "introspection_client_id and introspection_client_secret go together"),
    ({"issuer": "https://idp.example.org", "audience": AUDIENCE, "audiance": "typo"},
     "unknown setting auth.oidc.providers[0].audiance"),
    ({"issuer": "https://idp.example.org", "audience": AUDIENCE, "jit_parent": "not a dn"},
     "auth.oidc.providers[0].jit_parent must be a DN"),
])
def test_a_bad_provider_entry_stops_start_up_naming_the_key(didmos_overrides, entry, message):
    with pytest.raises(ConfigError) as caught:
        create_app(auth={"oidc": {"providers": [entry]}}, directory=didmos_overrides["directory"])
    assert message in caught.value.message


def test_parse_bearer():
    assert parse_bearer(None) is None and parse_bearer("Basic abc") is None
    assert parse_bearer("Bearer abc.def") == "abc.def" and parse_bearer("bearer  xyz ") == "xyz"
    assert parse_bearer("Bearer") == ""


class Searches:
    """Counts the directory searches of the requests made while it is installed."""

    def __init__(self):
        self.count = 0

    @hookimpl
    def didmos_ldap_post_operation(self, operation, result, actor):
        if operation.kind == "search":
            self.count += 1


def test_the_account_of_a_subject_is_remembered_and_forgotten_on_a_write(make_app, issuer, new_user):
    searches = Searches()
    app = make_app(Probe(), searches, auth={"oidc": {"providers": [provider(issuer)]}})
    client = app.test_client()
    uid, user_uuid = new_user()
    token = bearer(issuer.token(uid))
    assert client.get("/auth/whoami", headers=token).status_code == 200
    before = searches.count
    assert client.get("/auth/whoami", headers=token).status_code == 200
    assert searches.count == before  # the second request found the account without a search
    with app.test_request_context():  # a write through didmos (as an API request makes it) forgets it
        app.extensions["didmos"].service("directory").modify(
            f"didmosUUID={user_uuid},{PEOPLE}", [(ldap.MOD_REPLACE, "didmosActive", [False])])
    assert refusal(client.get("/auth/whoami", headers=token)) == "the account is deactivated"
