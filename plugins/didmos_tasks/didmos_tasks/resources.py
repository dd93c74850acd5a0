"""The outbox's REST API, ``/tasks/v1``: submit a task, look at tasks (the failed ones), retry one.

Every route authenticates first (401 without credentials, before the body is read), then asks the
PDP for an operation on the resource type ``Task`` (``Host.authorize``): ``create`` to submit,
``read`` to list or look at one, ``write`` to retry. The target is the task's entry, or
``tasks.base_dn`` for submitting and listing. Only the superadmin may by default (``tenant-everything``
covers every resource type); whether a task id exists is told only to callers who may read it.

The bodies are defined here rather than in a ``schemas.py`` beside it: the plugin's other parts
(requests, notifications) bring their own modules, and these three shapes serve this file alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flask

from didmos_host.api import Blueprint, MethodView, Schema, fields, validate
from didmos_host.app import current_actor, current_host
from didmos_host.errors import Forbidden
from didmos_host.records import Action
from didmos_tasks.outbox import STATES, Outbox

blueprint = Blueprint("tasks", __name__, url_prefix="/tasks/v1",
                      description="The task outbox: tasks are stored before they are queued, so none a client was "
                                  "told about is lost; failed tasks can be listed and retried")


class TaskSchema(Schema):
    id = fields.String(metadata={"description": "The task id (a UUID; also its rq job id)"})
    name = fields.String(metadata={"description": "The task handler that runs it"})
    payload = fields.Dict(metadata={"description": "What the handler gets"})
    state = fields.String(metadata={"description": "pending (stored and queued, or waiting for redis; no attempt "
                                                   "started), queued (waiting for another attempt), running, "
                                                   "done or failed (no attempts left, or a permanent error)"})
    attempts = fields.Integer(metadata={"description": "Attempts started since it was submitted or last retried"})
    key = fields.String(allow_none=True, metadata={"description": "The idempotency key it was submitted with"})
    actor = fields.String(allow_none=True, metadata={"description": "DN of whoever submitted it"})
    submitted = fields.String(allow_none=True, metadata={"description": "When it was stored (UTC, ISO 8601)"})
    started = fields.String(allow_none=True, metadata={"description": "When its last attempt started"})
    finished = fields.String(allow_none=True, metadata={"description": "When it became done or failed"})
    error = fields.String(allow_none=True, metadata={"description": "Why its last attempt failed"})
    result = fields.Raw(allow_none=True, metadata={"description": "What the handler returned (JSON), when small"})


class TaskSubmitSchema(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=256),
                         metadata={"description": "A registered task handler"})
    payload = fields.Dict(load_default=dict, metadata={"description": "JSON object the handler gets"})
    key = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256), metadata={
        "description": "Idempotency key: submitting the same handler and key again returns the first task"})


class TaskListArgs(Schema):
    state = fields.String(load_default=None, validate=validate.OneOf(STATES),
                          metadata={"description": "Only tasks in this state (failed: the failed list)"})
    limit = fields.Integer(load_default=None, validate=validate.Range(min=1),
                           metadata={"description": "At most this many (and at most tasks.list_limit)"})


@blueprint.before_request
def _authenticate() -> None:
    if flask.request.method != "OPTIONS":
        current_actor()


def _outbox() -> Outbox:
    return current_host().service("outbox")


def authorize(operation: str, target: Callable[..., str]):
    """Ask for ``operation`` on ``Task`` (target computed from the path parameters) before the view and
    before its body is parsed, so that a caller who may not gets 403, not 422."""

    def decorate(view):
        @functools.wraps(view)
        def guarded(self, *args, **path):
            dn = target(_outbox(), **path)
            if not current_host().authorize(current_actor(), Action(operation, "Task", dn)):
                raise Forbidden(f"not allowed to {operation} Task {dn}")
            return view(self, *args, **path)

        return guarded

    return decorate


def _container(outbox: Outbox, **_) -> str:
    return outbox.base_dn


def _entry(outbox: Outbox, task_id: str, **_) -> str:
    return outbox.dn(task_id)


@blueprint.route("/tasks")
class Tasks(MethodView):
    @blueprint.response(200, TaskSchema(many=True))
    @authorize("read", _container)
    @blueprint.arguments(TaskListArgs, location="query")
    def get(self, args):
        """Tasks, oldest first; `?state=failed` is the failed list.

        Needs `read` on `Task`.
        """
        return [task.as_dict() for task in _outbox().list(state=args["state"], limit=args["limit"])]

    @blueprint.response(202, TaskSchema)
    @authorize("create", _container)
    @blueprint.arguments(TaskSubmitSchema)
    def post(self, body):
        """Submit a task: stored first, then queued (`pending` until a worker starts it; when redis is down it
        is queued later).

        Needs `create` on `Task`. 202 with the task and its `Location`.
        """
        task = _outbox().submit(body["name"], body["payload"], key=body["key"], actor=current_actor())
        return task.as_dict(), 202, {"Location": flask.url_for("tasks.TaskItem", task_id=task.id)}


@blueprint.route("/tasks/<task_id>")
class TaskItem(MethodView):
    @blueprint.response(200, TaskSchema)
    @authorize("read", _entry)
    def get(self, task_id):
        """One task.

        Needs `read` on `Task`.
        """
        return _outbox().get(task_id).as_dict()


@blueprint.route("/tasks/<task_id>/retry")
class TaskRetry(MethodView):
    @blueprint.response(202, TaskSchema)
    @authorize("write", _entry)
    def post(self, task_id):
        """Run a failed task again with a fresh set of attempts (409 unless it is failed).

        Needs `write` on `Task`.
        """
        return _outbox().retry(task_id).as_dict()
