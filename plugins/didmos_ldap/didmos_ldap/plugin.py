"""The didmos_ldap plugin's hook implementations: settings, schema migrations and the base tree."""

from __future__ import annotations

from pathlib import Path

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import DirectoryEntry, SchemaMigration, SettingsNamespace

SCHEMA_DIR = Path(__file__).parent / "schema"
SUPERADMIN_UUID = "00000000-0000-0000-0000-000000000002"

DEFAULTS = {
    "base_dn": "dc=didmos,dc=de",
    "tenant": "default-tenant",
    "tenant_dn": "ou=default-tenant,dc=didmos,dc=de",
    "data_dn": "ou=data,ou=default-tenant,dc=didmos,dc=de",
    "people_dn": "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de",
    "groups_dn": "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de",
    "organizations_dn": "ou=organizations,ou=data,ou=default-tenant,dc=didmos,dc=de",
    "superadmin": {"uuid": SUPERADMIN_UUID, "user_name": "superadmin", "given_name": "Super",
                   "family_name": "Admin"},
    "password_policy": {"max_failures": 10, "lockout_seconds": 600, "failure_count_interval": 600,
                        "must_change_after_reset": True},
    "read_uris": "",
    "pool_size": 10,
    "connect_timeout": 3.0,
    "failback_seconds": 30.0,
    # Which provider every node writes to, agreed through redis (docs/deployment.md).
    "writer": {"agree": True, "poll_seconds": 1.0, "catchup_seconds": 5.0, "confirm_seconds": 2.0},
    "timeout": 10.0,
    "retry_seconds": 5.0,
    "page_size": 500,
    "starttls": False,
    "tls_ca_file": "",
    "tls_require_cert": "demand",
    # Entry cache: opt-in, because it needs the syncprov overlay on the suffix and one more connection
    # per process (its change stream).
    "cache": {"enabled": False, "staleness_seconds": 2.0, "max_entries": 100_000},
}

_DN_KEYS = ("base_dn", "tenant_dn", "data_dn", "people_dn", "groups_dn", "organizations_dn")


def _is_dn(value) -> bool:
    import ldap.dn

    return isinstance(value, str) and bool(value) and ldap.dn.is_dn(value)


@hookimpl(trylast=True)
def didmos_settings():
    return [
        SettingsNamespace(
            name="ldap",
            defaults=DEFAULTS,
            validators=(
                *(Validator(f"ldap.{key}", condition=_is_dn,
                            messages={"condition": "{name} must be a DN such as 'ou=people,dc=example,dc=org', "
                                                   "got {value!r}"})
                  for key in _DN_KEYS),
                Validator("ldap.tenant", is_type_of=str, len_min=1),
                Validator("ldap.read_uris", "ldap.tls_ca_file", is_type_of=str),
                Validator("ldap.pool_size", "ldap.page_size", is_type_of=int, gte=1),
                Validator("ldap.connect_timeout", "ldap.timeout", "ldap.retry_seconds", "ldap.failback_seconds",
                          is_type_of=(int, float), gte=0),
                Validator("ldap.starttls", "ldap.password_policy.must_change_after_reset", is_type_of=bool),
                Validator("ldap.password_policy.max_failures", "ldap.password_policy.lockout_seconds",
                          "ldap.password_policy.failure_count_interval", is_type_of=int, gte=0),
                Validator("ldap.tls_require_cert", is_in=("never", "allow", "try", "demand")),
                Validator("ldap.cache.enabled", "ldap.writer.agree", is_type_of=bool),
                Validator("ldap.writer.poll_seconds", is_type_of=(int, float), gt=0),
                Validator("ldap.writer.catchup_seconds", "ldap.writer.confirm_seconds", is_type_of=(int, float),
                          gte=0),
                Validator("ldap.cache.staleness_seconds", is_type_of=(int, float), gt=0),
                Validator("ldap.cache.max_entries", is_type_of=int, gte=1),
                Validator("ldap.superadmin.uuid", "ldap.superadmin.user_name", "ldap.superadmin.given_name",
                          "ldap.superadmin.family_name", is_type_of=str, len_min=1),
            ),
            descriptions={
                "base_dn": "The didmos subtree inside the directory suffix.",
                "tenant": "Name of the default tenant.",
                "tenant_dn": "Entry of the default tenant.",
                "data_dn": "Where the tenant's data lives.",
                "people_dn": "Where new users are created by default.",
                "groups_dn": "Where new groups are created by default.",
                "organizations_dn": "Where new organizations are created by default.",
                "superadmin.uuid": "didmosUUID of the superadmin created by `didmos directory init`.",
                "superadmin.user_name": "Its userName (LDAP uid).",
                "superadmin.given_name": "Its given name.",
                "superadmin.family_name": "Its family name.",
                "password_policy.max_failures": "Failed binds before an account locks (0: never).",
                "password_policy.lockout_seconds": "How long a lock lasts (0: until an administrator unlocks).",
                "password_policy.failure_count_interval": "Seconds after which failed binds are forgotten.",
                "password_policy.must_change_after_reset": "A password set by an administrator must be changed "
                                                           "at the next login.",
                "read_uris": "LDAP URIs of read-only replicas for searches, space separated; empty: `directory.uri`.",
                "pool_size": "Connections per pool (service account, replicas, user binds each have one).",
                "connect_timeout": "Seconds to wait for a TCP connection (and for a free pooled connection).",
                "failback_seconds": "After a failover to a later URI of `directory.uri`, how often the first one is "
                                    "tried again; once it answers and has caught up (contextCSN), every "
                                    "connection moves back to it (so all nodes write to one provider). 0: stay "
                                    "where the failover went.",
                "writer.agree": "With several URIs in `directory.uri`: the nodes agree through redis on the one "
                                "they write to (a failover is followed at once, a failback is announced and "
                                "made by every node at the same time). Without redis each node decides alone.",
                "writer.poll_seconds": "How often a node reads the agreed writer from redis; a failback is "
                                       "announced twice this (plus 0.2 s) ahead.",
                "writer.catchup_seconds": "At a switch to another provider (failback, or following another "
                                          "node), how long new connections wait for it to catch up with the "
                                          "one left (contextCSN) before going ahead anyway.",
                "writer.confirm_seconds": "With several URIs in `directory.uri`: a write is answered only once "
                                          "every other provider in sync has it (its contextCSN), waiting at "
                                          "most this long (then that provider is not waited for until it has "
                                          "caught up). 0: answer at once; a provider that dies may then take "
                                          "its last writes with it.",
                "timeout": "Seconds an LDAP operation may take.",
                "retry_seconds": "How long reads retry while the directory is unreachable, before answering 503.",
                "page_size": "Entries per page of paged searches (RFC 2696).",
                "starttls": "Use StartTLS on ldap:// URIs.",
                "tls_ca_file": "CA certificates file for ldaps:// and StartTLS.",
                "tls_require_cert": "Server certificate check: never, allow, try or demand.",
                "cache.enabled": "Serve reads by DN and by didmosUUID from an in-process entry cache kept "
                                 "coherent by the directory's change stream (off by default: needs syncprov on "
                                 "the suffix and one more connection per process).",
                "cache.staleness_seconds": "Longest time a change made elsewhere may stay unseen by cache hits; "
                                           "past it, reads go to LDAP until the change stream is confirmed again.",
                "cache.max_entries": "Entries the cache holds at most (least recently used go first).",
            },
        )
    ]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_ldap.directory import Directory

    host.provide("directory", Directory.from_settings(host))


@hookimpl(trylast=True)
def didmos_readiness_checks(host):
    from didmos_ldap.doctor import readiness_check

    return [readiness_check(host)]


@hookimpl(trylast=True)
def didmos_doctor_checks(host):
    from didmos_ldap.doctor import doctor_checks

    return doctor_checks(host)


@hookimpl(trylast=True)
def didmos_directory_migrations():
    return [
        SchemaMigration(name=f"didmos_ldap.{path.stem}", ldif=path, order=10)
        for path in sorted(SCHEMA_DIR.glob("*.ldif"))
    ]


@hookimpl(trylast=True)
def didmos_directory_entries(settings):
    cfg = settings.ldap
    admin = cfg.superadmin
    name = f"{admin.given_name} {admin.family_name}"
    containers = [DirectoryEntry(dn=cfg[key], attributes=_container(cfg[key])) for key in _DN_KEYS]
    superadmin = DirectoryEntry(
        dn=f"didmosUUID={admin.uuid},{cfg.people_dn}",
        attributes={
            "objectClass": ["inetOrgPerson", "didmosObject", "didmosPerson"],
            "didmosUUID": [admin.uuid],
            "uid": [admin.user_name],
            "cn": [name],
            "displayName": [name],
            "givenName": [admin.given_name],
            "sn": [admin.family_name],
            "didmosActive": ["TRUE"],
            "didmosUserType": ["local"],
            "didmosTenant": [cfg.tenant],
            "userPassword": [settings.directory.superadmin_password],
        },
        announce=f"superadmin created: userName {admin.user_name}, didmosUUID {admin.uuid}",
    )
    policy = cfg.password_policy
    policies = f"ou=policies,{cfg.base_dn}"
    common = {"objectClass": ["applicationProcess", "pwdPolicy"], "pwdAttribute": ["userPassword"]}
    return [
        *containers,
        superadmin,
        DirectoryEntry(dn=policies, attributes=_container(policies)),
        DirectoryEntry(dn=f"cn=default,{policies}", attributes={
            **common, "cn": ["default"], "pwdLockout": [str(policy.max_failures > 0).upper()],
            "pwdMaxFailure": [str(policy.max_failures)], "pwdLockoutDuration": [str(policy.lockout_seconds)],
            "pwdFailureCountInterval": [str(policy.failure_count_interval)],
            "pwdMustChange": [str(policy.must_change_after_reset).upper()]}),
        DirectoryEntry(dn=f"cn=no-lockout,{policies}", attributes={
            **common, "cn": ["no-lockout"], "pwdLockout": ["FALSE"],
            "description": ["for service accounts: guessing must not lock didmos out"]}),
    ]


def _container(dn: str) -> dict[str, list[str]]:
    import ldap.dn

    attr, value, _ = ldap.dn.str2dn(dn)[0][0]
    if attr.lower() == "dc":
        return {"objectClass": ["dcObject", "organization"], "dc": [value], "o": [value]}
    if attr.lower() == "o":
        return {"objectClass": ["organization"], "o": [value]}
    return {"objectClass": ["organizationalUnit"], "ou": [value]}
