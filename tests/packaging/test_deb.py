"""The Debian package: packaging/build-deb builds it, its metadata and files are checked, then it is
installed on this machine with dpkg -i, a customer plugin is added with the one documented command, the
package is upgraded (installed again), the API is started from the installed files as the user didmos
against the test slapd and redis, and the package is purged again, leaving the machine as it was
(which is checked).

The install test needs root and dpkg; it skips otherwise, and when a package named didmos is
installed already (it would replace it)."""

from __future__ import annotations

import base64
import csv
import grp
import hashlib
import io
import json
import os
import pwd
import re
import shutil
import subprocess
import time
import tomllib
import uuid
import zipfile
from pathlib import Path

import pytest
import requests

from didmos_host.servers import stop_process
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNITS = ("didmos-api.service", "didmos-worker.service")


def plugin_dirs() -> list[Path]:
    lines = (line.split("#", 1)[0].strip() for line in (PACKAGING / "plugins.txt").read_text().splitlines())
    return [ROOT / line for line in lines if line]


def project(path: Path) -> dict:
    return tomllib.loads((path / "pyproject.toml").read_text())["project"]


def shipped_distributions() -> set[str]:
    """didmos-host and the distributions of packaging/plugins.txt."""
    return {project(ROOT)["name"]} | {project(path)["name"] for path in plugin_dirs()}


def run(*command, timeout=300, check=True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                          **kwargs)
    if check:
        assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def dpkg(*arguments) -> subprocess.CompletedProcess:
    """dpkg, waiting (up to 5 minutes) while another dpkg or apt holds its lock: others use this machine too."""
    deadline = time.monotonic() + 300
    while True:
        done = run("dpkg", *arguments, check=False, env=clean_environment())
        if done.returncode == 2 and "lock" in done.stderr and time.monotonic() < deadline:
            time.sleep(2)
            continue
        return done


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without DIDMOS_ variables (a test's settings must not leak in)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIDMOS_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    if shutil.which("dpkg-deb") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("building the Debian package needs dpkg-deb and /usr/bin/python3 (Debian)")
    out = tmp_path_factory.mktemp("deb")
    done = run(PACKAGING / "build-deb", "--out", out, timeout=600)
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file()
    return path


def fields(deb: Path) -> dict[str, str]:
    text = run("dpkg-deb", "--field", deb).stdout
    return {key: value.strip() for key, value in re.findall(r"^(\S+): (.*(?:\n .*)*)", text, re.M)}


def test_package_metadata(deb):
    version = project(ROOT)["version"]
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"didmos_{version}_{arch}.deb"
    control = fields(deb)
    assert (control["Package"], control["Version"], control["Architecture"]) == ("didmos", version, arch)
    depends = [alternative.strip() for alternative in control["Depends"].split(",")]
    # The venv is made from Debian's python3 by postinst, and the wheels are for this minor version.
    assert "python3 (>= 3.11)" in depends and any(d.startswith("python3 (<< ") for d in depends)
    assert {"python3-venv", "adduser", "libsasl2-2"} <= set(depends)
    assert any(re.fullmatch(r"libldap(-2\.\d+-0|2)", d) for d in depends), depends  # what python-ldap links
    assert {"slapd", "redis-server"} <= {r.strip() for r in control["Recommends"].split(",")}
    assert int(control["Installed-Size"]) > 1000
    assert run("dpkg-deb", "--info", deb, "conffiles").stdout.split() == ["/etc/didmos/settings.toml",
                                                                           "/etc/logrotate.d/didmos"]


def test_package_files(deb, tmp_path):
    listing = run("dpkg-deb", "--contents", deb).stdout.splitlines()
    paths = {line.split()[5].removeprefix(".") for line in listing}
    owners = {line.split()[1] for line in listing}
    assert owners == {"root/root"}
    for path in ("/etc/didmos/settings.toml", "/opt/didmos/bin/didmos", "/opt/didmos/bin/didmos-plugin-install",
                 "/opt/didmos/constraints.txt", "/opt/didmos/share/secrets.toml.in",
                 "/usr/lib/systemd/system/didmos-api.service", "/usr/lib/systemd/system/didmos-worker.service",
                 "/usr/share/doc/didmos/packaging.md", "/usr/share/doc/didmos/copyright"):
        assert path in paths, path
    assert any(line.endswith("./usr/bin/didmos -> /opt/didmos/bin/didmos") for line in listing)
    assert any(line.endswith("./usr/sbin/didmos-plugin-install -> /opt/didmos/bin/didmos-plugin-install")
               for line in listing)
    # A wheel of the host and of every plugin of packaging/plugins.txt, the same list the Dockerfile builds.
    wheels = {Path(path).name for path in paths if path.startswith("/opt/didmos/wheels/") and path.endswith(".whl")}
    for name in shipped_distributions():
        assert any(wheel.startswith(name.replace("-", "_") + "-") for wheel in wheels), name
    assert any(wheel.startswith("python_ldap-") and "linux" in wheel for wheel in wheels)
    # No venv in the package: postinst makes it.
    assert not any(path.startswith("/opt/didmos/venv") for path in paths)

    # The maintainer scripts and the commands are POSIX sh that parses.
    control = tmp_path / "control"
    run("dpkg-deb", "--control", deb, control)
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(control / script, os.X_OK), script
        run("sh", "-n", control / script)
    for script in (PACKAGING / "deb" / "bin").iterdir():
        run("sh", "-n", script)

    units = {unit: (PACKAGING / "deb" / "systemd" / unit).read_text() for unit in UNITS}
    for unit, command in zip(UNITS, ("serve", "worker")):
        text = units[unit]
        assert f"ExecStart=/opt/didmos/venv/bin/didmos {command}\n" in text
        for line in ("User=didmos", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
                     "CapabilityBoundingSet=\n", "Environment=DIDMOS_SETTINGS_FILES=/etc/didmos/secrets.toml"):
            assert line in text, (unit, line)


def machine_state() -> dict:
    """What the package touches outside dpkg's own database, to compare before and after."""
    paths = ["/opt/didmos", "/etc/didmos", "/var/lib/didmos", "/var/log/didmos", "/etc/logrotate.d/didmos",
             "/usr/bin/didmos", "/usr/sbin/didmos-plugin-install",
             "/usr/lib/systemd/system/didmos-api.service", "/usr/lib/systemd/system/didmos-worker.service"]
    systemd = sorted(str(path) for base in ("/etc/systemd", "/var/lib/systemd") if Path(base).exists()
                     for path in Path(base).rglob("*didmos*"))
    installed = run("dpkg-query", "-W", "-f", "${Status}", "didmos", check=False).stdout
    return {"paths": {path: os.path.lexists(path) for path in paths}, "systemd": systemd,
            "user": run("getent", "passwd", "didmos", check=False).stdout,
            "group": run("getent", "group", "didmos", check=False).stdout, "dpkg": installed}


def customer_plugin_wheel(directory: Path) -> Path:
    """A wheel of a customer plugin (distribution acme-didmos) that adds GET /acme/hello, made by hand."""
    code = '''"""A customer plugin for the package test."""
from didmos_host import hookimpl
from didmos_host.api import Blueprint, MethodView

blp = Blueprint("acme", __name__, url_prefix="/acme", description="ACME")


@blp.route("/hello")
class Hello(MethodView):
    @blp.response(200)
    def get(self):
        """Greets."""
        return {"hello": "acme"}


@hookimpl
def didmos_blueprints(app):
    return [blp]
'''
    files = {
        "acme_didmos/__init__.py": code,
        "acme_didmos-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: acme-didmos\nVersion: 1.0\n"
                                              "Requires-Dist: didmos-host>=0.1\n",
        "acme_didmos-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: didmos-test\nRoot-Is-Purelib: true\n"
                                           "Tag: py3-none-any\n",
        "acme_didmos-1.0.dist-info/entry_points.txt": "[didmos]\nacme = acme_didmos\n",
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        writer.writerow([name, f"sha256={digest}", len(text.encode())])
    writer.writerow(["acme_didmos-1.0.dist-info/RECORD", "", ""])
    files["acme_didmos-1.0.dist-info/RECORD"] = record.getvalue()
    wheel = directory / "acme_didmos-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2)
        except requests.ConnectionError:
            assert process.poll() is None, f"didmos serve exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"no answer from {url} within {timeout}s:\n{log.read_text()}"
            time.sleep(0.3)


def test_install_serve_and_purge(deb, didmos_slapd, didmos_redis, tmp_path):
    from didmos_host.servers import free_port

    if os.geteuid() != 0:
        pytest.skip("installing a Debian package needs root")
    before = machine_state()
    if before["dpkg"]:
        pytest.skip(f"a package didmos is known to dpkg already ({before['dpkg']}); not replacing it")
    server = None
    try:
        installed = dpkg("-i", deb)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "didmos directory init" in installed.stdout  # the first-install hint of postinst

        # What postinst made: the user, the secrets, the venv on Debian's python3.
        user = pwd.getpwnam("didmos")
        assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/didmos" and user.pw_shell == "/usr/sbin/nologin"
        secrets = os.stat("/etc/didmos/secrets.toml")
        assert (secrets.st_mode & 0o777, secrets.st_uid) == (0o640, 0)
        assert secrets.st_gid == user.pw_gid
        assert len(tomllib.loads(Path("/etc/didmos/secrets.toml").read_text())["directory"]["bind_password"]) >= 24
        logs = os.stat("/var/log/didmos")
        assert (logs.st_uid, logs.st_gid) == (user.pw_uid, grp.getgrnam("adm").gr_gid)
        assert tomllib.loads(Path("/etc/didmos/settings.toml").read_text()) == {
            "api": {}, "directory": {}, "redis": {}, "log": {}, "ldap": {}}, "the conffile shows the defaults, commented"
        venv_config = Path("/opt/didmos/venv/pyvenv.cfg").read_text()
        assert re.search(r"^home = /usr/bin$", venv_config, re.M), venv_config
        plugins = json.loads(run("/usr/bin/didmos", "plugins", "--json", env=clean_environment()).stdout)
        assert {row["distribution"] for row in plugins} == shipped_distributions()
        # /usr/bin/didmos reads the secrets as the units do, and masks them.
        shown = {row["key"]: row for row in json.loads(
            run("/usr/bin/didmos", "config", "show", "--json", env=clean_environment()).stdout)}
        assert shown["directory.bind_password"]["source"] == "file /etc/didmos/secrets.toml"
        assert shown["directory.bind_password"]["value"] == "********"
        # Not enabled on a first install (settings and `directory init` come first); no systemd runs here.
        assert not Path("/etc/systemd/system/multi-user.target.wants/didmos-api.service").exists()
        if shutil.which("systemd-analyze"):  # works without a running systemd
            verified = run("systemd-analyze", "verify", *(f"/usr/lib/systemd/system/{unit}" for unit in UNITS),
                           check=False)
            assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr

        # The one command for a customer plugin; it is kept for upgrades.
        wheel = customer_plugin_wheel(tmp_path)
        added = run("/usr/sbin/didmos-plugin-install", wheel, env=clean_environment())
        assert "acme" in added.stdout.split() and "installed: acme_didmos-1.0-py3-none-any.whl" in added.stderr
        assert Path("/var/lib/didmos/plugins/acme_didmos-1.0-py3-none-any.whl").is_file()

        # An upgrade (here: the same package again) makes the venv anew and keeps the secrets, the
        # settings and the customer plugin.
        secrets_text = Path("/etc/didmos/secrets.toml").read_text()
        upgraded = dpkg("-i", deb)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        assert Path("/etc/didmos/secrets.toml").read_text() == secrets_text
        plugins = json.loads(run("/usr/bin/didmos", "plugins", "--json", env=clean_environment()).stdout)
        assert {row["distribution"] for row in plugins} == shipped_distributions() | {"acme-didmos"}

        # The API from the installed files, as the user didmos, with the units' settings files, pointed
        # at the test slapd and redis by environment variables (which win over the files).
        port = free_port()
        env = clean_environment(
            DIDMOS_SETTINGS_FILES="/etc/didmos/secrets.toml", HOME="/var/lib/didmos",
            DIDMOS_DIRECTORY__URI=didmos_slapd.uri,
            DIDMOS_DIRECTORY__BIND_PASSWORD=f"'{didmos_slapd.service_password}'",
            DIDMOS_REDIS__URL=didmos_redis.url, DIDMOS_LOG__AUDIT_FILE="/var/log/didmos/audit.log")
        log = tmp_path / "serve.log"
        with open(log, "w") as output:
            server = subprocess.Popen(
                ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
                 "/opt/didmos/venv/bin/didmos", "serve", "--port", str(port), "--workers", "1"],
                env=env, cwd="/", stdout=output, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        health = wait_for(f"{base}/healthz", server, log)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        status = Path(f"/proc/{server.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{user.pw_uid}\s", status, re.M), "didmos serve must run as didmos"

        auth = (SUPERADMIN_ID, SUPERADMIN_PASSWORD)
        assert requests.get(f"{base}/scim/v2/Users", timeout=10).status_code == 401
        name = f"pkg-{uuid.uuid4().hex[:8]}"
        created = requests.post(f"{base}/scim/v2/Users", auth=auth, timeout=30, json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
            "name": {"givenName": "Package", "familyName": "Test"}})
        assert created.status_code == 201, created.text
        found = requests.get(f"{base}/scim/v2/Users", auth=auth, timeout=30,
                             params={"filter": f'userName eq "{name}"'})
        assert found.status_code == 200 and found.json()["totalResults"] == 1, found.text
        assert requests.delete(f"{base}/scim/v2/Users/{created.json()['id']}", auth=auth, timeout=30).status_code == 204
        # The audit records of those writes, in the log directory the package made for the user didmos.
        audit = Path("/var/log/didmos/audit.log")
        assert audit.exists() and created.json()["id"] in audit.read_text()
        # The customer plugin is part of the served API.
        assert requests.get(f"{base}/acme/hello", timeout=10).json() == {"hello": "acme"}

        # Removing it again; didmos's own plugins are not removable this way.
        refused = run("/usr/sbin/didmos-plugin-install", "--remove", "didmos-ldap", check=False, env=clean_environment())
        assert refused.returncode == 1 and "DIDMOS_DISABLE_PLUGINS" in refused.stderr
        run("/usr/sbin/didmos-plugin-install", "--remove", "acme-didmos", env=clean_environment())
        assert run("/usr/sbin/didmos-plugin-install", "--list", env=clean_environment()).stdout == ""
        plugins = json.loads(run("/usr/bin/didmos", "plugins", "--json", env=clean_environment()).stdout)
        assert {row["distribution"] for row in plugins} == shipped_distributions()

        # The worker from the installed files, as didmos: it reaches redis and the directory, runs, exits.
        worker = run("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
                     "/opt/didmos/venv/bin/didmos", "worker", "--burst", env=env, cwd="/", timeout=120)
        assert worker.returncode == 0
    finally:
        if server is not None:
            stop_process(server, 20)
        purged = dpkg("--purge", "didmos")
        if not before["user"] and run("getent", "passwd", "didmos", check=False).stdout:
            # Debian keeps system users on purge (docs/packaging.md); this machine gets rid of it.
            run("deluser", "--system", "--quiet", "didmos", check=False)
        if not before["group"] and run("getent", "group", "didmos", check=False).stdout:
            run("delgroup", "--system", "--quiet", "didmos", check=False)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert machine_state() == before
