"""`didmos doctor` against the real slapd and redis: what it finds, what it says to do, its exit status."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from didmos_host import hookimpl
from didmos_host.cli import cli
from didmos_host.doctor import diagnose
from didmos_host.records import DoctorCheck, DoctorFinding, SchemaMigration
from didmos_host.servers import RedisServer, free_port, stop_process
from didmos_host.testing import _merge, wait_for

USER = "urn:ietf:params:scim:schemas:core:2.0:User"


def by_check(findings):
    return {finding.check: finding for finding in findings}


def statuses(findings):
    return {finding.check: finding.status for finding in findings}


def write_settings(path: Path, overrides) -> Path:
    """``overrides`` as a settings file, for the command line and a worker in a subprocess."""
    lines = []
    for namespace, values in overrides.items():
        lines.append(f"[{namespace}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone: no worker of another test is registered in it."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persistence=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def overrides(didmos_own_overrides, private_redis):
    """A slapd of this module's own: what other tests add to the shared one (indexes, migrations) does
    not change what the doctor finds here."""
    return _merge(didmos_own_overrides, {"redis": {"url": private_redis.url}})


@pytest.fixture
def worker(overrides, tmp_path):
    """`didmos worker` in a subprocess on the private redis; stopped (SIGTERM) after the test."""
    settings = write_settings(tmp_path / "settings.toml", overrides)
    env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(settings)}
    with open(tmp_path / "worker.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "worker"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop_process(process, 20)




@pytest.mark.slow  # a worker process of its own
def test_all_ok_with_directory_redis_and_a_running_worker(overrides, worker, tmp_path):
    findings = wait_for(lambda: (f := diagnose(overrides)) and all(x.status == "ok" for x in f) and f,
                        what=f"every finding ok (worker log: {tmp_path / 'worker.log'})", interval=0.3)
    assert statuses(findings) == {
        "configuration": "ok", "directory.connection": "ok", "directory.migrations": "ok",
        "directory.overlays": "ok", "scim.indexes": "ok", "redis": "ok", "worker": "ok", "worker.scheduler": "ok"}
    found = by_check(findings)
    assert "bound as cn=didmos-service,ou=system,dc=didmos,dc=de" in found["directory.connection"].message
    assert "version " in found["redis"].message
    # The command, as an operator runs it: exit 0, JSON on request.
    env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(write_settings(tmp_path / "doctor.toml", overrides))}
    run = subprocess.run([sys.executable, "-m", "didmos_host.cli", "doctor", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True and report["problems"] == 0
    assert {finding["status"] for finding in report["findings"]} == {"ok"}
    assert report["findings"][0]["check"] == "configuration"


def test_a_migration_that_is_not_applied_says_run_directory_init(overrides, tmp_path):
    ldif = tmp_path / "0001-acme.ldif"
    ldif.write_text("dn: {suffix_db}\nchangetype: modify\nadd: olcDbIndex\nolcDbIndex: carLicense eq\n")

    class Acme:
        @hookimpl
        def didmos_directory_migrations(self):
            return [SchemaMigration("acme.0001-car-licence-index", ldif, order=50)]

    found = by_check(diagnose(overrides, extra_plugins=[Acme()]))["directory.migrations"]
    assert found.status == "problem"
    assert "acme.0001-car-licence-index" in found.message and "didmos_ldap" not in found.message
    assert "run `didmos directory init`" in found.fix


def test_an_attribute_scim_can_filter_on_without_an_index_is_named(overrides):
    from didmos_scim.mapping import Attribute

    class CarLicence:
        @hookimpl(wrapper=True)
        def didmos_attribute_mapping(self, resource_type):
            mapping = yield
            if resource_type.name == "User":
                mapping = mapping.with_attribute(USER, Attribute("carLicense", "string", "carLicense"))
            return mapping

    findings = diagnose(overrides, extra_plugins=[CarLicence()])
    found = by_check(findings)["scim.indexes"]
    assert found.status == "problem"
    assert "carLicense (User.carLicense)" in found.message
    assert "olcDbIndex: carLicense eq" in found.fix
    assert statuses(findings)["directory.migrations"] == "ok"


def test_no_worker_says_start_didmos_worker(overrides):
    found = by_check(diagnose(overrides))
    assert found["worker"].status == "problem"
    assert "no task worker is running" in found["worker"].message
    assert "start `didmos worker`" in found["worker"].fix
    assert found["worker.scheduler"].status == "skipped"
    assert found["redis"].status == "ok"


def test_redis_down_is_a_problem_and_the_worker_check_is_skipped(overrides, private_redis):
    private_redis.stop()
    started = time.monotonic()
    found = by_check(diagnose(overrides))
    assert time.monotonic() - started < 10
    assert found["redis"].status == "problem"
    assert f"127.0.0.1:{private_redis.port}" in found["redis"].message
    assert "start redis-server" in found["redis"].fix
    assert found["worker"].status == "skipped"
    assert found["directory.connection"].status == "ok"


@pytest.mark.slow  # a worker process of its own
def test_a_worker_on_some_queues_only_is_named(overrides, tmp_path):
    from didmos_host.host import Host
    from didmos_host.tasks import queue_names

    needed = queue_names(Host.create(overrides))
    assert len(needed) > 1, needed
    env = {**os.environ, "DIDMOS_SETTINGS_FILES": str(write_settings(tmp_path / "s.toml", overrides))}
    process = subprocess.Popen([sys.executable, "-m", "didmos_host.cli", "worker", "--queue", needed[0]], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        found = wait_for(lambda: (f := by_check(diagnose(overrides)))["worker"].status == "problem"
                         and "none listens" in f["worker"].message and f, what="the partial worker registered",
                         interval=0.3)
    finally:
        process.terminate()
        process.wait(20)
    assert ", ".join(needed[1:]) in found["worker"].message
    assert needed[0] not in found["worker"].message.split("queue(s)")[1]


def test_the_directory_unreachable_is_a_problem(overrides):
    port = free_port()
    found = by_check(diagnose(_merge(overrides, {"directory": {"uri": f"ldap://127.0.0.1:{port}",
                                                               "config_uri": ""}})))
    assert found["directory.connection"].status == "problem"
    assert str(port) in found["directory.connection"].message
    assert "start slapd, or correct directory.uri" in found["directory.connection"].fix
    assert found["directory.migrations"].status == "skipped"
    assert found["scim.indexes"].status == "skipped"


def test_a_suffix_no_database_holds_is_a_problem(overrides):
    found = by_check(diagnose(_merge(overrides, {"directory": {"suffix": "dc=example,dc=org"}})))
    assert found["directory.suffix"].status == "problem"
    assert "no database in cn=config has suffix 'dc=example,dc=org'" in found["directory.suffix"].message
    assert "set directory.suffix" in found["directory.suffix"].fix
    assert found["scim.indexes"].status == "skipped"


def test_a_wrong_service_password_is_a_problem(overrides):
    found = by_check(diagnose(_merge(overrides, {"directory": {"bind_password": "wrong"}})))
    assert found["directory.connection"].status == "problem"
    assert "directory.bind_password" in found["directory.connection"].fix


def test_without_access_to_cn_config_overlays_and_indexes_are_skipped_not_failed(overrides):
    findings = diagnose(_merge(overrides, {"directory": {"config_uri": ""}}))
    found = by_check(findings)
    assert found["directory.overlays"].status == found["scim.indexes"].status == "skipped"
    assert "cn=config" in found["directory.overlays"].message
    assert "directory.config_uri" in found["directory.overlays"].fix
    assert found["directory.migrations"].status == "ok"


def test_a_bad_setting_is_named_and_nothing_else_is_checked(overrides):
    findings = diagnose(_merge(overrides, {"api": {"port": 0}}))
    assert [(f.check, f.status) for f in findings] == [("configuration", "problem")]
    assert "api.port must be" in findings[0].message


def test_a_check_that_crashes_is_a_problem_and_the_others_still_run(overrides):
    class Broken:
        @hookimpl
        def didmos_doctor_checks(self, host):
            def explode(host):
                raise RuntimeError("boom")

            def fine(host):
                return [DoctorFinding("acme.licence", "ok", "licence valid until 2030")]

            return [DoctorCheck("acme.broken", explode, order=5), DoctorCheck("acme.licence", fine)]

    findings = diagnose(overrides, extra_plugins=[Broken()])
    found = by_check(findings)
    assert found["acme.broken"].status == "problem" and "RuntimeError: boom" in found["acme.broken"].message
    assert found["acme.licence"].message == "licence valid until 2030"
    assert found["directory.connection"].status == "ok"
    # (order, name): configuration first, then order 5, the directory (10), ..., acme.licence (100) last
    assert [f.check for f in findings][:2] == ["configuration", "acme.broken"]
    assert findings[-1].check == "acme.licence"


def test_the_command_prints_each_problem_with_its_fix_and_exits_1(overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(write_settings(tmp_path / "s.toml", overrides)))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("ok       configuration")
    problem = next(index for index, line in enumerate(lines) if line.startswith("PROBLEM  worker "))
    assert "fix: start `didmos worker`" in lines[problem + 1]
    assert lines[-1] == "didmos doctor: 1 problem found"

    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and report["problems"] == 1


def test_the_command_names_a_bad_setting_and_exits_1(tmp_path, monkeypatch):
    settings = write_settings(tmp_path / "s.toml", {"redis": {"url": "http://x"}})
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(settings))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "PROBLEM  configuration" in result.output and "redis.url must be" in result.output
