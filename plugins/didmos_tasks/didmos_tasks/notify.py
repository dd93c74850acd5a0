"""Notifications: email rendered from templates and sent over SMTP by the task worker.

The API side only validates and submits (:func:`notify`): the task ``didmos.notify.email`` is stored in
the task outbox (:mod:`didmos_tasks.outbox`) before it is queued, so a mail accepted while redis is down
is sent once it is back. The worker renders the template again and talks to the SMTP server; what may
pass (server down, 4xx) is retried with back-off, a refusal (5xx) fails the task at once
(:class:`~didmos_host.errors.PermanentTaskError`). So a slow or unreachable mail server never holds up
the request that caused the mail.

Templates are Jinja2, found through the ``didmos_notification_template_dirs`` hook: a folder per
template (``welcome/subject.txt``, ``welcome/body.txt``, optionally ``welcome/body.html``) plus shared
files (``_layout.txt``, ``_layout.html``). For each template and each shared file the first folder in
hook call order that has it wins, whole; built-ins are ``trylast``, so a customer plugin's ``tryfirst``
folder replaces one template, or only the layout, and keeps the rest.

Jinja2 rather than ``string.Template``: it is already installed (Flask depends on it), it escapes the
values that go into the HTML part (a display name like ``<a href=...>`` stays text), a missing variable
is an error instead of a literal ``$name`` in a customer's inbox, and layouts let a customer rebrand
every mail by replacing one file.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import Any

import jinja2

from didmos_host.errors import DidmosError, PermanentTaskError, PluginError, Unavailable
from didmos_host.host import Host
from didmos_host.tasks import TaskContext, enqueue

log = logging.getLogger("didmos.notify")

#: The task that renders and sends one email.
HANDLER_NAME = "didmos.notify.email"
#: The rq queue of that task (``didmos worker`` listens on it with the others).
QUEUE = "notify"
#: The built-in templates (``welcome``, ``request-pending``, ``request-decided``, ``account-expiring``).
TEMPLATE_DIR = Path(__file__).parent / "templates"
#: The port used when ``notify.port`` is 0: SMTP relay, submission with STARTTLS, submission over TLS.
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
#: The parts of a template, in the order they are rendered; ``body.html`` is optional.
PARTS = ("subject.txt", "body.txt", "body.html")


class NotificationError(DidmosError):
    """A notification cannot be made from what the caller gave: unknown template, bad address, missing value."""

    status = 400


class DeliveryFailed(DidmosError):
    """Sending failed for a reason that may pass (server down, timeout, 4xx, login, TLS); retried."""

    status = 503


class DeliveryRefused(PermanentTaskError):
    """The SMTP server refused the message for good (5xx), or it cannot be rendered; never retried."""

    status = 502


@dataclass(frozen=True)
class RenderedNotification:
    """One template rendered with one context: a one-line subject, a text part and maybe an HTML part."""

    template: str
    subject: str
    text: str
    html: str | None = None


def parse_address(value: Any, what: str = "recipient") -> Address:
    """One address, ``jane@example.org`` or ``Jane Doe <jane@example.org>``; ``NotificationError`` if not."""
    example = "such as 'jane@example.org' or 'Jane Doe <jane@example.org>'"
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\0"):
        raise NotificationError(f"{what} {value!r} is not an email address {example}")
    pairs = getaddresses([value])
    if len(pairs) != 1 or not pairs[0][1]:
        raise NotificationError(f"{what} {value!r} is not one email address {example}")
    name, spec = pairs[0]
    try:
        address = Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError) as exc:  # the email package's parser raises both, and its defects
        raise NotificationError(f"{what} {value!r} is not an email address {example}: {exc}") from exc
    if not address.username or "." not in address.domain.strip("."):
        raise NotificationError(f"{what} {value!r} is not an email address {example}: it needs a user "
                                f"and a domain with a dot")
    if not address.domain.isascii():
        # As punycode (xn--), so that sending needs no SMTPUTF8, which many servers lack.
        try:
            domain = address.domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise NotificationError(f"{what} {value!r} has a domain that is not a valid international "
                                    f"domain name: {exc}") from exc
        address = Address(display_name=address.display_name, username=address.username, domain=domain)
    return address


class _FolderLoader(jinja2.BaseLoader):
    """Finds ``welcome/body.txt`` or ``_layout.html`` in the folder that won its top-level name."""

    def __init__(self, winners: dict[str, Path]):
        self.winners = winners

    def get_source(self, environment: jinja2.Environment, template: str):
        folder = self.winners.get(template.split("/", 1)[0])
        if folder is None:
            raise jinja2.TemplateNotFound(template)
        return jinja2.FileSystemLoader(folder).get_source(environment, template)


class NotificationTemplates:
    """The templates the ``didmos_notification_template_dirs`` hook offers, compiled once.

    Raises :class:`PluginError` when a folder is missing, a template lacks a part, a template does not
    compile, or two plugins of the same priority give the same template or shared file.
    """

    def __init__(self, pm):
        self.sources: dict[str, tuple[Path, str]] = {}  # top-level name -> (folder, plugin)
        tiers: dict[str, int] = {}
        hook = pm.hook.didmos_notification_template_dirs
        for impl in reversed(hook.get_hookimpls()):  # call order: tryfirst first, trylast last
            if impl.hookwrapper or impl.wrapper:
                continue
            tier = 0 if impl.tryfirst else 2 if impl.trylast else 1
            for folder in impl.function() or ():
                folder = Path(folder)
                if not folder.is_dir():
                    raise PluginError(f"plugin {impl.plugin_name!r} offers notification templates in "
                                      f"{folder}, which is not a folder")
                for entry in sorted(folder.iterdir()):
                    if entry.name.startswith("."):
                        continue
                    if entry.name not in self.sources:
                        self.sources[entry.name] = (folder, impl.plugin_name)
                        tiers[entry.name] = tier
                    elif tiers[entry.name] == tier and self.sources[entry.name][1] != impl.plugin_name:
                        raise PluginError(
                            f"plugins {self.sources[entry.name][1]!r} and {impl.plugin_name!r} both give the "
                            f"notification template file {entry.name!r} at the same priority; the one that "
                            f"overrides must use @hookimpl(tryfirst=True)")
        self.environment = jinja2.Environment(
            loader=_FolderLoader({name: folder for name, (folder, _) in self.sources.items()}),
            autoescape=jinja2.select_autoescape(("html", "htm", "xml"), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        #: template name -> the parts it has, for example ``("subject.txt", "body.txt")``.
        self.parts: dict[str, tuple[str, ...]] = {}
        for name, (folder, plugin) in sorted(self.sources.items()):
            if name.startswith("_") or not (folder / name).is_dir():
                continue  # shared: layouts and includes
            parts = tuple(part for part in PARTS if (folder / name / part).is_file())
            missing = [part for part in PARTS[:2] if part not in parts]
            if missing:
                raise PluginError(f"notification template {name!r} of plugin {plugin!r} ({folder / name}) has no "
                                  f"{' and no '.join(missing)}; a template folder holds subject.txt, body.txt and "
                                  f"optionally body.html")
            for part in parts:
                try:
                    self.environment.get_template(f"{name}/{part}")
                except jinja2.TemplateSyntaxError as exc:
                    raise PluginError(f"notification template {folder / name / part} of plugin {plugin!r} "
                                      f"does not compile, line {exc.lineno}: {exc.message}") from exc
            self.parts[name] = parts

    @property
    def names(self) -> list[str]:
        return sorted(self.parts)

    def render(self, name: str, context: dict[str, Any]) -> RenderedNotification:
        """Render template ``name``; ``NotificationError`` names an unknown template or a missing value."""
        if name not in self.parts:
            raise NotificationError(f"no notification template named {name!r}; known: {', '.join(self.names)}")
        rendered = {}
        for part in self.parts[name]:
            try:
                rendered[part] = self.environment.get_template(f"{name}/{part}").render(context)
            except jinja2.UndefinedError as exc:
                raise NotificationError(f"notification template {name!r} ({part}) needs a value that was not "
                                        f"given: {exc.message}") from exc
            except jinja2.TemplateError as exc:
                raise NotificationError(f"notification template {name!r} ({part}) cannot be rendered: {exc}") from exc
        # One line: a line break in a header would end it, and anything after would be a header of its own.
        subject = " ".join(rendered["subject.txt"].split())
        if not subject:
            raise NotificationError(f"notification template {name!r} rendered an empty subject")
        return RenderedNotification(name, subject, rendered["body.txt"], rendered.get("body.html"))


class Notifications:
    """The service ``"notifications"``: renders templates, queues emails and, in the worker, sends them."""

    def __init__(self, host: Host):
        self.host = host
        self.templates = NotificationTemplates(host.pm)

    @property
    def settings(self):
        return self.host.settings.notify

    def notify(self, template: str, to: str | list[str], /, **context: Any) -> str | None:
        """Submit email ``template`` rendered with ``context`` to ``to``; return the task's id at once.

        See :meth:`send`, which also takes an idempotency key.
        """
        return self.send(template, to, context)

    def send(self, template: str, to: str | list[str], context: dict[str, Any] | None = None, *,
             key: str | None = None) -> str | None:
        """Submit email ``template`` rendered with ``context`` to ``to`` as an outbox task; its id, at once.

        Raises :class:`NotificationError` for an unknown template, a bad address, a value the template
        needs but did not get, or a context that does not survive JSON. The task is stored in the
        directory before it is queued: with redis down it waits there and is sent once redis is back.
        ``key`` makes it one mail per key (a second send with the same key returns the first task).
        Returns ``None`` without submitting when ``notify.enabled`` is false, or when the directory
        cannot store it (logged as an error: the change that caused the mail happened already, and
        failing its request now would only make the client repeat it). Without the outbox plugin
        (``didmos_tasks`` disabled) the mail goes straight onto rq, and is lost while redis is down.
        """
        context = {} if context is None else context
        recipients = [str(parse_address(value)) for value in ([to] if isinstance(to, str) else to)]
        if not recipients:
            raise NotificationError(f"notification {template!r} has no recipient")
        try:
            safe = json.loads(json.dumps(context)) == context
        except (TypeError, ValueError):
            safe = False
        if not safe:
            raise NotificationError(f"the values for notification {template!r} must survive JSON unchanged "
                                    f"(str, numbers, booleans, null, lists and dicts); format dates as text")
        # Render here too, so a missing value fails in the caller's test, not in a worker hours later.
        self.templates.render(template, context)
        if not self.settings.enabled:
            log.info("notification %r to %s not sent: notify.enabled is false", template, ", ".join(recipients))
            return None
        payload = {"template": template, "to": recipients, "context": context}
        try:
            if "outbox" in self.host.services:
                return self.host.service("outbox").submit(HANDLER_NAME, payload, key=key).id
            return enqueue(self.host, HANDLER_NAME, payload)
        except Unavailable as exc:
            log.error("notification %r to %s lost: %s", template, ", ".join(recipients), exc.message)
            return None

    def message(self, rendered: RenderedNotification, to: list[str], *, job_id: str | None = None) -> EmailMessage:
        """The email of ``rendered`` to ``to``, from ``notify.from_address``."""
        sender = parse_address(self.settings.from_address, "notify.from_address")
        message = EmailMessage()
        message["Subject"] = rendered.subject
        message["From"] = str(sender)
        message["To"] = ", ".join(to)
        message["Date"] = formatdate(localtime=True)
        # The same id on every retry, so a receiver can drop a duplicate after an ambiguous failure.
        if job_id:
            message["Message-ID"] = f"<didmos.{job_id}@{sender.domain}>"
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
        message.set_content(rendered.text)
        if rendered.html is not None:
            message.add_alternative(rendered.html, subtype="html")
        return message

    def deliver(self, payload: dict[str, Any], *, job_id: str | None = None) -> dict[str, Any]:
        """Render and send one queued notification (what the task ``didmos.notify.email`` does).

        Raises :class:`DeliveryFailed` when it may work later (retried) and :class:`DeliveryRefused`, a
        :class:`~didmos_host.errors.PermanentTaskError`, when it never will (the task fails at once).
        """
        if not self.settings.enabled:
            log.warning("notification %r not sent: notify.enabled is false in the worker's settings",
                        payload.get("template"))
            return {"sent": False, "reason": "notify.enabled is false"}
        try:
            template, to, context = payload["template"], payload["to"], payload.get("context") or {}
            if not isinstance(template, str) or not isinstance(to, list) or not isinstance(context, dict):
                raise NotificationError("the task payload needs 'template' as a str, 'to' as a list and "
                                        "'context' as a dict")
            to = [str(parse_address(value)) for value in to]
            message = self.message(self.templates.render(template, context), to, job_id=job_id)
        except (KeyError, NotificationError) as exc:
            reason = exc.message if isinstance(exc, DidmosError) else f"the task payload has no {exc}"
            raise DeliveryRefused(f"notification cannot be made: {reason}; not retried") from exc
        refused = self._send(message)
        if refused:
            log.warning("notification %r: the SMTP server refused %s (sent to the others)", template,
                        "; ".join(f"{rcpt}: {code} {text.decode(errors='replace')}"
                                  for rcpt, (code, text) in refused.items()))
        return {"sent": True, "template": template, "to": to, "message_id": message["Message-ID"],
                "refused": {rcpt: code for rcpt, (code, _) in refused.items()}}

    def _send(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        cfg = self.settings
        port = cfg.port or DEFAULT_PORTS[cfg.security]
        server = f"the SMTP server at {cfg.host}:{port}"
        try:
            tls = ssl.create_default_context(cafile=cfg.tls_ca_file or None) if cfg.security != "none" else None
            if cfg.security == "tls":
                smtp = smtplib.SMTP_SSL(cfg.host, port, timeout=cfg.timeout_seconds, context=tls)
            else:
                smtp = smtplib.SMTP(cfg.host, port, timeout=cfg.timeout_seconds)
            with smtp:
                if cfg.security == "starttls":
                    smtp.starttls(context=tls)
                if cfg.username:
                    smtp.login(cfg.username, cfg.password)
                return smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            answers = "; ".join(f"{rcpt}: {code} {text.decode(errors='replace')}"
                                for rcpt, (code, text) in exc.recipients.items())
            if all(code >= 500 for code, _ in exc.recipients.values()):
                    raise DeliveryRefused(f"{server} refused every recipient: {answers}; not retried") from exc
            raise DeliveryFailed(f"{server} refused every recipient for now: {answers}") from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            answer = f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
            stage = "the sender" if isinstance(exc, smtplib.SMTPSenderRefused) else "the message"
            if exc.smtp_code >= 500:
                    raise DeliveryRefused(f"{server} refused {stage}: {answer}; not retried") from exc
            raise DeliveryFailed(f"{server} refused {stage} for now: {answer}") from exc
        except smtplib.SMTPAuthenticationError as exc:
            answer = f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
            raise DeliveryFailed(f"{server} refused the login of {cfg.username!r} (notify.username, "
                                 f"notify.password): {answer}") from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryFailed(f"{server} does not support what notify.security={cfg.security!r} and "
                                 f"notify.username need: {exc}") from exc
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryFailed(f"{server} has a certificate that is not trusted ({exc.verify_message}); set "
                                 f"notify.tls_ca_file to the CA that signed it") from exc
        except (OSError, smtplib.SMTPException) as exc:  # refused, timed out, name unknown, TLS, 4xx
            raise DeliveryFailed(f"{server} cannot take the message now: {type(exc).__name__}: {exc}") from exc


def send_email(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """The task ``didmos.notify.email``: render ``payload["template"]`` and send it to ``payload["to"]``."""
    return context.host.service("notifications").deliver(payload, job_id=context.job_id)


def notify(host: Host, template: str, to: str | list[str], /, **context: Any) -> str | None:
    """Submit email ``template`` to ``to`` (one address or a list) with ``context``; see :meth:`Notifications.send`.

    Returns at once: the task id (also the rq job id), or ``None`` when notifications are off or the
    directory cannot store the task.
    """
    return host.service("notifications").notify(template, to, **context)
