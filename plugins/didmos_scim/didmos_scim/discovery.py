"""SCIM discovery on the strict mount: ``/ServiceProviderConfig``, ``/ResourceTypes``, ``/Schemas``.

RFC 7644 section 4 defines the endpoints, RFC 7643 sections 5-7 their documents, RFC 9865 the
``pagination`` block of the service provider configuration.

The documents are built from the host's registered resource types and the mapping the SCIM service
uses for each (``ScimService.mapping``, so a customer plugin's ``didmos_attribute_mapping`` change shows
here too), never from a hand-written copy that could drift from what the API serves. The builders are
pure functions; the blueprint below only gathers their inputs.

The endpoints answer without credentials (RFC 7644 section 4 allows it: clients read them to learn how
to authenticate). didmos authenticates per route, when a handler asks ``current_actor()``; these
handlers never ask.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import flask

from didmos_host.api import Blueprint
from didmos_host.app import current_host
from didmos_host.errors import DidmosError
from didmos_host.records import ResourceType
from didmos_scim import openapi as doc
from didmos_scim.mapping import LUI, Attribute, Mapping, Schema
from didmos_scim.resources import DEFAULT_COUNT, LIST_RESPONSE, MAX_RESULTS, respond
from didmos_scim.service import ScimError

SERVICE_PROVIDER_CONFIG = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"

HTTP_BASIC = {
    "type": "httpbasic",
    "name": "HTTP Basic",
    "description": "HTTP Basic authentication (RFC 7617): the user name is the user's id (didmosUUID)",
    "specUri": "https://www.rfc-editor.org/info/rfc7617",
    "primary": True,
}


@dataclass(frozen=True)
class ProviderLimits:
    """What the service provider configuration announces about sizes and paging.

    ``max_operations`` and ``max_payload_size``: the largest bulk request (RFC 7643 section 5);
    ``max_results``: the most resources one list returns; ``default_page_size`` and ``max_page_size``:
    a list's ``count`` when absent and its ceiling; ``cursor_pagination`` and ``cursor_timeout``
    (seconds a cursor stays valid): RFC 9865 cursors; didmos cursors name a resource and never expire.
    """

    max_operations: int = 1000
    max_payload_size: int = 1048576
    max_results: int = 1000
    default_page_size: int = 100
    max_page_size: int = 1000
    cursor_pagination: bool = True
    cursor_timeout: int | None = None


def service_provider_config(limits: ProviderLimits, base_url: str) -> dict[str, Any]:
    """The ServiceProviderConfig resource (RFC 7643 section 5, ``pagination`` of RFC 9865).

    ``base_url`` is the mount's URL without a trailing slash (``https://idm.example.org/scim/v2``).
    ``cursorTimeout`` appears only with a timeout: RFC 9865 section 4 makes it a positive integer, and
    its absence says there is none.
    """
    pagination: dict[str, Any] = {
        "cursor": limits.cursor_pagination,
        "index": True,
        "defaultPaginationMethod": "index",
        "defaultPageSize": limits.default_page_size,
        "maxPageSize": limits.max_page_size,
    }
    if limits.cursor_timeout:
        pagination["cursorTimeout"] = limits.cursor_timeout
    return {
        "schemas": [SERVICE_PROVIDER_CONFIG],
        "patch": {"supported": True},
        "bulk": {"supported": True, "maxOperations": limits.max_operations,
                 "maxPayloadSize": limits.max_payload_size},
        "filter": {"supported": True, "maxResults": limits.max_results},
        "changePassword": {"supported": True},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [dict(HTTP_BASIC)],
        "pagination": pagination,
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base_url}/ServiceProviderConfig"},
    }


def resource_types(registered: Iterable[tuple[ResourceType, Mapping]], base_url: str) -> list[dict[str, Any]]:
    """A ResourceType resource (RFC 7643 section 6) for each registered type and its mapping.

    The core schema and the extensions are the mapping's, since the mapping is what the API renders
    and accepts (a customer mapping may add an extension the registration does not name). No
    extension is ever ``required``: didmos accepts and returns resources without any of them.
    """
    documents = []
    for resource_type, mapping in registered:
        documents.append({
            "schemas": [RESOURCE_TYPE],
            "id": resource_type.name,
            "name": resource_type.name,
            "endpoint": resource_type.endpoint,
            "description": resource_type.description or resource_type.name,
            "schema": mapping.core.id,
            "schemaExtensions": [{"schema": extension.id, "required": False} for extension in mapping.extensions],
            "meta": {"resourceType": "ResourceType", "location": f"{base_url}/ResourceTypes/{resource_type.name}"},
        })
    return documents


def schemas(mappings: Iterable[Mapping], base_url: str) -> list[dict[str, Any]]:
    """A Schema resource (RFC 7643 section 7) for each distinct schema URN the mappings use.

    A URN used by several resource types (the LUI extension) appears once. When their mappings define
    it differently (a customer plugin edited one), its attributes are merged by name: every attribute
    of any of them appears, and an attribute defined by more than one is shown as the first
    registered type defines it.
    """
    merged: dict[str, tuple[Schema, dict[str, Attribute]]] = {}
    for mapping in mappings:
        for schema in mapping.schemas:
            _, attributes = merged.setdefault(schema.id.lower(), (schema, {}))
            for attribute in schema.attributes:
                attributes.setdefault(attribute.name.lower(), attribute)
    return [
        {
            "schemas": [SCHEMA],
            "id": schema.id,
            "name": schema.name,
            "description": schema.description,
            "attributes": [_attribute(attribute) for attribute in attributes.values()],
            "meta": {"resourceType": "Schema", "location": f"{base_url}/Schemas/{schema.id}"},
        }
        for schema, attributes in merged.values()
    ]


def _attribute(attribute: Attribute, canonical_values: tuple[str, ...] = ()) -> dict[str, Any]:
    """One attribute definition (RFC 7643 section 7), sub-attributes included.

    A complex attribute stored as DNs (``ldap`` set: ``manager``, ``members``) stays complex here:
    clients see its ``value``/``$ref``/``display`` sub-attributes, not the DN. A typed multi-valued
    attribute (``by_type``) accepts only its mapped types, so they are the ``canonicalValues`` of its
    ``type`` sub-attribute, where RFC 7643 section 8.7.1 puts them (``emails.type``).
    """
    document: dict[str, Any] = {
        "name": attribute.name,
        "type": attribute.type,
        "multiValued": attribute.multi_valued,
        "description": attribute.description,
        "required": attribute.required,
    }
    canonical_values = canonical_values or attribute.canonical_values
    if canonical_values:
        document["canonicalValues"] = list(canonical_values)
    document.update({
        "caseExact": attribute.case_exact,
        "mutability": attribute.mutability,
        "returned": attribute.returned,
        "uniqueness": attribute.uniqueness,
    })
    if attribute.type == "complex":
        types = tuple(value_type for value_type, _ in attribute.by_type)
        document["subAttributes"] = [
            _attribute(sub, (types if sub.name.lower() == "type" else ()) or sub.canonical_values)
            for sub in attribute.sub_attributes
        ]
    if attribute.type == "reference":
        document["referenceTypes"] = list(attribute.reference_types)
    return document


def registered(host) -> list[tuple[ResourceType, Mapping]]:
    """Each registered resource type with the mapping the SCIM service uses for it.

    A type no plugin maps is not served through SCIM at all, so it is left out rather than making
    discovery fail for every client.

    The LUI extension (``urn:scim:schemas:custom:daasi:lui:2.0``) belongs to the LUI mount: its URN
    ends in a version, not a name, so RFC 7644 attribute paths cannot address it, and generic clients
    (scim2-models among them) fail on it. The strict mount does not publish it.
    """
    service = host.service("scim")
    found = []
    for resource_type in host.resource_types.values():
        try:
            mapping = service.mapping(resource_type)
        except DidmosError:
            continue
        found.append((resource_type, replace(mapping, extensions=tuple(
            extension for extension in mapping.extensions if extension.id != LUI))))
    return found


# -- routes --------------------------------------------------------------------------------------------

discovery = Blueprint("scim_discovery", __name__, url_prefix="/scim/v2",
                      description="SCIM 2.0 discovery: service provider configuration, resource types, "
                                  "schemas (RFC 7644 section 4); no credentials needed",
                      error_response=doc.ERROR_RESPONSE)
_DOCUMENT = doc.operation(doc.ok(200, {"type": "object", "required": ["schemas"]}, "The document"))
_LISTED = doc.operation(doc.LISTED)

#: Methods the discovery endpoints answer; every other one gets 405.
ALLOWED = "GET, HEAD, OPTIONS"
REFUSED = ["POST", "PUT", "PATCH", "DELETE"]


def _base_url() -> str:
    return flask.request.host_url.rstrip("/") + discovery.url_prefix


def _refuse_filter() -> None:
    # RFC 7644 section 4: query parameters are ignored here, but a filter is refused so that no client
    # takes the unfiltered answer for a filtered one.
    if "filter" in flask.request.args:
        raise ScimError("the discovery endpoints cannot be filtered; request them without 'filter'", status=403)


def _list_response(resources: list[dict[str, Any]]) -> flask.Response:
    return respond({"schemas": [LIST_RESPONSE], "totalResults": len(resources), "startIndex": 1,
                    "itemsPerPage": len(resources), "Resources": resources})


@discovery.route("/ServiceProviderConfig", methods=["GET"])
@discovery.doc(**_DOCUMENT)
def get_service_provider_config():
    """The SCIM features this service provider offers (RFC 7643 section 5)."""
    _refuse_filter()
    limits = ProviderLimits(max_payload_size=current_host().settings.api.max_content_length,
                            max_results=MAX_RESULTS, default_page_size=DEFAULT_COUNT, max_page_size=MAX_RESULTS)
    return respond(service_provider_config(limits, _base_url()))


@discovery.route("/ResourceTypes", methods=["GET"])
@discovery.doc(**_LISTED)
def list_resource_types():
    """Every resource type (RFC 7643 section 6), as a ListResponse."""
    _refuse_filter()
    return _list_response(resource_types(registered(current_host()), _base_url()))


@discovery.route("/ResourceTypes/<name>", methods=["GET"])
@discovery.doc(**_DOCUMENT)
def get_resource_type(name):
    """One resource type by name (``User``); 404 when there is none of that name."""
    _refuse_filter()
    documents = resource_types(registered(current_host()), _base_url())
    for document in documents:
        if document["id"].lower() == name.lower():
            return respond(document)
    known = ", ".join(document["id"] for document in documents)
    raise ScimError(f"no resource type {name!r}; the resource types are {known}", status=404)


@discovery.route("/Schemas", methods=["GET"])
@discovery.doc(**_LISTED)
def list_schemas():
    """Every schema the resource types use, core and extensions (RFC 7643 section 7), as a ListResponse."""
    _refuse_filter()
    return _list_response(schemas([mapping for _, mapping in registered(current_host())], _base_url()))


@discovery.route("/Schemas/<urn>", methods=["GET"])
@discovery.doc(**_DOCUMENT)
def get_schema(urn):
    """One schema by its URN (``urn:ietf:params:scim:schemas:core:2.0:User``); 404 when none has it."""
    _refuse_filter()
    for document in schemas([mapping for _, mapping in registered(current_host())], _base_url()):
        if document["id"].lower() == urn.lower():
            return respond(document)
    raise ScimError(f"no schema {urn!r}; GET /scim/v2/Schemas lists them", status=404)


def _method_not_allowed(**_):
    raise ScimError(f"{flask.request.method} is not allowed here; the discovery endpoints are read-only "
                    f"({ALLOWED})", status=405)


# The refusals are explicit rules, not werkzeug's own 405: werkzeug falls through to a rule with a
# variable that accepts the method (``/scim/v2/<endpoint>`` will take POST to create), which would
# turn POST /Schemas into "no resource type". They go through flask's add_url_rule, not
# flask-smorest's, so /openapi.json does not list operations that only refuse.
for _endpoint, _rule in (("refuse_service_provider_config", "/ServiceProviderConfig"),
                         ("refuse_resource_types", "/ResourceTypes"), ("refuse_resource_type", "/ResourceTypes/<name>"),
                         ("refuse_schemas", "/Schemas"), ("refuse_schema", "/Schemas/<urn>")):
    flask.Blueprint.add_url_rule(discovery, _rule, _endpoint, _method_not_allowed, methods=REFUSED,
                                 provide_automatic_options=False)


@discovery.after_request
def _allow(response: flask.Response) -> flask.Response:
    # RFC 9110 15.5.6: a 405 names the allowed methods. OPTIONS would otherwise list the refused ones
    # too, since their rules match the same paths.
    if response.status_code == 405 or flask.request.method == "OPTIONS":
        response.headers["Allow"] = ALLOWED
    return response
