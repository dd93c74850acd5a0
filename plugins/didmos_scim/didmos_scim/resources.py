"""The SCIM routes: strict RFC 7644 under ``/scim/v2`` and the LUI2-compatible ``/lui2_backend/v2``.

Both mounts share :class:`~didmos_scim.service.ScimService` and the handlers here; a :class:`Mount`
says where they differ, as the original LUI backend differs from the RFC: paths with trailing slashes
and singular names, 200 rather than 201 on create and 204 on delete, 419 for a taken userName, unknown
attributes ignored rather than refused, the ``location`` list of ancestors, and ``meta`` with
``created``/``modified`` as GeneralizedTime and the ``operations`` block of the LUI extension.
"""

from __future__ import annotations

from dataclasses import dataclass

import flask

from didmos_host.api import Blueprint, MethodView
from didmos_host.app import current_actor, current_host
from didmos_host.errors import AlreadyExists, AuthenticationFailed
from didmos_host.records import Action
from didmos_scim import openapi as doc
from didmos_scim.filters import InvalidFilter
from didmos_scim.mapping import LUI
from didmos_scim.patch import InvalidSyntax
from didmos_scim.service import ScimError, ScimService

SCIM_JSON = "application/scim+json"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
#: Largest page a list returns; a larger ``count`` is lowered to it (RFC 7644 3.4.2.4).
MAX_RESULTS = 1000
DEFAULT_COUNT = 100
#: LUI path segment -> resource type (the seeds' /User/, /Groups/, /Organization/).
LUI_TYPES = {"user": "User", "groups": "Group", "organization": "Organization"}
#: The seeds' spelling of each path segment, for meta.location on the LUI mount.
LUI_PATHS = {"User": "User", "Groups": "Group", "Organization": "Organization"}

scim = Blueprint("scim", __name__, url_prefix="/scim/v2", description="SCIM 2.0 (RFC 7643/7644)",
                 error_response=doc.ERROR_RESPONSE)
lui = Blueprint("lui2", __name__, url_prefix="/lui2_backend/v2",
                description="SCIM for clients of the original LUI2 backend", error_response=doc.ERROR_RESPONSE)


@dataclass(frozen=True)
class Mount:
    """What differs between the two mounts."""

    prefix: str
    strict: bool
    created: int
    deleted: int
    taken: int  # status of a create whose userName is taken

    @property
    def lui(self) -> bool:
        return not self.strict

    def base_url(self) -> str:
        return flask.request.host_url.rstrip("/") + self.prefix


STRICT = Mount("/scim/v2", strict=True, created=201, deleted=204, taken=409)
LUI_MOUNT = Mount("/lui2_backend/v2", strict=False, created=200, deleted=200, taken=419)


def service() -> ScimService:
    return current_host().service("scim")


def respond(body, status: int = 200) -> flask.Response:
    response = flask.make_response(flask.json.dumps(body), status)
    response.headers["Content-Type"] = SCIM_JSON
    return response


def _int_arg(source, name: str, default: int) -> int:
    raw = source.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ScimError(f"{name} must be an integer, got {raw!r}", status=400, scim_type="invalidValue")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ScimError(f"{name} must be an integer, got {raw!r}", status=400, scim_type="invalidValue") from None


def _body():
    """The request's JSON body; 413 when too large, 400 ``invalidSyntax`` when it is not JSON.

    Only for an authenticated caller (401 first): nothing of a stranger's input is parsed."""
    current_actor()
    limit = current_host().settings.api.max_content_length
    length = flask.request.content_length
    if length is not None and length > limit:
        raise ScimError(f"the request body has {length} bytes; at most {limit} are accepted (api.max_content_length)",
                        status=413)
    raw = flask.request.get_data(cache=True)  # a body without Content-Length is cut off by Flask at the limit
    try:
        return flask.json.loads(raw)
    except ValueError as exc:
        raise InvalidSyntax(f"the request body is not valid JSON: {exc}") from None


def _words(raw) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        return [str(w).strip() for w in raw if str(w).strip()]
    return [w.strip() for w in str(raw).split(",") if w.strip()]


def _projection(source) -> tuple[list[str] | None, list[str] | None]:
    attributes, excluded = _words(source.get("attributes")), _words(source.get("excludedAttributes"))
    if attributes and excluded:
        raise ScimError("give attributes or excludedAttributes, not both", status=400, scim_type="invalidValue")
    return attributes, excluded


def _names(mount: Mount, source) -> bool:
    """Whether references need their display names looked up: on the LUI mount always, on the strict
    one only when asked for (``display`` is returned on request only there)."""
    if mount.lui:
        return True
    wanted = source.get("attributes")
    text = ",".join(wanted) if isinstance(wanted, list) else str(wanted or "")
    return "display" in text.lower()


def _finish(resource: dict, entry, type_name: str, mount: Mount, *, keyed_operations: bool = False,
            projection=(None, None)) -> dict:
    """The mount's shape of one resource."""
    if mount.lui:
        pdp = current_host().service("pdp")
        subject = _subject(pdp)
        block = _lui_operations(pdp.operations(current_actor(), type_name, entry.dn, subject))
        if type_name == "User":
            # the seeds' User: groups always present, the first mail also as "email", and the LUI
            # extension saying which roles the user holds and whether they reach beyond its own entry
            resource.setdefault("groups", [])
            if resource.get("emails"):
                resource["email"] = resource["emails"][0]["value"]
            readable = pdp.decide(current_actor(), Action("read", type_name, entry.dn), subject).attributes
            if readable is None or "didmosroleassignment" in {a.lower() for a in readable}:
                roles, admin = pdp.role_summary(entry.values("didmosRoleAssignment"))
                resource[LUI] = {"adminAccess": admin, "roles": roles}
                if LUI not in resource["schemas"]:
                    resource["schemas"].append(LUI)
        meta = resource["meta"]
        meta[LUI] = {"operations": {entry.dn: block}} if keyed_operations else {"operations": block}
        if entry.first("createTimestamp"):
            meta["created"] = entry.first("createTimestamp")
        if entry.first("modifyTimestamp"):
            meta["modified"] = entry.first("modifyTimestamp")
        meta.pop("lastModified", None)
        segment = next((name for name, value in LUI_PATHS.items() if value == type_name), None)
        if segment is not None:
            meta["location"] = f"{mount.base_url()}/{segment}/{resource['id']}/"
        _lui_references(resource, mount.base_url())
    else:
        resource.pop("location", None)  # the LUI list of ancestors is not RFC 7643
        resource = service().strip_request_only(resource, type_name, projection[0])
    attributes, excluded = projection
    if attributes or excluded:
        resource = service().project(resource, type_name, attributes, excluded)
    return resource


def _subject(pdp):
    """The caller's roles as the PDP needs them, read once per request (a LUI page asks for every entry)."""
    if "didmos_scim_subject" not in flask.g:
        flask.g.didmos_scim_subject = pdp.subject(current_actor())
    return flask.g.didmos_scim_subject


def _lui_references(value, base_url: str) -> None:
    """``$ref`` links as LUI paths: ``.../Users/<id>`` -> ``.../User/<id>/``."""
    if isinstance(value, list):
        for item in value:
            _lui_references(item, base_url)
    elif isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(base_url + "/"):
            endpoint, _, ref_id = ref[len(base_url) + 1:].partition("/")
            segment = {"Users": "User", "Groups": "Groups", "Organizations": "Organization"}.get(endpoint)
            if segment and ref_id:
                value["$ref"] = f"{base_url}/{segment}/{ref_id}/"
        for key, item in value.items():
            if key != "$ref":
                _lui_references(item, base_url)


def _lui_operations(operations: dict) -> dict:
    """``{"read": None, "modify-replace": {"displayName"}}`` -> the seeds' ``{"entry": [...], "attributes": {...}}``."""
    # "create" is about entries below, not this one: the seeds' entry lists never show it
    entry = sorted(op for op, attrs in operations.items() if attrs is None and op != "create")
    attributes: dict[str, list[str]] = {}
    for op, attrs in operations.items():
        for attr in sorted(attrs or ()):
            attributes.setdefault(attr, []).append(op)
    return {"entry": entry, "attributes": {attr: sorted(ops) for attr, ops in attributes.items()}}


def _with_version(response: flask.Response, meta: dict) -> flask.Response:
    """The ``ETag`` header from the resource's ``meta`` as read, before ``attributes`` or
    ``excludedAttributes`` left ``meta.version`` out of the body (the header is there whatever is shown)."""
    if meta.get("version"):
        response.headers["ETag"] = meta["version"]
    return response


# -- handlers shared by both mounts --------------------------------------------------------------------


def _list(type_name: str, mount: Mount, source, status_source=None) -> flask.Response:
    actor = current_actor()
    count = min(_int_arg(source, "count", DEFAULT_COUNT), MAX_RESULTS)
    page = service().list(type_name, actor, base_url=mount.base_url(), filter_text=source.get("filter"),
                          start_index=_int_arg(source, "startIndex", 1), count=count,
                          sort_by=source.get("sortBy"), sort_order=source.get("sortOrder") or "ascending",
                          with_entries=True, cursor=_cursor_arg(source), names=_names(mount, source))
    projection = _projection(source)
    resources = [_finish(resource, entry, type_name, mount, projection=projection)
                 for resource, entry in zip(page.resources, page.entries)]
    body = {"schemas": [LIST_RESPONSE], "totalResults": page.total, "startIndex": page.start_index,
            "itemsPerPage": len(resources), "Resources": resources}
    if _cursor_arg(source) is not None:
        del body["startIndex"]  # RFC 9865: a cursor page has nextCursor instead
        if page.next_cursor:
            body["nextCursor"] = page.next_cursor
    return respond(body)


def _cursor_arg(source) -> str | None:
    cursor = source.get("cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise ScimError("cursor must be a string", status=400, scim_type="invalidCursor")
    if cursor is not None and source.get("startIndex") not in (None, ""):
        raise ScimError("give cursor or startIndex, not both", status=400, scim_type="invalidValue")
    return cursor


def _search(type_name: str | None, mount: Mount) -> flask.Response:
    """POST .search (RFC 7644 3.4.3): the query in the body; at the root, every type at once."""
    body = _body()
    if not isinstance(body, dict):
        raise InvalidSyntax("the body of a .search must be a SearchRequest object")
    schemas = body.get("schemas")
    if schemas is not None and SEARCH_REQUEST not in (schemas if isinstance(schemas, list) else [schemas]):
        raise InvalidSyntax(f"schemas must contain {SEARCH_REQUEST}")
    for key in ("filter", "sortBy", "sortOrder"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ScimError(f"{key} must be a string", status=400, scim_type="invalidValue")
    if type_name is not None:
        return _list(type_name, mount, body)
    return _search_all(mount, body)


def _search_all(mount: Mount, body: dict) -> flask.Response:
    """A root .search: each readable type's matches, one after another, paged across them."""
    actor = current_actor()
    start, count = max(_int_arg(body, "startIndex", 1), 1), min(_int_arg(body, "count", DEFAULT_COUNT), MAX_RESULTS)
    if body.get("sortBy"):
        raise ScimError("sortBy is not supported across resource types; search one type", status=400,
                        scim_type="invalidValue")
    total, resources, skip, refused = 0, [], start - 1, []
    for type_name in current_host().resource_types:
        try:
            counted = service().list(type_name, actor, base_url=mount.base_url(), filter_text=body.get("filter"),
                                     count=0)
        except InvalidFilter as exc:
            if "unknown attribute" not in exc.message and "not stored" not in exc.message:
                raise
            refused.append(exc)  # a filter on an attribute this type lacks matches none of its resources
            continue
        total += counted.total
        if skip >= counted.total:
            skip -= counted.total
            continue
        wanted = count - len(resources)
        if wanted > 0:
            page = service().list(type_name, actor, base_url=mount.base_url(), filter_text=body.get("filter"),
                                  start_index=skip + 1, count=wanted, with_entries=True)
            resources += [_finish(r, e, type_name, mount, projection=_projection(body))
                          for r, e in zip(page.resources, page.entries)]
        skip = 0
    if len(refused) == len(current_host().resource_types):
        raise refused[0]  # no resource type has that attribute
    return respond({"schemas": [LIST_RESPONSE], "totalResults": total, "startIndex": start,
                    "itemsPerPage": len(resources), "Resources": resources})


def _get(type_name: str, resource_id: str, mount: Mount) -> flask.Response:
    resource, entry = service().get(type_name, resource_id, current_actor(), base_url=mount.base_url(),
                                    names=_names(mount, flask.request.args))
    version = resource.get("meta", {}).get("version")
    if version and version in {t.strip() for t in flask.request.headers.get("If-None-Match", "").split(",")}:
        response = flask.make_response("", 304)
        response.headers["ETag"] = version
        return response
    meta = dict(resource.get("meta", {}))
    resource = _finish(resource, entry, type_name, mount, projection=_projection(flask.request.args))
    return _with_version(respond(resource), meta)


def _create(type_name: str, mount: Mount, parent: str | None = None) -> flask.Response:
    body = _body()
    try:
        resource, entry = service().create(type_name, body, current_actor(), base_url=mount.base_url(),
                                           strict=mount.strict, parent=parent,
                                           names=_names(mount, flask.request.args))
    except AlreadyExists as exc:
        if mount.lui and (exc.detail or {}).get("attribute") == "userName":
            raise ScimError(exc.message, status=mount.taken, scim_type="uniqueness") from None
        raise
    meta = dict(resource.get("meta", {}))
    resource = _finish(resource, entry, type_name, mount, keyed_operations=True,
                       projection=_projection(flask.request.args))
    response = _with_version(respond(resource, mount.created), meta)
    if mount.strict:
        response.headers["Location"] = meta["location"]
    return response


def _replace(type_name: str, resource_id: str, mount: Mount) -> flask.Response:
    resource, entry = service().replace(type_name, resource_id, _body(), current_actor(), base_url=mount.base_url(),
                                        strict=mount.strict, if_match=flask.request.headers.get("If-Match"),
                                        names=_names(mount, flask.request.args))
    meta = dict(resource.get("meta", {}))
    resource = _finish(resource, entry, type_name, mount, projection=_projection(flask.request.args))
    return _with_version(respond(resource), meta)


def _patch(type_name: str, resource_id: str, mount: Mount) -> flask.Response:
    resource, entry = service().patch(type_name, resource_id, _body(), current_actor(), base_url=mount.base_url(),
                                      strict=mount.strict, if_match=flask.request.headers.get("If-Match"),
                                      names=_names(mount, flask.request.args))
    meta = dict(resource.get("meta", {}))
    resource = _finish(resource, entry, type_name, mount, projection=_projection(flask.request.args))
    return _with_version(respond(resource), meta)


def _delete(type_name: str, resource_id: str, mount: Mount) -> flask.Response:
    service().delete(type_name, resource_id, current_actor(), if_match=flask.request.headers.get("If-Match"))
    if mount.deleted == 204:
        return flask.make_response("", 204)
    return respond({}, 200)


def _me() -> str:
    actor = current_actor()
    if actor is None:
        raise AuthenticationFailed("authentication required")
    return actor.uuid


# -- /scim/v2 ------------------------------------------------------------------------------------------


def _scim_type(endpoint: str) -> str:
    for name, resource_type in current_host().resource_types.items():
        if resource_type.endpoint.strip("/").lower() == endpoint.lower():
            return name
    if endpoint.lower() in ("serviceproviderconfig", "resourcetypes", "schemas", "bulk", "me"):
        raise ScimError(f"{flask.request.method} is not allowed on /{endpoint}", status=405)
    raise ScimError(f"no resource type at /{endpoint}", status=404)


@scim.route("/<endpoint>", parameters=[doc.path_enum("endpoint", doc.ENDPOINTS)])
class ScimCollection(MethodView):
    @scim.doc(**doc.operation(doc.LISTED, **doc.LIST))
    def get(self, endpoint):
        """List resources (RFC 7644 3.4.2: filter, startIndex, count, sortBy, sortOrder, attributes,
        excludedAttributes, cursor)."""
        return _list(_scim_type(endpoint), STRICT, flask.request.args)

    @scim.doc(**doc.operation(doc.CREATED, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
    def post(self, endpoint):
        """Create a resource (RFC 7644 3.3: 201 with Location and ETag)."""
        return _create(_scim_type(endpoint), STRICT)


@scim.route("/<endpoint>/<resource_id>", parameters=[doc.path_enum("endpoint", doc.ENDPOINTS)])
class ScimResource(MethodView):
    """One resource by id."""

    @scim.doc(**doc.operation(doc.READ, doc.NOT_MODIFIED, query=doc.PROJECTION))
    def get(self, endpoint, resource_id):
        """Read it (If-None-Match: 304)."""
        return _get(_scim_type(endpoint), resource_id, STRICT)

    @scim.doc(**doc.operation(doc.READ, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
    def put(self, endpoint, resource_id):
        """Replace it (If-Match: 412 when it changed)."""
        return _replace(_scim_type(endpoint), resource_id, STRICT)

    @scim.doc(**doc.operation(doc.READ, body=doc.PATCH_BODY, query=doc.PROJECTION))
    def patch(self, endpoint, resource_id):
        """Modify it with a PatchOp, as one LDAP modify (If-Match: 412 when it changed)."""
        return _patch(_scim_type(endpoint), resource_id, STRICT)

    @scim.doc(**doc.operation(doc.DELETED))
    def delete(self, endpoint, resource_id):
        """Delete it (If-Match: 412 when it changed)."""
        return _delete(_scim_type(endpoint), resource_id, STRICT)


def _one(type_name: str, resource_id: str, mount: Mount) -> flask.Response:
    method = flask.request.method
    if method == "GET":
        return _get(type_name, resource_id, mount)
    if method == "PUT":
        return _replace(type_name, resource_id, mount)
    if method == "PATCH":
        return _patch(type_name, resource_id, mount)
    return _delete(type_name, resource_id, mount)


@scim.route("/<endpoint>/.search", methods=["POST"], parameters=[doc.path_enum("endpoint", doc.ENDPOINTS)])
@scim.doc(**doc.operation(doc.LISTED, body=doc.SEARCH_BODY))
def scim_type_search(endpoint):
    """Query one resource type with the query in the body (RFC 7644 3.4.3)."""
    return _search(_scim_type(endpoint), STRICT)


@scim.route("/.search", methods=["POST"])
@scim.doc(**doc.operation(doc.LISTED, body=doc.SEARCH_BODY))
def scim_root_search():
    """Query every resource type at once (RFC 7644 3.4.3)."""
    return _search(None, STRICT)


@scim.route("/Me")
class ScimMe(MethodView):
    """The authenticated user's own resource (RFC 7644 3.11), decided like any other User."""

    @scim.doc(**doc.operation(doc.READ, doc.NOT_MODIFIED, query=doc.PROJECTION))
    def get(self):
        """Read it."""
        return _one("User", _me(), STRICT)

    @scim.doc(**doc.operation(doc.READ, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
    def put(self):
        """Replace it."""
        return _one("User", _me(), STRICT)

    @scim.doc(**doc.operation(doc.READ, body=doc.PATCH_BODY, query=doc.PROJECTION))
    def patch(self):
        """Modify it."""
        return _one("User", _me(), STRICT)

    @scim.doc(**doc.operation(doc.DELETED))
    def delete(self):
        """Delete it."""
        return _one("User", _me(), STRICT)

    @scim.doc(**doc.operation(doc.NOT_IMPLEMENTED, body=doc.RESOURCE_BODY))
    def post(self):
        """Refused whoever asks: create users at /Users (RFC 7644 3.11 allows 501)."""
        raise ScimError("POST /Me is not supported: create users at /Users", status=501)


# -- /lui2_backend/v2 ----------------------------------------------------------------------------------


def _lui_type(segment: str) -> str:
    try:
        return LUI_TYPES[segment.lower()]
    except KeyError:
        raise ScimError(f"no resource type {segment!r}; use User, Groups or Organization", status=404) from None


_SEGMENT = [doc.path_enum("segment", doc.LUI_SEGMENTS)]


@lui.route("/<segment>/", parameters=_SEGMENT)
class LuiCollection(MethodView):
    @lui.doc(**doc.operation(doc.LISTED, **doc.LIST))
    def get(self, segment):
        """List resources as the LUI backend (GET /User/?filter=...)."""
        return _list(_lui_type(segment), LUI_MOUNT, flask.request.args)

    @lui.doc(**doc.operation(doc.CREATED_LUI, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
    def post(self, segment):
        """Create a resource (POST /User/: 200)."""
        return _create(_lui_type(segment), LUI_MOUNT)


@lui.route("/<segment>/<resource_id>/", parameters=_SEGMENT)
class LuiResource(MethodView):
    """One resource as the LUI backend: with location and meta operations."""

    @lui.doc(**doc.operation(doc.READ, doc.NOT_MODIFIED, query=doc.PROJECTION))
    def get(self, segment, resource_id):
        """Read it."""
        return _get(_lui_type(segment), resource_id, LUI_MOUNT)

    @lui.doc(**doc.operation(doc.READ, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
    def put(self, segment, resource_id):
        """Replace it."""
        return _replace(_lui_type(segment), resource_id, LUI_MOUNT)

    @lui.doc(**doc.operation(doc.READ, body=doc.PATCH_BODY, query=doc.PROJECTION))
    def patch(self, segment, resource_id):
        """Modify it."""
        return _patch(_lui_type(segment), resource_id, LUI_MOUNT)

    @lui.doc(**doc.operation(doc.DELETED_LUI))
    def delete(self, segment, resource_id):
        """Delete it (200 with {})."""
        return _delete(_lui_type(segment), resource_id, LUI_MOUNT)


@lui.route("/<segment>/<path:node_dn>/", methods=["POST"], parameters=_SEGMENT)
@lui.doc(**doc.operation(doc.CREATED_LUI, body=doc.RESOURCE_BODY, query=doc.PROJECTION))
def lui_create_under(segment, node_dn):
    """Create a resource under the entry ``node_dn`` (POST /User/ou=data,ou=default-tenant,dc=didmos,dc=de/)."""
    return _create(_lui_type(segment), LUI_MOUNT, parent=node_dn)


@lui.route("/<segment>/.search", methods=["POST"], parameters=_SEGMENT)
@lui.doc(**doc.operation(doc.LISTED, body=doc.SEARCH_BODY))
def lui_type_search(segment):
    """Query one resource type with the query in the body."""
    return _search(_lui_type(segment), LUI_MOUNT)
