"""`didmos directory init` against the real slapd of the test harness."""

import ldap
import pytest

from didmos_host import hookimpl
from didmos_host.directory import MIGRATIONS_RDN, init_directory, parse_ldif
from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.records import DirectoryEntry, SchemaMigration
from didmos_host.testing import SUPERADMIN_PASSWORD

SUPERADMIN_DN = "didmosUUID=00000000-0000-0000-0000-000000000002,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"


def installed_migrations():
    """Every installed plugin's migrations in the order init applies them: (order, name)."""
    found = [m for results in Host.create().hook.didmos_directory_migrations() for m in results]
    return [m.name for m in sorted(found, key=lambda m: (m.order, m.name))]


def test_first_init_applied_schema_and_created_the_seed_tree(didmos_slapd):
    report = didmos_slapd.init_report
    assert report.migrations_applied == installed_migrations()
    assert report.migrations_applied[:3] == ["didmos_ldap.0001-didmos-schema", "didmos_ldap.0002-didmos-indexes",
                                             "didmos_ldap.0003-default-password-policy"]
    conn = didmos_slapd.admin_connection()
    for dn in ("dc=de", "dc=didmos,dc=de", "ou=default-tenant,dc=didmos,dc=de", "ou=data,ou=default-tenant,dc=didmos,dc=de",
               "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de",
               "ou=organizations,ou=data,ou=default-tenant,dc=didmos,dc=de", SUPERADMIN_DN):
        assert conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])[0][0].lower() == dn.lower()
    (_, admin), = conn.search_s(SUPERADMIN_DN, ldap.SCOPE_BASE, attrlist=["uid", "displayName", "userPassword", "objectClass"])
    assert admin["uid"] == [b"superadmin"] and admin["displayName"] == [b"Super Admin"]
    assert b"didmosPerson" in admin["objectClass"]
    assert admin["userPassword"][0].startswith(b"{SSHA}")  # hashed by the ppolicy overlay, never stored in clear
    assert "superadmin created" in report.announcements[0] and report.generated_password is None


def test_superadmin_and_service_account_can_bind(didmos_slapd):
    user = ldap.initialize(didmos_slapd.uri)
    user.simple_bind_s(SUPERADMIN_DN, SUPERADMIN_PASSWORD)
    assert user.whoami_s().lower() == f"dn:{SUPERADMIN_DN}".lower()
    service = ldap.initialize(didmos_slapd.uri)
    service.simple_bind_s("cn=didmos-service,ou=system,dc=didmos,dc=de", didmos_slapd.service_password)
    found = service.search_s("ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", ldap.SCOPE_SUBTREE,
                             "(didmosUUID=00000000-0000-0000-0000-000000000002)", ["uid"])
    assert found[0][1]["uid"] == [b"superadmin"]
    with pytest.raises(ldap.INVALID_CREDENTIALS):
        ldap.initialize(didmos_slapd.uri).simple_bind_s(SUPERADMIN_DN, "wrong")


def test_schema_and_index_are_in_cn_config(didmos_slapd):
    conn = didmos_slapd.config_connection()
    schemas = conn.search_s("cn=schema,cn=config", ldap.SCOPE_ONELEVEL, "(cn=*didmos)", ["olcObjectClasses"])
    assert any(b"didmosPerson" in value for value in schemas[0][1]["olcObjectClasses"])
    databases = conn.search_s("cn=config", ldap.SCOPE_ONELEVEL, "(olcSuffix=dc=de)", ["olcDbIndex"])
    assert b"didmosUUID eq" in databases[0][1]["olcDbIndex"]


def test_second_init_changes_nothing(didmos_slapd, didmos_overrides):
    report = init_directory(Host.create(didmos_overrides))
    assert report.migrations_applied == [] and report.entries_created == []
    records = didmos_slapd.admin_connection().search_s(f"{MIGRATIONS_RDN},dc=de", ldap.SCOPE_ONELEVEL, "(cn=*)", ["cn"])
    assert sorted(entry["cn"][0].decode() for _, entry in records) == sorted(installed_migrations())


def test_a_new_migration_and_entry_are_applied_once(didmos_slapd, didmos_overrides, tmp_path):
    ldif_file = tmp_path / "0001-index.ldif"
    ldif_file.write_text("dn: {suffix_db}\nchangetype: modify\nadd: olcDbIndex\nolcDbIndex: postOfficeBox eq\n")

    class Upgrade:
        @hookimpl
        def didmos_directory_migrations(self):
            return [SchemaMigration(name="upgrade.0001-index", ldif=ldif_file, order=200)]

        @hookimpl
        def didmos_directory_entries(self, settings):
            # a parent nobody declares (ou=extra) is created as a plain container
            return [DirectoryEntry(dn="cn=probe,ou=extra,dc=didmos,dc=de",
                                   attributes={"objectClass": ["applicationProcess"], "cn": ["probe"]})]

    first = init_directory(Host.create(didmos_overrides, extra_plugins=[Upgrade()]))
    assert first.migrations_applied == ["upgrade.0001-index"]
    assert first.entries_created == ["cn=probe,ou=extra,dc=didmos,dc=de"]
    second = init_directory(Host.create(didmos_overrides, extra_plugins=[Upgrade()]))
    assert second.migrations_applied == [] and second.entries_created == []
    databases = didmos_slapd.config_connection().search_s("cn=config", ldap.SCOPE_ONELEVEL, "(olcSuffix=dc=de)", ["olcDbIndex"])
    assert b"postOfficeBox eq" in databases[0][1]["olcDbIndex"]


def test_a_broken_migration_stops_with_its_name(didmos_overrides, tmp_path):
    ldif_file = tmp_path / "bad.ldif"
    ldif_file.write_text("dn: {suffix_db}\nchangetype: modify\nadd: olcDbIndex\nolcDbIndex: noSuchAttribute eq\n")

    class Broken:
        @hookimpl
        def didmos_directory_migrations(self):
            return [SchemaMigration(name="broken.0001", ldif=ldif_file, order=300)]

    with pytest.raises(ConfigError, match="migration broken.0001 failed"):
        init_directory(Host.create(didmos_overrides, extra_plugins=[Broken()]))


def test_generated_superadmin_password_is_reported_only_when_created(didmos_overrides):
    overrides = {**didmos_overrides, "directory": {**didmos_overrides["directory"], "superadmin_password": ""}}
    report = init_directory(Host.create(overrides))
    assert report.generated_password is None  # the superadmin exists already: nothing to show


def test_parse_ldif_reads_adds_and_modifies():
    records = parse_ldif("dn: cn=a,dc=de\nobjectClass: top\ncn: a\n\ndn: cn=a,dc=de\nchangetype: modify\n"
                         "replace: description\ndescription: x\n-\n")
    assert records[0] == ("add", "cn=a,dc=de", {"objectClass": [b"top"], "cn": [b"a"]})
    assert records[1] == ("modify", "cn=a,dc=de", [(ldap.MOD_REPLACE, "description", [b"x"])])


def test_unreachable_directory_is_a_clear_error(didmos_overrides):
    from didmos_host.errors import Unavailable
    from didmos_host.servers import free_port

    overrides = {**didmos_overrides, "directory": {**didmos_overrides["directory"],
                                                   "config_uri": f"ldap://127.0.0.1:{free_port()}",
                                                   "config_bind_dn": "cn=admin,dc=de"}}
    with pytest.raises(Unavailable, match="cannot be reached"):
        init_directory(Host.create(overrides))


def test_cli_directory_init_is_safe_to_run_again(didmos_slapd, didmos_overrides):
    import os
    import subprocess
    import sys

    directory = didmos_overrides["directory"]
    env = {**os.environ, "DIDMOS_DIRECTORY__URI": directory["uri"], "DIDMOS_DIRECTORY__CONFIG_URI": directory["config_uri"],
           "DIDMOS_DIRECTORY__BIND_PASSWORD": directory["bind_password"]}
    result = subprocess.run([sys.executable, "-m", "didmos_host.cli", "directory", "init"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "migrations applied: none (up to date)" in result.stdout and "entries created: 0" in result.stdout


def test_parse_ldif_accepts_changetype_add_and_comments_and_refuses_others():
    records = parse_ldif("# a comment\ndn: cn=a,dc=de\nchangetype: add\nobjectClass: top\ncn: a\n")
    assert records == [("add", "cn=a,dc=de", {"objectClass": [b"top"], "cn": [b"a"]})]
    with pytest.raises(ConfigError, match="changetype 'delete' is not supported"):
        parse_ldif("dn: cn=a,dc=de\nchangetype: delete\n")


def test_a_modify_whose_values_partly_exist_adds_the_others(didmos_slapd, didmos_overrides, tmp_path):
    ldif_file = tmp_path / "partial.ldif"
    # "didmosUUID eq" exists since migration 0002; "roomNumber eq" does not
    ldif_file.write_text("dn: {suffix_db}\nchangetype: modify\nadd: olcDbIndex\nolcDbIndex: didmosUUID eq\n"
                         "olcDbIndex: roomNumber eq\n")

    class Partial:
        @hookimpl
        def didmos_directory_migrations(self):
            return [SchemaMigration(name="partial.0001", ldif=ldif_file, order=400)]

    assert init_directory(Host.create(didmos_overrides, extra_plugins=[Partial()])).migrations_applied == ["partial.0001"]
    databases = didmos_slapd.config_connection().search_s("cn=config", ldap.SCOPE_ONELEVEL, "(olcSuffix=dc=de)", ["olcDbIndex"])
    assert b"roomNumber eq" in databases[0][1]["olcDbIndex"]


def test_the_test_directory_raises_no_configuration_warning(didmos_slapd):
    assert didmos_slapd.init_report.warnings == []


def test_an_index_migration_skips_attributes_indexed_by_hand(didmos_slapd, didmos_overrides, tmp_path):
    """A directory indexed by hand: slapd refuses a second definition for an attribute ("duplicate
    index definition"), so the migration adds only the attributes that have none."""
    conn = didmos_slapd.config_connection()
    suffix_db = conn.search_s("cn=config", ldap.SCOPE_ONELEVEL, "(olcSuffix=dc=de)", ["1.1"])[0][0]
    conn.modify_s(suffix_db, [(ldap.MOD_ADD, "olcDbIndex", [b"carLicense eq"])])
    ldif_file = tmp_path / "overlapping.ldif"
    ldif_file.write_text("dn: {suffix_db}\nchangetype: modify\nadd: olcDbIndex\n"
                         "olcDbIndex: carLicense,departmentNumber eq\n")

    class Overlapping:
        @hookimpl
        def didmos_directory_migrations(self):
            return [SchemaMigration(name="overlapping.0001", ldif=ldif_file, order=500)]

    report = init_directory(Host.create(didmos_overrides, extra_plugins=[Overlapping()]))
    assert report.migrations_applied == ["overlapping.0001"]
    indexes = conn.search_s(suffix_db, ldap.SCOPE_BASE, attrlist=["olcDbIndex"])[0][1]["olcDbIndex"]
    assert b"carLicense eq" in indexes and b"departmentNumber eq" in indexes
