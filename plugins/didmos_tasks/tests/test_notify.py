"""Email notifications: rendered, stored in the task outbox and sent by a real rq worker to a real SMTP
server (aiosmtpd) on loopback, over plain SMTP, STARTTLS with login, and TLS; retried while the server is
down or answers 4xx, failed at once on a 5xx; a mail accepted while redis is down is sent once it is back.

Against the slapd and redis of this module (conftest.py): the outbox keeps every mail as a directory entry.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import logging
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rq import Queue
from rq.job import Job, JobStatus

from didmos_host import hookimpl
from didmos_host.config import MASK, describe
from didmos_host.errors import ConfigError, PluginError
from didmos_host.host import Host
from didmos_host.servers import free_port
from didmos_host.tasks import run_worker
from didmos_tasks.notify import HANDLER_NAME, QUEUE, NotificationError, notify

SMTP_USER, SMTP_PASSWORD = "didmos-mailer", "mailer-secret"


class Inbox:
    """An aiosmtpd handler that keeps every message, refuses recipients named ``refused*`` with 550 and
    those named ``busy*`` with 451 (try later), and remembers whether each message came over TLS and by
    whom it was sent."""

    def __init__(self):
        self.messages: list[dict] = []
        self.busy_ok = False  # set: ``busy*`` recipients are accepted from then on

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("refused"):
            return "550 5.1.1 no such mailbox here"
        if address.startswith("busy") and not self.busy_ok:
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append({
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "message": email.message_from_bytes(envelope.content, policy=email.policy.default),
            "tls": server.transport.get_extra_info("ssl_object") is not None,  # STARTTLS or implicit TLS
            "login": session.login_data.decode() if session.authenticated else None,
        })
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@contextmanager
def smtp_server(port: int | None = None, **options) -> Iterator[tuple[Inbox, int]]:
    """aiosmtpd on 127.0.0.1 and a free port (or ``port``), with aiosmtpd ``options``; stopped on exit."""
    inbox, port = Inbox(), port or free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    folder = tmp_path_factory.mktemp("smtp-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "didmos test SMTP server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def server_tls(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def queue(own_redis) -> Iterator[Queue]:
    """The notification queue, empty before and after the test (with its registries), so that no retry
    of one test is run by the worker of another."""
    queue = Queue(QUEUE, connection=redis.Redis.from_url(own_redis.url))

    def clear():
        queue.empty()
        for registry in (queue.scheduled_job_registry, queue.failed_job_registry, queue.finished_job_registry):
            for job_id in registry.get_job_ids():
                registry.remove(job_id, delete_job=True)

    clear()
    yield queue
    clear()


#: host -> how it was made, so that work() can make the worker's host alike.
RECIPES: dict[int, tuple[dict, tuple]] = {}


@pytest.fixture
def make_host(overrides):
    """``make_host(*plugins, **notify_settings)``: a host on this module's slapd and redis with notifications on."""

    def make(*plugins, **settings):
        notify_settings = {"enabled": True, "host": "127.0.0.1", "security": "none",
                           "from_address": "ACME IdM <idm@acme.example>", "timeout_seconds": 5, **settings}
        made = {**overrides, "notify": notify_settings}
        host = Host.create(made, extra_plugins=plugins)
        RECIPES[id(host)] = (made, plugins)
        return host

    return make


def task(host: Host, task_id: str):
    """The outbox entry of a notification."""
    return host.service("outbox").get(task_id)


def part(message, kind: str = "plain") -> str:
    """The text of a message's ``plain`` or ``html`` part, with SMTP's CRLF line ends as ``\\n``."""
    body = message.get_body((kind,))
    return body.get_content().replace("\r\n", "\n") if body is not None else None


def work(host: Host) -> None:
    """Run every queued notification in a real rq worker (``worker.mode``: each job in this process, or in a
    forked work horse) and return.

    The worker gets a host of its own, made like ``host`` but without its directory connections, which
    forked work horses must not share."""
    made, plugins = RECIPES[id(host)]
    worker = Host.create(made, extra_plugins=plugins)
    try:
        run_worker(worker, burst=True, queues=[QUEUE])
    finally:
        worker.service("directory").close()


def run_now(queue: Queue, job: Job) -> None:
    """Move a retry that rq scheduled for later to the front of the queue, as if its time had come."""
    queue.scheduled_job_registry.remove(job)
    queue.enqueue_job(job)


def test_welcome_email_arrives_rendered_to_every_recipient(make_host, queue):
    with smtp_server() as (inbox, port):
        host = make_host(port=port)
        job_id = notify(host, "welcome", ["Jane Doe <jane@example.org>", "ops@example.org"],
                        name="Jane <b>Doe</b>", user_name="jane", login_url="https://idm.acme.example/?a=1&b=2")
        assert inbox.messages == []  # nothing is sent before a worker runs the task
        work(host)

    job = Job.fetch(job_id, connection=queue.connection)  # the task id is the rq job id
    assert job.get_status() == JobStatus.FINISHED, job.latest_result().exc_string
    assert (task(host, job_id).state, task(host, job_id).attempts) == ("done", 1)
    [received] = inbox.messages
    assert received["rcpt_tos"] == ["jane@example.org", "ops@example.org"]
    assert received["mail_from"] == "idm@acme.example" and not received["tls"] and received["login"] is None
    message = received["message"]
    assert message["Subject"] == "Your account jane is ready"
    assert message["From"] == "ACME IdM <idm@acme.example>"
    assert message["To"] == "Jane Doe <jane@example.org>, ops@example.org"
    assert message["Message-ID"] == f"<didmos.{job_id}@acme.example>"
    assert message["Auto-Submitted"] == "auto-generated"
    text, html = part(message), part(message, "html")
    assert text.startswith("Hello Jane <b>Doe</b>,\n") and "Your user name is jane." in text
    assert "You can sign in at https://idm.acme.example/?a=1&b=2" in text
    # values are escaped in the HTML part, so a display name cannot inject markup
    assert "<p>Hello Jane &lt;b&gt;Doe&lt;/b&gt;,</p>" in html and "<b>Doe</b>" not in html
    assert 'href="https://idm.acme.example/?a=1&amp;b=2"' in html
    assert job.return_value() == {"sent": True, "template": "welcome", "message_id": message["Message-ID"],
                                  "to": ["Jane Doe <jane@example.org>", "ops@example.org"], "refused": {}}


@pytest.mark.parametrize("template, context, subject, phrase", [
    ("request-pending", {"request_id": "r-17", "summary": "role auditor for jane", "requester": "Bob",
                         "reason": "quarterly audit", "url": "https://idm.acme.example/requests/r-17"},
     "Approval needed: role auditor for jane", "Reason given: quarterly audit"),
    ("request-decided", {"request_id": "r-17", "summary": "role auditor for jane", "decision": "approved",
                         "decided_by": "Alice", "name": "Bob"},
     "Your request was approved: role auditor for jane", "was approved by Alice."),
    ("account-expiring", {"user_name": "jürgen", "expires": "2031-01-31", "name": "Jürgen Groß"},
     "Your account jürgen expires on 2031-01-31", "Hello Jürgen Groß,"),
])
def test_every_built_in_template_is_sent(make_host, queue, template, context, subject, phrase):
    with smtp_server() as (inbox, port):
        host = make_host(port=port)
        notify(host, template, ["bob@example.org", "Jürgen <jg@exämple.org>"], **context)
        work(host)
    [received] = inbox.messages
    # an international domain goes as punycode, so the server needs no SMTPUTF8
    assert received["rcpt_tos"] == ["bob@example.org", "jg@xn--exmple-cua.org"]
    assert received["message"]["Subject"] == subject
    assert phrase in part(received["message"]) and part(received["message"], "html")


def test_starttls_with_a_configured_ca_and_login_with_credentials_from_settings(make_host, queue, certificate):
    with smtp_server(tls_context=server_tls(certificate), require_starttls=True, authenticator=authenticator,
                     auth_required=True) as (inbox, port):
        host = make_host(port=port, security="starttls", tls_ca_file=str(certificate[0]),
                         username=SMTP_USER, password=SMTP_PASSWORD)
        job_id = notify(host, "welcome", "jane@example.org", user_name="jane")
        work(host)
    assert Job.fetch(job_id, connection=queue.connection).get_status() == JobStatus.FINISHED
    [received] = inbox.messages
    assert received["tls"] and received["login"] == SMTP_USER
    assert received["message"]["Subject"] == "Your account jane is ready"
    # the password is a secret: `didmos config show` masks it
    shown = {key: value for key, value, _ in describe(host.settings, host.namespaces)}
    assert shown["notify.password"] == MASK and shown["notify.username"] == SMTP_USER


def test_implicit_tls(make_host, queue, certificate):
    with smtp_server(ssl_context=server_tls(certificate)) as (inbox, port):
        host = make_host(port=port, security="tls", tls_ca_file=str(certificate[0]))
        notify(host, "welcome", "jane@example.org", user_name="jane")
        work(host)
    [received] = inbox.messages
    assert received["tls"] and received["rcpt_tos"] == ["jane@example.org"]


def test_untrusted_certificate_and_wrong_password_fail_clearly_and_are_retried(make_host, queue, certificate):
    with smtp_server(tls_context=server_tls(certificate), require_starttls=True, authenticator=authenticator,
                     auth_required=True) as (inbox, port):
        untrusting = make_host(port=port, security="starttls", username=SMTP_USER, password=SMTP_PASSWORD)
        untrusted_id = notify(untrusting, "welcome", "jane@example.org", user_name="jane")
        work(untrusting)
        wrong = make_host(port=port, security="starttls", tls_ca_file=str(certificate[0]),
                          username=SMTP_USER, password="not-the-password")
        wrong_id = notify(wrong, "welcome", "jane@example.org", user_name="jane")
        work(wrong)
    assert inbox.messages == []
    for job_id in (untrusted_id, wrong_id):
        job = Job.fetch(job_id, connection=queue.connection)
        assert job.get_status() == JobStatus.SCHEDULED  # the next attempt, after the back-off
        waiting = task(untrusting, job_id)
        assert (waiting.state, waiting.attempts) == ("queued", 1) and "DeliveryFailed" in waiting.error
    # rq keeps the error of the last attempt only when it gives up; the worker logs each one, and the
    # same error is raised when the task runs here, in-process
    from didmos_tasks.notify import DeliveryFailed

    with pytest.raises(DeliveryFailed, match="certificate that is not trusted .*set notify.tls_ca_file"):
        with smtp_server(tls_context=server_tls(certificate), require_starttls=True) as (_, port):
            make_host(port=port, security="starttls").service("notifications").deliver(
                {"template": "welcome", "to": ["jane@example.org"], "context": {"user_name": "jane"}})
    with pytest.raises(DeliveryFailed, match="refused the login of 'didmos-mailer' .*535"):
        with smtp_server(tls_context=server_tls(certificate), require_starttls=True, authenticator=authenticator,
                         auth_required=True) as (_, port):
            make_host(port=port, security="starttls", tls_ca_file=str(certificate[0]), username=SMTP_USER,
                      password="wrong").service("notifications").deliver(
                {"template": "welcome", "to": ["jane@example.org"], "context": {"user_name": "jane"}})


def test_smtp_down_the_caller_returns_at_once_and_the_task_is_retried_with_back_off(make_host, queue):
    port = free_port()  # nothing listens here yet
    host = make_host(port=port)
    started = time.monotonic()
    job_id = notify(host, "welcome", "jane@example.org", user_name="jane")
    assert time.monotonic() - started < 1.0 and job_id

    work(host)  # first attempt: connection refused
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.get_status() == JobStatus.SCHEDULED
    waiting = task(host, job_id)
    assert (waiting.state, waiting.attempts) == ("queued", 1)  # 1 attempt of 6 made
    assert waiting.error.startswith(f"DeliveryFailed: the SMTP server at 127.0.0.1:{port} cannot take the message now")
    due = queue.scheduled_job_registry.get_scheduled_time(job)
    assert 20 < (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 30

    run_now(queue, job)
    work(host)  # second attempt: still down; the next wait is longer
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.get_status() == JobStatus.SCHEDULED and task(host, job_id).attempts == 2
    due = queue.scheduled_job_registry.get_scheduled_time(job)
    assert 100 < (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 120

    with smtp_server(port) as (inbox, _):  # the server is back
        run_now(queue, job)
        work(host)
    assert Job.fetch(job_id, connection=queue.connection).get_status() == JobStatus.FINISHED
    assert (task(host, job_id).state, task(host, job_id).attempts, task(host, job_id).error) == ("done", 3, None)
    [received] = inbox.messages
    assert received["message"]["Message-ID"] == f"<didmos.{job_id}@acme.example>"  # the same id on every try


def test_a_request_that_notifies_is_answered_while_the_mail_server_is_down(make_host, queue, overrides):
    from didmos_host.api import Blueprint, MethodView
    from didmos_host.app import create_app, current_host

    blueprint = Blueprint("signup_test", __name__)

    @blueprint.route("/signup-test")
    class Signup(MethodView):
        @blueprint.response(202)
        def post(self):
            return {"job": notify(current_host(), "welcome", "jane@example.org", user_name="jane")}

    class SignupPlugin:
        @hookimpl
        def didmos_blueprints(self, app):
            return [blueprint]

    app = create_app(extra_plugins=[SignupPlugin()], **overrides,
                     notify={"enabled": True, "host": "127.0.0.1", "port": free_port(), "security": "none",
                             "from_address": "idm@acme.example"})
    started = time.monotonic()
    response = app.test_client().post("/signup-test")
    assert response.status_code == 202 and time.monotonic() - started < 1.0
    assert queue.job_ids == [response.json["job"]]


def test_a_recipient_that_is_not_an_address_is_refused_before_anything_is_queued(make_host, queue):
    host = make_host(port=free_port())
    for bad in ("not-an-address", "jane@", "jane@example.org\nBcc: everyone@example.org", "jane@localhost", ""):
        with pytest.raises(NotificationError, match="is not (one )?(an )?email address such as 'jane@example.org'"):
            notify(host, "welcome", ["ok@example.org", bad], user_name="jane")
    with pytest.raises(NotificationError, match="has no recipient"):
        notify(host, "welcome", [], user_name="jane")
    assert queue.count == 0


def test_recipients_the_server_refuses_with_5xx_fail_the_task_without_retries(make_host, queue):
    with smtp_server() as (inbox, port):
        host = make_host(port=port)
        refused_id = notify(host, "welcome", "refused@example.org", user_name="jane")
        partly_id = notify(host, "welcome", ["refused-too@example.org", "jane@example.org"], user_name="jane")
        work(host)

    job = Job.fetch(refused_id, connection=queue.connection)
    assert job.get_status() == JobStatus.FAILED and not job.retries_left
    assert refused_id in queue.failed_job_registry and refused_id not in queue.scheduled_job_registry
    error = job.latest_result().exc_string
    assert ("DeliveryRefused: the SMTP server at 127.0.0.1:%d refused every recipient: refused@example.org: "
            "550 5.1.1 no such mailbox here; not retried" % port) in error
    # the outbox honours the PermanentTaskError: failed after one attempt of six, in the failed list
    refused = task(host, refused_id)
    assert (refused.state, refused.attempts) == ("failed", 1) and refused.error.startswith("DeliveryRefused: ")
    assert refused_id in {failed.id for failed in host.service("outbox").list(state="failed")}
    # one refused, one accepted: sent to the one, and not again to it by a retry
    partly = Job.fetch(partly_id, connection=queue.connection)
    assert partly.get_status() == JobStatus.FINISHED
    assert partly.return_value()["refused"] == {"refused-too@example.org": 550}
    [received] = inbox.messages
    assert received["rcpt_tos"] == ["jane@example.org"]


def test_a_recipient_the_server_refuses_with_4xx_is_retried(make_host, queue):
    """451 means "try later": the task waits for its back-off (30 s), then the mail goes through."""
    with smtp_server() as (inbox, port):
        host = make_host(port=port)
        busy_id = notify(host, "welcome", "busy@example.org", user_name="jane")
        work(host)
        waiting = task(host, busy_id)
        assert (waiting.state, waiting.attempts) == ("queued", 1)
        assert waiting.error == (f"DeliveryFailed: the SMTP server at 127.0.0.1:{port} refused every recipient "
                                 f"for now: busy@example.org: 451 4.3.0 mailbox busy, try again later")
        job = Job.fetch(busy_id, connection=queue.connection)
        assert job.get_status() == JobStatus.SCHEDULED and busy_id not in queue.failed_job_registry
        due = queue.scheduled_job_registry.get_scheduled_time(job)
        assert 20 < (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 30
        assert inbox.messages == []

        inbox.busy_ok = True  # the mailbox has room again
        run_now(queue, job)
        work(host)  # the second attempt goes through
    done = task(host, busy_id)
    assert (done.state, done.attempts, done.error) == ("done", 2, None)
    [received] = inbox.messages
    assert received["rcpt_tos"] == ["busy@example.org"]
    assert received["message"]["Message-ID"] == f"<didmos.{busy_id}@acme.example>"


def test_unknown_template_missing_value_and_unsafe_value_fail_in_the_caller(make_host, queue):
    host = make_host(port=free_port())
    with pytest.raises(NotificationError, match="no notification template named 'welcom'; known: account-expiring, "
                                                "request-decided, request-pending, welcome"):
        notify(host, "welcom", "jane@example.org", user_name="jane")
    with pytest.raises(NotificationError,
                       match="'welcome' .* needs a value that was not given: 'user_name' is undefined"):
        notify(host, "welcome", "jane@example.org", name="Jane")
    with pytest.raises(NotificationError, match="must survive JSON unchanged"):
        notify(host, "account-expiring", "jane@example.org", user_name="jane", expires=datetime.date(2031, 1, 31))
    assert queue.count == 0


def test_a_broken_task_payload_fails_without_retries(make_host, queue):
    from didmos_host.tasks import enqueue

    host = make_host(port=free_port())
    job_id = enqueue(host, HANDLER_NAME, {"template": "welcome", "to": ["jane@example.org"], "context": {}})
    work(host)
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.get_status() == JobStatus.FAILED and not job.retries_left
    assert "notification cannot be made: notification template 'welcome'" in job.latest_result().exc_string


def test_disabled_notifications_check_their_input_and_queue_nothing(overrides, queue):
    host = Host.create(overrides)
    assert host.settings.notify.enabled is False
    assert notify(host, "welcome", "jane@example.org", user_name="jane") is None
    with pytest.raises(NotificationError):
        notify(host, "welcome", "jane@", user_name="jane")
    assert queue.count == 0


def test_a_mail_accepted_while_redis_is_down_is_sent_once_redis_is_back(make_host, queue, own_redis):
    """The outbox, not a best-effort enqueue: the mail is a directory entry before anything else."""
    with smtp_server() as (inbox, port):
        host = make_host(port=port)
        own_redis.stop()
        try:
            started = time.monotonic()
            task_id = notify(host, "welcome", "jane@example.org", user_name="jane")
            assert task_id and time.monotonic() - started < 10  # one failed connection attempt to redis
            stored = task(host, task_id)
            assert (stored.state, stored.attempts, stored.name) == ("pending", 0, HANDLER_NAME)
            assert stored.payload == {"template": "welcome", "to": ["jane@example.org"],
                                      "context": {"user_name": "jane"}}
        finally:
            own_redis.start()
        # redis came back without its data (no persistence here): the dispatcher queues the pending mail
        report = host.service("outbox").dispatch()
        assert report.queued >= 1 and queue.job_ids.count(task_id) == 1
        work(host)
    assert task(host, task_id).state == "done"
    mine = [received for received in inbox.messages
            if received["message"]["Message-ID"] == f"<didmos.{task_id}@acme.example>"]
    assert len(mine) == 1 and mine[0]["rcpt_tos"] == ["jane@example.org"]


def test_an_unreachable_directory_loses_the_mail_loudly_but_does_not_fail_the_caller(overrides, caplog):
    host = Host.create({**overrides, "directory": {**overrides["directory"], "uri": f"ldap://127.0.0.1:{free_port()}"},
                        "ldap": {"retry_seconds": 0.2},
                        "notify": {"enabled": True, "from_address": "idm@acme.example"}})
    with caplog.at_level(logging.ERROR, logger="didmos.notify"):
        assert notify(host, "welcome", "jane@example.org", user_name="jane") is None
    assert "notification 'welcome' to jane@example.org lost: directory unreachable: ldap://127.0.0.1:" in caplog.text


class CustomerTemplates:
    """A customer plugin that replaces the welcome mail (text only), the text layout, and adds a template."""

    def __init__(self, folder: Path):
        self.folder = folder

    @hookimpl(tryfirst=True)
    def didmos_notification_template_dirs(self):
        return [self.folder]


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_a_customer_plugin_replaces_one_template_and_the_layout(make_host, queue, tmp_path):
    folder = write(tmp_path / "acme", {
        "welcome/subject.txt": "Welcome to ACME, {{ user_name }}\n",
        "welcome/body.txt": '{% extends "_layout.txt" %}\n{% block content %}\nBadge pick-up: reception.\n'
                            '{% endblock %}\n',
        "_layout.txt": "Dear colleague,\n\n{% block content %}{% endblock %}\n\n-- \nACME IT\n",
        "badge-ready/subject.txt": "Your badge {{ badge }} is ready",
        "badge-ready/body.txt": "Badge {{ badge }}.",
    })
    with smtp_server() as (inbox, port):
        host = make_host(CustomerTemplates(folder), port=port)
        assert host.service("notifications").templates.names == [
            "account-expiring", "badge-ready", "request-decided", "request-pending", "welcome"]
        notify(host, "welcome", "jane@example.org", user_name="jane")
        notify(host, "account-expiring", "jane@example.org", user_name="jane", expires="2031-01-31")
        notify(host, "badge-ready", "jane@example.org", badge="B-7")
        work(host)
    by_subject = {received["message"]["Subject"]: received["message"] for received in inbox.messages}
    welcome = by_subject["Welcome to ACME, jane"]
    # the whole welcome folder is the customer's: its text part, and no built-in HTML part beside it
    assert not welcome.is_multipart()
    assert part(welcome) == "Dear colleague,\n\nBadge pick-up: reception.\n\n-- \nACME IT\n"
    # a built-in template keeps its own text, in the customer's layout
    expiring = part(by_subject["Your account jane expires on 2031-01-31"])
    assert expiring.startswith("Dear colleague,\n\nyour account jane expires on 2031-01-31.")
    assert expiring.endswith("ACME IT\n")
    assert part(by_subject["Your badge B-7 is ready"]) == "Badge B-7.\n"


def test_template_folders_are_checked_at_start_up(make_host, tmp_path):
    class Other(CustomerTemplates):
        pass

    duplicate = write(tmp_path / "one", {"welcome/subject.txt": "a", "welcome/body.txt": "b"})
    same = write(tmp_path / "two", {"welcome/subject.txt": "c", "welcome/body.txt": "d"})
    with pytest.raises(PluginError, match="both give the notification template file 'welcome' at the same "
                                          "priority; the one that overrides must use @hookimpl\\(tryfirst=True\\)"):
        make_host(CustomerTemplates(duplicate), Other(same))
    broken = write(tmp_path / "broken", {"welcome/subject.txt": "Hi {{ user_name", "welcome/body.txt": "b"})
    with pytest.raises(PluginError, match="subject.txt of plugin 'CustomerTemplates' does not compile, line 1"):
        make_host(CustomerTemplates(broken))
    partial = write(tmp_path / "partial", {"welcome/body.txt": "b"})
    with pytest.raises(PluginError, match="has no subject.txt; a template folder holds subject.txt, body.txt"):
        make_host(CustomerTemplates(partial))
    with pytest.raises(PluginError, match="which is not a folder"):
        make_host(CustomerTemplates(tmp_path / "missing"))


@pytest.mark.parametrize("settings, message", [
    ({"security": "ssl"}, "notify.security must be one of 'none', 'starttls', 'tls'"),
    ({"from_address": ""}, "notify.from_address must be set when notify.enabled is true"),
    ({"from_address": "idm"}, "notify.from_address must be an email address such as 'idm@example.org'"),
    ({"username": "u", "password": "p"}, "notify.security must be 'starttls' or 'tls' when notify.username is set"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, "notify.tls_ca_file must be empty .* got '/nonexistent/ca.pem'"),
    ({"port": 70000}, "notify.port must be of type int, at least 0, at most 65535"),
])
def test_bad_settings_stop_start_up(make_host, settings, message):
    with pytest.raises(ConfigError, match=message):
        make_host(**settings)
