"""Private OpenLDAP slapd and redis-server instances for development and tests.

Each server listens on 127.0.0.1 only, keeps everything in its own data directory and runs as a child
process of ours in the foreground: never daemonised, never a system service. The dev command and the
pytest harness start and stop them through this module.
"""

from __future__ import annotations

import atexit
import base64
import errno
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ldap
import ldif
import redis

from didmos_host.errors import DidmosError

__all__ = ["ServerError", "SlapdServer", "RedisServer", "free_port", "find_program"]

MODULE_PATH = Path("/usr/lib/ldap")
SCHEMA_DIR = Path("/etc/ldap/schema")
SCHEMAS = ("core", "cosine", "nis", "inetorgperson")
MODULES = ("back_mdb", "memberof", "refint", "unique", "ppolicy", "syncprov", "accesslog", "sssvlv", "deref")
# Longest path a unix socket can have on Linux (sun_path is 108 bytes with the terminating NUL).
_MAX_SOCKET_PATH = 107
# Processes still running when the interpreter exits (a harness that died before its teardown).
_RUNNING: set[subprocess.Popen] = set()


class ServerError(DidmosError, RuntimeError):
    """A private server could not be set up, started or reached; the message says what to do."""


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a child, SIGKILL it if it has not exited after ``timeout`` seconds; reap it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_program(name: str, apt_package: str) -> str:
    """Return the path of program ``name``, also looking in the sbin folders a non-root PATH lacks.

    Raises ServerError naming ``apt_package`` when the program is not installed.
    """
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(("/usr/sbin", "/sbin"))
    found = shutil.which(name, path=path)
    if found is None:
        raise ServerError(f"{name} not found: apt-get install {apt_package}")
    return found


def _ssha(password: str) -> str:
    """Hash like `slappasswd -h {SSHA}`: SHA-1 over password + salt, then digest + salt in base64."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _log_tail(path: Path, since: int = 0, lines: int = 20) -> str:
    """The last lines written to ``path`` after byte offset ``since`` (the log is appended to per run)."""
    try:
        with open(path, "rb") as log:
            log.seek(since)
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


def _check_port_free(port: int, what: str) -> None:
    # SO_REUSEADDR as the servers use it: a listener makes bind fail, leftover TIME_WAIT sockets of a
    # previous run on the same port do not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ServerError(f"cannot start {what}: port {port} on 127.0.0.1 is already in use; "
                              "stop whatever listens there or choose another port (free_port())") from None


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(_RUNNING):
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


class _ChildProcess:
    """Start, watch and stop one foreground server process whose output goes to a log file."""

    _proc: subprocess.Popen | None = None
    _what = "server"

    @property
    def pid(self) -> int | None:
        """Process id while the server runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _spawn(self, argv: list[str], log: Path, ready: Callable[[], bool], timeout: float) -> None:
        with open(log, "ab") as out:
            since = out.tell()
            # A session of its own: a Ctrl-C on the terminal reaches only our process, which then stops
            # the servers last, after the API and the worker that still talk to them.
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                          close_fds=True, start_new_session=True)
        _RUNNING.add(self._proc)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise ServerError(f"{self._what} exited with status {code} while starting; "
                                  f"last lines of {log}:\n{_log_tail(log, since)}")
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self._what} did not answer within {timeout:.0f}s; "
                                  f"last lines of {log}:\n{_log_tail(log, since)}")
            time.sleep(0.05)

    def _forget(self) -> None:
        _RUNNING.discard(self._proc)
        self._proc = None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down (SIGTERM), SIGKILL it after ``timeout`` seconds. Idempotent."""
        if self._proc is None:
            return
        stop_process(self._proc, timeout)
        self._forget()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and wait for it to be gone (fault tests). Idempotent."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._forget()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


@dataclass(eq=False)
class SlapdServer(_ChildProcess):
    """A private slapd: cn=config in ``data_dir/slapd.d``, the suffix and cn=accesslog in mdb beside it.

    Listens on ``ldap://127.0.0.1:port`` and on a unix socket in ``data_dir``. Over that socket, SASL
    EXTERNAL as the user running this process has manage rights on cn=config and on the suffix.

    TLS (optional): with ``tls_cert`` and ``tls_key`` (PEM files; slapd runs as our user, so it reads
    them with our rights) slapd offers StartTLS on ``ldap://``, and with ``ldaps_port`` it also listens
    on ``ldaps://127.0.0.1:ldaps_port``. The certificate and key are written into cn=config, so like all
    settings they take effect only when :meth:`ensure_config` builds ``slapd.d``; an existing config keeps
    what it was built with. The files are read at every start, so they may be replaced in place.
    """

    data_dir: Path
    port: int
    rootpw: str
    suffix: str = "dc=de"
    rootdn: str = "cn=admin,dc=de"
    service_dn: str = "cn=didmos-service,ou=system,dc=didmos,dc=de"
    password_hash: str = "{ARGON2}"
    nosync: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ldaps_port: int | None = None
    _what = "slapd"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServerError("slapd TLS needs both tls_cert and tls_key (PEM files), or neither")
        if self.ldaps_port is not None and self.tls_cert is None:
            raise ServerError("an ldaps_port needs a certificate: set tls_cert and tls_key too")
        # Absolute: slapd resolves relative paths in cn=config against its own working directory.
        if self.tls_cert is not None:
            self.tls_cert = Path(self.tls_cert).absolute()
            self.tls_key = Path(self.tls_key).absolute()

    @property
    def uri(self) -> str:
        """LDAP URI of the TCP listener."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        """LDAP URI of the TLS listener; ServerError when the server has no ``ldaps_port``."""
        if self.ldaps_port is None:
            raise ServerError("this slapd has no ldaps listener: create it with ldaps_port (and tls_cert, tls_key)")
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def socket_path(self) -> Path:
        """Path of the ldapi unix socket."""
        return self.data_dir / "ldapi"

    @property
    def ldapi_uri(self) -> str:
        """LDAP URI of the unix socket listener (the path percent-encoded as ldapi:// wants it)."""
        return "ldapi://" + urllib.parse.quote(str(self.socket_path), safe="")

    @property
    def log_path(self) -> Path:
        """Where slapd's stdout and stderr go."""
        return self.data_dir / "slapd.log"

    @property
    def peercred_dn(self) -> str:
        """The authz DN that SASL EXTERNAL over ldapi gives the user running this process."""
        return f"gidNumber={os.getgid()}+uidNumber={os.getuid()},cn=peercred,cn=external,cn=auth"

    def ensure_config(self) -> bool:
        """Build ``data_dir/slapd.d`` with slapadd unless it exists; return True when built now."""
        # slapd refuses to start when an olcDbDirectory is missing; recreate them in any case.
        for sub in ("data", "accesslog"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        conf_dir = self.data_dir / "slapd.d"
        if conf_dir.is_dir():
            return False
        slapadd = find_program("slapadd", "slapd")
        # Built aside and renamed, so a failed slapadd never leaves a half config that a later
        # start would take for a finished one.
        building = self.data_dir / "slapd.d.new"
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(mode=0o700)
        config_ldif = self.data_dir / "config.ldif"
        config_ldif.write_text(self._config_ldif())
        try:
            done = subprocess.run([slapadd, "-n0", "-F", str(building), "-l", str(config_ldif)],
                                  capture_output=True, text=True)
        finally:
            config_ldif.unlink()  # it holds the rootpw hash; slapcat -n0 shows the config anyway
        if done.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise ServerError(f"slapadd could not build cn=config in {conf_dir}:\n{done.stderr.strip()}")
        building.rename(conf_dir)
        return True

    def bulk_load(self, ldif: Path) -> None:
        """Add the entries of an LDIF file offline with ``slapadd -q`` (fast; for tests and benchmarks).

        slapd must be stopped (slapadd writes the database files directly); overlays do not run, so
        ``memberOf`` and the access log are not maintained for these entries.
        """
        if self.pid is not None:
            raise ServerError("stop slapd before bulk_load: slapadd must not write a database in use")
        self.ensure_config()
        done = subprocess.run([find_program("slapadd", "slapd"), "-q", "-F", str(self.data_dir / "slapd.d"),
                               "-b", self.suffix, "-l", str(ldif)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ServerError(f"slapadd could not load {ldif}:\n{done.stderr.strip()[-2000:]}")

    def start(self, timeout: float = 15.0) -> None:
        """Build the config if needed, start slapd and wait until its root DSE answers. No-op if running."""
        if self.pid is not None:
            return
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ServerError(f"data_dir {self.data_dir} is too long for a unix socket path "
                              f"(at most {_MAX_SOCKET_PATH - len('/ldapi')} bytes); use a shorter one")
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.ensure_config()
        _check_port_free(self.port, "slapd")
        listeners = [f"{self.uri}/", self.ldapi_uri]
        if self.ldaps_port is not None:
            _check_port_free(self.ldaps_port, "slapd")
            listeners.append(f"{self.ldaps_uri}/")
        # Any -d value keeps slapd in the foreground, so the Popen handle is slapd itself. "none" rather
        # than 0: level 0 also silences the startup errors that the log tail should show.
        argv = [find_program("slapd", "slapd"), "-d", _log_level(),
                "-h", " ".join(listeners), "-F", str(self.data_dir / "slapd.d")]
        self._spawn(argv, self.log_path, self._answers, timeout)

    def _answers(self) -> bool:
        conn = ldap.initialize(self.uri)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, 1.0)
        conn.set_option(ldap.OPT_TIMEOUT, 2.0)
        try:
            conn.search_s("", ldap.SCOPE_BASE, "(objectClass=*)", ["namingContexts"])
            return True
        except ldap.LDAPError:
            return False
        finally:
            conn.unbind_s()

    def config_connection(self) -> ldap.ldapobject.LDAPObject:
        """A connection over ldapi bound with SASL EXTERNAL: manage on cn=config and the suffix."""
        conn = ldap.initialize(self.ldapi_uri)
        conn.sasl_external_bind_s()
        return conn

    def admin_connection(self) -> ldap.ldapobject.LDAPObject:
        """A connection over ldap:// bound as rootdn with rootpw."""
        conn = ldap.initialize(self.uri)
        conn.simple_bind_s(self.rootdn, self.rootpw)
        return conn

    def enable_replication(self, server_id: int, peers: Sequence[tuple[int, str]], *, delta: bool = False) -> None:
        """Make this slapd one of several providers that replicate each other (multi-provider), live
        over ldapi.

        The consumers use plain syncrepl (whole entries), as the Admin Guide's N-Way Multi-Provider
        example does. ``delta=True`` makes them follow the peers' ``cn=accesslog`` instead
        (delta-syncrepl); on slapd 2.5.13 that lost writes here: a provider restarted after SIGKILL
        answered its peer's refresh with "unwilling to perform" while it caught up itself, and the peer
        never took the writes made on the restarted provider afterwards (docs/deployment.md).

        ``server_id`` is this server's ``olcServerID`` (1-4095, unique among the providers); ``peers``
        are the other providers as ``(server_id, ldap URI)``. Every provider must have the same
        ``rootdn`` and ``rootpw``: each consumer binds to its peers as that DN. A consumer whose peer is
        down retries every second, and one that has no usable point in the peer's log falls back to a
        full refresh. Idempotent: a second call sets the same values.
        """
        if not 1 <= server_id <= 4095:
            raise ServerError(f"server_id must be 1..4095, got {server_id}")
        log_db, data_db = "olcDatabase={1}mdb,cn=config", "olcDatabase={2}mdb,cn=config"
        changes = (' logbase="cn=accesslog" logfilter="(&(objectClass=auditWriteObject)(reqResult=0))" '
                   'syncdata=accesslog') if delta else ""
        consumers = [
            (f'rid={peer_id:03d} provider={uri} bindmethod=simple binddn="{self.rootdn}" '
             f'credentials={self.rootpw} searchbase="{self.suffix}"{changes} '
             'schemachecking=on type=refreshAndPersist retry="1 +" network-timeout=2 timeout=3').encode()
            for peer_id, uri in peers
        ]
        conn = self.config_connection()
        try:
            conn.modify_s("cn=config", [(ldap.MOD_REPLACE, "olcServerID", [str(server_id).encode()])])
            # The peers' consumers read this server's change log as its rootdn (rootdn is per database,
            # so cn=accesslog needs the read right and the limits spelt out).
            conn.modify_s(log_db, [
                (ldap.MOD_REPLACE, "olcAccess", [
                    f'to * by dn.exact="{self.rootdn}" read by dn.exact="{self.service_dn}" read '
                    f'by dn.exact="{self.peercred_dn}" manage by * none'.encode()]),
                (ldap.MOD_REPLACE, "olcLimits", [f'dn.exact="{self.rootdn}" size=unlimited time=unlimited'.encode()]),
            ])
            if consumers:  # a provider of one (its consumers will be read-only replicas) has no peers
                conn.modify_s(data_db, [(ldap.MOD_REPLACE, "olcSyncrepl", consumers),
                                        (ldap.MOD_REPLACE, "olcMultiProvider", [b"TRUE"])])
        except ldap.LDAPError as exc:
            raise ServerError(f"could not configure replication on {self.uri}: {exc}") from exc
        finally:
            conn.unbind_s()

    def enable_consumer(self, provider_uri: str, rid: int = 100) -> None:
        """Make this slapd a read-only replica of ``provider_uri`` (delta-syncrepl, refreshAndPersist),
        live over ldapi: writes sent to it are referred to the provider. The provider must have the
        same ``rootdn`` and ``rootpw`` (the consumer binds as that DN) and read access for it on its
        ``cn=accesslog`` (:meth:`enable_replication` gives it)."""
        data_db = "olcDatabase={2}mdb,cn=config"
        consumer = (f'rid={rid:03d} provider={provider_uri} bindmethod=simple binddn="{self.rootdn}" '
                    f'credentials={self.rootpw} searchbase="{self.suffix}" logbase="cn=accesslog" '
                    'logfilter="(&(objectClass=auditWriteObject)(reqResult=0))" syncdata=accesslog '
                    'schemachecking=on type=refreshAndPersist retry="1 +" network-timeout=2 timeout=3')
        conn = self.config_connection()
        try:
            conn.modify_s(data_db, [(ldap.MOD_REPLACE, "olcSyncrepl", [consumer.encode()]),
                                    (ldap.MOD_REPLACE, "olcUpdateRef", [provider_uri.encode()])])
        except ldap.LDAPError as exc:
            raise ServerError(f"could not make {self.uri} a consumer of {provider_uri}: {exc}") from exc
        finally:
            conn.unbind_s()

    def _tls_config(self) -> dict[str, list[str]]:
        """cn=config attributes for the server certificate (empty without TLS)."""
        if self.tls_cert is None:
            return {}
        # No olcTLSCACertificateFile: it is only needed to check client certificates, and
        # olcTLSVerifyClient stays at its default, never.
        return {"olcTLSCertificateFile": [str(self.tls_cert)], "olcTLSCertificateKeyFile": [str(self.tls_key)]}

    def _config_ldif(self) -> str:
        d, me, svc = self.data_dir, self.peercred_dn, self.service_dn
        modules = MODULES + (("argon2",) if self.password_hash.upper() == "{ARGON2}" else ())
        data_db, log_db = "olcDatabase={2}mdb,cn=config", "olcDatabase={1}mdb,cn=config"
        entries: list[tuple[str, dict[str, list[str]]]] = [
            ("cn=config", {"objectClass": ["olcGlobal"], "cn": ["config"],
                           "olcPidFile": [str(d / "slapd.pid")], "olcArgsFile": [str(d / "slapd.args")],
                           "olcLogLevel": [_log_level()],
                           **self._tls_config()}),
            ("cn=module{0},cn=config", {"objectClass": ["olcModuleList"], "cn": ["module{0}"],
                                        "olcModulePath": [str(MODULE_PATH)], "olcModuleLoad": list(modules)}),
            ("cn=schema,cn=config", {"objectClass": ["olcSchemaConfig"], "cn": ["schema"]}),
            ("olcDatabase={-1}frontend,cn=config", {
                "objectClass": ["olcDatabaseConfig", "olcFrontendConfig"], "olcDatabase": ["{-1}frontend"],
                "olcPasswordHash": [self.password_hash],
                # Explicit, because with no frontend ACL everyone could read everything not covered
                # by a database's own rules.
                "olcAccess": ['to dn.base="" by * read', 'to dn.base="cn=Subschema" by * read']}),
            ("olcDatabase={0}config,cn=config", {
                "objectClass": ["olcDatabaseConfig"], "olcDatabase": ["{0}config"],
                "olcAccess": [f'to * by dn.exact="{me}" manage by * none']}),
            (log_db, {
                "objectClass": ["olcDatabaseConfig", "olcMdbConfig"], "olcDatabase": ["{1}mdb"],
                "olcSuffix": ["cn=accesslog"], "olcRootDN": ["cn=accesslog"],
                "olcDbDirectory": [str(d / "accesslog")], "olcDbMaxSize": [str(1 << 30)],
                "olcDbNoSync": [_bool(self.nosync)],
                "olcDbIndex": ["objectClass eq", "entryCSN,entryUUID eq", "reqStart eq", "reqEnd eq",
                               "reqResult eq"],
                "olcAccess": [f'to * by dn.exact="{svc}" read by dn.exact="{me}" manage by * none']}),
            (data_db, {
                "objectClass": ["olcDatabaseConfig", "olcMdbConfig"], "olcDatabase": ["{2}mdb"],
                "olcSuffix": [self.suffix], "olcRootDN": [self.rootdn], "olcRootPW": [_ssha(self.rootpw)],
                "olcDbDirectory": [str(d / "data")], "olcDbMaxSize": [str(4 << 30)],
                "olcDbNoSync": [_bool(self.nosync)],
                "olcDbIndex": ["objectClass eq", "entryCSN,entryUUID eq",
                               "uid,cn,mail,displayName,sn,givenName eq,sub", "member,memberOf,uniqueMember eq"],
                "olcAccess": [
                    f'to attrs=userPassword by dn.exact="{svc}" manage by dn.exact="{me}" manage '
                    "by self =w by anonymous auth by * none",
                    f'to * by dn.exact="{svc}" manage by dn.exact="{me}" manage by self read by * none'],
                "olcLimits": [f'dn.exact="{svc}" size=unlimited time=unlimited',
                              f'dn.exact="{me}" size=unlimited time=unlimited']}),
        ]
        # Stacked in this order under the suffix database; slapd calls the last one configured first.
        overlays = [
            ("syncprov", "olcSyncProvConfig", {"olcSpCheckpoint": ["100 10"], "olcSpSessionlog": ["10000"]}),
            ("accesslog", "olcAccessLogConfig", {
                "olcAccessLogDB": ["cn=accesslog"], "olcAccessLogOps": ["writes"],
                "olcAccessLogPurge": ["07+00:00 01+00:00"], "olcAccessLogSuccess": ["TRUE"]}),
            ("memberof", "olcMemberOfConfig", {
                "olcMemberOfRefInt": ["TRUE"], "olcMemberOfGroupOC": ["groupOfNames"],
                "olcMemberOfMemberAD": ["member"], "olcMemberOfMemberOfAD": ["memberOf"]}),
            ("refint", "olcRefintConfig", {"olcRefintAttribute": ["member", "manager", "owner", "seeAlso"]}),
            ("unique", "olcUniqueConfig", {"olcUniqueURI": ["ldap:///?uid?sub"]}),
            ("ppolicy", "olcPPolicyConfig", {"olcPPolicyHashCleartext": ["TRUE"], "olcPPolicyUseLockout": ["TRUE"]}),
            ("sssvlv", "olcSssVlvConfig", {"olcSssVlvMax": ["64"], "olcSssVlvMaxKeys": ["8"]}),
            ("deref", None, {}),
        ]
        for i, (name, oc, attrs) in enumerate(overlays):
            classes = ["olcOverlayConfig"] + ([oc] if oc else [])
            entries.append((f"olcOverlay={{{i}}}{name},{data_db}",
                            {"objectClass": classes, "olcOverlay": [f"{{{i}}}{name}"], **attrs}))
        # Lets delta-syncrepl consumers follow the change log, as in the Admin Guide.
        entries.append((f"olcOverlay={{0}}syncprov,{log_db}", {
            "objectClass": ["olcOverlayConfig", "olcSyncProvConfig"], "olcOverlay": ["{0}syncprov"],
            "olcSpNoPresent": ["TRUE"], "olcSpReloadHint": ["TRUE"]}))

        out = io.StringIO()
        writer = ldif.LDIFWriter(out)
        for dn, attrs in entries:
            writer.unparse(dn, {k: [v.encode() for v in vs] for k, vs in attrs.items()})
            if dn == "cn=schema,cn=config":
                # The Debian schema files are cn=config LDIF already; slapadd reads them in place
                # and numbers them cn={0}core, cn={1}cosine, ...
                out.write("".join(f"include: file://{SCHEMA_DIR / s}.ldif\n\n" for s in SCHEMAS))
        return out.getvalue()


def replicate(providers: Sequence[SlapdServer]) -> None:
    """Make ``providers`` (running, same rootdn and rootpw) replicate each other: provider ``i`` gets
    server id ``i + 1`` and consumes from every other one (:meth:`SlapdServer.enable_replication`)."""
    for index, server in enumerate(providers):
        server.enable_replication(index + 1, [(other + 1, peer.uri) for other, peer in enumerate(providers)
                                              if other != index])


def wait_replicated(providers: Sequence[SlapdServer], dn: str, timeout: float = 30.0, *,
                    present: bool = True) -> None:
    """Wait until ``dn`` exists (or, with ``present=False``, is gone) on every provider; ServerError past
    ``timeout`` naming the providers that lag."""
    deadline = time.monotonic() + timeout
    while True:
        lagging = []
        for server in providers:
            conn = server.admin_connection()
            try:
                conn.search_s(dn, ldap.SCOPE_BASE, "(objectClass=*)", ["1.1"])
                found = True
            except ldap.NO_SUCH_OBJECT:
                found = False
            finally:
                conn.unbind_s()
            if found != present:
                lagging.append(server.uri)
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise ServerError(f"{dn} is {'missing' if present else 'still there'} on {', '.join(lagging)} "
                              f"after {timeout:.0f}s of replication")
        time.sleep(0.05)


def _bool(value: bool) -> str:
    return "TRUE" if value else "FALSE"


def _log_level() -> str:
    """slapd log level: "none" unless DIDMOS_SLAPD_LOGLEVEL names one ("stats", ...) or is just true (stats)."""
    level = os.environ.get("DIDMOS_SLAPD_LOGLEVEL", "").strip()
    if level.lower() in ("", "0", "false", "no", "off"):
        return "none"
    return "stats" if level.lower() in ("1", "true", "yes", "on") else level


def _redis_answers(port: int) -> bool:
    """True when a redis-server (or sentinel) on 127.0.0.1:``port`` answers PING."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@dataclass(eq=False)
class RedisServer(_ChildProcess):
    """A private redis-server on 127.0.0.1:port with its files (AOF, RDB, redis.log) in ``data_dir``."""

    data_dir: Path
    port: int
    persistence: bool = True
    #: Further ``redis-server`` options, such as ``("--replicaof", "127.0.0.1", "6379")``.
    options: tuple[str, ...] = ()
    _what = "redis-server"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def url(self) -> str:
        """Redis URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Where redis-server writes its log."""
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server in the foreground and wait until it answers PING. No-op if running."""
        if self.pid is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_port_free(self.port, "redis-server")
        argv = [find_program("redis-server", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.log_path)]
        if self.persistence:
            argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        else:
            argv += ["--appendonly", "no", "--save", ""]
        self._spawn(argv + list(self.options), self.log_path, self._answers, timeout)

    def _answers(self) -> bool:
        return _redis_answers(self.port)


@dataclass(eq=False)
class RedisSentinelServer(_ChildProcess):
    """A private Redis Sentinel on 127.0.0.1:port (``redis-server --sentinel``), monitoring the primary
    at 127.0.0.1:``primary_port`` as ``service``; its config file (which sentinel rewrites) and log in
    ``data_dir``. Small ``down_after_ms`` and ``failover_timeout_ms`` make failovers quick in tests."""

    data_dir: Path
    port: int
    primary_port: int
    service: str = "mymaster"
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    _what = "redis sentinel"

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()

    @property
    def address(self) -> str:
        """``host:port``, as in the setting ``redis.sentinels``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "sentinel.log"

    def start(self, timeout: float = 10.0) -> None:
        """Write the config file (first start only) and start the sentinel; wait until it answers PING."""
        if self.pid is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _check_port_free(self.port, "redis sentinel")
        config = self.data_dir / "sentinel.conf"
        if not config.exists():  # sentinel rewrites it with what it learnt (replicas, epochs, peers)
            config.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndaemonize no\ndir {self.data_dir}\n"
                f"logfile {self.log_path}\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} {self.quorum}\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.service} 1\n")
            config.chmod(0o600)
        argv = [find_program("redis-server", "redis-server"), str(config), "--sentinel"]
        self._spawn(argv, self.log_path, self._answers, timeout)

    def _answers(self) -> bool:
        return _redis_answers(self.port)

    def primary(self) -> tuple[str, int] | None:
        """The primary this sentinel names for ``service`` now, or None when it cannot say."""
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            found = client.sentinel_get_master_addr_by_name(self.service)
        except redis.RedisError:
            return None
        finally:
            client.close()
        if not found:
            return None
        host = found[0].decode() if isinstance(found[0], bytes) else found[0]
        return host, int(found[1])
