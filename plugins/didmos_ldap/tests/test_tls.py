"""The directory service over TLS against a real slapd: StartTLS on ldap://, ldaps://, and the
certificate checks that must refuse a server (unknown CA, certificate for another host).

Certificates come from a throwaway CA made with the openssl CLI in a temporary folder. "Encrypted" is
proved on the pooled connection itself: libldap reports the negotiated TLS version and cipher and the
peer certificate, which must be the one slapd was given; a plain ldap:// connection reports none.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ldap
import pytest

from didmos_host.directory import init_directory
from didmos_host.errors import Unavailable
from didmos_host.host import Host
from didmos_host.servers import SlapdServer, find_program, free_port

pytestmark = pytest.mark.slow

# Short, so a refused certificate answers quickly: reads retry Unavailable up to retry_seconds.
FAST = {"retry_seconds": 0.2, "connect_timeout": 1.0, "timeout": 2.0}
# Both ways to get TLS: (attribute of SlapdServer holding the URI, ldap.starttls).
TRANSPORTS = {"starttls": ("uri", True), "ldaps": ("ldaps_uri", False)}


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run([find_program("openssl", "openssl"), *args], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA certificate and its key, as PEM files named ``name``.pem / .key."""
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=didmos test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return folder / f"{name}.pem", folder / f"{name}.key"


def _server_cert(folder: Path, name: str, ca: tuple[Path, Path], alt_names: str) -> tuple[Path, Path]:
    """A server certificate signed by ``ca`` for ``alt_names`` (subjectAltName syntax), and its key."""
    ca_cert, ca_key = ca
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
             "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-addext", "basicConstraints=critical,CA:FALSE", "-addext", f"subjectAltName={alt_names}",
             "-addext", "keyUsage=critical,digitalSignature", "-addext", "extendedKeyUsage=serverAuth")
    return folder / f"{name}.pem", folder / f"{name}.key"


def _der(folder: Path, cert: Path) -> bytes:
    _openssl(folder, "x509", "-in", str(cert), "-outform", "DER", "-out", f"{cert.stem}.der")
    return (folder / f"{cert.stem}.der").read_bytes()


@dataclass
class Pki:
    folder: Path
    ca: Path            # issued both server certificates
    other_ca: Path      # unrelated: trusts neither
    server: tuple[Path, Path]      # for IP:127.0.0.1 and DNS:localhost
    elsewhere: tuple[Path, Path]   # for DNS:other.example only


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "ca")
    other_ca, _ = _ca(folder, "other-ca")
    return Pki(folder, ca[0], other_ca,
               server=_server_cert(folder, "server", ca, "IP:127.0.0.1,DNS:localhost"),
               elsewhere=_server_cert(folder, "elsewhere", ca, "DNS:other.example"))


@dataclass
class DirectoryAccess:
    server: SlapdServer
    bind_dn: str | None
    bind_password: str


def _start(folder: Path, cert: tuple[Path, Path]) -> SlapdServer:
    server = SlapdServer(folder, port=free_port(), rootpw=secrets.token_urlsafe(12), password_hash="{SSHA}",
                         nosync=True, tls_cert=cert[0], tls_key=cert[1], ldaps_port=free_port())
    server.start()
    return server


@pytest.fixture(scope="module")
def tls_directory(pki, tmp_path_factory):
    """slapd with the 127.0.0.1 certificate, initialised over ldapi like a real installation."""
    server = _start(tmp_path_factory.mktemp("slapd"), pki.server)
    try:
        password = secrets.token_urlsafe(12)
        init_directory(Host.create({"directory": {"uri": server.uri, "config_uri": server.ldapi_uri,
                                                  "bind_password": password, "superadmin_password": "pw"}}))
        yield DirectoryAccess(server, None, password)  # bind_dn None: the default service account
    finally:
        server.stop()


@pytest.fixture(scope="module")
def elsewhere_directory(pki, tmp_path_factory):
    """slapd whose certificate (from the right CA) names other.example; didmos binds as its rootdn."""
    server = _start(tmp_path_factory.mktemp("slapd-elsewhere"), pki.elsewhere)
    try:
        conn = server.admin_connection()
        conn.add_s("dc=de", [("objectClass", [b"dcObject", b"organization"]), ("dc", [b"de"]), ("o", [b"de"])])
        conn.unbind_s()
        yield DirectoryAccess(server, server.rootdn, server.rootpw)
    finally:
        server.stop()


@pytest.fixture
def connect():
    """``connect(directory, uri, **ldap_settings)``: the directory service of a fresh Host (own pools)."""
    opened = []

    def connect(target: DirectoryAccess, uri: str, **ldap_settings):
        directory = {"uri": uri, "bind_password": target.bind_password}
        if target.bind_dn:
            directory["bind_dn"] = target.bind_dn
        service = Host.create({"directory": directory, "ldap": {**FAST, **ldap_settings}}).service("directory")
        opened.append(service)
        return service

    yield connect
    for service in opened:
        service.close()


def _tls_of(directory) -> tuple[str | None, str | None, bytes | None]:
    """TLS version, cipher and peer certificate (DER) of a pooled connection of ``directory``."""
    with directory.pool.connection() as conn:
        return (conn.get_option(ldap.OPT_X_TLS_VERSION), conn.get_option(ldap.OPT_X_TLS_CIPHER),
                conn.get_option(ldap.OPT_X_TLS_PEERCERT))


def _refused(directory, uri: str) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable, match=re.escape(uri)):
        directory.get("dc=de")
    assert time.monotonic() - started < 3  # a retried refusal, not a hang


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reads_go_over_tls_with_the_servers_certificate(transport, tls_directory, pki, connect):
    attr, starttls = TRANSPORTS[transport]
    uri = getattr(tls_directory.server, attr)
    directory = connect(tls_directory, uri, starttls=starttls, tls_ca_file=str(pki.ca), tls_require_cert="demand")

    assert directory.get("dc=de").dn == "dc=de"
    version, cipher, peer = _tls_of(directory)
    assert version is not None and version.startswith("TLS1."), version
    assert cipher
    assert peer == _der(pki.folder, pki.server[0])  # slapd's certificate, not something in between


def test_without_starttls_the_same_listener_is_plain(tls_directory, pki, connect):
    # The control for the test above: libldap reports no TLS for an unencrypted connection.
    directory = connect(tls_directory, tls_directory.server.uri, starttls=False, tls_ca_file=str(pki.ca))
    assert directory.get("dc=de").dn == "dc=de"
    assert _tls_of(directory) == (None, None, None)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("require", ["demand", "try"])
def test_a_certificate_from_an_unknown_ca_is_refused(transport, require, tls_directory, pki, connect):
    attr, starttls = TRANSPORTS[transport]
    uri = getattr(tls_directory.server, attr)
    directory = connect(tls_directory, uri, starttls=starttls, tls_ca_file=str(pki.other_ca),
                        tls_require_cert=require)
    _refused(directory, uri)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("require", ["never", "allow"])
def test_never_and_allow_encrypt_without_checking_the_certificate(transport, require, tls_directory, pki, connect):
    # What these settings mean: still TLS, but any certificate is taken, so a man in the middle is not noticed.
    attr, starttls = TRANSPORTS[transport]
    directory = connect(tls_directory, getattr(tls_directory.server, attr), starttls=starttls,
                        tls_ca_file=str(pki.other_ca), tls_require_cert=require)
    assert directory.get("dc=de").dn == "dc=de"
    assert _tls_of(directory)[0] is not None


def test_tls_settings_stay_with_their_own_directory(tls_directory, pki, connect):
    # python-ldap TLS options are process-global unless set per connection (and a new TLS context made):
    # trusting the CA in one Host must not make another Host trust it, in either order, and neither may
    # change the defaults every other ldap.initialize() in this process starts from.
    defaults = ldap.get_option(ldap.OPT_X_TLS_CACERTFILE), ldap.get_option(ldap.OPT_X_TLS_REQUIRE_CERT)
    uri = tls_directory.server.uri
    trusting = connect(tls_directory, uri, starttls=True, tls_ca_file=str(pki.ca))
    distrusting = connect(tls_directory, uri, starttls=True, tls_ca_file=str(pki.other_ca))

    assert trusting.get("dc=de") is not None
    _refused(distrusting, uri)
    trusting.pool.drop_idle()  # the next read opens a new connection after the refused one
    assert trusting.get("dc=de") is not None
    _refused(distrusting, uri)
    assert (ldap.get_option(ldap.OPT_X_TLS_CACERTFILE), ldap.get_option(ldap.OPT_X_TLS_REQUIRE_CERT)) == defaults


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_certificate_for_another_host_is_refused(transport, elsewhere_directory, pki, connect):
    attr, starttls = TRANSPORTS[transport]
    uri = getattr(elsewhere_directory.server, attr)
    # The chain is fine (same CA as the accepted certificate), so only the name can be at fault ...
    _openssl(pki.folder, "verify", "-CAfile", str(pki.ca), str(pki.elsewhere[0]))
    _refused(connect(elsewhere_directory, uri, starttls=starttls, tls_ca_file=str(pki.ca)), uri)
    # ... and without the check the same server answers.
    unchecked = connect(elsewhere_directory, uri, starttls=starttls, tls_ca_file=str(pki.ca), tls_require_cert="never")
    assert unchecked.get("dc=de").dn == "dc=de"
