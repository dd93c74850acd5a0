"""The SCIM attribute model and the default mappings."""

import pytest

from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, USER, Attribute, UnknownAttribute

USERS = DEFAULT_MAPPINGS["User"]


def test_paths_resolve_case_insensitively_with_and_without_schema_urn():
    assert USERS.resolve("userName").leaf.ldap == "uid"
    assert USERS.resolve("NAME.givenname").leaf.ldap == "givenName"
    assert USERS.resolve(f"{USER}:name.familyName").leaf.ldap == "sn"
    path = USERS.resolve(f"{ENTERPRISE}:manager.value")
    assert path.schema.id == ENTERPRISE and path.attribute.name == "manager" and path.sub.name == "value"
    assert USERS.resolve("employeeNumber").schema.id == ENTERPRISE  # extensions are searched too


def test_unknown_paths_are_named():
    with pytest.raises(UnknownAttribute, match="unknown attribute 'shoeSize'"):
        USERS.resolve("shoeSize")
    with pytest.raises(UnknownAttribute, match="name has no sub-attribute 'nickname'"):
        USERS.resolve("name.nickname")


def test_typed_multi_valued_attributes_map_each_type_to_an_ldap_attribute():
    phones = USERS.resolve("phoneNumbers").attribute
    assert phones.ldap_for_type("mobile") == "mobile" and phones.ldap_for_type(None) == "telephoneNumber"
    assert phones.type_of("homePhone") == "home" and phones.ldap_for_type("satellite") is None
    assert {"mail", "telephoneNumber", "mobile", "uid", "cn", "manager"} <= set(USERS.ldap_attributes())


def test_a_customer_can_add_an_attribute():
    extended = USERS.with_attribute(USER, Attribute("shoeSize", "integer", "didmosShoeSize"))
    assert extended.resolve("shoeSize").leaf.ldap == "didmosShoeSize"
    with pytest.raises(ValueError, match="type 'colour'"):
        Attribute("x", "colour")
