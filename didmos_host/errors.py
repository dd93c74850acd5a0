"""The project's own errors. APIs map them to status codes; the CLI prints their message."""

from __future__ import annotations


class DidmosError(Exception):
    """Base of every error didmos raises on purpose. ``status`` is the HTTP status it maps to."""

    status = 500

    def __init__(self, message: str, *, status: int | None = None, detail: dict | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.detail = detail or {}


class ConfigError(DidmosError):
    """A setting is missing or has the wrong type or value; the message names the key."""


class PluginError(DidmosError):
    """A plugin cannot be loaded or is inconsistent (unknown hook, duplicate registration)."""


class OperationRejected(DidmosError):
    """A pre-LDAP interceptor refused an operation. Nothing was sent to the directory."""

    status = 403


class AuthenticationFailed(DidmosError):
    """No credentials, or credentials that are wrong, expired or locked.

    ``challenges`` are the ``WWW-Authenticate`` values to send back; when empty, the host asks the
    ``didmos_auth_challenges`` hook.
    """

    status = 401

    def __init__(self, message: str, *, challenges: list[str] | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.challenges = challenges or []


class TooManyAttempts(DidmosError):
    """Too many failed authentication attempts; ``retry_after`` seconds until the next may be tried."""

    status = 429

    def __init__(self, message: str, *, retry_after: int, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Forbidden(DidmosError):
    """The actor may not do what the request asks."""

    status = 403


class NotFound(DidmosError):
    status = 404


class Unavailable(DidmosError):
    """A server didmos depends on (directory, redis) cannot be reached now; try again later."""

    status = 503


class PermanentTaskError(DidmosError):
    """A task handler failed in a way that running it again cannot fix (the mail server refused the
    recipient, the payload names something that does not exist): the task fails now, without the
    retries its handler has left. Raise it (or a subclass) from a handler; any other exception is
    retried with the handler's back-off."""


# Directory outcomes every API maps to a status. They live in the host so that API plugins need not
# import the LDAP plugin to catch them.


class AlreadyExists(DidmosError):
    """An entry (or a unique value) exists already."""

    status = 409


class ConstraintViolation(DidmosError):
    """The directory refused the change: schema, syntax, object class or a constraint overlay."""

    status = 400


class PreconditionFailed(DidmosError):
    """A conditional write (If-Match, assertion control) found the entry changed."""

    status = 412


class LimitExceeded(DidmosError):
    """A size or time limit of the directory was reached."""

    status = 400


class PasswordPolicyError(AuthenticationFailed):
    """A bind was refused or needs action because of the password policy (locked, expired, must change).

    ``detail["state"]`` is one of ``locked``, ``expired``, ``must_change``, ``invalid``.
    """
