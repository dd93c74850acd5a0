"""The didmos_auth plugin's hook implementations."""

from __future__ import annotations

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import SettingsNamespace

DEFAULTS = {
    "basic": {"enabled": True, "accept_user_name": False, "realm": "didmos"},
    "credential_cache_seconds": 60.0,
    "throttle": {"window_seconds": 300.0, "max_failures_per_user_address": 5, "max_failures_per_address": 50},
    "bearer": {"enabled": True, "realm": "didmos"},
    # Each provider is a table; docs/settings.md lists its keys and their defaults, docs/auth.md what is checked.
    "oidc": {"providers": [], "leeway_seconds": 30, "jwks_refresh_min_seconds": 10,
             "metadata_max_age_seconds": 3600, "introspection_cache_seconds": 30, "http_timeout_seconds": 5},
    "scopes": {"read": "scim:read", "write": "scim:write"},
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
            Validator("auth.bearer.enabled", is_type_of=bool),
            Validator("auth.bearer.realm", is_type_of=str, len_min=1),
            Validator("auth.oidc.providers", condition=_check_providers),
            Validator("auth.oidc.leeway_seconds", "auth.oidc.jwks_refresh_min_seconds",
                      "auth.oidc.introspection_cache_seconds", is_type_of=(int, float), gte=0),
            Validator("auth.oidc.metadata_max_age_seconds", "auth.oidc.http_timeout_seconds",
                      is_type_of=(int, float), gt=0),
            Validator("auth.scopes.read", "auth.scopes.write", is_type_of=str),
        ),
        # The provider tables hold introspection client secrets; `didmos config show` masks the list whole.
        secrets=("oidc.providers",),
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
            "bearer.enabled": "Accept bearer tokens (RFC 6750) of the providers in `auth.oidc.providers`.",
            "bearer.realm": "Realm named in the Bearer WWW-Authenticate challenge.",
            "oidc.providers": "The OpenID Connect providers whose access tokens are accepted: a list of tables "
                              "(issuer, audience, ...; see docs/auth.md). Empty: no bearer tokens.",
            "oidc.leeway_seconds": "Clock skew allowed when checking a token's exp, nbf and iat.",
            "oidc.jwks_refresh_min_seconds": "A token naming an unknown key id fetches the provider's keys again "
                                             "at most this often (and a failed fetch is not retried sooner).",
            "oidc.metadata_max_age_seconds": "A provider's discovery document and keys are fetched again after "
                                             "this long, so a key it withdrew stops being accepted.",
            "oidc.introspection_cache_seconds": "How long an active introspection answer is remembered (by a hash "
                                                "of the token, never past its exp); 0 asks every time.",
            "oidc.http_timeout_seconds": "Timeout of each request to a provider (discovery, keys, introspection).",
            "scopes.read": "Scope a bearer token needs for anything (403 insufficient_scope without it); "
                           "empty: none needed.",
            "scopes.write": "Scope a bearer token also needs for every change; empty: none needed.",
        },
    )]


def _check_providers(value) -> bool:
    from didmos_auth.bearer import check_providers

    return check_providers(value)


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_auth.resources import blueprint

    return [blueprint]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_auth.basic import BasicAuthenticator

    if host.settings.auth.basic.enabled:
        host.provide("basic_auth", BasicAuthenticator(host, host.settings.auth))
    if host.settings.auth.bearer.enabled and host.settings.auth.oidc.providers:
        from didmos_auth.bearer import BearerAuthenticator

        host.provide("bearer_auth", BearerAuthenticator(host))


@hookimpl(trylast=True)
def didmos_startup(app):
    """Declare the accepted schemes in the OpenAPI document (``components.securitySchemes``)."""
    host = app.extensions["didmos"]
    # flask-smorest keeps its Api by config prefix; the host's app factory creates it with none
    spec = app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec
    if "basic_auth" in host.services:
        spec.components.security_scheme("basicAuth", {
            "type": "http", "scheme": "basic",
            "description": "The user's didmosUUID (or userName, with auth.basic.accept_user_name) and password."})
    if "bearer_auth" in host.services or "token_issuer" in host.services:
        issuers = [p.issuer for p in host.service("bearer_auth").providers] if "bearer_auth" in host.services else []
        spec.components.security_scheme("bearerAuth", {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "An access token issued by didmos (POST /oauth/token)"
                           + (f" or by one of these OpenID Connect providers: {', '.join(issuers)}" if issuers else "")
                           + ". JWTs are verified with the issuer's keys, other tokens introspected."})
    schemes = list(spec.components.security_schemes)
    if schemes:
        # Every operation takes any of them, or none (the PDP decides what anonymous may do); without this
        # requirement Swagger UI (/docs) would send no credentials the user entered under "Authorize".
        spec.options.setdefault("security", [*({name: []} for name in schemes), {}])


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
    challenges = []
    if settings.basic.enabled:
        challenges.append(f'Basic realm="{settings.basic.realm}", charset="UTF-8"')
    if settings.bearer.enabled and ("bearer_auth" in host.services or "token_issuer" in host.services):
        challenges.append(f'Bearer realm="{settings.bearer.realm}"')
    return challenges


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


@hookimpl(trylast=True, specname="didmos_authenticate")
def authenticate_bearer(request):
    """``Authorization: Bearer <token>``: didmos's own token (``token_issuer``) or one of a configured
    OpenID Connect provider (``bearer_auth``)."""
    from didmos_auth.bearer import InsufficientScope, missing_scope, parse_bearer

    host = _host()
    if host is None or not host.settings.auth.bearer.enabled:
        return None
    issuer = host.services.get("token_issuer")  # None when didmos_auth_issuer is disabled
    authenticator = host.services.get("bearer_auth")  # None without OIDC providers
    if issuer is None and authenticator is None:
        return None
    token = parse_bearer(request.headers.get("Authorization"))
    if token is None:
        return None
    if issuer is not None and (authenticator is None or issuer.is_own(token)):
        actor = issuer.authenticate(token)
        scope = missing_scope(host.settings.auth.scopes, actor, "read")
        if scope is not None:
            raise InsufficientScope(scope, host.settings.auth.bearer.realm, "use this API")
        return actor
    return authenticator.authenticate(token)


@hookimpl(trylast=True)
def didmos_authorize(host, actor, action):
    """A bearer token's scopes limit what its user may do: deny what they do not cover, else abstain.

    The roles (the PDP's vote) still decide; scopes only take away. Other actors are not affected.
    """
    from didmos_auth.bearer import missing_scope

    if actor is None or actor.method != "bearer":
        return None
    return False if missing_scope(host.settings.auth.scopes, actor, action.operation) else None


@hookimpl(trylast=True)
def didmos_ldap_pre_operation(operation, actor):
    """No write for a bearer token without the write scope, whichever API makes it.

    ``didmos_authorize`` covers the APIs that ask ``Host.authorize``; the SCIM API asks the PDP itself,
    so the write scope is also enforced here, where every write made for an actor passes.
    """
    if actor is None or actor.method != "bearer" or operation.kind in ("search", "bind"):
        return
    host = _host()  # a bearer actor exists only inside a request
    if host is None:
        return
    from didmos_auth.bearer import InsufficientScope, missing_scope

    scope = missing_scope(host.settings.auth.scopes, actor, operation.kind)
    if scope is not None:
        raise InsufficientScope(scope, host.settings.auth.bearer.realm, f"{operation.kind} {operation.dn}")


@hookimpl(trylast=True)
def didmos_ldap_post_operation(operation, result, actor):
    """A write to an entry may change its password, lock or status: forget its remembered logins."""
    if operation.kind in ("modify", "delete", "modrdn"):
        host = _host()  # outside a request (CLI, worker) nothing is remembered
        authenticator = host.services.get("basic_auth") if host is not None else None
        if authenticator is not None:
            authenticator.cache.forget_dn(operation.dn)
        bearer = host.services.get("bearer_auth") if host is not None else None
        if bearer is not None:
            bearer.accounts.forget_dn(operation.dn)
