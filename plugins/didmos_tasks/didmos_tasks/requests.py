"""Requests and approvals: someone asks, approvers decide level by level, a task carries it out.

A request is one directory entry ``cn=<id>,<requests.base_dn>`` (object class ``didmosRequest``), so
it survives redis and every node sees it. Its life::

    pending (level 1 .. n) --approve--> approved --task--> done | failed
            |          \\--decline--> declined
            \\--deadline passed, no escalation left--> expired

* **Kinds** say what can be requested: a name, ``validate`` for the payload, the default approval
  levels and the action, the name of a task handler. Plugins register them on the ``requests``
  service (:meth:`Requests.register_kind`) from their ``didmos_services`` hook; ``assign-role`` and
  ``join-group`` are built in (:mod:`didmos_tasks.requests_plugin`).
* **Levels** (settings ``requests.workflows``, else the kind's defaults) name their approvers by role
  (every user the PDP authorizes for it) or by an attribute of the target or requester (``manager``),
  a rule (``any``, ``all``, ``{"n": 2}``), and optionally a time after which the level is handed to
  ``escalate_to`` or, without that, expires. Approvers are resolved when a level starts; the
  requester and the target never approve their own request (unless ``requests.allow_self_approval``).
* **Every write is conditional** on the entry's ``entryCSN`` as read (Assertion control): two
  approvers deciding at once cannot both pass a level on the same state; the loser re-reads and
  decides again on the new state.
* **The action** runs as the task ``didmos.requests.act`` in the worker, as the service account,
  after re-checking the approval chain (each level's approvals, and with the PDP that role approvers
  still hold their role). It records ``done`` or ``failed`` with its outcome; a request that is done or
  failed is never run again.
* **Mail** (when the ``notifications`` service is there and ``notify.enabled``): each approver a level
  starts waiting for (filed, next level, escalated) gets ``request-pending``; the requester gets
  ``request-decided`` when the request is declined, expires, is carried out or fails. Each mail is an
  outbox task keyed by the history line and recipient, so sending again for one event sends nothing
  more, and a mail accepted while redis is down is sent once it is back. Mail never fails the step
  that caused it (:meth:`Requests._announce`).
* **Time** is kept by :func:`sweep`: levels whose time is over escalate or expire, and an approved
  request whose action has not reported back after ``requests.action_retry_seconds`` is queued again.
  Every ``didmos worker`` queues the sweep every ``requests.sweep_seconds``
  (:func:`didmos_host.tasks.enqueue_periodically`: once per period however many workers run).
"""

from __future__ import annotations

import json
import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import ldap
import ldap.dn

from didmos_host.errors import (
    ConfigError, DidmosError, Forbidden, NotFound, PreconditionFailed, Unavailable,
)
from didmos_host.records import Action, Actor

log = logging.getLogger("didmos.requests")

#: The states of a request; the first two are still open.
STATES = ("pending", "approved", "declined", "expired", "done", "failed")
#: Task handler names this module registers (see requests_plugin.didmos_task_handlers).
ACT_TASK = "didmos.requests.act"
SWEEP_TASK = "didmos.requests.sweep"
#: The PDP resource type of requests: ``create`` (file for someone else), ``read`` (see any request).
RESOURCE_TYPE = "Request"

OBJECT_CLASS = "didmosRequest"
ATTRIBUTES = ["cn", "description", "didmosRequestKind", "didmosRequestState", "didmosRequester",
              "didmosRequestTarget", "didmosRequestPayload", "didmosRequestLevel", "didmosRequestWorkflow",
              "didmosRequestLevelState", "didmosRequestApprover", "didmosRequestParticipant",
              "didmosRequestDeadline", "didmosRequestDecision", "didmosRequestHistory", "didmosRequestOutcome",
              "didmosRequestAction", "entryCSN", "createTimestamp", "modifyTimestamp"]
#: How often a decision re-reads and tries again when another write got in first.
ATTEMPTS = 6
#: History events after which the requester is told the outcome, and the word the mail uses for each.
OUTCOMES = {"declined": "declined", "expired": "expired (nobody decided in time)", "done": "carried out",
            "failed": "approved but could not be carried out"}
#: Attributes read from the entries of approvers and requesters to write to them.
MAIL_ATTRIBUTES = ["mail", "displayName", "cn", "uid"]


class InvalidRequest(DidmosError):
    """A request body or payload that cannot be filed: what was wrong and what would be right."""

    status = 400


class Conflict(DidmosError):
    """The request is not in a state that allows this (decided already, or nobody can decide it)."""

    status = 409


# -- time ------------------------------------------------------------------------------------------------

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _gtime(moment: datetime) -> str:
    """LDAP GeneralizedTime, whole seconds (``20260105133802Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


def _from_gtime(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dn_key(dn: str) -> tuple:
    try:
        return tuple(tuple(sorted((attr.lower(), value.lower()) for attr, value, _ in rdn))
                     for rdn in ldap.dn.str2dn(dn))
    except ldap.DECODING_ERROR:
        return (dn.lower(),)


def same_dn(a: str | None, b: str | None) -> bool:
    """Whether two DNs name one entry (attribute types and values compared case-insensitively)."""
    return a is not None and b is not None and _dn_key(a) == _dn_key(b)


def _plain(value: Any) -> Any:
    """Settings values (dynaconf boxes) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- workflows ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Approvers:
    """Who decides: every user authorized for ``role``, or the DNs in ``attribute`` of the target's
    (``of="target"``) or the requester's (``of="requester"``) entry."""

    role: str | None = None
    attribute: str | None = None
    of: str = "target"

    @classmethod
    def parse(cls, value: Any, where: str) -> Approvers:
        value = _plain(value)
        if not isinstance(value, dict) or len({"role", "attribute"} & value.keys()) != 1:
            raise ConfigError(f"{where} must be {{\"role\": \"<role name>\"}} or {{\"attribute\": \"manager\"}} "
                              f"(optionally with \"of\": \"target\" or \"requester\"), got {value!r}")
        unknown = value.keys() - {"role", "attribute", "of"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: role, attribute, of")
        of = value.get("of", "target")
        if of not in ("target", "requester"):
            raise ConfigError(f"{where}.of must be 'target' or 'requester', got {of!r}")
        name = value.get("role", value.get("attribute"))
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} names no role or attribute: {value!r}")
        if "role" in value:
            return cls(role=name)
        return cls(attribute=name, of=of)

    def to_json(self) -> dict:
        return {"role": self.role} if self.role else {"attribute": self.attribute, "of": self.of}

    def describe(self) -> str:
        return f"role {self.role!r}" if self.role else f"the {self.of}'s {self.attribute}"


@dataclass(frozen=True)
class Level:
    """One approval level: its approvers, the rule (``"any"``, ``"all"`` or a number n of them), and
    optionally a time limit, whom it escalates to then, and whom to ask when the approvers are nobody."""

    approvers: Approvers
    rule: str | int = "any"
    expire_seconds: float | None = None
    escalate_to: Approvers | None = None
    fallback: Approvers | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> Level:
        value = _plain(value)
        if not isinstance(value, dict) or "approvers" not in value:
            raise ConfigError(f"{where} must be a table with at least 'approvers', got {value!r}")
        unknown = value.keys() - {"approvers", "rule", "expire_seconds", "escalate_to", "fallback"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; allowed: approvers, rule, "
                              f"expire_seconds, escalate_to, fallback")
        rule = value.get("rule", "any")
        if isinstance(rule, dict) and set(rule) == {"n"}:
            rule = rule["n"]
            if not isinstance(rule, int) or isinstance(rule, bool) or rule < 1:
                raise ConfigError(f"{where}.rule {{\"n\": ...}} needs a whole number of at least 1, got {rule!r}")
        elif rule not in ("any", "all"):
            raise ConfigError(f"{where}.rule must be \"any\", \"all\" or {{\"n\": <number>}}, got {rule!r}")
        expire = value.get("expire_seconds")
        if expire is not None and (isinstance(expire, bool) or not isinstance(expire, (int, float)) or expire <= 0):
            raise ConfigError(f"{where}.expire_seconds must be a positive number of seconds, got {expire!r}")
        escalate = value.get("escalate_to")
        if escalate is not None and expire is None:
            raise ConfigError(f"{where}.escalate_to needs expire_seconds: escalation happens when the level's "
                              f"time is over")
        fallback = value.get("fallback")
        return cls(Approvers.parse(value["approvers"], f"{where}.approvers"), rule, expire,
                   None if escalate is None else Approvers.parse(escalate, f"{where}.escalate_to"),
                   None if fallback is None else Approvers.parse(fallback, f"{where}.fallback"))

    def to_json(self) -> dict:
        data: dict[str, Any] = {"approvers": self.approvers.to_json(),
                                "rule": self.rule if isinstance(self.rule, str) else {"n": self.rule}}
        if self.expire_seconds is not None:
            data["expire_seconds"] = self.expire_seconds
        if self.escalate_to is not None:
            data["escalate_to"] = self.escalate_to.to_json()
        if self.fallback is not None:
            data["fallback"] = self.fallback.to_json()
        return data


def parse_workflow(value: Any, where: str) -> tuple[Level, ...]:
    """A list of levels from settings or a kind's defaults; :class:`ConfigError` naming what is wrong."""
    value = _plain(value)
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list of levels, got {value!r}")
    return tuple(Level.parse(level, f"{where}[{i}]") for i, level in enumerate(value))


# -- kinds -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestKind:
    """What can be requested.

    ``validate(host, payload, target_dn)`` checks a payload and returns it as it is to be stored
    (JSON-safe), or raises :class:`InvalidRequest` (400), :class:`Conflict` (409) or another
    :class:`DidmosError`; ``target_dn`` is the entry of the user named by the payload's ``about``
    field (default: the requester), or ``None`` for a kind with ``about=None``. ``action`` names the
    task handler that carries an approved request out: it gets ``{"request", "kind", "payload",
    "target", "requester"}`` and returns a JSON-safe result, or raises a :class:`DidmosError` whose
    message and ``detail`` become the failed outcome (:class:`Unavailable`: try again later).
    ``levels`` are the approval levels when ``requests.workflows`` has none for the kind.
    """

    name: str
    validate: Callable[[Any, dict, str | None], dict]
    action: str
    levels: tuple[Level, ...] = ()
    description: str = ""
    about: str | None = "user"
    summary: Callable[[dict, str | None], str] | None = None


@dataclass
class LevelState:
    """The current level of a pending request (JSON in ``didmosRequestLevelState``)."""

    level: int  # from 1
    approvers: list[str]  # who the level was given to when it started (or escalated)
    needed: int
    source: dict  # the Approvers spec they came from (for the PDP re-check)
    since: int  # history sequence number of the start: approvals after it count
    escalated: bool = False
    deadline: str | None = None  # ISO time, or None

    def to_json(self) -> dict:
        return {"level": self.level, "approvers": self.approvers, "needed": self.needed, "source": self.source,
                "since": self.since, "escalated": self.escalated, "deadline": self.deadline}

    @classmethod
    def from_json(cls, data: dict) -> LevelState:
        return cls(data["level"], list(data["approvers"]), data["needed"], data["source"], data["since"],
                   data.get("escalated", False), data.get("deadline"))


@dataclass
class Request:
    """One request as read from its entry."""

    id: str
    dn: str
    kind: str
    state: str
    requester: str
    target: str | None
    payload: dict
    action: str
    workflow: tuple[Level, ...]
    summary: str = ""
    current: LevelState | None = None
    awaiting: list[str] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    deadline: datetime | None = None
    decisions: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    outcome: dict | None = None
    created: datetime | None = None
    modified: datetime | None = None
    version: str | None = None

    @classmethod
    def from_entry(cls, entry) -> Request:
        def lines(attr):
            return sorted((json.loads(v) for v in entry.values(attr)), key=lambda e: e["n"])

        state = entry.first("didmosRequestLevelState")
        outcome = entry.first("didmosRequestOutcome")
        return cls(
            id=entry.first("cn"), dn=entry.dn, kind=entry.first("didmosRequestKind"),
            state=entry.first("didmosRequestState"), requester=entry.first("didmosRequester"),
            target=entry.first("didmosRequestTarget"), payload=json.loads(entry.first("didmosRequestPayload")),
            action=entry.first("didmosRequestAction"), summary=entry.first("description") or "",
            workflow=parse_workflow(json.loads(entry.first("didmosRequestWorkflow")), f"request {entry.dn}"),
            current=LevelState.from_json(json.loads(state)) if state else None,
            awaiting=entry.values("didmosRequestApprover"), participants=entry.values("didmosRequestParticipant"),
            deadline=_from_gtime(entry.first("didmosRequestDeadline")),
            decisions=lines("didmosRequestDecision"), history=lines("didmosRequestHistory"),
            outcome=json.loads(outcome) if outcome else None,
            created=_from_gtime(entry.first("createTimestamp")), modified=_from_gtime(entry.first("modifyTimestamp")),
            version=entry.first("entryCSN"),
        )

    @property
    def next_n(self) -> int:
        """The next sequence number for a history line or decision (they share one sequence)."""
        return max((e["n"] for e in (*self.history, *self.decisions)), default=0) + 1

    def involves(self, dn: str) -> bool:
        """The requester, the target, or an approver of any level so far."""
        return any(same_dn(dn, other) for other in (self.requester, self.target, *self.participants))

    def awaits(self, dn: str) -> bool:
        return self.state == "pending" and any(same_dn(dn, other) for other in self.awaiting)


@dataclass
class _Change:
    """What one transition writes: replaced single attributes and appended lines."""

    replace: dict[str, list[Any]] = field(default_factory=dict)
    add: dict[str, list[Any]] = field(default_factory=dict)
    n: int = 1

    def event(self, event: str, **data: Any) -> dict:
        line = {"n": self.n, "at": _iso(_now()), "event": event, **{k: v for k, v in data.items() if v is not None}}
        self.n += 1
        self.add.setdefault("didmosRequestHistory", []).append(json.dumps(line, sort_keys=True))
        return line

    def decision(self, level: int, by: str, decision: str, comment: str) -> None:
        line = {"n": self.n, "at": _iso(_now()), "level": level, "by": by, "decision": decision, "comment": comment}
        self.n += 1
        self.add.setdefault("didmosRequestDecision", []).append(json.dumps(line, sort_keys=True))

    def modlist(self) -> list[tuple[int, str, Any]]:
        return ([(ldap.MOD_REPLACE, attr, values) for attr, values in self.replace.items()]
                + [(ldap.MOD_ADD, attr, values) for attr, values in self.add.items()])


class NobodyToDecide(DidmosError):
    """A level whose approvers resolve to nobody (or to fewer than its rule needs)."""

    status = 409


# -- the service ---------------------------------------------------------------------------------------

class Requests:
    """The ``requests`` service: the kind registry and every step of a request's life."""

    def __init__(self, host):
        self.host = host
        cfg = host.settings.requests
        self.base_dn: str = cfg.base_dn
        self.allow_self_approval: bool = bool(cfg.allow_self_approval)
        self.action_retry_seconds: float = float(cfg.action_retry_seconds)
        self.sweep_seconds: int = int(cfg.sweep_seconds)
        configured = _plain(cfg.workflows) or {}
        #: kind name -> levels from settings (parsed now, so a wrong workflow stops start-up)
        self.configured = {kind: parse_workflow(levels, f"requests.workflows.{kind}")
                           for kind, levels in configured.items()}
        self._kinds: dict[str, RequestKind] = {}

    # -- services of other plugins ---------------------------------------------------------------

    @property
    def directory(self):
        return self.host.service("directory")

    @property
    def rbac(self):
        return self.host.service("rbac_admin")

    # -- kinds -------------------------------------------------------------------------------------

    def register_kind(self, name: str, *, validate: Callable[[Any, dict, str | None], dict], action: str,
                      levels: Iterable[Any] = (), description: str = "", about: str | None = "user",
                      summary: Callable[[dict, str | None], str] | None = None, replace: bool = False) -> RequestKind:
        """Register a request kind (see :class:`RequestKind`); a second kind of one name is an error
        unless ``replace`` (a customer plugin replacing a built-in one)."""
        if name in self._kinds and not replace:
            raise DidmosError(f"two plugins register a request kind named {name!r}; rename one of them "
                              f"or pass replace=True to replace it on purpose")
        levels = tuple(levels)
        kind = RequestKind(name, validate, action,
                           parse_workflow(list(levels), f"request kind {name!r} levels") if levels else (),
                           description, about, summary)
        self._kinds[name] = kind
        return kind

    def kinds(self) -> list[RequestKind]:
        return [self._kinds[name] for name in sorted(self._kinds)]

    def kind(self, name: str) -> RequestKind:
        kind = self._kinds.get(name)
        if kind is None:
            known = ", ".join(sorted(self._kinds)) or "none"
            raise InvalidRequest(f"no request kind named {name!r}; known kinds: {known}")
        return kind

    def workflow(self, kind: RequestKind) -> tuple[Level, ...]:
        """The levels in force for ``kind``: ``requests.workflows.<kind>``, else the kind's own."""
        levels = self.configured.get(kind.name) or kind.levels
        if not levels:
            raise ConfigError(f"request kind {kind.name!r} has no approval levels: set requests.workflows."
                              f"{kind.name} (a list of levels, see docs/tasks.md)")
        return levels

    # -- reading -----------------------------------------------------------------------------------

    def dn(self, request_id: str) -> str:
        return f"cn={ldap.dn.escape_dn_chars(request_id)},{self.base_dn}"

    def get(self, request_id: str) -> Request:
        """The request with id ``request_id`` as it is now (always read from the directory)."""
        try:
            uuidlib.UUID(request_id)
        except ValueError:
            raise NotFound(f"no request {request_id!r} (request ids are UUIDs)") from None
        found = self.directory.search(self.dn(request_id), f"(objectClass={OBJECT_CLASS})", ldap.SCOPE_BASE, ATTRIBUTES)
        if not found:
            raise NotFound(f"no request {request_id!r}")
        return Request.from_entry(found[0])

    def _list(self, condition) -> list[Request]:
        from didmos_ldap.filters import eq

        entries = self.directory.search(self.base_dn, eq("objectClass", OBJECT_CLASS) & condition,
                                        ldap.SCOPE_ONELEVEL, ATTRIBUTES)
        requests = [Request.from_entry(entry) for entry in entries]
        return sorted(requests, key=lambda r: (r.created or datetime.min.replace(tzinfo=timezone.utc), r.id),
                      reverse=True)

    def filed_by(self, dn: str, state: str | None = None) -> list[Request]:
        """The requests ``dn`` filed, newest first."""
        from didmos_ldap.filters import eq

        condition = eq("didmosRequester", dn)
        return self._list(condition & eq("didmosRequestState", state) if state else condition)

    def awaiting(self, dn: str) -> list[Request]:
        """The pending requests whose current level still awaits ``dn``'s decision."""
        from didmos_ldap.filters import eq

        return self._list(eq("didmosRequestState", "pending") & eq("didmosRequestApprover", dn))

    def everything(self, state: str | None = None) -> list[Request]:
        from didmos_ldap.filters import eq, present

        return self._list(eq("didmosRequestState", state) if state else present("didmosRequestState"))

    # -- who may -----------------------------------------------------------------------------------

    def may_read(self, actor: Actor, request: Request) -> bool:
        """Requester, target and approvers of any level so far; anyone else needs ``read`` on ``Request``."""
        return request.involves(actor.dn) or self.host.authorize(actor, Action("read", RESOURCE_TYPE, request.dn))

    def require_read(self, actor: Actor, request_id: str) -> Request:
        """The request, if ``actor`` may see it. An unknown id is 404 only for those who may read every
        request; others get 403 for it, as for a request they may not see."""
        try:
            request = self.get(request_id)
        except NotFound:
            if not self.host.authorize(actor, Action("read", RESOURCE_TYPE, self.base_dn)):
                raise Forbidden(f"not allowed to read request {request_id}") from None
            raise
        if not self.may_read(actor, request):
            raise Forbidden(f"not allowed to read request {request_id}")
        return request

    # -- approvers -----------------------------------------------------------------------------------

    def _resolve(self, spec: Approvers, requester: str, target: str | None) -> tuple[list[str], str]:
        """The DNs ``spec`` names now, and why there are none when there are none."""
        if spec.role:
            try:
                found = self.rbac.authorized_users(spec.role)
            except NotFound:
                return [], f"there is no role named {spec.role!r}"
            why = f"nobody else holds role {spec.role!r}"
        else:
            whose = target if spec.of == "target" else requester
            entry = self.directory.get(whose, [spec.attribute]) if whose else None
            found = entry.values(spec.attribute) if entry is not None else []
            why = f"the {spec.of} has no {spec.attribute}"
        excluded = [] if self.allow_self_approval else [d for d in (requester, target) if d]
        approvers, seen = [], set()
        for dn in found:
            key = _dn_key(dn)
            if key not in seen and not any(same_dn(dn, e) for e in excluded):
                seen.add(key)
                approvers.append(dn)
        return sorted(approvers, key=str.lower), why

    def _start_level(self, index: int, levels: tuple[Level, ...], requester: str, target: str | None,
                     change: _Change, *, escalate: bool = False) -> LevelState:
        """Resolve level ``index`` (from 0) and write it into ``change``; :class:`NobodyToDecide` when it
        cannot be decided by anyone."""
        level = levels[index]
        specs = [level.escalate_to] if escalate else [s for s in (level.approvers, level.fallback) if s]
        reasons = []
        for spec in specs:
            approvers, why = self._resolve(spec, requester, target)
            rule = "any" if escalate else level.rule
            needed = 1 if rule == "any" else len(approvers) if rule == "all" else int(rule)
            if approvers and needed <= len(approvers):
                break
            reasons.append(why if not approvers else
                           f"{spec.describe()} gives {len(approvers)} approvers, the rule needs {needed}")
        else:
            raise NobodyToDecide(f"nobody can decide level {index + 1} of this request: " + "; ".join(reasons),
                                 detail={"level": index + 1})
        deadline = _now() + timedelta(seconds=level.expire_seconds) if level.expire_seconds else None
        state = LevelState(index + 1, approvers, needed, spec.to_json(), change.n, escalate, _iso(deadline))
        change.event("escalated" if escalate else "level-started", level=index + 1, approvers=approvers,
                     needed=needed, source=spec.to_json(), deadline=_iso(deadline))
        change.replace.update({
            "didmosRequestLevel": [index + 1], "didmosRequestLevelState": [json.dumps(state.to_json(), sort_keys=True)],
            "didmosRequestApprover": approvers, "didmosRequestDeadline": [_gtime(deadline)] if deadline else [],
        })
        change.add.setdefault("didmosRequestParticipant", []).extend(approvers)
        return state

    def _qualifies(self, dn: str, source: dict, request: Request) -> bool:
        """Whether ``dn`` still is what made it an approver: authorized for the role (asked of the PDP),
        or still in the attribute."""
        spec = Approvers.parse(source, "level source")
        if spec.role:
            try:
                return spec.role in self.rbac.authorized_roles(dn)
            except NotFound:  # the approver's entry is gone
                return False
        approvers, _ = self._resolve(spec, request.requester, request.target)
        return any(same_dn(dn, a) for a in approvers)

    # -- writing ---------------------------------------------------------------------------------------

    def _write(self, request: Request, change: _Change, actor: Actor | None) -> Request:
        """Apply ``change`` if the entry is still as ``request`` was read; :class:`PreconditionFailed` if not."""
        # permissive: a level's approvers may have been participants of an earlier one already
        entry = self.directory.modify(request.dn, change.modlist(), actor=actor, permissive=True,
                                      if_match=f"(entryCSN={request.version})", read_back=ATTRIBUTES)
        return Request.from_entry(entry) if entry is not None else self.get(request.id)

    def _transition(self, request_id: str, decide: Callable[[Request], _Change | None],
                    actor: Actor | None) -> tuple[Request, bool]:
        """Read, let ``decide`` compute the change from what is there, write it conditionally; on a
        concurrent change read again and decide again. Returns the request and whether it changed
        (``decide`` returns None for nothing to do)."""
        for attempt in range(ATTEMPTS):
            request = self.get(request_id)
            change = decide(request)
            if change is None:
                return request, False
            try:
                written = self._write(request, change, actor)
            except PreconditionFailed:
                time.sleep(0.02 * (attempt + 1))
                continue
            self._announce(written, since=request.next_n)
            return written, True
        raise Conflict(f"request {request_id} kept changing while this decision was written; try again")

    # -- filing ----------------------------------------------------------------------------------------

    def file(self, actor: Actor, kind_name: str, payload: dict, comment: str = "") -> Request:
        """File a request of ``kind_name`` for the user the payload names (default: the actor).

        For oneself always; for another user needs ``create`` on ``Request`` with that user as target.
        """
        kind = self.kind(kind_name)
        if not isinstance(payload, dict):
            raise InvalidRequest(f"payload must be a JSON object, got {type(payload).__name__}")
        payload = dict(payload)
        target = None
        if kind.about:
            user_id = payload.get(kind.about) or actor.uuid
            if not isinstance(user_id, str):
                raise InvalidRequest(f"payload.{kind.about} must be a user id (string), got {user_id!r}")
            payload[kind.about] = user_id
            target = self._target(actor, user_id)
        elif not self.host.authorize(actor, Action("create", RESOURCE_TYPE, self.base_dn)):
            raise Forbidden(f"not allowed to file {kind.name!r} requests")
        try:
            stored = kind.validate(self.host, payload, target)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"payload of a {kind.name!r} request is not valid: {exc}") from exc
        try:
            safe = json.loads(json.dumps(stored)) == stored
        except (TypeError, ValueError):
            safe = False
        if not safe:
            raise DidmosError(f"request kind {kind.name!r} returned a payload that is not JSON-safe")
        levels = self.workflow(kind)
        request_id = str(uuidlib.uuid4())
        change = _Change()
        change.event("filed", by=actor.dn, comment=comment or None)
        self._start_level(0, levels, actor.dn, target, change)
        summary = kind.summary(stored, target) if kind.summary else kind.name
        attrs = {
            "objectClass": [OBJECT_CLASS], "cn": [request_id], "description": [summary],
            "didmosRequestKind": [kind.name], "didmosRequestState": ["pending"], "didmosRequester": [actor.dn],
            "didmosRequestPayload": [json.dumps(stored, sort_keys=True)], "didmosRequestAction": [kind.action],
            "didmosRequestWorkflow": [json.dumps([level.to_json() for level in levels])],
            **{attr: values for attr, values in change.replace.items() if values},
            **{attr: list(dict.fromkeys(values)) for attr, values in change.add.items() if values},
        }
        if target:
            attrs["didmosRequestTarget"] = [target]
        entry = self.directory.add(self.dn(request_id), attrs, actor=actor, read_back=ATTRIBUTES)
        log.info("request %s (%s) filed by %s", request_id, kind.name, actor.dn)
        request = Request.from_entry(entry) if entry is not None else self.get(request_id)
        self._announce(request, since=1)
        return request

    def _target(self, actor: Actor, user_id: str) -> str:
        """The DN of the user a request is about, if ``actor`` may file for that user."""
        if user_id.lower() == actor.uuid.lower():
            return actor.dn
        entry = self.directory.get_by_uuid(user_id, self.host.settings.ldap.base_dn, ["1.1"])
        if entry is None:
            if self.host.authorize(actor, Action("create", RESOURCE_TYPE)):
                raise InvalidRequest(f"no user with id {user_id!r}")
            raise Forbidden("not allowed to file requests for other users")
        if same_dn(entry.dn, actor.dn):
            return actor.dn
        if not self.host.authorize(actor, Action("create", RESOURCE_TYPE, entry.dn)):
            raise Forbidden("not allowed to file requests for other users")
        return entry.dn

    # -- deciding --------------------------------------------------------------------------------------

    def decide(self, actor: Actor, request_id: str, approve: bool, comment: str = "") -> Request:
        """Approve or decline the current level as ``actor``.

        Only someone the current level still awaits, who still qualifies (role: the PDP authorizes
        them for it; attribute: still named there), may: others get 403. A request that is no longer
        pending, or whose level the actor decided already, is 409.
        """
        def step(request: Request) -> _Change:
            if not self.may_read(actor, request):
                raise Forbidden(f"not allowed to decide on request {request_id}")
            if request.state != "pending":
                raise Conflict(f"request {request_id} is {request.state}: nothing is left to decide")
            current = request.current
            if not request.awaits(actor.dn):
                if any(same_dn(actor.dn, p) for p in request.participants):
                    raise Conflict(f"nothing on request {request_id} awaits your decision: it is at level "
                                   f"{current.level} of {len(request.workflow)}, and you decided already or are "
                                   f"not an approver of this level")
                raise Forbidden(f"you are not an approver of level {current.level} of request {request_id}")
            if not self._qualifies(actor.dn, current.source, request):
                raise Forbidden(f"you no longer qualify as an approver of level {current.level} "
                                f"({Approvers.parse(current.source, 'source').describe()})")
            change = _Change(n=request.next_n)
            change.decision(current.level, actor.dn, "approve" if approve else "decline", comment)
            if not approve:
                change.event("declined", level=current.level, by=actor.dn, comment=comment or None)
                self._close(change, "declined")
                return change
            approvals = {_dn_key(d["by"]) for d in request.decisions
                         if d["level"] == current.level and d["decision"] == "approve" and d["n"] > current.since}
            approvals.add(_dn_key(actor.dn))
            if len(approvals) < current.needed:
                change.replace["didmosRequestApprover"] = [a for a in request.awaiting if not same_dn(a, actor.dn)]
                return change
            change.event("level-approved", level=current.level)
            if current.level < len(request.workflow):
                try:
                    self._start_level(current.level, request.workflow, request.requester, request.target, change)
                except NobodyToDecide as exc:
                    change.event("failed", detail=exc.message)
                    self._close(change, "failed", {"status": "failed", "message": exc.message})
                return change
            self._approved(change)
            return change

        request, changed = self._transition(request_id, step, actor)
        if changed and request.state == "approved":
            self._enqueue_action(request, actor)
        return request

    def _close(self, change: _Change, state: str, outcome: dict | None = None) -> None:
        change.replace.update({"didmosRequestState": [state], "didmosRequestApprover": [],
                               "didmosRequestDeadline": []})
        if outcome is not None:
            change.replace["didmosRequestOutcome"] = [json.dumps(outcome, sort_keys=True)]

    def _approved(self, change: _Change) -> None:
        """The last level passed: approved, and the action is due; retried if it does not report back."""
        retry_at = _now() + timedelta(seconds=self.action_retry_seconds)
        change.event("approved")
        change.replace.update({"didmosRequestState": ["approved"], "didmosRequestApprover": [],
                               "didmosRequestDeadline": [_gtime(retry_at)]})

    # -- time ------------------------------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> dict[str, list[str]]:
        """Act on every request whose deadline is over: escalate or expire its level, or queue its
        action again. Returns the ids per what was done. Safe to run on several nodes at once."""
        from didmos_ldap.filters import any_of, eq, le

        now = now or _now()
        due = self.directory.search(
            self.base_dn, eq("objectClass", OBJECT_CLASS)
            & any_of(eq("didmosRequestState", "pending"), eq("didmosRequestState", "approved"))
            & le("didmosRequestDeadline", _gtime(now)), ldap.SCOPE_ONELEVEL, ["cn"])
        report: dict[str, list[str]] = {"escalated": [], "expired": [], "requeued": []}
        for entry in due:
            request_id = entry.first("cn")
            try:
                done = self._sweep_one(request_id, now)
            except DidmosError as exc:
                log.warning("sweep: request %s: %s", request_id, exc.message)
                continue
            if done:
                report[done].append(request_id)
        if any(report.values()):
            log.info("sweep: %s", {k: len(v) for k, v in report.items()})
        return report

    def _sweep_one(self, request_id: str, now: datetime) -> str | None:
        what: dict[str, str] = {}

        def step(request: Request) -> _Change | None:
            if request.deadline is None or request.deadline > now or request.state not in ("pending", "approved"):
                return None
            change = _Change(n=request.next_n)
            if request.state == "approved":
                retry_at = now + timedelta(seconds=self.action_retry_seconds)
                change.event("action-requeued")
                change.replace["didmosRequestDeadline"] = [_gtime(retry_at)]
                what["done"] = "requeued"
                return change
            current = request.current
            level = request.workflow[current.level - 1]
            if level.escalate_to is not None and not current.escalated:
                try:  # raises before it changes anything
                    self._start_level(current.level - 1, request.workflow, request.requester, request.target,
                                      change, escalate=True)
                    what["done"] = "escalated"
                    return change
                except NobodyToDecide as exc:
                    change.event("escalation-failed", level=current.level, detail=exc.message)
            change.event("expired", level=current.level)
            self._close(change, "expired")
            what["done"] = "expired"
            return change

        request, changed = self._transition(request_id, step, None)
        if changed and what.get("done") == "requeued":
            self._enqueue_action(request)
        return what.get("done") if changed else None

    # -- mail ----------------------------------------------------------------------------------------

    def _announce(self, request: Request, since: int) -> None:
        """Mail who needs to know about the history lines from number ``since`` on: the approvers of a
        level that started or escalated (``request-pending``), the requester of an outcome
        (``request-decided``). Never raises: the step that caused the mail has happened already."""
        notifications = self.host.services.get("notifications")
        try:
            if notifications is None or not notifications.settings.enabled:
                return
            lines = [e for e in request.history if e["n"] >= since]
            started = [e for e in lines if e["event"] in ("level-started", "escalated")]
            outcome = next((e for e in lines if e["event"] in OUTCOMES), None)
            if started and request.state == "pending":
                self._mail_approvers(notifications, request, started[-1])
            if outcome is not None:
                self._mail_requester(notifications, request, outcome)
        except Exception:  # noqa: BLE001 - a lost mail is logged, the request goes on
            log.exception("request %s: its notification was not submitted", request.id)

    def _people(self, dns: Iterable[str]) -> dict[str, Any]:
        """Normalised DN -> entry (mail and names) of ``dns``, in one search."""
        dns = [dn for dn in dns if dn]
        return self.directory.get_many(dns, MAIL_ATTRIBUTES) if dns else {}

    @staticmethod
    def _name(entry) -> str | None:
        if entry is None:
            return None
        return entry.first("displayName") or entry.first("cn") or entry.first("uid")

    def _mail_approvers(self, notifications, request: Request, started: dict) -> None:
        from didmos_ldap.directory import normalize_dn

        approvers = started.get("approvers") or request.awaiting
        people = self._people([request.requester, *approvers])
        requester = people.get(normalize_dn(request.requester))
        filed = next((e for e in request.history if e["event"] == "filed"), {})
        for dn in approvers:
            entry = people.get(normalize_dn(dn))
            mail = entry.first("mail") if entry is not None else None
            if not mail:
                log.info("request %s: approver %s has no mail address; not told", request.id, dn)
                continue
            context = {"request_id": request.id, "summary": request.summary or request.kind,
                       "requester": self._name(requester) or request.requester}
            if self._name(entry):
                context["name"] = self._name(entry)
            if filed.get("comment"):
                context["reason"] = filed["comment"]
            recipient = uuidlib.uuid5(uuidlib.NAMESPACE_X500, normalize_dn(dn))
            try:
                notifications.send("request-pending", mail, context,
                                   key=f"request:{request.id}:{started['n']}:{recipient}")
            except DidmosError as exc:  # one approver's broken address must not keep the others from being told
                log.warning("request %s: approver %s not told: %s", request.id, dn, exc.message)

    def _mail_requester(self, notifications, request: Request, outcome: dict) -> None:
        from didmos_ldap.directory import normalize_dn

        decider = outcome.get("by")
        people = self._people([request.requester, decider] if decider else [request.requester])
        requester = people.get(normalize_dn(request.requester))
        mail = requester.first("mail") if requester is not None else None
        if not mail:
            log.info("request %s: requester %s has no mail address; not told it was %s", request.id,
                     request.requester, outcome["event"])
            return
        context = {"request_id": request.id, "summary": request.summary or request.kind,
                   "decision": OUTCOMES[outcome["event"]]}
        if self._name(requester):
            context["name"] = self._name(requester)
        if decider:
            context["decided_by"] = self._name(people.get(normalize_dn(decider))) or decider
        comment = outcome.get("comment") or (outcome.get("detail") if outcome["event"] == "failed" else None)
        if comment:
            context["comment"] = comment
        notifications.send("request-decided", mail, context, key=f"request:{request.id}:{outcome['n']}")

    # -- the action ----------------------------------------------------------------------------------

    def _enqueue_action(self, request: Request, actor: Actor | None = None) -> None:
        """Queue the action of an approved request: through the task outbox when it is there (stored in
        the directory before it is queued), else straight onto rq. Either way the request stays
        ``approved`` with a deadline until the action reports back, and the sweep queues it again then;
        the outbox key is the history line that asked for this run, so asking twice queues it once."""
        from didmos_host.tasks import enqueue

        payload = {"request": request.id}
        try:
            if "outbox" in self.host.services:
                from didmos_tasks.outbox import submit

                asked = max((e["n"] for e in request.history if e["event"] in ("approved", "action-requeued")),
                            default=0)
                submit(self.host, ACT_TASK, payload, key=f"{request.id}:{asked}", actor=actor)
            else:
                enqueue(self.host, ACT_TASK, payload)
        except Unavailable as exc:
            log.warning("request %s approved, its action not queued now (the sweep will): %s", request.id,
                        exc.message)

    def verify_chain(self, request: Request) -> list[str]:
        """What is missing from the approval chain of ``request`` (empty: complete).

        Each level must have as many approvals as it needed, from the approvers it had, made after it
        started (or escalated); role approvers must still be authorized for the role (asked of the
        PDP); nobody may have declined.
        """
        problems = []
        if any(d["decision"] == "decline" for d in request.decisions):
            problems.append("someone declined")
        for number in range(1, len(request.workflow) + 1):
            starts = [e for e in request.history if e["event"] in ("level-started", "escalated")
                      and e.get("level") == number]
            if not starts:
                problems.append(f"level {number} never started")
                continue
            start = max(starts, key=lambda e: e["n"])
            approvers = {_dn_key(dn) for dn in start["approvers"]}
            spec = Approvers.parse(start["source"], "source")
            approved = {}
            for d in request.decisions:
                if d["level"] == number and d["decision"] == "approve" and d["n"] > start["n"] \
                        and _dn_key(d["by"]) in approvers:
                    approved[_dn_key(d["by"])] = d["by"]
            counted = [dn for dn in approved.values()
                       if not spec.role or self._qualifies(dn, start["source"], request)]
            if len(counted) < start["needed"]:
                problems.append(f"level {number} has {len(counted)} valid approvals of {start['needed']} needed"
                                + (f" (approvers must still hold role {spec.role!r})" if spec.role else ""))
        return problems

    def act(self, request_id: str, context: Any) -> dict:
        """Carry out an approved request (the ``didmos.requests.act`` task) and record the outcome.

        A request that is not ``approved`` (done, failed, declined, ...) is left alone, so running the
        task twice does nothing the second time. :class:`Unavailable` from the action propagates (the
        task is retried; the request stays approved).
        """
        try:
            request = self.get(request_id)
        except NotFound:
            log.warning("action of request %s: the request is gone", request_id)
            return {"skipped": "gone"}
        if request.state != "approved":
            return {"skipped": request.state}
        problems = self.verify_chain(request)
        handler = self.host.task_handlers.get(request.action)
        if problems:
            outcome = {"status": "failed", "message": "approval chain incomplete: " + "; ".join(problems)}
        elif handler is None:
            outcome = {"status": "failed", "message": f"no task handler named {request.action!r} is registered"}
        else:
            job = {"request": request.id, "kind": request.kind, "payload": request.payload,
                   "target": request.target, "requester": request.requester}
            try:
                result = handler.function(job, context)
                outcome = {"status": "done", "message": "carried out", "result": result}
            except Unavailable:
                raise
            except DidmosError as exc:
                outcome = {"status": "failed", "message": exc.message}
                if exc.detail:
                    outcome["context"] = exc.detail
            except Exception as exc:  # a bug in an action: recorded, not retried for ever
                log.exception("action %s of request %s failed", request.action, request.id)
                outcome = {"status": "failed", "message": f"the action failed unexpectedly: {type(exc).__name__}"}
        self._record(request.id, outcome)
        return outcome

    def _record(self, request_id: str, outcome: dict) -> None:
        def step(request: Request) -> _Change | None:
            if request.state != "approved":
                return None  # another run recorded first
            change = _Change(n=request.next_n)
            change.event(outcome["status"], detail=outcome["message"])
            self._close(change, outcome["status"], outcome)
            return change

        self._transition(request_id, step, None)


# -- the tasks -----------------------------------------------------------------------------------------

def sweep(host) -> dict[str, list[str]]:
    """Expire or escalate the levels whose time is over and re-queue unanswered actions (see
    :meth:`Requests.sweep`); what the ``didmos.requests.sweep`` task runs, callable directly."""
    return host.service("requests").sweep()


def run_sweep(payload: dict, context) -> dict:
    """The ``didmos.requests.sweep`` task."""
    return sweep(context.host)


def run_action(payload: dict, context) -> dict:
    """The ``didmos.requests.act`` task: ``{"request": <id>}``."""
    return context.host.service("requests").act(payload["request"], context)


def describe(request: Request) -> dict:
    """A request as the API shows it."""
    current = request.current if request.state == "pending" else None
    return {
        "id": request.id, "kind": request.kind, "summary": request.summary, "state": request.state,
        "requester": request.requester, "target": request.target, "payload": request.payload,
        "level": current.level if current else None, "levels": len(request.workflow),
        "awaiting": request.awaiting if current else [],
        "needed": current.needed if current else None,
        "deadline": _iso(request.deadline) if current else None,
        "workflow": [level.to_json() for level in request.workflow],
        "decisions": [{k: d[k] for k in ("level", "by", "at", "decision", "comment")} for d in request.decisions],
        "history": [{k: v for k, v in e.items() if k != "n"} for e in request.history],
        "outcome": request.outcome, "created": _iso(request.created), "updated": _iso(request.modified),
    }


__all__ = ["ACT_TASK", "Approvers", "Conflict", "InvalidRequest", "Level", "Request", "RequestKind", "Requests",
           "SWEEP_TASK", "describe", "parse_workflow", "sweep"]
