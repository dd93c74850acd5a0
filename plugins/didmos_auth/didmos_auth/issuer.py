"""didmos as an OAuth 2 token issuer: signing keys, clients, revocations and the ``/oauth`` endpoints.

authlib does the protocol: the token endpoint and its grants (client credentials, resource-owner
password), client authentication, RFC 9068 JWT access tokens and their validation, RFC 7009
revocation and RFC 7662 introspection. Keys and signatures are joserfc's, the JOSE library authlib's
own OAuth 2 code is built on (``authlib.jose`` is deprecated: it warns on import and goes with
authlib 2.0). What is didmos's own
is where things live and who may do what:

- **keys**: one entry (``tokens.keys_dn``, below ``ou=system``, which only the service account can
  read) holds the private signing key and the public halves of retired keys, each kept until the
  tokens it signed have expired. ``didmos directory init`` creates the first key through the
  ``didmos_directory_entries`` hook; ``didmos tokens rotate-keys`` replaces it. Every process keeps the
  keys for ``tokens.key_refresh_seconds`` and reads them again after that, or at once when a token
  names a key it does not know (another node rotated a moment ago).
- **clients**: an entry per client below ``tokens.clients_dn``: an scrypt hash of its secret, the
  scopes it may ask for, and the entry its tokens act as (their ``sub``, which the PDP decides for).
- **revocations**: the ``jti`` of each revoked token, in redis, until the token would have expired.

Tokens themselves are stored nowhere: they are signed JWTs that carry what they grant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import flask
import ldap
import ldap.dn
import redis
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.authenticate_client import (
    authenticate_client_secret_basic,
    authenticate_client_secret_post,
)
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidGrantError, OAuth2Error, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant, ResourceOwnerPasswordCredentialsGrant
from authlib.oauth2.rfc6749.util import extract_basic_authorization, scope_to_list
from authlib.oauth2.rfc6750.errors import InvalidTokenError
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator, JWTBearerTokenValidator
from joserfc import jws
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, KeySet, RSAKey, import_key

from didmos_host.api import Blueprint, MethodView
from didmos_host.app import current_actor, current_host
from didmos_host.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    DidmosError,
    NotFound,
    TooManyAttempts,
    Unavailable,
)
from didmos_host.records import Actor
from didmos_host.sentinel import connect_redis
from didmos_auth.throttle import FailureThrottle

log = logging.getLogger("didmos.tokens")

ALGORITHMS = ("RS256", "ES256")
SIGNING_ATTR, VERIFICATION_ATTR = "didmosSigningKey", "didmosVerificationKey"
CLIENT_ATTRS = ["cn", "didmosClientSecretHash", "didmosActsAs", "didmosScope", "didmosActive", "description"]
#: JWK members that may be published; everything else (the private parts d, p, q, dp, dq, qi, and
#: didmos's own bookkeeping members) never leaves the directory.
PUBLIC_MEMBERS = ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y")
CREATED, RETIRED = "didmos_created", "didmos_retired"  # JWK members: epoch seconds (RFC 7517 4: allowed)
#: Clock difference between nodes that dropping a retired key allows for.
CLOCK_SKEW_SECONDS = 60
#: After this long without a reload, a token naming an unknown key makes the keys be read again.
UNKNOWN_KID_RELOAD_SECONDS = 1.0
#: The client of password-grant requests that name no client: it has no secret, so it can get
#: tokens only with a user's password, and only that user can revoke them.
PUBLIC_CLIENT_ID = "public"
#: pwdAccountLockedTime of an account an administrator locked (not a lockout after failed binds: a
#: token did not come from guessing a password).
ADMINISTRATIVE_LOCK = "000001010000Z"
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 3.3: NQCHAR, no space
REVOKED_KEY = "didmos:tokens:revoked:"
#: scrypt cost: 2**14 x 8 blocks = 16 MiB and some 50 ms per check. The secrets are 256 random bits,
#: which no guessing finds whatever the hash; hashing keeps a copy of the directory from handing out
#: usable secrets. The cost stays moderate because every token request pays it; it is stored in each
#: hash, so it can be raised later without invalidating the secrets given out.
SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1
#: Claims an introspection answer shows (RFC 7662 2.2).
INTROSPECTED = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti")


# -- signing keys ------------------------------------------------------------------------------------


def generate_key(algorithm: str) -> dict[str, Any]:
    """A new private signing key for ``algorithm`` (RS256 or ES256) as a JWK dict; ``kid`` is its
    RFC 7638 thumbprint."""
    parameters = {"alg": algorithm, "use": "sig"}
    if algorithm == "ES256":
        key = ECKey.generate_key("P-256", parameters=parameters, private=True, auto_kid=True)
    elif algorithm == "RS256":
        key = RSAKey.generate_key(2048, parameters=parameters, private=True, auto_kid=True)
    else:
        raise ConfigError(f"token signing algorithm {algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}")
    return {**key.as_dict(private=True), CREATED: int(time.time())}


def public_jwk(jwk: dict[str, Any]) -> dict[str, Any]:
    """The publishable members of a JWK, private or public."""
    public = import_key({k: v for k, v in jwk.items() if k not in (CREATED, RETIRED)}).as_dict(private=False)
    return {member: public[member] for member in PUBLIC_MEMBERS if member in public}


@dataclass(frozen=True)
class Rotation:
    """What ``didmos tokens rotate-keys`` did: the new key's kid, the retired keys kept and dropped."""

    kid: str
    kept: list[str]
    dropped: list[str]


class SigningKeys:
    """The signing key and the keys that still verify, read from the directory entry ``dn``.

    Read at most every ``refresh_seconds`` (and at once when a token names an unknown key), so a
    rotation made by another process is followed after at most that long.
    """

    def __init__(self, host, dn: str, refresh_seconds: float):
        self.host, self.dn, self.refresh_seconds = host, dn, refresh_seconds
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._signing = None
        self._verifying: dict[str, Any] = {}

    def _read(self):
        entry = self.host.service("directory").get(self.dn, [SIGNING_ATTR, VERIFICATION_ATTR, "entryCSN"])
        if entry is None or entry.first(SIGNING_ATTR) is None:
            raise ConfigError(f"there is no token signing key at {self.dn} (setting tokens.keys_dn): run "
                              f"`didmos directory init`, which creates it")
        return entry

    def _load(self, *, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._loaded_at < self.refresh_seconds:
                return
            entry = self._read()
            signing = json.loads(entry.first(SIGNING_ATTR))
            retired = [json.loads(value) for value in entry.values(VERIFICATION_ATTR)]
            self._signing = import_key({k: v for k, v in signing.items() if k != CREATED})
            self._verifying = {jwk["kid"]: import_key(jwk) for jwk in [public_jwk(signing), *map(public_jwk, retired)]}
            self._loaded_at = time.monotonic()

    def signing_key(self):
        """The private key new tokens are signed with."""
        self._load()
        return self._signing

    def verification_key(self, kid: str | None):
        """The public key named ``kid``, or ``None`` when didmos has no such key (any more)."""
        self._load()
        key = self._verifying.get(kid) if kid else None
        if key is None and kid and time.monotonic() - self._loaded_at >= UNKNOWN_KID_RELOAD_SECONDS:
            self._load(force=True)  # another node may have rotated since we last read
            key = self._verifying.get(kid)
        return key

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The JWK Set to publish: public keys only, the signing key first."""
        self._load()
        return {"keys": [public_jwk(key.as_dict(private=False)) for key in self._verifying.values()]}

    def rotate(self, algorithm: str, keep_seconds: float) -> Rotation:
        """Sign with a new key from now on. The old one is kept (public half only: nothing signs with it
        any more) for ``keep_seconds``; retired keys older than that are dropped."""
        from didmos_ldap.filters import eq

        entry = self._read()
        now = int(time.time())
        old = json.loads(entry.first(SIGNING_ATTR))
        retired = [{**public_jwk(old), RETIRED: now}]
        dropped = []
        for jwk in map(json.loads, entry.values(VERIFICATION_ATTR)):
            (retired if jwk.get(RETIRED, 0) + keep_seconds > now else dropped).append(jwk)
        new = generate_key(algorithm)
        # Asserting the version read makes a concurrent rotation fail instead of losing a key.
        self.host.service("directory").modify(self.dn, [
            (ldap.MOD_REPLACE, SIGNING_ATTR, [json.dumps(new)]),
            (ldap.MOD_REPLACE, VERIFICATION_ATTR, [json.dumps(jwk) for jwk in retired]),
        ], if_match=str(eq("entryCSN", entry.first("entryCSN"))))
        self._loaded_at = float("-inf")
        return Rotation(kid=new["kid"], kept=[jwk["kid"] for jwk in retired], dropped=[jwk["kid"] for jwk in dropped])


# -- client secrets ----------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str) -> str:
    """An scrypt hash of ``secret`` in the PHC string format: ``$scrypt$ln=14,r=8,p=1$<salt>$<hash>``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=2 ** SCRYPT_LN, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"$scrypt$ln={SCRYPT_LN},r={SCRYPT_R},p={SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one ``stored`` (made by :func:`hash_secret`) is the hash of."""
    try:
        _, scheme, params, salt, digest = stored.split("$")
        cost = dict(part.split("=", 1) for part in params.split(","))
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        found = hashlib.scrypt(secret.encode("utf-8", "surrogatepass"), salt=_unb64(salt), n=2 ** int(cost["ln"]),
                               r=int(cost["r"]), p=int(cost["p"]), dklen=len(expected))
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable client secret hash %r...", stored[:20])
        return False
    return hmac.compare_digest(found, expected)


# -- clients -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client(ClientMixin):
    """An OAuth client as authlib sees it. Registered clients have a secret and act as an entry;
    the public client (:data:`PUBLIC_CLIENT_ID`) has neither and may only use the password grant."""

    client_id: str
    scopes: tuple[str, ...]
    acts_as: str | None = None
    secret_hash: str | None = field(default=None, repr=False)
    description: str = ""

    @property
    def registered(self) -> bool:
        return self.secret_hash is not None

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None  # no authorization endpoint, so no redirects

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_response_type(self, response_type):
        return False

    def get_allowed_scope(self, scope):
        """All its scopes when none is asked for; the ones asked for when it may have each; else None
        (authlib answers invalid_scope)."""
        if not scope:
            return " ".join(self.scopes)
        wanted = scope_to_list(scope)
        return " ".join(wanted) if set(wanted) <= set(self.scopes) else None

    def check_client_secret(self, client_secret):
        return self.registered and check_secret(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method, endpoint):
        if self.registered:
            return method in ("client_secret_basic", "client_secret_post")
        return method == "public" and endpoint == "token"

    def check_grant_type(self, grant_type):
        return grant_type in (("client_credentials", "password") if self.registered else ("password",))


@dataclass(frozen=True)
class Subject:
    """Who asks to revoke a token without being a client: a user authenticated as for any didmos API
    (HTTP Basic, or a didmos token once the Bearer path accepts them). It may revoke its own tokens."""

    actor: Actor

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "token_subject" and endpoint == "revocation"


class ClientRegistry:
    """The OAuth clients: entries ``cn=<name>,<tokens.clients_dn>`` of object class didmosTokenClient."""

    def __init__(self, host, base: str, scopes: list[str]):
        self.host, self.base, self.scopes = host, base, tuple(scopes)

    def dn_of(self, name: str) -> str:
        return f"cn={ldap.dn.escape_dn_chars(name)},{self.base}"

    def public(self) -> Client:
        return Client(client_id=PUBLIC_CLIENT_ID, scopes=self.scopes)

    @staticmethod
    def _client(entry) -> Client:
        return Client(client_id=entry.first("cn"), scopes=tuple(entry.values("didmosScope")),
                      acts_as=entry.first("didmosActsAs"), secret_hash=entry.first("didmosClientSecretHash"),
                      description=entry.first("description", ""))

    def get(self, name: str) -> Client | None:
        """The active registered client ``name``, or ``None`` (unknown, deactivated, or not a client name)."""
        if not name or not CLIENT_NAME.match(name) or name == PUBLIC_CLIENT_ID:
            return None
        entry = self.host.service("directory").get(self.dn_of(name), CLIENT_ATTRS)
        if entry is None or (entry.first("didmosActive") or "TRUE").upper() == "FALSE":
            return None
        return self._client(entry)

    def all(self) -> list[Client]:
        """Every registered client, by name."""
        try:
            found = self.host.service("directory").search(self.base, "(objectClass=didmosTokenClient)",
                                                          ldap.SCOPE_ONELEVEL, CLIENT_ATTRS)
        except NotFound:
            return []
        return sorted((self._client(entry) for entry in found), key=lambda client: client.client_id)

    def add(self, name: str, scopes: list[str], acts_as: str, description: str = "") -> str:
        """Register a client; returns its secret, which is stored only as a hash (show it once)."""
        if not CLIENT_NAME.match(name or "") or name == PUBLIC_CLIENT_ID:
            raise DidmosError(f"client name {name!r} is not allowed: 1 to 64 letters, digits, '.', '_' or '-', "
                              f"starting with a letter or digit, and not {PUBLIC_CLIENT_ID!r}", status=400)
        unknown = sorted(set(scopes) - set(self.scopes))
        if not scopes or unknown:
            raise DidmosError(f"scopes {unknown or '(none given)'} are not offered; a client may have any of "
                              f"{', '.join(self.scopes)} (setting tokens.scopes)", status=400)
        if not ldap.dn.is_dn(acts_as or ""):
            raise DidmosError(f"--acts-as {acts_as!r} is not a DN such as 'didmosUUID=...,ou=people,...'", status=400)
        directory = self.host.service("directory")
        actor = directory.get(acts_as, ["didmosUUID"])
        if actor is None or actor.first("didmosUUID") is None:
            raise DidmosError(f"the entry to act as, {acts_as}, does not exist or has no didmosUUID; a client "
                              f"acts as an entry the PDP knows (a user, a service account with roles)", status=400)
        secret = secrets.token_urlsafe(32)
        attributes = {"objectClass": ["didmosTokenClient"], "cn": [name],
                      "didmosClientSecretHash": [hash_secret(secret)], "didmosActsAs": [acts_as],
                      "didmosScope": list(dict.fromkeys(scopes))}
        if description:
            attributes["description"] = [description]
        try:
            directory.add(self.dn_of(name), attributes)
        except AlreadyExists:
            raise AlreadyExists(f"a client named {name!r} exists already; remove it first "
                                f"(didmos tokens remove-client {name})") from None
        except NotFound:
            raise ConfigError(f"{self.base} (setting tokens.clients_dn) does not exist: run "
                              f"`didmos directory init`") from None
        return secret

    def remove(self, name: str) -> None:
        """Delete the client ``name``: it gets no new tokens; those it has run out or can be revoked."""
        try:
            self.host.service("directory").delete(self.dn_of(name))
        except NotFound:
            raise NotFound(f"there is no client named {name!r}") from None


# -- revocations -------------------------------------------------------------------------------------


class RevocationList:
    """The ``jti`` of revoked tokens, in redis, each until the token would have expired anyway.

    Checked on every verification: when redis cannot be reached, verification fails with 503 rather
    than accept a token that may have been revoked.
    """

    def __init__(self, settings):
        self.settings = settings  # redis.url, or redis.sentinels (didmos_host.sentinel)
        self._redis: redis.Redis | None = None

    def _connection(self) -> redis.Redis:
        if self._redis is None:  # a connection pool, thread-safe; made on first use
            self._redis = connect_redis(self.settings, socket_connect_timeout=2, socket_timeout=2)
        return self._redis

    @staticmethod
    def _unavailable(exc: redis.RedisError) -> Unavailable:
        return Unavailable(f"the token revocation list (redis, setting redis.url) cannot be reached: {exc}")

    def revoke(self, jti: str, expires_at: float) -> None:
        ttl = int(expires_at - time.time()) + 1
        if ttl > 0:
            try:
                self._connection().set(REVOKED_KEY + jti, "1", ex=ttl)
            except redis.RedisError as exc:
                raise self._unavailable(exc) from exc

    def is_revoked(self, jti: str) -> bool:
        try:
            return bool(self._connection().exists(REVOKED_KEY + jti))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc


# -- the authlib authorization server ------------------------------------------------------------------


def _oauth_text(text: str) -> str:
    """``text`` as an RFC 6749 error_description allows: printable ASCII without '"' and '\\'."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" if c == '"' else "?" for c in text)


class ThrottledError(OAuth2Error):
    """Too many failed attempts: the error the check would have given (``invalid_client`` or
    ``invalid_grant``), with status 429 and ``Retry-After``. RFC 6749 has no code of its own for it."""

    status_code = 429

    def __init__(self, error: str, description: str, retry_after: int):
        super().__init__(description=_oauth_text(description), error=error)
        self.retry_after = retry_after

    def get_headers(self):
        return [*super().get_headers(), ("Retry-After", str(self.retry_after))]


@dataclass(frozen=True)
class ResourceOwner:
    """The user of a password grant, as authlib's token generator wants it."""

    actor: Actor

    def get_user_id(self):
        return self.actor.uuid


@dataclass(frozen=True)
class IssuedToken(TokenMixin):
    """A token didmos issued that verified (signature, issuer, audience, expiry, not revoked)."""

    claims: dict[str, Any]

    def check_client(self, client):
        if isinstance(client, Subject):
            return client.actor.uuid.lower() == str(self.claims.get("sub", "")).lower()
        return client.get_client_id() == self.claims.get("client_id")

    def get_scope(self):
        return self.claims.get("scope", "")

    def get_expires_in(self):
        return int(self.claims["exp"] - self.claims["iat"])

    def is_expired(self):
        return False  # an expired token is never made into an IssuedToken

    def is_revoked(self):
        return False  # neither is a revoked one


class TokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 access tokens signed with the current key. ``aud`` is ``tokens.audience``; ``sub`` is the
    didmosUUID of the user (password grant) or of the entry the client acts as (client credentials)."""

    def __init__(self, issuer: TokenIssuer, key):
        super().__init__(issuer.issuer_url(), alg=key.alg, expires_generator=issuer.settings.lifetime_seconds)
        self.didmos, self.key = issuer, key

    def get_jwks(self):
        return KeySet([self.key])  # a set: joserfc then names the key in the header (kid)

    def get_audiences(self, client, user, scope):
        return self.didmos.settings.audience

    def get_extra_claims(self, client, grant_type, user, scope):
        return {} if user is not None else {"sub": self.didmos.acting_uuid(client)}


class ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class PasswordGrant(ResourceOwnerPasswordCredentialsGrant):
    """A user's didmosUUID (or userName, as HTTP Basic accepts it) and password, checked by HTTP Basic's
    authenticator: its throttle, remembered logins and the directory's password policy apply."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "public"]

    def authenticate_user(self, username, password):
        return ResourceOwner(self.server.didmos.authenticate_owner(username, password))


class Revocation(RevocationEndpoint):
    """RFC 7009: the client a token was issued to, or the token's subject, revokes it."""

    CLIENT_AUTH_METHODS = ["token_subject", "client_secret_basic", "client_secret_post"]

    def query_token(self, token_string, token_type_hint):
        claims = self.server.didmos.claims_or_none(token_string)
        return IssuedToken(claims) if claims is not None else None

    def revoke_token(self, token, request):
        self.server.didmos.revocations.revoke(token.claims["jti"], token.claims["exp"])
        log.info("token %s revoked by %s", token.claims["jti"], getattr(request.client, "client_id", "its subject"))


class Introspection(IntrospectionEndpoint):
    """RFC 7662, for registered clients (resource servers among them): any valid token's claims."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string, token_type_hint):
        claims = self.server.didmos.claims_or_none(token_string)
        return IssuedToken(claims) if claims is not None else None

    def check_permission(self, token, client, request):
        return True  # only registered clients get this far

    def introspect_token(self, token):
        return {"active": True, "token_type": "Bearer",
                **{name: token.claims[name] for name in INTROSPECTED if name in token.claims}}


class Server(AuthorizationServer):
    """authlib's authorization server with didmos's clients, token generator, grants and endpoints."""

    def __init__(self, issuer: TokenIssuer):
        super().__init__(query_client=issuer.clients.get, save_token=self._keep_nothing)
        self.didmos = issuer
        self.scopes_supported = list(issuer.settings.scopes)
        self.register_token_generator("default", issuer.generate_token)
        self.register_client_auth_method("client_secret_basic", issuer.throttled(
            authenticate_client_secret_basic, lambda request: extract_basic_authorization(request.headers)))
        self.register_client_auth_method("client_secret_post", issuer.throttled(
            authenticate_client_secret_post,
            lambda request: (request.form.get("client_id"), request.form.get("client_secret"))))
        self.register_client_auth_method("public", issuer.public_client)
        self.register_client_auth_method("token_subject", issuer.token_subject)
        self.register_grant(ClientCredentials)
        if issuer.settings.password_grant:
            self.register_grant(PasswordGrant)
        self.register_endpoint(Revocation)
        self.register_endpoint(Introspection)

    @staticmethod
    def _keep_nothing(token, request):
        """Tokens are signed JWTs that carry what they grant: nothing to store."""


# -- the service -------------------------------------------------------------------------------------


class TokenIssuer:
    """The service ``token_issuer``: issues didmos's own tokens and verifies them for every API."""

    def __init__(self, host):
        self.host = host
        self.settings = host.settings.tokens
        self.keys = SigningKeys(host, self.settings.keys_dn, self.settings.key_refresh_seconds)
        self.clients = ClientRegistry(host, self.settings.clients_dn, list(self.settings.scopes))
        self.revocations = RevocationList(host.settings)
        throttle = host.settings.get("auth.throttle") or {}
        self.client_throttle = FailureThrottle(
            window_seconds=throttle.get("window_seconds", 300.0),
            max_per_pair=throttle.get("max_failures_per_user_address", 5),
            max_per_address=throttle.get("max_failures_per_address", 50))
        self._server: Server | None = None

    # -- what tokens say ----------------------------------------------------------------------------

    def issuer_url(self) -> str:
        """``tokens.issuer``, or else the base URL of the current request (``http://host[:port][/root]``)."""
        if self.settings.issuer:
            return self.settings.issuer.rstrip("/")
        if not flask.has_request_context():
            raise ConfigError("tokens.issuer is empty and there is no request to take the issuer from: set it "
                              "to the URL clients reach the API at, e.g. https://idm.example.org")
        return flask.request.url_root.rstrip("/")

    def grant_types(self) -> list[str]:
        return ["client_credentials"] + (["password"] if self.settings.password_grant else [])

    def metadata(self) -> dict[str, Any]:
        """The discovery document (RFC 8414 fields; no authorization endpoint and no ID tokens)."""
        base = self.issuer_url()
        methods = ["client_secret_basic", "client_secret_post"]
        return {
            "issuer": base,
            "token_endpoint": f"{base}/oauth/token",
            "jwks_uri": f"{base}/oauth/jwks",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "introspection_endpoint": f"{base}/oauth/introspect",
            "grant_types_supported": self.grant_types(),
            "scopes_supported": list(self.settings.scopes),
            "token_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": methods,
        }

    # -- issuing ------------------------------------------------------------------------------------

    def server(self) -> Server:
        if self._server is None:
            self._server = Server(self)
        return self._server

    def generate_token(self, **kwargs) -> dict[str, Any]:
        """authlib's token generator hook: a fresh generator per token, for the current key and issuer."""
        return TokenGenerator(self, self.keys.signing_key())(**kwargs)

    def acting_uuid(self, client: Client) -> str:
        """The didmosUUID of the entry ``client`` acts as; unauthorized_client when it is gone or deactivated."""
        entry = self.host.service("directory").get(client.acts_as, ["didmosUUID", "didmosActive"]) \
            if client.acts_as else None
        if entry is None or entry.first("didmosUUID") is None:
            raise UnauthorizedClientError(_oauth_text(
                f"the entry client {client.client_id} acts as, {client.acts_as}, no longer exists"))
        if (entry.first("didmosActive") or "TRUE").upper() == "FALSE":
            raise UnauthorizedClientError(_oauth_text(
                f"the entry client {client.client_id} acts as, {client.acts_as}, is deactivated"))
        return entry.first("didmosUUID")

    def authenticate_owner(self, username: str, password: str) -> Actor:
        """The password grant's user check, through HTTP Basic's authenticator (throttle included)."""
        try:
            basic = self.host.service("basic_auth")
        except LookupError:
            raise ConfigError("tokens.password_grant needs HTTP Basic's authenticator: set auth.basic.enabled "
                              "to true") from None
        try:
            return basic.authenticate(username, password, flask.request.remote_addr or "unknown")
        except TooManyAttempts as exc:
            raise ThrottledError("invalid_grant", exc.message, exc.retry_after) from exc
        except AuthenticationFailed as exc:
            raise InvalidGrantError(_oauth_text(exc.message)) from exc

    # -- client authentication methods (registered with authlib) ------------------------------------

    def throttled(self, authenticate, presented):
        """Wrap an authlib client authentication method in the failure throttle, per client and address.

        Every failed secret costs a scrypt hash, so guessing is slowed down as it is for passwords.
        """

        def method(query_client, request):
            client_id, secret = presented(request)
            if not (client_id and secret):
                return authenticate(query_client, request)  # not this method's credentials
            address = flask.request.remote_addr or "unknown"
            try:
                self.client_throttle.check(client_id, address)
            except TooManyAttempts as exc:
                raise ThrottledError("invalid_client", exc.message, exc.retry_after) from exc
            try:
                client = authenticate(query_client, request)
            except InvalidClientError:
                self.client_throttle.failed(client_id, address)
                raise
            if client is None:
                self.client_throttle.failed(client_id, address)
            else:
                self.client_throttle.succeeded(client_id, address)
            return client

        return method

    def public_client(self, query_client, request):
        """The client of a password grant that names none: no Authorization header, no client_id."""
        form = request.form
        if request.headers.get("Authorization") or form.get("client_id") or form.get("client_secret"):
            return None
        return self.clients.public()

    def token_subject(self, query_client, request):
        """A revocation request by a user rather than a client: whoever didmos authenticates it as."""
        client_id = extract_basic_authorization(request.headers)[0] or request.form.get("client_id")
        if client_id and query_client(client_id) is not None:
            return None  # a registered client: its own methods check its secret
        try:
            actor = current_actor(required=False)
        except TooManyAttempts as exc:
            raise ThrottledError("invalid_client", exc.message, exc.retry_after) from exc
        except AuthenticationFailed as exc:
            raise InvalidClientError(status_code=401, description=_oauth_text(exc.message)) from exc
        return Subject(actor) if actor is not None else None

    # -- verifying (for every API) ------------------------------------------------------------------

    def is_own(self, token: str) -> bool:
        """Whether ``token`` claims to be from this issuer (its ``iss``, read unverified): then
        :meth:`verify` is the one to check it."""
        try:
            payload = json.loads(jws.extract_compact(token.encode("ascii")).payload)
        except (JoseError, ValueError, UnicodeError, TypeError):
            return False
        return isinstance(payload, dict) and payload.get("iss") == self.issuer_url()

    def _invalid(self, reason: str, **kwargs) -> AuthenticationFailed:
        """A 401 saying why, worded as the Bearer path words its refusals (RFC 6750 3.1)."""
        realm = _oauth_text(self.host.settings.get("auth.bearer.realm") or "didmos")
        challenge = f'Bearer realm="{realm}", error="invalid_token", error_description="{_oauth_text(reason)}"'
        return AuthenticationFailed(f"invalid bearer token: {reason}", challenges=[challenge], **kwargs)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token didmos issued; :class:`AuthenticationFailed` when its signature (against
        the current and retired keys), issuer, audience or expiry is wrong, or it was revoked."""
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError, TypeError):
            raise self._invalid("the token is not a signed JWT") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise self._invalid("the token names no key (kid): didmos's tokens always do")
        key = self.keys.verification_key(kid)
        if key is None:
            raise self._invalid(f"didmos has no key with kid {kid[:80]!r} (never had, or retired long ago)")
        validator = JWTBearerTokenValidator(issuer=self.issuer_url(), resource_server=self.settings.audience)
        validator.get_jwks = lambda: KeySet([key])
        try:
            claims = validator.authenticate_token(token)  # the signature (authlib's RFC 9068 validator)
            claims.validate()  # iss, aud, exp, iat, jti, typ at+jwt; raises with the claim named
        except InvalidTokenError:
            raise self._invalid("the signature does not verify") from None
        except ExpiredTokenError:
            raise self._invalid("the token expired") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            raise self._invalid(f"the token's {exc.claim} claim is missing or wrong") from None
        except JoseError as exc:
            raise self._invalid(exc.description or exc.error) from None
        if self.revocations.is_revoked(str(claims["jti"])):
            raise self._invalid("the token was revoked")
        return dict(claims)

    def claims_or_none(self, token: str) -> dict[str, Any] | None:
        """:meth:`verify`'s claims, or ``None`` for a token that is not (or no longer) valid."""
        try:
            return self.verify(token)
        except AuthenticationFailed:
            return None

    def actor_for(self, claims: dict[str, Any]) -> Actor:
        """The actor a verified token speaks for: the entry whose didmosUUID is its ``sub``, read now, so
        that a deleted, deactivated or administratively locked account stops at once.

        It is a ``bearer`` actor like those of other providers' tokens, so the same scope rules apply
        (``auth.scopes.*``, enforced by the Bearer path of :mod:`didmos_auth.plugin`).
        """
        entry = self.host.service("directory").get_by_uuid(
            str(claims["sub"]), self.host.settings.ldap.base_dn,
            ["didmosUUID", "didmosTenant", "didmosActive", "pwdAccountLockedTime"])
        if entry is None:
            raise self._invalid(f"no account has didmosUUID {claims['sub']}")
        if (entry.first("didmosActive") or "TRUE").upper() == "FALSE":
            raise self._invalid("the account is deactivated", detail={"state": "inactive"})
        if entry.first("pwdAccountLockedTime") == ADMINISTRATIVE_LOCK:
            raise self._invalid("the account is locked", detail={"state": "locked"})
        return Actor(dn=entry.dn, uuid=entry.first("didmosUUID"), tenant=entry.first("didmosTenant"), method="bearer",
                     attributes={"scopes": scope_to_list(claims.get("scope") or "") or [], "issuer": claims["iss"],
                                 "client_id": claims.get("client_id"), "subject": claims["sub"],
                                 "jti": claims.get("jti")})

    def authenticate(self, token: str) -> Actor:
        """:meth:`verify` then :meth:`actor_for`: what the Bearer path needs for a token of ours."""
        return self.actor_for(self.verify(token))

    # -- administration -----------------------------------------------------------------------------

    def rotate_keys(self) -> Rotation:
        """A new signing key; the retired one verifies until every token it signed can have expired: the
        token lifetime, plus how long other processes may go on signing with it, plus clock skew."""
        keep = self.settings.lifetime_seconds + self.settings.key_refresh_seconds + CLOCK_SKEW_SECONDS
        return self.keys.rotate(self.settings.algorithm, keep)


# -- HTTP ------------------------------------------------------------------------------------------------

#: What /openapi.json says the OAuth endpoints answer: RFC 6749 5.2 error bodies from authlib, and the
#: didmos error body for what the host answers (429 of the throttle, 503 when the directory is down).
OAUTH_ERROR_RESPONSE = {
    "description": "An RFC 6749 5.2 error (`error`, `error_description`), or a didmos error body",
    "content": {"application/json": {"schema": {"anyOf": [
        {"type": "object", "required": ["error"],
         "properties": {"error": {"type": "string"}, "error_description": {"type": "string"},
                        "error_uri": {"type": "string"}}},
        {"$ref": "#/components/schemas/Error"},
    ]}}},
}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"responses": {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}}


blueprint = Blueprint("oauth", __name__, url_prefix="/oauth",
                      description="didmos as an OAuth 2 token issuer (docs/auth.md)",
                      error_response=OAUTH_ERROR_RESPONSE)
metadata_blueprint = Blueprint("oauth_metadata", __name__, description="Discovery of didmos's token issuer")


def _issuer() -> TokenIssuer:
    return current_host().service("token_issuer")


def _form(required: list[str], **properties: str) -> dict[str, Any]:
    """An OpenAPI requestBody of form fields (the OAuth endpoints take forms, RFC 6749 appendix B)."""
    schema = {"type": "object", "required": required,
              "properties": {name: {"type": "string", "description": text} for name, text in properties.items()}}
    return {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}}


@blueprint.route("/token")
class TokenEndpoint(MethodView):
    @blueprint.doc(**_form(
        ["grant_type"], grant_type="client_credentials, or password when tokens.password_grant is on",
        scope="Space-separated scopes; default: all the client may have",
        username="password grant: the user's didmosUUID", password="password grant: the password",
        client_id="client_secret_post: the client's name", client_secret="client_secret_post: its secret"))
    @blueprint.doc(**_ok({"type": "object", "required": ["access_token", "token_type"],
                          "properties": {"access_token": {"type": "string"}, "token_type": {"type": "string"},
                                         "expires_in": {"type": "integer"}, "scope": {"type": "string"}}},
                         "The access token (RFC 6749 5.1)"))
    def post(self):
        """Issue a signed access token.

        RFC 6749 4.4 (client_credentials) and 4.3 (password, when enabled); the token is an RFC 9068 JWT.
        Client credentials go in HTTP Basic (client_secret_basic) or in the form (client_secret_post).
        Errors are RFC 6749 5.2 bodies (`error`, `error_description`).
        """
        return _issuer().server().create_token_response()


@blueprint.route("/revoke")
class RevokeEndpoint(MethodView):
    @blueprint.doc(**_form(["token"], token="The access token", token_type_hint="access_token"))
    @blueprint.doc(**_ok({"type": "object"}, "Revoked, or there was nothing to revoke (RFC 7009 2.2)"))
    def post(self):
        """Revoke a token (RFC 7009).

        As the client it was issued to (its credentials as for the token endpoint), or as its subject
        (authenticated as for any API). 200 also for an unknown, expired or already revoked token.
        """
        return _issuer().server().create_endpoint_response("revocation")


@blueprint.route("/introspect")
class IntrospectEndpoint(MethodView):
    @blueprint.doc(**_form(["token"], token="The access token", token_type_hint="access_token"))
    @blueprint.doc(**_ok({"type": "object", "required": ["active"], "properties": {"active": {"type": "boolean"}}},
                         "RFC 7662 2.2: `active`, and the token's claims when it is"))
    def post(self):
        """Whether a token is active, and its claims (RFC 7662).

        For registered clients (client_secret_basic or client_secret_post).
        """
        return _issuer().server().create_endpoint_response("introspection")


@blueprint.route("/jwks")
class JwksEndpoint(MethodView):
    @blueprint.doc(**_ok({"type": "object", "required": ["keys"],
                          "properties": {"keys": {"type": "array", "items": {"type": "object"}}}}, "A JWK Set"))
    def get(self):
        """The keys that verify didmos's tokens (RFC 7517 JWK Set).

        The public halves of the current signing key and of retired keys whose tokens may still be valid.
        """
        return flask.jsonify(_issuer().keys.jwks())


@metadata_blueprint.route("/.well-known/openid-configuration")
class DiscoveryEndpoint(MethodView):
    @metadata_blueprint.doc(**_ok({"type": "object", "required": ["issuer", "token_endpoint", "jwks_uri"],
                                   "properties": {"issuer": {"type": "string"}}}, "RFC 8414 metadata"))
    def get(self):
        """The token issuer's discovery document.

        Its endpoints, keys, grant types, scopes and client authentication methods (RFC 8414 fields).
        """
        return flask.jsonify(_issuer().metadata())
