"""Concurrency over real HTTP: many clients at once against the app served by werkzeug in threads, on
the session's real slapd.

- N PATCHes with one If-Match: exactly one wins, the rest are 412, and the winner's value is stored;
- read-modify-write loops with If-Match and retries: every increment is there (no lost update);
- N creates of one userName: exactly one 201, the rest 409 ``uniqueness``, one entry in the directory;
- the authorization matrix's rows, many at once: every decision is the one the row expects.

(The Flask test client runs a request at a time, so these go through a socket.)
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import ldap
import pytest
import requests
from werkzeug.serving import make_server

from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
#: concurrent clients (the server answers each in a thread of its own)
CLIENTS = 8


@contextmanager
def serving(app):
    """``app`` served over HTTP by werkzeug, a thread per request; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="didmos-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


@pytest.fixture(scope="module")
def base_url(didmos_overrides):
    from didmos_host.app import create_app

    with serving(create_app(**didmos_overrides)) as url:
        yield url


def session() -> requests.Session:
    http = requests.Session()
    http.auth = (SUPERADMIN_ID, SUPERADMIN_PASSWORD)
    return http


def all_at_once(count: int, work):
    """``work(i)`` for i in range(count), each in its own thread, released together; their results."""
    barrier = threading.Barrier(count)

    def run(i):
        barrier.wait(10)
        return work(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def new_user(base_url, **attributes) -> dict:
    response = session().post(f"{base_url}/scim/v2/Users",
                              json={"schemas": [USER], "userName": f"cc-{uuid.uuid4().hex[:10]}", **attributes})
    assert response.status_code == 201, response.text
    return response.json()


def replace(path, value):
    return {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": path, "value": value}]}


def test_patches_with_one_etag_exactly_one_wins(base_url):
    user = new_user(base_url, title="start")
    url, etag = f"{base_url}/scim/v2/Users/{user['id']}", user["meta"]["version"]

    def patch(i):
        response = session().patch(url, json=replace("title", f"writer-{i}"), headers={"If-Match": etag})
        return response.status_code, response.json()

    answers = all_at_once(CLIENTS, patch)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [412] * (CLIENTS - 1), answers
    [winner] = [body for status, body in answers if status == 200]
    assert all(body["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"] and body["status"] == "412"
               for status, body in answers if status == 412)
    stored = session().get(url).json()
    assert stored["title"] == winner["title"] and stored["meta"]["version"] == winner["meta"]["version"]
    assert stored["meta"]["version"] != etag


def test_read_modify_write_with_if_match_loses_no_update(base_url):
    """Each client adds 1 to a counter (the user's title) ROUNDS times: read, add, write with If-Match,
    read again and retry on 412. The counter ends at CLIENTS * ROUNDS."""
    rounds = 4
    user = new_user(base_url, title="0")
    url = f"{base_url}/scim/v2/Users/{user['id']}"

    def increment(i):
        http, done, conflicts = session(), 0, 0
        while done < rounds:
            current = http.get(url, params={"attributes": "title"})
            assert current.status_code == 200, current.text
            value = int(current.json()["title"])
            response = http.patch(url, json=replace("title", str(value + 1)),
                                  headers={"If-Match": current.headers["ETag"]})
            if response.status_code == 412:
                conflicts += 1
                assert conflicts < 500, "no progress"
                continue
            assert response.status_code == 200, response.text
            done += 1
        return conflicts

    conflicts = all_at_once(CLIENTS, increment)
    assert session().get(url).json()["title"] == str(CLIENTS * rounds)
    assert sum(conflicts) > 0, "the clients never collided: the test proves nothing"


def test_put_read_modify_write_keeps_every_value(base_url):
    """Each client adds its own phone number by PUT (the whole resource) with If-Match, retrying on
    412: every number is there at the end."""
    user = new_user(base_url)
    url = f"{base_url}/scim/v2/Users/{user['id']}"

    def add_number(i):
        http = session()
        for _ in range(500):
            current = http.get(url)
            resource = current.json()
            resource["phoneNumbers"] = resource.get("phoneNumbers", []) + [{"value": f"+49 30 {i:04d}", "type": "work"}]
            response = http.put(url, json=resource, headers={"If-Match": current.headers["ETag"]})
            if response.status_code != 412:
                return response.status_code
        return None

    assert all_at_once(CLIENTS, add_number) == [200] * CLIENTS
    numbers = {number["value"] for number in session().get(url).json()["phoneNumbers"]}
    assert numbers == {f"+49 30 {i:04d}" for i in range(CLIENTS)}


@pytest.mark.parametrize("mount, path, taken", [("strict", "/scim/v2/Users", 409),
                                                ("lui", "/lui2_backend/v2/User/", 419)])
@pytest.mark.parametrize("race", range(3))
def test_concurrent_creates_of_one_user_name_make_one_entry(base_url, didmos_slapd, mount, path, taken, race):
    """(slapo-unique alone let two of them through now and then: its search runs outside the add.)"""
    name = f"race-{uuid.uuid4().hex[:8]}"

    def create(i):
        # the same name in different cases: userName is unique case-insensitively
        user_name = name.upper() if i % 2 else name
        response = session().post(f"{base_url}{path}", json={"schemas": [USER], "userName": user_name})
        return response.status_code, response.json()

    answers = all_at_once(CLIENTS, create)
    created = 201 if mount == "strict" else 200
    assert sorted(status for status, _ in answers) == [created] + [taken] * (CLIENTS - 1), answers
    for status, body in answers:
        if status == taken:
            assert body["scimType"] == "uniqueness" and body["status"] == str(taken), body
    found = didmos_slapd.admin_connection().search_s("dc=didmos,dc=de", ldap.SCOPE_SUBTREE,
                                                      f"(uid={name})", ["didmosUUID"])
    [(dn, attributes)] = found
    [winner] = [body for status, body in answers if status == created]
    assert attributes["didmosUUID"] == [winner["id"].encode()]


@pytest.mark.parametrize("race", range(3))
def test_concurrent_renames_to_one_user_name_leave_one_holder(base_url, didmos_slapd, race):
    """(As with creates, slapo-unique alone let two renames to one name through now and then.)"""
    users = [new_user(base_url)["id"] for _ in range(CLIENTS)]
    name = f"rename-{uuid.uuid4().hex[:8]}"

    def rename(i):
        response = session().patch(f"{base_url}/scim/v2/Users/{users[i]}", json=replace("userName", name))
        return response.status_code, response.json()

    answers = all_at_once(CLIENTS, rename)
    assert sorted(status for status, _ in answers) == [200] + [409] * (CLIENTS - 1), answers
    assert all(body["scimType"] == "uniqueness" for status, body in answers if status == 409)
    found = didmos_slapd.admin_connection().search_s("dc=didmos,dc=de", ldap.SCOPE_SUBTREE, f"(uid={name})",
                                                      ["didmosUUID"])
    assert len(found) == 1


# -- the authorization matrix under load ------------------------------------------------------------------


def _matrix_module():
    path = Path(__file__).with_name("test_authorization_matrix.py")
    spec = importlib.util.spec_from_file_location("didmos_matrix_rows", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_authorization_matrix_holds_under_load(didmos_slapd, didmos_overrides):
    """The matrix's read rows and its rows that change a fresh user of their own, every actor's cell
    at once from CLIENTS threads, several times: each answers what the row expects (decisions, cached
    credentials and roles are per request, not shared by mistake between concurrent requests)."""
    from didmos_host.app import create_app

    matrix = _matrix_module()
    world = matrix.World(didmos_slapd.admin_connection())
    # an app made after the world, as the matrix's own: its compiled policy knows the scoped role that
    # World wrote directly in LDAP (an older app learns it only when its policy view refreshes)
    app = create_app(**didmos_overrides)
    # rows without a setup (setups go through the Flask test client of the matrix, one at a time)
    rows = [row for row in matrix.MATRIX if row.setup is None and row.answer is not matrix.bulk_answer
            and row.path.startswith(("/scim/v2/Users", "/scim/v2/Me", "/lui2_backend/v2/User/", "/pdp/v1/users",
                                     "/pdp/v1/roles", "/pdp/v1/permissions", "/auth/whoami", "/scim/v2/Schemas"))]
    assert len(rows) >= 20
    cells = []
    lock = threading.Lock()  # python-ldap connections are not shared between threads
    for _ in range(3):
        for row in rows:
            for actor, expected in zip(matrix.ACTORS, row.expected):
                with lock:
                    cell = matrix.who(world, actor, row.fresh)
                cells.append((row, actor, expected, cell))

    def ask(base_url, i):
        row, actor, expected, cell = cells[i]
        values = cell.values()
        body = matrix.fill(row.body, values)
        response = requests.request(row.method, base_url + matrix.fill(row.path, values), headers=cell.headers,
                                    allow_redirects=False, **({} if body is None else {"json": body}))
        return row.name, actor, response.status_code, expected

    with serving(app) as base_url, ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda i: ask(base_url, i), range(len(cells))))
    wrong = [answer for answer in answers if answer[2] != answer[3]]
    assert not wrong, f"(row, actor, got, expected): {wrong[:20]}"
    assert len(answers) >= 300
