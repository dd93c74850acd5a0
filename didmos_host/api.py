"""The flask-smorest bases every plugin builds its API with, re-exported from one place.

Plugins import ``Blueprint``, ``Schema`` and ``fields`` from here, so the host can change them (a
common error format, a shared schema base) without touching any plugin.
"""

from flask.views import MethodView
from flask_smorest import Api, Blueprint, abort
from marshmallow import Schema, fields, validate

__all__ = ["Api", "Blueprint", "MethodView", "Schema", "abort", "fields", "validate"]
