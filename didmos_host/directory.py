"""Bringing a directory to what didmos needs: schema migrations, then the entries plugins declare.

Used by ``didmos directory init`` and ``didmos dev``; safe to run any number of times. This is
administration (cn=config), so it talks to python-ldap itself; all data traffic at run time goes
through the ``didmos_ldap`` plugin.

Applied migrations are recorded as entries ``cn=<migration>,cn=didmos-migrations,<suffix>``
(object class ``applicationProcess`` from the core schema, so recording needs no schema of ours).
"""

from __future__ import annotations

import io
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import ldap
import ldap.dn
import ldap.filter
import ldif

from didmos_host.errors import ConfigError, Unavailable
from didmos_host.host import Host
from didmos_host.records import DirectoryEntry, SchemaMigration

log = logging.getLogger("didmos.directory")
MIGRATIONS_RDN = "cn=didmos-migrations"


@dataclass
class InitReport:
    """What one run of :func:`init_directory` did."""

    migrations_applied: list[str] = field(default_factory=list)
    entries_created: list[str] = field(default_factory=list)
    announcements: list[str] = field(default_factory=list)
    #: The superadmin password when this run generated it and created an entry with it (shown once).
    generated_password: str | None = None
    #: Things about the directory's configuration an operator should fix.
    warnings: list[str] = field(default_factory=list)


def config_uris(settings: Any) -> list[str]:
    """The URIs whose cn=config didmos administers: every URI of ``directory.config_uri`` (one per
    provider when several replicate each other: cn=config is not replicated), else the first of
    ``directory.uri``."""
    cfg = settings.directory
    return cfg.config_uri.split() or cfg.uri.split()[:1]


def connect_admin(settings: Any, uri: str | None = None) -> ldap.ldapobject.LDAPObject:
    """A connection allowed to change cn=config and to write the suffix.

    ``uri`` or the first of :func:`config_uris` (``ldapi://`` -> SASL EXTERNAL; ``ldap://`` bound as
    ``directory.config_bind_dn``).
    """
    cfg = settings.directory
    uri = uri or config_uris(settings)[0]
    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_PROTOCOL_VERSION, 3)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 10)
    try:
        if uri.startswith("ldapi:"):
            conn.sasl_external_bind_s()
        elif cfg.config_bind_dn:
            conn.simple_bind_s(cfg.config_bind_dn, cfg.config_bind_password)
        else:
            raise ConfigError(
                "directory.config_bind_dn is empty: set it (and directory.config_bind_password), "
                "or set directory.config_uri to an ldapi:// URI for SASL EXTERNAL"
            )
    except ldap.SERVER_DOWN as exc:
        raise Unavailable(f"directory at {uri} cannot be reached: {exc}") from exc
    except ldap.LDAPError as exc:
        raise ConfigError(f"cannot bind to {uri} for directory administration: {_describe(exc)}") from exc
    return conn


def _describe(exc: ldap.LDAPError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return "; ".join(str(info[k]) for k in ("desc", "info") if info.get(k)) or repr(exc)


def suffix_database(conn: ldap.ldapobject.LDAPObject, suffix: str) -> str:
    """The DN of the cn=config database entry that holds ``suffix``."""
    found = conn.search_s(
        "cn=config", ldap.SCOPE_ONELEVEL, ldap.filter.filter_format("(olcSuffix=%s)", [suffix]), ["olcSuffix"]
    )
    if not found:
        raise ConfigError(f"no database in cn=config has suffix {suffix!r} (setting directory.suffix)")
    return found[0][0]


def parse_ldif(text: str) -> list[tuple[str, str, Any]]:
    """``(kind, dn, payload)`` records: ``("add", dn, entry)`` or ``("modify", dn, modlist)``."""
    records: list[tuple[str, str, Any]] = []

    class Parser(ldif.LDIFParser):
        def handle(self, dn, entry):
            records.append(("add", dn, entry))

        def handle_modify(self, dn, modops, controls=None):
            records.append(("modify", dn, modops))

    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith("#")]
        if not lines:
            continue
        changetype = next((line.split(":", 1)[1].strip().lower() for line in lines
                           if line.lower().startswith("changetype:")), "add")
        if changetype == "modify":
            Parser(io.StringIO("\n".join(lines) + "\n")).parse_change_records()
        elif changetype == "add":
            content = [line for line in lines if not line.lower().startswith("changetype:")]
            Parser(io.StringIO("\n".join(content) + "\n")).parse_entry_records()
        else:
            raise ConfigError(f"LDIF changetype {changetype!r} is not supported in migrations (use add or modify)")
    return records


_PLACEHOLDER = re.compile(r"\{(suffix_db|overlay:[A-Za-z0-9_-]+|setting:[A-Za-z0-9_.]+)\}")


def fill_placeholders(text: str, conn, suffix_db: str, settings: Any) -> str:
    """Replace ``{suffix_db}``, ``{overlay:NAME}`` and ``{setting:KEY}`` in a migration's LDIF."""

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "suffix_db":
            return suffix_db
        if name.startswith("overlay:"):
            overlay = name.split(":", 1)[1]
            for dn, attrs in conn.search_s(suffix_db, ldap.SCOPE_ONELEVEL, "(objectClass=olcOverlayConfig)", ["olcOverlay"]):
                if attrs["olcOverlay"][0].decode().split("}")[-1] == overlay:
                    return dn
            raise ConfigError(f"the directory has no {overlay} overlay on {suffix_db}; see docs/operations.md")
        key = name.split(":", 1)[1]
        found = settings.get(key)
        if found is None:
            raise ConfigError(f"migration refers to setting {key!r}, which does not exist")
        return str(found)

    return _PLACEHOLDER.sub(value, text)


def apply_migration(conn, migration: SchemaMigration, suffix_db: str, settings: Any = None) -> None:
    """Apply one migration's LDIF to cn=config. A change that is already there counts as done."""
    text = fill_placeholders(migration.ldif.read_text(), conn, suffix_db, settings)
    for kind, dn, payload in parse_ldif(text):
        try:
            if kind == "add":
                if _config_entry_exists(conn, dn, payload):
                    log.info("migration %s: %s is there already", migration.name, dn)
                    continue
                conn.add_s(dn, list(payload.items()))
            else:
                _modify_tolerantly(conn, dn, payload)
        except ldap.ALREADY_EXISTS:
            # A run that died between applying and recording left it done; do not fail the rerun.
            log.info("migration %s: %s already applied", migration.name, dn)
        except ldap.LDAPError as exc:
            raise ConfigError(f"migration {migration.name} failed on {dn}: {_describe(exc)}") from exc


_ORDER_PREFIX = re.compile(rb"^\{\d+\}")


def _unordered(value: bytes) -> bytes:
    """A cn=config value without its ``{N}`` ordering prefix."""
    return _ORDER_PREFIX.sub(b"", value)


def _config_entry_exists(conn, dn: str, payload: dict[str, list[bytes]]) -> bool:
    """True when a sibling of ``dn`` already holds what ``payload`` adds, ``{N}`` prefixes aside.

    slapd numbers schema and overlay entries, so adding ``olcOverlay=memberof`` twice makes a second
    instance instead of failing; a migration applied again (``--reapply-schema``, a new provider) must
    recognise its own entry.
    """
    rdn, *parent = ldap.dn.str2dn(dn)
    (rdn_attr, rdn_value, _), = rdn
    parent_dn = ldap.dn.dn2str(parent)
    try:
        siblings = conn.search_s(parent_dn, ldap.SCOPE_ONELEVEL, f"({rdn_attr}=*)", list(payload))
    except ldap.NO_SUCH_OBJECT:
        return False
    wanted = {name.lower(): {_unordered(v) for v in values} for name, values in payload.items()}
    name = _unordered(rdn_value.encode())
    for _, attrs in siblings:
        have = {key.lower(): {_unordered(v) for v in values} for key, values in attrs.items()}
        if name not in have.get(rdn_attr.lower(), set()):
            continue
        if all(have.get(key, set()) >= values for key, values in wanted.items() if key != "objectclass"):
            return True
    return False


def _indexed(conn, dn: str) -> dict[str, set[str]]:
    """The database's ``olcDbIndex`` as attribute (lower case) -> index types."""
    found = conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["olcDbIndex"])
    indexed: dict[str, set[str]] = {}
    for value in found[0][1].get("olcDbIndex", []) if found else []:
        names, _, kinds = _unordered(value).decode().strip().partition(" ")
        for name in names.split(","):
            indexed.setdefault(name.strip().lower(), set()).update(k.strip() for k in kinds.split(",") if k.strip())
    return indexed


def _add_indexes_one_by_one(conn, dn: str, values: list[bytes]) -> None:
    """Add ``olcDbIndex`` values attribute by attribute, skipping attributes the database indexes
    already (slapd refuses a second definition for an attribute: "duplicate index definition")."""
    indexed = _indexed(conn, dn)
    for value in values:
        names, _, kinds = value.decode().strip().partition(" ")
        wanted = {k.strip() for k in kinds.split(",") if k.strip()}
        for name in (n.strip() for n in names.split(",")):
            have = indexed.get(name.lower())
            if have is None:
                conn.modify_s(dn, [(ldap.MOD_ADD, "olcDbIndex", [f"{name} {kinds.strip()}".encode()])])
                indexed[name.lower()] = wanted
            elif not wanted <= have:
                log.warning("%s: %s is indexed %s, not %s as a migration asks; left as it is",
                            dn, name, ",".join(sorted(have)), ",".join(sorted(wanted)))


def _modify_tolerantly(conn, dn: str, modlist) -> None:
    """Apply a modify; when some added values exist already, add the others one by one. Index
    definitions for attributes that are indexed already (a directory indexed by hand) are skipped."""
    try:
        conn.modify_s(dn, modlist)
    except ldap.OTHER as exc:
        info = exc.args[0].get("info", "") if exc.args and isinstance(exc.args[0], dict) else ""
        if "duplicate index definition" not in info:
            raise
        for op, attr, values in modlist:
            if op == ldap.MOD_ADD and attr.lower() == "olcdbindex":
                _add_indexes_one_by_one(conn, dn, values)
            else:
                _modify_tolerantly(conn, dn, [(op, attr, values)])
    except ldap.TYPE_OR_VALUE_EXISTS:
        for op, attr, values in modlist:
            for value in values or [None]:
                try:
                    conn.modify_s(dn, [(op, attr, None if value is None else [value])])
                except ldap.TYPE_OR_VALUE_EXISTS:
                    log.info("%s: %s value already present", dn, attr)


def _container_entry(dn: str) -> dict[str, list[bytes]]:
    """A plain entry for a parent nobody declared, chosen by its RDN attribute."""
    attr, value, _ = ldap.dn.str2dn(dn)[0][0]
    attr = attr.lower()
    classes = {
        "dc": [b"top", b"dcObject", b"organization"],
        "o": [b"top", b"organization"],
        "ou": [b"top", b"organizationalUnit"],
        "cn": [b"top", b"applicationProcess"],
    }
    if attr not in classes:
        raise ConfigError(f"cannot create parent entry {dn!r}: declare it in didmos_directory_entries")
    entry = {"objectClass": classes[attr], attr: [value.encode()]}
    if attr == "dc":
        entry["o"] = [value.encode()]
    return entry


def _exists(conn, dn: str) -> bool:
    try:
        conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
        return True
    except ldap.NO_SUCH_OBJECT:
        return False


def _ensure(conn, dn: str, entry: dict[str, list[bytes]], top: str | None = None) -> bool:
    """Add ``dn`` (and any missing parent up to ``top``, the suffix) unless it exists.

    Returns True when it was added now.
    """
    if _exists(conn, dn):
        return False
    parent = ldap.dn.dn2str(ldap.dn.str2dn(dn)[1:])
    is_top = top is None or ldap.dn.str2dn(dn.lower()) == ldap.dn.str2dn(top.lower())
    if parent and not is_top and not _exists(conn, parent):
        _ensure(conn, parent, _container_entry(parent), top)
    try:
        conn.add_s(dn, list(entry.items()))
    except ldap.ALREADY_EXISTS:  # another node's init got there first
        return False
    except ldap.LDAPError as exc:
        raise ConfigError(f"cannot create {dn}: {_describe(exc)}") from exc
    return True


def check_configuration(conn, suffix_db: str) -> list[str]:
    """What in the suffix database's configuration endangers didmos's data (for init and doctor)."""
    overlays = {attrs["olcOverlay"][0].decode().split("}")[-1]: attrs for _, attrs in conn.search_s(
        suffix_db, ldap.SCOPE_ONELEVEL, "(objectClass=olcOverlayConfig)", ["olcOverlay", "olcPPolicyHashCleartext"])}
    warnings = []
    if overlays.get("ppolicy", {}).get("olcPPolicyHashCleartext", [b"FALSE"])[0].upper() != b"TRUE":
        warnings.append("passwords written by didmos are stored in clear text: the ppolicy overlay with "
                        "olcPPolicyHashCleartext: TRUE is missing on the suffix database (docs/operations.md)")
    for needed in ("memberof", "refint", "unique", "syncprov"):
        if needed not in overlays:
            warnings.append(f"the {needed} overlay is missing on the suffix database (docs/operations.md)")
    return warnings


def init_directory(host: Host, conn=None, *, reapply: bool = False) -> InitReport:
    """Apply pending migrations, then add the declared entries that are missing.

    A migration changes the cn=config of every URI in ``directory.config_uri`` (all providers of a
    replicated directory) and is then recorded once, in the (replicated) suffix. ``reapply`` applies
    every migration again, recorded or not, to every one of them: for a provider that joins later
    (migrations tolerate what is already there).
    """
    settings = host.settings
    generated = None
    if not settings.directory.superadmin_password:
        generated = secrets.token_urlsafe(12)
        settings.set("directory.superadmin_password", generated, loader_identifier="generated")
    suffix = settings.directory.suffix
    conn = conn or connect_admin(settings)
    report = InitReport()
    suffix_db = suffix_database(conn, suffix)
    _ensure(conn, suffix, _container_entry(suffix))
    records_dn = f"{MIGRATIONS_RDN},{suffix}"
    _ensure(conn, records_dn, _container_entry(records_dn), suffix)
    report.warnings.extend(check_configuration(conn, suffix_db))
    applied = {
        entry["cn"][0].decode()
        for _, entry in conn.search_s(records_dn, ldap.SCOPE_ONELEVEL, "(objectClass=applicationProcess)", ["cn"])
    }
    migrations = [m for results in host.hook.didmos_directory_migrations() for m in results or ()]
    others = [connect_admin(settings, uri) for uri in config_uris(settings)[1:]]
    try:
        other_dbs = [suffix_database(other, suffix) for other in others]
        for migration in sorted(migrations, key=lambda m: (m.order, m.name)):
            if migration.name in applied and not reapply:
                continue
            apply_migration(conn, migration, suffix_db, settings)
            for other, other_db in zip(others, other_dbs):
                apply_migration(other, migration, other_db, settings)
            if migration.name in applied:
                continue
            stamp = time.strftime("%Y%m%d%H%M%SZ", time.gmtime())
            _ensure(
                conn,
                f"cn={ldap.dn.escape_dn_chars(migration.name)},{records_dn}",
                {"objectClass": [b"applicationProcess"], "cn": [migration.name.encode()],
                 "description": [f"applied {stamp}".encode()]},
            )
            report.migrations_applied.append(migration.name)
    finally:
        for other in others:
            other.unbind_s()

    entries: list[DirectoryEntry] = [e for results in host.hook.didmos_directory_entries(settings=settings)
                                     for e in results or ()]
    for declared in sorted(entries, key=lambda e: len(ldap.dn.str2dn(e.dn))):
        attrs = {name: [v.encode() if isinstance(v, str) else v for v in values]
                 for name, values in declared.attributes.items()}
        if _ensure(conn, declared.dn, attrs, suffix):
            report.entries_created.append(declared.dn)
            if declared.announce:
                report.announcements.append(declared.announce)
            if generated and generated in declared.attributes.get("userPassword", ()):
                report.generated_password = generated
    return report
