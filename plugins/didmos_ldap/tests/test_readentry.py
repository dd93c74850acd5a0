"""The Post-Read control's own BER codec agrees with python-ldap's pyasn1 one, and with slapd."""

from __future__ import annotations

import uuid

import ldap
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ldap.controls.readentry import PostReadControl as PyAsn1PostReadControl
from pyasn1.codec.ber import encoder
from pyasn1_modules.rfc2251 import SearchResultEntry

from didmos_ldap.readentry import PostReadControl, decode_entry, encode_selection

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-;", min_size=1, max_size=40)
values = st.lists(st.binary(max_size=300), min_size=1, max_size=5)


def pyasn1_entry(dn: str, attrs: dict[str, list[bytes]]) -> bytes:
    """What slapd sends, as pyasn1 writes it."""
    entry = SearchResultEntry()
    entry.setComponentByPosition(0, dn.encode())
    attributes = entry.setComponentByPosition(1).getComponentByPosition(1)
    for position, (name, vals) in enumerate(attrs.items()):
        attribute = attributes.setComponentByPosition(position).getComponentByPosition(position)
        attribute.setComponentByPosition(0, name)
        bag = attribute.setComponentByPosition(1).getComponentByPosition(1)
        for k, value in enumerate(vals):
            bag.setComponentByPosition(k, value)
    return encoder.encode(entry)


@settings(max_examples=200, deadline=None)
@given(dn=st.text(max_size=300), attrs=st.dictionaries(names, values, max_size=12))
def test_decoding_agrees_with_pyasn1(dn, attrs):
    encoded = pyasn1_entry(dn, attrs)
    reference = PyAsn1PostReadControl()
    reference.decodeControlValue(encoded)
    assert decode_entry(encoded) == (dn, attrs)
    assert reference.entry == attrs
    if dn.isascii():  # pyasn1's str() of a DN is not UTF-8 ('\x80' comes back as 'Â\x80'); ours is
        assert reference.dn == dn


@settings(max_examples=200, deadline=None)
@given(st.lists(names, max_size=30))
def test_encoding_agrees_with_pyasn1(attributes):
    assert encode_selection(attributes) == PyAsn1PostReadControl(attrList=attributes).encodeControlValue()


def test_a_long_entry_uses_the_long_length_form():
    attrs = {"member": [f"didmosUUID={uuid.uuid4()},ou=people".encode() for _ in range(3000)]}
    assert decode_entry(pyasn1_entry("cn=big", attrs)) == ("cn=big", attrs)


@pytest.mark.parametrize("data", [b"", b"\x30\x00", b"\x64\x05\x04\x01a", b"\x64\x85\x00\x00\x00\x00\x00"])
def test_garbage_is_a_value_error(data):
    with pytest.raises((ValueError, IndexError)):
        decode_entry(data)


def test_slapd_answers_are_decoded_by_it(didmos_slapd):
    conn = didmos_slapd.admin_connection()
    dn = f"cn=readentry-{uuid.uuid4().hex[:8]},ou=system,dc=didmos,dc=de"
    request = PostReadControl(criticality=True, attrList=["cn", "description", "entryUUID"])
    _, _, _, controls = conn.add_ext_s(dn, [("objectClass", [b"applicationProcess"]), ("cn", [dn[3:21].encode()]),
                                            ("description", ["é€".encode(), b"two"])], serverctrls=[request])
    conn.delete_s(dn)
    [control] = controls
    assert type(control) is PostReadControl
    assert control.dn == dn and control.entry["description"] == ["é€".encode(), b"two"]
    assert set(control.entry) == {"cn", "description", "entryUUID"}
    assert ldap.CONTROL_POST_READ == control.controlType
