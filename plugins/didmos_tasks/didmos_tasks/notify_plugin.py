"""The didmos_tasks_notify plugin: email notifications over SMTP (:mod:`didmos_tasks.notify`).

A plugin of its own in the didmos-tasks distribution, so that a deployment that sends mail some other way
turns it off by name (``DIDMOS_DISABLE_PLUGINS=didmos_tasks_notify``) and keeps the other tasks.
It owns the settings namespace ``notify``, provides the service ``"notifications"``, registers the task
``didmos.notify.email`` and offers the built-in templates (``trylast``, so customer plugins override them).
"""

from __future__ import annotations

from pathlib import Path

from dynaconf import Validator

from didmos_host import hookimpl
from didmos_host.records import SettingsNamespace, TaskHandler

DEFAULTS = {
    # Off until a mail server is configured: otherwise every notification would fail and be retried.
    "enabled": False,
    "host": "localhost",
    "port": 0,
    "security": "starttls",
    "username": "",
    "password": "",
    "from_address": "",
    "timeout_seconds": 30.0,
    "tls_ca_file": "",
}
SECURITY = ("none", "starttls", "tls")


def _is_address(value) -> bool:
    from didmos_tasks.notify import NotificationError, parse_address

    try:
        parse_address(value)
    except NotificationError:
        return False
    return True


@hookimpl(trylast=True)
def didmos_settings():
    return [SettingsNamespace(
        name="notify",
        defaults=DEFAULTS,
        validators=(
            Validator("notify.enabled", is_type_of=bool),
            Validator("notify.host", is_type_of=str, len_min=1),
            Validator("notify.port", is_type_of=int, gte=0, lte=65535),
            Validator("notify.security", is_in=SECURITY),
            Validator("notify.username", "notify.password", "notify.tls_ca_file", is_type_of=str),
            Validator("notify.timeout_seconds", is_type_of=(int, float), gt=0),
            Validator("notify.from_address", condition=lambda v: v == "" or _is_address(v), messages={
                "condition": "{name} must be an email address such as 'idm@example.org' or "
                             "'ACME IdM <idm@example.org>', got {value!r}"}),
            Validator("notify.from_address", condition=bool, when=Validator("notify.enabled", eq=True), messages={
                "condition": "{name} must be set when notify.enabled is true (the sender of every "
                             "notification, such as 'idm@example.org'), got {value!r}"}),
            # A password must not cross the network in clear; servers refuse AUTH before TLS anyway.
            Validator("notify.security", condition=lambda v: v != "none",
                      when=Validator("notify.username", len_min=1), messages={
                          "condition": "{name} must be 'starttls' or 'tls' when notify.username is set, so "
                                       "that the password is not sent in clear, got {value!r}"}),
            Validator("notify.tls_ca_file", condition=lambda v: v == "" or Path(v).is_file(), messages={
                "condition": "{name} must be empty (the system's CAs) or a readable file of CA "
                             "certificates in PEM, got {value!r}"}),
        ),
        secrets=("password",),
        descriptions={
            "enabled": "Send notifications. When false, `notify()` checks its input and queues nothing.",
            "host": "Name or address of the SMTP server; its certificate must match it.",
            "port": "TCP port of the SMTP server; 0: 25, 587 or 465 after `security`.",
            "security": "`none` (plain SMTP), `starttls` (upgrade with STARTTLS, required) or `tls` "
                        "(TLS from the first byte, SMTPS).",
            "username": "User name to log in with (SMTP AUTH); empty: no login. Needs `starttls` or `tls`.",
            "password": "Password to log in with.",
            "from_address": "Sender of every notification (`From`), such as `ACME IdM <idm@example.org>`; "
                            "required when `enabled`.",
            "timeout_seconds": "Timeout of connecting and of each SMTP command, in seconds.",
            "tls_ca_file": "CA certificates (PEM) that sign the server's certificate; empty: the system's.",
        },
    )]


@hookimpl(trylast=True)
def didmos_services(host):
    from didmos_tasks.notify import Notifications

    host.provide("notifications", Notifications(host))


@hookimpl(trylast=True)
def didmos_task_handlers():
    from didmos_tasks.notify import HANDLER_NAME, QUEUE, send_email

    # Back-off of about three hours in all: a mail server restarted or fixed within that gets the mail.
    return [TaskHandler(name=HANDLER_NAME, function=send_email, queue=QUEUE, retries=5,
                        retry_intervals=(30, 120, 600, 1800, 7200), timeout=300)]


@hookimpl(trylast=True)
def didmos_notification_template_dirs():
    from didmos_tasks.notify import TEMPLATE_DIR

    return [TEMPLATE_DIR]
