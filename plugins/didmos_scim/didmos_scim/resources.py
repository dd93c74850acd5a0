"""The SCIM routes: strict RFC 7644 under ``/scim/v2`` and the LUI2-compatible ``/lui2_backend/v2``.

Both mounts share :class:`~didmos_scim.service.ScimService`; they differ only where the original
LUI backend differs from the RFC (paths with trailing slashes and singular names, the ``location``
list and the ``operations`` block of the LUI extension in ``meta``).
"""

from __future__ import annotations

import flask

from didmos_host.api import Blueprint
from didmos_host.app import current_actor, current_host
from didmos_scim.mapping import LUI
from didmos_scim.service import ScimError, ScimService

SCIM_JSON = "application/scim+json"
LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
#: Largest page a list returns; a larger ``count`` is lowered to it (RFC 7644 3.4.2.4).
MAX_RESULTS = 1000
DEFAULT_COUNT = 100
#: LUI path segment -> resource type (the seeds' /User/, /Groups/, /Organization/).
LUI_TYPES = {"user": "User", "groups": "Group", "organization": "Organization"}

scim = Blueprint("scim", __name__, url_prefix="/scim/v2", description="SCIM 2.0 (RFC 7643/7644)")
lui = Blueprint("lui2", __name__, url_prefix="/lui2_backend/v2",
                description="SCIM for clients of the original LUI2 backend")


def service() -> ScimService:
    return current_host().service("scim")


def respond(body, status: int = 200) -> flask.Response:
    response = flask.make_response(flask.json.dumps(body), status)
    response.headers["Content-Type"] = SCIM_JSON
    return response


def _int_arg(name: str, default: int) -> int:
    raw = flask.request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ScimError(f"{name} must be an integer, got {raw!r}", status=400, scim_type="invalidValue") from None


def _list(type_name: str, base_url: str, lui_shape: bool) -> flask.Response:
    actor = current_actor()
    count = min(_int_arg("count", DEFAULT_COUNT), MAX_RESULTS)
    page = service().list(type_name, actor, base_url=base_url, filter_text=flask.request.args.get("filter"),
                          start_index=_int_arg("startIndex", 1), count=count,
                          sort_by=flask.request.args.get("sortBy"),
                          sort_order=flask.request.args.get("sortOrder", "ascending"))
    resources = [_shape(resource, lui_shape) for resource in page.resources]
    return respond({"schemas": [LIST_RESPONSE], "totalResults": page.total, "startIndex": page.start_index,
                    "itemsPerPage": len(resources), "Resources": resources})


def _get(type_name: str, resource_id: str, base_url: str, lui_shape: bool) -> flask.Response:
    actor = current_actor()
    resource, entry = service().get(type_name, resource_id, actor, base_url=base_url)
    if lui_shape:
        operations = current_host().service("pdp").operations(actor, type_name, entry.dn)
        resource["meta"][LUI] = {"operations": {"entry": sorted(operations), "attributes": {}}}
    response = respond(_shape(resource, lui_shape))
    if resource["meta"].get("version"):
        response.headers["ETag"] = resource["meta"]["version"]
    return response


def _shape(resource: dict, lui_shape: bool) -> dict:
    if not lui_shape:
        resource.pop("location", None)  # the LUI list of ancestors is not RFC 7643
    return resource


def _scim_type(endpoint: str) -> str:
    for name, resource_type in current_host().resource_types.items():
        if resource_type.endpoint.strip("/").lower() == endpoint.lower():
            return name
    raise ScimError(f"no resource type at /{endpoint}", status=404)


@scim.route("/<endpoint>", methods=["GET"])
def scim_list(endpoint):
    """List resources (RFC 7644 3.4.2): filter, startIndex, count, sortBy, sortOrder."""
    return _list(_scim_type(endpoint), flask.request.host_url.rstrip("/") + scim.url_prefix, lui_shape=False)


@scim.route("/<endpoint>/<resource_id>", methods=["GET"])
def scim_get(endpoint, resource_id):
    """One resource by id (RFC 7644 3.4.1)."""
    return _get(_scim_type(endpoint), resource_id, flask.request.host_url.rstrip("/") + scim.url_prefix,
                lui_shape=False)


def _lui_type(segment: str) -> str:
    try:
        return LUI_TYPES[segment.lower()]
    except KeyError:
        raise ScimError(f"no resource type {segment!r}; use User, Groups or Organization", status=404) from None


@lui.route("/<segment>/", methods=["GET"])
def lui_list(segment):
    """List resources, as the LUI backend: GET /User/?filter=..."""
    return _list(_lui_type(segment), flask.request.host_url.rstrip("/") + lui.url_prefix, lui_shape=True)


@lui.route("/<segment>/<resource_id>/", methods=["GET"])
def lui_get(segment, resource_id):
    """One resource, as the LUI backend: GET /User/<id>/ with location and meta operations."""
    return _get(_lui_type(segment), resource_id, flask.request.host_url.rstrip("/") + lui.url_prefix,
                lui_shape=True)
