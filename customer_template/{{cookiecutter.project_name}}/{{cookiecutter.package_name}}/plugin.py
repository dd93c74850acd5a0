"""Every hook of {{ cookiecutter.customer_name }}'s didmos plugin, one example of each kind of override.

didmos calls these functions (docs/hooks.md of didmos describes each hook). The rule for the order:
didmos's own implementations are ``trylast``; where this plugin must win over them it says
``tryfirst=True``, so the outcome never depends on the order in which plugins are installed. Hooks
where every implementation runs (votes, interceptors, registrations) need no order.

Delete what you do not need; each example is independent of the others, except that the Device
examples share ``devices.py`` and the badge examples share the schema migration.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import ldap.dn

from didmos_host import hookimpl
from didmos_host.records import DirectoryEntry, SchemaMigration
from {{ cookiecutter.package_name }} import cli, devices, mapping, rules, tasks
from {{ cookiecutter.package_name }}.settings import NAMESPACE, namespaces

HERE = Path(__file__).parent


# -- 1. settings: a namespace of our own with validators, and a new default for didmos's "api" ----------

@hookimpl(tryfirst=True)  # tryfirst: our default for api.title beats didmos's built-in one
def didmos_settings():
    return namespaces()


# -- 2. the directory: our LDAP schema (a migration) and the entries we need ----------------------------

@hookimpl
def didmos_directory_migrations():
    # Applied once each, in (order, name) order, after didmos's own (order 10 to 50).
    return [SchemaMigration(name=f"{NAMESPACE}.{path.stem}", ldif=path, order=100)
            for path in sorted((HERE / "schema").glob("*.ldif"))]


@hookimpl
def didmos_directory_entries(settings):
    ours = settings[NAMESPACE]
    # the settings' validators made sure both DNs start with the attribute named here (ou=, cn=)
    devices_rdn, group_rdn = (ldap.dn.str2dn(dn)[0][0][1] for dn in (ours.devices_dn, ours.managers_group_dn))
    managers_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "didmos:{{ cookiecutter.plugin_name }}:device-managers"))
    return [
        DirectoryEntry(dn=ours.devices_dn, attributes={"objectClass": ["organizationalUnit"], "ou": [devices_rdn]}),
        # A SCIM Group (didmosGroup): add members with PATCH /scim/v2/Groups/<id>, as any group.
        DirectoryEntry(
            dn=ours.managers_group_dn,
            attributes={"objectClass": ["didmosGroup", "didmosObject"], "didmosUUID": [managers_id],
                        "cn": [group_rdn],
                        "description": ["May read the device report"]},
            announce=f"group {ours.managers_group_dn} created (members may read the device report)",
        ),
    ]


# -- 3. attribute mapping: rename a User attribute, add a custom one; map our own resource type ---------

@hookimpl(wrapper=True)  # a wrapper edits whatever mapping wins instead of replacing it
def didmos_attribute_mapping(resource_type):
    found = yield
    if resource_type.name == "User" and found is not None:
        return mapping.user_mapping(found)
    return found


@hookimpl(tryfirst=True, specname="didmos_attribute_mapping")  # a second implementation of the same hook
def device_mapping(resource_type):
    return devices.DEVICE_MAPPING if resource_type.name == devices.DEVICE.name else None


# -- 4. a new resource type (served at /scim/v2/Devices) and an endpoint of our own ---------------------

@hookimpl
def didmos_resource_types():
    return [devices.DEVICE]


@hookimpl
def didmos_blueprints(app):
    return [devices.blueprint]


# -- 5. pre-LDAP interceptor: change (upper-case) or reject (pattern) every badge number written --------

@hookimpl(tryfirst=True)  # before other interceptors, so they see the value as it will be stored
def didmos_ldap_pre_operation(operation, actor):
    rules.check_badges(operation)


# -- 6. post interceptor: a device got an owner, so store a task that mails the owner -------------------

@hookimpl
def didmos_ldap_post_operation(operation, result, actor):
    rules.submit_owner_notices(operation, actor)


# -- 7. authorization vote: who may read the device report ----------------------------------------------

@hookimpl
def didmos_authorize(host, actor, action):
    return rules.vote_on_report(host, actor, action)


# -- 8. a task handler, and the mail template it sends ---------------------------------------------------

@hookimpl
def didmos_task_handlers():
    return tasks.HANDLERS


@hookimpl(tryfirst=True)  # tryfirst: a template of ours with a built-in's name would replace it
def didmos_notification_template_dirs():
    return [HERE / "mail"]


# -- 9. a replaced default: the userName of users created without one ------------------------------------

@hookimpl(tryfirst=True)  # first result wins: ours, unless we return None (then didmos's user123x)
def didmos_user_name(resource_type, attributes, attempt):
    if resource_type.name != "User":
        return None
    return rules.user_name(attributes, attempt)


# -- 10. an extra command: didmos {{ cookiecutter.plugin_name|replace('_', '-') }}-devices -------------------

@hookimpl
def didmos_cli_commands():
    return [cli.devices]
