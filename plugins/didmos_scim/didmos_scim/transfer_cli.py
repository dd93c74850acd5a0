"""``didmos import`` and ``didmos export``: bulk SCIM writes and reads from the command line.

Both act as one user (``--as``; by default the superadmin, setting ``ldap.superadmin.uuid``) and go
through the SCIM service, so the PDP decides every row and resource as it would for that user's API
requests, and the LDAP interceptors see every operation with that user as the actor.
``docs/import-export.md`` is the reference.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any, TextIO

import click
import ldif

from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.records import Actor
from didmos_scim.importer import Aborted, ImportRun, Report, StateFile, done_records, file_digest
from didmos_scim.transfer import (
    FORMATS, LIST_RESPONSE, UsageError, count_records, detect_format, export_columns, read_rows,
    write_csv_header,
)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: Exit statuses (docs/import-export.md).
ALL_DONE, SOME_REJECTED, BAD_USAGE, STOPPED = 0, 1, 2, 3


def clean_errors(command: str):
    """Bad usage and didmos errors as one line naming what was wrong (exit 2), never a traceback."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (UsageError, DidmosError) as exc:
                message = exc.message if isinstance(exc, DidmosError) else str(exc)
                click.echo(f"didmos {command}: error: {message}", err=True)
                sys.exit(BAD_USAGE)
            except UnicodeDecodeError as exc:
                click.echo(f"didmos {command}: error: the input is not UTF-8 text (a byte {exc.object[exc.start]:#04x} "
                           f"at offset {exc.start}); convert it to UTF-8 first", err=True)
                sys.exit(BAD_USAGE)
            except OSError as exc:
                click.echo(f"didmos {command}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
                           err=True)
                sys.exit(BAD_USAGE)

        return wrapper

    return decorate


def resolve_actor(host: Host, who: str | None) -> Actor:
    """The user the command acts as: a userName, a didmosUUID or a DN; default the superadmin."""
    from didmos_ldap.filters import eq

    directory = host.service("directory")
    base = host.settings.ldap.base_dn
    attrs = ["didmosUUID", "didmosTenant"]
    if who is None:
        entry = directory.get_by_uuid(host.settings.ldap.superadmin.uuid, base, attrs)
        who = f"the superadmin ({host.settings.ldap.superadmin.uuid})"
    elif "=" in who:
        try:
            entry = directory.get(who, attrs)
        except DidmosError:
            entry = None
    elif _UUID.match(who):
        entry = directory.get_by_uuid(who, base, attrs)
    else:
        found = directory.search(base, eq("uid", who), attrs=attrs)
        entry = found[0] if len(found) == 1 else None
    if entry is None or not entry.first("didmosUUID"):
        raise UsageError(f"--as {who}: no user with that userName, didmosUUID or DN below {base}")
    return Actor(dn=entry.dn, uuid=entry.first("didmosUUID"), tenant=entry.first("didmosTenant"), method="cli")


def _types(host: Host, type_name: str | None) -> dict[str, tuple[Any, Any]]:
    scim = host.service("scim")
    found = {name: (rt, scim.mapping(rt)) for name, rt in host.resource_types.items()}
    if type_name is not None and type_name not in found:
        match = next((name for name in found if name.lower() == type_name.lower()), None)
        if match is None:
            raise UsageError(f"--type {type_name}: no such resource type; one of {', '.join(found)}")
    return found


def _type_name(types: dict, type_name: str | None) -> str | None:
    if type_name is None:
        return None
    return next(name for name in types if name.lower() == type_name.lower())


# -- import -------------------------------------------------------------------------------------------------


@click.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="The file's format (default: from its extension: .ldif, .csv, .json/.jsonl).")
@click.option("--type", "type_name", default=None,
              help="Resource type of rows that do not say (CSV: every row). Default User.")
@click.option("--as", "as_user", default=None, metavar="USER",
              help="Act as this user (userName, didmosUUID or DN); default the superadmin.")
@click.option("--report", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write rejected rows here: CSV if it ends in .csv, else JSON lines (default: stderr).")
@click.option("--state", "state_path", type=click.Path(dir_okay=False), default=None,
              help="The state file that makes the run resumable (default FILE.import-state).")
@click.option("--resume", is_flag=True, help="Continue the run the state file records; finished rows are skipped.")
@click.option("--update", is_flag=True,
              help="A row whose userName or externalId exists updates that resource (the row's attributes only).")
@click.option("--ids-from", "ids_from", multiple=True, type=click.Path(exists=True, dir_okay=False),
              metavar="STATE", help="The state file of an earlier import: references to the ids it imported "
                                    "point to what it created (repeatable; e.g. groups after users from CSV).")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Rows sent at the same time.")
@clean_errors("import")
def import_command(file: str, fmt: str | None, type_name: str | None, as_user: str | None, report: str | None,
                   state_path: str | None, resume: bool, update: bool, ids_from: tuple[str, ...],
                   workers: int) -> None:
    """Create the resources of FILE (LDIF, CSV or SCIM JSON) through the SCIM service, as one user.

    Exit status: 0 every row imported, 1 some rows rejected (see the report), 2 bad usage, 3 stopped
    (the directory went away; --resume continues).
    """
    fmt = fmt or detect_format(file)
    if fmt is None:
        raise UsageError(f"{file}: cannot tell the format from the name; pass --format ldif, csv or scim")
    host = Host.create()
    types = _types(host, type_name)
    type_name = _type_name(types, type_name)
    if fmt == "csv" and type_name is None:
        type_name = "User"
    actor = resolve_actor(host, as_user)
    header = {"input": str(file), "sha256": file_digest(file), "format": fmt, "type": type_name, "update": update}
    state = StateFile(state_path or f"{file}.import-state", header, resume=resume)
    rejected_report = Report(report, lambda line: click.echo(line, err=True))
    earlier = [record for path in ids_from for record in done_records(path)]
    run = ImportRun(host, actor, state, rejected_report, workers=workers, update=update, earlier=earlier)
    rows = read_rows(file, fmt, types, type_name)
    try:
        if sys.stderr.isatty():
            total = count_records(file, fmt)
            with click.progressbar(length=max(total, 1), label=f"importing {os.path.basename(file)}", file=sys.stderr,
                                   show_pos=True, show_eta=True) as bar:
                summary = run.run(rows, bar.update)
        else:
            summary = run.run(rows)
    except Aborted as exc:
        click.echo(f"didmos import: stopped: {exc}", err=True)
        sys.exit(STOPPED)
    except KeyboardInterrupt:
        click.echo(f"didmos import: interrupted; the rows sent are recorded in {state.path}: re-run with --resume",
                   err=True)
        sys.exit(130)
    finally:
        state.close()
        rejected_report.close()
    parts = [f"imported {summary.imported}"]
    if update:
        parts.append(f"updated {summary.updated}")
    if summary.found:
        parts.append(f"found done {summary.found}")
    if summary.skipped:
        parts.append(f"skipped (done before) {summary.skipped}")
    parts.append(f"rejected {summary.rejected}")
    where = f"; report: {report}" if report and summary.rejected else ""
    click.echo(f"{', '.join(parts)}{where}; state: {state.path}")
    sys.exit(summary.exit_status)


# -- export -------------------------------------------------------------------------------------------------


class _Writer:
    """One output format: ``begin(type)``, ``resource(resource, entry, readable)``, ``end()``."""

    def __init__(self, fmt: str, out: TextIO, types: dict):
        self.fmt, self.out, self.types = fmt, out, types
        self.count = 0
        self.columns = None
        self.csv = None
        self.ldif = ldif.LDIFWriter(out, cols=76) if fmt == "ldif" else None
        if fmt == "scim":
            out.write('{"schemas": ["%s"], "Resources": [' % LIST_RESPONSE)

    def begin(self, type_name: str) -> None:
        if self.fmt == "csv":
            self.columns = export_columns(self.types[type_name][1])
            self.csv = write_csv_header(self.out, self.columns)

    def resource(self, type_name: str, resource: dict, entry, readable) -> None:
        if self.fmt == "scim":
            self.out.write(("\n" if self.count == 0 else ",\n") + json.dumps(resource, ensure_ascii=False))
        elif self.fmt == "csv":
            self.csv.writerow([column.get(resource) for column in self.columns])
        else:
            resource_type, mapping = self.types[type_name]
            wanted = {"objectclass", "didmosuuid"}
            for _, attribute in mapping.attributes():
                if attribute.mutability != "readOnly" and attribute.returned != "never":
                    wanted.update(a.lower() for a in attribute.ldap_attributes)
            if readable is not None:
                allowed = {a.lower() for a in readable} | {"objectclass", "didmosuuid"}
                wanted &= allowed
            attrs = {name: values for name, values in entry.attrs.items() if name.lower() in wanted and values}
            self.ldif.unparse(entry.dn, attrs)
        self.count += 1

    def end(self) -> None:
        if self.fmt == "scim":
            self.out.write(('\n' if self.count else '') +
                           f'], "totalResults": {self.count}, "startIndex": 1, "itemsPerPage": {self.count}}}\n')
        self.out.flush()


def export_resources(host: Host, actor: Actor, fmt: str, type_names: list[str], filter_text: str | None,
                     out: TextIO, *, batch: int = 200) -> dict[str, int]:
    """Write every resource of ``type_names`` that ``actor`` may read (and that matches ``filter_text``)
    to ``out``; entries are streamed from a paged search, ``batch`` at a time. Returns counts per type."""
    from didmos_scim import filters as scim_filters
    from didmos_scim.service import strip_request_only

    scim = host.service("scim")
    types = {name: (scim.resource_type(name), scim.mapping(scim.resource_type(name))) for name in host.resource_types}
    subject = scim.pdp.subject(actor)
    base = host.settings.ldap.base_dn
    conditions = {}
    problems = []
    for type_name in type_names:
        resource_type, mapping = types[type_name]
        condition = scim._type_filter(resource_type)
        if filter_text:
            try:
                translated = scim_filters.to_ldap(filter_text, mapping, resolve_id=scim._dn_of)
            except DidmosError as exc:
                problems.append(f"{type_name}: {exc.message}")
                continue
            scim._check_filter_readable(translated, actor, type_name, subject)
            condition = condition & translated
        readable = scim.pdp.read_filter(actor, type_name, subject)
        conditions[type_name] = condition & readable if readable is not None else condition
    if not conditions:
        raise UsageError(f"--filter {filter_text!r}: " + "; ".join(problems))
    writer = _Writer(fmt, out, types)
    counts = {}
    for type_name, condition in conditions.items():
        resource_type, mapping = types[type_name]
        writer.begin(type_name)
        before = writer.count
        policy = scim.pdp.policy()
        roles = policy.default_active_roles(subject.assigned)
        entries = []

        def flush():
            shown = scim._shown(entries, resource_type, mapping, subject, "", names=False)
            for entry, resource in zip(entries, shown):
                resource.pop("location", None)
                strip_request_only(resource, mapping, None)
                readable = None
                if fmt == "ldif":
                    readable = policy.check_access(roles, "read", type_name, entry.dn, subject.context).attributes
                writer.resource(type_name, resource, entry, readable)
            entries.clear()

        for entry in scim.directory.iter_search(base, condition, attrs=scim._attributes(mapping), actor=actor):
            entries.append(entry)
            if len(entries) >= batch:
                flush()
        if entries:
            flush()
        counts[type_name] = writer.count - before
    writer.end()
    return counts


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format (default: from -o's extension, else scim).")
@click.option("--type", "type_names", multiple=True,
              help="Resource type to export (repeatable; default every type; CSV: one type, default User).")
@click.option("--filter", "filter_text", default=None, help='A SCIM filter, e.g. \'userName sw "a"\'.')
@click.option("--as", "as_user", default=None, metavar="USER",
              help="Act as this user (userName, didmosUUID or DN); default the superadmin.")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              help="Write here (default stdout).")
@clean_errors("export")
def export_command(fmt: str | None, type_names: tuple[str, ...], filter_text: str | None, as_user: str | None,
                   output: str) -> None:
    """Write every resource the user may read as LDIF, CSV or a SCIM ListResponse (streamed, paged).

    What one format exports, `didmos import` reads back.
    """
    fmt = fmt or (detect_format(output) if output != "-" else None) or "scim"
    host = Host.create()
    types = _types(host, None)
    chosen = []
    for name in type_names:
        match = next((t for t in types if t.lower() == name.lower()), None)
        if match is None:
            raise UsageError(f"--type {name}: no such resource type; one of {', '.join(types)}")
        chosen.append(match)
    if fmt == "csv":
        if len(chosen) > 1:
            raise UsageError("a CSV export holds one resource type: pass one --type")
        chosen = chosen or ["User"]
    if not chosen:
        order = ["User", "Organization", "Group"]
        chosen = [t for t in order if t in types] + [t for t in types if t not in order]
    actor = resolve_actor(host, as_user)
    out = sys.stdout if output == "-" else open(output, "w", encoding="utf-8", newline="")
    try:
        counts = export_resources(host, actor, fmt, chosen, filter_text, out)
    finally:
        if out is not sys.stdout:
            out.close()
    where = "" if output == "-" else f" to {output}"
    click.echo("exported " + ", ".join(f"{n} {t}" for t, n in counts.items()) + where, err=True)
