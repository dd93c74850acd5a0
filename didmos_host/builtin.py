"""The host's own built-in plugin: its settings, the health endpoint and the last-resort error handler.

Everything here is ``trylast`` so any installed plugin can override it.
"""

from __future__ import annotations

import logging

import flask
from dynaconf import Validator
from werkzeug.exceptions import HTTPException

from didmos_host import hookimpl
from didmos_host.api import Blueprint, MethodView
from didmos_host.errors import DidmosError
from didmos_host.records import DirectoryEntry, SettingsNamespace, TaskHandler

log = logging.getLogger("didmos")


@hookimpl(trylast=True)
def didmos_settings():
    return [
        SettingsNamespace(
            name="api",
            defaults={"host": "127.0.0.1", "port": 8000, "workers": 2, "threads": 8,
                      "max_content_length": 1048576, "title": "didmos"},
            validators=(
                Validator("api.host", is_type_of=str, len_min=1),
                Validator("api.port", is_type_of=int, gte=1, lte=65535),
                Validator("api.workers", is_type_of=int, gte=1),
                Validator("api.threads", is_type_of=int, gte=1),
                Validator("api.max_content_length", is_type_of=int, gte=1024),
                Validator("api.title", is_type_of=str),
            ),
            descriptions={
                "host": "Address `didmos serve` listens on.",
                "port": "TCP port `didmos serve` listens on.",
                "workers": "gunicorn worker processes of `didmos serve`.",
                "threads": "Threads per gunicorn worker.",
                "max_content_length": "Largest request body in bytes; larger ones get 413 unread.",
                "title": "Title of the OpenAPI document.",
            },
        ),
        SettingsNamespace(
            name="directory",
            defaults={"uri": "ldap://127.0.0.1:389", "bind_dn": "cn=didmos-service,ou=system,dc=didmos,dc=de",
                      "bind_password": "", "config_uri": "", "config_bind_dn": "", "config_bind_password": "",
                      "suffix": "dc=de", "superadmin_password": "",
                      "service_policy_dn": "cn=no-lockout,ou=policies,dc=didmos,dc=de"},
            validators=(
                Validator("directory.uri", is_type_of=str, len_min=1),
                Validator("directory.bind_dn", "directory.suffix", is_type_of=str, len_min=1),
                Validator("directory.bind_password", "directory.config_uri", "directory.config_bind_dn",
                          "directory.config_bind_password", "directory.superadmin_password",
                          "directory.service_policy_dn", is_type_of=str),
            ),
            secrets=("bind_password", "config_bind_password", "superadmin_password"),
            descriptions={
                "uri": "LDAP URI(s) of the directory, space separated.",
                "bind_dn": "DN of the service account didmos binds as.",
                "bind_password": "Password of the service account.",
                "config_uri": "URI for cn=config changes (schema migrations); empty: `uri`. "
                              "An `ldapi://` URI uses SASL EXTERNAL.",
                "config_bind_dn": "DN to bind as for cn=config changes over ldap:// (empty with ldapi).",
                "config_bind_password": "Its password.",
                "suffix": "Suffix of the database didmos uses.",
                "superadmin_password": "Password given to the superadmin when `didmos directory init` "
                                       "creates it; empty: generated and printed once.",
                "service_policy_dn": "Password policy of the service account (one without lockout, so that "
                                     "nobody can lock didmos out by guessing); empty: the directory's default.",
            },
        ),
        SettingsNamespace(
            name="redis",
            defaults={"url": "redis://127.0.0.1:6379/0"},
            validators=(Validator("redis.url", is_type_of=str, startswith="redis"),),
            descriptions={"url": "Redis URL of the task queue (`redis://` or `rediss://`)."},
        ),
    ]


health = Blueprint("health", __name__, description="Process health")


@health.route("/healthz")
class Health(MethodView):
    @health.response(200)
    def get(self):
        """The process is up and answering."""
        return {"status": "ok"}


@hookimpl(trylast=True)
def didmos_blueprints(app):
    return [health]


@hookimpl(trylast=True)
def didmos_handle_exception(error, request):
    errors = context = None
    if isinstance(error, HTTPException):
        status, message = error.code or 500, error.description
        data = getattr(error, "data", None) or {}  # webargs/flask-smorest validation details
        message = data.get("message", message)
        errors = data.get("errors") or data.get("messages")
    elif isinstance(error, DidmosError):
        status, message = error.status, error.message
        context = error.detail or None
    else:
        log.exception("unhandled error on %s %s", request.method, request.path)
        status, message = 500, "internal error; the server log has the details"
    body = {"status": status, "detail": message}
    if errors:
        body["errors"] = errors
    if context:
        body["context"] = context
    response = flask.make_response(flask.jsonify(body), status)
    add_error_headers(response, error)
    return response


def add_error_headers(response: flask.Response, error: Exception) -> flask.Response:
    """``WWW-Authenticate`` on 401 and ``Retry-After`` on 429, for every API's error responses."""
    from didmos_host.app import challenges, current_host
    from didmos_host.errors import AuthenticationFailed, TooManyAttempts

    if isinstance(error, AuthenticationFailed):
        for challenge in error.challenges or challenges(current_host()):
            response.headers.add("WWW-Authenticate", challenge)
    if isinstance(error, TooManyAttempts):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    """The service account the API binds as, when its password is configured."""
    cfg = settings.directory
    if not cfg.bind_password:
        return []
    import ldap.dn

    (attr, value, _), = ldap.dn.str2dn(cfg.bind_dn)[0]
    attributes = {"objectClass": ["applicationProcess", "simpleSecurityObject"], attr: [value],
                  "description": ["didmos service account"], "userPassword": [cfg.bind_password]}
    if cfg.service_policy_dn:
        attributes["pwdPolicySubentry"] = [cfg.service_policy_dn]
    return [DirectoryEntry(dn=cfg.bind_dn, attributes=attributes)]


def _ping(payload, context):
    """Answer a ping: proves a worker runs and sees the host's plugins."""
    return {"pong": payload.get("value"), "plugins": sorted(n for n, _ in context.host.pm.list_name_plugin())}


@hookimpl(trylast=True)
def didmos_task_handlers():
    return [TaskHandler(name="didmos.ping", function=_ping, retries=0)]
