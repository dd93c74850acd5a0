"""A task handler that sends a notification: tell a device's new owner by email.

The post interceptor (``rules.submit_owner_notices``) stores the task in didmos's outbox while the
API request that assigned the device is answered; ``didmos worker`` runs it later, and the email it
queues is sent by the worker too (the task ``didmos.notify.email`` of didmos-tasks, retried while the
mail server is down). The template is ``mail/{{ cookiecutter.plugin_name }}-device-assigned/`` (Jinja2).
"""

from __future__ import annotations

from didmos_host.records import TaskHandler

DEVICE_ASSIGNED = "{{ cookiecutter.plugin_name }}.device-assigned"
TEMPLATE = "{{ cookiecutter.plugin_name }}-device-assigned"


def device_assigned(payload: dict, context) -> dict:
    """Mail the owner of ``payload["device"]`` if it is still ``payload["owner"]``.

    Idempotent in what it decides: a device that is gone or has changed hands since, or an owner
    without a mail address, sends nothing. A run after a worker crash may queue the mail again.
    """
    from {{ cookiecutter.package_name }}.rules import same_dn

    directory = context.host.service("directory")
    device = directory.get(payload["device"], ["cn", "serialNumber", "owner"])
    if device is None:
        return {"sent": False, "reason": "the device no longer exists"}
    if not any(same_dn(owner, payload["owner"]) for owner in device.values("owner")):
        return {"sent": False, "reason": "the device has another owner now"}
    owner = directory.get(payload["owner"], ["mail", "displayName", "cn"])
    address = owner.first("mail") if owner is not None else None
    if not address:
        return {"sent": False, "reason": "the owner has no mail address"}
    job_id = context.host.service("notifications").notify(
        TEMPLATE, address, name=owner.first("displayName") or owner.first("cn") or address,
        device=device.first("cn"), serial=device.first("serialNumber") or "unknown")
    # None: notify.enabled is false, or redis was unreachable (logged by didmos-tasks)
    return {"sent": job_id is not None, "notification": job_id, "to": address}


HANDLERS = [
    TaskHandler(name=DEVICE_ASSIGNED, function=device_assigned, queue="{{ cookiecutter.plugin_name }}",
                retries=3, retry_intervals=(10, 60, 300), timeout=60),
]
