"""The flask-smorest bases every plugin builds its API with, re-exported from one place.

Plugins import ``Api``, ``Blueprint``, ``Schema`` and ``fields`` from here, so the host can change
them (a common error format, a shared schema base) without touching any plugin.
"""

import json
from copy import deepcopy
from typing import Any

import flask
import flask_smorest
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import Schema, fields, validate
from webargs.core import missing
from webargs.flaskparser import FlaskParser, is_json_request


class ErrorSchema(Schema):
    """The body of every didmos error that no API plugin answers in its own format."""

    status = fields.Integer(metadata={"description": "HTTP status"})
    detail = fields.String(metadata={"description": "What was wrong, and what would be right"})
    errors = fields.Dict(metadata={"description": "Per-field validation errors, when there are any"})
    context = fields.Dict(metadata={"description": "Facts about the error for programs, e.g. the violated "
                                                   "separation-of-duty set or the password-policy state"})


class ArgumentsParser(FlaskParser):
    """webargs' parser, reading JSON bodies with the app's JSON provider (:mod:`didmos_host.bodies`):
    webargs' own ``json.loads`` let a ``RecursionError`` (deep nesting) or a ``ValueError`` (an integer of
    more than 4300 digits) escape as a 500; here they are invalid JSON, 400 like any other."""

    def _raw_load_json(self, req):
        if not is_json_request(req):
            return missing
        data = req.get_data(cache=True)
        try:
            return flask.current_app.json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise
        except ValueError as exc:
            raise json.JSONDecodeError(str(exc), data.decode("utf-8", "replace") or " ", 0) from None


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's ``Blueprint``, where an API that answers errors in a format of its own (SCIM
    Error bodies, OAuth error bodies) says so: ``error_response`` is the OpenAPI response object that
    documents every operation's ``default`` (error) response, in place of :class:`ErrorSchema`, so that
    the document describes what the routes send."""

    ARGUMENTS_PARSER = ArgumentsParser()

    def __init__(self, *args: Any, error_response: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.error_response = error_response

    def _prepare_response_doc(self, doc, doc_info, **kwargs):
        doc = super()._prepare_response_doc(doc, doc_info, **kwargs)
        if self.error_response is not None:
            doc.setdefault("responses", {})["default"] = deepcopy(self.error_response)
        return doc


class Api(flask_smorest.Api):
    """flask-smorest's ``Api`` with the didmos error body.

    Every error, HTTP errors included, is answered by the ``didmos_handle_exception`` hook (registered
    by the app factory), so flask-smorest's own handler is not installed.
    """

    ERROR_SCHEMA = ErrorSchema

    def _register_error_handlers(self):
        pass


__all__ = ["Api", "Blueprint", "ErrorSchema", "MethodView", "Schema", "abort", "fields", "validate"]
