"""Hostile input, generated with hypothesis: SCIM filters, PATCH paths, ids in URLs and JSON bodies.

For all of it: no 5xx, SCIM Error bodies with the right status and scimType, and no value changes the
structure of an LDAP filter or a DN (the filters didmos sends are captured with the
``didmos_ldap_pre_operation`` hook). Bodies larger than ``api.max_content_length`` get 413 before
anything parses them, with a Content-Length and chunked without one.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from urllib.parse import quote

import ldap.filter
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from didmos_host import hookimpl
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth

ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_TYPES = {"invalidFilter", "invalidSyntax", "invalidPath", "invalidValue", "uniqueness", "mutability",
              "noTarget", "tooMany", "invalidCursor", "sensitive", "tooMany", "invalidVers"}
#: examples per property (the filters and bodies are cheap; each example is one or two requests)
EXAMPLES = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)

#: Text a client could send, with what LDAP filters and DNs give meaning to, NUL and lone surrogates.
HOSTILE = st.text(st.one_of(st.sampled_from(list("*()\\\x00,=+<>#;\"' /&|!~") + ["\udcff", "\u00e9", "\U0001f600"]),
                            st.characters()), max_size=40)


class FilterLog:
    """Records the filter of every LDAP search (one instance per app)."""

    def __init__(self):
        self.filters: list[str] = []
        self.lock = threading.Lock()

    @hookimpl
    def didmos_ldap_pre_operation(self, operation, actor):
        if operation.kind == "search" and operation.filter:
            with self.lock:
                self.filters.append(str(operation.filter))

    def take(self) -> list[str]:
        with self.lock:
            taken, self.filters = self.filters, []
        return taken


@pytest.fixture(scope="module")
def log():
    return FilterLog()


@pytest.fixture(scope="module")
def app(didmos_overrides, log):
    from didmos_host.app import create_app

    return create_app(extra_plugins=[log], **didmos_overrides)


@pytest.fixture(scope="module")
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def named(client):
    """Users whose userNames look like filter syntax; userName -> id."""
    tag = uuid.uuid4().hex[:6]
    names = [f"inj{tag}-a", f"inj{tag}-ab", f"inj{tag}-*", f"inj{tag}-a)(uid=*", f"inj{tag}-\\5c"]
    made = {}
    for name in names:
        response = client.post("/scim/v2/Users", json={"schemas": [USER], "userName": name}, headers=ADMIN)
        assert response.status_code == 201, response.get_data(as_text=True)
        made[name] = response.json["id"]
    return tag, made


def scim_error(response, status: int | tuple[int, ...], scim_types=None) -> dict:
    """The response is a SCIM Error with one of ``status``; its body."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.headers["Content-Type"].startswith("application/scim+json")
    body = response.json
    assert body["schemas"] == [ERROR] and body["status"] == str(response.status_code), body
    if scim_types is not None:
        assert body.get("scimType") in scim_types, body
    return body


def user_names(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return [resource["userName"] for resource in response.json["Resources"]]


# -- filters ---------------------------------------------------------------------------------------------


@EXAMPLES
@given(text=st.one_of(HOSTILE, st.text(max_size=200)))
def test_any_filter_text_is_a_list_or_invalid_filter(client, text):
    response = client.get("/scim/v2/Users", query_string={"filter": text, "count": "2"}, headers=ADMIN)
    if response.status_code != 200:
        scim_error(response, (400, 403), {"invalidFilter", "invalidValue", None})


@EXAMPLES
@given(value=HOSTILE)
def test_a_value_never_changes_the_ldap_filter(client, log, value):
    """The LDAP filter of ``userName eq <value>`` is the one of a plain value with only the escaped
    value in its place: no `*`, `)(`, `\\` or NUL of a value becomes filter syntax."""
    def ldap_filter(v):
        log.take()
        response = client.get("/scim/v2/Users", query_string={"filter": f"userName eq {json.dumps(v)}"},
                              headers=ADMIN)
        return response, [f for f in log.take() if "(uid=" in f]

    plain_response, [plain] = ldap_filter("plainvalue")
    response, sent = ldap_filter(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 form, nothing sent
        scim_error(response, 400, {"invalidFilter", "invalidValue"})
        assert sent == []
        return
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert sent == [plain.replace("(uid=plainvalue)", f"(uid={ldap.filter.escape_filter_chars(value)})")]


def test_filter_syntax_in_values_matches_exactly(client, named):
    tag, made = named
    for name in made:
        found = user_names(client.get("/scim/v2/Users", query_string={"filter": f"userName eq {json.dumps(name)}"},
                                      headers=ADMIN))
        assert found == [name]
    # a * in a value is a character, not a wildcard; sw/co/ew take it literally too
    assert user_names(client.get("/scim/v2/Users", query_string={"filter": f'userName sw "inj{tag}-*"'},
                                 headers=ADMIN)) == [f"inj{tag}-*"]
    assert user_names(client.get("/scim/v2/Users", query_string={"filter": 'userName eq "*"'}, headers=ADMIN)) == []
    assert sorted(user_names(client.get("/scim/v2/Users", query_string={"filter": f'userName co "{tag}-a)("'},
                                        headers=ADMIN))) == [f"inj{tag}-a)(uid=*"]
    assert user_names(client.get("/scim/v2/Users", query_string={"filter": f'userName eq "inj{tag}-a)(|(uid=*"'},
                                 headers=ADMIN)) == []


@pytest.mark.parametrize("query", [b"filter=%FF%FE", b"filter=userName%20eq%20%22%C3%28%22", b"filter=%00",
                                   b"filter=userName eq \"\xff\"", b"count=%FF", b"sortBy=%C0%AF",
                                   b"attributes=%ED%A0%80", b"startIndex=1e999", b"count=99999999999999999999"])
def test_invalid_utf8_and_odd_numbers_in_query_strings(client, query):
    # the raw bytes, as a WSGI server hands them over (QUERY_STRING is latin-1 text of the bytes)
    response = client.get("/scim/v2/Users", environ_overrides={"QUERY_STRING": query.decode("latin-1")},
                          headers=ADMIN)
    if response.status_code != 200:
        scim_error(response, 400)


def test_deeply_nested_and_long_filters_are_refused(client):
    for text in ["(" * 10000 + 'userName eq "x"' + ")" * 10000, "not (" * 5000 + 'userName pr' + ")" * 5000,
                 " and ".join(['userName eq "x"'] * 3000), 'userName eq "' + "x" * 100000 + '"']:
        scim_error(client.get("/scim/v2/Users", query_string={"filter": text}, headers=ADMIN), 400, {"invalidFilter"})
        scim_error(client.post("/scim/v2/.search", json={"filter": text}, headers=ADMIN), 400, {"invalidFilter"})


# -- PATCH paths ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target(client):
    response = client.post("/scim/v2/Users", json={"schemas": [USER], "userName": f"fz-{uuid.uuid4().hex[:8]}"},
                           headers=ADMIN)
    assert response.status_code == 201
    return response.json["id"]


PATH_PIECES = st.sampled_from(["emails", "name", "givenName", "[", "]", "type", " eq ", '"work"', ".", "value",
                               "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:", "manager", "members",
                               " or ", " and ", "not", "(", ")", "*", "\\", "\x00", "title", "phoneNumbers", ":",
                               "groups", "meta", "id", "$ref", '"', "pr", "userName"])


@EXAMPLES
@given(path=st.one_of(HOSTILE, st.lists(PATH_PIECES, max_size=12).map("".join)),
       op=st.sampled_from(["add", "replace", "remove", "Remove", "move"]),
       value=st.one_of(st.none(), st.text(max_size=10), st.integers(), st.booleans(),
                       st.lists(st.dictionaries(st.sampled_from(["value", "type"]), st.text(max_size=5)), max_size=2)))
def test_any_patch_path_is_applied_or_refused(client, target, path, op, value):
    operation = {"op": op, "path": path}
    if value is not None:
        operation["value"] = value
    response = client.patch(f"/scim/v2/Users/{target}", json={"schemas": [PATCH_OP], "Operations": [operation]},
                            headers=ADMIN)
    if response.status_code != 200:
        scim_error(response, (400, 403, 409), SCIM_TYPES | {None})


# -- ids and DNs in URLs -------------------------------------------------------------------------------


ID_PIECES = st.sampled_from([SUPERADMIN_ID, ",", "=", "+", "\\", "%2C", "%3D", "%00", "%FF", "%2F", "*", "(", ")",
                             "didmosUUID=", "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", "dc=de", " ",
                             "#", ";", "<", ">", '"', "%5C2a", "..", "%252F", "\u00e9"])


@EXAMPLES
@given(resource_id=st.lists(ID_PIECES, min_size=1, max_size=6).map("".join))
def test_ids_in_urls_never_name_another_entry(client, resource_id):
    resource_id = quote(resource_id, safe="%,=+*();")  # as a client sends it: % sequences as they are
    for path in (f"/scim/v2/Users/{resource_id}", f"/lui2_backend/v2/User/{resource_id}/"):
        response = client.get(path, headers=ADMIN)
        if resource_id == SUPERADMIN_ID:
            assert response.status_code == 200
        elif response.status_code in (308, 404, 405) and "scim+json" not in response.headers.get("Content-Type", ""):
            continue  # werkzeug's own routing answer: the path is not a resource path at all
        else:
            assert response.status_code != 200, f"{path!r} named the entry {response.json.get('id')}"
            scim_error(response, (400, 404, 405))  # 405: a path of dots and slashes that is no resource


@pytest.mark.parametrize("node", ["ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de,cn=x", "dc=de",
                                  "ou=people\\,ou=data,ou=default-tenant,dc=didmos,dc=de",
                                  "ou=data,ou=default-tenant,dc=didmos,dc=de)(objectClass=*",
                                  "cn=x+uid=y,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de",
                                  "not a dn", "%00", "ou=\u00e9,ou=data,ou=default-tenant,dc=didmos,dc=de",
                                  "cn=admin,dc=de", "cn=config"])
def test_node_dns_in_urls_stay_inside_the_tree(client, node):
    response = client.post(f"/lui2_backend/v2/User/{node}/", json={"userName": f"nd-{uuid.uuid4().hex[:8]}"},
                           headers=ADMIN)
    scim_error(response, (400, 404), {"invalidValue", None})


# -- JSON bodies ---------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE,
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(HOSTILE, children, max_size=4),
                    max_leaves=20)
RESOURCE_KEYS = st.sampled_from(["userName", "name", "emails", "phoneNumbers", "active", "title", "addresses",
                                 "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User", "members",
                                 "displayName", "password", "externalId", "schemas", "id", "meta", "groups"])


@EXAMPLES
@given(body=st.one_of(JSON, st.dictionaries(RESOURCE_KEYS, JSON, max_size=6)))
def test_any_json_body_is_created_or_refused(client, body):
    response = client.post("/scim/v2/Users", json=body, headers=ADMIN)
    if response.status_code == 201:
        assert client.delete(f"/scim/v2/Users/{response.json['id']}", headers=ADMIN).status_code == 204
    else:
        scim_error(response, (400, 403, 409), SCIM_TYPES | {None})


@EXAMPLES
@given(body=st.one_of(JSON, st.dictionaries(st.sampled_from(["schemas", "Operations", "operations"]), JSON)))
def test_any_json_body_is_a_patch_or_refused(client, target, body):
    response = client.patch(f"/scim/v2/Users/{target}", json=body, headers=ADMIN)
    if response.status_code != 200:
        scim_error(response, (400, 403, 409), SCIM_TYPES | {None})


def nested(depth: int) -> bytes:
    return b'{"userName": ' + b"[" * depth + b"]" * depth + b"}"


BODIES = {
    "10k nested arrays": nested(10000),
    "10k nested objects": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "invalid UTF-8": b'{"userName": "\xff\xfe\xc3\x28"}',
    "lone surrogate escape": b'{"userName": "\\udc80"}',
    "NUL": b'{"userName": "a\\u0000b"}',
    "huge string": b'{"userName": "' + b"x" * 900_000 + b'"}',
    "huge number": b'{"userName": "n", "active": ' + b"9" * 100_000 + b"}",
    "not JSON": b"userName=x",
    "empty": b"",
    "a list": b"[]",
    "a string": b'"x"',
    "trailing garbage": b'{"userName": "x"} {}',
    "duplicate keys": b'{"userName": "dk", "userName": {"a": 1}}',
    "NaN": b'{"userName": "n", "active": NaN}',
}


@pytest.mark.parametrize("name", list(BODIES))
@pytest.mark.parametrize("method, path", [("POST", "/scim/v2/Users"), ("PATCH", "/scim/v2/Users/{id}"),
                                          ("PUT", "/scim/v2/Users/{id}"), ("POST", "/scim/v2/.search"),
                                          ("POST", "/scim/v2/Bulk"), ("POST", "/lui2_backend/v2/User/")])
def test_hostile_json_bodies_are_refused_with_a_scim_error(client, target, method, path, name):
    response = client.open(path.format(id=target), method=method, data=BODIES[name],
                           headers={**ADMIN, "Content-Type": "application/scim+json"})
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
    if response.status_code >= 400:
        scim_error(response, (400, 403, 409, 413, 419), SCIM_TYPES | {None})


@pytest.mark.parametrize("method, path", [("POST", "/pdp/v1/roles"), ("POST", "/pdp/v1/check-access"),
                                          ("POST", "/tasks/v1/tasks"), ("POST", "/pdp/v1/sessions")])
@pytest.mark.parametrize("name", ["10k nested arrays", "10k nested objects", "invalid UTF-8", "huge number"])
def test_hostile_json_bodies_on_the_other_apis(client, method, path, name):
    response = client.open(path, method=method, data=BODIES[name], headers={**ADMIN, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])


# -- oversized bodies ---------------------------------------------------------------------------------------


class Parses:
    """Counts calls of the app's JSON parser."""

    def __init__(self, app, monkeypatch):
        self.calls = 0
        original = app.json.loads

        def loads(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(app.json, "loads", loads)
        import flask.json

        original_module = flask.json.loads

        def module_loads(*args, **kwargs):
            self.calls += 1
            return original_module(*args, **kwargs)

        monkeypatch.setattr(flask.json, "loads", module_loads)


BODY_ROUTES = [("POST", "/scim/v2/Users"), ("PATCH", f"/scim/v2/Users/{SUPERADMIN_ID}"), ("POST", "/scim/v2/Bulk"),
               ("POST", "/scim/v2/.search"), ("POST", "/lui2_backend/v2/User/"), ("POST", "/pdp/v1/roles"),
               ("POST", "/tasks/v1/tasks"), ("POST", "/oauth/token")]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("method, path", BODY_ROUTES)
def test_oversized_bodies_get_413_unparsed(app, client, monkeypatch, method, path, chunked):
    limit = app.config["MAX_CONTENT_LENGTH"]
    body = b'{"userName": "' + b"x" * (limit + 10) + b'"}'
    parses = Parses(app, monkeypatch)
    if chunked:
        # no Content-Length: the server reads at most the limit, then refuses
        response = client.open(path, method=method, input_stream=io.BytesIO(body),
                               headers={**ADMIN, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                               environ_overrides={"wsgi.input_terminated": True})
    else:
        response = client.open(path, method=method, data=body, headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 413, (response.status_code, response.get_data(as_text=True)[:300])
    assert parses.calls == 0
    if path.startswith(("/scim", "/lui2")):
        scim_error(response, 413)


@pytest.mark.parametrize("request_kind", ["GET /Users", "GET LUI /User/", "POST /Users/.search", "POST /.search"])
def test_a_start_index_past_the_end_is_an_empty_page(client, request_kind):
    """(slapo-sssvlv answered an offset past the last entry with a VLV error: 500.)"""
    far = 10**9
    response = {
        "GET /Users": lambda: client.get("/scim/v2/Users", query_string={"startIndex": far}, headers=ADMIN),
        "GET LUI /User/": lambda: client.get("/lui2_backend/v2/User/", query_string={"startIndex": far}, headers=ADMIN),
        "POST /Users/.search": lambda: client.post("/scim/v2/Users/.search", json={"startIndex": far}, headers=ADMIN),
        "POST /.search": lambda: client.post("/scim/v2/.search", json={"startIndex": far}, headers=ADMIN),
    }[request_kind]()
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.json["Resources"] == [] and response.json["totalResults"] > 0
