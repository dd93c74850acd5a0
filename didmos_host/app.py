"""The one app factory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import flask

from didmos_host import __version__, apidocs
from didmos_host import observability
from didmos_host import bodies
from didmos_host.api import Api
from didmos_host.errors import AuthenticationFailed
from didmos_host.host import Host
from didmos_host.plugins import collect_named
from didmos_host.records import Actor


def create_app(*, extra_plugins: Iterable[Any] = (), load_entry_points: bool = True, **overrides: Any) -> flask.Flask:
    """Build the WSGI app: plugins, settings, every plugin's blueprints, error handling, start-up hooks.

    ``overrides`` are settings above every other layer, by namespace
    (``create_app(directory={"uri": "ldap://..."})``) or dotted (``**{"api.title": "x"}``).
    ``extra_plugins`` are registered after the installed plugins (tests use it).
    """
    host = Host.create(overrides, extra_plugins=extra_plugins, load_entry_points=load_entry_points)
    return _build(host)


def _build(host: Host) -> flask.Flask:
    settings = host.settings
    app = flask.Flask("didmos")
    app.config.update(
        MAX_CONTENT_LENGTH=settings.api.max_content_length,
        API_TITLE=settings.api.title,
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    bodies.install(app)  # chunked bodies over the limit: 413; JSON that would crash the parser: 400
    app.json.sort_keys = False
    app.extensions["didmos"] = host
    apidocs.configure(app, settings)  # the Swagger UI page; before Api(app), which reads its settings
    api = Api(app)
    blueprints = collect_named(host.hook.didmos_blueprints(app=app), "blueprint")
    for blueprint in blueprints.values():
        api.register_blueprint(blueprint)
    observability.install(app)  # request ids, access log, HTTP metrics

    @app.errorhandler(Exception)
    def handle(error: Exception):
        return host.hook.didmos_handle_exception(error=error, request=flask.request)

    host.hook.didmos_startup(app=app)
    return app


def current_host() -> Host:
    """The host of the app handling the current request."""
    return flask.current_app.extensions["didmos"]


def current_actor(*, required: bool = True) -> Actor | None:
    """Who the current request is made for (asked once per request of ``didmos_authenticate``).

    With ``required``, a request without credentials raises :class:`AuthenticationFailed` (401).
    """
    if "didmos_actor" not in flask.g:
        flask.g.didmos_actor = current_host().hook.didmos_authenticate(request=flask.request)
    actor = flask.g.didmos_actor
    if actor is None and required:
        raise AuthenticationFailed("authentication required")
    return actor


def challenges(host: Host) -> list[str]:
    """Every ``WWW-Authenticate`` challenge the installed authentication plugins offer."""
    return [challenge for found in host.hook.didmos_auth_challenges() for challenge in found or ()]
