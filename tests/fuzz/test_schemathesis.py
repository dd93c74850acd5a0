"""schemathesis against /openapi.json, one API at a time (SCIM and LUI, PDP, tasks, auth and OAuth), as
the superadmin (HTTP Basic) and without credentials, on a slapd of this module's own.

Every phase runs (examples, coverage, fuzzing, and stateful sequences over the links schemathesis infers
from Location headers and the operations' parameters), with the checks that the document is kept:
no 5xx, every status, content type, header and body as documented.

At scale 1 each API gets more than 1,000 requests (superadmin and anonymous runs together), and all
eight runs take about three minutes on two cores, so CI runs them as they are. ``DIDMOS_FUZZ_EXAMPLES=n``
multiplies the examples per operation for a longer run (``-s`` prints each run's figures).

The one thing taken out of the fuzzer's hands: writes aimed at the superadmin itself (see
:class:`Guard`), which the authorization matrix tests instead.
"""

from __future__ import annotations

import collections
import os
import re
import time
from dataclasses import dataclass, field

import pytest

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance")

#: API -> (paths, examples per operation at scale 1 as the superadmin, without credentials)
APIS = {
    "scim": ("^/(scim/v2|lui2_backend/v2)/", 25, 4),
    "pdp": ("^/pdp/v1/", 25, 4),
    "tasks": ("^/tasks/v1/", 40, 6),
    "auth": ("^/(auth|oauth|\\.well-known)/", 270, 60),
}
#: The one 5xx the document promises: RFC 7644 3.11 lets a provider refuse POST /Me with 501.
DOCUMENTED_5XX = {("POST", "/scim/v2/Me", 501)}


@dataclass
class Run:
    """What one schemathesis run did."""

    requests: int = 0
    seconds: float = 0.0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    phases: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    guarded: int = 0

    def summary(self) -> str:
        return (f"{self.requests} requests in {self.seconds:.1f}s; phases {dict(self.phases)}; "
                f"statuses {dict(sorted(self.statuses.items()))}; guarded {self.guarded}")


class Guard:
    """WSGI middleware that keeps the fuzzer able to go on: writes aimed at the superadmin itself (its
    entry, /Me, its role assignments) or at the roles and permissions that existed before the run
    (superadmin, standarduser, ...) are answered 403 without reaching didmos. Otherwise a generated
    DELETE /scim/v2/Me or DELETE /pdp/v1/roles/superadmin would turn every later request into a 401.
    What the superadmin may do to itself is the authorization matrix's business."""

    def __init__(self, app, protected: set[str]):  # protected: regular expressions of paths
        self.app, self.protected, self.count = app, protected, 0
        self.seen: collections.Counter = collections.Counter()  # (method, path) guarded

    def __call__(self, environ, start_response):
        from urllib.parse import unquote

        path = unquote(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD", "GET")
        aimed_at_protected = (method in ("PUT", "PATCH", "DELETE") and path.rstrip("/").endswith("/Me")
                              or any(re.search(pattern, path, re.IGNORECASE) for pattern in self.protected))
        if environ.get("HTTP_AUTHORIZATION") and method not in ("GET", "HEAD", "OPTIONS") and aimed_at_protected:
            self.count += 1
            self.seen[(method, path[:80])] += 1
            scim = path.startswith(("/scim/", "/lui2_backend/"))
            body = (b'{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "403", '
                    b'"detail": "guarded by the fuzz test"}' if scim else
                    b'{"status": 403, "detail": "guarded by the fuzz test"}')
            start_response("403 FORBIDDEN", [("Content-Type", "application/scim+json" if scim else "application/json"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)


def scale() -> int:
    return int(os.environ.get("DIDMOS_FUZZ_EXAMPLES", "1"))


def run_schemathesis(app, paths: str, examples: int, *, authenticated: bool, seed: int = 1) -> Run:
    """Run every schemathesis phase on the operations whose path matches ``paths``; what happened."""
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import events, from_schema

    config = {"generation": {"max-examples": examples, "mode": "all"}, "seed": seed,
              "checks": {"enabled": False, **{check: {"enabled": True} for check in CHECKS}},
              "max-failures": 10000, "continue-on-failure": True, "workers": 1,
              "suppress-health-check": ["all"]}
    if authenticated:
        config["auth"] = {"basic": {"username": SUPERADMIN_ID, "password": SUPERADMIN_PASSWORD}}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=SchemathesisConfig.from_dict(config))
    schema = schema.include(path_regex=paths)
    run, started = Run(), time.monotonic()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for interaction in recorder.interactions.values():
                run.requests += 1
                run.phases[str(event.phase.value if hasattr(event.phase, "value") else event.phase)] += 1
                run.statuses[interaction.response.status_code if interaction.response else None] += 1
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    if node.failure_info is None:
                        continue
                    case = recorder.cases[case_id].value
                    response = recorder.interactions.get(case_id)
                    status = response.response.status_code if response and response.response else None
                    if (case.method.upper(), case.formatted_path, status) in DOCUMENTED_5XX:
                        continue
                    body = response.response.content[:300] if response and response.response else b""
                    failure = node.failure_info.failure
                    run.failures.append(f"{node.name}: {case.method} {case.formatted_path} query={case.query} "
                                        f"body={str(case.body)[:200]} -> {status} {body!r}: "
                                        f"{str(getattr(failure, 'message', failure))[:400]}")
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            value = getattr(event, "value", None) or getattr(event, "exception", None)
            run.errors.append(f"{type(event).__name__} {getattr(event, 'label', '')}: {value!r}"[:600])
    run.seconds = time.monotonic() - started
    return run


@pytest.fixture(scope="module")
def guarded_app(didmos_own_overrides, tmp_path_factory):
    from didmos_host.app import create_app

    app = create_app(**didmos_own_overrides)
    client = app.test_client()
    admin = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
    # the superadmin's entry on both mounts and in the PDP; the roles and permissions there were before
    protected = {rf"/(Users|User|users)/{SUPERADMIN_ID}\b"}
    protected |= {rf"/roles/{re.escape(role['name'])}(/|$)" for role in client.get("/pdp/v1/roles", headers=admin).json}
    protected |= {rf"/permissions/{re.escape(p['name'])}(/|$)"
                  for p in client.get("/pdp/v1/permissions", headers=admin).json}
    app.wsgi_app = Guard(app.wsgi_app, protected)
    return app


@pytest.mark.parametrize("authenticated", [True, False], ids=["superadmin", "anonymous"])
@pytest.mark.parametrize("api", list(APIS))
def test_every_api_keeps_its_openapi_document(guarded_app, api, authenticated, record_property):
    paths, as_admin, anonymous = APIS[api]
    guard = guarded_app.wsgi_app
    guarded_before = guard.count
    guard.seen.clear()
    run = run_schemathesis(guarded_app, paths, (as_admin if authenticated else anonymous) * scale(),
                           authenticated=authenticated)
    run.guarded = guard.count - guarded_before
    record_property("schemathesis", run.summary())
    print(f"\nschemathesis {api} {'superadmin' if authenticated else 'anonymous'}: {run.summary()}"
          + (f"; most guarded: {guard.seen.most_common(3)}" if guard.seen else ""))
    assert not run.errors, run.errors[:5]
    assert not run.failures, f"{len(run.failures)} failures:\n" + "\n".join(run.failures[:25])
    if not authenticated:
        public = {200, 308, 400, 401, 404, 405, 413, 429, 501}  # discovery, OAuth, redirects, refusals
        assert set(run.statuses) <= public, run.statuses
    # the superadmin stayed able to work: the run tested didmos, not a locked-out account
    client = guarded_app.test_client()
    assert client.get("/auth/whoami", headers=basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)).status_code == 200
