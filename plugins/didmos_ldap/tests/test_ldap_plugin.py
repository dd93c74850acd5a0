"""The didmos_ldap plugin's own hooks: settings, migrations, declared entries."""

import pytest

from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_ldap.plugin import SCHEMA_DIR, SUPERADMIN_UUID


def test_layout_settings_must_be_dns():
    with pytest.raises(ConfigError, match="ldap.people_dn must be a DN"):
        Host.create({"ldap": {"people_dn": "people"}})


def test_migrations_are_the_shipped_ldif_files_in_order():
    host = Host.create()
    (migrations,) = [m for m in host.hook.didmos_directory_migrations() if m and m[0].name.startswith("didmos_ldap")]
    assert [m.name for m in migrations] == ["didmos_ldap.0001-didmos-schema", "didmos_ldap.0002-didmos-indexes",
        "didmos_ldap.0003-default-password-policy", "didmos_ldap.0004-didmos-scim",
        "didmos_ldap.0005-memberof-didmos-group", "didmos_ldap.0006-didmos-scim-indexes",
        "didmos_ldap.0007-scim-filter-indexes"]
    assert all(m.ldif.parent == SCHEMA_DIR and m.ldif.is_file() for m in migrations)


def test_entries_follow_the_configured_layout():
    host = Host.create({"ldap": {"people_dn": "ou=staff,ou=data,ou=default-tenant,dc=didmos,dc=de"},
                        "directory": {"superadmin_password": "pw"}})
    entries = {e.dn: e for results in host.hook.didmos_directory_entries(settings=host.settings) for e in results}
    admin = entries[f"didmosUUID={SUPERADMIN_UUID},ou=staff,ou=data,ou=default-tenant,dc=didmos,dc=de"]
    assert admin.attributes["userPassword"] == ["pw"] and admin.attributes["uid"] == ["superadmin"]
    assert entries["ou=staff,ou=data,ou=default-tenant,dc=didmos,dc=de"].attributes["objectClass"] == ["organizationalUnit"]
    assert entries["dc=didmos,dc=de"].attributes["objectClass"] == ["dcObject", "organization"]


def test_didmos_groups_may_be_empty_and_give_their_members_member_of(didmos_slapd):
    import uuid

    import ldap

    conn = didmos_slapd.admin_connection()
    tag = uuid.uuid4().hex[:8]
    people, groups = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", "ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de"
    user, group = f"uid={tag},{people}", f"cn={tag},{groups}"
    conn.add_s(user, [("objectClass", [b"inetOrgPerson"]), ("uid", [tag.encode()]), ("cn", [b"x"]), ("sn", [b"x"])])
    conn.add_s(group, [("objectClass", [b"didmosGroup"]), ("cn", [tag.encode()])])
    conn.modify_s(group, [(ldap.MOD_ADD, "member", [user.encode()])])
    assert conn.search_s(user, ldap.SCOPE_BASE, attrlist=["memberOf"])[0][1]["memberOf"] == [group.encode()]
    conn.modify_s(group, [(ldap.MOD_DELETE, "member", None)])  # empty again: allowed
    assert "memberOf" not in conn.search_s(user, ldap.SCOPE_BASE, attrlist=["memberOf"])[0][1]
