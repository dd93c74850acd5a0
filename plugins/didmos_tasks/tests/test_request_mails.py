"""Mail about requests, received by a real SMTP server (aiosmtpd) on loopback, and a request filed while
redis is down: its tasks (the approver's mail, then the action and the requester's mail) run once redis
is back.

Against the slapd and redis of this module (conftest.py; this module stops its redis), the API in
process and real burst workers (``run_worker``; ``worker.mode`` ``simple``: jobs in this process).
"""

from __future__ import annotations

import email
import email.policy
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller

from didmos_host.app import create_app
from didmos_host.host import Host
from didmos_host.servers import free_port
from didmos_host.tasks import run_worker
from didmos_host.testing import SUPERADMIN_ID, SUPERADMIN_PASSWORD, basic_auth
from didmos_tasks.requests import sweep

API = "/tasks/v1/requests"
ADMIN = basic_auth(SUPERADMIN_ID, SUPERADMIN_PASSWORD)


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        message.rcpt_tos = list(envelope.rcpt_tos)
        self.messages.append(message)
        return "250 Message accepted"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for message in self.messages if message.rcpt_tos == [address]]


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox, port = Inbox(), free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture(scope="module")
def settings(overrides, smtp) -> dict:
    """This module's slapd and redis, mail to the test SMTP server, a fast PDP refresh."""
    return {**overrides, "pdp": {"refresh_seconds": 0.2},
            "notify": {"enabled": True, "host": "127.0.0.1", "port": smtp[1], "security": "none",
                       "from_address": "ACME IdM <idm@acme.example>", "timeout_seconds": 5}}


@dataclass
class User:
    id: str
    dn: str
    mail: str
    auth: dict


@pytest.fixture
def make_user(slapd, host):
    """``make_user(name, *roles, manager=None)``: a user with a mail address, standarduser and ``roles``."""
    conn = slapd.admin_connection()
    people, rbac = host.settings.ldap.people_dn, host.settings.pdp.rbac_dn

    def make(name: str, *roles: str, manager: User | None = None) -> User:
        user_id, password = str(uuid.uuid4()), secrets.token_urlsafe(12)
        dn, mail = f"didmosUUID={user_id},{people}", f"{name.lower().replace(' ', '.')}-{user_id[:6]}@example.org"
        attrs = [("objectClass", [b"inetOrgPerson", b"didmosObject", b"didmosPerson", b"didmosRoleHolder"]),
                 ("uid", [f"m{user_id[:8]}".encode()]), ("cn", [name.encode()]), ("sn", [b"x"]),
                 ("displayName", [name.encode()]), ("mail", [mail.encode()]), ("didmosUUID", [user_id.encode()]),
                 ("didmosTenant", [b"default-tenant"]), ("userPassword", [password.encode()]),
                 ("didmosRoleAssignment", [f"cn={role},ou=roles,{rbac}".encode()
                                           for role in ("standarduser", *roles)])]
        if manager is not None:
            attrs.append(("manager", [manager.dn.encode()]))
        conn.add_s(dn, attrs)
        return User(user_id, dn, mail, basic_auth(user_id, password))

    yield make
    conn.unbind_s()


def make_app(settings, **workflows):
    app = create_app(**settings, requests={"workflows": workflows} if workflows else {})
    app.config["TESTING"] = True
    return app


def work(settings) -> None:
    """A burst worker with a host of its own until the queues are empty: the dispatcher first (queued by
    the burst worker at its start), then the actions and mails."""
    worker = Host.create(settings)
    try:
        run_worker(worker, burst=True)
    finally:
        worker.service("directory").close()


def post(client, path, auth, body, status):
    response = client.post(path, json=body, headers=auth)
    assert response.status_code == status, response.json
    return response.json


def subject(message) -> str:
    """The Subject, with the spaces a long header is folded at taken out again."""
    return " ".join(str(message["Subject"]).split())


def text(message) -> str:
    return message.get_body(("plain",)).get_content().replace("\r\n", "\n")


def test_approvers_are_told_at_each_level_and_the_requester_of_the_outcome(settings, smtp, make_user):
    inbox, _ = smtp
    tag = uuid.uuid4().hex[:6]
    app = make_app(settings, **{"assign-role": [{"approvers": {"attribute": "manager"}},
                                                {"approvers": {"role": f"boss-{tag}"}}]})
    client, rbac = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    rbac.add_role(f"auditor-{tag}")
    rbac.add_role(f"boss-{tag}")
    manager, boss = make_user("Maria Manager"), make_user("Bob Boss", f"boss-{tag}")
    user = make_user("Uma User", manager=manager)

    filed = post(client, API, user.auth, {"kind": "assign-role", "payload": {"role": f"auditor-{tag}"},
                                          "comment": "quarterly audit"}, 201)
    work(settings)
    [pending] = inbox.to(manager.mail)
    assert subject(pending) == f"Approval needed: {filed['summary']}"
    body = text(pending)
    assert body.startswith("Hello Maria Manager,\n") and "Uma User asks for: " in body
    assert "Reason given: quarterly audit" in body and f"The request {filed['id']} waits for your decision." in body
    assert inbox.to(boss.mail) == []  # level 2 has not started

    post(client, f"{API}/{filed['id']}/approve", manager.auth, {"comment": "fine"}, 200)
    work(settings)
    [next_level] = inbox.to(boss.mail)
    assert subject(next_level) == f"Approval needed: {filed['summary']}"
    assert text(next_level).startswith("Hello Bob Boss,\n")

    post(client, f"{API}/{filed['id']}/approve", boss.auth, {}, 200)
    work(settings)  # the action, then the mail it causes
    assert client.get(f"{API}/{filed['id']}", headers=user.auth).json["state"] == "done"
    [decided] = inbox.to(user.mail)
    assert subject(decided) == f"Your request was carried out: {filed['summary']}"
    assert text(decided).startswith("Hello Uma User,\n")
    # one mail each, however often the workers ran
    work(settings)
    assert (len(inbox.to(manager.mail)), len(inbox.to(boss.mail)), len(inbox.to(user.mail))) == (1, 1, 1)


def test_the_requester_is_told_of_a_decline_with_who_and_why(settings, smtp, make_user):
    inbox, _ = smtp
    tag = uuid.uuid4().hex[:6]
    app = make_app(settings)
    app.extensions["didmos"].service("rbac_admin").add_role(f"payroll-{tag}")
    manager = make_user("Mia Manager")
    user = make_user("Ulf User", manager=manager)
    filed = post(app.test_client(), API, user.auth, {"kind": "assign-role", "payload": {"role": f"payroll-{tag}"}}, 201)
    post(app.test_client(), f"{API}/{filed['id']}/decline", manager.auth, {"comment": "not in your job"}, 200)
    work(settings)
    [declined] = inbox.to(user.mail)
    assert subject(declined) == f"Your request was declined: {filed['summary']}"
    body = text(declined)
    assert f"was declined by Mia Manager." in body and "Comment: not in your job" in body


def test_escalation_tells_the_new_approvers_and_expiry_the_requester(settings, smtp, make_user, slapd):
    inbox, _ = smtp
    tag = uuid.uuid4().hex[:6]
    app = make_app(settings, **{"join-group": [{"approvers": {"role": f"team-{tag}"}, "expire_seconds": 1,
                                                "escalate_to": {"role": f"chief-{tag}"}}]})
    host = app.extensions["didmos"]
    host.service("rbac_admin").add_role(f"team-{tag}")
    host.service("rbac_admin").add_role(f"chief-{tag}")
    lead, chief, user = make_user("Lea Lead", f"team-{tag}"), make_user("Carl Chief", f"chief-{tag}"), make_user("Ute")
    group_id = str(uuid.uuid4())
    slapd.admin_connection().add_s(f"didmosUUID={group_id},{host.settings.ldap.groups_dn}", [
        ("objectClass", [b"didmosGroup", b"didmosObject"]), ("didmosUUID", [group_id.encode()]),
        ("cn", [f"mg-{group_id[:8]}".encode()])])
    filed = post(app.test_client(), API, user.auth, {"kind": "join-group", "payload": {"group": group_id}}, 201)

    time.sleep(1.5)
    assert filed["id"] in sweep(host)["escalated"]
    time.sleep(1.5)
    assert filed["id"] in sweep(host)["expired"]
    work(settings)
    assert [subject(m) for m in inbox.to(lead.mail)] == [f"Approval needed: {filed['summary']}"]
    assert [subject(m) for m in inbox.to(chief.mail)] == [f"Approval needed: {filed['summary']}"]
    [expired] = inbox.to(user.mail)
    assert subject(expired) == f"Your request was expired (nobody decided in time): {filed['summary']}"


@contextmanager
def redis_stopped(own_redis):
    own_redis.stop()
    try:
        yield
    finally:
        own_redis.start()


def test_a_request_filed_and_approved_while_redis_is_down_is_carried_out_once_redis_is_back(
        settings, smtp, make_user, own_redis):
    inbox, _ = smtp
    tag = uuid.uuid4().hex[:6]
    app = make_app(settings, **{"assign-role": [{"approvers": {"attribute": "manager"}}]})
    client, rbac = app.test_client(), app.extensions["didmos"].service("rbac_admin")
    rbac.add_role(f"clerk-{tag}")
    manager = make_user("Max Manager")
    user = make_user("Udo User", manager=manager)
    outbox = app.extensions["didmos"].service("outbox")

    with redis_stopped(own_redis):
        filed = post(client, API, user.auth, {"kind": "assign-role", "payload": {"role": f"clerk-{tag}"}}, 201)
        approved = post(client, f"{API}/{filed['id']}/approve", manager.auth, {}, 200)
        assert approved["state"] == "approved"
        # the approver's mail and the action are in the outbox, waiting for redis
        waiting = {task.name for task in outbox.list(state="pending")}
        assert {"didmos.notify.email", "didmos.requests.act"} <= waiting

    work(settings)  # redis is back (empty): the dispatcher queues the pending tasks, the worker runs them

    done = client.get(f"{API}/{filed['id']}", headers=user.auth).json
    assert done["state"] == "done", done
    assert f"clerk-{tag}" in rbac.assigned_roles(user.dn)
    assert [subject(m) for m in inbox.to(manager.mail)] == [f"Approval needed: {filed['summary']}"]
    assert [subject(m) for m in inbox.to(user.mail)] == [f"Your request was carried out: {filed['summary']}"]
    assert not [task for task in outbox.list() if task.state in ("pending", "queued", "running", "failed")]
