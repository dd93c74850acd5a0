"""The didmos_scim plugin's hook implementations: resource types and mappings (the API follows)."""

from __future__ import annotations

from didmos_host import hookimpl
from didmos_host.records import ResourceType
from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, GROUP, LUI, ORGANIZATION, USER

#: The resource types of the seeds. ``base`` names the didmos_ldap setting of their default parent.
RESOURCE_TYPES = (
    ResourceType(name="User", endpoint="/Users", schema=USER, extensions=(ENTERPRISE, LUI),
                 object_classes=DEFAULT_MAPPINGS["User"].object_classes, base="ldap.people_dn",
                 description="User Account"),
    ResourceType(name="Group", endpoint="/Groups", schema=GROUP, extensions=(LUI,),
                 object_classes=DEFAULT_MAPPINGS["Group"].object_classes, base="ldap.groups_dn",
                 description="Group"),
    ResourceType(name="Organization", endpoint="/Organizations", schema=ORGANIZATION, extensions=(LUI,),
                 object_classes=DEFAULT_MAPPINGS["Organization"].object_classes, base="ldap.organizations_dn",
                 description="Organization"),
)


@hookimpl(trylast=True)
def didmos_resource_types():
    return list(RESOURCE_TYPES)


@hookimpl(trylast=True)
def didmos_attribute_mapping(resource_type):
    return DEFAULT_MAPPINGS.get(resource_type.name)


@hookimpl(trylast=True)
def didmos_doctor_checks(host):
    from didmos_scim.doctor import doctor_checks

    return doctor_checks(host)


@hookimpl(trylast=True)
def didmos_user_name(resource_type, attributes, attempt):
    """``user`` + three digits + a letter, as ``user167i`` in the seeds (about 23,000 names)."""
    import secrets
    import string

    return f"user{secrets.randbelow(1000):03d}{secrets.choice(string.ascii_lowercase)}"


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_scim.service import ScimService

    host.provide("scim", ScimService(host))


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_scim.bulk import bulk
    from didmos_scim.discovery import discovery
    from didmos_scim.resources import lui, scim

    return [scim, discovery, bulk, lui]


SCIM_PREFIXES = ("/scim/v2", "/lui2_backend/v2")
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


@hookimpl(tryfirst=True)
def didmos_handle_exception(error, request):
    """Errors on the SCIM routes as SCIM Error bodies (RFC 7644 3.12), application/scim+json."""
    import flask
    from werkzeug.exceptions import HTTPException

    from didmos_host.builtin import add_error_headers
    from didmos_host.errors import AlreadyExists, ConstraintViolation, DidmosError

    if not request.path.startswith(SCIM_PREFIXES):
        return None
    if isinstance(error, HTTPException):
        status, detail = error.code or 500, error.description
    elif isinstance(error, DidmosError):
        status, detail = error.status, error.message
    else:
        return None  # the host logs it and answers 500
    body = {"schemas": [ERROR], "status": str(status), "detail": detail}
    scim_type = getattr(error, "scim_type", None) or ("uniqueness" if isinstance(error, AlreadyExists) else None)
    if scim_type is None and isinstance(error, ConstraintViolation):
        scim_type = "invalidValue"  # the directory's schema refused a value
    if scim_type:
        body["scimType"] = scim_type
    response = flask.make_response(flask.json.dumps(body), status)
    response.headers["Content-Type"] = "application/scim+json"
    return add_error_headers(response, error)


@hookimpl(trylast=True)
def didmos_cli_commands():
    """``didmos import`` and ``didmos export`` (docs/import-export.md)."""
    from didmos_scim.transfer_cli import export_command, import_command

    return [import_command, export_command]
