"""Settings: layering, validation messages, unknown keys, `didmos config show`."""

import os
import subprocess
import sys
import types

import pytest
from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.config import MASK, describe
from didmos_host.errors import ConfigError
from didmos_host.host import Host
from didmos_host.records import SettingsNamespace


def owner(**defaults):
    """A plugin owning namespace ``demo``, as a built-in would (trylast)."""
    module = types.ModuleType("demo_owner")
    module.didmos_settings = hookimpl(trylast=True)(lambda: [SettingsNamespace(
        name="demo",
        defaults={"size": 10, "name": "builtin", "color": "red", "nested": {"depth": 1}, "api_password": "", **defaults},
        validators=(Validator("demo.size", is_type_of=int, gte=1), Validator("demo.name", is_type_of=str)),
    )])
    return module


def customer(**defaults):
    module = types.ModuleType("demo_customer")
    module.didmos_settings = hookimpl(tryfirst=True)(lambda: [SettingsNamespace(name="demo", defaults=defaults)])
    return module


@pytest.fixture
def settings_file(tmp_path, monkeypatch):
    def write(text):
        path = tmp_path / f"settings{len(list(tmp_path.iterdir()))}.toml"
        path.write_text(text)
        existing = os.environ.get("DIDMOS_SETTINGS_FILES")
        monkeypatch.setenv("DIDMOS_SETTINGS_FILES", f"{existing}:{path}" if existing else str(path))
        return path

    return write


def test_layers_from_defaults_to_overrides(settings_file, monkeypatch):
    plugins = [owner(), customer(name="customer", color="blue", size=20)]
    settings = Host.create(extra_plugins=plugins).settings
    assert (settings.demo.size, settings.demo.name, settings.demo.color) == (20, "customer", "blue")

    first = settings_file("[demo]\nsize = 30\ncolor = 'green'\n")
    settings_file("[demo]\ncolor = 'black'\n")  # a later file wins over an earlier one
    monkeypatch.setenv("DIDMOS_DEMO__SIZE", "40")  # env wins over files, parsed as TOML (an int)
    settings = Host.create(extra_plugins=plugins).settings
    assert (settings.demo.size, settings.demo.name, settings.demo.color) == (40, "customer", "black")
    assert settings.demo.nested.depth == 1

    host = Host.create({"demo": {"size": 50}}, extra_plugins=plugins)
    assert host.settings.demo.size == 50
    sources = {key: source for key, _, source in describe(host.settings, host.namespaces)}
    assert sources["demo.size"] == "overrides"
    assert sources["demo.name"] == "defaults:demo_customer"
    assert sources["demo.nested.depth"] == "defaults:demo_owner"
    assert sources["demo.color"].startswith("file ") and sources["demo.color"].endswith(".toml")
    assert str(first) not in sources["demo.color"]


def test_wrong_type_names_the_key(monkeypatch):
    monkeypatch.setenv("DIDMOS_DEMO__SIZE", "'many'")
    with pytest.raises(ConfigError) as excinfo:
        Host.create(extra_plugins=[owner()])
    assert "demo.size" in str(excinfo.value).lower() and "int" in str(excinfo.value)


def test_value_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match=r"(?i)demo\.size"):
        Host.create({"demo": {"size": 0}}, extra_plugins=[owner()])


def test_unknown_key_in_a_known_namespace_is_rejected(monkeypatch):
    monkeypatch.setenv("DIDMOS_DEMO__SIEZ", "3")
    with pytest.raises(ConfigError) as excinfo:
        Host.create(extra_plugins=[owner()])
    message = str(excinfo.value)
    assert "demo.siez" in message and "DIDMOS_DEMO__SIEZ" in message and "demo.size" in message


def test_host_settings_are_validated():
    with pytest.raises(ConfigError, match=r"(?i)api\.port"):
        Host.create({"api": {"port": "eighty"}})


def test_two_owners_of_one_namespace_are_rejected():
    with pytest.raises(ConfigError, match="claimed by both"):
        Host.create(extra_plugins=[owner(), types.SimpleNamespace(didmos_settings=hookimpl(lambda: [
            SettingsNamespace(name="demo", validators=(Validator("demo.size", is_type_of=int),))]))])


def test_missing_settings_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml"):
        Host.create()


def test_broken_settings_file_is_named(settings_file):
    path = settings_file("[demo\nsize = ")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        Host.create(extra_plugins=[owner()])
    assert path.exists()


def test_describe_masks_secrets():
    host = Host.create({"demo": {"api_password": "hunter2", "color": "secret-ish"},
                        "directory": {"superadmin_password": "s3cret"}},
                       extra_plugins=[owner(), types.SimpleNamespace(didmos_settings=hookimpl(lambda: [
                           SettingsNamespace(name="demo", secrets=("color",))]))])
    values = {key: value for key, value, _ in describe(host.settings, host.namespaces)}
    assert values["demo.api_password"] == MASK  # named like a password
    assert values["demo.color"] == MASK  # declared secret
    assert values["directory.superadmin_password"] == MASK
    assert values["demo.name"] == "builtin"
    assert values["directory.uri"].startswith("ldap://")


def run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "didmos_host.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **env})


def test_cli_config_show_prints_values_and_sources(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[directory]\nbind_password = 'topsecret'\n")
    result = run_cli("config", "show", DIDMOS_SETTINGS_FILES=str(path), DIDMOS_API__PORT="8123")
    assert result.returncode == 0, result.stderr
    lines = {line.split("=")[0].strip(): line for line in result.stdout.splitlines()}
    assert "8123" in lines["api.port"] and "env DIDMOS_API__PORT" in lines["api.port"]
    assert "topsecret" not in result.stdout and f"file {path}" in lines["directory.bind_password"]
    assert "didmos_namespaces" not in result.stdout and "undefined" not in result.stdout
    assert "defaults:didmos_ldap" in lines["ldap.people_dn"]


def test_cli_stops_with_a_message_naming_the_bad_setting():
    result = run_cli("config", "show", DIDMOS_API__PORT="'eighty'")
    assert result.returncode == 2
    assert "api.port" in result.stderr.lower() and "Traceback" not in result.stderr
    result = run_cli("config", "show", DIDMOS_LDAP__PEOPLE_DN="not a dn")
    assert result.returncode == 2 and "ldap.people_dn" in result.stderr.lower() and "must be a DN" in result.stderr


def test_masking_goes_by_the_key_name_not_by_a_word_inside_it():
    host = Host.create({"directory": {"bind_password": "x"}})
    values = {key: value for key, value, _ in describe(host.settings, host.namespaces)}
    assert values["directory.bind_password"] == MASK
    assert values["ldap.password_policy.max_failures"] == 10  # a policy, not a password
    assert values["auth.credential_cache_seconds"] == 60.0


def test_several_bad_settings_are_all_named_with_what_is_expected(monkeypatch):
    monkeypatch.setenv("DIDMOS_API__PORT", "0")
    monkeypatch.setenv("DIDMOS_API__WORKERS", "'two'")
    with pytest.raises(ConfigError) as excinfo:
        Host.create()
    message = str(excinfo.value)
    assert "api.port must be of type int, at least 1, at most 65535; got 0 (from env DIDMOS_API__PORT)" in message
    assert "api.workers must be of type int, at least 1; got 'two'" in message


def test_an_invalid_toml_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "broken.toml"
    path.write_text("[api\nport = 1\n")
    monkeypatch.setenv("DIDMOS_SETTINGS_FILES", str(path))
    with pytest.raises(ConfigError, match=f"settings file {path} is not valid TOML"):
        Host.create()
