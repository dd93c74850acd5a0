"""HTTP Basic authentication against the directory, as in the seeds.

The user name is the user's ``didmosUUID`` (with ``auth.basic.accept_user_name`` also the userName,
LDAP ``uid``); the password is checked by binding as the user through the directory service, with the
password-policy control, so locked and expired accounts answer 401 with the reason.
"""

from __future__ import annotations

import base64
import binascii

from didmos_host.errors import AuthenticationFailed, PasswordPolicyError
from didmos_host.records import Actor
from didmos_auth.credentials import CredentialCache
from didmos_auth.throttle import FailureThrottle

_INVALID = "invalid user name or password"


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic`` header; ``None`` for other schemes."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthenticationFailed("malformed Basic credentials: expected base64 of 'user:password' in UTF-8") from None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        raise AuthenticationFailed("malformed Basic credentials: expected 'user:password'")
    return user, password


class BasicAuthenticator:
    """Checks Basic credentials: throttle, remembered credentials, then a real bind."""

    def __init__(self, host, settings):
        from didmos_ldap.filters import any_of, eq

        self._eq, self._any_of = eq, any_of
        self.host = host
        self.base = host.settings.ldap.base_dn
        self.accept_user_name = settings.basic.accept_user_name
        self.cache = CredentialCache(settings.credential_cache_seconds)
        self.throttle = FailureThrottle(window_seconds=settings.throttle.window_seconds,
                                        max_per_pair=settings.throttle.max_failures_per_user_address,
                                        max_per_address=settings.throttle.max_failures_per_address)

    def _find(self, login: str):
        directory = self.host.service("directory")
        condition = self._eq("didmosUUID", login)
        if self.accept_user_name:
            condition = self._any_of(condition, self._eq("uid", login))
        found = directory.search(self.base, condition, attrs=["didmosUUID", "didmosTenant", "didmosActive"])
        return found[0] if len(found) == 1 else None

    def authenticate(self, login: str, password: str, address: str) -> Actor:
        self.throttle.check(login, address)
        actor = self.cache.check(login, password)
        if actor is not None:
            return actor
        entry = self._find(login)
        if entry is None:
            self.throttle.failed(login, address)
            raise AuthenticationFailed(_INVALID)
        try:
            self.host.service("directory").bind(entry.dn, password)
        except PasswordPolicyError as exc:
            self.cache.forget_dn(entry.dn)
            raise AuthenticationFailed(f"{exc.message}: contact your administrator",
                                       detail=exc.detail) from exc
        except AuthenticationFailed as exc:
            self.cache.forget_dn(entry.dn)
            self.throttle.failed(login, address)
            raise AuthenticationFailed(_INVALID) from exc
        if (entry.first("didmosActive") or "TRUE").upper() == "FALSE":
            raise AuthenticationFailed("account deactivated", detail={"state": "inactive"})
        self.throttle.succeeded(login, address)
        actor = Actor(dn=entry.dn, uuid=entry.first("didmosUUID") or login, tenant=entry.first("didmosTenant"),
                      method="basic")
        self.cache.remember(login, password, actor)
        return actor
