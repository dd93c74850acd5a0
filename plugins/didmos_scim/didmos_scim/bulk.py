"""SCIM Bulk (RFC 7644 section 3.7): many creates, replaces, modifies and deletes in one ``POST /Bulk``.

Each operation runs through the same :class:`~didmos_scim.service.ScimService` methods as the
single-resource routes of the strict mount, as the authenticated actor, so the PDP decides each one on
its own: an operation that is denied, invalid or stale is a failed entry in the BulkResponse (its
``status`` and a SCIM Error ``response``), never a failure of the whole request. The whole request
fails only when it cannot be read: not JSON, not a BulkRequest, too large (413), unauthenticated.

The directory has no transactions, so operations performed before a failure stay performed;
``failOnErrors`` stops the job after that many failures, and what was not performed is not listed.

``"bulkId:<id>"`` references (3.7.2), as a whole string value anywhere in ``data`` (``members[].value``,
a PATCH operation's ``value``) or as the id segment of ``path`` (``/Groups/bulkId:qwerty``), become the
id of the resource the POST with that ``bulkId`` created. An operation may refer to a POST later in the
request: the next operation performed is always the earliest one whose references are all resolved.
Operations still waiting when none can go on wait on each other (a circular reference) and fail with
409, as section 3.7.2 allows; didmos does not break the circle by creating one resource first and
patching it afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import flask

from didmos_host.api import Blueprint
from didmos_host.app import current_actor, current_host
from didmos_host.errors import AlreadyExists, ConstraintViolation, DidmosError
from didmos_host.records import Actor
from didmos_scim import openapi as doc
from didmos_scim.convert import InvalidValue
from didmos_scim.discovery import ProviderLimits
from didmos_scim.patch import InvalidPath, InvalidSyntax
from didmos_scim.resources import STRICT, respond, service
from didmos_scim.service import ScimError

log = logging.getLogger(__name__)

BULK_REQUEST = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BULK_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
METHODS = ("POST", "PUT", "PATCH", "DELETE")
#: The prefix of a value that stands for the id of a resource created in the same request.
REFERENCE = "bulkId:"
#: Status of each method's success, as the strict mount's single-resource routes answer.
SUCCESS = {"POST": 201, "PUT": 200, "PATCH": 200, "DELETE": 204}


def bulk_limits() -> ProviderLimits:
    """The limits ``/ServiceProviderConfig`` announces as ``bulk.maxOperations`` and ``bulk.maxPayloadSize``.

    Built as discovery builds them: ``maxPayloadSize`` is ``api.max_content_length``, ``maxOperations``
    the :class:`ProviderLimits` default.
    """
    return ProviderLimits(max_payload_size=current_host().settings.api.max_content_length)


def error_body(error: Exception) -> tuple[int, dict[str, Any]]:
    """The status and SCIM Error body (RFC 7644 3.12) of an error, as the plugin's error handler renders it."""
    if isinstance(error, DidmosError):
        status, detail = error.status, error.message
    else:
        status, detail = 500, "internal error; the server log has the details"
    body: dict[str, Any] = {"schemas": [ERROR], "status": str(status), "detail": detail}
    scim_type = getattr(error, "scim_type", None) or ("uniqueness" if isinstance(error, AlreadyExists) else None)
    if scim_type is None and isinstance(error, ConstraintViolation):
        scim_type = "invalidValue"  # the directory's schema refused a value
    if scim_type:
        body["scimType"] = scim_type
    return status, body


def _field(container: Mapping[str, Any], name: str) -> Any:
    """A member of a JSON object by name, case-insensitively (RFC 7643 2.1: attribute names are)."""
    return next((value for key, value in container.items() if key.lower() == name.lower()), None)


# -- the request ---------------------------------------------------------------------------------------


@dataclass
class Operation:
    """One entry of a BulkRequest's ``Operations``, as given; ``problem`` says why it cannot be performed."""

    index: int
    method: str
    bulk_id: str | None = None
    path: str | None = None
    version: str | None = None
    data: Any = None
    problem: DidmosError | None = None

    @cached_property
    def references(self) -> list[str]:
        """The bulkIds this operation refers to, in ``path`` and ``data``, in order of appearance."""
        found = [segment[len(REFERENCE):] for segment in _id_segment(self.path)]
        found += _references(self.data)
        return list(dict.fromkeys(found))

    def resolved_path(self, created: Mapping[str, str]) -> str:
        """``path`` with a ``bulkId:<id>`` id segment replaced by the created resource's id."""
        if not _id_segment(self.path):
            return self.path
        endpoint, segment = self.path.strip("/").split("/")
        return f"/{endpoint}/{created[segment[len(REFERENCE):]]}"


def _id_segment(path: Any) -> list[str]:
    """``["bulkId:x"]`` for a path ``/Groups/bulkId:x``; empty for any other path."""
    segments = path.strip("/").split("/") if isinstance(path, str) else []
    return [segments[1]] if len(segments) == 2 and segments[1].startswith(REFERENCE) else []


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if value.startswith(REFERENCE):
            yield value[len(REFERENCE):]
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _substitute(value: Any, created: Mapping[str, str]) -> Any:
    """``value`` with every ``"bulkId:<id>"`` string replaced by the id created for that bulkId."""
    if isinstance(value, str):
        return created[value[len(REFERENCE):]] if value.startswith(REFERENCE) else value
    if isinstance(value, Mapping):
        return {key: _substitute(item, created) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, created) for item in value]
    return value


def read_request(limits: ProviderLimits) -> tuple[list[Operation], int | None]:
    """The operations and ``failOnErrors`` of the request's BulkRequest.

    413 when the body is larger than ``maxPayloadSize`` or has more than ``maxOperations`` operations;
    400 ``invalidSyntax`` when it is not JSON or not a BulkRequest, ``invalidValue`` for a bad
    ``failOnErrors`` or a bulkId that two POST operations share. A malformed single operation is not
    an error here: it fails on its own, in its place.
    """
    body = _body(limits)
    if not isinstance(body, Mapping):
        raise InvalidSyntax(f"the request body must be a JSON object (a BulkRequest with schemas [{BULK_REQUEST!r}])")
    schemas = _field(body, "schemas")
    listed = schemas if isinstance(schemas, list) else [schemas]
    if not any(isinstance(urn, str) and urn.lower() == BULK_REQUEST.lower() for urn in listed):
        raise InvalidSyntax(f"schemas must contain {BULK_REQUEST}")
    raw_operations = _field(body, "Operations")
    if not isinstance(raw_operations, list):
        raise InvalidSyntax("Operations must be a list of operations (method, path, bulkId, version, data)")
    if len(raw_operations) > limits.max_operations:
        raise ScimError(f"the bulk request has {len(raw_operations)} operations; maxOperations is "
                        f"{limits.max_operations} (see /ServiceProviderConfig)", status=413)
    fail_on_errors = _field(body, "failOnErrors")
    if fail_on_errors is not None and (isinstance(fail_on_errors, bool) or not isinstance(fail_on_errors, int)
                                       or fail_on_errors < 1):
        raise ScimError(f"failOnErrors must be an integer of at least 1, got {fail_on_errors!r}", status=400,
                        scim_type="invalidValue")
    operations = [_operation(index, raw) for index, raw in enumerate(raw_operations)]
    seen: set[str] = set()
    for operation in operations:
        if operation.method == "POST" and operation.bulk_id is not None:
            if operation.bulk_id in seen:
                raise ScimError(f"bulkId {operation.bulk_id!r} is given to more than one POST operation; each "
                                f"must have its own", status=400, scim_type="invalidValue")
            seen.add(operation.bulk_id)
    return operations, fail_on_errors


def _body(limits: ProviderLimits) -> Any:
    length = flask.request.content_length
    if length is not None and length > limits.max_payload_size:
        raise _too_large(length, limits)
    raw = flask.request.get_data(cache=True)
    if len(raw) > limits.max_payload_size:
        raise _too_large(len(raw), limits)
    try:
        return flask.json.loads(raw)
    except ValueError as exc:
        raise InvalidSyntax(f"the request body is not valid JSON: {exc}") from None


def _too_large(size: int, limits: ProviderLimits) -> ScimError:
    return ScimError(f"the bulk request has {size} bytes; maxPayloadSize is {limits.max_payload_size} "
                     f"(see /ServiceProviderConfig)", status=413)


def _operation(index: int, raw: Any) -> Operation:
    """One operation, checked for shape; what is wrong with it becomes its ``problem``."""
    where = f"Operations[{index}]"
    if not isinstance(raw, Mapping):
        return Operation(index, "", problem=InvalidSyntax(f"{where} must be an object with method and path"))
    method = _field(raw, "method")
    operation = Operation(index, method.upper() if isinstance(method, str) else "", bulk_id=_field(raw, "bulkId"),
                          path=_field(raw, "path"), version=_field(raw, "version"), data=_field(raw, "data"))
    if operation.method not in METHODS:
        operation.problem = InvalidSyntax(f"{where}: method must be one of {', '.join(METHODS)}, got {method!r}")
    elif operation.bulk_id is not None and (not isinstance(operation.bulk_id, str) or not operation.bulk_id):
        operation.problem = InvalidSyntax(f"{where}: bulkId must be a non-empty string, got {operation.bulk_id!r}")
    elif operation.method == "POST" and operation.bulk_id is None:
        operation.problem = InvalidSyntax(f"{where}: a POST operation needs a bulkId (RFC 7644 3.7)")
    elif not isinstance(operation.path, str) or not operation.path.strip("/"):
        operation.problem = InvalidSyntax(f"{where}: path must name a resource type or a resource, such as "
                                          f"/Users or /Users/<id>, got {operation.path!r}")
    elif operation.version is not None and not isinstance(operation.version, str):
        operation.problem = InvalidSyntax(f"{where}: version must be a string (an ETag such as W/\"...\"), "
                                          f"got {operation.version!r}")
    elif operation.method != "DELETE" and not isinstance(operation.data, Mapping):
        what = "a PatchOp" if operation.method == "PATCH" else "the resource"
        operation.problem = InvalidSyntax(f"{where}: a {operation.method} operation needs data, a JSON object "
                                          f"({what})")
    if operation.problem is not None and not isinstance(operation.bulk_id, str):
        operation.bulk_id = None  # a bulkId that is not a string cannot be echoed or referred to
    return operation


# -- performing it -------------------------------------------------------------------------------------


class BulkJob:
    """The operations of one BulkRequest, performed in order as their references allow."""

    def __init__(self, operations: list[Operation], actor: Actor, base_url: str, fail_on_errors: int | None):
        self.operations = operations
        self.actor = actor
        self.base_url = base_url
        self.fail_on_errors = fail_on_errors
        #: bulkId -> the POST operation that declares it
        self.declared = {op.bulk_id: op for op in operations if op.method == "POST" and op.bulk_id}
        self.created: dict[str, str] = {}  # bulkId -> id of the created resource
        self.failed: dict[str, str] = {}  # bulkId -> status of its failed POST
        self.results: dict[int, dict[str, Any]] = {}
        self.errors = 0

    def run(self) -> list[dict[str, Any]]:
        """Perform the operations; their results in the order of the request."""
        pending = list(self.operations)
        while pending and not self._stopped():
            ready = next((op for op in pending if not self._waiting_on(op)), None)
            if ready is None:
                break
            pending.remove(ready)
            self._record(ready, self._perform(ready))
        if pending and not self._stopped():
            details = {op.index: self._circular(op, pending) for op in pending}
            for op in pending:
                if self._stopped():
                    break
                error = ScimError(details[op.index], status=409)
                self._record(op, self._failure(op, error, location=None))
        return [self.results[index] for index in sorted(self.results)]

    def _stopped(self) -> bool:
        return self.fail_on_errors is not None and self.errors >= self.fail_on_errors

    def _waiting_on(self, op: Operation) -> list[str]:
        """The bulkIds ``op`` refers to whose POST has not been performed yet."""
        if op.problem is not None:
            return []
        return [ref for ref in op.references
                if ref in self.declared and ref not in self.created and ref not in self.failed]

    def _record(self, op: Operation, result: dict[str, Any]) -> None:
        self.results[op.index] = result
        status = int(result["status"])
        if status >= 400:
            self.errors += 1
            if op.method == "POST" and op.bulk_id in self.declared:
                self.failed[op.bulk_id] = result["status"]

    def _perform(self, op: Operation) -> dict[str, Any]:
        location = None
        try:
            if op.problem is not None:
                raise op.problem
            self._check_references(op)
            path = op.resolved_path(self.created)
            type_name, endpoint, resource_id = self._target(path, op.method)
            if resource_id is not None:
                location = f"{self.base_url}{endpoint}/{resource_id}"
            data = _substitute(op.data, self.created)
            return self._execute(op, type_name, resource_id, data, location)
        except DidmosError as exc:
            return self._failure(op, exc, location)
        except Exception as exc:  # noqa: BLE001 - the operations before it were performed; say so
            log.exception("unhandled error in bulk operation %d (%s %s)", op.index, op.method, op.path)
            return self._failure(op, exc, location)

    def _check_references(self, op: Operation) -> None:
        for ref in op.references:
            if ref not in self.declared:
                raise InvalidValue(f"Operations[{op.index}] refers to bulkId {ref!r}, which no POST operation of "
                                   f"this request has")
            if ref in self.failed:
                raise ScimError(f"Operations[{op.index}] refers to bulkId {ref!r}, whose POST operation failed "
                                f"with status {self.failed[ref]}", status=409)

    def _target(self, path: str, method: str) -> tuple[str, str, str | None]:
        """``/Users`` or ``/Users/<id>`` -> (resource type name, its endpoint, id or None)."""
        if "?" in path or "#" in path:
            raise InvalidPath(f"path {path!r} must not have a query or fragment; give only /<endpoint>[/<id>]")
        segments = path.strip("/").split("/")
        if len(segments) > 2 or not all(segments):
            raise InvalidPath(f"path {path!r} must be a resource type's endpoint (/Users) or a resource (/Users/<id>)")
        endpoint = segments[0]
        resource_id = segments[1] if len(segments) == 2 else None
        for name, resource_type in current_host().resource_types.items():
            if resource_type.endpoint.strip("/").lower() == endpoint.lower():
                break
        else:
            known = ", ".join(t.endpoint for t in current_host().resource_types.values())
            raise ScimError(f"no resource type at /{endpoint}; the endpoints are {known}", status=404)
        if method == "POST" and resource_id is not None:
            raise InvalidPath(f"a POST creates in a collection: path must be {resource_type.endpoint}, not {path!r}")
        if method != "POST" and resource_id is None:
            raise InvalidPath(f"a {method} needs the resource: path must be {resource_type.endpoint}/<id>, "
                              f"not {path!r}")
        return name, resource_type.endpoint, resource_id

    def _execute(self, op: Operation, type_name: str, resource_id: str | None, data: Any,
                 location: str | None) -> dict[str, Any]:
        scim = service()
        if op.method == "POST":
            resource, _ = scim.create(type_name, data, self.actor, base_url=self.base_url, strict=True)
            self.created[op.bulk_id] = resource["id"]
        elif op.method == "PUT":
            resource, _ = scim.replace(type_name, resource_id, data, self.actor, base_url=self.base_url, strict=True,
                                       if_match=op.version)
        elif op.method == "PATCH":
            resource, _ = scim.patch(type_name, resource_id, data, self.actor, base_url=self.base_url, strict=True,
                                     if_match=op.version)
        else:
            scim.delete(type_name, resource_id, self.actor, if_match=op.version)
            return self._result(op, SUCCESS["DELETE"], location=location)
        meta = resource.get("meta", {})
        return self._result(op, SUCCESS[op.method], location=meta.get("location"), version=meta.get("version"))

    def _result(self, op: Operation, status: int, *, location: str | None, version: str | None = None,
                response: dict | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {"method": op.method}
        if op.bulk_id is not None:
            result["bulkId"] = op.bulk_id
        if version:
            result["version"] = version
        if location:
            result["location"] = location
        result["status"] = str(status)
        if response is not None:
            result["response"] = response
        return result

    def _failure(self, op: Operation, error: Exception, location: str | None) -> dict[str, Any]:
        status, body = error_body(error)
        return self._result(op, status, location=location, response=body)

    def _circular(self, op: Operation, pending: list[Operation]) -> str:
        """Why ``op`` cannot be performed: it is in, or waits on, a circle of bulkId references.

        Every operation left waits on a POST that is left too, so following the first such reference
        from any of them comes back to a bulkId already passed.
        """
        left = {other.bulk_id: other for other in pending if other.method == "POST" and other.bulk_id}
        start = [op.bulk_id] if op.bulk_id in left else []
        chain = list(start)
        current = op
        while True:
            ref = next(r for r in self._waiting_on(current) if r in left)
            if ref in chain:
                circle = chain[chain.index(ref):] + [ref]
                break
            chain.append(ref)
            current = left[ref]
        arrows = " -> ".join(circle)
        if op.bulk_id in circle:
            return (f"Operations[{op.index}] (bulkId {op.bulk_id!r}) is part of a circular bulkId reference, {arrows}: "
                    f"none of these resources can be created before the others; create one without the reference "
                    f"and add it with a later PATCH")
        waited = chain[len(start)]
        how = "is part of" if waited in circle else "depends on"
        return f"Operations[{op.index}] waits for bulkId {waited!r}, which {how} the circular bulkId reference {arrows}"


# -- the route -----------------------------------------------------------------------------------------

bulk = Blueprint("scim_bulk", __name__, url_prefix="/scim/v2",
                 description="SCIM 2.0 bulk operations (RFC 7644 section 3.7)", error_response=doc.ERROR_RESPONSE)

#: The one method /Bulk answers (and OPTIONS); every other one gets 405.
ALLOWED = "POST, OPTIONS"
REFUSED = ["GET", "PUT", "PATCH", "DELETE"]


@bulk.route("/Bulk", methods=["POST"])
@bulk.doc(**doc.operation(doc.ok(200, doc.BULK_RESPONSE_SCHEMA, "A BulkResponse"), body=doc.BULK_BODY))
def post_bulk():
    """Perform a BulkRequest's operations (POST, PUT, PATCH, DELETE; ``bulkId:`` references resolved) and
    answer 200 with a BulkResponse of each one's status; ``failOnErrors`` stops after that many failures.
    413 beyond ``maxOperations`` or ``maxPayloadSize`` (see /ServiceProviderConfig)."""
    actor = current_actor()
    operations, fail_on_errors = read_request(bulk_limits())
    results = BulkJob(operations, actor, STRICT.base_url(), fail_on_errors).run()
    return respond({"schemas": [BULK_RESPONSE], "Operations": results})


def _method_not_allowed(**_):
    raise ScimError(f"{flask.request.method} is not allowed on /Bulk; send a BulkRequest with POST", status=405)


# An explicit rule rather than werkzeug's own 405, which would fall through to resources.py's
# ``/<endpoint>`` rule; added through flask's add_url_rule so /openapi.json does not list it.
flask.Blueprint.add_url_rule(bulk, "/Bulk", "refuse_bulk", _method_not_allowed, methods=REFUSED,
                             provide_automatic_options=False)


@bulk.after_request
def _allow(response: flask.Response) -> flask.Response:
    # RFC 9110 15.5.6: a 405 names the allowed methods; OPTIONS would otherwise list the refused ones too.
    if response.status_code == 405 or flask.request.method == "OPTIONS":
        response.headers["Allow"] = ALLOWED
    return response
