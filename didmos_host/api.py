"""The flask-smorest bases every plugin builds its API with, re-exported from one place.

Plugins import ``Api``, ``Blueprint``, ``Schema`` and ``fields`` from here, so the host can change
them (a common error format, a shared schema base) without touching any plugin.
"""

import flask_smorest
from flask.views import MethodView
from flask_smorest import Blueprint, abort
from marshmallow import Schema, fields, validate


class ErrorSchema(Schema):
    """The body of every didmos error that no API plugin answers in its own format."""

    status = fields.Integer(metadata={"description": "HTTP status"})
    detail = fields.String(metadata={"description": "What was wrong, and what would be right"})
    errors = fields.Dict(metadata={"description": "Per-field validation errors, when there are any"})
    context = fields.Dict(metadata={"description": "Facts about the error for programs, e.g. the violated "
                                                   "separation-of-duty set or the password-policy state"})


class Api(flask_smorest.Api):
    """flask-smorest's ``Api`` with the didmos error body.

    Every error, HTTP errors included, is answered by the ``didmos_handle_exception`` hook (registered
    by the app factory), so flask-smorest's own handler is not installed.
    """

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self):
        pass


__all__ = ["Api", "Blueprint", "ErrorSchema", "MethodView", "Schema", "abort", "fields", "validate"]
