"""Task handlers for the outbox tests: a plugin module, registered in-process with ``extra_plugins`` and
imported by the worker subprocesses of test_crash.py (with this folder on their PYTHONPATH).

Handlers leave their traces in files and in the directory, never in memory: with ``worker.mode = "fork"``
rq runs each job in a forked work horse.
"""

import os
import time
from pathlib import Path

import ldap

from didmos_host import hookimpl
from didmos_host.errors import PermanentTaskError
from didmos_host.records import TaskHandler


def record(payload, context):
    """One line per run: the task id it ran as."""
    with open(payload["log"], "a") as log:
        log.write(f"{context.job_id}\n")
    return {"seen": payload.get("n")}


def flaky(payload, context):
    """Fails while the file ``payload["fail_while"]`` exists; one line per run."""
    with open(payload["log"], "a") as log:
        log.write(f"{context.job_id}\n")
    if Path(payload["fail_while"]).exists():
        raise RuntimeError(f"flag {payload['fail_while']} is set")
    return "recovered"


def slow_effect(payload, context):
    """The effect first, then work that takes ``payload["sleep"]`` seconds on the first run only.

    The effect is idempotent by the task id: it adds the id to the ``description`` of an entry
    (Permissive Modify: adding a value that is there succeeds and changes nothing). The log counts
    runs, so a test sees that the handler ran twice and the effect is there once.
    """
    log = Path(payload["log"])
    runs = log.read_text().count("start") if log.exists() else 0
    with open(log, "a") as out:
        out.write(f"start {os.getpid()}\n")
    context.host.service("directory").modify(payload["entry"], [(ldap.MOD_ADD, "description", [context.job_id])],
                                             permissive=True)
    if runs == 0:
        time.sleep(payload["sleep"])
    with open(log, "a") as out:
        out.write(f"done {os.getpid()}\n")
    return "effect applied"


def refuse(payload, context):
    """Fails for good: what retrying cannot fix (PermanentTaskError); one line per run."""
    with open(payload["log"], "a") as log:
        log.write(f"{context.job_id}\n")
    raise PermanentTaskError(f"{payload['why']}; retrying cannot help")


@hookimpl
def didmos_task_handlers():
    return [
        TaskHandler(name="test.record", function=record, queue="test", retries=0),
        TaskHandler(name="test.flaky", function=flaky, retries=2, retry_intervals=(0,)),
        TaskHandler(name="test.flaky-slowly", function=flaky, retries=2, retry_intervals=(30, 60)),
        TaskHandler(name="test.refuse", function=refuse, retries=3, retry_intervals=(0,)),
        TaskHandler(name="test.slow-effect", function=slow_effect, retries=2, retry_intervals=(0,), timeout=60),
        TaskHandler(name="test.slow-once", function=slow_effect, retries=0, timeout=60),
    ]


def burst_worker(overrides) -> None:
    """A burst worker with these handlers and a host of its own (its work horses must not inherit the
    test's LDAP connections): runs what is queued, then returns."""
    import sys

    from didmos_host.host import Host
    from didmos_host.tasks import run_worker

    worker = Host.create(overrides, extra_plugins=[sys.modules[__name__]])
    try:
        run_worker(worker, burst=True)
    finally:
        worker.service("directory").close()
