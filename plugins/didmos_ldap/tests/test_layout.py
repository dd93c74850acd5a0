"""Placement of new entries: bases per type, caller-given parents, DN escaping."""

import ldap.dn
import pytest
from hypothesis import given
from hypothesis import strategies as st

from didmos_host.host import Host
from didmos_ldap.layout import InvalidPlacement, Layout, is_within

DATA = "ou=data,ou=default-tenant,dc=didmos,dc=de"


@pytest.fixture(scope="module")
def layout():
    return Layout.from_settings(Host.create().settings)


def test_default_bases_follow_the_seeds(layout):
    assert layout.base_for("people") == f"ou=people,{DATA}"
    assert layout.parent_for("groups") == f"ou=groups,{DATA}"
    assert layout.parent_for("people", "") == f"ou=people,{DATA}"


def test_caller_given_parent_inside_the_data_subtree(layout):
    assert layout.parent_for("people", DATA) == DATA  # the seeds' example
    assert layout.parent_for("people", f"OU=Staff, {DATA.upper()}") == f"OU=Staff,{DATA.upper()}"


@pytest.mark.parametrize("node_dn", [
    "ou=default-tenant,dc=didmos,dc=de",  # above the data subtree
    "ou=system,dc=didmos,dc=de",  # where the service account lives
    "cn=config",
    "ou=data,ou=other-tenant,dc=didmos,dc=de",
    "ou=data,ou=default-tenant,dc=didmos,dc=de,dc=evil",
])
def test_parents_outside_the_data_subtree_are_refused(layout, node_dn):
    with pytest.raises(InvalidPlacement, match="only be created below"):
        layout.parent_for("people", node_dn)


@pytest.mark.parametrize("node_dn", ["not a dn", "ou=x,,dc=de", "=x"])
def test_malformed_parents_are_refused(layout, node_dn):
    with pytest.raises(InvalidPlacement, match="not a valid DN"):
        layout.parent_for("people", node_dn)


def test_unknown_kind(layout):
    with pytest.raises(Exception, match="no base DN configured for 'robots'"):
        layout.base_for("robots")


@given(st.text(min_size=1, max_size=40).filter(lambda v: "\x00" not in v))
def test_child_dn_escapes_any_value_into_exactly_one_rdn(value):
    layout = Layout(tenant="t", tenant_dn="ou=t", data_dn="ou=data,ou=t", bases={"people": "ou=people,ou=data,ou=t"})
    dn = layout.child_dn("cn", value, "ou=people,ou=data,ou=t")
    rdns = ldap.dn.str2dn(dn)
    assert rdns[0] == [("cn", value, rdns[0][0][2])] and len(rdns) == 4
    assert is_within(dn, "ou=data,ou=t")
