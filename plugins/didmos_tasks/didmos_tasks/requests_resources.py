"""The REST API of requests and approvals, ``/tasks/v1/requests``.

Every route authenticates first (401 without credentials, before the body is read). Who may:

* file a request: anyone for itself; for another user ``create`` on ``Request`` with that user's entry
  as target (the PDP decides, like every other action);
* list: one's own requests, those awaiting one's decision (``?awaiting=me``), or every request
  (``?all=true``: ``read`` on ``Request`` with ``requests.base_dn`` as target);
* read one: its requester, the user it is about, an approver of any level so far, or ``read`` on
  ``Request`` with the request's entry as target. Whether an id exists is told only to callers who
  may read every request: others get 403 for an unknown id as for one they may not see;
* approve or decline: only someone the current level still awaits and who still qualifies (the PDP
  still authorizes them for the level's role, or they are still in its attribute): 403 for anyone
  else, 409 for a request that is no longer pending or whose level they decided already.

The bodies are defined here: this file alone uses them.
"""

from __future__ import annotations

import functools

import flask

from didmos_host.api import Blueprint, MethodView, Schema, fields, validate
from didmos_host.app import current_actor, current_host
from didmos_host.errors import Forbidden
from didmos_host.records import Action
from didmos_tasks.requests import RESOURCE_TYPE, STATES, Requests, describe

blueprint = Blueprint("requests", __name__, url_prefix="/tasks/v1/requests",
                      description="Requests and approvals: file a request (a role, a group), approvers decide level "
                                  "by level, a task carries it out and records the outcome")


class RequestCreateSchema(Schema):
    kind = fields.String(required=True, validate=validate.Length(min=1, max=128),
                         metadata={"description": "A registered request kind (GET /tasks/v1/requests/kinds)"})
    payload = fields.Dict(load_default=dict, metadata={
        "description": "What is requested; its fields depend on the kind. `user` (a user id) defaults to the caller"})
    comment = fields.String(load_default="", validate=validate.Length(max=2000),
                            metadata={"description": "Why, for the approvers"})


class RequestDecisionSchema(Schema):
    comment = fields.String(load_default="", validate=validate.Length(max=2000),
                            metadata={"description": "Why, for the requester and the record"})


class RequestListArgs(Schema):
    awaiting = fields.String(load_default=None, validate=validate.OneOf(["me"]),
                             metadata={"description": "`me`: the pending requests awaiting the caller's decision"})
    all = fields.Boolean(load_default=False, metadata={"description": "Every request (needs `read` on `Request`)"})
    state = fields.String(load_default=None, validate=validate.OneOf(STATES),
                          metadata={"description": "Only requests in this state (not with `awaiting`)"})


class RequestLevelSchema(Schema):
    approvers = fields.Dict(metadata={"description": '{"role": ...} or {"attribute": ..., "of": "target"|"requester"}'})
    rule = fields.Raw(metadata={"description": '"any", "all" or {"n": <number>}'})
    expire_seconds = fields.Float(metadata={"description": "Time the level has before it escalates or expires"})
    escalate_to = fields.Dict(metadata={"description": "Whom the level goes to when its time is over"})
    fallback = fields.Dict(metadata={"description": "Whom to ask when the approvers are nobody"})


class RequestDecisionRecordSchema(Schema):
    level = fields.Integer()
    by = fields.String(metadata={"description": "DN of the approver"})
    at = fields.String(metadata={"description": "UTC, ISO 8601"})
    decision = fields.String(metadata={"description": "approve or decline"})
    comment = fields.String()


class RequestSchema(Schema):
    id = fields.String(metadata={"description": "The request id (a UUID)"})
    kind = fields.String()
    summary = fields.String(metadata={"description": "What is requested, in words"})
    state = fields.String(metadata={"description": "pending, approved (its action is queued), declined, expired, "
                                                   "done or failed"})
    requester = fields.String(metadata={"description": "DN of who filed it"})
    target = fields.String(allow_none=True, metadata={"description": "DN of the user it is about"})
    payload = fields.Dict()
    level = fields.Integer(allow_none=True, metadata={"description": "The level it waits at (from 1), while pending"})
    levels = fields.Integer(metadata={"description": "How many levels it has"})
    awaiting = fields.List(fields.String(), metadata={"description": "DNs whose decision the current level awaits"})
    needed = fields.Integer(allow_none=True, metadata={"description": "Approvals the current level needs in all"})
    deadline = fields.String(allow_none=True, metadata={"description": "When the current level escalates or expires"})
    workflow = fields.List(fields.Nested(RequestLevelSchema), metadata={"description": "The levels, as filed"})
    decisions = fields.List(fields.Nested(RequestDecisionRecordSchema))
    history = fields.List(fields.Dict(), metadata={"description": "Every event: filed, level-started, escalated, "
                                                                  "level-approved, approved, declined, expired, "
                                                                  "done, failed, ... with time and details"})
    outcome = fields.Dict(allow_none=True, metadata={"description": "The action's result: status, message, "
                                                                    "result or context (e.g. the violated set)"})
    created = fields.String(allow_none=True)
    updated = fields.String(allow_none=True)


class RequestKindSchema(Schema):
    name = fields.String()
    description = fields.String()
    action = fields.String(metadata={"description": "The task handler that carries it out"})
    workflow = fields.List(fields.Nested(RequestLevelSchema), metadata={"description": "The levels in force"})


@blueprint.before_request
def _authenticate() -> None:
    """Asked before the body is parsed, so anonymous callers get 401, not 422."""
    if flask.request.method != "OPTIONS":
        current_actor()


def _requests() -> Requests:
    return current_host().service("requests")


def visible(view):
    """The request of the path must be one the caller may read (403/404 before the body is parsed)."""

    @functools.wraps(view)
    def guarded(self, *args, request_id, **path):
        flask.g.didmos_tasks_request = _requests().require_read(current_actor(), request_id)
        return view(self, *args, request_id=request_id, **path)

    return guarded


@blueprint.route("")
class RequestList(MethodView):
    @blueprint.response(200, RequestSchema(many=True))
    @blueprint.arguments(RequestListArgs, location="query")
    def get(self, args):
        """The caller's requests, newest first; `?awaiting=me` those awaiting its decision; `?all=true` all.

        Anyone for its own; `?all=true` needs `read` on `Request`.
        """
        actor, requests = current_actor(), _requests()
        if args["awaiting"]:
            found = requests.awaiting(actor.dn)
        elif args["all"]:
            if not current_host().authorize(actor, Action("read", RESOURCE_TYPE, requests.base_dn)):
                raise Forbidden("not allowed to read every request")
            found = requests.everything(args["state"])
        else:
            found = requests.filed_by(actor.dn, args["state"])
        return [describe(request) for request in found]

    @blueprint.response(201, RequestSchema)
    @blueprint.arguments(RequestCreateSchema)
    def post(self, body):
        """File a request (400 for an unknown kind or a bad payload, 409 when it is moot or nobody can
        decide it).

        For oneself always; for another user needs `create` on `Request` for that user.
        """
        request = _requests().file(current_actor(), body["kind"], body["payload"], body["comment"])
        return describe(request), 201, {"Location": flask.url_for("requests.RequestItem", request_id=request.id)}


@blueprint.route("/kinds")
class Kinds(MethodView):
    @blueprint.response(200, RequestKindSchema(many=True))
    def get(self):
        """The kinds of request that can be filed, with the levels in force.

        Anyone authenticated.
        """
        requests = _requests()
        return [{"name": kind.name, "description": kind.description, "action": kind.action,
                 "workflow": [level.to_json() for level in requests.workflow(kind)]} for kind in requests.kinds()]


@blueprint.route("/<request_id>")
class RequestItem(MethodView):
    @blueprint.response(200, RequestSchema)
    @visible
    def get(self, request_id):
        """One request: its state, levels, decisions, history and outcome.

        Its requester, the user it is about, an approver of any level so far, or `read` on `Request`.
        """
        return describe(flask.g.didmos_tasks_request)


@blueprint.route("/<request_id>/approve")
class Approve(MethodView):
    @blueprint.response(200, RequestSchema)
    @visible
    @blueprint.arguments(RequestDecisionSchema)
    def post(self, body, request_id):
        """Approve the current level (the last approval queues the action).

        Only an approver the current level still awaits (403 for others; 409 when no longer pending).
        """
        return describe(_requests().decide(current_actor(), request_id, True, body["comment"]))


@blueprint.route("/<request_id>/decline")
class Decline(MethodView):
    @blueprint.response(200, RequestSchema)
    @visible
    @blueprint.arguments(RequestDecisionSchema)
    def post(self, body, request_id):
        """Decline: the request ends, declined.

        Only an approver the current level still awaits (403 for others; 409 when no longer pending).
        """
        return describe(_requests().decide(current_actor(), request_id, False, body["comment"]))
