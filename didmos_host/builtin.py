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
from didmos_host.observability import settings_namespaces as observability_namespaces
from didmos_host.records import DirectoryEntry, SettingsNamespace, TaskHandler

log = logging.getLogger("didmos")


@hookimpl(trylast=True)
def didmos_settings():
    return [
        SettingsNamespace(
            name="api",
            defaults={"host": "127.0.0.1", "port": 8000, "workers": 2, "threads": 8,
                      "max_content_length": 1048576, "title": "didmos",
                      "docs_path": "/docs", "docs_assets_url": "", "readiness_timeout": 2.0},
            validators=(
                Validator("api.host", is_type_of=str, len_min=1),
                Validator("api.port", is_type_of=int, gte=1, lte=65535),
                Validator("api.workers", is_type_of=int, gte=1),
                Validator("api.threads", is_type_of=int, gte=1),
                Validator("api.max_content_length", is_type_of=int, gte=1024),
                Validator("api.title", is_type_of=str),
                Validator("api.docs_path", condition=_is_docs_path,
                          messages={"condition": "{name} must be empty (no page) or a path such as '/docs', "
                                                 "got {value!r}"}),
                Validator("api.docs_assets_url", is_type_of=str),
                Validator("api.readiness_timeout", is_type_of=(int, float), gt=0, lte=30),
            ),
            descriptions={
                "host": "Address `didmos serve` listens on.",
                "port": "TCP port `didmos serve` listens on.",
                "workers": "gunicorn worker processes of `didmos serve`.",
                "threads": "Threads per gunicorn worker.",
                "max_content_length": "Largest request body in bytes; larger ones get 413 unread.",
                "title": "Title of the OpenAPI document.",
                "docs_path": "Path of the interactive API documentation (Swagger UI on `/openapi.json`); "
                             "empty: no page.",
                "docs_assets_url": "Where the page loads Swagger UI's scripts from (a URL ending in `/`, e.g. a "
                                   "CDN); empty: served by didmos itself under `<docs_path>/assets/`.",
                "readiness_timeout": "Seconds `/readyz` waits for each server it checks before it counts "
                                     "it as down.",
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
            defaults={"url": "redis://127.0.0.1:6379/0", "sentinels": [], "sentinel_service": "mymaster",
                      "sentinel_password": ""},
            validators=(
                Validator("redis.url", is_type_of=str, startswith="redis"),
                Validator("redis.sentinels", condition=_are_sentinels,
                          messages={"condition": "{name} must be a list of 'host:port' strings such as "
                                                 "['10.0.0.5:26379', '10.0.0.6:26379'] (or one string of them "
                                                 "separated by commas), got {value!r}"}),
                Validator("redis.sentinel_service", is_type_of=str, len_min=1),
                Validator("redis.sentinel_password", is_type_of=str),
            ),
            secrets=("sentinel_password",),
            descriptions={
                "url": "Redis URL of the task queue (`redis://` or `rediss://`). With `sentinels`, only its "
                       "database number, user name, password and scheme are used.",
                "sentinels": "Redis Sentinel addresses (`host:port`); when not empty, every redis client of "
                             "didmos connects to the primary these sentinels name for `sentinel_service`.",
                "sentinel_service": "Name of the primary the sentinels monitor (`sentinel monitor <name> ...`).",
                "sentinel_password": "Password of the sentinels themselves (their `requirepass`); empty: none. "
                                     "The primary's password goes in `url`.",
            },
        ),
        SettingsNamespace(
            name="central",
            defaults={"url": "", "key": "didmos:settings", "refresh_seconds": 5.0},
            validators=(
                Validator("central.url", is_type_of=str, condition=lambda v: v == "" or v.startswith("redis"),
                          messages={"condition": "{name} must be empty or a redis URL such as "
                                                 "'redis://10.0.0.5:6379/1', got {value!r}"}),
                Validator("central.key", is_type_of=str, len_min=1),
                Validator("central.refresh_seconds", is_type_of=(int, float), gt=0),
            ),
            descriptions={
                "url": "Redis URL of the central settings store (`didmos config push`); empty: no central "
                       "settings. Through Sentinel when `redis.sentinels` is set (then only its database "
                       "number and password are used). Only from a settings file or the environment.",
                "key": "Redis key of the hash that holds the central settings (one per deployment sharing a "
                       "redis). Only from a settings file or the environment.",
                "refresh_seconds": "How often a running API process or worker asks the store for its revision "
                                   "(at a request's or job's start) and, when it changed, switches to the new "
                                   "settings.",
            },
        ),
        SettingsNamespace(
            name="worker",
            defaults={"mode": "simple"},
            validators=(
                Validator("worker.mode", is_type_of=str, is_in=("fork", "simple")),
            ),
            descriptions={
                "mode": "How `didmos worker` runs a job: `fork`, in a work horse forked for it (rq's `Worker`); "
                        "`simple`, in the worker process itself (rq's `SimpleWorker`), which keeps its directory "
                        "and redis connections from job to job. Read when the worker starts.",
            },
        ),
        *observability_namespaces(),  # log, metrics (didmos_host/observability.py)
    ]


def _are_sentinels(value) -> bool:
    from didmos_host.sentinel import sentinel_addresses

    try:
        sentinel_addresses(value)
    except ValueError:
        return False
    return True


health = Blueprint("health", __name__, description="Process health")


@health.route("/healthz")
class Health(MethodView):
    @health.response(200)
    def get(self):
        """The process is up and answering."""
        return {"status": "ok"}


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_host.observability import metrics_blueprints
    from didmos_host.readiness import readiness

    return [health, readiness, *metrics_blueprints(app)]


def _is_docs_path(value) -> bool:
    return isinstance(value, str) and (value == "" or (value.startswith("/") and value.strip("/") != ""
                                                       and " " not in value and "<" not in value))


@hookimpl(trylast=True)
def didmos_readiness_checks(host):
    from didmos_host.readiness import redis_check

    return [redis_check(host)]


@hookimpl(trylast=True)
def didmos_doctor_checks(host):
    from didmos_host.doctor import redis_and_worker_checks

    return redis_and_worker_checks(host)


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
