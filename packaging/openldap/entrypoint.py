#!/opt/didmos/venv/bin/python
"""Entrypoint of the didmos-openldap image (packaging/Dockerfile, target ``openldap``): slapd with the
configuration didmos's dev stack and tests use.

On the first start it builds cn=config in ``$DIDMOS_LDAP_DATA/slapd.d`` with
:class:`didmos_host.servers.SlapdServer`: the modules, overlays, indexes and ACLs of
docs/architecture.md, with manage rights on cn=config and on the data for SASL EXTERNAL over the ldapi
socket as the user running slapd. In the image that user is ``didmos`` (uid 10001), the user of the
didmos image too, so the one-shot ``didmos directory init`` container, which shares the socket's
volume, may apply the schema migrations and create the tree. Later starts keep the built config and
the data. slapd then runs in the foreground (the container's main process) on ``ldap://:$DIDMOS_LDAP_PORT``
and on the socket ``$DIDMOS_LDAP_SOCKET_DIR/ldapi``.

Environment (all optional): ``DIDMOS_LDAP_DATA`` (``/var/lib/didmos-ldap``), ``DIDMOS_LDAP_SOCKET_DIR``
(``/run/slapd``), ``DIDMOS_LDAP_PORT`` (``1389``: slapd does not run as root, so no port below 1024),
``DIDMOS_DIRECTORY__SUFFIX`` and ``DIDMOS_DIRECTORY__BIND_DN`` (as in didmos's settings: the suffix and
the service account that gets manage rights), ``DIDMOS_SLAPD_LOGLEVEL`` (``slapd -d`` level, default
none), ``SLAPD_ROOTPW`` (password of ``cn=admin,<suffix>``; default: random, unused by didmos).
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.parse
from pathlib import Path

from didmos_host.servers import SlapdServer, find_program


def main() -> None:
    data = Path(os.environ.get("DIDMOS_LDAP_DATA", "/var/lib/didmos-ldap"))
    socket = Path(os.environ.get("DIDMOS_LDAP_SOCKET_DIR", "/run/slapd")) / "ldapi"
    port = int(os.environ.get("DIDMOS_LDAP_PORT", "1389"))
    suffix = os.environ.get("DIDMOS_DIRECTORY__SUFFIX", "dc=de")
    server = SlapdServer(
        data, port=port, rootpw=os.environ.get("SLAPD_ROOTPW") or secrets.token_urlsafe(24), suffix=suffix,
        rootdn=f"cn=admin,{suffix}",
        service_dn=os.environ.get("DIDMOS_DIRECTORY__BIND_DN", f"cn=didmos-service,ou=system,dc=didmos,{suffix}"))
    if server.ensure_config():
        print(f"didmos-openldap: built cn=config in {data / 'slapd.d'} for suffix {suffix}", flush=True)
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)  # left by a container that was killed
    slapd = find_program("slapd", "slapd")
    listeners = f"ldap://:{port}/ ldapi://{urllib.parse.quote(str(socket), safe='')}"
    print(f"didmos-openldap: slapd on {listeners}", flush=True)
    sys.stdout.flush()
    os.execv(slapd, [slapd, "-d", os.environ.get("DIDMOS_SLAPD_LOGLEVEL") or "none", "-h", listeners,
                     "-F", str(data / "slapd.d")])


if __name__ == "__main__":
    main()
