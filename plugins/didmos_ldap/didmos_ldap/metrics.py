"""Prometheus metrics of the directory service: how long LDAP operations take, and the entry cache's
hits and misses. Exposed by the host's ``GET /metrics`` (every metric made with prometheus_client is).

The hit ratio is ``rate(didmos_ldap_cache_hits_total[5m]) / (rate(didmos_ldap_cache_hits_total[5m]) +
rate(didmos_ldap_cache_misses_total[5m]))``.
"""

from __future__ import annotations

import functools
import time

from prometheus_client import Counter, Histogram

LDAP_DURATION = Histogram(
    "didmos_ldap_operation_duration_seconds",
    "Time an LDAP operation of the directory service took (interceptors and retries included), by operation "
    "(search, add, modify, modrdn, delete, bind) and result (success, or the didmos error it raised).",
    ["operation", "result"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CACHE_HITS = Counter("didmos_ldap_cache_hits_total", "Reads by DN or didmosUUID the entry cache answered.")
CACHE_MISSES = Counter("didmos_ldap_cache_misses_total",
                       "Reads by DN or didmosUUID the entry cache could not answer (sent to LDAP).")


#: (operation, result) -> its histogram: ``labels()`` costs as much as the observation, on every operation.
_series: dict[tuple[str, str], Histogram] = {}


def _series_of(operation: str, result: str) -> Histogram:
    series = _series.get((operation, result))
    if series is None:
        series = _series.setdefault((operation, result), LDAP_DURATION.labels(operation, result))
    return series


def timed(run):
    """Wrap :meth:`Directory._run`: observe its duration by the operation's kind and its result."""

    @functools.wraps(run)
    def measured(self, operation, *args, **kwargs):
        started = time.perf_counter()
        result = "success"
        try:
            return run(self, operation, *args, **kwargs)
        except BaseException as exc:
            result = type(exc).__name__
            raise
        finally:
            _series_of(operation.kind, result).observe(time.perf_counter() - started)

    return measured


def counted(lookup):
    """Wrap an :class:`EntryCache` lookup: a returned entry is a hit, ``None`` a miss."""

    @functools.wraps(lookup)
    def counting(*args, **kwargs):
        entry = lookup(*args, **kwargs)
        (CACHE_MISSES if entry is None else CACHE_HITS).inc()
        return entry

    return counting
