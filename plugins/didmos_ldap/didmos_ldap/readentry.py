"""The Post-Read control (RFC 4527) with a small BER codec of its own instead of pyasn1's.

python-ldap encodes the request and decodes the returned entry with pyasn1, which took about 2 ms of
CPU per write that reads back (``Directory.add/modify/move(read_back=...)``: every SCIM create, PUT
and PATCH) - more than the rest of a SCIM create's own work. The control's values are simple BER
(RFC 4511: an AttributeSelection, a SearchResultEntry), so a few lines do it exactly, about 50 times
faster. Registering :class:`PostReadControl` for the control's OID makes python-ldap decode every
Post-Read response with it.
"""

from __future__ import annotations

from ldap.controls import KNOWN_RESPONSE_CONTROLS
from ldap.controls.readentry import PostReadControl as _PyAsn1PostReadControl

_SEQUENCE, _SET, _OCTET_STRING, _SEARCH_RESULT_ENTRY = 0x30, 0x31, 0x04, 0x64


def _header(data: bytes, i: int, tag: int) -> tuple[int, int]:
    """The length of the element with ``tag`` at ``i`` and where its contents start."""
    if i >= len(data) or data[i] != tag:
        found = f"{data[i]:#04x}" if i < len(data) else "the end"
        raise ValueError(f"Post-Read control: expected BER tag {tag:#04x} at offset {i}, found {found}")
    first = data[i + 1]
    if first < 0x80:
        return first, i + 2
    size = first & 0x7F
    if size == 0 or size > 4:
        raise ValueError(f"Post-Read control: unsupported BER length form {first:#04x} at offset {i + 1}")
    return int.from_bytes(data[i + 2:i + 2 + size], "big"), i + 2 + size


def decode_entry(data: bytes) -> tuple[str, dict[str, list[bytes]]]:
    """A BER SearchResultEntry (RFC 4511 4.5.2) as (DN, {attribute: [values]})."""
    length, i = _header(data, 0, _SEARCH_RESULT_ENTRY)
    if i + length > len(data):
        raise ValueError("Post-Read control: the entry is cut short")
    n, i = _header(data, i, _OCTET_STRING)
    dn = data[i:i + n].decode("utf-8")
    i += n
    n, i = _header(data, i, _SEQUENCE)
    end = i + n
    attrs: dict[str, list[bytes]] = {}
    while i < end:
        _, i = _header(data, i, _SEQUENCE)
        n, i = _header(data, i, _OCTET_STRING)
        name = data[i:i + n].decode("utf-8")
        i += n
        n, i = _header(data, i, _SET)
        values_end = i + n
        values = []
        while i < values_end:
            n, i = _header(data, i, _OCTET_STRING)
            values.append(bytes(data[i:i + n]))
            i += n
        attrs[name] = values
    return dn, attrs


def _element(tag: int, contents: bytes) -> bytes:
    n = len(contents)
    if n < 0x80:
        return bytes((tag, n)) + contents
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + contents


def encode_selection(attributes) -> bytes:
    """A BER AttributeSelection (a SEQUENCE OF LDAPString) of ``attributes``."""
    return _element(_SEQUENCE, b"".join(_element(_OCTET_STRING, a.encode("utf-8")) for a in attributes or ()))


class PostReadControl(_PyAsn1PostReadControl):
    """python-ldap's Post-Read control, encoded and decoded without pyasn1 (same attributes:
    ``attrList`` in the request, ``dn`` and ``entry`` in the response)."""

    def encodeControlValue(self) -> bytes:
        return encode_selection(self.attrList)

    def decodeControlValue(self, encodedControlValue: bytes) -> None:
        self.dn, self.entry = decode_entry(encodedControlValue)


KNOWN_RESPONSE_CONTROLS[PostReadControl.controlType] = PostReadControl
