"""The customer plugin template (customer_template/): baked with cookiecutter, installed with pip into a
throwaway virtual environment beside didmos (never into this one), its own tests run there, and every
override checked through the HTTP API of ``didmos serve``, the CLI and the directory of that
environment. Bad answers are refused with a message naming them, and nothing is baked."""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import time
from pathlib import Path

import ldap
import ldap.sasl
import pytest
import requests
from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

from didmos_host.servers import RedisServer, free_port, stop_process
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "customer_template"
# Not the template's defaults: a name with a space and a pre-release version show that every derived
# name (plugin globex_corp, distribution globex-corp-didmos, package globex_corp_didmos, LDAP prefix
# globexcorp) is rendered where it belongs.
ANSWERS = {"customer_name": "Globex Corp", "version": "2.3.0rc1", "author_email": "it@globex.example"}
PLUGIN, DISTRIBUTION, PREFIX = "globex_corp", "globex-corp-didmos", "globexcorp"
ADMIN = (SUPERADMIN_ID, SUPERADMIN_PASSWORD)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without didmos settings of its own (DIDMOS_SETTINGS_FILES, ...), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIDMOS_") and key != "PYTHONPATH"}
    return {**env, **extra}


def run(*command, env=None, cwd=None, timeout=300) -> str:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout,
                            env=env or clean_env(), cwd=cwd)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("baked")
    return Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output), extra_context=ANSWERS))


@pytest.fixture(scope="module")
def python(baked, tmp_path_factory) -> Path:
    """The python of a fresh virtual environment that sees didmos's packages (through a .pth file that
    adds this environment's site-packages, editable installs included) and has the baked project
    installed by pip on its own: as `pip install` into the didmos environment would, without touching it."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    [purelib] = (venv / "lib").glob("python*/site-packages")
    (purelib / "didmos-beside.pth").write_text(
        "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()))
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", baked)
    return python


def test_the_template_bakes_a_project_with_every_name_rendered(baked):
    assert baked.name == DISTRIBUTION
    package = baked / f"{PLUGIN}_didmos"
    assert (package / "schema" / f"0001-{PLUGIN}-schema.ldif").is_file()
    assert (package / "mail" / f"{PLUGIN}-device-assigned" / "body.txt").read_text().startswith(
        '{% extends "_layout.txt" %}')  # mail templates are copied, not rendered by cookiecutter
    pyproject = (baked / "pyproject.toml").read_text()
    assert f'{PLUGIN} = "{PLUGIN}_didmos.plugin"' in pyproject and 'version = "2.3.0rc1"' in pyproject
    assert '"didmos-host>=0.1,<0.2"' in pyproject
    assert "{{" not in "".join(p.read_text() for p in baked.rglob("*.py"))


@pytest.fixture(scope="module")
def own_tests(baked, python, tmp_path_factory):
    """The baked project's own test suite, started in the background (it brings its own slapd and
    redis), so that it runs while the API is checked; its test waits for it."""
    log = tmp_path_factory.mktemp("own-tests") / "pytest.log"
    with open(log, "w") as output:
        process = subprocess.Popen([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=baked,
                                   stdout=output, stderr=subprocess.STDOUT, env=clean_env())
    yield process, log
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture
def own_redis(tmp_path):
    """A redis of this test's own: its worker's periodic tasks must not land in the session's queues."""
    server = RedisServer(tmp_path / "redis", port=free_port(), persistence=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def served(python, didmos_own_overrides, own_redis, tmp_path):
    """``didmos serve`` of the throwaway environment, on a directory and a redis of this module's own."""
    directory, redis_url = didmos_own_overrides["directory"], own_redis.url
    env = clean_env(DIDMOS_DIRECTORY__URI=directory["uri"], DIDMOS_DIRECTORY__CONFIG_URI=directory["config_uri"],
                    DIDMOS_DIRECTORY__BIND_PASSWORD=directory["bind_password"],
                    DIDMOS_DIRECTORY__SUPERADMIN_PASSWORD=directory["superadmin_password"],
                    DIDMOS_REDIS__URL=redis_url)
    # The directory was initialised without the plugin: `didmos directory init` adds what it declares,
    # as after installing the plugin into a running installation.
    init = run(python, "-m", "didmos_host.cli", "directory", "init", env=env)
    assert f"{PLUGIN}.0001-{PLUGIN}-schema" in init and "device-managers" in init
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as output:
        server = subprocess.Popen([str(python), "-m", "didmos_host.cli", "serve", "--port", str(port), "--workers", "1"],
                                  env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, f"didmos serve did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield url, env, directory["config_uri"]
    finally:
        stop_process(server, 20)


def test_every_override_takes_effect_in_the_installed_didmos(python, own_tests, served):
    url, env, config_uri = served
    scim = f"{url}/scim/v2"

    # the plugin is loaded from its entry point, with its distribution's version
    rows = {row["name"]: row for row in json.loads(run(python, "-m", "didmos_host.cli", "plugins", "--json", env=env))}
    assert rows[PLUGIN]["distribution"] == DISTRIBUTION and rows[PLUGIN]["version"] == "2.3.0rc1"

    # settings: our tryfirst default of api.title beats the built-in one
    openapi = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert openapi["info"]["title"] == "Globex Corp identity management"

    # the replaced userName generator (tryfirst) wins over the built-in one; the mapping renames
    # nickName to callName and adds badgeNumber; the pre-LDAP interceptor upper-cases the badge
    created = requests.post(f"{scim}/Users", auth=ADMIN, timeout=10, json={
        "name": {"givenName": "Zoë", "familyName": "Ng"}, "callName": "Zo", "badgeNumber": "gc-1234",
        "emails": [{"value": "zoe.ng@globex.example", "type": "work"}], "password": "Secret-123-pw"})
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["userName"] == "zoe.ng" and user["callName"] == "Zo" and user["badgeNumber"] == "GC-1234"
    assert requests.post(f"{scim}/Users", auth=ADMIN, timeout=10, json={"name": {"givenName": "Zoë", "familyName": "Ng"}}
                         ).json()["userName"] == "zoe.ng2"
    # ... and rejects a badge number that breaks the pattern: 403, nothing written
    rejected = requests.post(f"{scim}/Users", auth=ADMIN, timeout=10, json={"userName": "badge-x", "badgeNumber": "42"})
    assert rejected.status_code == 403 and "does not match" in rejected.json()["detail"]
    assert requests.get(f'{scim}/Users?filter=userName eq "badge-x"', auth=ADMIN, timeout=10).json()["totalResults"] == 0
    assert requests.post(f"{scim}/Users", auth=ADMIN, timeout=10, json={"userName": "nick", "nickName": "N"}
                         ).status_code == 400
    names = {a["name"] for a in requests.get(f"{scim}/Schemas/urn:ietf:params:scim:schemas:core:2.0:User",
                                             timeout=10).json()["attributes"]}
    assert {"badgeNumber", "callName"} <= names and "nickName" not in names

    # in LDAP: the schema migration's attribute and auxiliary class, the renamed attribute's old home
    conn = ldap.initialize(config_uri)
    conn.sasl_interactive_bind_s("", ldap.sasl.external())
    [(_, attrs)] = conn.search_s("dc=didmos,dc=de", ldap.SCOPE_SUBTREE, f"(didmosUUID={user['id']})",
                                 [f"{PREFIX}BadgeNumber", "didmosNickName", "objectClass"])
    assert attrs[f"{PREFIX}BadgeNumber"] == [b"GC-1234"] and attrs["didmosNickName"] == [b"Zo"]
    assert f"{PREFIX}Person".encode() in attrs["objectClass"]
    conn.unbind_s()

    # the new resource type at /scim/v2/Devices
    assert "Device" in {t["name"] for t in requests.get(f"{scim}/ResourceTypes", timeout=10).json()["Resources"]}
    device = requests.post(f"{scim}/Devices", auth=ADMIN, timeout=10,
                           json={"name": "laptop-1", "serialNumber": "SN-1", "owner": {"value": user["id"]}})
    assert device.status_code == 201, device.text

    # the blueprint, authorized by Host.authorize: the PDP allows the superadmin, nobody allows Zoë
    report = f"{url}/{PLUGIN}/v1/devices/report"
    assert f"/{PLUGIN}/v1/devices/report" in openapi["paths"]
    assert requests.get(report, auth=ADMIN, timeout=10).json() == {"devices": 1, "assigned": 1, "unassigned": []}
    assert requests.get(report, auth=(user["id"], "Secret-123-pw"), timeout=10).status_code == 403
    # the authorization vote: in the managers group, Zoë may
    [group] = requests.get(f'{scim}/Groups?filter=displayName eq "globex-corp-device-managers"', auth=ADMIN,
                           timeout=10).json()["Resources"]
    added = requests.patch(f"{scim}/Groups/{group['id']}", auth=ADMIN, timeout=10, json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "add", "path": "members", "value": [{"value": user["id"]}]}]})
    assert added.status_code == 200, added.text
    assert requests.get(report, auth=(user["id"], "Secret-123-pw"), timeout=10).status_code == 200

    # the post interceptor stored a task; a worker of the throwaway environment runs our handler
    [task] = [t for t in requests.get(f"{url}/tasks/v1/tasks", auth=ADMIN, timeout=10).json()
              if t["name"] == f"{PLUGIN}.device-assigned"]
    assert task["payload"]["device"].startswith(f"didmosUUID={device.json()['id']},ou=devices,")
    run(python, "-m", "didmos_host.cli", "worker", "--burst", "--queue", PLUGIN, env=env)
    done = requests.get(f"{url}/tasks/v1/tasks/{task['id']}", auth=ADMIN, timeout=10).json()
    # notify.enabled is false here: the handler ran and reports that no mail was queued
    assert done["state"] == "done" and done["result"] == {"sent": False, "notification": None,
                                                          "to": "zoe.ng@globex.example"}

    # the extra CLI command
    listed = json.loads(run(python, "-m", "didmos_host.cli", "globex-corp-devices", "--json", env=env))
    assert [(row["name"], row["serialNumber"], row["owners"]) for row in listed] == [("laptop-1", "SN-1", ["zoe.ng"])]


def test_the_baked_projects_own_tests_pass_beside_didmos(own_tests):
    process, log = own_tests
    returncode = process.wait(timeout=300)
    output = log.read_text()
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert returncode == 0, output[-8000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 30 and not re.search(r"skipped|xfail|xpass|error|failed|deselected", summary), summary


@pytest.mark.parametrize("answers, named", [
    ({"plugin_name": "2fast"}, "plugin_name '2fast'"),
    ({"plugin_name": "class"}, "plugin_name 'class'"),
    ({"plugin_name": "scim"}, "plugin_name 'scim'"),
    ({"project_name": "-acme-"}, "project_name '-acme-'"),
    ({"project_name": "didmos-extras"}, "project_name 'didmos-extras'"),
    ({"package_name": "acme-didmos"}, "package_name 'acme-didmos'"),
    ({"ldap_prefix": "acme_x"}, "ldap_prefix 'acme_x'"),
    ({"version": "one.two"}, "version 'one.two'"),
    ({"author_email": "nobody"}, "author_email 'nobody'"),
    ({"didmos_version": "0.1.2"}, "didmos_version '0.1.2'"),
    ({"oid_arc": "2.25.x"}, "oid_arc '2.25.x'"),
    ({"customer_name": 'Evil "Corp"', "plugin_name": "evil"}, "customer_name 'Evil \"Corp\"'"),
])
def test_a_bad_answer_is_refused_naming_it_and_nothing_is_baked(tmp_path, capfd, answers, named):
    with pytest.raises(FailedHookException):
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(tmp_path), extra_context=answers)
    errors = capfd.readouterr().err
    assert f"ERROR: {named} is not valid" in errors and "Nothing was generated" in errors
    assert list(tmp_path.iterdir()) == []
