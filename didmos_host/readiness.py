"""``GET /readyz``: may this process take traffic? Yes when every server it needs answers.

``/healthz`` says the process is up; ``/readyz`` says whether the directory, redis and whatever else
plugins name through ``didmos_readiness_checks`` answer now. A load balancer or Kubernetes probe sends
requests elsewhere while it answers 503. The checks run at once, each bounded by
``api.readiness_timeout`` seconds, so a probe never hangs on a server that does not answer.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import flask

from didmos_host.api import Blueprint, MethodView, Schema, fields
from didmos_host.plugins import collect_named
from didmos_host.records import ReadinessCheck

readiness = Blueprint("readiness", __name__, description="Readiness: the servers didmos needs answer")

#: ``scheme://user:password@`` in a message: the credentials are replaced before a probe sees them.
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.I)


class CheckSchema(Schema):
    status = fields.String(metadata={"description": "`ok` or `down`"})
    detail = fields.String(metadata={"description": "What answered, or why it is counted as down"})


class ReadinessSchema(Schema):
    status = fields.String(metadata={"description": "`ready` or `not ready`"})
    checks = fields.Dict(keys=fields.String(), values=fields.Nested(CheckSchema),
                         metadata={"description": "One result per check, by name (`directory`, `redis`, ...)"})


@readiness.route("/readyz")
class Readiness(MethodView):
    @readiness.response(200, ReadinessSchema, description="Every server didmos needs answers")
    @readiness.alt_response(503, schema=ReadinessSchema, description="At least one does not; `checks` says which")
    def get(self):
        """Whether this process can serve: the directory, redis and the checks plugins add answer."""
        host = flask.current_app.extensions["didmos"]
        report = run_checks(host)
        if report["status"] != "ready":
            return flask.make_response(flask.jsonify(report), 503)
        return report


def run_checks(host: Any, timeout: float | None = None) -> dict[str, Any]:
    """Run every readiness check concurrently; ``{"status": "ready" | "not ready", "checks": {...}}``."""
    timeout = float(host.settings.api.readiness_timeout if timeout is None else timeout)
    checks: dict[str, ReadinessCheck] = collect_named(host.hook.didmos_readiness_checks(host=host),
                                                      "readiness check")
    results: dict[str, dict[str, str]] = {}
    if checks:
        pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="didmos-readyz")
        futures = {name: pool.submit(check.function, timeout) for name, check in checks.items()}
        wait(futures.values(), timeout=timeout)
        # Threads still waiting on a server end by their own socket timeouts; the probe does not wait.
        pool.shutdown(wait=False, cancel_futures=True)
        for name, future in futures.items():
            if not future.done():
                results[name] = {"status": "down", "detail": f"no answer within {timeout:g} s"}
            elif future.exception() is not None:
                results[name] = {"status": "down", "detail": _clean(future.exception())}
            else:
                detail = future.result()
                results[name] = {"status": "ok", **({"detail": _clean(detail)} if detail else {})}
    ready = all(result["status"] == "ok" for result in results.values())
    return {"status": "ready" if ready else "not ready", "checks": dict(sorted(results.items()))}


def _clean(value: Any) -> str:
    """One line, without credentials in URLs, at most 300 characters."""
    text = getattr(value, "message", None) or str(value) or type(value).__name__
    text = _CREDENTIALS.sub(r"\g<scheme>***@", " ".join(text.split()))
    return text[:300]


def redis_check(host: Any) -> ReadinessCheck:
    """redis answers PING (the task queue: without it nothing can be enqueued)."""

    def ping(timeout: float) -> str:
        from didmos_host.sentinel import connect_redis, describe_redis

        client = connect_redis(host.settings, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        except Exception as exc:
            raise RuntimeError(f"redis at {describe_redis(host.settings)} does not answer: {exc}") from exc
        finally:
            client.close()
        return "PING answered"

    return ReadinessCheck(name="redis", function=ping)
