"""Entries to SCIM resources and SCIM bodies to LDAP values."""

import pytest

from didmos_ldap.directory import Entry
from didmos_scim.convert import InvalidValue, generalized_to_rfc3339, rfc3339_to_generalized, to_ldap, to_scim
from didmos_scim.mapping import DEFAULT_MAPPINGS, ENTERPRISE, LUI, USER

USERS, GROUPS = DEFAULT_MAPPINGS["User"], DEFAULT_MAPPINGS["Group"]
PEOPLE = "ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"
BASE = "https://idm.example.org/scim/v2"


def entry(dn, **attrs):
    return Entry(dn, {name: [v.encode() for v in (values if isinstance(values, list) else [values])]
                      for name, values in attrs.items()})


def test_a_user_entry_becomes_a_scim_resource():
    ann = entry(f"didmosUUID=a1,{PEOPLE}", didmosUUID="a1", uid="ann", cn="Ann Smith", sn="Smith", givenName="Ann",
                displayName="Ann Smith", mail=["ann@example.org", "a@example.org"], mobile="+49 1", telephoneNumber="+49 2",
                didmosActive="TRUE", employeeNumber="7", manager=f"didmosUUID=b2,{PEOPLE}",
                memberOf="cn=staff,ou=groups", createTimestamp="20190731093903Z", modifyTimestamp="20190801082749Z",
                entryCSN="20190801082749.123456Z#000000#000#000000", userPassword="{SSHA}secret")
    references = {f"didmosuuid=b2,{PEOPLE}".lower(): ("b2", "Bob", "User"), "cn=staff,ou=groups": ("g1", "Staff", "Group")}
    resource = to_scim(ann, USERS, resource_type="User", base_url=BASE, references=references)
    assert resource["schemas"] == [USER, ENTERPRISE]
    assert resource["id"] == "a1" and resource["userName"] == "ann" and resource["active"] is True
    assert resource["name"] == {"formatted": "Ann Smith", "familyName": "Smith", "givenName": "Ann"}
    assert resource["emails"] == [{"value": "ann@example.org", "type": "work", "primary": True},
                                  {"value": "a@example.org", "type": "work"}]
    assert resource["phoneNumbers"] == [{"value": "+49 2", "type": "work", "primary": True}, {"value": "+49 1", "type": "mobile"}]
    assert resource["groups"] == [{"value": "g1", "display": "Staff", "$ref": f"{BASE}/Groups/g1", "type": "Group"}]
    assert resource[ENTERPRISE] == {"employeeNumber": "7", "manager": {"value": "b2", "$ref": f"{BASE}/Users/b2", "displayName": "Bob"}}
    assert "password" not in resource and LUI not in resource
    assert resource["meta"] == {"resourceType": "User", "created": "2019-07-31T09:39:03Z",
                                "lastModified": "2019-08-01T08:27:49Z", "location": f"{BASE}/Users/a1",
                                "version": 'W/"20190801082749.123456Z#000000#000#000000"'}


def test_a_scim_body_becomes_ldap_values():
    body = {"schemas": [USER], "userName": "ann", "name": {"givenName": "Ann", "familyName": "Smith"},
            "emails": [{"value": "ann@example.org", "type": "work", "primary": True}],
            "phoneNumbers": [{"value": "+49 1", "type": "mobile"}, {"value": "+49 2"}],
            "active": "False", "password": "s3cret", "groups": [{"value": "ignored: read-only"}],
            ENTERPRISE: {"employeeNumber": "7", "manager": {"value": "b2"}}, "id": "ignored", "meta": {}}
    values = to_ldap(body, USERS, strict=True, resolve_reference=lambda ref_id, where: f"didmosUUID={ref_id},{PEOPLE}")
    assert values == {"uid": ["ann"], "givenName": ["Ann"], "sn": ["Smith"], "mail": ["ann@example.org"],
                      "mobile": ["+49 1"], "telephoneNumber": ["+49 2"], "didmosActive": ["FALSE"],
                      "userPassword": ["s3cret"], "employeeNumber": ["7"], "manager": [f"didmosUUID=b2,{PEOPLE}"]}


@pytest.mark.parametrize("body, message", [
    ({"active": "maybe"}, "active must be a boolean"),
    ({"userName": ["a", "b"]}, "userName takes one value"),
    ({"userName": 7}, "userName must be a string"),
    ({"userName": ""}, "must not be empty"),
    ({"emails": [{"type": "work"}]}, r"emails\[0\] must be an object with a 'value'"),
    ({"phoneNumbers": [{"value": "1", "type": "satellite"}]}, "not supported; use one of work, mobile"),
    ({"name": {"nickname": "x"}}, "name has no sub-attribute 'nickname'"),
    ({"shoeSize": 44}, "unknown attribute 'shoeSize'"),
    ({ENTERPRISE: "x"}, "must be an object"),
    ({ENTERPRISE: {"manager": {"value": "b2"}}}, "references cannot be resolved"),
])
def test_bad_bodies_are_refused_with_the_attribute_named(body, message):
    with pytest.raises(InvalidValue, match=message):
        to_ldap(body, USERS, strict=True)


def test_unknown_attributes_are_ignored_when_not_strict():
    assert to_ldap({"userName": "ann", "shoeSize": 44}, USERS, strict=False) == {"uid": ["ann"]}


def test_group_members_are_references():
    values = to_ldap({"displayName": "Staff", "members": [{"value": "a1"}, {"value": "g2", "type": "Group"}]}, GROUPS,
                     strict=True, resolve_reference=lambda ref_id, where: f"didmosUUID={ref_id},{PEOPLE}")
    assert values == {"cn": ["Staff"], "member": [f"didmosUUID=a1,{PEOPLE}", f"didmosUUID=g2,{PEOPLE}"]}


def test_times():
    assert generalized_to_rfc3339("20190731093903Z") == "2019-07-31T09:39:03Z"
    assert rfc3339_to_generalized("2019-07-31T11:39:03+02:00") == "20190731093903Z"
    with pytest.raises(InvalidValue, match="RFC 3339"):
        rfc3339_to_generalized("yesterday")
