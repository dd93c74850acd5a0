"""The task handler and its notification: a device assigned through the API mails its owner, sent by a
real rq worker to a real SMTP server (aiosmtpd) on loopback."""

import email
import email.policy
from contextlib import contextmanager

from aiosmtpd.controller import Controller
from conftest import ADMIN, create_user, unique

from didmos_host.servers import free_port
from didmos_host.tasks import run_worker


class Inbox:
    """Keeps every message aiosmtpd receives."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted"


@contextmanager
def smtp_server():
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def test_the_new_owner_of_a_device_gets_a_mail(make_app):
    with smtp_server() as (inbox, port):
        app = make_app(notify={"enabled": True, "host": "127.0.0.1", "port": port, "security": "none",
                               "from_address": "IdM <idm@example.org>"})
        client = app.test_client()
        address = f"{unique('owner')}@example.org"
        owner = create_user(client, name={"givenName": "Olga", "familyName": "Owner"},
                            emails=[{"value": address, "type": "work"}])
        name = unique("laptop")
        response = client.post("/scim/v2/Devices", json={"name": name, "serialNumber": "SN-42",
                                                         "owner": {"value": owner["id"]}}, headers=ADMIN)
        assert response.status_code == 201
        host = app.extensions["didmos"]
        # the worker runs our task, which queues the mail, then the mail task itself (each in a fork);
        # only our queue and the mail queue: didmos's periodic tasks are not what this test is about
        run_worker(host, burst=True, queues=["{{ cookiecutter.plugin_name }}", "notify"])

        ours = [m for m in inbox.messages if m["Subject"] == f"{name} is yours now"]
        assert len(ours) == 1, [m["Subject"] for m in inbox.messages]
        assert ours[0]["To"] == address
        text = ours[0].get_body(("plain",)).get_content()
        assert "Hello Olga Owner," in text and f"the device {name} (serial number SN-42)" in text
        [task] = [t for t in host.service("outbox").list()
                  if t.name == "{{ cookiecutter.plugin_name }}.device-assigned" and t.payload["device"].startswith(f"didmosUUID={response.get_json()['id']},")]
        assert task.state == "done" and task.result["sent"] is True and task.result["to"] == address


def test_an_owner_without_mail_is_not_mailed(make_app, didmos_overrides):
    from types import SimpleNamespace

    from didmos_host.host import Host
    from {{ cookiecutter.package_name }}.tasks import device_assigned

    client = make_app().test_client()
    owner = create_user(client)
    device = client.post("/scim/v2/Devices", json={"name": unique("pager"), "owner": {"value": owner["id"]}},
                         headers=ADMIN).get_json()
    host = Host.create(didmos_overrides)
    payload = {"device": f"didmosUUID={device['id']},{host.settings.{{ cookiecutter.plugin_name }}.devices_dn}",
               "owner": f"didmosUUID={owner['id']},{host.settings.ldap.people_dn}"}
    result = device_assigned(payload, SimpleNamespace(host=host, job_id="test"))
    assert result == {"sent": False, "reason": "the owner has no mail address"}
    result = device_assigned({**payload, "owner": f"didmosUUID=someone-else,{host.settings.ldap.people_dn}"},
                             SimpleNamespace(host=host, job_id="test"))
    assert result == {"sent": False, "reason": "the device has another owner now"}
