"""`didmos dev` as a user runs it: real processes, restart with the same data, clean stop on SIGINT."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import ldap
import pytest
import redis

from didmos_host.servers import free_port

pytestmark = pytest.mark.slow
SUPERADMIN_DN = "didmosUUID=00000000-0000-0000-0000-000000000002,ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de"


def descendants(pid: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Dev:
    def __init__(self, data_dir: Path, port: int, password: str | None, *options: str):
        self.data_dir, self.port, self.password = data_dir, port, password
        self.log = open(data_dir.parent / f"dev-{port}.log", "w+")
        command = [sys.executable, "-m", "didmos_host.cli", "dev", "--data-dir", str(data_dir), "--port", str(port),
                   *options]
        if password is not None:
            command += ["--admin-password", password]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            if "Ctrl-C stops everything" in self.output():
                return
            time.sleep(0.2)
        raise AssertionError(f"didmos dev not ready:\n{self.output()}")

    def state(self):
        return json.loads((self.data_dir / "dev-state.json").read_text())

    def stop(self):
        family = descendants(self.process.pid)
        assert family, "didmos dev should have child processes"
        self.process.send_signal(signal.SIGINT)
        assert self.process.wait(30) == 0, self.output()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in family if alive(pid)], "children left running after SIGINT"


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_dev_runs_restarts_with_its_data_and_stops_cleanly(tmp_path):
    first = Dev(tmp_path / "a", free_port(), "pw-a")
    second = Dev(tmp_path / "b", free_port(), "pw-b")  # two side by side
    try:
        for dev in (first, second):
            dev.wait_ready()
            assert get(f"http://127.0.0.1:{dev.port}/healthz") == (200, {"status": "ok"})
            out = dev.output()
            assert f"API         http://127.0.0.1:{dev.port}/" in out
            assert "superadmin created: userName superadmin" in out
            assert "superadmin password:" not in out  # given on the command line, so not printed
            assert f"curl -u 00000000-0000-0000-0000-000000000002:PASSWORD http://127.0.0.1:{dev.port}/auth/whoami" in out
            credentials = base64.b64encode(b"00000000-0000-0000-0000-000000000002:" + dev.password.encode()).decode()
            request = urllib.request.Request(f"http://127.0.0.1:{dev.port}/auth/whoami",
                                             headers={"Authorization": f"Basic {credentials}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                assert json.loads(response.read())["id"] == "00000000-0000-0000-0000-000000000002"
        state = first.state()
        conn = ldap.initialize(f"ldap://127.0.0.1:{state['ldap_port']}")
        conn.simple_bind_s(SUPERADMIN_DN, "pw-a")
        conn.simple_bind_s(f"cn=admin,dc=de", state["rootpw"])
        conn.add_s("ou=kept,dc=didmos,dc=de", [("objectClass", [b"organizationalUnit"]), ("ou", [b"kept"])])
        redis.Redis(port=state["redis_port"]).set("kept", "yes")
        assert first.state()["ldap_port"] != second.state()["ldap_port"]
        # a second `didmos dev` on the same data directory is refused, and the first keeps running
        clash = subprocess.run([sys.executable, "-m", "didmos_host.cli", "dev", "--data-dir", str(first.data_dir),
                                "--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert clash.returncode == 2 and "another `didmos dev` is running" in clash.stderr
        assert get(f"http://127.0.0.1:{first.port}/healthz")[0] == 200
    finally:
        for dev in (first, second):
            if dev.process.poll() is None:
                dev.stop()
    assert "didmos dev: stopped" in first.output()

    again = Dev(tmp_path / "a", first.port, "ignored-now")
    try:
        again.wait_ready()
        assert "directory entries created: 0" in again.output()
        state = again.state()
        conn = ldap.initialize(f"ldap://127.0.0.1:{state['ldap_port']}")
        conn.simple_bind_s(SUPERADMIN_DN, "pw-a")  # the password of the first run still holds
        conn.simple_bind_s("cn=admin,dc=de", state["rootpw"])
        assert conn.search_s("ou=kept,dc=didmos,dc=de", ldap.SCOPE_BASE, attrlist=["ou"])
        assert redis.Redis(port=state["redis_port"]).get("kept") == b"yes"
    finally:
        again.stop()


def test_dev_generates_and_prints_the_superadmin_password_once(tmp_path):
    dev = Dev(tmp_path / "g", free_port(), None)
    try:
        dev.wait_ready()
        line = next(line for line in dev.output().splitlines() if "superadmin password:" in line)
        password = line.split("superadmin password:")[1].split()[0]
        conn = ldap.initialize(f"ldap://127.0.0.1:{dev.state()['ldap_port']}")
        conn.simple_bind_s(SUPERADMIN_DN, password)
    finally:
        dev.stop()


def test_dev_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "didmos_host.cli", "dev", "--data-dir", str(tmp_path / "x"),
                                 "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"port {port}" in result.stderr and "--port" in result.stderr


def test_dev_with_two_providers_replicates_between_its_two_api_nodes(tmp_path):
    port = free_port()
    while not _free(port + 1):  # the second API listens on --port + 1
        port = free_port()
    dev = Dev(tmp_path / "mpr", port, "pw-mpr", "--providers", "2")
    try:
        dev.wait_ready(90)
        out = dev.output()
        assert "2 providers replicating each other" in out and f"API 2       http://127.0.0.1:{port + 1}/" in out
        auth = {"Authorization": "Basic " + base64.b64encode(
            b"00000000-0000-0000-0000-000000000002:pw-mpr").decode(), "Content-Type": "application/scim+json"}
        body = json.dumps({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "mpr-one",
                           "name": {"givenName": "M", "familyName": "P"}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/scim/v2/Users", data=body, headers=auth)
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
            user = json.loads(response.read())
        # the second node reads it too (both write to provider 1); and provider 2 has it, replicated
        deadline = time.monotonic() + 15
        while True:
            request = urllib.request.Request(f"http://127.0.0.1:{port + 1}/scim/v2/Users/{user['id']}", headers=auth)
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert json.loads(response.read())["userName"] == "mpr-one"
                    break
            except urllib.error.HTTPError as exc:
                assert exc.code == 404 and time.monotonic() < deadline, exc
                time.sleep(0.2)
        state = dev.state()
        user_dn = SUPERADMIN_DN.replace("00000000-0000-0000-0000-000000000002", user["id"])
        for key in ("ldap_port", "ldap_port2"):
            conn = ldap.initialize(f"ldap://127.0.0.1:{state[key]}")
            conn.simple_bind_s("cn=admin,dc=de", state["rootpw"])
            assert conn.search_s(SUPERADMIN_DN, ldap.SCOPE_BASE, attrlist=["uid"])
            deadline = time.monotonic() + 15
            while not conn.search_s(user_dn.split(",", 1)[1], ldap.SCOPE_ONELEVEL, f"(uid=mpr-one)", ["1.1"]):
                assert time.monotonic() < deadline, f"mpr-one did not reach {key}"
                time.sleep(0.2)
        # two API processes and two workers besides the two slapd and redis
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in descendants(dev.process.pid)
                    if alive(pid)]
        serving = {c[c.index(b"--port") + 1] for c in commands if b"serve" in c and b"--port" in c}
        assert serving == {str(port).encode(), str(port + 1).encode()}, commands
        workers = [c for c in commands if c[:4] == [c[0], b"-m", b"didmos_host.cli", b"worker"]]
        assert len(workers) >= 2, commands
    finally:
        dev.stop()
