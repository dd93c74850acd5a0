"""The directory's readiness check (``/readyz``) and its ``didmos doctor`` checks.

Both open connections of their own, with short timeouts, instead of borrowing the service's pool:
a probe must say whether the directory answers *now*, not wait out the pool's retries.

``didmos doctor`` looks at:

* the connection: the directory answers and the service account binds (``directory.uri``,
  ``directory.bind_dn``, ``directory.bind_password``);
* the schema version: every migration the plugins declare is recorded below
  ``cn=didmos-migrations,<directory.suffix>``;
* cn=config, when the doctor may read it (``directory.config_uri`` / ``config_bind_dn``, as for
  ``didmos directory init``): the overlays didmos relies on, on the suffix's database. Other plugins
  check indexes with :func:`read_config` and :meth:`DirectoryConfig.unindexed`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.schema

from didmos_host.errors import ConfigError, DidmosError, Unavailable
from didmos_host.records import DoctorCheck, DoctorFinding, ReadinessCheck

#: Socket and operation timeout of the doctor's connections, in seconds.
TIMEOUT = 3.0
#: Overlays on the suffix's database and why didmos needs each (docs/operations.md, "What it needs").
OVERLAYS = {
    "memberof": "a user's groups (memberOf)",
    "refint": "references follow renames and deletes",
    "unique": "unique userName (uid)",
    "ppolicy": "password policy, lockout, hashed passwords",
    "syncprov": "the entry cache and replicas follow changes",
    "accesslog": "change history and delta-syncrepl",
    "sssvlv": "sorted, windowed SCIM lists",
    "deref": "member attributes in the same search",
}
#: Index types that make a filter on an attribute use an index.
INDEX_TYPES = {"eq", "pres", "sub", "subinitial", "subany", "subfinal", "approx"}
PREPARE_DOC = "docs/operations.md, 'Preparing a stock Debian 12 slapd'"


class ConfigUnreadable(DidmosError):
    """cn=config cannot be read with the identity the doctor has; ``fix`` says how to give it one."""

    fix = ("run the doctor as an identity that may read cn=config, as for `didmos directory init`: "
           "directory.config_uri = \"ldapi:///\" as root on the LDAP server, or directory.config_bind_dn "
           "and directory.config_bind_password")


def service_pool(host: Any, timeout: float):
    """A one-connection pool like the service's (URIs, service account, TLS) that gives up within about
    ``timeout`` seconds: each of the URIs it fails over between gets its share for connecting and binding."""
    from didmos_ldap.pool import ConnectionPool

    settings = host.service("directory").pool.settings
    share = timeout / max(1, len(settings.uris))
    return ConnectionPool(dataclasses.replace(settings, size=1, connect_timeout=share, timeout=share))


def _who_am_i(host: Any, timeout: float) -> str:
    pool = service_pool(host, timeout)
    try:
        with pool.connection() as conn:
            return conn.whoami_s()
    except ldap.LDAPError as exc:
        raise Unavailable(f"directory does not answer: {_reason(exc)}") from exc
    finally:
        pool.close()


def readiness_check(host: Any) -> ReadinessCheck:
    """The directory answers a WhoAmI as the service account."""

    def probe(timeout: float) -> str:
        _who_am_i(host, timeout)
        return "the service account is bound"

    return ReadinessCheck(name="directory", function=probe)


# -- cn=config ------------------------------------------------------------------------------------


@dataclass
class DirectoryConfig:
    """What the doctor read of cn=config: the suffix's database, its overlays and its indexes."""

    suffix_db: str
    #: overlay name (``ppolicy``) -> its configuration entry's attributes
    overlays: dict[str, dict[str, list[bytes]]]
    #: canonical attribute (OID, lower case) -> its index types; ``"default"`` -> the default types
    indexes: dict[str, set[str]]
    subschema: Any = field(default=None, repr=False)

    def canonical(self, attribute: str) -> str:
        """The attribute's OID when the schema knows it (``mail`` and ``rfc822Mailbox`` are one), else its name."""
        if self.subschema is not None:
            attribute = self.subschema.getoid(ldap.schema.AttributeType, attribute)
        return attribute.lower()

    def unindexed(self, attributes) -> list[str]:
        """Those of ``attributes`` with no eq, pres or sub index on the suffix's database."""
        return [name for name in attributes if not (self.indexes.get(self.canonical(name), set()) & INDEX_TYPES)]


def read_config(host: Any) -> DirectoryConfig:
    """Read the suffix database's overlays and indexes.

    Raises :class:`ConfigUnreadable` when the doctor may not read cn=config, ``ConfigError`` when cn=config
    has no database for ``directory.suffix``.
    """
    from didmos_host.directory import connect_admin, suffix_database

    settings = host.settings
    pool = None
    try:
        if settings.directory.config_uri or settings.directory.config_bind_dn:
            conn = connect_admin(settings)
            identity = "the configured administrator (directory.config_uri / config_bind_dn)"
        else:
            pool = service_pool(host, TIMEOUT)
            conn = pool.acquire()
            identity = f"the service account {settings.directory.bind_dn}"
    except DidmosError as exc:
        if pool is not None:
            pool.close()
        raise ConfigUnreadable(f"cannot connect to read cn=config: {exc.message}") from exc
    try:
        conn.set_option(ldap.OPT_TIMEOUT, TIMEOUT)
        suffix_db = suffix_database(conn, settings.directory.suffix)  # ConfigError: cn=config has no such suffix
        overlays = {}
        for _, attrs in conn.search_s(suffix_db, ldap.SCOPE_ONELEVEL, "(objectClass=olcOverlayConfig)"):
            overlays[attrs["olcOverlay"][0].decode().split("}")[-1].lower()] = attrs
        (_, db), = conn.search_s(suffix_db, ldap.SCOPE_BASE, "(objectClass=*)", ["olcDbIndex"])
        subschema = _subschema(conn)
        config = DirectoryConfig(suffix_db, overlays, {}, subschema)
        config.indexes = _indexes(db.get("olcDbIndex", []), config.canonical)
        return config
    except (ldap.NO_SUCH_OBJECT, ldap.INSUFFICIENT_ACCESS) as exc:
        raise ConfigUnreadable(f"cn=config is not readable as {identity}: {_reason(exc)}") from exc
    except ldap.LDAPError as exc:
        raise ConfigUnreadable(f"reading cn=config as {identity} failed: {_reason(exc)}") from exc
    finally:
        if pool is not None:
            pool.release(conn)
            pool.close()
        else:
            conn.unbind_s()


def _subschema(conn) -> Any:
    try:
        dn = conn.search_subschemasubentry_s()
        entry = conn.read_subschemasubentry_s(dn, attrs=["attributeTypes"]) if dn else None
    except ldap.LDAPError:
        return None
    return ldap.schema.SubSchema(entry) if entry else None


def _indexes(values: list[bytes], canonical) -> dict[str, set[str]]:
    """``olcDbIndex`` values (``uid,cn eq,sub``; ``default pres,eq``; ``didmosUUID``) by attribute."""
    parsed: list[tuple[list[str], set[str]]] = []
    default: set[str] = set()
    for raw in values:
        attributes, _, types = raw.decode().strip().partition(" ")
        kinds = {kind.strip().lower() for kind in types.replace(" ", ",").split(",") if kind.strip()}
        names = [name.strip() for name in attributes.split(",") if name.strip()]
        if [name.lower() for name in names] == ["default"]:
            default = kinds
        else:
            parsed.append((names, kinds))
    indexes: dict[str, set[str]] = {}
    for names, kinds in parsed:
        for name in names:
            indexes.setdefault(canonical(name), set()).update(kinds or default)
    return indexes


# -- doctor --------------------------------------------------------------------------------------


def doctor_checks(host: Any) -> list[DoctorCheck]:
    return [DoctorCheck("directory", check_directory, order=10)]


def check_directory(host: Any) -> list[DoctorFinding]:
    settings = host.settings.directory
    try:
        who = _who_am_i(host, TIMEOUT)
    except Unavailable as exc:
        return [DoctorFinding("directory.connection", "problem", exc.message,
                              f"start slapd, or correct directory.uri (now {settings.uri!r})"),
                DoctorFinding("directory.migrations", "skipped", "the directory does not answer")]
    except DidmosError as exc:  # refused credentials, empty password
        return [DoctorFinding("directory.connection", "problem", exc.message,
                              "set directory.bind_dn and directory.bind_password to the service account's; "
                              "`didmos directory init` creates that account when directory.bind_password is set"),
                DoctorFinding("directory.migrations", "skipped", "the service account cannot bind")]
    findings = [DoctorFinding("directory.connection", "ok",
                              f"{settings.uri} answers; bound as {who.removeprefix('dn:') or settings.bind_dn}")]
    findings.append(_check_migrations(host))
    try:
        config = read_config(host)
    except ConfigUnreadable as exc:
        return [*findings, DoctorFinding("directory.overlays", "skipped", f"{exc.message}; overlays not checked",
                                         ConfigUnreadable.fix)]
    except ConfigError as exc:
        return [*findings, DoctorFinding("directory.suffix", "problem", exc.message,
                                         "set directory.suffix to the olcSuffix of the database that holds didmos's "
                                         "entries (ldapsearch -Y EXTERNAL -H ldapi:/// -b cn=config olcSuffix)")]
    findings.extend(_check_overlays(config))
    return findings


def _check_migrations(host: Any) -> DoctorFinding:
    from didmos_host.directory import MIGRATIONS_RDN

    records = f"{MIGRATIONS_RDN},{host.settings.directory.suffix}"
    declared = sorted({m.name for found in host.hook.didmos_directory_migrations() for m in found or ()})
    pool = service_pool(host, TIMEOUT)
    try:
        with pool.connection() as conn:
            try:
                found = conn.search_s(records, ldap.SCOPE_ONELEVEL, "(objectClass=*)", ["cn"])
            except ldap.NO_SUCH_OBJECT:
                found = []
    except (ldap.LDAPError, DidmosError) as exc:
        reason = exc.message if isinstance(exc, DidmosError) else _reason(exc)
        return DoctorFinding("directory.migrations", "problem", f"cannot read {records}: {reason}",
                             "give the service account read access to the suffix (docs/operations.md)")
    finally:
        pool.close()
    recorded = {value.decode() for _, attrs in found for value in attrs.get("cn", [])}
    missing = [name for name in declared if name not in recorded]
    if missing:
        return DoctorFinding("directory.migrations", "problem",
                             f"{len(missing)} of {len(declared)} schema migrations are not applied: "
                             f"{', '.join(missing)}",
                             "run `didmos directory init` (it applies only the pending migrations and creates "
                             "only missing entries)")
    return DoctorFinding("directory.migrations", "ok", f"all {len(declared)} schema migrations applied")


def _check_overlays(config: DirectoryConfig) -> list[DoctorFinding]:
    present = set(config.overlays)
    if "dynlist" in present:  # OpenLDAP 2.5+: dynlist can maintain memberOf instead of the memberof overlay
        present.add("memberof")
    missing = [name for name in OVERLAYS if name not in present]
    findings = []
    if missing:
        findings.append(DoctorFinding(
            "directory.overlays", "problem",
            f"{config.suffix_db} lacks the overlay(s) " + ", ".join(f"{name} ({OVERLAYS[name]})" for name in missing),
            f"add them to {config.suffix_db} (and load their modules) as {PREPARE_DOC} shows"))
    else:
        findings.append(DoctorFinding("directory.overlays", "ok",
                                      f"{config.suffix_db} has the overlays {', '.join(OVERLAYS)}"))
    ppolicy = config.overlays.get("ppolicy")
    if ppolicy is not None and ppolicy.get("olcPPolicyHashCleartext", [b"FALSE"])[0].upper() != b"TRUE":
        findings.append(DoctorFinding(
            "directory.ppolicy", "problem",
            "passwords written by didmos are stored in clear text: the ppolicy overlay lacks "
            "olcPPolicyHashCleartext: TRUE",
            f"set olcPPolicyHashCleartext: TRUE on the ppolicy overlay of {config.suffix_db}, then reset the "
            f"passwords set since"))
    return findings


def _reason(exc: ldap.LDAPError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return "; ".join(str(info[k]) for k in ("desc", "info") if info.get(k)) or type(exc).__name__
