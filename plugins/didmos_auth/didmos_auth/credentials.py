"""A short memory of verified passwords, so that an authenticated request costs no LDAP bind.

Only a salted SHA-256 of the password is kept, for ``lifetime`` seconds. The entry is forgotten at
once when the password is wrong (a failed attempt), and when the user's entry is written through
didmos (password change, lock, deactivation: see the post-operation hook in :mod:`didmos_auth.plugin`).
A change made on another node or directly in LDAP is seen after at most ``lifetime`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from dataclasses import dataclass

from didmos_host.records import Actor


@dataclass
class _Remembered:
    salt: bytes
    digest: bytes
    actor: Actor
    expires: float


def _digest(salt: bytes, password: str) -> bytes:
    return hashlib.sha256(salt + password.encode("utf-8", "surrogatepass")).digest()


class CredentialCache:
    def __init__(self, lifetime: float, max_entries: int = 100_000):
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._by_login: dict[str, _Remembered] = {}
        self._logins_by_dn: dict[str, set[str]] = {}  # every write to any entry asks: keep it O(1)
        self._lock = threading.Lock()

    def check(self, login: str, password: str) -> Actor | None:
        """The remembered actor when ``password`` is the one verified for ``login`` lately."""
        if self.lifetime <= 0:
            return None
        with self._lock:
            remembered = self._by_login.get(login)
            if remembered is None:
                return None
            if remembered.expires < time.monotonic() or not hmac.compare_digest(
                    remembered.digest, _digest(remembered.salt, password)):
                del self._by_login[login]  # expired, or a failed attempt: the next try binds
                return None
            return remembered.actor

    def remember(self, login: str, password: str, actor: Actor) -> None:
        if self.lifetime <= 0:
            return
        salt = os.urandom(16)
        with self._lock:
            if len(self._by_login) >= self.max_entries:
                self._by_login.clear()  # crude but bounded; a full cache only costs binds
                self._logins_by_dn.clear()
            self._by_login[login] = _Remembered(salt, _digest(salt, password), actor, time.monotonic() + self.lifetime)
            self._logins_by_dn.setdefault(actor.dn.lower(), set()).add(login)

    def forget_dn(self, dn: str) -> None:
        """Forget every login of the entry at ``dn`` (its password, lock or status changed)."""
        with self._lock:
            for login in self._logins_by_dn.pop(dn.lower(), ()):
                self._by_login.pop(login, None)
