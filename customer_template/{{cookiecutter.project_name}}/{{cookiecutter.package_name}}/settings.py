"""The plugin's settings: the namespace ``{{ cookiecutter.plugin_name }}``, and new defaults for didmos's own.

Operators change them like any didmos setting, later sources winning (docs/settings.md of didmos):
``/etc/didmos/settings.toml``, files in ``DIDMOS_SETTINGS_FILES``, then environment variables::

    [{{ cookiecutter.plugin_name }}]
    badge_pattern = "^[A-Z]{3}[0-9]{5}$"

    DIDMOS_{{ cookiecutter.plugin_name|upper }}__NOTIFY_OWNER=false

``didmos config show`` prints every value with where it came from.
"""

from __future__ import annotations

import re

import ldap.dn
from dynaconf import Validator

from didmos_host.records import SettingsNamespace

NAMESPACE = "{{ cookiecutter.plugin_name }}"

DEFAULTS = {
    "devices_dn": "ou=devices,ou=data,ou=default-tenant,dc=didmos,dc=de",
    "managers_group_dn": "cn={{ cookiecutter.plugin_name|replace('_', '-') }}-device-managers,ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de",
    "badge_pattern": "^[A-Z]{2}-[0-9]{4}$",
    "report_denied_user_types": ["external"],
    "notify_owner": True,
}

DESCRIPTIONS = {
    "devices_dn": "Where Device entries live (created by `didmos directory init`).",
    "managers_group_dn": "Members of this group may read the device report, whatever their roles.",
    "badge_pattern": "Regular expression every badgeNumber must match after it is upper-cased.",
    "report_denied_user_types": "userTypes that may never read the device report, not even with a role that allows it.",
    "notify_owner": "Mail a device's new owner when a device is assigned (needs notify.enabled).",
}


def _is_dn(value) -> bool:
    return isinstance(value, str) and bool(value) and ldap.dn.is_dn(value)


def _starts_with(attribute: str):
    """A DN whose first RDN is ``attribute=...`` (the entry is created with that naming attribute)."""
    return lambda value: _is_dn(value) and ldap.dn.str2dn(value)[0][0][0].lower() == attribute


def _is_pattern(value) -> bool:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return isinstance(value, str) and bool(value)


def _is_list_of_words(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and item for item in value)


def namespaces() -> list[SettingsNamespace]:
    """Our namespace (we declare its validators, so we own it) and new defaults for didmos's ``api``."""
    return [
        SettingsNamespace(
            name=NAMESPACE,
            defaults=DEFAULTS,
            validators=(
                # Each message names the key, says what is right and shows what was given: the host
                # prints it when the API, the worker or any command starts with a bad value.
                Validator(f"{NAMESPACE}.devices_dn", condition=_starts_with("ou"), messages={
                    "condition": "{name} must be the DN of an organizational unit, an LDAP DN starting with "
                                 "'ou=', such as 'ou=devices,ou=data,ou=default-tenant,dc=didmos,dc=de', got {value!r}"}),
                Validator(f"{NAMESPACE}.managers_group_dn", condition=_starts_with("cn"), messages={
                    "condition": "{name} must be the DN of a group, starting with 'cn=', such as "
                                 "'cn=device-managers,ou=groups,ou=data,ou=default-tenant,dc=didmos,dc=de', got {value!r}"}),
                Validator(f"{NAMESPACE}.badge_pattern", condition=_is_pattern, messages={
                    "condition": "{name} must be a regular expression such as '^[A-Z]+-[0-9]+$', got {value!r}"}),
                Validator(f"{NAMESPACE}.report_denied_user_types", condition=_is_list_of_words, messages={
                    "condition": "{name} must be a list of userTypes such as ['external'], got {value!r}"}),
                Validator(f"{NAMESPACE}.notify_owner", is_type_of=bool),
            ),
            descriptions=DESCRIPTIONS,
        ),
        # A namespace didmos owns: only defaults, no validators. Settings files and environment
        # variables still win over this default.
        SettingsNamespace(name="api", defaults={"title": "{{ cookiecutter.customer_name }} identity management"}),
    ]
