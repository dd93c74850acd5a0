"""The didmos_auth plugin's hook implementations."""

from __future__ import annotations

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import SettingsNamespace

DEFAULTS = {
    "basic": {"enabled": True, "accept_user_name": False, "realm": "didmos"},
    "credential_cache_seconds": 60.0,
    "throttle": {"window_seconds": 300.0, "max_failures_per_user_address": 5, "max_failures_per_address": 50},
}


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="auth",
        defaults=DEFAULTS,
        validators=(
            Validator("auth.basic.enabled", "auth.basic.accept_user_name", is_type_of=bool),
            Validator("auth.basic.realm", is_type_of=str, len_min=1),
            Validator("auth.credential_cache_seconds", is_type_of=(int, float), gte=0),
            Validator("auth.throttle.window_seconds", is_type_of=(int, float), gt=0),
            Validator("auth.throttle.max_failures_per_user_address", "auth.throttle.max_failures_per_address",
                      is_type_of=int, gte=1),
        ),
        descriptions={
            "basic.enabled": "Accept HTTP Basic credentials (didmosUUID and password).",
            "basic.accept_user_name": "Also accept the userName (LDAP uid) as the Basic user name.",
            "basic.realm": "Realm named in the WWW-Authenticate challenge.",
            "credential_cache_seconds": "How long a verified password is remembered (salted hash, in memory); "
                                        "0 binds on every request.",
            "throttle.window_seconds": "Window in which failed logins are counted.",
            "throttle.max_failures_per_user_address": "Failures of one account from one address before that "
                                                      "pair must wait (others are not affected).",
            "throttle.max_failures_per_address": "Failures from one address, any account, before it must wait.",
        },
    )]


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_auth.resources import blueprint

    return [blueprint]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_auth.basic import BasicAuthenticator

    if host.settings.auth.basic.enabled:
        host.provide("basic_auth", BasicAuthenticator(host, host.settings.auth))


def _host():
    """The host of the app serving the current request, or None outside a request."""
    import flask

    from didmos_host.app import current_host

    return current_host() if flask.has_app_context() else None


@hookimpl(trylast=True)
def didmos_auth_challenges():
    host = _host()
    if host is None:
        return []
    settings = host.settings.auth
    if not settings.basic.enabled:
        return []
    return [f'Basic realm="{settings.basic.realm}", charset="UTF-8"']


@hookimpl(trylast=True)
def didmos_authenticate(request):
    from didmos_auth.basic import parse_basic

    host = _host()
    if host is None or not host.settings.auth.basic.enabled:
        return None
    credentials = parse_basic(request.headers.get("Authorization"))
    if credentials is None:
        return None
    return host.service("basic_auth").authenticate(*credentials, request.remote_addr or "unknown")


@hookimpl(trylast=True)
def didmos_ldap_post_operation(operation, result, actor):
    """A write to an entry may change its password, lock or status: forget its remembered logins."""
    if operation.kind in ("modify", "delete", "modrdn"):
        host = _host()  # outside a request (CLI, worker) nothing is remembered
        authenticator = host.services.get("basic_auth") if host is not None else None
        if authenticator is not None:
            authenticator.cache.forget_dn(operation.dn)
