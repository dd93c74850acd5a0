"""The ``didmos`` command line. Plugins add commands through the ``didmos_cli_commands`` hook."""

from __future__ import annotations

import functools
import json
import logging
import sys

import click

from didmos_host import __version__
from didmos_host.errors import DidmosError
from didmos_host.host import Host
from didmos_host.plugins import create_plugin_manager, describe_plugins


def fail_cleanly(function):
    """Print a didmos error as one clear line and exit 2, instead of a traceback."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DidmosError as exc:
            click.echo(f"didmos: error: {exc.message}", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="didmos")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """didmos: identity management over OpenLDAP."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def plugins(as_json: bool) -> None:
    """List the loaded plugins, their versions and the hooks each implements."""
    rows = describe_plugins(create_plugin_manager())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']} {row['version'] or ''} ({row['distribution'] or 'not installed'})")
        for hook in row["hooks"]:
            click.echo(f"    {hook}")


@cli.group()
def config() -> None:
    """Inspect the effective settings; push and pull the central settings."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def config_show(as_json: bool) -> None:
    """Print every effective setting, secrets masked, with where its value came from."""
    from didmos_host.config import describe

    host = Host.create()
    rows = describe(host.settings, host.namespaces)
    if as_json:
        click.echo(json.dumps([{"key": k, "value": v, "source": s} for k, v, s in rows], indent=2, default=str))
        return
    width = max((len(k) for k, _, _ in rows), default=0)
    for key, value, source in rows:
        click.echo(f"{key:<{width}} = {json.dumps(value, default=str)}    # {source}")


@config.command("push")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Only check the file; store nothing.")
@fail_cleanly
def config_push(file: str, dry_run: bool) -> None:
    """Check FILE (TOML) with every plugin's validators, then store it as the central settings.

    The file replaces the whole stored document. Running processes switch to it within
    central.refresh_seconds. A file that fails the check is not stored: the error names the setting.
    """
    from didmos_host.central import push

    stored, location = push(file, dry_run=dry_run)
    if dry_run:
        click.echo(f"{file}: valid; not stored (the store at {location.describe()} has revision {stored.revision})")
    else:
        click.echo(f"stored {file} as revision {stored.revision} at {location.describe()}")


@config.command("pull")
@click.option("--show-secrets", is_flag=True, help="Print secret values instead of ********.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@fail_cleanly
def config_pull(show_secrets: bool, as_json: bool) -> None:
    """Print the central settings (TOML, secrets masked), with their revision."""
    from dynaconf.vendor import toml

    from didmos_host.central import pull

    stored, location = pull(show_secrets=show_secrets)
    if as_json:
        click.echo(json.dumps({"revision": stored.revision, "pushed_at": stored.pushed_at,
                               "pushed_by": stored.pushed_by, "source": stored.source, "settings": stored.data},
                              indent=2, default=str))
        return
    if not stored.revision:
        click.echo(f"# nothing stored yet at {location.describe()}: `didmos config push FILE`")
        return
    click.echo(f"# central settings revision {stored.revision} at {location.describe()}, pushed {stored.pushed_at} "
               f"by {stored.pushed_by} from {stored.source}")
    click.echo(toml.dumps(stored.data), nl=False)


@cli.group()
def directory() -> None:
    """Prepare and inspect the directory."""


@directory.command("init")
@click.option("--reapply-schema", is_flag=True,
              help="Apply every schema migration again to each directory.config_uri, recorded or not "
                   "(a provider that joined a replicated directory later lacks them: cn=config is not replicated).")
@fail_cleanly
def directory_init(reapply_schema: bool) -> None:
    """Apply schema migrations and create the base tree, system accounts and superadmin (idempotent)."""
    from didmos_host.directory import init_directory

    report = init_directory(Host.create(), reapply=reapply_schema)
    click.echo(f"migrations applied: {', '.join(report.migrations_applied) or 'none (up to date)'}")
    click.echo(f"entries created: {len(report.entries_created)}")
    for line in report.announcements:
        click.echo(line)
    if report.generated_password:
        click.echo(f"superadmin password: {report.generated_password}   (generated; shown only this once)")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def doctor(as_json: bool) -> None:
    """Check the settings, the directory, redis and the worker, and say what to fix (exit 1 on a problem)."""
    from didmos_host.doctor import run

    sys.exit(run(as_json=as_json))


@cli.command()
@click.option("--burst", is_flag=True, help="Run the queued jobs, then exit.")
@click.option("--queue", "queues", multiple=True, help="Queue to listen on (default: every handler's queue).")
@fail_cleanly
def worker(burst: bool, queues: tuple[str, ...]) -> None:
    """Run a task worker (rq, with the scheduler for delayed and retried tasks)."""
    from didmos_host.tasks import run_worker

    from didmos_host.observability import configure_logging

    host = Host.create()
    configure_logging(host.settings, replace=True)  # log.format, log.level, log.audit_file
    run_worker(host, burst=burst, queues=list(queues) or None)


@cli.command()
@click.option("--host", "bind_host", default=None, help="Address to listen on (setting api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (setting api.port).")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes (setting api.workers).")
@fail_cleanly
def serve(bind_host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the API with gunicorn, for production."""
    from didmos_host.serve import serve as run

    run(bind_host=bind_host, port=port, workers=workers)


@cli.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default="./var/dev", show_default=True,
              help="Where slapd, redis and secrets keep their data; reused on the next run.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="API port.")
@click.option("--admin-password", default=None, help="Superadmin password (default: generated, printed once).")
@click.option("--providers", type=click.IntRange(1, 4), default=1, show_default=True,
              help="slapd providers replicating each other, each with an API (on --port, --port+1, ...) and a worker.")
@fail_cleanly
def dev(data_dir: str, port: int, admin_password: str | None, providers: int) -> None:
    """Run slapd, redis, the API and a worker on this machine, with a ready superadmin."""
    from didmos_host.dev import run_dev

    sys.exit(run_dev(data_dir=data_dir, port=port, admin_password=admin_password, providers=providers))


def add_plugin_commands(group: click.Group, pm=None) -> None:
    """Add the commands of every plugin to ``group``; a name taken twice stops with both owners named."""
    if pm is None:
        try:
            pm = create_plugin_manager()
        except DidmosError as exc:
            # Still let `didmos --help` and friends run, and say why plugin commands are missing.
            click.echo(f"didmos: warning: plugins not loaded: {exc.message}", err=True)
            return
    owners = {name: "didmos_host" for name in group.commands}
    for impl in reversed(pm.hook.didmos_cli_commands.get_hookimpls()):
        for command in impl.function() or ():
            if command.name in owners:
                click.echo(f"didmos: error: plugin {impl.plugin_name!r} adds the command {command.name!r}, which "
                           f"{owners[command.name]!r} already has; rename one of them", err=True)
                sys.exit(2)
            owners[command.name] = impl.plugin_name
            group.add_command(command)


def main() -> None:
    add_plugin_commands(cli)
    cli()


if __name__ == "__main__":
    main()
