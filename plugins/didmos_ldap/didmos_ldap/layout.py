"""Where entries live: the tree of the seeds, base DNs per object type, and caller-given parents.

The default tree (settings ``ldap.*``)::

    dc=de
      dc=didmos                          ldap.base_dn
        ou=default-tenant                ldap.tenant_dn
          ou=data                        ldap.data_dn
            ou=people                    ldap.people_dn        (User)
            ou=groups                    ldap.groups_dn        (Groups)
            ou=organizations             ldap.organizations_dn (Organization)

A caller may create an entry under another parent (the seeds' ``POST /User/{node_dn}/``). Such a
parent must be a valid DN inside the tenant's data subtree; anything else (another tenant, the
system accounts, cn=config) is refused before the directory is asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ldap.dn

from didmos_host.errors import DidmosError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Settings key of the default parent for each kind of object.
BASE_KEYS = {"people": "people_dn", "groups": "groups_dn", "organizations": "organizations_dn"}


class InvalidPlacement(DidmosError):
    """A parent DN that is malformed or outside the subtree new entries may go to."""

    status = 400


def _rdns(dn: str) -> list:
    return [[(attr.lower(), value.lower(), flags) for attr, value, flags in rdn] for rdn in ldap.dn.str2dn(dn)]


def is_within(dn: str, ancestor: str) -> bool:
    """True when ``dn`` is ``ancestor`` or below it (compared attribute-type and value case-insensitively)."""
    inner, outer = _rdns(dn), _rdns(ancestor)
    return len(inner) >= len(outer) and inner[len(inner) - len(outer):] == outer


@dataclass(frozen=True)
class Layout:
    """The configured tree of one tenant."""

    tenant: str
    tenant_dn: str
    data_dn: str
    bases: dict[str, str]

    @classmethod
    def from_settings(cls, settings) -> Layout:
        cfg = settings.ldap
        return cls(tenant=cfg.tenant, tenant_dn=cfg.tenant_dn, data_dn=cfg.data_dn,
                   bases={kind: cfg[key] for kind, key in BASE_KEYS.items()})

    def base_for(self, kind: str) -> str:
        """The default parent of new entries of ``kind`` (``people``, ``groups``, ``organizations``)."""
        try:
            return self.bases[kind]
        except KeyError:
            raise DidmosError(f"no base DN configured for {kind!r}; known: {', '.join(sorted(self.bases))}") from None

    def parent_for(self, kind: str, node_dn: str | None = None) -> str:
        """The parent for a new entry: ``node_dn`` when given and allowed, else the base of ``kind``."""
        if node_dn is None or not node_dn.strip():
            return self.base_for(kind)
        if not ldap.dn.is_dn(node_dn):
            raise InvalidPlacement(f"{node_dn!r} is not a valid DN (RFC 4514), e.g. 'ou=people,{self.data_dn}'")
        if not is_within(node_dn, self.data_dn):
            raise InvalidPlacement(f"entries can only be created below {self.data_dn}, not below {node_dn}")
        return ldap.dn.dn2str(ldap.dn.str2dn(node_dn))

    def child_dn(self, rdn_attr: str, rdn_value: str, parent: str) -> str:
        """The DN of a new entry, its RDN value escaped so that it stays exactly one value.

        python-ldap's ``escape_dn_chars`` covers RFC 4514's special characters; control characters,
        which libldap would otherwise trim as white space, are added as ``\\XX`` hex escapes.
        """
        escaped = _CONTROL.sub(lambda m: "".join(f"\\{b:02X}" for b in m.group().encode()),
                               ldap.dn.escape_dn_chars(rdn_value))
        return f"{rdn_attr}={escaped},{parent}"
