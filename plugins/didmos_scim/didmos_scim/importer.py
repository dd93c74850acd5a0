"""One run of ``didmos import``: rows to SCIM creates, in parallel, resumable, with a report.

Every row goes through :meth:`ScimService.create` (or, with ``update``, a PATCH of the resource with
the row's ``userName`` or ``externalId``) as the acting user: the same conversion, interceptors and
PDP decisions as ``POST /scim/v2/<Type>``. A row the service refuses is rejected: the create is one
LDAP add, so a rejected row changed nothing.

The state file (JSON lines) is written ahead: ``started`` before a row is sent, ``done`` (with the new
id) or ``rejected`` after. A re-run with ``resume`` skips every row that is done or rejected, and for a
row that was started but not finished (the process died between the LDAP add and the state write)
first looks for a resource with the row's ``userName`` or ``externalId`` (for a Group its
``displayName``, for an Organization its ``name``): when there is one, the row counts as done.

References between rows of one file (``members``, ``manager``; LDIF: the DNs in ``member`` and
``manager``) are rewritten to the ids the import created. Rows with references wait until the rows
they refer to are done: all rows without references first (in parallel), then the others in rounds.

What a row costs is kept down without weakening a check: the acting user's roles (its PDP subject) are
read once per ``pdp.refresh_seconds`` instead of for every row, so a change of them takes effect within
that time, as a policy change made on another node does; the add asks for no read-back and nothing is
rendered; and the uniqueness check after the adds (:meth:`ScimService.confirm_unique`) is made for
:data:`CONFIRM_BATCH` rows at once (one search per 100 of them), while none of the run's adds is in
flight. A row is ``done`` only after that check.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from didmos_host.errors import DidmosError, Unavailable
from didmos_host.records import Actor
from didmos_scim.convert import InvalidValue
from didmos_scim.transfer import DN_REFERENCE, Row, UsageError, normalized_dn, reference_values

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
STATE_VERSION = 1
#: Test hook: ``after-add:N`` or ``after-done:N`` ends the process abruptly (exit status 70) right after
#: the Nth LDAP add of the run, before or after its state line is written: a simulated crash.
CRASH_VARIABLE = "DIDMOS_IMPORT_CRASH"
#: Rows added whose userNames are checked together after their adds (one search per
#: ``service.UNIQUE_BATCH`` of them), while none of the run's adds is in flight. Rarely and in quiet:
#: slapd spent a third more CPU per added user when a check of 50 ran among the adds (see ``_confirm``).
CONFIRM_BATCH = 1000
#: Overrides :data:`CONFIRM_BATCH` (a positive integer), for tests that crash a run in a given batch.
CONFIRM_BATCH_VARIABLE = "DIDMOS_IMPORT_CONFIRM_BATCH"


class Aborted(Exception):
    """The run cannot go on (the directory went away): stop, keep the state for ``--resume``."""


@dataclass
class Outcome:
    row: Row
    result: str                 # imported, updated, found, rejected; added: imported, not yet confirmed unique
    id: str | None = None
    status: int | None = None
    reason: str | None = None
    created: Any = None         # added: what ScimService.add returned


@dataclass
class Summary:
    imported: int = 0
    updated: int = 0
    found: int = 0              # in flight when an earlier run stopped, and there: counted as done
    skipped: int = 0            # finished by an earlier run
    rejected: int = 0
    rejected_rows: list[int] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return 1 if self.rejected else 0


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StateFile:
    """The import's write-ahead record: which rows were started, done (and as which id), rejected."""

    def __init__(self, path: str, header: dict[str, Any], *, resume: bool):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.done: dict[int, dict[str, Any]] = {}
        self.rejected: dict[int, dict[str, Any]] = {}
        self.started: set[int] = set()
        if resume:
            if not self.path.exists():
                raise UsageError(f"--resume: there is no state file {self.path} (pass --state FILE for another)")
            self._load(header)
        elif self.path.exists():
            raise UsageError(f"the state file {self.path} exists from an earlier run: pass --resume to continue "
                             f"that run, or remove the file to start over")
        self.stream: TextIO = open(self.path, "a", encoding="utf-8")
        if not resume:
            self._write({"didmos_import": STATE_VERSION, **header})

    def _load(self, header: dict[str, Any]) -> None:
        with open(self.path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a process that died while writing it
        if not records or records[0].get("didmos_import") != STATE_VERSION:
            raise UsageError(f"{self.path} is not a didmos import state file")
        first = records[0]
        for key in ("sha256", "format", "type", "update"):
            if first.get(key) != header.get(key):
                raise UsageError(f"{self.path} belongs to another import ({key} was {first.get(key)!r}, now "
                                 f"{header.get(key)!r}); pass the same file and options, or remove the state file")
        for record in records[1:]:
            row = record.get("row")
            if not isinstance(row, int):
                continue
            state = record.get("state")
            if state == "started":
                self.started.add(row)
            elif state == "done":
                self.done[row] = record
            elif state == "rejected":
                self.rejected[row] = record

    @property
    def in_flight(self) -> set[int]:
        return self.started - set(self.done) - set(self.rejected)

    def _write(self, record: dict[str, Any]) -> None:
        with self.lock:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()

    def record(self, row: int, state: str, **fields: Any) -> None:
        self._write({"row": row, "state": state, **{k: v for k, v in fields.items() if v is not None}})

    def record_many(self, records: list[tuple[int, str, dict[str, Any]]]) -> None:
        """Several records (row, state, fields) in one write."""
        text = "".join(json.dumps({"row": row, "state": state, **{k: v for k, v in fields.items() if v is not None}},
                                  ensure_ascii=False) + "\n" for row, state, fields in records)
        with self.lock:
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        self.stream.close()


def done_records(path: str) -> list[dict[str, Any]]:
    """The ``done`` records of another import's state file (``--ids-from``): old ids and DNs -> new ids."""
    found = []
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except OSError as exc:
        raise UsageError(f"--ids-from {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if number == 1 and record.get("didmos_import") != STATE_VERSION:
            raise UsageError(f"--ids-from {path}: not a didmos import state file")
        if record.get("state") == "done":
            found.append(record)
    return found


class Report:
    """Rejected rows: CSV when the file name ends in ``.csv``, else JSON lines; or lines on ``echo``."""

    COLUMNS = ("row", "line", "type", "key", "status", "reason")

    def __init__(self, path: str | None, echo: Callable[[str], None]):
        self.path, self.echo = path, echo
        self.lock = threading.Lock()
        self.stream = open(path, "w", encoding="utf-8", newline="") if path else None
        self.csv = None
        if self.stream is not None and path.lower().endswith(".csv"):
            import csv

            self.csv = csv.writer(self.stream, lineterminator="\n")
            self.csv.writerow(self.COLUMNS)

    def add(self, record: dict[str, Any]) -> None:
        with self.lock:
            if self.stream is None:
                key = f" {record['key']}" if record.get("key") else ""
                self.echo(f"rejected: row {record['row']} (line {record['line']}){key}: {record['reason']}")
            elif self.csv is not None:
                self.csv.writerow([record.get(c, "") if record.get(c) is not None else "" for c in self.COLUMNS])
            else:
                self.stream.write(json.dumps({c: record.get(c) for c in self.COLUMNS}, ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


class ImportRun:
    """Imports rows through the SCIM service as ``actor``; see the module's docstring."""

    def __init__(self, host, actor: Actor, state: StateFile, report: Report, *, workers: int = 4,
                 update: bool = False, earlier: Iterable[dict[str, Any]] = (), confirm_batch: int | None = None):
        self.host = host
        self.scim = host.service("scim")
        self.actor = actor
        self.state = state
        self.report = report
        self.workers = max(1, workers)
        self.update = update
        self.summary = Summary()
        self.lock = threading.Lock()
        #: old id -> new id, and normalized old DN -> new id, of the rows done (this run and earlier ones).
        self.by_id: dict[str, str] = {}
        self.by_dn: dict[str, str] = {}
        for record in [*earlier, *state.done.values()]:
            self._remember(record.get("old_id"), record.get("old_dn"), record.get("id"))
        self.in_flight = state.in_flight
        self._adds = 0
        #: The actor's PDP subject and when it was read: read again after pdp.refresh_seconds.
        self.subject_seconds = float(host.settings.get("pdp.refresh_seconds", 1.0))
        self._subject: tuple[Any, float] | None = None
        #: Outcomes of rows added whose uniqueness is not confirmed yet (main thread only), checked
        #: once ``confirm_batch`` of them wait.
        self._unconfirmed: list[Outcome] = []
        configured = os.environ.get(CONFIRM_BATCH_VARIABLE, "")
        self.confirm_batch = max(1, confirm_batch or (int(configured) if configured.isdigit() else CONFIRM_BATCH))
        crash = os.environ.get(CRASH_VARIABLE, "")
        point, _, count = crash.partition(":")
        self.crash = (point, int(count)) if point in ("after-add", "after-done") and count.isdigit() else None

    # -- the whole run ------------------------------------------------------------------------------

    def run(self, rows: Iterable[Row], progress: Callable[[int], None] = lambda n: None) -> Summary:
        deferred: list[Row] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="didmos-import") as pool:
            pending: deque[Future] = deque()
            try:
                def submit(row) -> None:
                    pending.append(pool.submit(self._one, row))
                    while len(pending) >= 2 * self.workers:
                        self._collect(pending.popleft())
                        progress(1)
                    if len(self._unconfirmed) >= self.confirm_batch:
                        drain()  # the uniqueness search runs while none of our adds does (see _confirm)

                def drain() -> None:
                    while pending:
                        self._collect(pending.popleft())
                        progress(1)
                    self._confirm()

                for row in rows:
                    if self._finished_before(row):
                        progress(1)
                        continue
                    if row.problem is None and self._references(row):
                        deferred.append(row)
                        continue
                    submit(row)
                drain()
                waiting = deferred
                while waiting:
                    open_ids = {row.old_id for row in waiting if row.old_id}
                    open_dns = {normalized_dn(row.old_dn) for row in waiting if row.old_dn}
                    ready, blocked = [], []
                    for row in waiting:
                        refs = self._references(row)
                        if any(self._waits_for(ref, open_ids, open_dns, row) for ref in refs):
                            blocked.append(row)
                        else:
                            ready.append(row)
                    if not ready:
                        for row in blocked:
                            self._finish(Outcome(row, "rejected", status=409, reason=(
                                "its references wait for each other (a circular reference between rows); import "
                                "the resources without them first, then add them with --update")))
                            progress(1)
                        break
                    for row in ready:
                        submit(row)
                    drain()
                    waiting = blocked
            except BaseException:
                for future in pending:
                    future.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                try:  # what was added so far, if the directory still answers; else --resume checks them
                    self._confirm()
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise
        return self.summary

    def _finished_before(self, row: Row) -> bool:
        """A row an earlier run finished: done is skipped, rejected is reported again."""
        if row.number in self.state.done:
            with self.lock:
                self.summary.skipped += 1
            return True
        record = self.state.rejected.get(row.number)
        if record is not None:
            self.report.add({"row": row.number, "line": record.get("line", row.line), "type": record.get("type"),
                             "key": record.get("key"), "status": record.get("status"), "reason": record.get("reason")})
            with self.lock:
                self.summary.rejected += 1
                self.summary.rejected_rows.append(row.number)
            return True
        return False

    def _references(self, row: Row) -> list[str]:
        if not row.body or not row.type_name or row.type_name not in self.host.resource_types:
            return []
        mapping = self.scim.mapping(self.scim.resource_type(row.type_name))
        return [item["value"] for item, _ in reference_values(row.body, mapping)]

    @staticmethod
    def _waits_for(ref: str, open_ids: set[str], open_dns: set[str], row: Row) -> bool:
        if ref.startswith(DN_REFERENCE):
            dn = normalized_dn(ref[len(DN_REFERENCE):])
            return dn in open_dns and dn != normalized_dn(row.old_dn or "")
        return ref in open_ids and ref != row.old_id

    def _collect(self, future: Future) -> None:
        self._finish(future.result())

    def _finish(self, outcome: Outcome) -> None:
        row = outcome.row
        if outcome.result == "added":
            self._unconfirmed.append(outcome)  # confirmed by run() once confirm_batch are waiting
            return
        if outcome.result == "rejected":
            record = {"row": row.number, "line": row.line, "type": row.type_name, "key": row.key,
                      "status": outcome.status, "reason": outcome.reason}
            self.state.record(row.number, "rejected", line=row.line, type=row.type_name, key=row.key,
                              status=outcome.status, reason=outcome.reason)
            self.report.add(record)
        with self.lock:
            if outcome.result == "rejected":
                self.summary.rejected += 1
                self.summary.rejected_rows.append(row.number)
            elif outcome.result == "imported":
                self.summary.imported += 1
            elif outcome.result == "updated":
                self.summary.updated += 1
            elif outcome.result == "found":
                self.summary.found += 1

    def _confirm(self) -> None:
        """The uniqueness check after the adds of the rows added since the last one (a search per 100): a
        row is done when its userName is still its own, rejected when another entry took it at the same
        moment (its entry was removed again), and added again when both gave way.

        :meth:`run` calls it once ``confirm_batch`` rows wait, when none of the run's adds is in
        flight. Measured with 30,000 users (bench/README.md, import.py): with a check of every 50 rows
        among the adds slapd spent 1.3-1.6 ms of CPU per user, against 0.85 for ldapadd's same adds; with
        one every 1000 rows after the adds in flight, 1.05; with one at the end, 0.98. The extra work
        was the kernel's, in the page writes of slapd's back-mdb: with the frequent checks most of the
        data file sat in 16- and 32-page page-cache folios (mostly single pages for ldapadd), and each
        one-page write into such a folio costs the whole folio. A search holds a read snapshot, so adds
        committed meanwhile cannot reuse the pages they free and take runs of new ones from the end of
        the file; that is the likely way in, not a proven one (bench/README.md).
        """
        batch, self._unconfirmed = self._unconfirmed, []
        if not batch:
            return
        try:
            verdicts = self.scim.confirm_unique([outcome.created for outcome in batch], self.actor)
        except Unavailable as exc:
            raise Aborted(f"{exc.message}; nothing is lost: fix it and re-run with --resume") from None
        except DidmosError as exc:  # the rows stay in flight: --resume checks them again
            raise Aborted(f"the uniqueness check after the adds failed: {exc.message}; fix it and re-run with "
                          f"--resume") from None
        kept = [outcome for outcome in batch if verdicts[outcome.created.dn] == "kept"]
        self.state.record_many([(o.row.number, "done", {"id": o.id, "old_id": o.row.old_id, "old_dn": o.row.old_dn,
                                                        "how": "imported"}) for o in kept])
        for outcome in batch:
            verdict = verdicts[outcome.created.dn]
            if verdict == "kept":
                with self.lock:
                    self._remember(outcome.row.old_id, outcome.row.old_dn, outcome.id)
                self._crash_point("after-done")
                self._finish(Outcome(outcome.row, "imported", id=outcome.id))
            elif verdict == "retry":
                self._finish(self._one(outcome.row, confirm_later=False))
            else:
                self._finish(Outcome(outcome.row, "rejected", status=verdict.status, reason=verdict.message))

    def subject(self):
        """The actor's PDP subject (its roles), read again once it is ``subject_seconds`` old."""
        cached = self._subject
        if cached is None or time.monotonic() - cached[1] >= self.subject_seconds:
            cached = self._subject = (self.scim.pdp.subject(self.actor), time.monotonic())
        return cached[0]

    # -- one row --------------------------------------------------------------------------------------

    def _one(self, row: Row, *, confirm_later: bool = True) -> Outcome:
        """Import one row (in a worker thread). Errors of the row become a rejection; a directory that
        went away stops the run. A row added is ``added`` until :meth:`_confirm` checks its userName;
        without ``confirm_later`` the service checks it at once."""
        if row.problem is not None:
            return Outcome(row, "rejected", status=400, reason=row.problem)
        if row.type_name not in self.host.resource_types:
            known = ", ".join(self.host.resource_types)
            return Outcome(row, "rejected", status=400, reason=f"unknown resource type {row.type_name!r}; one of {known}")
        try:
            body = self._resolved(row)
            if row.number in self.in_flight:
                existing = self._existing(row.type_name, body, loose=True, confirm=True)
                if existing is not None:
                    self._done(row, existing, "found")
                    return Outcome(row, "found", id=existing)
            if self.update:
                existing = self._existing(row.type_name, body, loose=False)
                if existing is not None:
                    self.state.record(row.number, "started", key=row.key)
                    self.scim.patch(row.type_name, existing, self._patch_of(row.type_name, body), self.actor,
                                    base_url="", names=False)
                    self._done(row, existing, "updated")
                    return Outcome(row, "updated", id=existing)
            self.state.record(row.number, "started", key=row.key)
            created = self.scim.add(row.type_name, body, self.actor, subject=self.subject(),
                                    verify_unique=not confirm_later)
            self._crash_point("after-add")
            if confirm_later and created.unique_value:
                return Outcome(row, "added", id=created.id, created=created)
            self._done(row, created.id, "imported")
            self._crash_point("after-done")
            return Outcome(row, "imported", id=created.id)
        except Unavailable as exc:
            raise Aborted(f"{exc.message}; nothing is lost: fix it and re-run with --resume") from None
        except DidmosError as exc:
            return Outcome(row, "rejected", status=exc.status, reason=exc.message)
        except (ValueError, TypeError, KeyError) as exc:  # a body the service did not expect: still the row's
            return Outcome(row, "rejected", status=400, reason=f"{type(exc).__name__}: {exc}")

    def _crash_point(self, point: str) -> None:
        if self.crash is None or self.crash[0] != point:
            return
        with self.lock:
            self._adds += 1
            if self._adds >= self.crash[1]:
                self.state.stream.flush()
                os._exit(70)

    def _done(self, row: Row, new_id: str, how: str) -> None:
        self.state.record(row.number, "done", id=new_id, old_id=row.old_id, old_dn=row.old_dn, how=how)
        with self.lock:
            self._remember(row.old_id, row.old_dn, new_id)

    def _remember(self, old_id: str | None, old_dn: str | None, new_id: str | None) -> None:
        if not new_id:
            return
        if old_id:
            self.by_id[old_id] = new_id
        if old_dn:
            self.by_dn[normalized_dn(old_dn)] = new_id

    def _resolved(self, row: Row) -> dict[str, Any]:
        """The row's body with references to rows of the file rewritten to the ids the import made."""
        mapping = self.scim.mapping(self.scim.resource_type(row.type_name))
        if next(reference_values(row.body, mapping), None) is None:
            return row.body  # nothing to rewrite (the common case): no copy
        body = copy.deepcopy(row.body)
        for item, where in reference_values(body, mapping):
            value = item["value"]
            item.pop("$ref", None)  # it points at the server the file came from
            if value.startswith(DN_REFERENCE):
                dn = value[len(DN_REFERENCE):]
                with self.lock:
                    new_id = self.by_dn.get(normalized_dn(dn))
                if new_id is None:
                    entry = self.scim.directory.get(dn, ["didmosUUID"])
                    if entry is None or not entry.first("didmosUUID"):
                        raise InvalidValue(f"{where}: no entry {dn}, neither imported from this file nor in the "
                                           f"directory")
                    new_id = entry.first("didmosUUID")
                item["value"] = new_id
            else:
                with self.lock:
                    item["value"] = self.by_id.get(value, value)
        return body

    def _existing(self, type_name: str, body: dict[str, Any], *, loose: bool, confirm: bool = False) -> str | None:
        """The id of a resource of ``type_name`` with the body's userName or externalId, as the actor
        sees it; ``loose`` also matches a Group's displayName and an Organization's name.

        ``confirm``: the resource is one this import added before it stopped, perhaps before the
        uniqueness check after its add; that check is made now (:meth:`ScimService.confirm_unique`), and
        when it removes the resource there is none (the row is created again, or refused as taken)."""
        keys = ["userName", "externalId"] + (["displayName", "name"] if loose and type_name != "User" else [])
        for key in keys:
            value = next((v for k, v in body.items() if k.lower() == key.lower()), None)
            if not isinstance(value, str) or not value:
                continue
            try:
                page = self.scim.list(type_name, self.actor, base_url="", filter_text=f"{key} eq {json.dumps(value)}",
                                      count=2, names=False, with_entries=confirm)
            except Unavailable:
                raise
            except DidmosError:
                continue  # the type has no such attribute
            if page.resources:
                found = page.resources[0]["id"]
                entry = next((e for e in page.entries if e.first("didmosUUID") == found), None)
                if confirm and entry is not None and not self._still_unique(type_name, found, entry):
                    return None
                return page.resources[0]["id"]
        return None

    def _still_unique(self, type_name: str, resource_id: str, entry) -> bool:
        """Whether ``entry`` (added by an earlier run of this import) keeps its userName after the check."""
        from didmos_scim.service import Created

        user_name = self.scim.mapping(self.scim.resource_type(type_name)).core.attribute("userName")
        value = entry.first(user_name.ldap) if user_name is not None and user_name.ldap else None
        if not value:
            return True
        verdicts = self.scim.confirm_unique([Created(resource_id, entry.dn, user_name.ldap, value)], self.actor)
        return verdicts[entry.dn] == "kept"

    def _patch_of(self, type_name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``--update``: a PATCH that replaces the attributes the row gives and keeps the others."""
        value = {k: v for k, v in body.items() if k.lower() not in ("schemas", "id", "meta", "groups")}
        return {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": value}]}
