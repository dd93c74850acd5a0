"""Settings: our namespace with its defaults and validators, and our default for didmos's api.title."""

import json
import os
import subprocess
import sys

import pytest

from didmos_host.errors import ConfigError
from didmos_host.host import Host
from {{ cookiecutter.package_name }}.settings import DEFAULTS


def test_defaults_are_there_and_ours_beats_the_built_in_api_title(didmos_overrides):
    settings = Host.create(didmos_overrides).settings
    assert settings.{{ cookiecutter.plugin_name }}.devices_dn == DEFAULTS["devices_dn"]
    assert settings.{{ cookiecutter.plugin_name }}.notify_owner is True
    # didmos's own default is "didmos"; our tryfirst default wins
    assert settings.api.title == "{{ cookiecutter.customer_name }} identity management"


def test_settings_files_and_overrides_win_over_our_defaults(didmos_overrides):
    settings = Host.create({**didmos_overrides, "api": {"title": "Test IdM"},
                            "{{ cookiecutter.plugin_name }}": {"notify_owner": False}}).settings
    assert settings.api.title == "Test IdM" and settings.{{ cookiecutter.plugin_name }}.notify_owner is False


@pytest.mark.parametrize("key, value, message", [
    ("badge_pattern", "([A-Z]", "{{ cookiecutter.plugin_name }}.badge_pattern must be a regular expression"),
    ("devices_dn", "cn=devices,dc=didmos,dc=de", "{{ cookiecutter.plugin_name }}.devices_dn must be the DN of an organizational unit"),
    ("managers_group_dn", "ou=x,dc=didmos,dc=de", "{{ cookiecutter.plugin_name }}.managers_group_dn must be the DN of a group"),
    ("report_denied_user_types", "external", "{{ cookiecutter.plugin_name }}.report_denied_user_types must be a list"),
    ("notify_owner", "yes", "{{ cookiecutter.plugin_name }}.notify_owner must be of type bool"),
])
def test_a_bad_value_stops_start_up_naming_the_key_and_the_value(didmos_overrides, key, value, message):
    with pytest.raises(ConfigError, match="invalid setting") as raised:
        Host.create({**didmos_overrides, "{{ cookiecutter.plugin_name }}": {key: value}})
    assert message in raised.value.message and repr(value) in raised.value.message


def test_a_misspelt_key_of_our_namespace_is_refused(didmos_overrides):
    with pytest.raises(ConfigError, match="unknown setting '{{ cookiecutter.plugin_name }}.notify_ower'"):
        Host.create({**didmos_overrides, "{{ cookiecutter.plugin_name }}": {"notify_ower": False}})


def test_didmos_config_show_lists_our_settings_with_their_source():
    env = {**os.environ, "DIDMOS_{{ cookiecutter.plugin_name|upper }}__NOTIFY_OWNER": "false"}
    shown = subprocess.run([sys.executable, "-m", "didmos_host.cli", "config", "show", "--json"], env=env,
                           capture_output=True, text=True, check=True).stdout
    rows = {row["key"]: row for row in json.loads(shown)}
    assert rows["{{ cookiecutter.plugin_name }}.badge_pattern"]["source"] == "defaults:{{ cookiecutter.plugin_name }}"
    assert rows["{{ cookiecutter.plugin_name }}.notify_owner"]["value"] is False
    assert rows["{{ cookiecutter.plugin_name }}.notify_owner"]["source"] == "env DIDMOS_{{ cookiecutter.plugin_name|upper }}__NOTIFY_OWNER"
