"""Fixtures shared by the didmos_auth tests: a real OpenID Connect provider on loopback.

``oidc_provider`` (session-scoped) is panva's ``oidc-provider``, an OpenID-certified provider that no one
here wrote, run by Node.js from ``oidc_provider/server.mjs`` on ``127.0.0.1`` and a free port. ``./run``
installs Node.js and the npm packages (``npm ci`` in ``oidc_provider/``). What the provider knows:

- ``didmos-test-client`` (confidential, ``client_secret_basic``): the ``client_credentials`` grant with
  scopes ``scim:read scim:write``. With the resource indicator :data:`API_RESOURCE` (or
  :data:`API_ES256_RESOURCE`) it gets a JWT access token (header ``typ: at+jwt``, RS256 or ES256) whose
  ``aud`` is the resource; without one an opaque token, which only introspection can check.
- ``didmos-short-lived-client``: the same, but its tokens live ``short_ttl`` seconds (2 by default).
- ``didmos-api``: the resource server's own credentials, for the introspection endpoint (RFC 7662).

Tokens and keys live in the provider's memory: :meth:`OIDCProvider.rotate_keys` restarts it, after which
opaque tokens issued before are unknown (inactive) and, by default, the old signing keys are gone. Since
the fixture is shared by the whole session, a test that rotates keys must fetch keys and tokens afresh
rather than keep them from another test.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from didmos_host.servers import free_port, stop_process

SERVER_DIR = Path(__file__).resolve().parent / "oidc_provider"
#: The resource indicator (RFC 8707) of the didmos API: its tokens are RS256-signed JWTs.
API_RESOURCE = "https://didmos.test/api"
#: A second resource indicator whose JWT access tokens are signed with ES256.
API_ES256_RESOURCE = "https://didmos.test/api-es256"
API_SCOPES = "scim:read scim:write"
# oidc-provider 9 calls URL.parse, which Node.js has from 20.18 on.
MINIMUM_NODE = (20, 18)


def _b64url_uint(number: int) -> str:
    size = max(1, (number.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(number.to_bytes(size, "big")).rstrip(b"=").decode()


def _thumbprint(jwk: dict[str, str], members: tuple[str, ...]) -> str:
    """The RFC 7638 thumbprint of ``jwk``: SHA-256 over its required ``members`` in canonical JSON."""
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def signing_keys() -> list[dict[str, str]]:
    """A fresh private RS256 key and a fresh private ES256 key as JWKs, each with its thumbprint as kid."""
    rsa_numbers = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    public = rsa_numbers.public_numbers
    rsa_jwk = {"kty": "RSA", "n": _b64url_uint(public.n), "e": _b64url_uint(public.e),
               "d": _b64url_uint(rsa_numbers.d), "p": _b64url_uint(rsa_numbers.p), "q": _b64url_uint(rsa_numbers.q),
               "dp": _b64url_uint(rsa_numbers.dmp1), "dq": _b64url_uint(rsa_numbers.dmq1),
               "qi": _b64url_uint(rsa_numbers.iqmp)}
    rsa_jwk.update(kid=_thumbprint(rsa_jwk, ("e", "kty", "n")), alg="RS256", use="sig")

    ec_numbers = ec.generate_private_key(ec.SECP256R1()).private_numbers()
    point = ec_numbers.public_numbers

    def coordinate(number: int) -> str:  # fixed length: 32 bytes for P-256 (RFC 7518 section 6.2.1.2)
        return base64.urlsafe_b64encode(number.to_bytes(32, "big")).rstrip(b"=").decode()

    ec_jwk = {"kty": "EC", "crv": "P-256", "x": coordinate(point.x), "y": coordinate(point.y),
              "d": coordinate(ec_numbers.private_value)}
    ec_jwk.update(kid=_thumbprint(ec_jwk, ("crv", "kty", "x", "y")), alg="ES256", use="sig")
    return [rsa_jwk, ec_jwk]


class OIDCProviderError(RuntimeError):
    """The test OpenID provider could not be started or did not answer as expected."""


class OIDCProvider:
    """panva's oidc-provider on ``http://127.0.0.1:port``, run by Node.js as a child process.

    ``directory`` holds its configuration (``config.json``, with the private keys) and its log
    (``provider.log``, every request and every error). See the module docstring for its clients.
    """

    def __init__(self, directory: Path, port: int, *, access_token_ttl: int = 60, short_ttl: int = 2) -> None:
        #: (client_id, secret) pairs, for HTTP Basic authentication at the provider.
        self.client = ("didmos-test-client", secrets.token_urlsafe(24))
        self.short_lived_client = ("didmos-short-lived-client", secrets.token_urlsafe(24))
        self.introspection_client = ("didmos-api", secrets.token_urlsafe(24))
        self.directory = Path(directory)
        self.port = port
        self.access_token_ttl = access_token_ttl
        #: Seconds that a token of :meth:`expiring_token` lives.
        self.short_ttl = short_ttl
        self.keys = signing_keys()
        self.config_path = self.directory / "config.json"
        self.log_path = self.directory / "provider.log"
        self._process: subprocess.Popen | None = None
        self._discovery: dict[str, Any] | None = None
        self._http = requests.Session()

    @property
    def issuer(self) -> str:
        """The issuer identifier, also the base URL: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running node process, else None."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def _write_config(self) -> None:
        config = {
            "jwks": {"keys": self.keys},
            "access_token_ttl": self.access_token_ttl,
            "scopes": ["openid", *API_SCOPES.split()],
            "clients": [
                {"client_id": self.client[0], "client_secret": self.client[1],
                 "grant_types": ["client_credentials"], "scope": API_SCOPES},
                {"client_id": self.short_lived_client[0], "client_secret": self.short_lived_client[1],
                 "grant_types": ["client_credentials"], "scope": API_SCOPES, "access_token_ttl": self.short_ttl},
                {"client_id": self.introspection_client[0], "client_secret": self.introspection_client[1],
                 "grant_types": [], "introspection": True},
            ],
            "resources": {
                API_RESOURCE: {"scope": API_SCOPES, "alg": "RS256"},
                API_ES256_RESOURCE: {"scope": API_SCOPES, "alg": "ES256"},
            },
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)

    def start(self, timeout: float = 20.0) -> None:
        """Write the configuration, start node and wait until the discovery document answers."""
        node = require_node()
        self._write_config()
        self._http.close()
        self._http = requests.Session()
        with open(self.log_path, "ab") as log:
            since = log.tell()
            self._process = subprocess.Popen(
                [node, str(SERVER_DIR / "server.mjs"), str(self.config_path), str(self.port)],
                cwd=SERVER_DIR, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "NODE_ENV": "test"})
        # Also when pytest dies before the fixture's teardown.
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                code, self._process = self._process.returncode, None
                raise OIDCProviderError(f"oidc-provider exited with status {code} while starting; "
                                        f"its log {self.log_path}:\n{self._log_since(since)}")
            try:
                response = self._http.get(f"{self.issuer}/.well-known/openid-configuration", timeout=1)
                if response.status_code == 200:
                    self._discovery = response.json()
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise OIDCProviderError(f"oidc-provider did not answer within {timeout:.0f}s; "
                                        f"its log {self.log_path}:\n{self._log_since(since)}")
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")[-4000:] or "(nothing logged)"

    def stop(self) -> None:
        """Stop the node process (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        self._http.close()
        self._discovery = None
        if self._process is not None:
            stop_process(self._process)
            self._process = None
        atexit.unregister(self.stop)

    def discovery(self) -> dict[str, Any]:
        """The discovery document (``/.well-known/openid-configuration``) read at the last start."""
        if self._discovery is None:
            raise OIDCProviderError("the provider is not running: call start() first")
        return self._discovery

    def jwks(self) -> dict[str, Any]:
        """The public JWKS the provider serves at its ``jwks_uri`` right now."""
        response = self._http.get(self.discovery()["jwks_uri"], timeout=5)
        response.raise_for_status()
        return response.json()

    def token_response(self, resource: str | None = API_RESOURCE, scope: str = API_SCOPES, *,
                       client: tuple[str, str] | None = None) -> dict[str, Any]:
        """The token endpoint's JSON answer to a ``client_credentials`` request of ``client``
        (default :attr:`client`) for ``scope``, naming ``resource`` unless it is None."""
        form = {"grant_type": "client_credentials", "scope": scope}
        if resource is not None:
            form["resource"] = resource
        response = self._http.post(self.discovery()["token_endpoint"], data=form, auth=client or self.client,
                                   timeout=5)
        if response.status_code != 200:
            raise OIDCProviderError(f"token request {form} failed: {response.status_code} {response.text}")
        return response.json()

    def token(self, resource: str = API_RESOURCE, scope: str = API_SCOPES, opaque: bool = False) -> str:
        """An access token by ``client_credentials``: a JWT for ``resource``, or, with ``opaque=True``,
        an opaque token (no resource indicator sent) that only introspection can check."""
        return self.token_response(None if opaque else resource, scope)["access_token"]

    def expiring_token(self, resource: str = API_RESOURCE, scope: str = API_SCOPES, opaque: bool = False) -> str:
        """Like :meth:`token`, but the token expires :attr:`short_ttl` seconds after it is issued."""
        return self.token_response(None if opaque else resource, scope,
                                   client=self.short_lived_client)["access_token"]

    def introspect(self, token: str) -> dict[str, Any]:
        """The introspection endpoint's answer (RFC 7662) for ``token``, asked as ``didmos-api``."""
        response = self._http.post(self.discovery()["introspection_endpoint"], data={"token": token},
                                   auth=self.introspection_client, timeout=5)
        response.raise_for_status()
        return response.json()

    def rotate_keys(self, keep_previous: bool = False) -> None:
        """Restart the provider on the same port with new signing keys (new kids) listed first, so every
        token issued afterwards is signed with them. The old keys are dropped from the JWKS unless
        ``keep_previous`` (then still published, as during a real rollover, but no longer used to sign).
        Opaque tokens issued before the restart are forgotten."""
        self.keys = signing_keys() + (self.keys if keep_previous else [])
        self.stop()
        self.start()


def require_node() -> str:
    """The path of a Node.js new enough for oidc-provider, with its npm packages installed; fails the
    test with what to do otherwise (these tests need the real provider: they are never skipped)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js) is not installed: run ./run test, which installs the Debian packages "
                    "nodejs and npm and the provider's npm packages", pytrace=False)
    if not (SERVER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"the npm packages of the test OpenID provider are missing in {SERVER_DIR}/node_modules: "
                    "run ./run test (it runs npm ci there)", pytrace=False)
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if tuple(int(part) for part in version.lstrip("v").split(".")[:2]) < MINIMUM_NODE:
        pytest.fail(f"{node} is Node.js {version}; oidc-provider needs {MINIMUM_NODE[0]}.{MINIMUM_NODE[1]} or "
                    "newer: install a newer nodejs package", pytrace=False)
    return node


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory) -> Iterator[OIDCProvider]:
    """A running :class:`OIDCProvider` for the whole session, stopped at its end."""
    provider = OIDCProvider(tmp_path_factory.mktemp("oidc-provider"), free_port())
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()
