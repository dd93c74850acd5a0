"""The didmos_auth_issuer plugin: didmos as an OAuth 2 token issuer (:mod:`didmos_auth.issuer`).

A plugin of its own in the didmos-auth distribution, so that a deployment that wants no issuer turns it
off by name (``DIDMOS_DISABLE_PLUGINS=didmos_auth_issuer``) and keeps HTTP Basic.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import click
import ldap.dn
from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.cli import fail_cleanly
from didmos_host.records import DirectoryEntry, SchemaMigration, SettingsNamespace

SCHEMA_DIR = Path(__file__).parent / "schema"

DEFAULTS = {
    "issuer": "",
    "audience": "didmos",
    "lifetime_seconds": 600,
    "algorithm": "RS256",
    "key_refresh_seconds": 10.0,
    "keys_dn": "cn=token-keys,ou=system,dc=didmos,dc=de",
    "clients_dn": "ou=clients,ou=system,dc=didmos,dc=de",
    # What the Bearer path asks of a token (auth.scopes.read and .write): a client gets one or both.
    "scopes": ["scim:read", "scim:write"],
    "password_grant": False,
}


def _is_issuer(value) -> bool:
    if value == "":
        return True
    parsed = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    return bool(parsed and parsed.scheme in ("https", "http") and parsed.netloc and not parsed.query
                and not parsed.fragment)


def _is_dn(value, rdn_type: str | None = None) -> bool:
    if not isinstance(value, str) or not value or not ldap.dn.is_dn(value):
        return False
    return rdn_type is None or ldap.dn.str2dn(value)[0][0][0].lower() == rdn_type


def _are_scopes(value) -> bool:
    from didmos_auth.issuer import SCOPE_TOKEN

    return isinstance(value, list) and bool(value) and all(isinstance(s, str) and SCOPE_TOKEN.match(s) for s in value)


@hookimpl(trylast=True)
def didmos_settings():
    from didmos_auth.issuer import ALGORITHMS

    return [SettingsNamespace(
        name="tokens",
        defaults=DEFAULTS,
        validators=(
            Validator("tokens.issuer", condition=_is_issuer, messages={
                "condition": "{name} must be empty or an http(s) URL without query or fragment, such as "
                             "'https://idm.example.org', got {value!r}"}),
            Validator("tokens.audience", is_type_of=str, len_min=1),
            Validator("tokens.lifetime_seconds", is_type_of=int, gte=1),
            Validator("tokens.algorithm", is_in=ALGORITHMS),
            Validator("tokens.key_refresh_seconds", is_type_of=(int, float), gt=0),
            Validator("tokens.keys_dn", condition=lambda v: _is_dn(v, "cn"), messages={
                "condition": "{name} must be a DN whose first RDN is a cn, such as "
                             "'cn=token-keys,ou=system,dc=didmos,dc=de', got {value!r}"}),
            Validator("tokens.clients_dn", condition=_is_dn, messages={
                "condition": "{name} must be a DN such as 'ou=clients,ou=system,dc=didmos,dc=de', got {value!r}"}),
            Validator("tokens.scopes", condition=_are_scopes, messages={
                "condition": "{name} must be a non-empty list of scope names without spaces or quotes "
                             "(RFC 6749 3.3), such as ['scim:read'], got {value!r}"}),
            Validator("tokens.password_grant", is_type_of=bool),
        ),
        descriptions={
            "issuer": "`iss` of didmos's tokens and base URL of its endpoints in the discovery document; empty: "
                      "the base URL of each request (set it in production: requests may reach didmos by "
                      "several names).",
            "audience": "`aud` of didmos's tokens; verification requires it.",
            "lifetime_seconds": "How long an access token is valid.",
            "algorithm": "Signature algorithm of new signing keys: RS256 (RSA 2048) or ES256 (P-256). Takes "
                         "effect at the next key (`didmos directory init` on a new directory, `didmos tokens "
                         "rotate-keys`).",
            "key_refresh_seconds": "How long a process keeps the keys it read: after a rotation elsewhere it "
                                   "signs with the old key for at most this long.",
            "keys_dn": "Entry holding the signing key and the retired keys; only the service account may read it.",
            "clients_dn": "Where the OAuth clients' entries live (`didmos tokens add-client`).",
            "scopes": "Scopes clients may be given and ask for (discovery's scopes_supported); password-grant "
                      "tokens get the ones asked for, or all. The Bearer path requires auth.scopes.read and, "
                      "for changes, auth.scopes.write.",
            "password_grant": "Accept the resource-owner password grant (a user's didmosUUID and password, "
                              "throttled like HTTP Basic); off by default.",
        },
    )]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_auth.issuer import TokenIssuer

    host.provide("token_issuer", TokenIssuer(host))


@hookimpl(trylast=True)
def didmos_blueprints(app):
    from didmos_auth.issuer import blueprint, metadata_blueprint

    return [blueprint, metadata_blueprint]


@hookimpl(trylast=True)
def didmos_directory_migrations():
    # After didmos_ldap (order 10): the client class uses its didmosActive.
    return [SchemaMigration(name=f"didmos_auth.{path.stem}", ldif=path, order=30)
            for path in sorted(SCHEMA_DIR.glob("*.ldif"))]


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    """The clients' container, and the keys entry with a first signing key.

    The key is made here, by `didmos directory init` and `didmos dev`, rather than on first use: the
    schema it needs comes with init anyway, and API processes starting together cannot race to create
    it. A key made for an entry that exists already is thrown away unused.
    """
    from didmos_auth.issuer import generate_key

    cfg = settings.tokens
    key = generate_key(cfg.algorithm)
    (_, cn, _), = ldap.dn.str2dn(cfg.keys_dn)[0]
    (attr, value, _), = ldap.dn.str2dn(cfg.clients_dn)[0]
    clients = {"ou": {"objectClass": ["organizationalUnit"], "ou": [value]},
               "cn": {"objectClass": ["applicationProcess"], "cn": [value]}}.get(attr.lower())
    entries = [DirectoryEntry(
        dn=cfg.keys_dn,
        attributes={"objectClass": ["didmosTokenKeys"], "cn": [cn], "didmosSigningKey": [json.dumps(key)],
                    "description": ["signing keys of didmos's tokens (didmos tokens rotate-keys)"]},
    )]
    if clients is not None:  # other RDN types: a container the host makes, or one the operator provides
        entries.append(DirectoryEntry(dn=cfg.clients_dn, attributes=clients))
    return entries


# -- didmos tokens ... ---------------------------------------------------------------------------------


def _issuer():
    from didmos_host.host import Host

    return Host.create().service("token_issuer")


@click.group("tokens")
def tokens() -> None:
    """didmos as a token issuer: signing keys and OAuth clients (docs/auth.md)."""


@tokens.command("rotate-keys")
@fail_cleanly
def rotate_keys() -> None:
    """Sign new tokens with a new key; the old one verifies until the tokens it signed have expired."""
    rotation = _issuer().rotate_keys()
    click.echo(f"signing key: {rotation.kid}")
    click.echo(f"retired keys still verifying: {', '.join(rotation.kept)}")
    if rotation.dropped:
        click.echo(f"retired keys dropped (their tokens have expired): {', '.join(rotation.dropped)}")


@tokens.command("add-client")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True,
              help="A scope it may ask for (repeat, or separate by spaces); see tokens.scopes.")
@click.option("--acts-as", required=True, help="DN of the entry its tokens act as (their subject, for the PDP).")
@click.option("--description", default="", help="What the client is, for the people who administer it.")
@fail_cleanly
def add_client(name: str, scopes: tuple[str, ...], acts_as: str, description: str) -> None:
    """Register an OAuth client for the client_credentials grant and print its secret, once."""
    secret = _issuer().clients.add(name, [s for value in scopes for s in value.split()], acts_as, description)
    click.echo(f"client_id: {name}")
    click.echo(f"client_secret: {secret}")
    click.echo("(the secret is shown only this once: didmos keeps only a hash of it)", err=True)


@tokens.command("remove-client")
@click.argument("name")
@fail_cleanly
def remove_client(name: str) -> None:
    """Delete an OAuth client. Its tokens stay valid until they expire; revoke them to stop them now."""
    _issuer().clients.remove(name)
    click.echo(f"client {name} removed")


@tokens.command("list-clients")
@fail_cleanly
def list_clients() -> None:
    """The registered OAuth clients: name, scopes, the entry they act as (never secrets)."""
    for client in _issuer().clients.all():
        click.echo(f"{client.client_id}  scopes={' '.join(client.scopes)}  acts-as={client.acts_as}")


@hookimpl(trylast=True)
def didmos_cli_commands():
    return [tokens]
