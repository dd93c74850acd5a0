"""No route gives data without authentication.

Every GET rule of ``app.url_map`` (new routes included, without a row to write), with real values in
its variables (existing users, groups, roles, tasks, sessions ...) and with made-up ones, is asked
without credentials and with every kind of wrong credentials, as GET and as HEAD: 401 (429 once the
failed-login throttle counts), and nothing of the directory in the answer. The authorization matrix
(tests/test_authorization_matrix.py) has the anonymous column for every method of every route with one
path each; this adds the variants of credentials and values, and HEAD. The matrix under load is in
tests/test_concurrency.py.
"""

from __future__ import annotations

import base64
import itertools
import re
import uuid

import pytest

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"

#: GET rules anyone may read, and why: they hold no directory data.
PUBLIC = {
    "/static/<path:filename>": "Flask's static folder (didmos ships none)",
    "/openapi.json": "the API description",
    "/docs": "the Swagger UI page of the API description",
    "/docs/assets/<path:filename>": "the Swagger UI's scripts and styles",
    "/healthz": "process liveness for load balancers",
    "/readyz": "readiness for load balancers",
    "/scim/v2/ServiceProviderConfig": "SCIM discovery (RFC 7644 4)",
    "/scim/v2/ResourceTypes": "SCIM discovery",
    "/scim/v2/ResourceTypes/<name>": "SCIM discovery",
    "/scim/v2/Schemas": "SCIM discovery",
    "/scim/v2/Schemas/<urn>": "SCIM discovery",
    "/oauth/jwks": "the public keys that verify didmos's tokens",
    "/.well-known/openid-configuration": "the token issuer's metadata (RFC 8414)",
}
#: What a directory entry looks like in a body: a DN of the tree or an id of this run.
DIRECTORY_DATA = re.compile(r"dc=didmos|ou=people|didmosUUID=", re.IGNORECASE)


@pytest.fixture(scope="module")
def app(didmos_overrides):
    from didmos_host.app import create_app

    return create_app(**didmos_overrides)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def values(client):
    """Values for each variable of the rules: real ones (made here as the superadmin) and made-up ones."""
    def post(path, body, status):
        response = client.post(path, json=body, headers=ADMIN)
        assert response.status_code == status, (path, response.get_data(as_text=True)[:300])
        return response.json

    tag = uuid.uuid4().hex[:8]
    user = post("/scim/v2/Users", {"schemas": [USER], "userName": f"acc-{tag}", "password": "Acc-pw-123"}, 201)["id"]
    group = post("/scim/v2/Groups", {"displayName": f"acc-{tag}", "members": [{"value": user}]}, 201)["id"]
    organization = post("/scim/v2/Organizations", {"name": f"acc-{tag}"}, 201)["id"]
    task = post("/tasks/v1/tasks", {"name": "didmos.ping", "payload": {"value": tag}}, 202)["id"]
    session = post("/pdp/v1/sessions", {"user": user}, 201)["id"]
    sod = post("/pdp/v1/sod-sets", {"name": f"acc-{tag}", "cardinality": 2,
                                    "roles": [post("/pdp/v1/roles", {"name": f"acc-a-{tag}"}, 201)["name"],
                                              post("/pdp/v1/roles", {"name": f"acc-b-{tag}"}, 201)["name"]]}, 201)["name"]
    requests = client.get("/tasks/v1/requests", headers=ADMIN).json
    ids = [user, group, organization, SUPERADMIN_ID, str(uuid.uuid4())]
    return {
        "endpoint": ["Users", "Groups", "Organizations", "users"],
        "segment": ["User", "Groups", "Organization"],
        "resource_id": ids,
        "uuid": ids,
        "name": ["standarduser", "superadmin", "self-read", sod, "nothing"],
        "task_id": [task, str(uuid.uuid4())],
        "request_id": [r["id"] for r in (requests if isinstance(requests, list) else [])][:1] + [str(uuid.uuid4())],
        "session_id": [session, "no-such-session"],
        "user": user,
    }


def urls(rule, values) -> list[str]:
    """Every path of ``rule`` with the values of its variables (the first value where there are many)."""
    names = list(rule.arguments)
    missing = [name for name in names if name not in values]
    assert not missing, f"{rule.rule}: add values for {missing} to the values fixture"
    choices = [values[name] for name in names]
    paths = []
    for combination in itertools.islice(itertools.product(*choices), 12):
        path = rule.rule
        for name, value in zip(names, combination):
            path = re.sub(rf"<(?:[a-z]+:)?{name}>", value, path)
        paths.append(path)
    return paths


def wrong_credentials(user: str) -> list[dict[str, str]]:
    def raw(text: str) -> dict[str, str]:
        return {"Authorization": text}

    return [
        {},
        basic_auth(user, "not-the-password"),  # a real user (not the superadmin: ppolicy would lock it out)
        basic_auth(str(uuid.uuid4()), "pw"),
        basic_auth(user, ""),
        basic_auth("", ""),
        basic_auth(f"{user})(uid=*", "x"),
        basic_auth("*", "*"),
        raw("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode()),
        raw("Basic !!!not-base64"),
        raw("Basic "),
        raw("Bearer not-a-token"),
        raw("Bearer " + ".".join(base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("=") for _ in range(2)) + "."),
        raw("Digest username=x"),
        {"Authorization": "Basic " + base64.b64encode(f"{SUPERADMIN_ID}".encode()).decode()},  # no colon
    ]


def test_no_get_route_answers_without_valid_credentials(app, client, values):
    tried, wrong = 0, []
    credentials = wrong_credentials(values["user"])
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.rule in PUBLIC:
            continue
        for path, (i, headers) in itertools.product(urls(rule, values), enumerate(credentials)):
            for method in ("GET", "HEAD"):
                response = client.open(path, method=method, headers=headers, query_string={"attributes": "userName"}
                                       if i % 2 else {})
                tried += 1
                body = response.get_data(as_text=True)
                # 405: a rule that refuses the method to everyone (GET /scim/v2/Bulk)
                if response.status_code not in (401, 405, 429) or DIRECTORY_DATA.search(body):
                    wrong.append((method, path, headers, response.status_code, body[:200]))
                elif response.status_code == 401 and method == "GET":
                    assert response.headers.get("WWW-Authenticate"), (path, headers)
    assert not wrong, f"{len(wrong)} of {tried} requests were not refused: {wrong[:10]}"
    assert tried > 500


def test_public_routes_hold_no_directory_data(app, client, values):
    for rule in app.url_map.iter_rules():
        if rule.rule not in PUBLIC or rule.arguments - {"name", "urn"} or rule.rule in ("/openapi.json", "/docs"):
            continue  # (the API description names example DNs)
        path = rule.rule.replace("<name>", "User").replace("<urn>", USER)
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)
        assert not DIRECTORY_DATA.search(response.get_data(as_text=True)), path


def test_public_list_is_current(app):
    served = {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
    assert set(PUBLIC) <= served, f"PUBLIC names rules the app no longer serves: {set(PUBLIC) - served}"
