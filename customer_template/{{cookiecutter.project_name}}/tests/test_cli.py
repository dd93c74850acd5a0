"""The plugin as an operator sees it: `didmos plugins` and our command `didmos {{ cookiecutter.plugin_name|replace('_', '-') }}-devices`."""

import json
import os
import subprocess
import sys

from conftest import ADMIN, create_user, unique

import {{ cookiecutter.package_name }}


def didmos(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "didmos_host.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, check=check)


def test_didmos_plugins_lists_the_installed_plugin_with_its_hooks():
    rows = {row["name"]: row for row in json.loads(didmos("plugins", "--json").stdout)}
    ours = rows["{{ cookiecutter.plugin_name }}"]
    assert ours["distribution"] == "{{ cookiecutter.project_name }}"
    assert ours["version"] == {{ cookiecutter.package_name }}.__version__
    assert {"didmos_settings", "didmos_attribute_mapping", "didmos_resource_types", "didmos_blueprints",
            "didmos_ldap_pre_operation", "didmos_ldap_post_operation", "didmos_authorize",
            "didmos_task_handlers", "didmos_user_name", "didmos_cli_commands"} <= set(ours["hooks"])


def test_the_devices_command_lists_devices_from_the_directory(client, didmos_slapd):
    owner = create_user(client)
    name = unique("desk-phone")
    client.post("/scim/v2/Devices", json={"name": name, "serialNumber": "SN-7", "owner": {"value": owner["id"]}},
                headers=ADMIN)
    env = {"DIDMOS_DIRECTORY__URI": didmos_slapd.uri, "DIDMOS_DIRECTORY__BIND_PASSWORD": didmos_slapd.service_password}
    rows = json.loads(didmos("{{ cookiecutter.plugin_name|replace('_', '-') }}-devices", "--json", env=env).stdout)
    [row] = [row for row in rows if row["name"] == name]
    assert row["serialNumber"] == "SN-7" and row["owners"] == [owner["userName"]]


def test_the_devices_command_fails_cleanly_on_bad_settings():
    result = didmos("{{ cookiecutter.plugin_name|replace('_', '-') }}-devices", check=False,
                    env={"DIDMOS_{{ cookiecutter.plugin_name|upper }}__DEVICES_DN": "not a dn"})
    assert result.returncode == 2
    assert "didmos: error: invalid setting {{ cookiecutter.plugin_name }}.devices_dn must be the DN of an organizational unit" in result.stderr
