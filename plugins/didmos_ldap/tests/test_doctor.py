"""didmos_ldap's doctor helpers: reading cn=config's overlays and indexes, and judging them."""

import pytest

from didmos_host.host import Host
from didmos_ldap.doctor import OVERLAYS, DirectoryConfig, _check_overlays, _indexes, read_config


@pytest.fixture(scope="module")
def config(didmos_own_overrides):
    # a slapd of this module's own: other tests add indexes to the shared one
    return read_config(Host.create(didmos_own_overrides))


def test_read_config_finds_the_suffix_database_its_overlays_and_indexes(config):
    assert config.suffix_db.endswith(",cn=config") and "mdb" in config.suffix_db
    assert set(OVERLAYS) <= set(config.overlays)
    assert config.unindexed(["uid", "didmosUUID", "objectClass", "entryUUID"]) == []
    assert config.unindexed(["carLicense", "roomNumber"]) == ["carLicense", "roomNumber"]


def test_attribute_names_and_their_aliases_are_one_attribute(config):
    # mail, sn, cn and l are indexed under these names; their aliases are the same attributes
    assert config.unindexed(["rfc822Mailbox", "surname", "commonName", "localityName", "MAIL"]) == []


def test_index_lines_with_several_attributes_and_the_default_types():
    indexes = _indexes([b"default pres,eq", b"uid,cn eq,sub", b"didmosUUID", b"entryCSN,entryUUID   eq",
                        b"member approx"], str.lower)
    assert indexes == {"uid": {"eq", "sub"}, "cn": {"eq", "sub"}, "didmosuuid": {"pres", "eq"},
                       "entrycsn": {"eq"}, "entryuuid": {"eq"}, "member": {"approx"}}
    config = DirectoryConfig("olcDatabase={1}mdb,cn=config", {}, indexes)
    assert config.unindexed(["uid", "didmosUUID", "member", "title"]) == ["title"]


def test_missing_overlays_and_clear_text_passwords_are_problems(config):
    overlays = {name: attrs for name, attrs in config.overlays.items() if name not in ("sssvlv", "deref")}
    overlays["ppolicy"] = {**overlays["ppolicy"], "olcPPolicyHashCleartext": [b"FALSE"]}
    findings = {f.check: f for f in _check_overlays(DirectoryConfig(config.suffix_db, overlays, {}))}
    assert findings["directory.overlays"].status == "problem"
    assert "sssvlv (sorted, windowed SCIM lists), deref" in findings["directory.overlays"].message
    assert "Preparing a stock Debian 12 slapd" in findings["directory.overlays"].fix
    assert findings["directory.ppolicy"].status == "problem"
    assert "clear text" in findings["directory.ppolicy"].message


def test_dynlist_stands_in_for_memberof(config):
    overlays = {name: attrs for name, attrs in config.overlays.items() if name != "memberof"}
    overlays["dynlist"] = {}
    findings = _check_overlays(DirectoryConfig(config.suffix_db, overlays, {}))
    assert [(f.check, f.status) for f in findings] == [("directory.overlays", "ok")]
