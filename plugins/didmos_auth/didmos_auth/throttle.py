"""Throttling of failed logins, so that guessing is slow but nobody is locked out by someone else.

Failures are counted per (user, client address) pair and per client address, in a sliding window.
A pair over its limit blocks only that user *from that address*: the same user elsewhere still logs
in, so an attacker cannot lock a legitimate user out by guessing their password. An address over its
(higher) limit is blocked for every user: one client spraying many accounts. The directory's own
password policy (ppolicy lockout) remains the last line, for slow distributed guessing.
Counts live in this process's memory; each API process counts on its own.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from didmos_host.errors import TooManyAttempts


class FailureThrottle:
    def __init__(self, *, window_seconds: float, max_per_pair: int, max_per_address: int):
        self.window = window_seconds
        self.max_per_pair = max_per_pair
        self.max_per_address = max_per_address
        self._pairs: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._addresses: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, times: deque[float], now: float) -> deque[float]:
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def check(self, user: str, address: str) -> None:
        """Raise :class:`TooManyAttempts` if this user may not try from this address now."""
        now = time.monotonic()
        with self._lock:
            for times, limit, what in (
                (self._pairs.get((user.lower(), address)), self.max_per_pair, "for this account from your address"),
                (self._addresses.get(address), self.max_per_address, "from your address"),
            ):
                if times is not None and len(self._recent(times, now)) >= limit:
                    wait = max(1, int(times[0] + self.window - now) + 1)
                    raise TooManyAttempts(f"too many failed logins {what}; try again in {wait} s", retry_after=wait)

    def failed(self, user: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._pairs[(user.lower(), address)].append(now)
            self._addresses[address].append(now)
            if len(self._pairs) > 100_000:  # bound memory under a spraying attack
                self._prune(now)

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((user.lower(), address), None)

    def _prune(self, now: float) -> None:
        for table in (self._pairs, self._addresses):
            for key in [k for k, times in table.items() if not self._recent(times, now)]:
                del table[key]
