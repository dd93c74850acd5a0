"""``didmos doctor``: is this installation sound, and if not, what should the operator do?

It loads and validates the settings (a bad one stops here, named), then runs every check plugins
contribute through ``didmos_doctor_checks``: the host checks redis and the task worker, ``didmos_ldap``
the directory, ``didmos_scim`` the indexes its filters need. Each finding is ``ok``, ``problem`` (with
what to do) or ``skipped`` (could not be looked at, and why). The command exits 1 when any finding is a
problem, else 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import click

from didmos_host.errors import ConfigError, PluginError
from didmos_host.plugins import collect_named
from didmos_host.records import DoctorCheck, DoctorFinding

#: Socket timeouts of the doctor's own connections: long enough for a slow network, short enough to
#: tell a hanging server from a slow one.
TIMEOUT = 3.0
#: rq 2 and later need redis 5 or newer (streams, ``LPOS``, ``ZADD ... GT``).
MIN_REDIS = (5, 0)


def ok(check: str, message: str) -> DoctorFinding:
    return DoctorFinding(check, "ok", message)


def problem(check: str, message: str, fix: str) -> DoctorFinding:
    return DoctorFinding(check, "problem", message, fix)


def skipped(check: str, message: str, fix: str = "") -> DoctorFinding:
    return DoctorFinding(check, "skipped", message, fix)


def diagnose(overrides: Mapping[str, Any] | None = None, *, extra_plugins: Iterable[Any] = ()) -> list[DoctorFinding]:
    """Every finding, the configuration's first. ``overrides`` and ``extra_plugins`` as for ``Host.create``."""
    from didmos_host.host import Host

    try:
        host = Host.create(overrides, extra_plugins=extra_plugins)
    except ConfigError as exc:
        return [problem("configuration", exc.message,
                        "correct the setting named above where it is set (the settings file, or the DIDMOS_* "
                        "variable the message names); docs/settings.md lists every setting")]
    except PluginError as exc:
        return [problem("plugins", exc.message,
                        "fix or reinstall the plugin named above, or leave it out with DIDMOS_DISABLE_PLUGINS")]
    from didmos_host.config import settings_files

    plugins = sorted(name for name, _ in host.pm.list_name_plugin())
    files = ", ".join(settings_files()) or "none (defaults and DIDMOS_* variables only)"
    findings = [ok("configuration", f"settings valid; files: {files}; plugins: {', '.join(plugins)}")]
    try:
        checks: dict[str, DoctorCheck] = collect_named(host.hook.didmos_doctor_checks(host=host), "doctor check")
    except PluginError as exc:  # two plugins chose one name
        return [*findings, problem("plugins", exc.message, "rename one of the two checks, or disable one plugin "
                                                             "with DIDMOS_DISABLE_PLUGINS")]
    for check in sorted(checks.values(), key=lambda c: (c.order, c.name)):
        try:
            findings.extend(check.function(host) or ())
        except Exception as exc:  # one broken check must not hide what the others find
            findings.append(problem(check.name, f"the check itself failed: {type(exc).__name__}: {exc}",
                                    "report this to the maintainers of the plugin that adds the check"))
    return findings


def run(*, as_json: bool = False, overrides: Mapping[str, Any] | None = None) -> int:
    """Print the findings (text or JSON); 1 when there is a problem, else 0."""
    findings = diagnose(overrides)
    problems = sum(1 for finding in findings if finding.status == "problem")
    if as_json:
        click.echo(json.dumps({"ok": problems == 0, "problems": problems,
                               "findings": [vars(finding) for finding in findings]}, indent=2))
    else:
        width = max(len(finding.check) for finding in findings)
        for finding in findings:
            label = {"ok": "ok", "problem": "PROBLEM", "skipped": "skipped"}[finding.status]
            click.echo(f"{label:<8} {finding.check:<{width}}  {finding.message}")
            if finding.fix:
                click.echo(f"{'':<8} {'':<{width}}  fix: {finding.fix}")
        click.echo("didmos doctor: " + (f"{problems} problem{'s' * (problems != 1)} found" if problems
                                        else "no problems found"))
    return 1 if problems else 0


# -- the host's own checks: redis and the task worker -----------------------------------------------


def redis_and_worker_checks(host: Any) -> list[DoctorCheck]:
    return [DoctorCheck("redis", _check_redis, order=20), DoctorCheck("worker", _check_worker, order=30)]


def _redis(host: Any):
    from didmos_host.sentinel import connect_redis

    return connect_redis(host.settings, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)


def _check_redis(host: Any) -> list[DoctorFinding]:
    from didmos_host.readiness import _clean
    from didmos_host.sentinel import describe_redis

    where = _clean(describe_redis(host.settings))
    client = _redis(host)
    try:
        client.ping()
        version = str(client.info("server").get("redis_version", "?"))
    except Exception as exc:
        return [problem("redis", f"redis at {where} does not answer: {_clean(exc)}",
                        "start redis-server (systemctl start redis-server), or correct redis.url "
                        "(and redis.sentinels)")]
    finally:
        client.close()
    numbers = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if len(numbers) == 2 and numbers < MIN_REDIS:
        return [problem("redis", f"redis at {where} is version {version}; the task queue (rq) needs "
                                 f"{'.'.join(map(str, MIN_REDIS))} or newer", "upgrade redis-server")]
    return [ok("redis", f"redis at {where} answers PING; version {version}")]


def _check_worker(host: Any) -> list[DoctorFinding]:
    import rq
    from rq.scheduler import RQScheduler

    from didmos_host.tasks import queue_names

    client = _redis(host)
    try:
        try:
            client.ping()
        except Exception:
            return [skipped("worker", "redis does not answer, so the workers cannot be looked up (see redis)")]
        needed = queue_names(host)
        workers = rq.Worker.all(connection=client)
        listened = {name for worker in workers for name in worker.queue_names()}
        if not workers:
            return [problem("worker", "no task worker is running: tasks are queued but nothing runs them",
                            "start `didmos worker` (in the Debian package: systemctl start didmos-worker)"),
                    skipped("worker.scheduler", "no worker runs, so no scheduler runs either")]
        findings = []
        missing = [name for name in needed if name not in listened]
        if missing:
            findings.append(problem(
                "worker", f"{len(workers)} worker(s) run, but none listens on the queue(s) {', '.join(missing)}: "
                          f"tasks queued there never run",
                "start `didmos worker` without --queue (it listens on every handler's queue), or one with "
                "--queue for each queue named"))
        else:
            findings.append(ok("worker", f"{len(workers)} worker(s) listen on {', '.join(needed)}"))
        unscheduled = [name for name in needed if not client.exists(RQScheduler.get_locking_key(name))]
        if unscheduled:
            findings.append(problem(
                "worker.scheduler", f"no scheduler holds the queue(s) {', '.join(unscheduled)}: delayed tasks and "
                                    f"retries of failed tasks wait there",
                "start `didmos worker` (it runs rq's scheduler); a worker started with rq's own command "
                "needs --with-scheduler"))
        else:
            findings.append(ok("worker.scheduler", f"a scheduler holds every queue ({', '.join(needed)})"))
        return findings
    finally:
        client.close()
