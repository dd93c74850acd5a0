"""Bearer tokens (RFC 6750) issued by external OpenID Connect providers (``auth.oidc.providers``).

A JWT access token is checked before anything is verified: its algorithm must be an asymmetric one
that its provider allows (``none`` and the HMAC family are refused outright, so that no token can make
a public key serve as an HMAC secret), and its unverified ``iss`` must name a configured provider.
Then its signature is verified with the provider's keys, found through the discovery document
(``{issuer}/.well-known/openid-configuration``) and its ``jwks_uri``, and its ``iss``, ``aud``,
``exp`` and ``nbf`` are checked. Keys are cached; a key id that is not among them fetches the key set
again, at most once every ``auth.oidc.jwks_refresh_min_seconds`` per provider, so a stream of made-up
key ids costs the provider nothing.

Any other token is asked about at the introspection endpoint (RFC 7662) of each provider that has an
introspection client. An active answer is remembered, under a hash of the token, for
``auth.oidc.introspection_cache_seconds`` and never past the token's ``exp``.

The token's user is the directory entry whose ``attribute`` holds the value of the token's ``claim``;
with ``jit`` a subject seen for the first time gets a shadow account.

Every refusal of a token is a 401 with ``WWW-Authenticate: Bearer error="invalid_token"`` and a
description (RFC 6750 3.1); a token without a required scope is a 403 ``insufficient_scope``; a
provider that cannot be reached is a 503, because the token may well be good.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import math
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from didmos_host.errors import (
    AlreadyExists,
    AuthenticationFailed,
    ConfigError,
    OperationRejected,
    Unavailable,
)
from didmos_host.records import Actor

log = logging.getLogger("didmos.auth")

#: Signature algorithms a provider may allow: the asymmetric ones. ``none`` and HS256/384/512 are
#: refused whatever the configuration says.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "ES256K", "EdDSA", "Ed25519", "Ed448")
DEFAULT_ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")
#: The key type (``kty``) each algorithm family verifies with.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
#: Larger discovery documents, key sets or introspection answers are refused unread.
MAX_DOCUMENT_BYTES = 1 << 20
#: Remembered introspection answers at most; a full cache is emptied (it only costs introspections).
MAX_INTROSPECTION_ENTRIES = 100_000
#: RFC 6750 2.1: the characters of a bearer token.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: ppolicy's value of pwdAccountLockedTime for a lock set by an administrator (no expiry).
ADMINISTRATIVE_LOCK = "000001010000Z"
#: Attributes of the account the token's user is mapped to.
_ACCOUNT_ATTRIBUTES = ["didmosUUID", "didmosTenant", "didmosActive", "pwdAccountLockedTime"]

_PROVIDER_KEYS = ("issuer", "audience", "algorithms", "claim", "attribute", "introspection_client_id",
                  "introspection_client_secret", "jit", "jit_parent", "jit_claims")


# -- errors --------------------------------------------------------------------------------------------


def _quoted(text: str, limit: int = 300) -> str:
    """``text`` as the value of an auth-param: RFC 6750 3 allows neither ``"`` nor ``\\`` in it. Cut to
    ``limit`` characters, because parts of it (an issuer, a key id) come from the token."""
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return re.sub(r'[^\x20-\x7e]|["\\]', "'", text)


def invalid_token(description: str, realm: str, **kwargs) -> AuthenticationFailed:
    """A 401 whose ``WWW-Authenticate`` says why the token was refused (RFC 6750 3.1)."""
    challenge = f'Bearer realm="{_quoted(realm)}", error="invalid_token", error_description="{_quoted(description)}"'
    return AuthenticationFailed(f"invalid bearer token: {description}", challenges=[challenge], **kwargs)


class InsufficientScope(OperationRejected, AuthenticationFailed):
    """The token is good but lacks a scope the action needs: 403 ``insufficient_scope`` (RFC 6750 3.1).

    An :class:`OperationRejected`, because that is what the ``didmos_ldap_pre_operation`` hook raises
    to reject a write; an :class:`AuthenticationFailed` too, because that is what makes the host's
    ``add_error_headers`` send the challenge that names the missing scope.
    """

    status = 403

    def __init__(self, scope: str, realm: str, doing: str):
        challenge = (f'Bearer realm="{_quoted(realm)}", error="insufficient_scope", '
                     f'error_description="the token lacks the scope {_quoted(scope)}", scope="{_quoted(scope)}"')
        super().__init__(f"the bearer token lacks the scope {scope!r}, which is needed to {doing}",
                         challenges=[challenge], detail={"required_scope": scope})


class AccountCache:
    """The account a token's subject maps to, remembered for ``auth.credential_cache_seconds`` (as Basic
    remembers a verified password), so a bearer request costs no directory search. A write to the
    entry through didmos forgets it at once (``forget_dn``, from the post-operation hook); a change made
    directly in LDAP is seen within the lifetime. 0 disables it."""

    def __init__(self, lifetime: float, max_entries: int = 10000):
        self.lifetime, self.max_entries = lifetime, max_entries
        self._entries: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, issuer: str, subject: str):
        found = self._entries.get((issuer, subject))
        if found is None or found[0] < time.monotonic():
            return None
        return found[1]

    def put(self, issuer: str, subject: str, entry) -> None:
        if self.lifetime <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # bounded: a burst of new subjects starts it over
            self._entries[(issuer, subject)] = (time.monotonic() + self.lifetime, entry)

    def forget_dn(self, dn: str) -> None:
        wanted = dn.lower()
        with self._lock:
            for key in [k for k, (_, entry) in self._entries.items() if entry.dn.lower() == wanted]:
                del self._entries[key]


def missing_scope(scopes: Mapping[str, Any], actor: Actor, operation: str) -> str | None:
    """The scope (``auth.scopes.read`` or ``.write``) a bearer actor lacks for ``operation``, or None.

    Reading needs the read scope, every other operation the read and the write scope. An empty scope
    setting is not required. Actors that did not authenticate with a bearer token need no scope.
    """
    if actor.method != "bearer":
        return None
    held = set(actor.attributes.get("scopes") or ())
    needed = [scopes.get("read")] + ([] if operation == "read" else [scopes.get("write")])
    return next((scope for scope in needed if scope and scope not in held), None)


# -- configuration -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One entry of ``auth.oidc.providers``, checked, with its defaults filled in."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    claim: str = "sub"
    attribute: str = "uid"
    introspection_client_id: str = ""
    introspection_client_secret: str = ""
    jit: bool = False
    #: Where shadow accounts go; empty: ``ldap.people_dn``.
    jit_parent: str = ""
    jit_claims: Mapping[str, str] = field(default_factory=dict)

    @property
    def introspects(self) -> bool:
        return bool(self.introspection_client_id)


def secure_url(url: str) -> bool:
    """https, or http to this machine (a provider on loopback, as in tests): anything else could be
    read or changed on the way, and whoever changes the keys forges tokens."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    if parts.scheme != "http" or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _attribute_name(value: Any) -> bool:
    from didmos_ldap.filters import eq

    try:
        eq(value, "x")  # checks the name as every filter does (RFC 4512)
    except (ValueError, TypeError):
        return False
    return True


def _is_dn(value: Any) -> bool:
    import ldap.dn

    return isinstance(value, str) and bool(value) and ldap.dn.is_dn(value)


def parse_providers(value: Any) -> list[Provider]:
    """``auth.oidc.providers`` as :class:`Provider` records; :class:`ConfigError` naming the bad key."""
    if not isinstance(value, list):
        raise ConfigError(f"auth.oidc.providers must be a list of tables (one per provider), got {value!r}")
    providers, issuers = [], set()
    for index, entry in enumerate(value):
        where = f"auth.oidc.providers[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where} must be a table such as {{issuer = \"https://idp.example.org\", "
                              f"audience = \"https://didmos.example.org/api\"}}, got {entry!r}")
        entry = {str(key).lower(): item for key, item in entry.items()}
        unknown = sorted(set(entry) - set(_PROVIDER_KEYS))
        if unknown:
            raise ConfigError(f"unknown setting {where}.{unknown[0]}; a provider has the keys "
                              f"{', '.join(_PROVIDER_KEYS)}")
        provider = _parse_provider(where, entry)
        if provider.issuer in issuers:
            raise ConfigError(f"{where}.issuer {provider.issuer!r} is configured twice; one entry per issuer")
        issuers.add(provider.issuer)
        providers.append(provider)
    return providers


def _parse_provider(where: str, entry: dict[str, Any]) -> Provider:
    def text(key: str, *, required: bool = False, default: str = "") -> str:
        found = entry.get(key, default)
        if not isinstance(found, str) or (required and not found):
            wanted = "is required: a non-empty string" if required else "must be a string"
            raise ConfigError(f"{where}.{key} {wanted}, got {found!r}" if key in entry
                              else f"{where}.{key} {wanted}; the entry has none")
        return found

    issuer = text("issuer", required=True)
    parts = urllib.parse.urlsplit(issuer)
    if not secure_url(issuer) or parts.query or parts.fragment:
        raise ConfigError(f"{where}.issuer must be an https URL without query or fragment (http only to "
                          f"localhost or a loopback address), got {issuer!r}")
    audience = text("audience", required=True)
    algorithms = entry.get("algorithms", list(DEFAULT_ALGORITHMS))
    if not isinstance(algorithms, list) or not algorithms or not all(isinstance(a, str) for a in algorithms):
        raise ConfigError(f"{where}.algorithms must be a non-empty list of algorithm names, got {algorithms!r}")
    for algorithm in algorithms:
        if algorithm.lower() == "none" or algorithm.upper().startswith("HS"):
            raise ConfigError(f"{where}.algorithms must not contain {algorithm!r}: unsigned and HMAC-signed tokens "
                              f"are never accepted; use {', '.join(DEFAULT_ALGORITHMS)}")
        if algorithm not in ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"{where}.algorithms: unknown algorithm {algorithm!r}; known: "
                              f"{', '.join(ASYMMETRIC_ALGORITHMS)}")
    claim = text("claim", required=True, default="sub")
    attribute = text("attribute", required=True, default="uid")
    if not _attribute_name(attribute):
        raise ConfigError(f"{where}.attribute must be an LDAP attribute name such as 'uid' or 'mail', "
                          f"got {attribute!r}")
    client_id = text("introspection_client_id")
    secret = text("introspection_client_secret")
    if bool(client_id) != bool(secret):
        raise ConfigError(f"{where}: introspection_client_id and introspection_client_secret go together; "
                          f"set both (to introspect opaque tokens) or neither")
    jit = entry.get("jit", False)
    if not isinstance(jit, bool):
        raise ConfigError(f"{where}.jit must be true or false, got {jit!r}")
    jit_parent = text("jit_parent")
    if jit_parent and not _is_dn(jit_parent):
        raise ConfigError(f"{where}.jit_parent must be a DN such as 'ou=people,dc=example,dc=org', got {jit_parent!r}")
    jit_claims = entry.get("jit_claims", {})
    if not isinstance(jit_claims, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and _attribute_name(v) for k, v in jit_claims.items()):
        raise ConfigError(f"{where}.jit_claims must map claim names to LDAP attribute names, such as "
                          f"{{email = \"mail\", given_name = \"givenName\"}}, got {jit_claims!r}")
    return Provider(issuer=issuer, audience=audience, algorithms=tuple(algorithms), claim=claim, attribute=attribute,
                    introspection_client_id=client_id, introspection_client_secret=secret, jit=jit,
                    jit_parent=jit_parent, jit_claims=dict(jit_claims))


def check_providers(value: Any) -> bool:
    """Validator condition of ``auth.oidc.providers``: raises :class:`ConfigError` naming the bad key,
    which says more than a condition's fixed message could."""
    parse_providers(value)
    return True


# -- talking to providers ------------------------------------------------------------------------------


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is answered as an error: every URL fetched is checked first


class ProviderClient:
    """JSON over HTTP(S) to the providers, with a timeout, a size limit and no redirects."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirects)

    def get(self, url: str, issuer: str) -> dict[str, Any]:
        return self._json("GET", url, issuer, headers={"Accept": "application/json"})

    def post_form(self, url: str, form: Mapping[str, str], issuer: str, *, client: tuple[str, str]) -> dict[str, Any]:
        # client_secret_basic (RFC 6749 2.3.1): id and secret are form-encoded before base64
        pair = ":".join(urllib.parse.quote_plus(part, safe="") for part in client)
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded",
                   "Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
        return self._json("POST", url, issuer, headers=headers, data=urllib.parse.urlencode(form).encode())

    def _json(self, method: str, url: str, issuer: str, *, headers: dict[str, str],
              data: bytes | None = None) -> dict[str, Any]:
        if not secure_url(url):
            raise Unavailable(f"the OpenID provider {issuer} names {url!r}, which is neither https nor loopback "
                              f"http; didmos does not fetch it")
        try:
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_DOCUMENT_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise Unavailable(f"the OpenID provider {issuer} answered {exc.code} to {method} {url}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unavailable(f"the OpenID provider {issuer} cannot be reached at {url}: "
                              f"{getattr(exc, 'reason', exc)}") from exc
        if len(body) > MAX_DOCUMENT_BYTES:
            raise Unavailable(f"the OpenID provider {issuer} sent more than {MAX_DOCUMENT_BYTES} bytes from {url}")
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise Unavailable(f"the OpenID provider {issuer} sent no JSON from {url}") from exc
        if not isinstance(document, dict):
            raise Unavailable(f"the OpenID provider {issuer} sent no JSON object from {url}")
        return document


class ProviderKeys:
    """One provider's discovery document and signing keys, fetched when needed and shared by threads.

    Both are fetched again after ``max_age`` seconds; when that fails, the old ones serve on (and
    the failure is logged). A fetch that fails with nothing cached is not tried again for
    ``refresh_min`` seconds: requests in between get 503 at once instead of waiting for a timeout each.
    """

    def __init__(self, provider: Provider, client: ProviderClient, *, refresh_min: float, max_age: float):
        self.provider = provider
        self.client = client
        self.refresh_min = refresh_min
        self.max_age = max_age
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = -math.inf
        self._keys: list[Any] | None = None
        self._keys_at = -math.inf  # when the key set was last fetched (or tried)
        self._failure: tuple[float, Unavailable] | None = None
        #: How often the key set was fetched (tests and `bench` read it).
        self.jwks_fetches = 0

    def metadata(self) -> dict[str, Any]:
        """The discovery document; its ``issuer`` is checked to be the configured one."""
        with self._lock:
            return self._current_metadata()

    def key(self, kid: str | None, algorithm: str) -> Any | None:
        """The key that verifies a token signed with ``algorithm`` under key id ``kid``, or None when the
        provider publishes none (after one fetch of its key set, if the last is old enough)."""
        with self._lock:
            now = time.monotonic()
            if self._keys is None or now - self._keys_at >= self.max_age:
                self._refresh_keys(now, keep_old=self._keys is not None)
            found = _select_key(self._keys or [], kid, algorithm)
            if found is None and now - self._keys_at >= self.refresh_min:
                self._refresh_keys(now, keep_old=True)  # rotated: a key we have not seen yet
                found = _select_key(self._keys or [], kid, algorithm)
            return found

    def _current_metadata(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < self.max_age:
            return self._metadata
        try:
            self._metadata = self._fetch_metadata(now)
        except Unavailable as exc:
            if self._metadata is None:
                raise
            log.warning("keeping the cached discovery document of %s: %s", self.provider.issuer, exc.message)
        self._metadata_at = now
        return self._metadata

    def _fetch_metadata(self, now: float) -> dict[str, Any]:
        self._check_recent_failure(now)
        issuer = self.provider.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            document = self.client.get(url, issuer)
            if document.get("issuer") != issuer:
                raise Unavailable(f"the discovery document at {url} names the issuer {document.get('issuer')!r}, "
                                  f"not the configured {issuer!r}; didmos trusts neither")
        except Unavailable as exc:
            self._failure = (now, exc)
            log.error("%s", exc.message)
            raise
        self._failure = None
        return document

    def _refresh_keys(self, now: float, *, keep_old: bool) -> None:
        self._keys_at = now  # a failed fetch counts too: the next is not tried before refresh_min
        try:
            self._check_recent_failure(now)
            url = self._current_metadata().get("jwks_uri")
            try:
                if not isinstance(url, str):
                    raise Unavailable(f"the discovery document of {self.provider.issuer} has no jwks_uri")
                self.jwks_fetches += 1
                self._keys = _import_keys(self.client.get(url, self.provider.issuer), self.provider.issuer)
            except Unavailable as exc:
                self._failure = (now, exc)
                log.error("%s", exc.message)
                raise
            self._failure = None
        except Unavailable as exc:
            if not keep_old:
                raise
            log.warning("keeping the cached keys of %s: %s", self.provider.issuer, exc.message)

    def _check_recent_failure(self, now: float) -> None:
        if self._failure is not None and now - self._failure[0] < self.refresh_min:
            raise self._failure[1]


def _import_keys(document: dict[str, Any], issuer: str) -> list[Any]:
    """The signing keys of a JWKS; symmetric keys, encryption keys and keys we cannot read are left out."""
    from joserfc.errors import JoseError
    from joserfc.jwk import JWKRegistry

    entries = document.get("keys")
    if not isinstance(entries, list):
        raise Unavailable(f"the key set of {issuer} has no 'keys' list")
    keys = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP") or entry.get("use") == "enc":
            continue
        public = {k: v for k, v in entry.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
        try:
            keys.append(JWKRegistry.import_key(public))
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("ignoring a key of %s that cannot be read (kid %r): %s", issuer, entry.get("kid"), exc)
    return keys


def _select_key(keys: list[Any], kid: str | None, algorithm: str) -> Any | None:
    key_type = _KEY_TYPES.get(algorithm[:2])
    usable = [key for key in keys if key.key_type == key_type and key.get("alg") in (None, algorithm)]
    if kid is not None:
        return next((key for key in usable if key.kid == kid), None)
    return usable[0] if len(usable) == 1 else None  # no kid: only an unambiguous key will do


# -- remembered introspection answers ------------------------------------------------------------------


class IntrospectionCache:
    """Active introspection answers by SHA-256 of the token (the token itself is never kept)."""

    def __init__(self, lifetime: float, max_entries: int = MAX_INTROSPECTION_ENTRIES):
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._answers: dict[str, tuple[float, Provider, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def get(self, key: str) -> tuple[Provider, dict[str, Any]] | None:
        with self._lock:
            found = self._answers.get(key)
            if found is None:
                return None
            if found[0] <= time.time():
                del self._answers[key]
                return None
            return found[1], found[2]

    def remember(self, key: str, provider: Provider, answer: dict[str, Any]) -> None:
        until = time.time() + self.lifetime
        if isinstance(answer.get("exp"), (int, float)):
            until = min(until, answer["exp"])
        if self.lifetime <= 0 or until <= time.time():
            return
        with self._lock:
            if len(self._answers) >= self.max_entries:
                self._answers.clear()  # crude but bounded
            self._answers[key] = (until, provider, answer)


# -- the authenticator ---------------------------------------------------------------------------------


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header ("" when it is empty); None for other schemes."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _b64_json(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    """``scope`` (space separated, RFC 8693/9068) or ``scp`` (a list, or a string)."""
    found = claims.get("scope", claims.get("scp"))
    if isinstance(found, str):
        return found.split()
    if isinstance(found, list):
        return [scope for scope in found if isinstance(scope, str)]
    return []


class BearerAuthenticator:
    """Turns a bearer token into an :class:`Actor`: verify or introspect it, then map its subject."""

    def __init__(self, host):
        settings = host.settings.auth
        self.host = host
        self.realm = settings.bearer.realm
        self.leeway = float(settings.oidc.leeway_seconds)
        self.scopes = {"read": settings.scopes.read, "write": settings.scopes.write}
        self.providers = parse_providers(list(settings.oidc.providers))
        self.client = ProviderClient(float(settings.oidc.http_timeout_seconds))
        self.keys = {provider.issuer: ProviderKeys(provider, self.client,
                                                   refresh_min=float(settings.oidc.jwks_refresh_min_seconds),
                                                   max_age=float(settings.oidc.metadata_max_age_seconds))
                     for provider in self.providers}
        self.introspected = IntrospectionCache(float(settings.oidc.introspection_cache_seconds))
        self.accounts = AccountCache(float(settings.credential_cache_seconds))
        self._jit_lock = threading.Lock()

    def _invalid(self, description: str, **kwargs) -> AuthenticationFailed:
        return invalid_token(description, self.realm, **kwargs)

    def authenticate(self, token: str) -> Actor:
        """The actor of a bearer token; :class:`AuthenticationFailed` (401) saying why it is refused."""
        if not token:
            raise self._invalid("the Authorization header names the Bearer scheme but carries no token")
        if not _TOKEN.fullmatch(token):
            raise self._invalid("the token contains characters a bearer token cannot have (RFC 6750 2.1)")
        if token.count(".") == 2:
            provider, claims = self.verify_jwt(token)
        else:
            provider, claims = self.introspect(token)
        if "cnf" in claims:
            raise self._invalid("the token is bound to a key or certificate (cnf); didmos accepts only "
                                "bearer tokens")
        actor = self.actor(provider, claims)
        scope = missing_scope(self.scopes, actor, "read")
        if scope is not None:
            raise InsufficientScope(scope, self.realm, "use this API")
        return actor

    # -- JWT -------------------------------------------------------------------------------------------

    def verify_jwt(self, token: str) -> tuple[Provider, dict[str, Any]]:
        """The provider and verified claims of a JWT access token."""
        from joserfc import jwt
        from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
        from joserfc.jwt import JWTClaimsRegistry

        header_part, payload_part, _ = token.split(".")
        try:
            header, unverified = _b64_json(header_part), _b64_json(payload_part)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise self._invalid("malformed JWT: its header and payload must be base64url-encoded JSON") from None
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise self._invalid("malformed JWT: its header and payload must be JSON objects")
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm.lower() == "none" or algorithm.upper().startswith("HS") \
                or algorithm not in ASYMMETRIC_ALGORITHMS:
            raise self._invalid(f"tokens signed with {algorithm!r} are not accepted; the provider must sign "
                                f"with an asymmetric algorithm")
        provider = next((p for p in self.providers if p.issuer == unverified.get("iss")), None)
        if provider is None:
            raise self._invalid(f"the token's issuer {unverified.get('iss')!r} is not a configured provider")
        if algorithm not in provider.algorithms:
            raise self._invalid(f"tokens of {provider.issuer} signed with {algorithm} are not accepted; allowed: "
                                f"{', '.join(provider.algorithms)}")
        if "crit" in header:
            raise self._invalid("the token names critical header parameters (crit), which didmos does not know")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise self._invalid("malformed JWT: kid must be a string")
        key = self.keys[provider.issuer].key(kid, algorithm)
        if key is None:
            raise self._invalid(f"{provider.issuer} publishes no {algorithm} key with kid {kid!r}" if kid is not None
                                else f"the token names no key (kid) and {provider.issuer} has no single "
                                     f"{algorithm} key")
        try:
            claims = jwt.decode(token, key, algorithms=[algorithm]).claims
        except (JoseError, ValueError, TypeError):
            raise self._invalid("the signature does not verify") from None
        registry = JWTClaimsRegistry(leeway=self.leeway, iss={"essential": True, "value": provider.issuer},
                                     aud={"essential": True, "value": provider.audience}, exp={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise self._invalid("the token expired") from None
        except MissingClaimError as exc:
            raise self._invalid(f"the token has no {exc.claim} claim") from None
        except JoseError as exc:
            claim = getattr(exc, "claim", "?")
            if claim == "aud":
                raise self._invalid(f"the token is not meant for this API: its aud does not contain "
                                    f"{provider.audience}") from None
            if claim == "nbf":
                raise self._invalid("the token is not valid yet (nbf)") from None
            raise self._invalid(f"the token's {claim} claim is not valid") from None
        return provider, claims

    # -- opaque tokens ---------------------------------------------------------------------------------

    def introspect(self, token: str) -> tuple[Provider, dict[str, Any]]:
        """The provider and the active introspection answer (RFC 7662) of an opaque token."""
        key = self.introspected.key(token)
        remembered = self.introspected.get(key)
        if remembered is not None:
            return remembered
        introspecting = [provider for provider in self.providers if provider.introspects]
        if not introspecting:
            raise self._invalid("the token is not a JWT, and no provider is configured to introspect tokens")
        failures = []
        for provider in introspecting:
            try:
                endpoint = self.keys[provider.issuer].metadata().get("introspection_endpoint")
                if not isinstance(endpoint, str):
                    raise Unavailable(f"the discovery document of {provider.issuer} has no introspection_endpoint")
                answer = self.client.post_form(
                    endpoint, {"token": token, "token_type_hint": "access_token"}, provider.issuer,
                    client=(provider.introspection_client_id, provider.introspection_client_secret))
            except Unavailable as exc:
                log.error("cannot introspect a token at %s: %s", provider.issuer, exc.message)
                failures.append(exc)
                continue
            if answer.get("active") is not True:
                continue
            self._check_introspected(provider, answer)
            self.introspected.remember(key, provider, answer)
            return provider, answer
        if len(failures) == len(introspecting):
            raise Unavailable("no OpenID provider could be asked about the token: "
                              + "; ".join(f.message for f in failures))
        raise self._invalid("the token is not active (expired, revoked or unknown to every provider)")

    def _check_introspected(self, provider: Provider, answer: dict[str, Any]) -> None:
        """RFC 7662 2.2 makes every member but ``active`` optional: check those that are there."""
        if "iss" in answer and answer["iss"] != provider.issuer:
            raise self._invalid(f"the introspection answer of {provider.issuer} names the issuer {answer['iss']!r}")
        audience = answer.get("aud")
        if audience is not None and provider.audience not in ([audience] if isinstance(audience, str) else audience):
            raise self._invalid(f"the token is not meant for this API: its aud does not contain {provider.audience}")
        now = time.time()
        if isinstance(answer.get("exp"), (int, float)) and answer["exp"] <= now - self.leeway:
            raise self._invalid("the token expired")
        if isinstance(answer.get("nbf"), (int, float)) and answer["nbf"] > now + self.leeway:
            raise self._invalid("the token is not valid yet (nbf)")
        token_type = answer.get("token_type")
        if isinstance(token_type, str) and token_type.lower() not in ("bearer", "access_token"):
            raise self._invalid(f"the token is a {token_type} token, not an access token")

    # -- the user --------------------------------------------------------------------------------------

    def actor(self, provider: Provider, claims: Mapping[str, Any]) -> Actor:
        """The directory account of the token's subject (created with ``jit``), as an actor."""
        subject = claims.get(provider.claim)
        if not isinstance(subject, str) or not subject:
            raise self._invalid(f"the token has no {provider.claim} claim naming its user")
        entry = self.accounts.get(provider.issuer, subject)
        if entry is None:
            entry = self._find(provider, subject)
            if entry is not None:
                self.accounts.put(provider.issuer, subject, entry)
        if entry is None and provider.jit:
            with self._jit_lock:  # two first requests of one subject in this process create one account
                entry = self._find(provider, subject) or self._create_shadow(provider, subject, claims)
        if entry is None:
            raise self._invalid(f"no account has {provider.attribute} {subject}")
        if (entry.first("didmosActive") or "TRUE").upper() == "FALSE":
            raise self._invalid("the account is deactivated", detail={"state": "inactive"})
        if entry.first("pwdAccountLockedTime") == ADMINISTRATIVE_LOCK:
            raise self._invalid("the account is locked", detail={"state": "locked"})
        client_id = claims.get("client_id", claims.get("azp"))
        return Actor(dn=entry.dn, uuid=entry.first("didmosUUID"), tenant=entry.first("didmosTenant"),
                     method="bearer", attributes={"scopes": _scopes(claims), "issuer": provider.issuer,
                                                  "client_id": client_id, "subject": subject})

    def _find(self, provider: Provider, subject: str):
        from didmos_ldap.filters import all_of, eq, present

        directory = self.host.service("directory")
        found = directory.search(self.host.settings.ldap.base_dn,
                                 all_of(eq(provider.attribute, subject), present("didmosUUID")),
                                 attrs=_ACCOUNT_ATTRIBUTES)
        if len(found) > 1:
            log.error("%d accounts have %s=%s; a token of %s cannot say which it is", len(found),
                      provider.attribute, subject, provider.issuer)
            raise self._invalid(f"several accounts have {provider.attribute} {subject}")
        return found[0] if found else None

    def _create_shadow(self, provider: Provider, subject: str, claims: Mapping[str, Any]):
        """A shadow account for a subject seen for the first time: the subject, the mapped claims,
        derived names, and what the PDP gives new users (their roles)."""
        import ldap.dn

        settings = self.host.settings
        entry_uuid = str(uuid.uuid4())
        attrs: dict[str, list[str]] = {
            "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"],
            "didmosUUID": [entry_uuid], provider.attribute: [subject], "didmosActive": ["TRUE"],
            "didmosUserType": ["external"], "didmosTenant": [settings.ldap.tenant],
        }
        taken = {name.lower() for name in attrs}
        for claim, attribute in provider.jit_claims.items():
            value = claims.get(claim)
            if isinstance(value, str):
                values = [value]
            elif isinstance(value, list):
                values = [item for item in value if isinstance(item, str)]
            else:
                values = []
            if values and attribute.lower() not in taken:  # never the subject, the id or the classes
                attrs[attribute] = values
        given, family = (attrs.get("givenName") or [""])[0], (attrs.get("sn") or [""])[0]
        full = " ".join(part for part in (given, family) if part) or (attrs.get("cn") or [subject])[0]
        attrs.setdefault("cn", [full])
        attrs.setdefault("sn", [family or full])
        attrs.setdefault("displayName", [attrs["cn"][0]])
        pdp = self.host.services.get("pdp")
        if pdp is not None:
            for attr, values in pdp.new_entry_attributes("User").items():
                attrs[attr] = list(dict.fromkeys([*attrs.get(attr, []), *values]))
        parent = provider.jit_parent or settings.ldap.people_dn
        dn = f"didmosUUID={ldap.dn.escape_dn_chars(entry_uuid)},{parent}"
        try:
            self.host.service("directory").add(dn, attrs)
        except AlreadyExists:
            found = self._find(provider, subject)  # another process created it first
            if found is None:
                raise
            return found
        log.info("created the account %s for %s %s of %s", dn, provider.attribute, subject, provider.issuer)
        return self._find(provider, subject)
