"""What /openapi.json says about the SCIM routes: their parameters, bodies and responses, as they are
sent (``application/scim+json``, SCIM Error bodies for every error, RFC 7644 3.12).

The resource schemas are deliberately open (any further attribute is allowed): which attributes a
resource has depends on the mapping (a customer plugin may change it) and on what the caller may
read; ``/scim/v2/Schemas`` is the precise description of the resources.
"""

from __future__ import annotations

from typing import Any

SCIM_JSON = "application/scim+json"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"

_STRINGS = {"type": "array", "items": {"type": "string"}}

ERROR_SCHEMA = {
    "type": "object",
    "required": ["schemas", "status"],
    "properties": {
        "schemas": {**_STRINGS, "description": f"[{ERROR!r}]"},
        "status": {"type": "string", "description": "The HTTP status, as a string"},
        "scimType": {"type": "string", "description": "invalidFilter, invalidSyntax, invalidPath, invalidValue, "
                                                      "uniqueness, mutability, noTarget, tooMany, ..."},
        "detail": {"type": "string", "description": "What was wrong, and what would be right"},
    },
}

#: The ``default`` response of every SCIM operation.
ERROR_RESPONSE = {
    "description": "A SCIM Error (RFC 7644 3.12); 401 with `WWW-Authenticate`, 429 with `Retry-After`",
    "content": {SCIM_JSON: {"schema": ERROR_SCHEMA}},
}

RESOURCE_SCHEMA = {
    "type": "object",
    "required": ["schemas", "id"],
    "properties": {
        "schemas": _STRINGS,
        "id": {"type": "string"},
        "externalId": {"type": "string"},
        "meta": {"type": "object"},
    },
}

LIST_SCHEMA = {
    "type": "object",
    "required": ["schemas", "totalResults", "Resources"],
    "properties": {
        "schemas": _STRINGS,
        "totalResults": {"type": "integer", "minimum": 0},
        "startIndex": {"type": "integer", "minimum": 1},
        "itemsPerPage": {"type": "integer", "minimum": 0},
        "nextCursor": {"type": "string"},
        "Resources": {"type": "array", "items": {"type": "object"}},
    },
}

BULK_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["schemas", "Operations"],
    "properties": {
        "schemas": _STRINGS,
        "Operations": {"type": "array", "items": {
            "type": "object", "required": ["status"],
            "properties": {"method": {"type": "string"}, "bulkId": {"type": "string"}, "version": {"type": "string"},
                           "location": {"type": "string"}, "status": {"type": "string"},
                           "response": ERROR_SCHEMA}}},
    },
}

#: The request body of a create or a replace: a resource object (schemas, id and meta are ignored).
RESOURCE_BODY = {"type": "object", "properties": {"schemas": _STRINGS, "userName": {"type": "string"},
                                                  "displayName": {"type": "string"}, "name": {"type": "object"},
                                                  "externalId": {"type": "string"}, "active": {"type": "boolean"}}}
PATCH_BODY = {
    "type": "object",
    "required": ["Operations"],
    "properties": {
        "schemas": {"type": "array", "items": {"const": "urn:ietf:params:scim:api:messages:2.0:PatchOp"}},
        "Operations": {"type": "array", "items": {
            "type": "object", "required": ["op"],
            "properties": {"op": {"enum": ["add", "replace", "remove"]}, "path": {"type": "string"},
                           "value": {}}}},
    },
}
SEARCH_BODY = {
    "type": "object",
    "properties": {
        "schemas": {"type": "array", "items": {"const": "urn:ietf:params:scim:api:messages:2.0:SearchRequest"}},
        "filter": {"type": "string"}, "startIndex": {"type": "integer"}, "count": {"type": "integer"},
        "sortBy": {"type": "string"}, "sortOrder": {"enum": ["ascending", "descending"]},
        "attributes": {"oneOf": [_STRINGS, {"type": "string"}]},
        "excludedAttributes": {"oneOf": [_STRINGS, {"type": "string"}]},
        "cursor": {"type": "string"},
    },
}
BULK_BODY = {
    "type": "object",
    "required": ["Operations"],
    "properties": {
        "schemas": {"type": "array", "items": {"const": "urn:ietf:params:scim:api:messages:2.0:BulkRequest"}},
        "failOnErrors": {"type": "integer"},
        "Operations": {"type": "array", "items": {
            "type": "object", "required": ["method"],
            "properties": {"method": {"enum": ["POST", "PUT", "PATCH", "DELETE"]}, "path": {"type": "string"},
                           "bulkId": {"type": "string"}, "version": {"type": "string"}, "data": {}}}},
    },
}

_ETAG = {"ETag": {"description": "meta.version of the resource", "schema": {"type": "string"}}}
PROJECTION = [
    {"in": "query", "name": "attributes", "schema": {"type": "string"},
     "description": "Return only these attributes (comma-separated SCIM paths)"},
    {"in": "query", "name": "excludedAttributes", "schema": {"type": "string"},
     "description": "Return all but these attributes"},
]
_LIST_QUERY = [
    {"in": "query", "name": "filter", "schema": {"type": "string"}, "description": "A SCIM filter (RFC 7644 3.4.2.2)"},
    {"in": "query", "name": "startIndex", "schema": {"type": "integer"}},
    {"in": "query", "name": "count", "schema": {"type": "integer"}},
    {"in": "query", "name": "sortBy", "schema": {"type": "string"}},
    {"in": "query", "name": "sortOrder", "schema": {"enum": ["ascending", "descending"]}},
    {"in": "query", "name": "cursor", "schema": {"type": "string"}, "description": "RFC 9865 cursor paging"},
    *PROJECTION,
]


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {SCIM_JSON: {"schema": schema}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {SCIM_JSON: {"schema": schema}, "application/json": {"schema": schema}}}


def ok(status: int, schema: dict[str, Any] | None, description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = _content(schema)
    if headers:
        response["headers"] = headers
    return {str(status): response}


def operation(*responses: dict[str, Any], body: dict[str, Any] | None = None,
              query: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``Blueprint.doc`` for one SCIM operation."""
    doc: dict[str, Any] = {"responses": {key: value for response in responses for key, value in response.items()}}
    if body is not None:
        doc["requestBody"] = _body(body)
    if query:
        doc["parameters"] = query
    return doc


LIST = dict(query=_LIST_QUERY)
LISTED = ok(200, LIST_SCHEMA, "A ListResponse")
READ = ok(200, RESOURCE_SCHEMA, "The resource as the caller may read it", _ETAG)
NOT_MODIFIED = ok(304, None, "If-None-Match names the current version", _ETAG)
CREATED = ok(201, RESOURCE_SCHEMA, "Created",
             {**_ETAG, "Location": {"description": "meta.location", "schema": {"type": "string"}}})
CREATED_LUI = ok(200, RESOURCE_SCHEMA, "Created (the LUI backend's 200)", _ETAG)
DELETED = ok(204, None, "Deleted")
DELETED_LUI = ok(200, {"type": "object", "maxProperties": 0}, "Deleted (the LUI backend's 200 with {})")
NOT_IMPLEMENTED = ok(501, ERROR_SCHEMA, "Creating /Me is not supported (RFC 7644 3.11): create users at /Users")

#: Resource types as their endpoints name them (a customer plugin's own types are served but not listed).
ENDPOINTS = ["Users", "Groups", "Organizations"]
LUI_SEGMENTS = ["User", "Groups", "Organization"]


def path_enum(name: str, values: list[str]) -> dict[str, Any]:
    """A route's path parameter limited to ``values`` (``parameters=`` of ``Blueprint.route``)."""
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string", "enum": values}}
